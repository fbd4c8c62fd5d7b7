"""Text encoders, built tiny and offline: the same loading path a real T5 takes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tokenizers import (
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from phenaki.config import ConfigError, TextConfig
from phenaki.models.text import EmbeddingCache, TextEncoder, TextEncoderError, pad_rows

CORPUS = [
    "a red circle moves left",
    "the blue square jumps up and down",
    "a small green triangle rotates slowly",
    "two yellow circles bounce off the walls",
    "hello world, this is a tiny corpus!",
] * 4

SHAPES = [
    "A red circle moves left.",
    "A blue square moves right.",
    "A green triangle moves up, then down.",
    "2 yellow circles bounce.",
]


def _t5_tokenizer() -> PreTrainedTokenizerFast:
    """A sentencepiece-like Unigram tokenizer with T5's special tokens."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=80, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer in BERT's style ([CLS] ... [SEP])."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS, trainer=trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = _t5_tokenizer()
    config = T5Config(d_model=32, d_kv=16, num_layers=1, num_heads=2, d_ff=64, vocab_size=len(tokenizer))
    T5EncoderModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = _bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def shapes_config() -> TextConfig:
    return TextConfig(kind="scratch", dim=32, depth=1, heads=2, ff_dim=64, max_length=16)


def _row_counter(encoder: TextEncoder) -> list[int]:
    """Spy on the underlying HF model: the batch size of every call."""
    calls: list[int] = []
    encoder.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return calls


# ----------------------------------------------------------------------------- pretrained


def test_t5_from_local_folder(t5_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(t5_dir)
    assert isinstance(enc.model, T5EncoderModel)
    assert enc.dim == 32 and enc.max_length == 64 and enc.name == str(t5_dir.resolve())
    prompts = ["a red circle", "the blue square jumps up and down"]
    emb, mask = enc.encode(prompts)
    lengths = [len(enc.tokenizer(p)["input_ids"]) for p in prompts]
    assert emb.shape == (2, max(lengths), 32) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == lengths
    assert mask[:, 0].all() and not mask[0, lengths[0] :].any()
    assert (emb[0, lengths[0] :] == 0).all()
    # padding does not leak into the real positions
    alone, _ = enc.encode(prompts[:1])
    assert torch.allclose(alone[0], emb[0, : lengths[0]], atol=1e-5)


def test_frozen_and_deterministic(t5_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(t5_dir)
    assert not enc.trainable
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.training and not enc.model.training
    assert not any(m.training for m in enc.model.modules())
    first, _ = enc(["a red circle moves left"])
    second, _ = enc(["a red circle moves left"])
    assert not first.requires_grad
    assert torch.equal(first, second)


def test_bert_through_automodel(bert_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(bert_dir, max_length=12)
    assert isinstance(enc.model, BertModel)
    emb, mask = enc.encode(["hello world", "a small green triangle rotates slowly"])
    assert emb.shape[0] == 2 and emb.shape[2] == 24 == enc.dim
    assert emb.shape[1] == mask.shape[1] <= 12
    assert mask[1].all() and not mask[0].all()


def test_prompts_must_be_a_list(t5_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(t5_dir)
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("a red circle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no prompts"):
        enc.encode([])


def test_truncation_warns_once(t5_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    enc = TextEncoder.from_pretrained(t5_dir, max_length=8)
    long = "the blue square jumps up and down and a red circle moves left"
    with caplog.at_level(logging.WARNING, logger="phenaki.models.text"):
        emb, mask = enc.encode([long, "a"])
        enc.encode([long])
        enc.encode_cached([long])
    assert emb.shape[1] == 8 and mask[0].all()
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and long in warnings[0].getMessage()


def test_missing_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no_such_model"
    with pytest.raises(TextEncoderError, match="does not exist"):
        TextEncoder.from_pretrained(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TextEncoderError, match="local folder") as info:
        TextEncoder.from_pretrained(empty)
    assert str(empty.resolve()) in str(info.value)


def test_unknown_hub_name_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TextEncoderError) as info:
        TextEncoder.from_pretrained("no-such-org/no-such-t5", hub_cache_dir=str(tmp_path / "hub"))
    message = str(info.value)
    assert "no-such-org/no-such-t5" in message and str(tmp_path / "hub") in message
    assert "huggingface-cli download" in message


# ----------------------------------------------------------------------------- cache


def test_memory_cache_encodes_each_prompt_once(t5_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(t5_dir)
    calls = _row_counter(enc)
    prompts = ["a red circle", "the blue square jumps up and down", "a red circle"]
    cached, cmask = enc.encode_cached(prompts)
    assert calls == [2]
    again, _ = enc.encode_cached(["the blue square jumps up and down", "a red circle"])
    assert calls == [2]
    plain, pmask = enc.encode(prompts)
    assert torch.equal(cmask, pmask)
    assert torch.allclose(cached, plain, atol=1e-5)
    assert torch.allclose(again[1, : cmask[0].sum()], plain[0, : pmask[0].sum()], atol=1e-5)


def test_disk_cache_survives_new_instance(t5_dir: Path, tmp_path: Path) -> None:
    prompts = ["a red circle", "two yellow circles bounce off the walls"]
    first = TextEncoder.from_pretrained(t5_dir, cache_dir=tmp_path / "cache")
    expected, _ = first.encode_cached(prompts)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    second = TextEncoder.from_pretrained(t5_dir, cache_dir=tmp_path / "cache")
    calls = _row_counter(second)
    got, mask = second.encode_cached(prompts)
    assert calls == []
    assert torch.equal(got, expected)
    assert torch.equal(mask, second.encode(prompts)[1])


def test_corrupt_cache_file_is_recovered(
    t5_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enc = TextEncoder.from_pretrained(t5_dir, cache_dir=tmp_path)
    expected, _ = enc.encode_cached(["a red circle"])
    path = enc.cache.path(enc.cache_key("a red circle"))
    assert path is not None and path.exists()
    path.write_bytes(b"not a safetensors file")
    fresh = TextEncoder.from_pretrained(t5_dir, cache_dir=tmp_path)
    calls = _row_counter(fresh)
    with caplog.at_level(logging.WARNING, logger="phenaki.models.text"):
        got, _ = fresh.encode_cached(["a red circle"])
    assert calls == [1]
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert torch.allclose(got, expected)
    assert EmbeddingCache(tmp_path).get(enc.cache_key("a red circle"), "a red circle") is not None


def test_cache_rejects_a_foreign_file(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put("ab" * 32, "one prompt", torch.ones(3, 4))
    assert EmbeddingCache(tmp_path).get("ab" * 32, "another prompt") is None
    assert torch.equal(EmbeddingCache(tmp_path).get("ab" * 32, "one prompt"), torch.ones(3, 4))


def test_memory_cache_evicts_least_recent() -> None:
    cache = EmbeddingCache(max_items=2)
    for key in "abc":
        cache.put(key * 64, key, torch.zeros(1, 2))
    assert len(cache) == 2 and "a" * 64 not in cache and "c" * 64 in cache


def test_pad_rows() -> None:
    emb, mask = pad_rows([torch.ones(2, 3), torch.ones(1, 3, dtype=torch.float16)])
    assert emb.shape == (2, 2, 3) and emb.dtype == torch.float32
    assert mask.tolist() == [[True, True], [True, False]] and emb[1, 1].abs().sum() == 0


def test_trainable_encoder_refuses_cache(t5_dir: Path) -> None:
    enc = TextEncoder.from_pretrained(t5_dir, trainable=True)
    assert all(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="trainable"):
        enc.encode_cached(["a red circle"])


# ----------------------------------------------------------------------------- scratch


def test_scratch_encoder_trains(shapes_config: TextConfig) -> None:
    torch.manual_seed(0)
    enc = TextEncoder.scratch(SHAPES, shapes_config)
    assert enc.trainable and enc.dim == 32 and enc.kind == "scratch"
    assert {"[PAD]", "[UNK]", "[EOS]", "red", "circle", "."} <= set(enc.tokenizer.get_vocab())
    enc.train()
    assert enc.model.training
    emb, mask = enc(["a red circle moves left.", "A BLUE square!"])
    (emb * mask[..., None]).pow(2).mean().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_scratch_unknown_words(shapes_config: TextConfig) -> None:
    enc = TextEncoder.scratch(SHAPES, shapes_config)
    ids = enc.tokenizer("a purple hexagon")["input_ids"]
    unk = enc.tokenizer.unk_token_id
    assert ids[1:3] == [unk, unk] and ids[-1] == enc.tokenizer.eos_token_id
    enc.drop_unknown = False  # [UNK] fed as it is: its embedding never trained
    emb, mask = enc.encode(["a purple hexagon", ""])
    assert torch.isfinite(emb).all() and mask.sum(1).tolist() == [4, 1]


def test_scratch_encoder_drops_unknown_words(
    shapes_config: TextConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """No training caption holds [UNK], so a scratch encoder leaves unknown words out, and says so."""
    torch.manual_seed(0)
    enc = TextEncoder.scratch(SHAPES, shapes_config).eval()
    assert enc.drop_unknown
    with caplog.at_level(logging.WARNING, logger="phenaki.models.text"):
        emb, mask = enc.encode(["a red circle floats up", "a red circle up", "a purple hexagon"])
    assert mask.sum(1).tolist() == [5, 5, 2]
    assert torch.equal(emb[0], emb[1])
    assert torch.allclose(emb[2, :2], enc.encode(["a"])[0][0], atol=1e-5)
    warned = [r.getMessage() for r in caplog.records]
    assert any("floats" in m and "ignored" in m for m in warned)
    assert any("purple, hexagon" in m for m in warned)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phenaki.models.text"):
        enc.encode(["a red circle floats up"])
    assert not caplog.records  # once per prompt
    key = enc.cache_key("a red circle floats up")
    enc.drop_unknown = False
    assert enc.cache_key("a red circle floats up") != key
    kept, kept_mask = enc.encode(["a red circle floats up"])
    assert kept_mask.sum().item() == 6 and not torch.equal(kept[0, :5], emb[0])


def test_dropped_unknown_words_do_not_count_towards_the_length(shapes_config: TextConfig) -> None:
    enc = TextEncoder.scratch(SHAPES, shapes_config).eval()
    known = "a red circle moves left " * 3  # 15 words + [EOS] = 16 = max_length
    _, mask = enc.encode([known + "zzz qqq"])
    assert mask.sum().item() == 16
    ids = enc._tokenize([known + "moves up"])["input_ids"][0]  # 18 tokens: truncated, [EOS] kept last
    assert len(ids) == 16 and ids[-1].item() == enc.tokenizer.eos_token_id


def test_scratch_vocabulary_grows_without_changing_known_prompts(shapes_config: TextConfig, tmp_path: Path) -> None:
    """A fine-tune on a larger world adds its words; prompts the encoder already read encode as before."""
    torch.manual_seed(0)
    enc = TextEncoder.scratch(SHAPES, shapes_config).eval()
    known = ["a red circle moves left.", "A BLUE square, then down"]
    before, before_mask = enc.encode(known)
    size = len(enc.tokenizer)
    added = enc.extend_vocabulary(["a red circle enters from the left", "the blue square grows and waits"])
    assert added == ["enters", "from", "the", "grows", "and", "waits"]
    assert len(enc.tokenizer) == size + 6 and enc.model.get_input_embeddings().weight.shape[0] == size + 6
    assert enc.extend_vocabulary(known) == []
    after, after_mask = enc.encode(known)
    assert torch.equal(after_mask, before_mask) and torch.equal(after, before)
    assert enc.unknown_words("the red circle enters from the left") == ([], True)
    loaded = TextEncoder.from_pretrained(enc.save_pretrained(tmp_path / "grown")).eval()
    assert loaded.unknown_words("a blue square grows") == ([], True)
    torch.testing.assert_close(loaded.encode(known)[0], before)
    enc.max_length = 40
    assert enc.max_length == 40
    with pytest.raises(ValueError, match="max_length"):
        enc.max_length = 0


def test_only_scratch_vocabularies_grow(t5_dir: Path) -> None:
    with pytest.raises(ValueError, match="only a scratch text encoder"):
        TextEncoder.from_pretrained(t5_dir).extend_vocabulary(["a red circle grows"])


def test_scratch_round_trip(shapes_config: TextConfig, tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = TextEncoder.scratch(SHAPES, shapes_config).eval()
    prompts = ["a green triangle moves up", "2 circles"]
    expected, mask = enc.encode(prompts)
    saved = enc.save_pretrained(tmp_path / "text_encoder")
    assert (saved / "text_config.json").exists() and (saved / "model.safetensors").exists()
    loaded = TextEncoder.from_pretrained(saved)
    assert loaded.kind == "scratch" and loaded.trainable and loaded.max_length == 16
    got, got_mask = loaded.eval().encode(prompts)
    assert torch.equal(got_mask, mask) and torch.allclose(got, expected, atol=1e-6)
    frozen = TextEncoder.from_pretrained(saved, trainable=False)
    assert not frozen.trainable and torch.allclose(frozen.encode_cached(prompts)[0], expected, atol=1e-6)


def test_half_precision_save_keeps_the_encoder_and_loads_in_fp32(shapes_config: TextConfig, tmp_path: Path) -> None:
    """A bf16 export halves the file; the live encoder stays fp32 and the reload is the rounded copy."""
    from safetensors import safe_open

    torch.manual_seed(0)
    enc = TextEncoder.scratch(SHAPES, shapes_config).eval()
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    full = enc.save_pretrained(tmp_path / "fp32")
    half = enc.save_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    assert all(torch.equal(v, before[k]) and v.dtype == torch.float32 for k, v in enc.model.state_dict().items())
    with safe_open(str(half / "model.safetensors"), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = TextEncoder.from_pretrained(half)
    for k, v in loaded.model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k].to(torch.bfloat16).float()), k
    prompts = ["a green triangle moves up"]
    assert torch.allclose(loaded.eval().encode(prompts)[0], enc.encode(prompts)[0], atol=0.1)


def test_scratch_config_errors(shapes_config: TextConfig) -> None:
    with pytest.raises(ValueError, match="no non-empty captions"):
        TextEncoder.scratch([], shapes_config)
    shapes_config.heads = 3
    with pytest.raises(ConfigError, match="not divisible"):
        TextEncoder.scratch(SHAPES, shapes_config)


def test_from_config(shapes_config: TextConfig, t5_dir: Path) -> None:
    assert TextEncoder.from_config(shapes_config, SHAPES).kind == "scratch"
    with pytest.raises(ValueError, match="captions"):
        TextEncoder.from_config(shapes_config)
    enc = TextEncoder.from_config(TextConfig(name_or_path=str(t5_dir), max_length=20))
    assert enc.max_length == 20 and not enc.trainable
