import pytest

from phenaki.story import StoryError, parse_scene_line, parse_story, read_story


def test_blank_lines_and_comments_are_ignored(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("# my story\n\na red ball moves right\n   \n# cut\nthe blue ball rises.\n", encoding="utf-8")
    scenes = read_story(path)
    assert [s.prompt for s in scenes] == ["a red ball moves right", "the blue ball rises."]
    assert all(s.settings == {} for s in scenes)


def test_per_scene_settings():
    scene = parse_scene_line("a red ball moves right [frames=12 guidance=4.5]")
    assert scene.prompt == "a red ball moves right"
    assert scene.settings == {"frames": 12, "guidance": 4.5}


@pytest.mark.parametrize(
    "line, message",
    [
        ("a ball [speed=3]", "unknown scene setting 'speed'"),
        ("a ball [frames=many]", "'frames' needs a int"),
        ("a ball [frames]", "key=value"),
        ("a ball [guidance=-1]", "guidance must be >= 0"),
        ("a ball [frames=-2]", "must be positive"),
        ("a ball [candidates=0]", "candidates must be >= 1"),
        ("a ball [use_critic=maybe]", "use_critic: expected true/false"),
        ("[frames=3]", "no prompt text"),
    ],
)
def test_bad_lines_name_the_problem(line, message):
    with pytest.raises(StoryError, match=message):
        parse_scene_line(line, "story.txt:4")


def test_empty_story_and_missing_or_binary_file(tmp_path):
    with pytest.raises(StoryError, match="no scenes"):
        parse_story("# only a comment\n\n")
    with pytest.raises(StoryError, match="not found"):
        read_story(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a red ball \xff\xfe moves")
    with pytest.raises(StoryError, match="not UTF-8"):
        read_story(bad)


def test_error_names_file_and_line(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("a red ball moves right\n\na ball [speed=3]\n", encoding="utf-8")
    with pytest.raises(StoryError, match=r"story\.txt:3"):
        read_story(path)
