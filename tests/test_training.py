import itertools
import json

import pytest
import torch

from phenaki.checkpoint import load_state_dict
from phenaki.config import Config, from_dict
from phenaki.models.cvivit import CViViT
from phenaki.training.base import (
    EMA,
    ResumableSampler,
    collate_clips,
    lr_factor,
    parse_overrides,
)
from phenaki.training.tokenizer_trainer import train_tokenizer


def tiny_config(out, quantizer="vq", steps=4, **train):
    return from_dict(Config, {
        "tokenizer": {"dim": 32, "spatial_depth": 1, "temporal_depth": 1, "heads": 2, "dim_head": 16,
                      "quantizer": quantizer, "codebook_size": 64, "codebook_dim": 8, "num_frames": 5,
                      "dropout": 0.1},
        "data": {"kind": "shapes", "num_frames": 5, "num_samples": 40, "image_prob": 0.25,
                 "context_frames": 2, "holdout_combinations": [["red", "circle", "up"]]},
        "train_tokenizer": {"output_dir": str(out), "steps": steps, "batch_size": 3, "warmup_steps": 1,
                            "save_every": 2, "preview_every": 0, "log_every": 1, "ema_decay": 0.9,
                            "mixed_precision": "bf16", **train},
    })


def test_resume_continues_exactly(tmp_path):
    straight = train_tokenizer(tiny_config(tmp_path / "a"), progress=False)
    train_tokenizer(tiny_config(tmp_path / "b"), stop_at=2, progress=False)
    assert not (tmp_path / "b" / "final").exists()
    resumed = train_tokenizer(tiny_config(tmp_path / "b"), resume="latest", progress=False)
    a = load_state_dict(tmp_path / "a" / "checkpoints" / "step-0000004" / "tokenizer.safetensors")
    b = load_state_dict(tmp_path / "b" / "checkpoints" / "step-0000004" / "tokenizer.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # the exported EMA models agree too, and they load as tokenizers
    ta, tb = CViViT.from_pretrained(straight), CViViT.from_pretrained(resumed)
    for (ka, va), (_, vb) in zip(ta.state_dict().items(), tb.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=ka)
    # and training changed the weights at all (the comparison is not vacuous)
    fresh = load_state_dict(tmp_path / "a" / "checkpoints" / "step-0000002" / "tokenizer.safetensors")
    assert any(not torch.equal(fresh[k], a[k]) for k in a)


def test_resume_with_more_steps_extends_a_finished_run(tmp_path):
    train_tokenizer(tiny_config(tmp_path), progress=False)
    config = tiny_config(tmp_path, steps=6)
    final = train_tokenizer(config, resume="latest", progress=False)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # the schedule is the new run's: at step 5 of 6, not the floor where the 4-step run ended
    cfg = config.train_tokenizer
    assert records[3]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio, abs=1e-6)  # logged to 6 decimals
    assert records[4]["lr"] == pytest.approx(cfg.lr * lr_factor(5, cfg.warmup_steps, 6, cfg.min_lr_ratio), abs=1e-6)  # logged to 6 decimals
    assert records[4]["lr"] > records[3]["lr"]
    assert (final / "model.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "step-0000006").is_dir()


def test_resume_with_fewer_steps_than_done_is_an_error(tmp_path):
    train_tokenizer(tiny_config(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"step 4, beyond train.steps=3.*train_tokenizer.steps"):
        train_tokenizer(tiny_config(tmp_path, steps=3), resume="latest", progress=False)


def test_run_writes_metrics_previews_and_checkpoints(tmp_path):
    config = tiny_config(tmp_path / "run", quantizer="fsq", preview_every=2, keep_checkpoints=1)
    config.tokenizer.fsq_levels = [4, 4, 4]
    config.tokenizer.__post_init__()
    final = train_tokenizer(config, progress=False)
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000004"]
    assert sorted(p.name for p in (tmp_path / "run" / "previews").iterdir()) == [
        "step-0000002.gif", "step-0000004.gif"]
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "psnr", "lr", "grad_norm"} <= set(records[0])
    assert any("val_psnr" in r and "val_ssim" in r and "val_usage" in r for r in records)


def test_compile_option_compiles_the_trained_module(tmp_path):
    """`compile: true` hands the model to torch.compile (through accelerate); off, nothing is compiled."""
    from phenaki.training.tokenizer_trainer import TokenizerTrainer

    plain = TokenizerTrainer(tiny_config(tmp_path / "plain"), progress=False)
    compiled = TokenizerTrainer(tiny_config(tmp_path / "compiled", compile=True), progress=False)
    assert plain.modules["tokenizer"]._compiled_call_impl is None
    assert compiled.modules["tokenizer"]._compiled_call_impl is not None
    assert isinstance(compiled.modules["tokenizer"], CViViT)  # compiled in place: same module, same keys


@pytest.mark.slow
def test_compiled_training_runs_and_exports(tmp_path):
    config = tiny_config(tmp_path / "run", quantizer="lfq", steps=2, compile=True)
    config.data.image_prob = 0.0  # one clip shape: one compile
    final = train_tokenizer(config, progress=False)
    CViViT.from_pretrained(final)


def test_cpu_training_uses_the_fused_adamw_and_it_steps_like_the_plain_one(tmp_path):
    """The trainer asks for fused AdamW on CPU; a fused step lands where torch's default step does."""
    from phenaki.training.tokenizer_trainer import TokenizerTrainer

    trainer = TokenizerTrainer(tiny_config(tmp_path / "run"), progress=False)
    optimizer = trainer.optimizers["tokenizer"]
    assert getattr(optimizer, "optimizer", optimizer).defaults["fused"] is True

    torch.manual_seed(0)
    weights = [torch.randn(8, 8), torch.randn(8)]
    grads = [torch.randn(8, 8), torch.randn(8)]
    results = []
    for fused in (True, None):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, fused=fused)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for fused, plain, start in zip(*results, weights):
        assert not torch.equal(fused, start)
        torch.testing.assert_close(fused, plain)


def test_decoder_only_fine_tuning_keeps_every_id(tmp_path):
    """Starting from a trained tokenizer with a frozen encoder: same ids, a different decoder."""
    first = train_tokenizer(tiny_config(tmp_path / "first", quantizer="vq"), progress=False)
    config = tiny_config(tmp_path / "tuned", quantizer="vq", init_from=str(first), decoder_only=True, lr=1e-2,
                         hard_weight=1.0)  # with the worst pixels' term, as the shipped decoder was last tuned
    config.tokenizer.dim = 64  # ignored: the architecture comes from init_from
    tuned = train_tokenizer(config, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["hard"] > line["l2"] for line in logged)  # the worst pixels are worse than the mean
    before, after = CViViT.from_pretrained(first), CViViT.from_pretrained(tuned)
    assert after.config == before.config
    pixels = torch.rand(2, 3, 5, 64, 64)
    assert torch.equal(before.encode(pixels), after.encode(pixels))  # VQ codebook and encoder untouched
    for module in ("first_embed", "tubelet_embed", "encoder", "quantizer"):
        for (name, a), (_, b) in zip(getattr(before, module).state_dict().items(),
                                     getattr(after, module).state_dict().items()):
            assert torch.equal(a, b), f"{module}.{name} changed"
    assert not torch.equal(before.tubelet_head.weight, after.tubelet_head.weight)


def test_init_from_a_checkpoint_starts_from_its_ema_weights(tmp_path):
    """A run stopped early (`--stop-at`) leaves no `final`; its checkpoint still seeds a second
    stage, with the EMA weights that `final` would have held at that step."""
    train_tokenizer(tiny_config(tmp_path / "first", quantizer="fsq"), stop_at=2, progress=False)
    ckpt = tmp_path / "first" / "checkpoints" / "step-0000002"
    assert not (tmp_path / "first" / "final").exists()
    config = tiny_config(tmp_path / "second", quantizer="fsq", init_from=str(ckpt), decoder_only=True, steps=1)
    config.tokenizer.dim = 64  # ignored: the architecture comes from the checkpoint
    from phenaki.training.tokenizer_trainer import TokenizerTrainer

    start = TokenizerTrainer(config, progress=False).unwrapped
    assert start.config.dim == 32
    ema, raw = load_state_dict(ckpt / "ema.safetensors"), load_state_dict(ckpt / "tokenizer.safetensors")
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # the two differ, so the check below means something
    for key, value in start.state_dict().items():
        assert torch.equal(value, ema[key]), key
    (ckpt / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no ema.safetensors"):
        TokenizerTrainer(config, progress=False)


def test_decoder_only_fine_tuning_can_widen_the_decoder(tmp_path):
    """`tokenizer.decoder_spatial_window` applies to an init_from tokenizer: the encoder and its ids
    stay, the exported decoder attends over the whole frame."""
    base = tiny_config(tmp_path / "first", quantizer="fsq")
    base.tokenizer.spatial_window = 1
    first = train_tokenizer(base, progress=False)
    config = tiny_config(tmp_path / "wide", quantizer="fsq", init_from=str(first), decoder_only=True, lr=1e-2)
    config.tokenizer.decoder_spatial_window = 0
    tuned = train_tokenizer(config, progress=False)
    before, after = CViViT.from_pretrained(first), CViViT.from_pretrained(tuned)
    assert (before.config.decoder_window, after.config.decoder_window) == (1, 0)
    assert after.config.spatial_window == 1
    pixels = torch.rand(2, 3, 5, 64, 64)
    ids = before.encode(pixels)
    assert torch.equal(ids, after.encode(pixels))
    assert not torch.equal(before.decode(ids), after.decode(ids))


def test_decoder_only_fine_tuning_can_add_a_refiner(tmp_path):
    """`tokenizer.refine_channels` adds a refiner to an init_from tokenizer: the ids stay, the
    trained refiner is exported and changes the drawing; resizing an existing refiner is refused."""
    base = tiny_config(tmp_path / "first", quantizer="fsq")
    first = train_tokenizer(base, progress=False)
    config = tiny_config(tmp_path / "refined", quantizer="fsq", init_from=str(first), decoder_only=True, lr=1e-2)
    config.tokenizer.refine_channels, config.tokenizer.refine_features = 8, 4
    tuned = train_tokenizer(config, progress=False)
    before, after = CViViT.from_pretrained(first), CViViT.from_pretrained(tuned)
    assert before.refiner is None and after.refiner is not None
    assert after.refiner.out_weight.abs().max() > 0  # trained away from its identity start
    pixels = torch.rand(2, 3, 5, 64, 64)
    ids = before.encode(pixels)
    assert torch.equal(ids, after.encode(pixels))
    assert not torch.equal(before.decode(ids), after.decode(ids))
    again = tiny_config(tmp_path / "again", quantizer="fsq", init_from=str(tuned), decoder_only=True)
    kept = CViViT.from_pretrained(train_tokenizer(again, progress=False))  # a config without one keeps the refiner
    assert kept.refiner is not None and kept.config.refine_channels == 8
    resized = tiny_config(tmp_path / "resized", quantizer="fsq", init_from=str(tuned), decoder_only=True)
    resized.tokenizer.refine_channels, resized.tokenizer.refine_features = 16, 4
    with pytest.raises(ValueError, match="already has a refiner"):
        train_tokenizer(resized, progress=False)


def test_decoder_only_needs_a_trained_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="init_from"):
        train_tokenizer(tiny_config(tmp_path / "x", decoder_only=True), progress=False)


def test_output_dir_option_is_what_the_checkpoint_records(tmp_path):
    """`--output-dir` (the `output_dir` argument) wins over the config's: the files go there,
    the config saved with each checkpoint names it, and a resumed run finishes there."""
    elsewhere = tmp_path / "elsewhere"
    train_tokenizer(tiny_config(tmp_path / "configured"), output_dir=elsewhere, stop_at=2, progress=False)
    assert not (tmp_path / "configured").exists()
    state = json.loads((elsewhere / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["config"]["train_tokenizer"]["output_dir"] == str(elsewhere)
    resumed = train_tokenizer(tiny_config(tmp_path / "configured"), output_dir=elsewhere, resume="latest",
                              progress=False)
    assert resumed == elsewhere / "final"


def test_resume_rejects_a_non_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        train_tokenizer(tiny_config(tmp_path / "c"), resume=str(tmp_path), progress=False)


def test_lr_warmup_then_cosine_to_floor():
    values = [lr_factor(s, 10, 110, 0.1) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))
    assert values[110] == pytest.approx(0.1)


def test_ema_tracks_parameters_and_copies_buffers():
    model = torch.nn.BatchNorm1d(3)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((3,), 2.0))  # halfway from 1 to 3
    assert torch.allclose(ema.shadow["running_mean"], torch.full((3,), 7.0))


def test_ema_warms_up_so_early_averages_forget_the_initialisation():
    model = torch.nn.Linear(2, 2, bias=False)
    ema = EMA(model, decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10_000) == 0.999 and ema.decay_at(None) == 0.999
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(1000):
        ema.update(model, step)
    # plain 0.999 would still hold 0.999**1000 = 37% of the initial weights here
    assert torch.allclose(ema.shadow["weight"], torch.ones(2, 2), atol=0.02)


def test_sampler_shards_are_disjoint_and_resumable():
    ranks = [list(itertools.islice(iter(ResumableSampler(10, seed=1, rank=r, world=2)), 5)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
    whole = list(itertools.islice(iter(ResumableSampler(10, seed=1)), 23))
    resumed = list(itertools.islice(iter(ResumableSampler(10, seed=1, start=13)), 10))
    assert resumed == whole[13:23]
    assert sorted(whole[:10]) == list(range(10)) and whole[:10] != whole[10:20]


def test_collate_groups_images_and_clips():
    batch = [
        {"video": torch.zeros(5, 4, 4, 3, dtype=torch.uint8), "caption": "a", "context_frames": 0},
        {"video": torch.zeros(1, 4, 4, 3, dtype=torch.uint8), "caption": "b", "context_frames": 0},
        {"video": torch.zeros(5, 4, 4, 3, dtype=torch.uint8), "caption": "c", "context_frames": 2},
    ]
    groups = collate_clips(batch)
    assert [tuple(g["video"].shape[:2]) for g in groups] == [(2, 5), (1, 1)]
    assert groups[0]["caption"] == ["a", "c"] and groups[0]["context_frames"].tolist() == [0, 2]


def test_parse_overrides():
    assert parse_overrides(("a.b=3", "c=[1, 2]", "d=true")) == {"a.b": 3, "c": [1, 2], "d": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(("nonsense",))
