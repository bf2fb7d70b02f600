"""Jukebox factorized attention with a preallocated KV cache.

The prior attends with the Sparse Transformer's factorized patterns (Child et al. 2019, used by
Jukebox §4; ``jukebox/transformer/factored_attention.py``). A window of ``n_ctx`` positions is
seen as ``blocks`` rows of ``block_ctx = n_ctx // blocks`` positions. The kinds (OpenAI's
``attn_func``; a query at position t, keys at positions j):

    0 DENSE           j <= t
    1 ROW             j <= t within t's own block
    2 COLUMN          j <= t and j = t (mod block_ctx): the same offset in every earlier block
    3 PREV_ROW        every j of the block before t's (no mask); the first block sees nothing
                      (the reference attends to a zero block, which yields exactly 0)
    4 SUMMARY         the last key of every earlier block, plus one zero key
    5 SUMMARY_SPREAD  the last ``spread`` keys of every earlier block, plus ``spread`` zero keys
    6 CROSS           every encoder state (no mask); keys/values come from ``c_enc_kv``
    7 PRIME           j <= t and j < P, P = (prime_len // blocks + 1) * blocks (the reference's
                      ``_prime_len``: lyric queries are causal, music queries see all lyrics)

Factorized kinds are computed by folding blocks into the batch with einops (rows:
``(B n) H c Dh``, columns: ``(B c) H n Dh``), never with an n_ctx x n_ctx mask. Scores use
``torch.nn.functional.scaled_dot_product_attention`` with ``scale = Dh^-1/2``, which equals the
reference's scaling of q and k each by ``Dh^-1/4``.

Cache layouts (keys and values alike, heads split; ``bc = block_ctx``, ``nb = blocks``):

    DENSE             (B, H, n_ctx, Dh)    the whole window
    ROW               (B, H, bc, Dh)       the current block only
    COLUMN            (B, H, bc, nb, Dh)   the whole window, column-major: a step reads one
                                           contiguous column instead of a strided gather
    PREV_ROW          (B, H, 2, bc, Dh)    ring: block n lives in slot n % 2, so the previous
                                           block survives while the current one fills
    SUMMARY(_SPREAD)  (B, H, nb*s, Dh)     slot 0: s zero keys; slot j: the last s keys of
                                           block j-1
    CROSS             (B, H, T_enc, Dh)    the encoder keys/values, projected once
    PRIME             (B, H, P, Dh)        the first P keys

Buffers are zero-initialised: stale or unwritten entries are always masked, and zeros keep a
masked score finite (a NaN would survive a ``-inf`` mask).
"""

from __future__ import annotations

import logging
from enum import IntEnum

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

log = logging.getLogger(__name__)


class AttnKind(IntEnum):
    """OpenAI's ``attn_func`` numbers."""

    DENSE = 0
    ROW = 1
    COLUMN = 2
    PREV_ROW = 3
    SUMMARY = 4
    SUMMARY_SPREAD = 5
    CROSS = 6
    PRIME = 7


#: kinds that need ``blocks`` (PRIME uses it to round ``prime_len``)
BLOCKED_KINDS = frozenset(
    {
        AttnKind.ROW,
        AttnKind.COLUMN,
        AttnKind.PREV_ROW,
        AttnKind.SUMMARY,
        AttnKind.SUMMARY_SPREAD,
        AttnKind.PRIME,
    }
)

# Per-layer kind cycles of ``jukebox/transformer/transformer.py`` (attn_order -> kinds by d % len).
_ORDER_CYCLES: dict[int, tuple[int, ...]] = {
    0: (0,),  # dense
    1: (1, 2),  # row, column
    2: (1, 2, 3),  # row, column, previous row (released upsamplers and 5b top)
    3: (1, 4),  # row, last column
    4: (1, 5),  # row, last k columns
    5: (1, 4, 1, 1),
    6: (1, 2, 3, 6),
    7: (1, 2, 3) * 5 + (6,),
    8: (1, 2, 3) * 3 + (6,),  # separated enc-dec with lyrics
    9: (1, 2, 3, 0),
    10: (1, 2, 3) * 3 + ((1, 2, 3) * 3 + (6,)) * 7,  # 5b_lyrics: 79 layers
}

#: every attn_order of the reference
ATTN_ORDERS: tuple[int, ...] = (*sorted(_ORDER_CYCLES), 11, 12)


def attention_kind(attn_order: int, layer: int) -> AttnKind:
    """The attention kind of ``layer`` under ``attn_order`` (the reference's ``attn_func`` table).

    Orders 11 and 12 (1b_lyrics) put ``[6|7, 6|7, 0][d % 3]`` at every ``d % 16 == 15`` and
    row/column/previous-row elsewhere.
    """
    if attn_order in (11, 12):
        if layer % 16 == 15:
            special = AttnKind.CROSS if attn_order == 11 else AttnKind.PRIME
            return (special, special, AttnKind.DENSE)[layer % 3]
        return AttnKind((1, 2, 3)[layer % 3])
    if attn_order not in _ORDER_CYCLES:
        raise ValueError(f"unknown attn_order {attn_order}; expected one of {ATTN_ORDERS}")
    cycle = _ORDER_CYCLES[attn_order]
    return AttnKind(cycle[layer % len(cycle)])


def prime_keys(prime_len: int, blocks: int) -> int:
    """Keys a PRIME layer sees: the reference's ``_prime_len``.

    It rounds with ``blocks`` (the number of blocks, not ``block_ctx``) and adds a whole multiple
    even when ``prime_len`` already is one: 1b_lyrics (384, 64) gives 448.
    """
    return (prime_len // blocks + 1) * blocks


class Conv1D(nn.Module):
    """OpenAI's GPT-2 style linear layer: ``w`` is (n_in, n_out) so released weights load by name."""

    def __init__(self, n_in: int, n_out: int, zero_out: bool = False, init_scale: float = 1.0):
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        w = torch.empty(n_in, n_out)
        if zero_out:
            nn.init.zeros_(w)
        else:
            nn.init.normal_(w, std=0.02 * init_scale)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., n_in) -> (..., n_out)."""
        out = torch.addmm(self.b, x.reshape(-1, self.n_in), self.w)
        return out.view(*x.shape[:-1], self.n_out)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype, cast back (reference ``ops.LayerNorm``)."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class LayerKV:
    """One layer's preallocated keys and values; the layout depends on ``kind`` (module docs).

    Keys and values share one buffer ``kv`` (2, B, H, ..., Dh), so a step writes both with
    one copy; ``k`` and ``v`` are views of it.
    """

    def __init__(self, kind: AttnKind, kv: Tensor):
        self.kind = kind
        self.ready = False  # CROSS: the encoder keys/values have been projected
        self.set_buffer(kv)

    def set_buffer(self, kv: Tensor) -> None:
        self.kv = kv
        self.k, self.v = kv[0], kv[1]

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes


def _causal_mask(q_len: int, k_len: int, offset: int, device: torch.device) -> Tensor:
    """(q_len, k_len) bool, True where key j <= query i + offset (may attend)."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(offset)


class FactoredAttention(nn.Module):
    """One attention layer of one kind: ``c_attn`` -> factorized attention -> ``c_proj``.

    Full pass: ``forward(x)`` with x (B, T, D), T <= n_ctx, positions 0..T-1. Cached pass:
    ``forward(x, cache=layer_kv, position=p)`` with x the next T positions starting at p.
    """

    def __init__(
        self,
        width: int,
        n_ctx: int,
        n_state: int,
        heads: int,
        kind: int,
        *,
        blocks: int | None = None,
        spread: int | None = None,
        prime_len: int | None = None,
        encoder_dims: int | None = None,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        zero_out: bool = False,
        init_scale: float = 1.0,
    ):
        super().__init__()
        self.kind = AttnKind(kind)
        self._kind = int(kind)  # plain int: the step path compares it per layer per token
        if n_state % heads:
            raise ValueError(f"n_state {n_state} is not a multiple of heads {heads}")
        if self.kind in BLOCKED_KINDS and (not blocks or n_ctx % blocks):
            raise ValueError(f"{self.kind.name} needs blocks dividing n_ctx={n_ctx}, got {blocks}")
        self.width, self.n_ctx, self.n_state, self.heads = width, n_ctx, n_state, heads
        self.head_dim = n_state // heads
        self.blocks = blocks
        self.block_ctx = n_ctx // blocks if blocks else 0
        self.spread = 1 if self.kind == AttnKind.SUMMARY else (spread or 0)
        if self.kind == AttnKind.SUMMARY_SPREAD and not 0 < self.spread <= self.block_ctx:
            raise ValueError(f"SUMMARY_SPREAD needs 0 < spread <= {self.block_ctx}, got {spread}")
        self.prime_keys = 0
        if self.kind == AttnKind.PRIME:
            if prime_len is None:
                raise ValueError("PRIME attention needs prime_len")
            self.prime_keys = min(prime_keys(prime_len, blocks), n_ctx)
        self.encoder_dims = encoder_dims
        if self.kind == AttnKind.CROSS:
            if not encoder_dims:
                raise ValueError("CROSS attention needs encoder_dims")
            self.c_attn = Conv1D(width, n_state, init_scale=init_scale)
            self.c_enc_kv = Conv1D(width, 2 * n_state, init_scale=init_scale)
        else:
            self.c_attn = Conv1D(width, 3 * n_state, init_scale=init_scale)
        self.c_proj = Conv1D(n_state, width, zero_out=zero_out, init_scale=init_scale)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout) if resid_dropout > 0 else nn.Identity()
        # q.k * Dh^-1/2 == (q * Dh^-1/4).(k * Dh^-1/4), the reference's per-operand scaling
        self.scale = self.head_dim**-0.5
        # opt-in capture for eval reports (lyric-to-music alignment): when set, scores take the
        # manual path (SDPA never exposes its probabilities) and the last softmax is kept in
        # ``last_probs``, fp32, in the (possibly block-folded) layout ``_attend`` saw:
        # (B, H, T, P) for a full PRIME pass, (B, H, T, T_enc) for CROSS
        self.capture = False
        self.last_probs: Tensor | None = None

    # ------------------------------------------------------------------ public
    def forward(
        self,
        x: Tensor,
        encoder_kv: Tensor | None = None,
        cache: LayerKV | None = None,
        position: int = 0,
    ) -> Tensor:
        """x: (B, T, D) -> (B, T, D); encoder_kv: (B, T_enc, D) for CROSS layers."""
        if cache is None:
            a = self._full(x, encoder_kv)
        elif x.shape[1] == 1:
            a = self.step(x.reshape(x.shape[0], -1), encoder_kv, cache, position).unsqueeze(1)
        else:
            a = self._chunk(x, encoder_kv, cache, position)
        return self.resid_dropout(self.c_proj(a))

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerKV:
        """Zeroed buffers holding only what this kind reads (module docs)."""
        bh = (batch_size, self.heads)
        shape = {
            AttnKind.DENSE: (*bh, self.n_ctx),
            AttnKind.ROW: (*bh, self.block_ctx),
            AttnKind.COLUMN: (*bh, self.block_ctx, self.blocks),
            AttnKind.PREV_ROW: (*bh, 2, self.block_ctx),
            AttnKind.SUMMARY: (*bh, (self.blocks or 0) * self.spread),
            AttnKind.SUMMARY_SPREAD: (*bh, (self.blocks or 0) * self.spread),
            AttnKind.CROSS: (*bh, self.encoder_dims or 0),
            AttnKind.PRIME: (*bh, self.prime_keys),
        }[self.kind] + (self.head_dim,)
        return LayerKV(self.kind, torch.zeros((2, *shape), device=device, dtype=dtype))

    # ------------------------------------------------------------- helpers
    def _split(self, x: Tensor) -> Tensor:
        return rearrange(x, "b t (h d) -> b h t d", h=self.heads)

    @staticmethod
    def _merge(a: Tensor) -> Tensor:
        return rearrange(a, "b h t d -> b t (h d)")

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, causal: bool = False, mask: Tensor | None = None
    ) -> Tensor:
        """Softmax attention (..., Tq, Dh) x (..., Tk, Dh) -> (..., Tq, Dh); mask True = attend.

        ``causal`` is top-left aligned (key j <= query i), as in SDPA.
        """
        dropout = self.attn_dropout if self.training else 0.0
        if self.capture or (q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16)):
            # softmax in fp32 (reference ``_attn``); SDPA's CPU kernels may not for half
            w = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale
            if causal:
                mask = _causal_mask(w.shape[-2], w.shape[-1], 0, w.device)
            if mask is not None:
                w = w.masked_fill(~mask, float("-inf"))
            w = w.softmax(dim=-1)
            if self.capture:
                self.last_probs = w.detach()
            w = F.dropout(w, dropout, self.training)
            return torch.matmul(w.to(v.dtype), v)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=self.scale
        )

    def _check_encoder(self, encoder_kv: Tensor | None, batch: int) -> Tensor:
        if encoder_kv is None:
            raise ValueError("a CROSS attention layer needs encoder_kv")
        if encoder_kv.shape[0] != batch or encoder_kv.shape[1] != self.encoder_dims:
            raise ValueError(
                f"encoder_kv {tuple(encoder_kv.shape)} != ({batch}, {self.encoder_dims}, D)"
            )
        return encoder_kv

    def encoder_keys_values(self, encoder_kv: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor]:
        """A CROSS layer's keys and values ``(B, H, T_enc, Dh)`` of the encoder states
        ``encoder_kv (B, T_enc, D)`` (checked), in ``x``'s dtype and for its batch."""
        enc = self._check_encoder(encoder_kv, x.shape[0]).to(x.dtype)
        k, v = self.c_enc_kv(enc).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    # --- block-structured attention on block-aligned tensors (B, H, L, Dh), L = n * bc
    def _rows(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """Query block i attends key block i (causally for ROW, fully for PREV_ROW)."""
        B = q.shape[0]
        q, k, v = (rearrange(t, "b h (n c) d -> (b n) h c d", c=self.block_ctx) for t in (q, k, v))
        a = self._attend(q, k, v, causal=causal)
        return rearrange(a, "(b n) h c d -> b h (n c) d", b=B)

    def _columns(self, qc: Tensor, kc: Tensor, vc: Tensor, batch: int) -> Tensor:
        """qc: ((B c), H, nq, Dh), kc/vc: ((B c), H, nk, Dh), nq <= nk, the last blocks aligned.

        Returns (B, H, nq * bc, Dh).
        """
        nq, nk = qc.shape[2], kc.shape[2]
        if nq == nk:
            a = self._attend(qc, kc, vc, causal=True)
        else:
            a = self._attend(qc, kc, vc, mask=_causal_mask(nq, nk, nk - nq, qc.device))
        return rearrange(a, "(b c) h n d -> b h (n c) d", b=batch)

    def summary_positions(self, n_slots: int, device: torch.device) -> Tensor:
        """Position of each summary key slot; -1 for the always-visible zero slot."""
        s, bc = self.spread, self.block_ctx
        m = torch.arange(n_slots, device=device)
        j = torch.div(m, s, rounding_mode="floor")
        return torch.where(j == 0, torch.full_like(m, -1), j * bc - s + m % s)

    # ------------------------------------------------------------ full pass
    def _full(self, x: Tensor, encoder_kv: Tensor | None) -> Tensor:
        B, T, _ = x.shape
        kind = self.kind
        if kind == AttnKind.CROSS:
            k, v = self.encoder_keys_values(encoder_kv, x)
            return self._merge(self._attend(self._split(self.c_attn(x)), k, v))
        q, k, v = (self._split(t) for t in self.c_attn(x).chunk(3, dim=-1))
        if kind == AttnKind.DENSE:
            a = self._attend(q, k, v, causal=True)
        elif kind == AttnKind.PRIME:
            # top-left causal on the first P keys: query t sees j <= min(t, P - 1)
            P = min(self.prime_keys, T)
            a = self._attend(q, k[:, :, :P], v[:, :, :P], causal=True)
        elif kind in (AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD):
            a = self._summary_full(q, k, v)
        else:
            bc = self.block_ctx
            # pad to whole blocks (as the reference does); every kind is causal, so padding
            # after T changes nothing before T
            pad = -T % bc
            if pad:
                q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            if kind == AttnKind.ROW:
                a = self._rows(q, k, v, causal=True)
            elif kind == AttnKind.COLUMN:
                qc, kc, vc = (rearrange(t, "b h (n c) d -> (b c) h n d", c=bc) for t in (q, k, v))
                a = self._columns(qc, kc, vc, B)
            else:  # PREV_ROW: block n attends block n-1; block 0 gets exactly 0
                if q.shape[2] == bc:
                    a = torch.zeros_like(q)
                else:
                    a = self._rows(q[:, :, bc:], k[:, :, :-bc], v[:, :, :-bc], causal=False)
                    a = F.pad(a, (0, 0, bc, 0))
            a = a[:, :, :T]
        return self._merge(a)

    def _summary_full(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """SUMMARY kinds over positions 0..T-1: tails of every block present, zero slot first."""
        B, H, T, Dh = k.shape
        bc, s = self.block_ctx, self.spread
        nb = -(-T // bc)
        k, v = (
            F.pad(t, (0, 0, 0, nb * bc - T)).view(B, H, nb, bc, Dh)[:, :, : self.blocks - 1]
            for t in (k, v)
        )
        k, v = (F.pad(t[:, :, :, bc - s :], (0, 0, 0, 0, 1, 0)).flatten(2, 3) for t in (k, v))
        pos = self.summary_positions(k.shape[2], q.device)
        mask = pos[None, :] <= torch.arange(T, device=q.device)[:, None]
        return self._attend(q, k, v, mask=mask)

    # ------------------------------------------------------------ one step
    def step(self, x: Tensor, encoder_kv: Tensor | None, c: LayerKV, p: int) -> Tensor:
        """One position: x (B, D) at position p -> attention output (B, S) before ``c_proj``.

        The sampling hot path: 2-D addmm, plain views, one cache write (keys and values share
        one buffer), no einops, no host syncs.
        """
        B = x.shape[0]
        H, Dh = self.heads, self.head_dim
        kind = self._kind
        if kind == 6:  # CROSS
            if not c.ready:
                self._fill_cross(c, encoder_kv, x.unsqueeze(1))
            q = torch.addmm(self.c_attn.b, x, self.c_attn.w).view(B, H, 1, Dh)
            return self._attend(q, c.k, c.v).reshape(B, H * Dh)
        qkv = torch.addmm(self.c_attn.b, x, self.c_attn.w).view(B, 3, H, Dh)
        q = qkv[:, 0].unsqueeze(2)  # (B, H, 1, Dh)
        kv = qkv[:, 1:].transpose(0, 1)  # (2, B, H, Dh)
        buf = c.kv  # (2, B, H, ...layout..., Dh)
        if kind == 0:  # DENSE
            buf.select(3, p).copy_(kv)
            kk, vv = c.k.narrow(2, 0, p + 1), c.v.narrow(2, 0, p + 1)
        elif kind == 1:  # ROW
            i = p % self.block_ctx
            buf.select(3, i).copy_(kv)
            kk, vv = c.k.narrow(2, 0, i + 1), c.v.narrow(2, 0, i + 1)
        elif kind == 2:  # COLUMN: one contiguous column (B, H, n+1, Dh)
            n, i = divmod(p, self.block_ctx)
            buf.select(3, i).select(3, n).copy_(kv)
            kk, vv = c.k.select(2, i).narrow(2, 0, n + 1), c.v.select(2, i).narrow(2, 0, n + 1)
        elif kind == 3:  # PREV_ROW: ring slot n % 2
            n, i = divmod(p, self.block_ctx)
            buf.select(3, n % 2).select(3, i).copy_(kv)
            if n == 0:  # the reference attends to a zero block: exactly 0
                return x.new_zeros(B, H * Dh)
            kk, vv = c.k.select(2, (n - 1) % 2), c.v.select(2, (n - 1) % 2)
        elif kind == 7:  # PRIME
            if p < self.prime_keys:
                buf.select(3, p).copy_(kv)
            m = min(p + 1, self.prime_keys)
            kk, vv = c.k.narrow(2, 0, m), c.v.narrow(2, 0, m)
        else:  # SUMMARY kinds: slot n+1 takes the tail of block n
            n, i = divmod(p, self.block_ctx)
            s, t0 = self.spread, self.block_ctx - self.spread
            if i >= t0 and n + 1 < self.blocks:
                buf.select(3, (n + 1) * s + i - t0).copy_(kv)
            m = min((n + 1) * s + max(0, i - t0 + 1), self.blocks * s)
            kk, vv = c.k.narrow(2, 0, m), c.v.narrow(2, 0, m)
        return self._attend(q, kk, vv).reshape(B, H * Dh)

    def _fill_cross(self, c: LayerKV, encoder_kv: Tensor | None, x: Tensor) -> None:
        k, v = self.encoder_keys_values(encoder_kv, x)
        c.k.copy_(k)
        c.v.copy_(v)
        c.ready = True

    # ------------------------------------------------------------ a chunk
    def _chunk(self, x: Tensor, encoder_kv: Tensor | None, c: LayerKV, p: int) -> Tensor:
        """x: (B, T, D) at positions p..p+T-1 -> (B, T, S); fills the cache as T steps would."""
        B, T, _ = x.shape
        e = p + T
        kind = self.kind
        dev = x.device
        if kind == AttnKind.CROSS:
            if not c.ready:
                self._fill_cross(c, encoder_kv, x)
            return self._merge(self._attend(self._split(self.c_attn(x)), c.k, c.v))
        q, k, v = (self._split(t) for t in self.c_attn(x).chunk(3, dim=-1))
        bc = self.block_ctx
        if kind == AttnKind.DENSE:
            c.k[:, :, p:e] = k
            c.v[:, :, p:e] = v
            mask = None if p == 0 else _causal_mask(T, e, p, dev)
            a = self._attend(q, c.k[:, :, :e], c.v[:, :, :e], causal=p == 0, mask=mask)
        elif kind == AttnKind.PRIME:
            P = self.prime_keys
            if p < P:
                w = min(e, P)
                c.k[:, :, p:w] = k[:, :, : w - p]
                c.v[:, :, p:w] = v[:, :, : w - p]
            m = min(e, P)
            a = self._attend(q, c.k[:, :, :m], c.v[:, :, :m], mask=_causal_mask(T, m, p, dev))
        elif kind in (AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD):
            a = self._summary_chunk(q, k, v, c, p)
        else:
            off = p % bc  # queries start `off` into their first block
            nq = -(-(off + T) // bc)  # query blocks spanned
            qs = F.pad(q, (0, 0, off, nq * bc - off - T))
            if kind == AttnKind.ROW:
                ks, vs = (
                    F.pad(torch.cat([buf[:, :, :off], t], dim=2), (0, 0, 0, nq * bc - off - T))
                    for buf, t in ((c.k, k), (c.v, v))
                )
                a = self._rows(qs, ks, vs, causal=True)
                last = (e - 1) // bc * bc  # keep the block being filled
                c.k[:, :, : e - last] = ks[:, :, last - (p - off) : e - (p - off)]
                c.v[:, :, : e - last] = vs[:, :, last - (p - off) : e - (p - off)]
            elif kind == AttnKind.COLUMN:
                # write first: a query sees its own key; flat index of position t is c*nb + n
                pos = torch.arange(p, e, device=dev)
                idx = (pos % bc) * self.blocks + torch.div(pos, bc, rounding_mode="floor")
                flat = c.kv.view(2, B, self.heads, bc * self.blocks, self.head_dim)  # no copy
                flat[0].index_copy_(2, idx, k)
                flat[1].index_copy_(2, idx, v)
                nk = (p - off) // bc + nq
                qc = rearrange(qs, "b h (n c) d -> (b c) h n d", c=bc)
                kc, vc = (
                    rearrange(buf[:, :, :, :nk], "b h c n d -> (b c) h n d") for buf in (c.k, c.v)
                )
                a = self._columns(qc, kc, vc, B)
            else:  # PREV_ROW: segment from the previous block; key block i = prev of query block i
                n0 = p // bc
                parts_k, parts_v = [], []
                if n0 == 0:
                    parts_k.append(k.new_zeros(B, self.heads, bc, self.head_dim))
                    parts_v.append(parts_k[0])
                else:
                    parts_k.append(c.k[:, :, (n0 - 1) % 2])
                    parts_v.append(c.v[:, :, (n0 - 1) % 2])
                tail = (nq + 1) * bc - (bc + off + T)
                ks = F.pad(
                    torch.cat([*parts_k, c.k[:, :, n0 % 2, :off], k], dim=2), (0, 0, 0, tail)
                )
                vs = F.pad(
                    torch.cat([*parts_v, c.v[:, :, n0 % 2, :off], v], dim=2), (0, 0, 0, tail)
                )
                a = self._rows(qs, ks[:, :, : nq * bc], vs[:, :, : nq * bc], causal=False)
                last = (e - 1) // bc
                for g in (last - 1, last):  # ring: the last two blocks the segment holds
                    if g >= n0:
                        s0, n = (g - n0 + 1) * bc, min(bc, e - g * bc)
                        c.k[:, :, g % 2, :n] = ks[:, :, s0 : s0 + n]
                        c.v[:, :, g % 2, :n] = vs[:, :, s0 : s0 + n]
            a = a[:, :, off : off + T]
        return self._merge(a)

    def _summary_chunk(self, q: Tensor, k: Tensor, v: Tensor, c: LayerKV, p: int) -> Tensor:
        T = q.shape[2]
        e = p + T
        bc, s = self.block_ctx, self.spread
        t0 = bc - s
        for n in range(p // bc, min((e - 1) // bc + 1, self.blocks - 1)):
            lo, hi = max(p, n * bc + t0), min(e, (n + 1) * bc)  # tail of block n in the chunk
            if lo < hi:
                slot = (n + 1) * s + lo - n * bc - t0
                c.k[:, :, slot : slot + hi - lo] = k[:, :, lo - p : hi - p]
                c.v[:, :, slot : slot + hi - lo] = v[:, :, lo - p : hi - p]
        n, i = divmod(e - 1, bc)
        m = min((n + 1) * s + max(0, i - t0 + 1), self.blocks * s)
        pos = self.summary_positions(m, q.device)
        mask = pos[None, :] <= torch.arange(p, e, device=q.device)[:, None]
        return self._attend(q, c.k[:, :, :m], c.v[:, :, :m], mask=mask)
