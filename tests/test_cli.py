import json

import pytest
from click.testing import CliRunner

from phenaki.cli import data_main, sample_main


@pytest.fixture
def runner():
    return CliRunner()


def test_sample_requires_prompts(runner):
    result = runner.invoke(sample_main, [])
    assert result.exit_code == 2
    assert "nothing to generate" in result.output


def test_sample_rejects_prompts_and_prompt_together(runner, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("a red ball moves right\n")
    result = runner.invoke(sample_main, ["--prompts", str(story), "--prompt", "a blue box falls"])
    assert result.exit_code == 2
    assert "not both" in result.output


def test_sample_names_missing_story_file(runner, tmp_path):
    result = runner.invoke(sample_main, ["--prompts", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2
    assert "story file not found" in result.output


def test_sample_names_bad_story_line(runner, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("a red ball moves right\na blue box falls [speed=2]\n")
    result = runner.invoke(sample_main, ["--prompts", str(story)])
    assert result.exit_code == 2
    assert "story.txt:2" in result.output and "speed" in result.output


def test_sample_rejects_unknown_output_suffix(runner, tmp_path):
    result = runner.invoke(sample_main, ["--prompt", "a red ball moves right", "--out", str(tmp_path / "x.avi")])
    assert result.exit_code == 2
    assert "unsupported output" in result.output
    assert not (tmp_path / "x.avi").exists()


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps"),
    (["--guidance", "-1"], "--guidance"),
    (["--temporal-bias", "-1"], "--temporal-bias"),
    (["--dtype", "int8"], "--dtype"),
    (["--choice-temperature", "-1"], "--choice-temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--schedule", "sideways"], "--schedule"),
    (["--candidates", "0"], "--candidates"),
    (["--polish", "1"], "--polish"),
    (["--polish-passes", "0"], "--polish-passes"),
    (["--relevance-floor", "1.5"], "--relevance-floor"),
    (["--match-weight", "-1"], "--match-weight"),
    (["--scene-frames", "4", "--scene-seconds", "1"], "not both"),
])
def test_sample_validates_numbers(runner, args, message):
    result = runner.invoke(sample_main, ["--prompt", "a red ball moves right", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_sample_refuses_a_critic_the_model_lacks(runner, tmp_path):
    """The shipped demo model has no token critic: asking for one names that, writes nothing."""
    out = tmp_path / "s.gif"
    result = runner.invoke(sample_main, ["--prompt", "a red ball moves right", "--use-critic", "--critic-revise",
                                         "--out", str(out), "--first-frames", "1"])
    assert result.exit_code == 1
    assert "no token critic" in result.output
    assert not out.exists()


def test_data_shapes_writes_a_folder_dataset(runner, tmp_path):
    out = tmp_path / "shapes"
    result = runner.invoke(data_main, ["shapes", "--out", str(out), "--num", "3", "--seed", "1"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert (out / record["path"]).is_file()
        assert record["caption"]
    from phenaki.data.video_text import VideoTextDataset

    dataset = VideoTextDataset(out, num_frames=11, fps=8, size=64)
    assert len(dataset) == 3
    item = dataset[0]
    assert tuple(item["video"].shape) == (11, 64, 64, 3)
    assert item["caption"] == records[0]["caption"]


def test_eval_shapes_domain_2_on_a_tiny_pipeline(runner, tmp_path, tiny_pipeline_dir, one_thread):
    """`phenaki-eval shapes --domain 2`: v2 stories, v2 hold-outs, per-verb and per-clause-count rates;
    the JSON compares with `phenaki-eval compare` (here against the tokenizer ceiling of the same stories)."""
    from phenaki.cli import eval_main
    from phenaki.evaluation.judge2 import CRITERIA2

    out, ceiling_out = tmp_path / "v2.json", tmp_path / "ceiling.json"
    args = ["shapes", "--checkpoint", str(tiny_pipeline_dir), "--domain", "2", "--stories", "2", "--scenes", "2",
            "--config", "configs/shapes2_demo.yaml", "--device", "cpu"]
    result = runner.invoke(eval_main, [*args, "--steps", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "clauses per verb" in result.output and "scenes per clause count" in result.output
    data = json.loads(out.read_text())
    assert data["domain"] == 2 and data["criteria"] == list(CRITERIA2)
    assert data["summary"]["all"]["stories"] == 2 and data["summary"]["heldout"]["stories"] == 1
    assert data["holdout"]["pairings"]  # the config's v2 pairings were used
    assert data["per_verb"] and data["per_verb_key"] and data["per_clause_count"]
    clauses = sum(len(scene["clauses"]) for story in data["stories_detail"] for scene in story["scenes"])
    assert sum(entry["count"] for entry in data["per_verb"].values()) == clauses
    scenes = sum(entry["count"] for entry in data["per_clause_count"].values())
    assert scenes == data["summary"]["all"]["scenes"] == 4

    result = runner.invoke(eval_main, [*args, "--tokenizer-ceiling", "--json", str(ceiling_out)])
    assert result.exit_code == 0, result.output
    ceiling = json.loads(ceiling_out.read_text())
    assert [s["prompts"] for s in ceiling["stories_detail"]] == [s["prompts"] for s in data["stories_detail"]]
    result = runner.invoke(eval_main, ["compare", str(out), str(ceiling_out), "--rounds", "100"])
    assert result.exit_code == 0, result.output
    assert "others_still" in result.output and "nothing_extra" in result.output
