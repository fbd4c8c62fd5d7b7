"""MaskGit: the bidirectional, text-conditioned transformer over the video token grid.

Input: token ids [B, T', H', W'] (values in [0, codebook_size) or the mask id
`codebook_size`) and text embeddings [B, L, text_dim] with a bool mask [B, L].
Output: float logits [B, T', H', W', codebook_size].

Positions are three factorised learned tables (t, h, w) added by broadcasting: no
grid is materialised and nothing is recomputed per call beyond that one add.
Every block is pre-norm: full self-attention, cross-attention to the text (padded
text keys are masked out), SwiGLU MLP. All attention goes through
`phenaki.models.attention.attend`: fused SDPA kernels, except in bf16 CPU training.

Text goes through `prepare_context` (norm + projection + the per-layer cross-attention
keys/values), so a sampler computes it once per call and reuses it for every step;
a row whose text is dropped (classifier-free guidance) gets a learned null
condition: one learned text_dim vector with mask True, padded to the batch's length.
Conditional and unconditional rows therefore share one batched forward.

An optional token critic (Token-Critic, Lezama et al. 2022; `config.critic`) is a
separate, shallower transformer of the same width that reads a fully filled token
grid and predicts, per token, whether it differs from the ground truth. It shares
the projected text with the generator and is a submodule, so `model.parameters()`
includes it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import PretrainedMixin
from ..config import TransformerConfig
from .attention import attend

log = logging.getLogger(__name__)

__all__ = ["MaskGit", "TextContext", "critic_depth"]

KV = tuple[Tensor, Tensor]


@dataclass
class TextContext:
    """Text prepared for cross-attention; reuse it across forwards of one sampling call."""

    tokens: Tensor  # [B, L, dim] normed + projected text (null rows substituted, pads zeroed)
    mask: Tensor  # [B, L] bool, True = attend
    kv: tuple[KV, ...]  # generator: per layer (K, V), each [B, heads, L, dim_head]
    attn_mask: Tensor | None  # [B, 1, 1, L] bool for SDPA, None when nothing is padded
    critic_kv: tuple[KV, ...] | None = None  # filled lazily by `MaskGit.critic_kv`

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]


def critic_depth(depth: int) -> int:
    """Depth of the token critic: half the generator's, at least one block."""
    return max(1, depth // 2)


# ----------------------------------------------------------------------------- layers


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, heads * d] -> [B, heads, N, d]."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """[B, heads, N, d] -> [B, N, heads * d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Full bidirectional multi-head self-attention (fused qkv projection)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attention_path: str | None = None  # attend's kernel on a CPU (phenaki.kernels chooses it)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_split_heads(part, self.heads) for part in self.to_qkv(x).chunk(3, dim=-1))
        p = self.dropout if self.training else 0.0
        return self.to_out(_merge_heads(attend(q, k, v, dropout=p, path=self.attention_path)))


class CrossAttention(nn.Module):
    """Queries from the video tokens, keys/values from the (pre-computed) text context."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attention_path: str | None = None  # attend's kernel on a CPU (phenaki.kernels chooses it)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def kv(self, tokens: Tensor) -> KV:
        """Keys and values of the text, [B, heads, L, dim_head] each (compute once, reuse)."""
        k, v = self.to_kv(tokens).chunk(2, dim=-1)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def forward(self, x: Tensor, kv: KV, attn_mask: Tensor | None) -> Tensor:
        q = _split_heads(self.to_q(x), self.heads)
        k, v = (t.to(q.dtype) for t in kv)  # context may come from another autocast scope
        p = self.dropout if self.training else 0.0
        out = attend(q, k, v, mask=attn_mask, dropout=p, path=self.attention_path)
        return self.to_out(_merge_heads(out))


class SwiGLU(nn.Module):
    """Gated MLP; hidden width 2/3 * mult * dim keeps the parameter count of a GELU MLP."""

    def __init__(self, dim: int, mult: float, dropout: float) -> None:
        super().__init__()
        hidden = max(8, round(dim * mult * 2 / 3 / 8) * 8)
        self.proj_in = nn.Linear(dim, 2 * hidden)
        self.proj_out = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.drop(a * F.silu(gate)))


class Block(nn.Module):
    """Pre-norm: x += SelfAttn(LN x); x += CrossAttn(LN x, text); x += MLP(LN x)."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(c.dim)
        self.attn = SelfAttention(c.dim, c.heads, c.dim_head, c.dropout)
        self.cross_norm = nn.LayerNorm(c.dim) if c.cross_attend else None
        self.cross = CrossAttention(c.dim, c.heads, c.dim_head, c.dropout) if c.cross_attend else None
        self.mlp_norm = nn.LayerNorm(c.dim)
        self.mlp = SwiGLU(c.dim, c.mlp_mult, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, kv: KV | None, attn_mask: Tensor | None) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x)))
        if self.cross is not None and kv is not None:
            x = x + self.drop(self.cross(self.cross_norm(x), kv, attn_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Trunk(nn.Module):
    """Token embedding + factorised 3-D positions + blocks + final norm -> hidden [B, N, dim]."""

    def __init__(self, c: TransformerConfig, depth: int) -> None:
        super().__init__()
        h, w = c.token_grid
        self.token_emb = nn.Embedding(c.codebook_size + 1, c.dim)  # last row: the mask token
        self.pos_t = nn.Parameter(torch.zeros(c.max_token_frames, c.dim))
        self.pos_h = nn.Parameter(torch.zeros(h, c.dim))
        self.pos_w = nn.Parameter(torch.zeros(w, c.dim))
        self.blocks = nn.ModuleList(Block(c) for _ in range(depth))
        self.norm = nn.LayerNorm(c.dim)

    def context_kv(self, tokens: Tensor) -> tuple[KV, ...]:
        """Per-block cross-attention keys/values of the projected text."""
        return tuple(blk.cross.kv(tokens) for blk in self.blocks if blk.cross is not None)

    def forward(self, ids: Tensor, kv: tuple[KV, ...], attn_mask: Tensor | None) -> Tensor:
        b, t, h, w = ids.shape
        x = self.token_emb(ids)
        x = x + self.pos_t[:t, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]
        x = x.reshape(b, t * h * w, -1)
        layer_kv = iter(kv)
        for blk in self.blocks:
            x = blk(x, next(layer_kv, None) if blk.cross is not None else None, attn_mask)
        return self.norm(x)


# ----------------------------------------------------------------------------- model


class MaskGit(nn.Module, PretrainedMixin):
    """Bidirectional masked-token transformer with a learned null text for guidance."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        _check_config(config)
        self.config = config
        c = config
        self.trunk = Trunk(c, c.depth)
        self.to_logits = nn.Linear(c.dim, c.codebook_size)
        self.text_norm = nn.LayerNorm(c.text_dim)
        self.text_proj = nn.Linear(c.text_dim, c.dim)
        self.null_text = nn.Parameter(torch.zeros(1, c.text_dim))
        if c.critic:
            self.critic = Trunk(c, critic_depth(c.depth))
            self.to_critic = nn.Linear(c.dim, 1)
        else:
            self.critic = None
            self.to_critic = None
        self.apply(_init_weights)
        for trunk in (self.trunk, self.critic):
            if trunk is not None:
                for table in (trunk.pos_t, trunk.pos_h, trunk.pos_w):
                    nn.init.trunc_normal_(table, std=0.02)
        nn.init.normal_(self.null_text, std=1.0)  # text-like scale; LayerNorm follows

    # ------------------------------------------------------------------ properties

    @property
    def mask_id(self) -> int:
        """The id of the learned mask token (= codebook_size)."""
        return self.config.codebook_size

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def token_grid(self) -> tuple[int, int]:
        return tuple(self.config.token_grid)  # type: ignore[return-value]

    @property
    def has_critic(self) -> bool:
        return self.critic is not None

    def with_critic(self) -> MaskGit:
        """This generator with a fresh token critic added (itself if it has one): a critic can then
        be trained onto an already trained generator, whose weights are copied unchanged."""
        if self.critic is not None:
            return self
        model = MaskGit(dataclasses.replace(self.config, critic=True)).to(self.device)
        missing, unexpected = model.load_state_dict(self.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("critic.", "to_critic.")) for k in missing):
            raise RuntimeError(f"with_critic: state mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.train(self.training)

    def without_blocks(self, drop: Iterable[int]) -> MaskGit:
        """This generator with the trunk blocks at `drop` removed and every other weight copied.

        Layer dropping: a deeper model trained for a while becomes a shallower one (to fit a
        size or speed budget) that starts far better than a fresh one and is then trained on.
        A token critic was trained on the old generator's samples and sized by its depth, so
        a model with one is refused.
        """
        depth = self.config.depth
        gone = sorted(set(drop))
        if not gone:
            raise ValueError("without_blocks: no block to drop")
        if any(not 0 <= i < depth for i in gone):
            raise ValueError(f"without_blocks: block indices must lie in 0..{depth - 1}, got {gone}")
        if len(gone) == depth:
            raise ValueError(f"without_blocks: dropping all {depth} blocks leaves no transformer")
        if self.critic is not None:
            raise ValueError("without_blocks: this model has a token critic, sized for the deeper generator; "
                             "drop blocks from a generator without one and train a critic onto the result")
        kept = [i for i in range(depth) if i not in gone]
        weight = self.to_logits.weight
        model = MaskGit(dataclasses.replace(self.config, depth=len(kept))).to(weight.device, weight.dtype)
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("trunk.blocks."):
                index, rest = key[len("trunk.blocks."):].split(".", 1)
                if int(index) in gone:
                    continue
                key = f"trunk.blocks.{kept.index(int(index))}.{rest}"
            state[key] = value
        model.load_state_dict(state, strict=True)
        return model.train(self.training)

    @property
    def conditional(self) -> bool:
        """False when built without cross-attention: the text is then ignored."""
        return bool(self.config.cross_attend)

    @property
    def device(self) -> torch.device:
        return self.to_logits.weight.device

    # ------------------------------------------------------------------ validation

    def check_ids(self, ids: Tensor, allow_mask: bool = True) -> None:
        """Raise ValueError naming the problem (instead of a device-side assert later)."""
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"token ids must be an integer tensor, got {ids.dtype}")
        if ids.dim() != 4:
            raise ValueError(f"token ids must be [B, T', H', W'], got shape {tuple(ids.shape)}")
        b, t, h, w = ids.shape
        if b == 0 or t == 0:
            raise ValueError(f"token ids are empty: shape {tuple(ids.shape)}")
        if t > self.config.max_token_frames:
            raise ValueError(
                f"{t} token-frames exceed max_token_frames={self.config.max_token_frames} "
                f"of this model (the temporal position table has no entry beyond it)"
            )
        if (h, w) != self.token_grid:
            raise ValueError(
                f"token grid {h}x{w} does not match the model's token_grid "
                f"{self.token_grid[0]}x{self.token_grid[1]}"
            )
        high = self.mask_id if allow_mask else self.mask_id - 1
        if bool(((ids < 0) | (ids > high)).any()):
            allowed = f"0..{high}" + (f" ({self.mask_id} = mask id)" if allow_mask else "")
            raise ValueError(
                f"token ids out of range: min {int(ids.min())}, max {int(ids.max())}, "
                f"allowed {allowed} for codebook_size {self.codebook_size}"
            )

    def _check_text(self, text_emb: Tensor, text_mask: Tensor | None) -> Tensor:
        """Validate text shapes; return a bool mask (all True when none given)."""
        if text_emb.dim() != 3 or text_emb.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"text embeddings must be [B, L, {self.config.text_dim}], got {tuple(text_emb.shape)}"
            )
        if text_mask is None:
            return torch.ones(text_emb.shape[:2], dtype=torch.bool, device=text_emb.device)
        if tuple(text_mask.shape) != tuple(text_emb.shape[:2]):
            raise ValueError(
                f"text mask shape {tuple(text_mask.shape)} does not match text embeddings "
                f"{tuple(text_emb.shape[:2])}"
            )
        return text_mask.to(device=text_emb.device, dtype=torch.bool)

    # ------------------------------------------------------------------ text context

    def _null_text(self, batch: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Null condition padded to `length`: the learned vector first, then masked-out zeros."""
        seq = F.pad(self.null_text, (0, 0, 0, length - 1)).to(device)
        seq = seq.unsqueeze(0).expand(batch, length, -1)
        mask = (torch.arange(length, device=device) == 0).expand(batch, length)
        return seq, mask

    def prepare_context(
        self,
        text_emb: Tensor | None,
        text_mask: Tensor | None = None,
        drop_text: Tensor | None = None,
        *,
        batch: int | None = None,
    ) -> TextContext:
        """Project the text and compute every layer's cross-attention K/V once.

        Rows flagged in `drop_text` (and rows whose mask is all False) get the null
        condition. `text_emb=None` (or length 0) means the null condition for all rows;
        `batch`, when given, is checked against (or, without text, sets) the batch size.
        """
        if text_emb is None:
            if batch is None:
                raise ValueError("prepare_context needs text_emb or batch")
            return self.null_context(batch)
        device = self.device
        text_emb = text_emb.to(device=device, dtype=self.null_text.dtype)
        text_mask = self._check_text(text_emb, text_mask.to(device) if text_mask is not None else None)
        b, length = text_mask.shape
        if batch is not None and batch != b:
            raise ValueError(f"text batch {b} does not match token batch {batch}")
        if length == 0:
            return self.null_context(b)
        drop = ~text_mask.any(dim=1)
        if drop_text is not None:
            drop_text = drop_text.to(device=device, dtype=torch.bool)
            if tuple(drop_text.shape) != (b,):
                raise ValueError(f"drop_text must be a bool tensor [{b}], got {tuple(drop_text.shape)}")
            drop = drop | drop_text
        null_seq, null_mask = self._null_text(b, length, device)
        text_emb = torch.where(drop[:, None, None], null_seq.to(text_emb.dtype), text_emb)
        text_mask = torch.where(drop[:, None], null_mask, text_mask)
        return self._context(text_emb, text_mask)

    def null_context(self, batch: int) -> TextContext:
        """The unconditional context (null text, length 1) for `batch` rows."""
        seq, mask = self._null_text(batch, 1, self.device)
        return self._context(seq, mask)

    def _context(self, text_emb: Tensor, text_mask: Tensor) -> TextContext:
        tokens = self.text_proj(self.text_norm(text_emb))
        # zero the pads: they are never attended, and this keeps NaN/inf pads harmless
        tokens = torch.where(text_mask[..., None], tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        kv = self.trunk.context_kv(tokens) if self.conditional else ()
        all_valid = bool(text_mask.all())
        attn_mask = None if all_valid else text_mask[:, None, None, :]
        return TextContext(tokens=tokens, mask=text_mask, kv=kv, attn_mask=attn_mask)

    def critic_kv(self, context: TextContext) -> tuple[KV, ...]:
        """The critic's cross-attention K/V for `context` (computed once, cached on it)."""
        if self.critic is None:
            raise ValueError("this MaskGit has no token critic (config.critic is False)")
        if context.critic_kv is None:
            context.critic_kv = self.critic.context_kv(context.tokens) if self.conditional else ()
        return context.critic_kv

    def _resolve_context(
        self,
        ids: Tensor,
        text_emb: Tensor | None,
        text_mask: Tensor | None,
        drop_text: Tensor | None,
        context: TextContext | None,
    ) -> TextContext:
        if context is None:
            return self.prepare_context(text_emb, text_mask, drop_text, batch=ids.shape[0])
        if text_emb is not None or drop_text is not None:
            raise ValueError("pass either context or text_emb/drop_text, not both")
        if context.batch != ids.shape[0]:
            raise ValueError(f"context batch {context.batch} does not match token batch {ids.shape[0]}")
        return context

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        ids: Tensor,
        text_emb: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        drop_text: Tensor | None = None,
        context: TextContext | None = None,
        only: Tensor | None = None,
    ) -> Tensor:
        """Float logits [B, T', H', W', codebook_size]; no text and no context = null text.

        `only` (bool, the shape of `ids`): logits [N, codebook_size] of those positions alone,
        in row-major order. Training scores the masked tokens only, so the output layer need
        not run for the rest.
        """
        if not torch.compiler.is_compiling():  # a data-dependent check would split a compiled graph
            self.check_ids(ids)
        ctx = self._resolve_context(ids, text_emb, text_mask, drop_text, context)
        hidden = self.trunk(ids, ctx.kv, ctx.attn_mask)
        if only is not None:
            if only.shape != ids.shape or only.dtype != torch.bool:
                raise ValueError(f"only must be a bool tensor of the ids' shape {tuple(ids.shape)}, got "
                                 f"{only.dtype} {tuple(only.shape)}")
            return self.to_logits(hidden.reshape(*ids.shape, -1)[only]).float()
        return self.to_logits(hidden).float().view(*ids.shape, self.codebook_size)

    def critic_logits(
        self,
        ids: Tensor,
        text_emb: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        drop_text: Tensor | None = None,
        context: TextContext | None = None,
    ) -> Tensor:
        """Float logits [B, T', H', W']: > 0 means the critic thinks the token is wrong."""
        if self.critic is None or self.to_critic is None:
            raise ValueError("this MaskGit has no token critic (config.critic is False)")
        if not torch.compiler.is_compiling():  # a data-dependent check would split a compiled graph
            self.check_ids(ids)
        ctx = self._resolve_context(ids, text_emb, text_mask, drop_text, context)
        hidden = self.critic(ids, self.critic_kv(ctx), ctx.attn_mask)
        return self.to_critic(hidden).float().view(*ids.shape)


def _check_config(c: TransformerConfig) -> None:
    """Reject configs that would fail obscurely later."""
    for name in ("dim", "depth", "heads", "dim_head", "max_token_frames", "codebook_size", "text_dim"):
        if int(getattr(c, name)) < 1:
            raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(c, name)}")
    if len(c.token_grid) != 2 or min(c.token_grid) < 1:
        raise ValueError(f"TransformerConfig.token_grid must be (H', W') >= 1, got {c.token_grid}")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"TransformerConfig.dropout must be in [0, 1), got {c.dropout}")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
