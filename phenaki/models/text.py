"""Text conditioning: a Hugging Face encoder turning prompts into `[B, L, D]` embeddings.

Two kinds of encoder share one class:

* a pretrained encoder (T5 by default, or any encoder-only model `AutoModel` knows),
  loaded from a local folder or the Hugging Face cache, frozen by default;
* a small T5 trained from scratch with the transformer (`TextEncoder.scratch`), whose
  word-level tokenizer is built from the training captions; right for closed
  vocabularies such as Shapes, where a large pretrained model is wasted.

Frozen encoders give the same output for the same prompt forever, so their outputs
can be cached (`encode_cached`): in memory, and optionally on disk as safetensors
files keyed by a hash of the model and the prompt. Nothing here ever unpickles.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..config import ConfigError, TextConfig
from ..integrity import record_folder, verify_folder
from ..utils.fileio import atomic_file, atomic_write_dir, atomic_write_text, recover_dir

__all__ = [
    "EmbeddingCache",
    "TextEncoder",
    "TextEncoderError",
    "build_word_tokenizer",
    "cache_key",
    "pad_rows",
]

log = logging.getLogger(__name__)

SETTINGS_NAME = "text_config.json"
PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
T5_TYPES = ("t5", "mt5", "umt5")
DEFAULT_MAX_LENGTH = 64
PROMPT_SHOWN = 200  # characters of a prompt quoted in log messages


class TextEncoderError(OSError):
    """A text encoder could not be loaded (missing weights, bad folder); the message says where it looked."""


# ----------------------------------------------------------------------------- tokenizer


def build_word_tokenizer(
    captions: Iterable[str], vocab_size: int = 256, max_length: int = DEFAULT_MAX_LENGTH
) -> Any:
    """A word-level tokenizer fitted to `captions`: a closed vocabulary needs no sub-words.

    Lower-cased, split on whitespace and punctuation, digits split one by one (so an
    unseen number is still spelt in known tokens); unknown words become [UNK] (which
    `TextEncoder` then drops, since no training caption holds one); every
    sequence ends in [EOS] so even an empty prompt has one token to attend to.
    """
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    texts = _nonempty(captions)
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=[PAD, UNK, EOS]
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=EOS,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
    )


def _nonempty(captions: Iterable[str]) -> list[str]:
    """Materialise the captions, refusing an empty set (a tokenizer needs words to learn)."""
    if isinstance(captions, str):
        raise TypeError("captions must be an iterable of strings, not one string")
    texts = [str(c) for c in captions]
    if not any(t.strip() for t in texts):
        raise ValueError("cannot build a text tokenizer: no non-empty captions were given")
    return texts


# ----------------------------------------------------------------------------- loading


def _offline() -> bool:
    """Read the offline switches now (huggingface_hub reads them only at import)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _looks_like_path(name: str) -> bool:
    """Absolute, home- or dot-relative names, and >2 path parts, cannot be hub ids."""
    return name.startswith(("/", ".", "~", "\\")) or len(Path(name).parts) > 2 or ":" in name[:3]


def _local_dir(name_or_dir: str | os.PathLike[str]) -> Path | None:
    """The folder to load from, None for a hub id; a path-like name that is missing is an error."""
    path = recover_dir(Path(name_or_dir).expanduser())
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise TextEncoderError(
            f"text encoder path {path} is a file; expected a folder holding config.json, "
            "weights and tokenizer files"
        )
    if _looks_like_path(str(name_or_dir)):
        raise TextEncoderError(
            f"text encoder folder {path.resolve()} does not exist; pass a local folder holding "
            "config.json, model.safetensors and tokenizer files, or a Hugging Face model id"
        )
    return None


def _read_settings(folder: Path | None) -> dict[str, Any]:
    """`text_config.json` written by `save_pretrained` (absent for plain HF folders)."""
    if folder is None or not (folder / SETTINGS_NAME).exists():
        return {}
    file = folder / SETTINGS_NAME
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TextEncoderError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TextEncoderError(f"{file} must hold a JSON object, got {type(data).__name__}")
    for key, kind in (("max_length", int), ("trainable", bool), ("kind", str), ("source", str)):
        value = data.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise TextEncoderError(f"{file}: {key} must be a {kind.__name__}, got {value!r}")
    return data


def _default_dtype(device: torch.device, trainable: bool) -> torch.dtype:
    """Frozen on GPU: half precision (bf16 where supported; fp16 overflows T5 more often). Else fp32."""
    if device.type != "cuda" or trainable:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _hub_cache(hub_cache_dir: str | None) -> str:
    """Where the Hugging Face cache lives, for error messages."""
    if hub_cache_dir is not None:
        return str(Path(hub_cache_dir).expanduser().resolve())
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _load_hf(
    source: str, local_only: bool, dtype: torch.dtype, hub_cache_dir: str | None
) -> tuple[nn.Module, Any]:
    """Model + tokenizer: the encoder-only T5 class for T5-family configs, else `AutoModel`."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoTokenizer,
        MT5EncoderModel,
        T5EncoderModel,
        UMT5EncoderModel,
    )

    kwargs: dict[str, Any] = {"local_files_only": local_only, "cache_dir": hub_cache_dir}
    config = AutoConfig.from_pretrained(source, **kwargs)
    classes = {"t5": T5EncoderModel, "mt5": MT5EncoderModel, "umt5": UMT5EncoderModel}
    model_class = classes.get(config.model_type, AutoModel)
    model = model_class.from_pretrained(source, config=config, dtype=dtype, use_safetensors=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def _load_anywhere(
    name: str, folder: Path | None, dtype: torch.dtype, hub_cache_dir: str | None
) -> tuple[nn.Module, Any]:
    """Try the local folder / HF cache first (no network round trips), then the hub if online."""
    source = str(folder) if folder is not None else name
    attempts = [True] if folder is not None or _offline() else [True, False]
    error: Exception | None = None
    for local_only in attempts:
        try:
            return _load_hf(source, local_only, dtype, hub_cache_dir)
        except (OSError, ValueError) as exc:
            error = exc
    raise TextEncoderError(_not_found_message(name, folder, hub_cache_dir, error)) from error


def _not_found_message(
    name: str, folder: Path | None, hub_cache_dir: str | None, error: Exception | None
) -> str:
    """Say where we looked and how to get the weights there."""
    if folder is not None:
        where = f"the local folder {folder}"
        fix = "make sure it holds config.json, model.safetensors (or sharded safetensors) and tokenizer files"
    else:
        where = (
            f"the Hugging Face cache {_hub_cache(hub_cache_dir)}"
            + (" (offline mode: the hub was not asked)" if _offline() else " and the hub")
            + f"; no local folder named {str(Path(name).expanduser().resolve())!r} exists either"
        )
        fix = (
            f"the weights must be present locally: run `huggingface-cli download {name}` on a machine "
            "with network access and copy the cache (or point HF_HOME at it), or pass a local folder"
        )
    return (
        f"could not load text encoder {name!r} from {where}: {fix}. Weights are only read from "
        f"safetensors files (pickled .bin weights are never loaded). Cause: {error}"
    )


# ----------------------------------------------------------------------------- cache


def cache_key(name: str, max_length: int, dtype: torch.dtype, text: str, fingerprint: str = "") -> str:
    """sha256 of everything the embedding depends on; `fingerprint` guards against retrained weights."""
    payload = json.dumps(
        {"model": name, "weights": fingerprint, "max_length": max_length, "dtype": str(dtype), "text": text},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """A cheap digest of the weights (names, shapes, first values), so a retrained model misses the cache."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        head = value.detach().flatten()[:16].float().cpu().tolist()
        digest.update(f"{key}{tuple(value.shape)}{value.dtype}{head}".encode())
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """Trimmed per-prompt embeddings `[L_i, D]`, in memory and optionally on disk.

    Entries are looked up by `cache_key` (which includes the prompt). On disk each is
    one safetensors file `<dir>/<key[:2]>/<key>.safetensors` whose metadata repeats the
    prompt, so a hash collision or a foreign file is detected rather than trusted.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, max_items: int | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.max_items = max_items
        self._memory: OrderedDict[str, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: str) -> bool:
        path = self.path(key)
        return key in self._memory or (path is not None and path.exists())

    def path(self, key: str) -> Path | None:
        """Disk location of an entry (None without a cache dir)."""
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.safetensors"

    def clear(self) -> None:
        """Forget the in-memory entries (disk files stay)."""
        self._memory.clear()

    def get(self, key: str, text: str) -> Tensor | None:
        """The cached row, from memory or disk; None on a miss or an unreadable file."""
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        row = self._read(key, text)
        if row is not None:
            self._remember(key, row)
        return row

    def put(self, key: str, text: str, row: Tensor) -> None:
        """Store a row `[L, D]` (moved to CPU); on disk atomically."""
        if row.dim() != 2:
            raise ValueError(f"cache rows must be [L, D], got shape {tuple(row.shape)}")
        row = row.detach().to("cpu").contiguous()
        self._remember(key, row)
        path = self.path(key)
        if path is not None:
            with atomic_file(path, suffix=".safetensors") as tmp:
                save_file({"embedding": row.clone()}, str(tmp), metadata={"text": text})

    def _remember(self, key: str, row: Tensor) -> None:
        """Insert in memory, evicting the least recently used beyond `max_items`."""
        self._memory[key] = row
        self._memory.move_to_end(key)
        while self.max_items is not None and len(self._memory) > self.max_items:
            self._memory.popitem(last=False)

    def _read(self, key: str, text: str) -> Tensor | None:
        """Load a disk entry; a corrupt or mismatched file is reported and treated as a miss."""
        path = self.path(key)
        if path is None or not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = (f.metadata() or {}).get("text")
                row = f.get_tensor("embedding")
            if stored != text:
                raise ValueError(f"it holds prompt {_short(stored or '')!r}")
            if row.dim() != 2:
                raise ValueError(f"it holds a tensor of shape {tuple(row.shape)}, expected [L, D]")
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
            log.warning(
                "embedding cache file %s is unreadable (%s); re-encoding and overwriting it", path, exc
            )
            return None
        return row


def pad_rows(rows: Sequence[Tensor], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Stack rows `[L_i, D]` into zero-padded float32 `[B, max L_i, D]` and a bool mask."""
    if not rows:
        raise ValueError("pad_rows needs at least one row")
    length = max(r.shape[0] for r in rows)
    dim = rows[0].shape[1]
    out = torch.zeros(len(rows), length, dim, dtype=torch.float32, device=device)
    mask = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row.to(device=out.device, dtype=torch.float32)
        mask[i, : row.shape[0]] = True
    return out, mask


def _short(text: str) -> str:
    """A prompt clipped for log messages."""
    return text if len(text) <= PROMPT_SHOWN else text[:PROMPT_SHOWN] + "..."


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    """A non-empty list of strings (a bare string would be encoded character by character)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string; wrap it: [prompt]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings; got {', '.join(sorted(set(bad)))}")
    return prompts


# ----------------------------------------------------------------------------- encoder


class TextEncoder(nn.Module):
    """Prompts -> (embeddings `[B, L, D]` float32, mask `[B, L]` bool), padded to the longest prompt.

    Frozen encoders (the default for pretrained ones) never get gradients and stay in
    eval mode even under `.train()`, so dropout never perturbs the conditioning.
    Scratch encoders leave words outside their vocabulary out of the prompt, with a warning
    (`drop_unknown`; set it False to feed them as [UNK], whose embedding never trained).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        name: str,
        max_length: int = DEFAULT_MAX_LENGTH,
        trainable: bool = False,
        kind: str = "pretrained",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.model = model
        self.tokenizer = _prepare_tokenizer(tokenizer, name)
        self._name = name
        self._max_length = max_length
        self._trainable = bool(trainable)
        self.kind = kind
        self.cache = EmbeddingCache(cache_dir)
        # A scratch encoder's vocabulary is exactly its training captions', so [UNK] never
        # occurred in training and its embedding is still the random initial one: feeding it
        # perturbs every other word's encoding. Such encoders drop unknown words instead.
        self.drop_unknown = kind == "scratch" and getattr(self.tokenizer, "unk_token_id", None) is not None
        self._warned: set[str | tuple[str, str]] = set()
        self._fingerprint: str | None = None
        self.model.requires_grad_(self._trainable)
        self.train(self.training)

    # -- construction

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike[str],
        *,
        max_length: int | None = None,
        trainable: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        hub_cache_dir: str | None = None,
        verify: bool = True,
    ) -> TextEncoder:
        """Load a Hugging Face encoder from a local folder or the HF cache (hub only when online).

        A local folder's checksums are verified first unless `verify=False`.

        `max_length`/`trainable` default to what `save_pretrained` recorded, else 64 and
        False. `device` defaults to CPU; `dtype` to fp32, or bf16/fp16 for a frozen
        encoder on GPU. `cache_dir` is the on-disk embedding cache (see `encode_cached`);
        `hub_cache_dir` overrides where the Hugging Face cache is searched.
        """
        folder = _local_dir(name_or_dir)
        if folder is not None and verify:
            verify_folder(folder)
        settings = _read_settings(folder)
        max_length = int(
            max_length if max_length is not None else settings.get("max_length", DEFAULT_MAX_LENGTH)
        )
        trainable = bool(trainable if trainable is not None else settings.get("trainable", False))
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype or _default_dtype(device, trainable)
        model, tokenizer = _load_anywhere(str(name_or_dir), folder, dtype, hub_cache_dir)
        name = str(folder) if folder is not None else str(name_or_dir)
        kind = str(settings.get("kind", "pretrained"))
        encoder = cls(
            model,
            tokenizer,
            name=name,
            max_length=max_length,
            trainable=trainable,
            kind=kind,
            cache_dir=cache_dir,
        )
        encoder.to(device)
        if folder is not None:
            encoder._probe(folder)
        log.info(
            "text encoder %s: %s, dim %d, %s on %s, %s",
            name,
            type(model).__name__,
            encoder.dim,
            dtype,
            device,
            "trainable" if trainable else "frozen",
        )
        return encoder

    @classmethod
    def scratch(cls, captions: Iterable[str], config: TextConfig) -> TextEncoder:
        """A small randomly initialised T5 encoder (trainable) with a tokenizer fitted to `captions`."""
        from transformers import T5Config, T5EncoderModel

        if config.dim % config.heads:
            raise ConfigError(f"text.dim {config.dim} is not divisible by text.heads {config.heads}")
        tokenizer = build_word_tokenizer(captions, config.vocab_size, config.max_length)
        t5_config = T5Config(
            vocab_size=len(tokenizer),
            d_model=config.dim,
            d_kv=config.dim // config.heads,
            d_ff=config.ff_dim,
            num_layers=config.depth,
            num_heads=config.heads,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        model = T5EncoderModel(t5_config)
        log.info("scratch text encoder: %d words, dim %d, depth %d", len(tokenizer), config.dim, config.depth)
        return cls(
            model, tokenizer, name="scratch-t5", max_length=config.max_length, trainable=True, kind="scratch"
        )

    @classmethod
    def from_config(
        cls, config: TextConfig, captions: Iterable[str] | None = None, **kwargs: Any
    ) -> TextEncoder:
        """Build what `config.kind` asks for (scratch encoders need the training captions)."""
        if config.kind == "scratch":
            if captions is None:
                raise ValueError("text.kind 'scratch' needs the training captions to build its tokenizer")
            return cls.scratch(captions, config)
        return cls.from_pretrained(
            config.name_or_path,
            max_length=config.max_length,
            trainable=config.trainable,
            cache_dir=config.cache_dir,
            **kwargs,
        )

    def save_pretrained(self, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Path:
        """Write model (safetensors), tokenizer and `text_config.json` into `path`, atomically.

        `dtype` casts a copy of the weights (e.g. bf16 to halve a shipped model); this encoder
        keeps its own precision, and `from_pretrained` still loads in fp32 on CPU.
        """

        def write(tmp: Path) -> None:
            model = self.model if dtype is None else copy.deepcopy(self.model).to(dtype)
            model.save_pretrained(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            settings = {
                "kind": self.kind,
                "max_length": self.max_length,
                "trainable": self.trainable,
                "source": self.name,
            }
            atomic_write_text(tmp / SETTINGS_NAME, json.dumps(settings, indent=2, sort_keys=True) + "\n")
            if not any(tmp.glob("*.safetensors")):
                raise TextEncoderError(f"saving {self.name} wrote no safetensors weights into {tmp}")
            record_folder(tmp)

        return atomic_write_dir(path, write)

    # -- properties

    @property
    def name(self) -> str:
        """Model id or folder it was loaded from (part of the embedding cache key)."""
        return self._name

    @property
    def max_length(self) -> int:
        """Most tokens per prompt (longer prompts are truncated)."""
        return self._max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        """A longer limit lets a fine-tune read longer prompts (T5's relative positions need no new weights)."""
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"max_length must be a positive integer, got {value!r}")
        self._max_length = value
        self._warned.clear()

    @property
    def trainable(self) -> bool:
        """Whether the encoder is trained with the transformer (then it is never cached)."""
        return self._trainable

    @property
    def dim(self) -> int:
        """Width D of the embeddings."""
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the encoder (outputs are always returned as float32)."""
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True) -> TextEncoder:
        """Follow `mode`, except that a frozen encoder stays in eval mode."""
        super().train(mode)
        if not self._trainable:
            self.model.eval()
        return self

    # -- encoding

    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        return self.encode(prompts)

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Embeddings `[B, L, D]` (float32, zero where masked) and mask `[B, L]` bool.

        L is the longest tokenised prompt in the batch, at most `max_length`.
        """
        prompts = _check_prompts(prompts)
        self._warn_truncated(prompts)
        batch = self._tokenize(prompts)
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device).bool()
        with torch.set_grad_enabled(self._trainable and torch.is_grad_enabled()):
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return hidden.float().masked_fill(~mask[..., None], 0.0), mask

    def encode_cached(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Same result as `encode`, but each distinct prompt is encoded only once (frozen encoders only)."""
        if self._trainable:
            raise ValueError(
                f"text encoder {self.name} is trainable: its embeddings change as it trains, so they "
                "cannot be cached; call encode() instead"
            )
        prompts = _check_prompts(prompts)
        rows = self._cached_rows(prompts)
        return pad_rows([rows[p] for p in prompts], device=self.device)

    def cache_key(self, text: str) -> str:
        """The cache key of one prompt for this encoder's weights, max_length and dtype."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        fingerprint = self._fingerprint + ("/drop-unknown" if self.drop_unknown else "")
        return cache_key(self.name, self.max_length, self.dtype, text, fingerprint)

    def _cached_rows(self, prompts: list[str]) -> dict[str, Tensor]:
        """Rows for the distinct prompts: cache hits, then one batch for all the misses."""
        rows: dict[str, Tensor] = {}
        for text in dict.fromkeys(prompts):
            row = self.cache.get(self.cache_key(text), text)
            if row is not None:
                rows[text] = row
        misses = [t for t in dict.fromkeys(prompts) if t not in rows]
        if misses:
            with torch.no_grad():
                emb, mask = self.encode(misses)
            for i, text in enumerate(misses):
                row = emb[i, : int(mask[i].sum())].to(self.dtype).cpu()
                self.cache.put(self.cache_key(text), text, row)
                rows[text] = row
        return rows

    def unknown_words(self, prompt: str) -> tuple[list[str], bool]:
        """The words of `prompt` outside a closed vocabulary (left out when encoding), and whether any
        word is left; an open vocabulary (a pretrained encoder) reads every word."""
        if not self.drop_unknown:
            return [], True
        unk = self.tokenizer.unk_token_id
        row = self.tokenizer([prompt], return_offsets_mapping=True, add_special_tokens=False)
        pieces = list(zip(row["input_ids"][0], row["offset_mapping"][0]))
        unknown = list(dict.fromkeys(prompt[a:b] for i, (a, b) in pieces if i == unk))
        return unknown, any(i != unk for i, _ in pieces)

    def extend_vocabulary(self, captions: Iterable[str]) -> list[str]:
        """Add the words of `captions` a scratch encoder does not know; returns them, in first-seen order.

        Fine-tuning on a larger world (new verbs, new objects) needs its words: existing ids
        keep their embeddings, new ones get rows initialised near the old ones' mean, so the
        prompts the encoder already reads encode exactly as before.
        """
        if self.kind != "scratch":
            raise ValueError("only a scratch text encoder (a closed, word-level vocabulary) can be extended; "
                             f"{self.name} reads any word through its own sub-word vocabulary")
        new_words: dict[str, None] = {}
        for caption in _nonempty(captions):
            for word in self.unknown_words(caption)[0]:
                new_words[word.lower()] = None
        if not new_words:
            return []
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        spec = json.loads(self.tokenizer.backend_tokenizer.to_str())
        vocab = spec["model"]["vocab"]
        for word in new_words:
            vocab[word] = len(vocab)
        old = self.tokenizer
        self.tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token=old.pad_token, unk_token=old.unk_token,
            eos_token=old.eos_token, model_max_length=old.model_max_length, padding_side=old.padding_side,
            truncation_side=old.truncation_side,
        )
        self.model.resize_token_embeddings(len(self.tokenizer))
        self.model.requires_grad_(self._trainable)
        self._fingerprint = None
        self._warned.clear()
        log.info("text vocabulary extended by %d words: %s", len(new_words), ", ".join(new_words))
        return list(new_words)

    def _probe(self, folder: Path) -> None:
        """Tokenise an empty prompt once, so a tokenizer whose settings are damaged fails at loading,
        naming its folder, instead of in the middle of a generation."""
        try:
            self._tokenize([""])
        except Exception as exc:  # noqa: BLE001 - tokenizers raise many types for broken settings
            raise TextEncoderError(f"{folder}: its tokenizer cannot tokenise ({type(exc).__name__}: {exc})") from None

    def _tokenize(self, prompts: list[str]) -> Any:
        """Padded `input_ids` and `attention_mask` tensors; unknown words left out when `drop_unknown`."""
        if not self.drop_unknown:
            return self.tokenizer(
                prompts,
                padding="longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_attention_mask=True,
            )
        unk = self.tokenizer.unk_token_id
        rows = self.tokenizer(prompts, return_offsets_mapping=True)
        kept = []
        for text, ids, offsets in zip(prompts, rows["input_ids"], rows["offset_mapping"]):
            unknown = [text[a:b] for i, (a, b) in zip(ids, offsets) if i == unk]
            if unknown and ("unknown", text) not in self._warned:
                self._warned.add(("unknown", text))
                log.warning(
                    "words outside the text encoder's vocabulary are ignored in %r: %s",
                    _short(text), ", ".join(dict.fromkeys(unknown)),
                )
            ids = [i for i in ids if i != unk]
            if len(ids) > self.max_length:  # keep the closing special token, as truncation does
                self._warn_truncated_once(text)
                ids = ids[: self.max_length - 1] + ids[-1:]
            kept.append(ids)
        return self.tokenizer.pad(
            {"input_ids": kept}, padding="longest", return_tensors="pt", return_attention_mask=True
        )

    def _warn_truncated(self, prompts: list[str]) -> None:
        """One warning per distinct over-long prompt (per encoder), naming it."""
        if self.drop_unknown:  # counted after the unknown words are gone, in `_tokenize`
            return
        fresh = [p for p in dict.fromkeys(prompts) if p not in self._warned]
        if not fresh:
            return
        probe = self.tokenizer(fresh, truncation=True, max_length=self.max_length + 1)["input_ids"]
        for text, ids in zip(fresh, probe):
            if len(ids) > self.max_length:
                self._warn_truncated_once(text)

    def _warn_truncated_once(self, text: str) -> None:
        """Name an over-long prompt in one warning per encoder (both tokenising paths share it)."""
        if text not in self._warned:
            self._warned.add(text)
            log.warning("prompt longer than %d tokens, truncated: %r", self.max_length, _short(text))


def _prepare_tokenizer(tokenizer: Any, name: str) -> Any:
    """Right padding/truncation (masks and cache rows assume it) and a pad token."""
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise TextEncoderError(
                f"the tokenizer of {name} has no pad, eos or unk token to pad batches with"
            )
        log.info("tokenizer of %s has no pad token; padding with %r (masked out)", name, fallback)
        tokenizer.pad_token = fallback
    return tokenizer
