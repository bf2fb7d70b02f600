"""The Jukebox prior transformer core: pre-LN blocks of factorized attention, and a KV cache.

Architecture and names follow ``jukebox/transformer/transformer.py`` so OpenAI's released prior
weights load by name below the transformer::

    _attn_mods.<i>.attn.c_attn.{w,b}      (D, 3S) or, in CROSS layers, (D, S)
    _attn_mods.<i>.attn.c_enc_kv.{w,b}    (D, 2S), CROSS layers only
    _attn_mods.<i>.attn.c_proj.{w,b}      (S, D)
    _attn_mods.<i>.ln_0.{weight,bias}     (D,)
    _attn_mods.<i>.mlp.c_fc.{w,b}         (D, M)
    _attn_mods.<i>.mlp.c_proj.{w,b}       (M, D)
    _attn_mods.<i>.ln_1.{weight,bias}     (D,)

with S = m_attn * D and M = m_mlp * D. transformers' port names the same tensors
``_attn_mods.<i>.{layer_norm_0,layer_norm_1}.*`` and ``*.{weight,bias}`` for ``{w,b}``.

Sampling runs through :class:`KVCache`: ``Transformer.new_cache`` preallocates per layer only
what its attention kind reads (``teacher/prior/attention.py``), ``forward(x, cache=cache)``
processes the next positions, writes their keys/values in place and advances
``cache.position``; a chunk fills the cache exactly as the same positions stepped one by one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from teacher.config import check
from teacher.prior.attention import (
    ATTN_ORDERS,
    BLOCKED_KINDS,
    AttnKind,
    Conv1D,
    FactoredAttention,
    LayerKV,
    LayerNorm,
    attention_kind,
    prime_keys,
)

log = logging.getLogger(__name__)

__all__ = [
    "AttnKind",
    "KVCache",
    "MLP",
    "ResAttnBlock",
    "Transformer",
    "TransformerConfig",
    "attention_kind",
]


@dataclass(frozen=True)
class TransformerConfig:
    """The prior's block stack (reference ``Transformer(n_in, n_ctx, n_head, n_depth, ...)``).

    ``attn_order`` picks each layer's attention kind (:func:`attention_kind`): 0 dense,
    2 row/column/previous-row (released upsamplers and 5b top), 10 (5b_lyrics: cross attention
    every 10th layer after the first 9), 12 (1b_lyrics: prime layers at ``d % 16 == 15``).
    ``blocks`` splits the window into ``block_ctx = n_ctx // blocks`` for the factorized kinds.
    """

    width: int
    depth: int
    heads: int
    n_ctx: int
    attn_order: int = 0
    blocks: int | None = None
    spread: int | None = None  # SUMMARY_SPREAD: keys per earlier block
    m_attn: float = 0.25
    m_mlp: float = 1.0
    init_scale: float = 1.0
    res_scale: bool = False  # scale each block's residual branch by 1/depth
    zero_out: bool = False  # zero-init both c_proj (CROSS layers always do)
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    prime_len: int | None = None  # PRIME (1b_lyrics): lyric tokens at the window's start
    encoder_dims: int | None = None  # CROSS (5b_lyrics): length of the encoder states

    @property
    def n_state(self) -> int:
        """Attention width S."""
        return int(self.m_attn * self.width)

    @property
    def n_mlp(self) -> int:
        """MLP width M."""
        return int(self.m_mlp * self.width)

    @property
    def block_ctx(self) -> int | None:
        return self.n_ctx // self.blocks if self.blocks else None

    @property
    def kinds(self) -> tuple[AttnKind, ...]:
        """The attention kind of every layer."""
        return tuple(attention_kind(self.attn_order, d) for d in range(self.depth))

    @property
    def prime_keys(self) -> int | None:
        """Keys a PRIME layer sees (reference ``_prime_len``), capped at n_ctx."""
        if self.prime_len is None or not self.blocks:
            return None
        return min(prime_keys(self.prime_len, self.blocks), self.n_ctx)

    def validate(self) -> TransformerConfig:
        """Raise :class:`ConfigError` naming the first bad field; return ``self``."""
        for name in ("width", "depth", "heads", "n_ctx"):
            check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        check(self.attn_order in ATTN_ORDERS, f"attn_order {self.attn_order} not in {ATTN_ORDERS}")
        check(self.n_state > 0, f"m_attn * width = {self.n_state} must be positive")
        check(self.n_mlp > 0, f"m_mlp * width = {self.n_mlp} must be positive")
        check(
            self.n_state % self.heads == 0,
            f"attention width {self.n_state} is not a multiple of heads {self.heads}",
        )
        check(self.init_scale > 0, f"init_scale must be positive, got {self.init_scale}")
        for name in ("attn_dropout", "resid_dropout"):
            check(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1)")
        kinds = set(self.kinds)
        if kinds & BLOCKED_KINDS or self.blocks is not None:
            check(
                self.blocks is not None and self.blocks > 0 and self.n_ctx % self.blocks == 0,
                f"blocks={self.blocks} must divide n_ctx={self.n_ctx} for kinds "
                f"{sorted(k.name for k in kinds & BLOCKED_KINDS)}",
            )
        if AttnKind.SUMMARY_SPREAD in kinds:
            check(
                self.spread is not None and 0 < self.spread <= self.n_ctx // self.blocks,
                f"spread={self.spread} must be in [1, block_ctx] for SUMMARY_SPREAD",
            )
        if AttnKind.PRIME in kinds:
            check(
                self.prime_len is not None and self.prime_len >= 0,
                "attn_order with PRIME layers needs prime_len >= 0",
            )
        if AttnKind.CROSS in kinds:
            check(
                self.encoder_dims is not None and self.encoder_dims > 0,
                "attn_order with CROSS layers needs encoder_dims > 0",
            )
        return self


#: quick-GELU's slope: ``x * sigmoid(1.702 x)``
GELU_SCALE = 1.702


class MLP(nn.Module):
    """``c_proj(quick_gelu(c_fc(x)))``; quick-GELU ``x * sigmoid(1.702 x)`` (Jukebox ``ops``)."""

    def __init__(
        self,
        width: int,
        n_mlp: int,
        resid_dropout: float = 0.0,
        zero_out: bool = False,
        init_scale: float = 1.0,
    ):
        super().__init__()
        self.c_fc = Conv1D(width, n_mlp, init_scale=init_scale)
        self.c_proj = Conv1D(n_mlp, width, zero_out=zero_out, init_scale=init_scale)
        self.resid_dropout = nn.Dropout(resid_dropout) if resid_dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        h = self.c_fc(x)
        return self.resid_dropout(self.c_proj(h * torch.sigmoid(GELU_SCALE * h)))

    def step(self, x: Tensor) -> Tensor:
        """The MLP of ``x`` ``Tensor[N, D]`` -> ``Tensor[N, D]`` in three kernels
        (:func:`quick_gelu_mlp`)."""
        return quick_gelu_mlp(x, self.c_fc.w, self.c_fc.b, self.c_proj.w, self.c_proj.b)


def quick_gelu_mlp(x: Tensor, fc_w: Tensor, fc_b: Tensor, proj_w: Tensor, proj_b: Tensor) -> Tensor:
    """``(q(x·fc_w + fc_b))·proj_w + proj_b`` with quick-GELU ``q(h) = h·σ(s·h)``, ``s = 1.702``,
    for ``x`` ``Tensor[N, D]`` in three kernels: ``q(h) = silu(s·h) / s``, the scale folded into
    the two products' ``alpha`` and ``beta`` (no copy of the weights; equal up to rounding)."""
    h = torch.addmm(fc_b, x, fc_w, beta=GELU_SCALE, alpha=GELU_SCALE)
    return torch.addmm(proj_b, torch.nn.functional.silu(h), proj_w, alpha=1.0 / GELU_SCALE)


class ResAttnBlock(nn.Module):
    """Reference ``ResAttnBlock``: ``a = attn(ln_0(x))``, ``m = mlp(ln_1(x + a))``,
    ``h = x + a + m``, or ``x + res_scale * (a + m)`` when res_scale != 1 (note the MLP then
    still reads the unscaled ``x + a``)."""

    def __init__(self, cfg: TransformerConfig, kind: AttnKind):
        super().__init__()
        # CROSS layers start as the identity (reference forces zero_out for attn_func 6)
        zero_out = cfg.zero_out or kind == AttnKind.CROSS
        self.kind = kind
        self.attn = FactoredAttention(
            cfg.width,
            cfg.n_ctx,
            cfg.n_state,
            cfg.heads,
            kind,
            blocks=cfg.blocks,
            spread=cfg.spread,
            prime_len=cfg.prime_len,
            encoder_dims=cfg.encoder_dims,
            attn_dropout=cfg.attn_dropout,
            resid_dropout=cfg.resid_dropout,
            zero_out=zero_out,
            init_scale=cfg.init_scale,
        )
        self.ln_0 = LayerNorm(cfg.width)
        self.mlp = MLP(cfg.width, cfg.n_mlp, cfg.resid_dropout, zero_out, cfg.init_scale)
        self.ln_1 = LayerNorm(cfg.width)
        self.res_scale = 1.0 / cfg.depth if cfg.res_scale else 1.0

    def forward(
        self,
        x: Tensor,
        encoder_kv: Tensor | None = None,
        cache: LayerKV | None = None,
        position: int = 0,
    ) -> Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        a = self.attn(self.ln_0(x), encoder_kv, cache, position)
        m = self.mlp(self.ln_1(x + a))
        if self.res_scale == 1.0:
            return x + a + m
        return x + self.res_scale * (a + m)

    def step(self, x: Tensor, encoder_kv: Tensor | None, cache: LayerKV, position: int) -> Tensor:
        """One sampling step without dropout: x (B, D) -> (B, D); same maths as ``forward``.

        Calls the functional ops directly (no module dispatch, no 3-D reshapes): at sampling
        sizes the per-op overhead, not the arithmetic, is the cost.
        """
        attn, mlp = self.attn, self.mlp
        a = attn.step(_layer_norm(x, self.ln_0), encoder_kv, cache, position)
        a = torch.addmm(attn.c_proj.b, a, attn.c_proj.w)
        xa = x + a
        m = mlp.step(_layer_norm(xa, self.ln_1))
        if self.res_scale == 1.0:
            return xa + m
        return x + self.res_scale * (a + m)


def _layer_norm(x: Tensor, ln: LayerNorm) -> Tensor:
    """``ln(x)`` (fp32 compute) without the module call on the fp32 fast path."""
    if x.dtype == torch.float32 and ln.weight.dtype == torch.float32:
        return torch.nn.functional.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return ln(x)


class KVCache:
    """Preallocated keys/values of every layer, for incremental (sampling) passes.

    ``position`` is the number of positions already processed: the next ``forward(x, cache=)``
    treats ``x[:, 0]`` as position ``position``. Layouts per kind are in
    ``teacher/prior/attention.py``; nothing grows or is reallocated while stepping.
    """

    def __init__(self, layers: list[LayerKV], batch_size: int, n_ctx: int, block_ctx: int | None):
        self.layers = layers
        self.batch_size = batch_size
        self.n_ctx = n_ctx
        self.block_ctx = block_ctx
        self.position = 0

    def reset(self) -> None:
        """Start again at position 0 (buffers are reused; stale entries are never read)."""
        self.position = 0
        for layer in self.layers:
            layer.ready = False

    def nbytes(self) -> int:
        """Bytes held by all key/value buffers."""
        return sum(layer.nbytes for layer in self.layers)

    def select(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (LongTensor, any length, repeats allowed), in place.

        For beam-style reordering or dropping finished/rejected samples; allocates new buffers.
        """
        index = index.to(self.layers[0].k.device) if self.layers else index
        for layer in self.layers:
            layer.set_buffer(layer.kv.index_select(1, index))
        self.batch_size = int(index.numel())

    def can_rewind(self, position: int) -> bool:
        """Whether :meth:`rewind` to ``position`` restores the exact state after ``position``
        positions. Dense, column, prime, summary and cross layers keep everything; a row layer
        holds only the current block and a previous-row layer only the last two, so the target
        must lie in the block of the last processed position (or be a row start for ROW)."""
        cur = self.position
        if not 0 <= position <= cur:
            return False
        if position == cur:
            return True
        bc = self.block_ctx
        for layer in self.layers:
            if (
                layer.kind == AttnKind.ROW
                and position % bc
                and (position - 1) // bc != (cur - 1) // bc
            ):
                return False
            if layer.kind == AttnKind.PREV_ROW and position // bc != (cur - 1) // bc:
                return False
        return True

    def rewind(self, position: int) -> None:
        """Forget positions >= ``position`` (e.g. rejected speculative drafts)."""
        if not self.can_rewind(position):
            raise ValueError(
                f"cannot rewind from {self.position} to {position}: a row or previous-row layer "
                "no longer holds that block"
            )
        self.position = position


class Transformer(nn.Module):
    """The prior's transformer: ``depth`` pre-LN :class:`ResAttnBlock` of per-layer kinds."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self._attn_mods = nn.ModuleList(ResAttnBlock(cfg, kind) for kind in cfg.kinds)
        self._has_cross = AttnKind.CROSS in cfg.kinds
        # recompute each block in backward when training with no cache (memory for compute)
        self.gradient_checkpointing = False

    def forward(
        self, x: Tensor, encoder_kv: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """x: (B, T, D) -> (B, T, D).

        Without cache: full causal teacher-forced pass over positions 0..T-1 (T <= n_ctx); the
        outputs equal those of an n_ctx-long pass on the same prefix. With cache: x holds the
        NEXT T positions (T=1 for a sampling step, or a chunk when priming), starting at
        ``cache.position``; their keys/values are written into the preallocated cache and the
        position advances by T. encoder_kv: (B, T_enc, D) states for CROSS layers (with a cache
        they are projected once, on the first pass after ``new_cache``/``reset``).
        """
        B, T, _ = x.shape
        if cache is None:
            if T > self.cfg.n_ctx:
                raise ValueError(f"sequence length {T} exceeds n_ctx {self.cfg.n_ctx}")
            if self._has_cross and encoder_kv is None:
                raise ValueError("this attn_order has cross-attention layers: pass encoder_kv")
            ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
            for block in self._attn_mods:
                enc = encoder_kv if block.kind == AttnKind.CROSS else None
                if ckpt:
                    x = checkpoint(block, x, enc, use_reentrant=False)
                else:
                    x = block(x, enc)
            return x
        p = cache.position
        if p + T > self.cfg.n_ctx:
            raise ValueError(f"positions {p}..{p + T - 1} exceed n_ctx {self.cfg.n_ctx}")
        if B != cache.batch_size:
            raise ValueError(f"batch {B} != cache batch {cache.batch_size}")
        if (
            self._has_cross
            and encoder_kv is None
            and not all(layer.ready for layer in cache.layers if layer.kind == AttnKind.CROSS)
        ):
            raise ValueError("this attn_order has cross-attention layers: pass encoder_kv")
        if T == 1 and not self.training:  # sampling step: the lean 2-D path
            h = x.reshape(B, -1)
            for block, layer in zip(self._attn_mods, cache.layers):
                h = block.step(h, encoder_kv, layer, p)
            x = h.view(B, 1, -1)
        else:
            for block, layer in zip(self._attn_mods, cache.layers):
                x = block(x, encoder_kv, layer, p)
        cache.position = p + T
        return x

    def new_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A zeroed :class:`KVCache` for ``batch_size`` sequences (defaults: the weights')."""
        w = next(self.parameters())
        device = w.device if device is None else torch.device(device)
        dtype = w.dtype if dtype is None else dtype
        layers = [b.attn.new_cache(batch_size, device, dtype) for b in self._attn_mods]
        return KVCache(layers, batch_size, self.cfg.n_ctx, self.cfg.block_ctx)
