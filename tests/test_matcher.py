"""The text-video matcher: embeddings, its loss, its training run, and its place in a pipeline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from phenaki.checkpoint import load_state_dict
from phenaki.config import Config, ConfigError, MatcherConfig, from_dict
from phenaki.data.shapes import ShapesDataset
from phenaki.models.matcher import TextVideoMatcher, contrastive_loss, frames_to_matcher
from phenaki.pipeline import Phenaki, PipelineError
from phenaki.sampling.settings import SettingsError
from phenaki.training.matcher_trainer import scene_clips, train_matcher

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"image_size": (32, 32), "conv_channels": (8, 8), "dim": 16, "depth": 1, "heads": 2, "embed_dim": 8,
         "text_dim": 12}


def small_matcher(seed: int = 0, **overrides) -> TextVideoMatcher:
    torch.manual_seed(seed)
    return TextVideoMatcher(MatcherConfig(**{**SMALL, **overrides})).eval()


def test_config_names_what_does_not_fit():
    with pytest.raises(ConfigError, match="divisible by 4"):
        MatcherConfig(image_size=(30, 32), conv_channels=(8, 8))
    with pytest.raises(ConfigError, match="heads"):
        MatcherConfig(dim=10, heads=4)
    with pytest.raises(ConfigError, match="unknown config key 'matcher.width'"):
        from_dict(Config, {"matcher": {"width": 3}})


def test_padding_frames_change_nothing_and_weights_round_trip(tmp_path):
    matcher = small_matcher()
    frames = torch.rand(3, 5, 3, 32, 32)
    lengths = torch.tensor([5, 3, 1])
    together = matcher.embed_video(frames, lengths)
    alone = torch.cat([matcher.embed_video(frames[k:k + 1, :n]) for k, n in enumerate(lengths.tolist())])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together.norm(dim=-1), torch.ones(3))
    emb, mask = torch.randn(3, 4, 12), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    garbage = emb.masked_fill(~mask[..., None], 0.0) + 100 * (~mask[..., None]).float()
    assert torch.allclose(matcher.embed_text(emb.masked_fill(~mask[..., None], 0), mask),
                          matcher.embed_text(garbage, mask), atol=1e-5)  # padding tokens are not read
    matcher.save_pretrained(tmp_path / "m")
    again = TextVideoMatcher.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(again.similarity(frames, emb, mask), matcher.similarity(frames, emb, mask))
    with pytest.raises(ValueError, match="frames of 3x32x32"):
        matcher.embed_video(torch.rand(1, 2, 3, 16, 16))


def test_contrastive_loss_counts_every_clip_of_the_same_caption_as_a_match():
    video = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    scale = torch.tensor(math.log(10.0))
    loss, metrics = contrastive_loss(video, text, ["a", "b", "a"], scale)
    logits = 10.0 * video @ text.T
    target = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    expected = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean())
    assert torch.allclose(loss, expected)
    assert metrics["logit_scale"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="do not pair up"):
        contrastive_loss(video, text, ["a", "b"], scale)


def test_scene_clips_keep_the_frames_their_caption_describes():
    videos = torch.arange(3 * 7).view(3, 7, 1, 1, 1).expand(3, 7, 2, 2, 3).to(torch.uint8)
    batch = [{"video": videos, "caption": ["x", "y", "z"], "context_frames": torch.tensor([3, 0, 0])},
             {"video": videos[:1, :1], "caption": ["w"], "context_frames": torch.tensor([0]), "stand_in": True}]
    frames, lengths, captions = scene_clips(batch, crop_prob=0.0, crop_frames=2)
    assert captions == ["x", "y", "z"] and lengths.tolist() == [4, 7, 7]  # the stand-in is left out
    assert frames[0, :4, 0, 0, 0].tolist() == [3, 4, 5, 6] and (frames[0, 4:] == 0).all()  # context cut, padded
    frames, lengths, _ = scene_clips(batch, crop_prob=1.0, crop_frames=2, generator=torch.Generator().manual_seed(0))
    assert lengths.tolist() == [4, 2, 2]  # one-scene clips cut to a run of 2 frames; the straddling one is not
    for k in (1, 2):
        first = int(frames[k, 0, 0, 0, 0]) - 7 * k
        assert frames[k, :2, 0, 0, 0].tolist() == [7 * k + first, 7 * k + first + 1]


def test_frames_to_matcher_layout():
    frames = torch.zeros(1, 2, 4, 6, 3, dtype=torch.uint8)
    frames[0, 1, 2, 3, 0] = 255
    x = frames_to_matcher(frames)
    assert x.shape == (1, 2, 3, 4, 6) and x[0, 1, 0, 2, 3] == 1.0 and x.sum() == 1.0


@pytest.fixture(scope="module")
def shapes_pipeline_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline with a text encoder that knows the Shapes words (still untrained)."""
    from phenaki.config import TextConfig
    from phenaki.models.text import TextEncoder

    pipe = Phenaki.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="float32")
    torch.manual_seed(0)
    captions = [ShapesDataset(400, num_frames=1, seed=5, straddle_prob=0.0)[k]["caption"] for k in range(400)]
    text = TextEncoder.scratch(captions, TextConfig(kind="scratch", dim=16, depth=1, heads=2, ff_dim=32, max_length=12))
    pipe = Phenaki(pipe.tokenizer, pipe.transformer, text, pipe.sampling, device="cpu", dtype="float32")
    return pipe.save_pretrained(tmp_path_factory.mktemp("shapes_pipe") / "model")


def matcher_config(out: Path, steps: int, **train) -> Config:
    return from_dict(Config, {
        "matcher": {"conv_channels": [8, 16, 16, 16], "dim": 32, "depth": 1, "heads": 2, "embed_dim": 16},
        "data": {"kind": "shapes", "num_frames": 5, "num_samples": 4096, "context_frames": 3, "straddle_prob": 0.5,
                 "image_prob": 0.1},
        "train_matcher": {"output_dir": str(out), "steps": steps, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5,
                          "save_every": 2, "preview_every": 0, "log_every": 1, "ema_decay": 0.9,
                          "mixed_precision": "bf16", **train},
        "sampling": {"first_frames": 5, "scene_frames": 2, "context_frames": 3},
    })


def test_training_stops_resumes_exactly_and_exports(shapes_pipeline_dir, tmp_path):
    straight = train_matcher(matcher_config(tmp_path / "a", 4), shapes_pipeline_dir, progress=False)
    train_matcher(matcher_config(tmp_path / "b", 4), shapes_pipeline_dir, progress=False, stop_at=2)
    resumed = train_matcher(matcher_config(tmp_path / "b", 4), shapes_pipeline_dir, progress=False, resume="latest")
    assert straight == tmp_path / "a" / "final" and resumed == tmp_path / "b" / "final"
    a, b = load_state_dict(straight / "model.safetensors"), load_state_dict(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    matcher = TextVideoMatcher.from_pretrained(straight)
    assert matcher.config.text_dim == 16 and matcher.config.image_size == (64, 64)  # resolved from the pipeline
    info = json.loads((straight / "training.json").read_text())
    assert info["steps"] == 4 and info["pipeline"] == str(shapes_pipeline_dir)
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(math.isfinite(line["loss"]) for line in lines)
    with pytest.raises(ValueError, match="not a pipeline directory"):
        train_matcher(matcher_config(tmp_path / "c", 1), tmp_path, progress=False)
    TextVideoMatcher(dataclasses.replace(matcher.config, text_dim=7)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="reads text of width 7"):
        train_matcher(matcher_config(tmp_path / "d", 1, init_from=str(tmp_path / "other")), shapes_pipeline_dir,
                      progress=False)
    tuned = train_matcher(matcher_config(tmp_path / "e", 1, init_from=str(straight)), shapes_pipeline_dir,
                          progress=False)  # a fine-tune of a trained matcher
    assert TextVideoMatcher.from_pretrained(tuned).config == matcher.config


def test_a_trained_matcher_tells_a_clips_colour_from_its_prompt(shapes_pipeline_dir, tmp_path):
    """After a short run, a fresh clip lies closer to its own prompt than to the same prompt in
    another colour far more often than chance (half)."""
    final = train_matcher(matcher_config(tmp_path / "m", 200, save_every=0), shapes_pipeline_dir, progress=False)
    pipe = Phenaki.from_pretrained(shapes_pipeline_dir, device="cpu", dtype="float32")
    matcher = TextVideoMatcher.from_pretrained(final).eval()
    clips = ShapesDataset(64, num_frames=5, seed=99, straddle_prob=0.0)
    wins = 0
    for k in range(len(clips)):
        item = clips[k]
        other = "green" if " red " in f" {item['caption']} " else "red"
        words = item["caption"].split()
        colour = next(w for w in words if w.rstrip(".") in ("red", "green", "blue", "yellow", "magenta", "cyan",
                                                             "white"))
        wrong = item["caption"].replace(colour, other if colour.rstrip(".") != other else "blue", 1)
        emb, mask = pipe.text_encoder.encode([item["caption"], wrong])
        with torch.no_grad():
            video = matcher.embed_video(frames_to_matcher(item["video"][None]))
            text = matcher.embed_text(emb, mask)
        scores = (video @ text.T)[0]
        wins += int(scores[0] > scores[1])
    assert wins >= 0.75 * len(clips), f"{wins} of {len(clips)}"


def load_export_script():
    script = Path(__file__).resolve().parents[1] / "train" / "export_model.py"
    spec = importlib.util.spec_from_file_location("export_model", script)
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    return export


def test_pipeline_ships_loads_and_uses_its_matcher(tiny_pipeline_dir, tmp_path):
    pipe = Phenaki.from_pretrained(tiny_pipeline_dir, device="cpu", dtype="float32")
    torch.manual_seed(0)
    matcher = TextVideoMatcher(MatcherConfig(conv_channels=(8, 8, 8, 8), dim=16, depth=1, heads=2, embed_dim=8,
                                             text_dim=pipe.text_encoder.dim))
    matcher.save_pretrained(tmp_path / "matcher")
    export = load_export_script()
    runner = CliRunner()
    result = runner.invoke(export.main, [str(tiny_pipeline_dir), str(tmp_path / "with"), "--dtype", "bfloat16",
                                         "--text-dtype", "float32", "--matcher", str(tmp_path / "matcher"),
                                         "--match-weight", "7", "--polish-passes", "2"])
    assert result.exit_code == 0, result.output
    shipped = Phenaki.from_pretrained(tmp_path / "with", device="cpu", dtype="float32")
    assert shipped.matcher is not None and shipped.sampling.match_weight == 7.0
    assert shipped.sampling.polish_passes == 2 and pipe.sampling.polish_passes == 1
    for key, value in matcher.state_dict().items():  # shipped in bf16, loaded back in fp32
        assert torch.equal(shipped.matcher.state_dict()[key], value.to(torch.bfloat16).float()), key
    stored = {part: next(iter(load_state_dict(next((tmp_path / "with" / part).glob("*.safetensors"))).values()))
              for part in ("tokenizer", "transformer", "matcher", "text_encoder")}
    assert {part: t.dtype for part, t in stored.items()} == {
        "tokenizer": torch.bfloat16, "transformer": torch.bfloat16, "matcher": torch.bfloat16,
        "text_encoder": torch.float32}  # --text-dtype keeps the text encoder whole
    shipped = pipe.with_matcher(matcher)  # the fp32 weights, so that the checks below compare exactly

    story = ["a red ball moves right", "the blue box rises"]
    plain = shipped.generate(story, seed=3, candidates=3, match_weight=0.0)
    assert plain.metadata["settings"]["match_weight"] == 0.0
    assert torch.equal(plain.frames, pipe.generate(story, seed=3, candidates=3).frames)  # 0 = as without one
    matched = shipped.generate(story, seed=3, candidates=3, match_weight=1e6)  # the matcher alone decides
    assert matched.metadata["settings"]["match_weight"] == 1e6
    assert not torch.equal(plain.frames, matched.frames)
    assert torch.equal(matched.frames, shipped.generate(story, seed=3, candidates=3, match_weight=1e6).frames)
    with pytest.raises(SettingsError, match="match_weight must be finite"):
        shipped.generate(story[:1], match_weight=-1.0)

    # without a matcher: an explicit weight is an error, the settings' weight is not used
    with pytest.raises(PipelineError, match="no matcher"):
        pipe.generate(story[:1], candidates=2, match_weight=1.0)
    pipe.sampling = dataclasses.replace(pipe.sampling, match_weight=5.0)
    assert pipe.generate(story[:1], candidates=2, seed=1).metadata["settings"]["match_weight"] == 0.0

    result = runner.invoke(export.main, [str(tiny_pipeline_dir), str(tmp_path / "bad"), "--match-weight", "2"])
    assert result.exit_code == 1 and "no matcher" in result.output and not (tmp_path / "bad").exists()
    wrong = TextVideoMatcher(dataclasses.replace(matcher.config, text_dim=pipe.text_encoder.dim + 1))
    with pytest.raises(PipelineError, match="trained for another pipeline"):
        pipe.with_matcher(wrong)
