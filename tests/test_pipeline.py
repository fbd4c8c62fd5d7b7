import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from phenaki.cli import sample_main
from phenaki.pipeline import Phenaki, PipelineError
from phenaki.sampling.settings import SettingsError
from phenaki.video import Video, read_video


@pytest.fixture(scope="module")
def pipeline_dir(tiny_pipeline_dir):
    return tiny_pipeline_dir


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return Phenaki.from_pretrained(pipeline_dir, device="cpu", dtype="float32")


STORY = ["a red ball moves right", "the blue box rises", "a green disc falls"]


def test_story_has_every_frame_once_with_scene_ranges(pipe):
    video = pipe.generate(STORY, seed=1, progress=False)
    assert isinstance(video, Video)
    assert tuple(video.frames.shape) == (11 + 6 + 6, 64, 64, 3)
    assert [(s.prompt, s.start, s.end) for s in video.scenes] == [
        (STORY[0], 0, 11), (STORY[1], 11, 17), (STORY[2], 17, 23)]
    assert video.fps == 8.0
    assert video.metadata["settings"]["seed"] == 1 and video.metadata["prompts"] == STORY


def test_temporal_bias_overrides_the_sampling_settings_and_is_recorded(pipe):
    default = pipe.generate(STORY[:1], seed=2)
    strict = pipe.generate(STORY[:1], seed=2, temporal_bias=1000.0)
    assert default.metadata["settings"]["temporal_bias"] == pipe.sampling.temporal_bias
    assert strict.metadata["settings"]["temporal_bias"] == 1000.0
    assert not torch.equal(default.frames, strict.frames)  # another reveal order, another sample


def test_candidates_choose_among_draws_and_are_recorded(pipe, monkeypatch):
    import phenaki.pipeline as pipeline_module

    seen = []
    real = pipeline_module.draw

    def spy(model, text, prime, settings, *args, **kwargs):
        seen.append(settings.candidates)
        return real(model, text, prime, settings, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "draw", spy)
    default = pipe.generate(STORY[:2], seed=3)
    best = pipe.generate(STORY[:2], seed=3, candidates=3)
    assert seen == [pipe.sampling.candidates] * 2 + [3, 3]  # every scene chooses
    assert default.metadata["settings"]["candidates"] == pipe.sampling.candidates
    assert best.metadata["settings"]["candidates"] == 3
    assert best.num_frames == default.num_frames and not torch.equal(best.frames, default.frames)
    assert torch.equal(best.frames, pipe.generate(STORY[:2], seed=3, candidates=3).frames)
    with pytest.raises(SettingsError, match="candidates must be >= 1"):
        pipe.generate(STORY[:1], candidates=0)


def test_polish_is_applied_and_recorded(pipe):
    plain = pipe.generate(STORY[:2], seed=3, polish=0.0)
    polished = pipe.generate(STORY[:2], seed=3, polish=0.5)
    assert plain.metadata["settings"]["polish"] == 0.0 and polished.metadata["settings"]["polish"] == 0.5
    assert not torch.equal(plain.frames, polished.frames)
    assert torch.equal(polished.frames, pipe.generate(STORY[:2], seed=3, polish=0.5).frames)
    with pytest.raises(SettingsError, match="polish must be in"):
        pipe.generate(STORY[:1], polish=1.0)
    twice = pipe.generate(STORY[:2], seed=3, polish=0.5, polish_passes=2)
    assert twice.metadata["settings"]["polish_passes"] == 2 and polished.metadata["settings"]["polish_passes"] == 1
    with pytest.raises(SettingsError, match="polish_passes must be"):
        pipe.generate(STORY[:1], polish=0.5, polish_passes=0)


def test_relevance_floor_is_applied_and_recorded(pipe):
    plain = pipe.generate(STORY[:2], seed=3, candidates=3)
    gated = pipe.generate(STORY[:2], seed=3, candidates=3, relevance_floor=1.0)
    assert plain.metadata["settings"]["relevance_floor"] == 0.0
    assert gated.metadata["settings"]["relevance_floor"] == 1.0
    assert not torch.equal(plain.frames, gated.frames)
    assert torch.equal(gated.frames, pipe.generate(STORY[:2], seed=3, candidates=3, relevance_floor=1.0).frames)
    with pytest.raises(SettingsError, match="relevance_floor must be in"):
        pipe.generate(STORY[:1], relevance_floor=2.0)


def test_library_is_quiet_unless_a_bar_is_asked_for(pipe, capsys):
    pipe.generate(STORY[:1], seed=0)
    assert capsys.readouterr().err == ""
    pipe.generate(STORY[:1], seed=0, progress=True)
    assert "scene 1/1" in capsys.readouterr().err


def test_same_seed_same_video_other_seed_differs(pipe):
    a = pipe.generate(STORY[:2], seed=5, progress=False)
    b = pipe.generate(STORY[:2], seed=5, progress=False)
    c = pipe.generate(STORY[:2], seed=6, progress=False)
    assert torch.equal(a.frames, b.frames)
    assert not torch.equal(a.frames, c.frames)


def test_later_scenes_are_primed_with_the_tail_of_the_video(pipe, monkeypatch):
    import phenaki.pipeline as pipeline_module

    seen = []
    original = pipeline_module.draw

    def spy(model, text, prime, settings, generator, *, num_token_frames, **kwargs):
        seen.append((num_token_frames, None if prime is None else prime.shape[1]))
        return original(model, text, prime, settings, generator, num_token_frames=num_token_frames, **kwargs)

    monkeypatch.setattr(pipeline_module, "draw", spy)
    pipe.generate(STORY, seed=0, progress=False)
    # scene 1: 6 token-frames from scratch; later: 5 context frames = 3 primed + 3 new token-frames
    assert seen == [(6, None), (6, 3), (6, 3)]


def test_per_scene_settings_and_long_scenes(pipe):
    video = pipe.generate(["a red ball moves right [frames=1]"], seed=0, progress=False)
    assert video.num_frames == 1  # text-to-image
    video = pipe.generate(["a red ball moves right", "the blue box rises [frames=14 guidance=2]"],
                          seed=0, progress=False)
    assert video.num_frames == 11 + 14  # the long scene spans several windows
    assert (video.scenes[1].start, video.scenes[1].end) == (11, 25)
    assert video.metadata["scene_settings"] == [{}, {"frames": 14, "guidance": 2.0}]  # so the run can be repeated
    video = pipe.generate(["a red ball moves right [candidates=2 temporal_bias=3]"], seed=0, progress=False)
    assert video.metadata["scene_settings"] == [{"candidates": 2, "temporal_bias": 3.0}]
    video = pipe.generate(["a red ball moves right [top_k=none]"], seed=0, top_k=4)  # none clears it for the scene
    assert video.metadata["settings"]["top_k"] == 4 and video.metadata["scene_settings"] == [{"top_k": None}]
    with pytest.raises(SettingsError, match="unknown sampling setting 'stepz'"):
        pipe.generate(STORY[:1], stepz=3)


def test_durations_in_seconds_round_to_whole_tubelets(pipe):
    video = pipe.generate(["a red ball moves right", "the blue box rises [seconds=0.6]"], seed=0,
                          progress=False)
    assert video.scenes[1].end - video.scenes[1].start == 4  # 0.6 s at 8 fps = 4.8 -> 2 tubelets of 2
    video = pipe.generate(STORY[:2], scene_seconds=1.0, seed=0, progress=False)
    assert video.scenes[1].end - video.scenes[1].start == 8


def test_twenty_scene_story(pipe):
    story = [STORY[i % 3] for i in range(20)]
    video = pipe.generate(story, seed=0, steps=1, progress=False)
    assert video.num_frames == 11 + 19 * 6
    assert [s.end - s.start for s in video.scenes] == [11] + [6] * 19


def test_prime_video_is_continued(pipe, tmp_path):
    prime = Video(torch.randint(0, 255, (7, 80, 96, 3), dtype=torch.uint8), fps=8.0)
    video = pipe.generate(["the blue box rises"], prime=prime, seed=0, progress=False)
    assert video.scenes[0].prompt == "<prime>" and video.scenes[0].end == 7
    assert video.num_frames == 7 + 6
    with pytest.raises(PipelineError, match="at least 5"):
        pipe.generate(["the blue box rises"], prime=Video(prime.frames[:3], fps=8.0), progress=False)


def test_batched_samples(pipe):
    videos = pipe.generate(STORY[:2], seed=0, num_samples=2, progress=False)
    assert len(videos) == 2 and all(v.num_frames == 17 for v in videos)
    assert not torch.equal(videos[0].frames, videos[1].frames)


def test_several_stories_in_one_batch(pipe):
    other = ["a green disc falls", "a red ball moves right"]
    videos = pipe.generate([STORY[:2], other], seed=0, num_samples=2, progress=False)
    assert len(videos) == 4
    assert [v.scenes[0].prompt for v in videos] == [STORY[0], STORY[0], other[0], other[0]]
    assert all(v.num_frames == 17 for v in videos)
    with pytest.raises(PipelineError, match="same number of scenes"):
        pipe.generate([STORY[:2], STORY[:1]], progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"first_frames": 10}, "1 \\+ 2\\*k"),
    ({"scene_frames": 5}, "groups of 2"),
    ({"context_frames": 4}, "context_frames must be 1 \\+ 2\\*k"),
    ({"scene_frames": 2, "scene_seconds": 1.0}, "not both"),
])
def test_bad_lengths_are_named(pipe, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        pipe.generate(STORY[:2], progress=False, **kwargs)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(PipelineError, match="no pipeline.json"):
        Phenaki.from_pretrained(tmp_path)


def test_cli_same_command_same_frames(pipeline_dir, tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("# two scenes\na red ball moves right\n\nthe blue box rises\n", encoding="utf-8")
    runner = CliRunner()
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = runner.invoke(sample_main, ["--prompts", str(story), "--out", str(out), "--checkpoint",
                                             str(pipeline_dir), "--seed", "7", "--steps", "2", "--dtype", "float32",
                                             "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "17 frames" in result.output
        outs.append(read_video(out)[0])
    assert torch.equal(outs[0], outs[1])
    sidecar = json.loads((tmp_path / "a.json").read_text())
    assert [s["prompt"] for s in sidecar["scenes"]] == ["a red ball moves right", "the blue box rises"]
    assert sidecar["metadata"]["settings"]["seed"] == 7
    assert sidecar["metadata"]["checkpoint"] == str(pipeline_dir)


def test_cli_reports_a_bad_checkpoint_without_a_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(sample_main, ["--prompt", "a red ball moves right", "--checkpoint",
                                              str(tmp_path / "empty"), "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == 1
    assert "no pipeline.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.mp4").exists()


def test_export_drops_transformer_blocks_and_says_so(pipeline_dir, tmp_path):
    """`export_model.py --drop-block`: the exported transformer is the source's without those
    blocks, pipeline.json records them, and an impossible drop fails with no output written."""
    import importlib.util
    from pathlib import Path

    from phenaki.models.maskgit import MaskGit

    script = Path(__file__).resolve().parents[1] / "train" / "export_model.py"
    spec = importlib.util.spec_from_file_location("export_model", script)
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)

    source = Phenaki.from_pretrained(pipeline_dir, device="cpu", dtype="float32")
    torch.manual_seed(0)
    deep = MaskGit(dataclasses.replace(source.transformer.config, depth=3))
    source.with_transformer(deep).save_pretrained(tmp_path / "deep")
    runner = CliRunner()
    result = runner.invoke(export.main, [str(tmp_path / "deep"), str(tmp_path / "out"), "--dtype", "float32",
                                         "--drop-block", "1"])
    assert result.exit_code == 0, result.output
    out = Phenaki.from_pretrained(tmp_path / "out", device="cpu", dtype="float32")
    expected = deep.without_blocks([1])
    assert out.transformer.config.depth == 2
    for key, value in expected.state_dict().items():
        assert torch.equal(out.transformer.state_dict()[key], value), key
    settings = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert settings["dropped_blocks"] == {"from_depth": 3, "blocks": [1]}

    result = runner.invoke(export.main, [str(tmp_path / "deep"), str(tmp_path / "bad"), "--drop-block", "5"])
    assert result.exit_code == 1 and "0..2" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bad").exists()


def test_export_swaps_in_a_decoder_only_fine_tune_and_refuses_other_tokenizers(pipeline_dir, tmp_path):
    """`export_model.py --tokenizer`: a tokenizer with the pipeline's encoder (a decoder-only
    fine-tune) replaces the pipeline's; one whose encoder differs would scramble every id: refused."""
    import importlib.util
    from pathlib import Path

    from phenaki.models.cvivit import CViViT

    script = Path(__file__).resolve().parents[1] / "train" / "export_model.py"
    spec = importlib.util.spec_from_file_location("export_model", script)
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)

    tokenizer = CViViT.from_pretrained(pipeline_dir / "tokenizer")
    tuned = CViViT(dataclasses.replace(tokenizer.config, decoder_spatial_window=0))
    tuned.load_state_dict(tokenizer.state_dict())
    with torch.no_grad():
        tuned.tubelet_head.bias.add_(0.1)  # the decoder changed
    tuned.save_pretrained(tmp_path / "tuned")
    runner = CliRunner()
    result = runner.invoke(export.main, [str(pipeline_dir), str(tmp_path / "out"), "--dtype", "float32",
                                         "--tokenizer", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    out = Phenaki.from_pretrained(tmp_path / "out", device="cpu", dtype="float32")
    assert out.tokenizer.config.decoder_window == 0
    ids = torch.randint(0, 125, (1, 2, 8, 8))
    torch.testing.assert_close(out.tokenizer.decode(ids), tuned.decode(ids))
    source = Phenaki.from_pretrained(pipeline_dir, device="cpu", dtype="float32")
    for key, value in source.transformer.state_dict().items():  # the generator is untouched
        assert torch.equal(out.transformer.state_dict()[key], value), key

    with torch.no_grad():
        tuned.tubelet_embed.weight.add_(0.1)  # now the encoder changed too
    tuned.save_pretrained(tmp_path / "other")
    relevelled = CViViT(dataclasses.replace(tokenizer.config, fsq_levels=[4, 4, 8]))  # same weights, other codes
    relevelled.load_state_dict(tokenizer.state_dict())
    relevelled.save_pretrained(tmp_path / "relevelled")
    for name, named in (("other", "tubelet_embed.weight"), ("relevelled", "fsq_levels")):
        result = runner.invoke(export.main, [str(pipeline_dir), str(tmp_path / "bad"), "--tokenizer",
                                             str(tmp_path / name)])
        assert result.exit_code == 1, name
        assert named in result.output and "Traceback" not in result.output
        assert not (tmp_path / "bad").exists()
