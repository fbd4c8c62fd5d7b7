import json

import pytest
import torch
from conftest import TINY_TOKENIZER

from phenaki.checkpoint import load_state_dict
from phenaki.config import Config, TokenizerConfig, from_dict
from phenaki.data.shapes import ShapesDataset
from phenaki.models.cvivit import CViViT
from phenaki.models.maskgit import MaskGit
from phenaki.models.text import TextEncoder
from phenaki.training.maskgit_trainer import train_maskgit
from phenaki.training.token_cache import (
    TokenDataset,
    context_token_frames,
    tokenize_dataset,
)
from phenaki.video import frames_to_pixels

TOKENIZER = TINY_TOKENIZER




def config(out, steps=4):
    return from_dict(Config, {
        "tokenizer": TOKENIZER,
        "transformer": {"dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "max_token_frames": 3},
        "text": {"kind": "scratch", "dim": 16, "depth": 1, "heads": 2, "ff_dim": 32, "max_length": 12},
        "data": {"kind": "shapes", "num_frames": 5, "num_samples": 24, "context_frames": 3,
                 "image_prob": 0.2, "straddle_prob": 0.5},
        "train_maskgit": {"output_dir": str(out), "steps": steps, "batch_size": 4, "warmup_steps": 1,
                          "save_every": 2, "preview_every": 0, "log_every": 1, "ema_decay": 0.9,
                          "mixed_precision": "bf16", "continuation_prob": 0.5},
        "sampling": {"first_frames": 5, "scene_frames": 2, "context_frames": 3, "steps": 2},
    })


def test_context_token_frames():
    assert [context_token_frames(c, 2) for c in (0, 1, 3, 4, 5)] == [0, 1, 2, 2, 3]


def test_token_cache_holds_the_tokenizer_ids(tmp_path, tokenizer_dir):
    tokenizer = CViViT.from_pretrained(tokenizer_dir)
    dataset = ShapesDataset(num_samples=10, num_frames=5, image_prob=0.3, context_frames=3, seed=4)
    tokenize_dataset(tokenizer, dataset, tmp_path / "tokens", chunk_size=4, batch_size=3)
    cache = TokenDataset(tmp_path / "tokens", codebook_size=tokenizer.codebook_size)
    assert len(cache) == 10
    for i in range(10):
        item, original = cache[i], dataset[i]
        expected = tokenizer.encode(frames_to_pixels(original["video"][None]))[0]
        assert torch.equal(item["ids"], expected)
        assert item["caption"] == original["caption"]
        assert item["prime_frames"] == context_token_frames(original["context_frames"], 2)
    with pytest.raises(ValueError, match="codebook of 125"):
        TokenDataset(tmp_path / "tokens", codebook_size=1000)


def test_token_cache_resumes_without_redoing_chunks(tmp_path, tokenizer_dir, monkeypatch):
    tokenizer = CViViT.from_pretrained(tokenizer_dir)
    dataset = ShapesDataset(num_samples=8, num_frames=5, context_frames=3, seed=1)
    tokenize_dataset(tokenizer, dataset, tmp_path / "t", chunk_size=4)
    first = (tmp_path / "t" / "chunk-00000.safetensors").stat().st_mtime_ns
    (tmp_path / "t" / "chunk-00001.safetensors").unlink()  # as if the run died in chunk 1
    (tmp_path / "t" / "manifest.json").unlink()
    calls = []
    original = CViViT.encode
    monkeypatch.setattr(CViViT, "encode", lambda self, x: calls.append(len(x)) or original(self, x))
    tokenize_dataset(tokenizer, dataset, tmp_path / "t", chunk_size=4)
    assert sum(calls) == 4  # only the missing chunk was encoded
    assert (tmp_path / "t" / "chunk-00000.safetensors").stat().st_mtime_ns == first
    assert len(TokenDataset(tmp_path / "t")) == 8


def test_token_cache_grows_when_more_items_are_wanted(tmp_path, tokenizer_dir, monkeypatch):
    tokenizer = CViViT.from_pretrained(tokenizer_dir)
    dataset = ShapesDataset(num_samples=10, num_frames=5, context_frames=3, seed=2)
    tokenize_dataset(tokenizer, dataset, tmp_path / "t", num_items=6, chunk_size=4)  # chunks of 4 + 2
    first = (tmp_path / "t" / "chunk-00000.safetensors").stat().st_mtime_ns
    calls = []
    original = CViViT.encode
    monkeypatch.setattr(CViViT, "encode", lambda self, x: calls.append(len(x)) or original(self, x))
    tokenize_dataset(tokenizer, dataset, tmp_path / "t", num_items=10, chunk_size=4)
    assert sum(calls) == 6  # the short chunk again (4) and the new one (2); the full chunk is kept
    assert (tmp_path / "t" / "chunk-00000.safetensors").stat().st_mtime_ns == first
    grown = TokenDataset(tmp_path / "t")
    fresh = TokenDataset(tokenize_dataset(tokenizer, dataset, tmp_path / "fresh", num_items=10, chunk_size=4))
    assert len(grown) == 10
    assert all(torch.equal(grown[i]["ids"], fresh[i]["ids"]) and grown[i]["caption"] == fresh[i]["caption"]
               for i in range(10))


def test_training_sees_a_larger_cache_items(tmp_path, tokenizer_dir):
    from phenaki.training.maskgit_trainer import ensure_token_cache

    cfg = config(tmp_path)
    cfg.train_maskgit.cache_items = 5
    assert len(TokenDataset(ensure_token_cache(cfg, tokenizer_dir))) == 5
    cfg.train_maskgit.cache_items = 9
    assert len(TokenDataset(ensure_token_cache(cfg, tokenizer_dir))) == 9
    cfg.train_maskgit.cache_items = 7  # fewer than cached: the cache is used as it is
    assert len(TokenDataset(ensure_token_cache(cfg, tokenizer_dir))) == 9


def test_training_resumes_exactly_and_exports_a_pipeline(tmp_path, tokenizer_dir):
    straight = train_maskgit(config(tmp_path / "a"), tokenizer_dir, progress=False)
    train_maskgit(config(tmp_path / "b"), tokenizer_dir, stop_at=2, progress=False)
    train_maskgit(config(tmp_path / "b"), tokenizer_dir, resume="latest", progress=False)
    a = load_state_dict(tmp_path / "a" / "checkpoints" / "step-0000004" / "maskgit.safetensors")
    b = load_state_dict(tmp_path / "b" / "checkpoints" / "step-0000004" / "maskgit.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert any(k.startswith("text.") for k in a), "the scratch text encoder trains with the transformer"
    # the exported directory is complete: tokenizer, transformer, text encoder, settings
    names = sorted(p.name for p in straight.iterdir())
    assert names == ["checksums.json", "pipeline.json", "text_encoder", "tokenizer", "transformer"]
    MaskGit.from_pretrained(straight / "transformer")
    CViViT.from_pretrained(straight / "tokenizer")
    text = TextEncoder.from_pretrained(straight / "text_encoder")
    emb, mask = text.encode(["a red ball moves right"])
    assert emb.shape[-1] == 16 and mask.any()
    settings = json.loads((straight / "pipeline.json").read_text())
    assert settings["text_encoder"] == "text_encoder" and settings["sampling"]["steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "masked_acc", "mask_ratio", "text_dropped", "prime_frac"} <= set(records[0])


def test_fine_tunes_an_exported_pipeline(tmp_path, tokenizer_dir):
    """init_from a pipeline directory: training starts from its weights and its text vocabulary."""
    first = train_maskgit(config(tmp_path / "a", steps=2), tokenizer_dir, progress=False)
    cfg = config(tmp_path / "b", steps=2)
    cfg.transformer.dim = 64  # the pipeline's architecture wins over the config's
    cfg.train_maskgit.init_from = str(first)
    cfg.train_maskgit.lr = 0.0  # no update: the fine-tuned export must equal its starting point
    cfg.train_maskgit.ema_decay = 0.0
    second = train_maskgit(cfg, tokenizer_dir, progress=False)
    a = load_state_dict(first / "transformer" / "model.safetensors")
    b = load_state_dict(second / "transformer" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    text_a = TextEncoder.from_pretrained(first / "text_encoder")
    text_b = TextEncoder.from_pretrained(second / "text_encoder")
    prompt = ["the blue box rises"]
    torch.testing.assert_close(text_a.encode(prompt)[0], text_b.encode(prompt)[0])
    settings = json.loads((second / "pipeline.json").read_text())
    assert settings["training"]["config"]["init_from"] == str(first)

    other_tok = tmp_path / "other_tok"
    CViViT(TokenizerConfig(**{**TOKENIZER, "fsq_levels": [4, 4, 4]})).save_pretrained(other_tok)
    elsewhere = config(tmp_path / "c", steps=2)
    elsewhere.train_maskgit.init_from = str(first)
    with pytest.raises(ValueError, match="another tokenizer"):
        train_maskgit(elsewhere, other_tok, progress=False)
    # a decoder-only change (refiner, wider decoder window) keeps the ids: fine-tuning may go on
    redrawn_tok = tmp_path / "redrawn_tok"
    CViViT(TokenizerConfig(**{**TOKENIZER, "refine_channels": 8, "decoder_spatial_window": 0})).save_pretrained(
        redrawn_tok)
    redrawn = config(tmp_path / "d", steps=1)
    redrawn.train_maskgit.init_from = str(first)
    redrawn.train_maskgit.tokens_cache = str(tmp_path / "a" / "tokens")  # the cache of the first run
    assert (train_maskgit(redrawn, redrawn_tok, progress=False) / "pipeline.json").is_file()
    elsewhere.train_maskgit.tokens_cache = str(tmp_path / "a" / "tokens")
    elsewhere.train_maskgit.init_from = None
    with pytest.raises(ValueError, match="different tokenizer"):  # the cache's ids mean something else
        train_maskgit(elsewhere, other_tok, progress=False)
    cfg.train_maskgit.init_from = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not a pipeline directory"):
        train_maskgit(cfg, tokenizer_dir, progress=False)


def test_fine_tunes_a_v1_pipeline_on_the_v2_world(tmp_path, tokenizer_dir):
    """A v1 pipeline fine-tuned on v2 clips learns the new words and reads longer prompts; v1 prompts keep
    their encoding (the known words' embeddings are untouched before the first update)."""
    first = train_maskgit(config(tmp_path / "a", steps=1), tokenizer_dir, progress=False)
    cfg = config(tmp_path / "b", steps=1)
    cfg.data.shapes_version = 2
    cfg.data.context_frames = 3
    cfg.text.max_length = 32
    cfg.train_maskgit.init_from = str(first)
    cfg.train_maskgit.lr = 0.0
    cfg.train_maskgit.ema_decay = 0.0
    second = train_maskgit(cfg, tokenizer_dir, progress=False)
    old = TextEncoder.from_pretrained(first / "text_encoder")
    new = TextEncoder.from_pretrained(second / "text_encoder")
    assert new.max_length == 32 and old.max_length < 32
    v2 = "a green triangle enters from the left and a red ball moves right"
    assert old.unknown_words(v2)[0] and new.unknown_words(v2) == ([], True)
    seen = set(old.tokenizer.get_vocab())
    v1 = next(p for p in ("the blue box rises", "a red ball moves right", "the red disc sinks", "a green square falls")
              if all(w in seen for w in p.split()))
    torch.testing.assert_close(new.encode([v1])[0], old.encode([v1])[0])


def test_trains_a_token_critic_onto_an_exported_pipeline(tmp_path, tokenizer_dir):
    """critic_only: the export gains a critic; the generator and text encoder come back bit for bit."""
    from phenaki.pipeline import Phenaki
    from phenaki.sampling.settings import SettingsError

    first = train_maskgit(config(tmp_path / "a", steps=2), tokenizer_dir, progress=False)
    cfg = config(tmp_path / "b", steps=3)
    cfg.train_maskgit.critic_only = True
    with pytest.raises(ValueError, match="critic_only needs train_maskgit.init_from"):
        train_maskgit(cfg, tokenizer_dir, progress=False)
    cfg.train_maskgit.init_from = str(first)
    cfg.train_maskgit.lr = 1e-2
    second = train_maskgit(cfg, tokenizer_dir, progress=False)
    a = load_state_dict(first / "transformer" / "model.safetensors")
    b = load_state_dict(second / "transformer" / "model.safetensors")
    critic_keys = {k for k in b if k.startswith(("critic.", "to_critic."))}
    assert critic_keys and set(a) == set(b) - critic_keys
    for key in a:
        assert torch.equal(a[key], b[key]), key
    text_a = load_state_dict(first / "text_encoder" / "model.safetensors")
    text_b = load_state_dict(second / "text_encoder" / "model.safetensors")
    assert text_a.keys() == text_b.keys() and all(torch.equal(text_a[k], text_b[k]) for k in text_a)
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert all("critic_loss" in m for m in metrics if "loss" in m)

    pipe = Phenaki.from_pretrained(second, device="cpu")
    assert pipe.transformer.has_critic
    plain = pipe.generate("a red ball moves right", seed=1, first_frames=5)
    revised = pipe.generate("a red ball moves right", seed=1, first_frames=5, use_critic=True, critic_revise=True)
    assert plain.frames.shape == revised.frames.shape
    assert revised.metadata["settings"]["critic_revise"] is True
    with pytest.raises(SettingsError, match="no token critic"):
        Phenaki.from_pretrained(first, device="cpu").generate("a red ball moves right", use_critic=True)


def test_learns_shapes_clips_from_their_prompts():
    """The whole path learns: Shapes pixels -> tokenizer ids -> text + MaskGIT -> sampled ids."""
    from phenaki.config import TextConfig, TransformerConfig
    from phenaki.data.shapes import render_story
    from phenaki.models.masking import maskgit_loss
    from phenaki.sampling.search import draw
    from phenaki.sampling.settings import SamplingSettings

    torch.manual_seed(0)
    prompts = ["a red ball moves right", "the blue box rises", "a green triangle falls", "the white disc goes left"]
    tokenizer = CViViT(TokenizerConfig(**TOKENIZER))
    clips = torch.stack([render_story([p], seed=i, first_frames=5).frames for i, p in enumerate(prompts)])
    ids = tokenizer.encode(frames_to_pixels(clips))  # [4, 3, 8, 8]
    text = TextEncoder.scratch(prompts, TextConfig(kind="scratch", dim=32, depth=1, heads=2, ff_dim=64))
    model = MaskGit(TransformerConfig(dim=64, depth=2, heads=4, dim_head=16, max_token_frames=3,
                                      codebook_size=tokenizer.codebook_size, token_grid=(8, 8), text_dim=32))
    params = list(model.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    for _ in range(300):
        emb, mask = text(prompts)
        loss, _ = maskgit_loss(model, ids, emb, mask, cond_drop_prob=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    text.eval()
    with torch.no_grad():
        emb, mask = text(prompts)
    out = draw(model, (emb, mask), None, SamplingSettings(steps=8, guidance=2.0, temperature=0.5),
               torch.Generator().manual_seed(0), num_token_frames=3)
    accuracy = (out == ids).float().mean().item()
    assert accuracy >= 0.8, accuracy


def test_a_checkpoint_exports_without_training(tmp_path, tokenizer_dir):
    """--export-to: the checkpoint's EMA model as the final export would write it, nothing trained,
    nothing in the run's folder changed; no checkpoint is a clear error."""
    from phenaki.integrity import CheckpointError
    from phenaki.pipeline import Phenaki

    final = train_maskgit(config(tmp_path / "run"), tokenizer_dir, progress=False)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    latest = train_maskgit(config(tmp_path / "run"), tokenizer_dir, resume="latest", export_to=tmp_path / "latest",
                           progress=False)
    mid = train_maskgit(config(tmp_path / "run"), tokenizer_dir, resume=str(tmp_path / "run" / "checkpoints" /
                        "step-0000002"), export_to=tmp_path / "mid", progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    ref = load_state_dict(final / "transformer" / "model.safetensors")
    got = load_state_dict(latest / "transformer" / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    early = load_state_dict(mid / "transformer" / "model.safetensors")
    assert any(not torch.equal(ref[k], early[k]) for k in ref)
    assert json.loads((mid / "pipeline.json").read_text())["training"]["steps"] == 2
    Phenaki.from_pretrained(mid).generate(["a red ball moves right"], seed=0)  # a complete pipeline
    with pytest.raises(CheckpointError, match="nothing to export"):
        train_maskgit(config(tmp_path / "empty"), tokenizer_dir, export_to=tmp_path / "none", progress=False)
