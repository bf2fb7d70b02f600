"""A static decoding engine for a prior: autoregressive steps at the speed of the hardware.

The cost of sampling Jukebox is the autoregressive step, repeated ~414,000 times per minute of
44.1 kHz audio. :class:`DecodingEngine` makes one step a fixed sequence of kernels, so that it
can be captured once as a CUDA graph and replayed per token (launch overhead paid once), or
compiled once (``torch.compile(fullgraph=True, dynamic=False)``):

* the KV cache is preallocated per (batch, window) with the layouts of
  :mod:`teacher.prior.attention` (each layer keeps only what its kind reads);
* the position is a device tensor (``pos``), advanced in place; cache writes are
  ``index_copy_`` at positions computed from it, and every layer attends over its whole fixed
  buffer with a mask computed from it (once per step, shared by the layers of a kind), so no
  tensor changes shape from one token to the next and nothing syncs with the host;
* the inputs of a step (the previous token, the start embedding, the per-position embeddings
  and conditioning of the window) and its outputs (logits, the drawn code) live in
  preallocated buffers.

:meth:`DecodingEngine.score` is the multi-query step: N new positions against the cache in one
call (chunked priming, and the verification pass of speculative sampling), split at block
boundaries (a row layer holds one block); :meth:`DecodingEngine.rewind` forgets positions.

Precision: the weights may be fp32, bf16 or fp16 (the prior is cast before the engine is made);
layer norms, the softmax and the logits are computed in fp32 whatever the weights.

Attention kinds: every kind of :mod:`teacher.prior.attention` (dense, row, column,
previous-row, the summary kinds, prime and cross attention).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from teacher.prior.attention import AttnKind
from teacher.prior.model import Conditioning, Prior

log = logging.getLogger(__name__)

#: the input token of position 0 (the start embedding)
START = -1
#: steps of Gumbel noise drawn at once (the draw order is part of the reproducibility contract)
NOISE_BLOCK = 64
#: kinds whose buffers hold one block (or two): a multi-query call stays inside one block
_BLOCK_KINDS = frozenset(
    {AttnKind.ROW, AttnKind.COLUMN, AttnKind.PREV_ROW, AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD}
)
_SUMMARY_KINDS = frozenset({AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD})


@dataclass
class _Geometry:
    """Everything the layers derive from the positions of one call, computed once."""

    p: Tensor  # (N,) positions
    i: Tensor | None = None  # offset in the block
    mask_dense: Tensor | None = None  # (N, n_ctx) key j <= p
    mask_row: Tensor | None = None  # (N, bc) key j <= i
    col_write: Tensor | None = None  # (N,) flat (i * nb + n) slot of a COLUMN buffer
    mask_col: Tensor | None = None  # (N, 1, nb) block m <= n
    prev_write: Tensor | None = None  # (N,) flat ((n % 2) * bc + i) slot of a ring buffer
    prev_read: Tensor | None = None  # (1,) ring slot of the previous block
    prev_gate: Tensor | None = None  # (1,) 0 in the first block (it attends to nothing)
    prime_write: Tensor | None = None  # (N,) slot, clamped to the last one
    prime_gate: Tensor | None = None  # (1, 1, 1, N, 1) True where p < P (a real write)
    mask_prime: Tensor | None = None  # (N, P) key j <= p
    summary_write: Tensor | None = None  # (N,) slot of a block's tail key (else slot 0)
    summary_gate: Tensor | None = None  # (1, 1, 1, N, 1) True for tail positions
    mask_summary: Tensor | None = None  # (N, slots) the slot's key is at or before p


class DecodingEngine:
    """Static-shape decoding of one prior for ``batch_size`` sequences.

    >>> engine = DecodingEngine(prior.eval(), batch_size=1)          # doctest: +SKIP
    >>> engine.begin(prior.condition(labels, upper), forced)         # doctest: +SKIP
    >>> logits = engine.step()   # (B, l_bins) fp32 of position engine.position; then set_token

    Args:
        prior: an eval-mode prior, already in the dtype and on the device to run in.
        batch_size: B, fixed for the engine's life.
        cuda_graph: capture :meth:`sample_step` as a CUDA graph (default: when on CUDA).
        static: index everything by the device position (default: with a CUDA graph); the eager
            alternative selects views at the host position (faster on a CPU).
    """

    def __init__(
        self,
        prior: Prior,
        batch_size: int,
        cuda_graph: bool | None = None,
        static: bool | None = None,
    ) -> None:
        if prior.training:
            raise RuntimeError("call prior.eval() before decoding: dropout breaks the KV cache")
        cfg = prior.cfg
        core = prior.prior
        tr = core.transformer
        kinds = set(tr.cfg.kinds)
        self.cfg, self.core, self.transformer = cfg, core, tr  # not the prior: engine_for's key
        self.batch_size = b = int(batch_size)
        weight = core.x_emb.weight
        self.device, self.dtype = weight.device, weight.dtype
        dev, dt = self.device, self.dtype
        tcfg = tr.cfg
        self.n_ctx = tcfg.n_ctx  # transformer positions (lyrics + music for single style)
        self.n_lyrics = cfg.n_tokens if cfg.single_sequence else 0
        self.shift = cfg.vocab_offset
        self.l_bins = cfg.l_bins
        self.width = tcfg.width
        self.bc = tcfg.block_ctx or 0
        self.nb = tcfg.blocks or 0
        self.prime = tcfg.prime_keys or 0
        self.cache = tr.new_cache(b, dev, dt)
        self.layers = list(zip(tr._attn_mods, self.cache.layers))
        self._kinds = kinds
        # fp32 copies of the layer-norm parameters and the music rows of the output head
        self._ln = [
            tuple(
                p.detach().float()
                for p in (blk.ln_0.weight, blk.ln_0.bias, blk.ln_1.weight, blk.ln_1.bias)
            )
            for blk in tr._attn_mods
        ]
        self.head_t = core.x_out.weight[self.shift :].detach().float().t().contiguous()
        self.emb = weight
        # static inputs and outputs
        self.pos = torch.zeros((), dtype=torch.long, device=dev)  # the next position
        self.prev = torch.zeros(b, dtype=torch.long, device=dev)  # its input token (joint vocab)
        self.start = torch.zeros(b, self.width, dtype=dt, device=dev)
        self.add = torch.zeros(self.n_ctx, b, self.width, dtype=dt, device=dev)
        # the conditioning is added again after the stack unless the decoder is merged
        self.out_add = torch.zeros_like(self.add) if core.add_cond_after_transformer else None
        self.logits = torch.zeros(b, self.l_bins, dtype=torch.float32, device=dev)
        self.token = torch.zeros(b, dtype=torch.long, device=dev)  # the last drawn code
        # Gumbel noise of the next sample steps, row noise_row for the next one (set_noise)
        self.noise = torch.zeros(NOISE_BLOCK, b, self.l_bins, dtype=torch.float32, device=dev)
        self.noise_row = torch.zeros((), dtype=torch.long, device=dev)
        self.temperature = torch.ones((), dtype=torch.float32, device=dev)
        self.position_int = 0  # host mirror of pos (never read back from the device)
        # index ranges the masks compare against
        self._ar_ctx = torch.arange(self.n_ctx, device=dev)
        self._ar_bc = torch.arange(self.bc, device=dev) if self.bc else None
        self._ar_nb = torch.arange(self.nb, device=dev) if self.nb else None
        self._ar_prime = torch.arange(self.prime, device=dev) if self.prime else None
        self.spread = 0
        if kinds & _SUMMARY_KINDS:  # one attn layer of the kind knows its spread and slots
            attn = next(blk.attn for blk in tr._attn_mods if blk.attn.kind in _SUMMARY_KINDS)
            self.spread = attn.spread
            self._slot_pos = attn.summary_positions(self.nb * self.spread, dev)
        self.cuda_graph = (dev.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        self.static = self.cuda_graph if static is None else bool(static) or self.cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._step_fn: Callable[[], Tensor] = self._step

    # -- per window -----------------------------------------------------------------------------

    def begin(
        self, cond: Conditioning, forced: Tensor | None = None, chunk_size: int | None = None
    ) -> None:
        """Start a window: copy its conditioning into the static buffers, reset the cache and
        prime the ``forced`` tokens (``LongTensor[B, F]`` in the joint vocabulary: the lyric
        window, then prefix codes + ``vocab_offset``) with multi-query steps of at most
        ``chunk_size`` positions; the next step is then position ``F``."""
        b, core = self.batch_size, self.core
        cond = cond.expand(b)
        total = self.n_ctx
        add = core.pos_emb()[:total].unsqueeze(1).to(self.dtype)  # (S, 1, D)
        self.add.copy_(add.expand(total, b, self.width))
        if self.out_add is not None:
            self.out_add.zero_()
        if cond.x_cond is not None:
            xc = cond.x_cond[:, :total].to(self.dtype).transpose(0, 1)  # (S_c, B, D)
            self.add[: xc.shape[0]] += xc
            if self.out_add is not None:
                self.out_add[: xc.shape[0]] = xc
        self.start.copy_(core.start_embedding(cond.start, b)[:, 0].to(self.dtype))
        self.cache.reset()
        for block, layer in self.layers:
            if layer.kind == AttnKind.CROSS:
                block.attn._fill_cross(layer, cond.encoder_kv, self.start.unsqueeze(1))
        self._set_position(0)
        if forced is not None and forced.shape[1]:
            f = forced.shape[1]
            inputs = torch.cat([forced.new_full((b, 1), START), forced[:, :-1]], dim=1)
            self.score(inputs, chunk_size=chunk_size, logits=False)
            self.prev.copy_(forced[:, -1])
        else:
            f = 0
        log.debug("engine: window primed with %d positions", f)

    # -- one position -----------------------------------------------------------------------------

    def step(self) -> Tensor:
        """Logits ``Tensor[B, l_bins]`` (fp32, the static :attr:`logits` buffer) of position
        :attr:`position`, whose input token is :attr:`prev`; the position advances by one."""
        out = self._step_fn()
        self.position_int += 1
        return out

    def _step(self) -> Tensor:
        """One position. Static (CUDA graph, compiled): everything indexed by the device
        tensor :attr:`pos`. Eager (the CPU default): the host position selects views instead of
        gathering (the same kernels without the index arithmetic; layers take the lean
        :meth:`~teacher.prior.attention.FactoredAttention.step`)."""
        b = self.batch_size
        if self.static:
            first = self.pos == 0
            x = torch.where(first, self.start, F.embedding(self.prev.clamp(min=0), self.emb))
            x = x + self.add.index_select(0, self.pos.view(1)).view(b, self.width)
            x = self._blocks(x, self._geometry(self.pos.view(1)), b, 1)
            if self.out_add is not None:
                x = x + self.out_add.index_select(0, self.pos.view(1)).view(b, self.width)
        else:
            p = self.position_int
            x = self.start if p == 0 else F.embedding(self.prev, self.emb)
            x = self._blocks(x + self.add[p], p, b, 1)
            if self.out_add is not None:
                x = x + self.out_add[p]
        torch.mm(x.float(), self.head_t, out=self.logits)
        self.pos.add_(1)
        return self.logits

    def sample_step(self) -> Tensor:
        """One drawn code per row, ``LongTensor[B]`` (the static :attr:`token` buffer): the
        step's logits divided by :attr:`temperature` plus row :attr:`noise_row` of the Gumbel
        noise block :attr:`noise` (:meth:`set_noise`), argmax (a draw from the softmax); the
        code becomes the next position's input. On CUDA the whole of it replays as one graph."""
        if self.cuda_graph:
            if self._graph is None:
                self._capture()
            self._graph.replay()
            self.position_int += 1
            return self.token
        self._sample_body()
        self.position_int += 1
        return self.token

    def _sample_body(self) -> None:
        logits = self._step_fn()
        g = self.noise.index_select(0, self.noise_row.view(1))[0]
        torch.argmax(torch.addcmul(logits, g, self.temperature), dim=-1, out=self.token)
        self.prev.copy_(self.token + self.shift)
        self.noise_row.add_(1)

    def set_noise(self, noise: Tensor, temperature: float) -> None:
        """Use ``noise`` (``Tensor[R, B, l_bins]`` standard Gumbel, ``R <= NOISE_BLOCK``) for
        the next ``R`` sample steps at ``temperature`` (``argmax(l / τ + g) = argmax(l +
        τ·g)``)."""
        self.noise[: noise.shape[0]].copy_(noise)
        self.noise_row.zero_()
        self.temperature.fill_(float(temperature))

    def set_token(self, token: Tensor) -> None:
        """Make ``token`` (``LongTensor[B]`` codes, music vocabulary) the next position's input."""
        self.prev.copy_(token + self.shift)

    def _capture(self) -> None:
        """Capture :meth:`_sample_body` as a CUDA graph (after warm-up runs on a side stream
        that leave the state as it was)."""
        saved = [t.clone() for t in (self.pos, self.prev, self.token, self.noise_row)]
        kv = [layer.kv.clone() for _, layer in self.layers]
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._sample_body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._sample_body()
        for t, s in zip((self.pos, self.prev, self.token, self.noise_row), saved):
            t.copy_(s)
        for (_, layer), s in zip(self.layers, kv):
            layer.kv.copy_(s)
        self._graph = graph

    # -- many positions ---------------------------------------------------------------------------

    def score(
        self, inputs: Tensor, chunk_size: int | None = None, logits: bool = True
    ) -> Tensor | None:
        """The multi-query step: positions :attr:`position` … + N − 1 whose input tokens are
        ``inputs`` (``LongTensor[B, N]``, joint vocabulary; :data:`START` for position 0) in one
        call per segment (segments end at block boundaries, at the prime length and every
        ``chunk_size`` positions) -> their logits ``Tensor[B, N, l_bins]`` fp32 (None with
        ``logits=False``). The cache holds their keys and values afterwards; :attr:`prev` is
        left alone (set it, or :meth:`set_token`, before the next :meth:`step`)."""
        b, n = inputs.shape
        if b != self.batch_size:
            raise ValueError(f"batch {b} != the engine's {self.batch_size}")
        p0 = self.position_int
        if p0 + n > self.n_ctx:
            raise ValueError(f"positions {p0}..{p0 + n - 1} exceed n_ctx {self.n_ctx}")
        outs = []
        lo = 0
        while lo < n:
            hi = self._segment_end(p0 + lo, p0 + n, chunk_size) - p0
            x = self._inputs(inputs[:, lo:hi], p0 + lo)
            positions = torch.arange(p0 + lo, p0 + hi, device=self.device)
            x = self._blocks(
                x.reshape(b * (hi - lo), self.width), self._geometry(positions), b, hi - lo
            )
            x = x.view(b, hi - lo, self.width)
            if logits:
                if self.out_add is not None:
                    x = x + self.out_add[p0 + lo : p0 + hi].transpose(0, 1)
                outs.append(torch.matmul(x.float(), self.head_t))
            lo = hi
        self._set_position(p0 + n)
        return torch.cat(outs, dim=1) if logits else None

    def _segment_end(self, p: int, end: int, chunk_size: int | None) -> int:
        """Where the segment starting at ``p`` ends: inside one block for the kinds that keep
        one, and on one side of the prime length and of a block's summary tail, so that a
        segment's writes all go to distinct slots (or none)."""
        e = end
        if self.bc and self._kinds & _BLOCK_KINDS:
            e = min(e, (p // self.bc + 1) * self.bc)
        if self.spread:
            tail = p // self.bc * self.bc + self.bc - self.spread
            if p < tail:
                e = min(e, tail)
        if self.prime and p < self.prime:
            e = min(e, self.prime)
        if chunk_size:
            e = min(e, p + chunk_size)
        return e

    def _inputs(self, tokens: Tensor, p0: int) -> Tensor:
        """``Tensor[B, N, D]``: embeddings of the input tokens (start at position 0) plus the
        per-position embeddings and conditioning of positions ``p0`` … ``p0 + N − 1``."""
        n = tokens.shape[1]
        x = F.embedding(tokens.clamp(min=0), self.emb)
        if p0 == 0:
            x = torch.cat([self.start.unsqueeze(1), x[:, 1:]], dim=1)
        return x + self.add[p0 : p0 + n].transpose(0, 1)

    # -- rewinding ---------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The next position (host copy; the device tensor is :attr:`pos`)."""
        return self.position_int

    def can_rewind(self, position: int) -> bool:
        """Whether :meth:`rewind` to ``position`` restores the exact state (row and
        previous-row layers hold one or two blocks: see :meth:`KVCache.can_rewind`)."""
        self.cache.position = self.position_int
        return self.cache.can_rewind(position)

    def rewind(self, position: int, token: Tensor | None = None) -> None:
        """Forget positions ``>= position`` (rejected drafts: a pointer moves, nothing is
        copied); ``token`` (music codes ``LongTensor[B]``) becomes the input of ``position``."""
        self.cache.position = self.position_int
        self.cache.rewind(position)
        self._set_position(position)
        if token is not None:
            self.set_token(token)

    def _set_position(self, position: int) -> None:
        self.position_int = int(position)
        self.cache.position = self.position_int
        self.pos.fill_(self.position_int)

    # -- the layers --------------------------------------------------------------------------------

    def _geometry(self, p: Tensor) -> _Geometry:
        """Positions ``p`` (``LongTensor[N]``, one block segment) -> what the layers need."""
        kinds = self._kinds
        geo = _Geometry(p=p)
        pc = p[:, None]
        if AttnKind.DENSE in kinds:
            geo.mask_dense = self._ar_ctx[None] <= pc
        if kinds & {AttnKind.ROW, AttnKind.COLUMN, AttnKind.PREV_ROW}:
            bc = self.bc
            n, i = torch.div(p, bc, rounding_mode="floor"), p % bc
            geo.i = i
            if AttnKind.ROW in kinds:
                geo.mask_row = self._ar_bc[None] <= i[:, None]
            if AttnKind.COLUMN in kinds:
                geo.col_write = i * self.nb + n
                geo.mask_col = (self._ar_nb[None] <= n[:, None]).unsqueeze(1)
            if AttnKind.PREV_ROW in kinds:
                geo.prev_write = (n % 2) * bc + i
                geo.prev_read = (n[:1] - 1) % 2
                geo.prev_gate = n[:1] > 0
        if AttnKind.PRIME in kinds:
            geo.prime_write = p.clamp(max=self.prime - 1)
            geo.prime_gate = (p < self.prime).view(1, 1, 1, -1, 1)
            geo.mask_prime = self._ar_prime[None] <= pc
        if kinds & _SUMMARY_KINDS:  # slot n+1 takes the tail of block n (module attention)
            s, bc = self.spread, self.bc
            n, i = torch.div(p, bc, rounding_mode="floor"), p % bc
            gate = (i >= bc - s) & (n + 1 < self.nb)
            geo.summary_write = torch.where(gate, (n + 1) * s + i - (bc - s), 0)
            geo.summary_gate = gate.view(1, 1, 1, -1, 1)
            geo.mask_summary = self._slot_pos[None] <= pc
        return geo

    def _blocks(self, x: Tensor, geo: _Geometry | int, b: int, n: int) -> Tensor:
        """The transformer on ``x`` ``Tensor[B·N, D]`` at the positions of ``geo`` (or, one
        eager position, at the host position ``geo``)."""
        for (block, layer), (w0, b0, w1, b1) in zip(self.layers, self._ln):
            attn, mlp = block.attn, block.mlp
            h = self._norm(x, w0, b0, block.ln_0.eps)
            if isinstance(geo, int):
                a = attn.step(h, None, layer, geo)
            else:
                a = self._attention(attn, layer, h, geo, b, n)
            a = torch.addmm(attn.c_proj.b, a, attn.c_proj.w)
            xa = x + a
            h = torch.addmm(mlp.c_fc.b, self._norm(xa, w1, b1, block.ln_1.eps), mlp.c_fc.w)
            m = torch.addmm(mlp.c_proj.b, h * torch.sigmoid(1.702 * h), mlp.c_proj.w)
            x = xa + m if block.res_scale == 1.0 else x + block.res_scale * (a + m)
        return x

    def _norm(self, x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
        """Layer norm in fp32 (the weights' dtype in and out)."""
        if x.dtype == torch.float32:
            return F.layer_norm(x, (x.shape[-1],), w, b, eps)
        return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        """Softmax attention ``(..., Nq, Dh) x (..., Nk, Dh)``; ``mask`` True = attend. The
        softmax is fp32: SDPA for fp32 weights, the explicit product for half precision."""
        if q.dtype == torch.float32:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        w = torch.matmul(q, k.transpose(-1, -2)).float() * scale
        if mask is not None:
            w = w.masked_fill(~mask, float("-inf"))
        return torch.matmul(w.softmax(dim=-1).to(v.dtype), v)

    def _attention(self, attn, layer, x: Tensor, geo: _Geometry, b: int, n: int) -> Tensor:
        """One layer's attention of ``x`` ``Tensor[B·N, D]`` -> ``Tensor[B·N, S]``: write the
        new keys/values at their slots, attend over the fixed buffer under the mask."""
        heads, dh = attn.heads, attn.head_dim
        kind, scale = attn.kind, attn.scale
        if kind == AttnKind.CROSS:
            q = torch.addmm(attn.c_attn.b, x, attn.c_attn.w).view(b, n, heads, dh).transpose(1, 2)
            a = self._attend(q, layer.k, layer.v, None, scale)
            return a.transpose(1, 2).reshape(b * n, heads * dh)
        qkv = torch.addmm(attn.c_attn.b, x, attn.c_attn.w).view(b, n, 3, heads, dh)
        q = qkv[:, :, 0].transpose(1, 2)  # (B, H, N, Dh)
        kv = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)  # (2, B, H, N, Dh)
        buf = layer.kv
        if kind == AttnKind.DENSE:
            buf.index_copy_(3, geo.p, kv)
            a = self._attend(q, layer.k, layer.v, geo.mask_dense, scale)
        elif kind == AttnKind.ROW:
            buf.index_copy_(3, geo.i, kv)
            a = self._attend(q, layer.k, layer.v, geo.mask_row, scale)
        elif kind == AttnKind.COLUMN:
            flat = buf.view(2, b, heads, self.bc * self.nb, dh)
            flat.index_copy_(3, geo.col_write, kv)
            cols = buf.index_select(3, geo.i)  # (2, B, H, N, nb, Dh): each query's column
            if n == 1:  # one query: a plain (B, H, 1, Dh) x (B, H, nb, Dh) attention
                a = self._attend(q, cols[0, :, :, 0], cols[1, :, :, 0], geo.mask_col[0], scale)
            else:
                a = self._attend(q.unsqueeze(3), cols[0], cols[1], geo.mask_col, scale).squeeze(3)
        elif kind == AttnKind.PREV_ROW:
            flat = buf.view(2, b, heads, 2 * self.bc, dh)
            flat.index_copy_(3, geo.prev_write, kv)
            prev = buf.index_select(3, geo.prev_read).squeeze(3)  # (2, B, H, bc, Dh)
            # the first block attends to nothing (the reference's zero block): exactly 0
            a = self._attend(q, prev[0], prev[1], None, scale).masked_fill(~geo.prev_gate, 0.0)
        elif kind == AttnKind.PRIME:  # past the prime length: the slot's old value written back
            old = buf.index_select(3, geo.prime_write)
            buf.index_copy_(3, geo.prime_write, torch.where(geo.prime_gate, kv, old))
            a = self._attend(q, layer.k, layer.v, geo.mask_prime, scale)
        else:  # SUMMARY kinds: only a block's tail is written
            old = buf.index_select(3, geo.summary_write)
            buf.index_copy_(3, geo.summary_write, torch.where(geo.summary_gate, kv, old))
            a = self._attend(q, layer.k, layer.v, geo.mask_summary, scale)
        return a.transpose(1, 2).reshape(b * n, heads * dh)

    # -- compilation ---------------------------------------------------------------------------

    def compile(self, **kwargs) -> None:
        """Run :meth:`step`'s body through ``torch.compile`` (``fullgraph=True,
        dynamic=False`` by default): one graph for every position."""
        opts = {"fullgraph": True, "dynamic": False, **kwargs}
        self.static = True
        self._step_fn = torch.compile(self._step, **opts)


_ENGINES: weakref.WeakKeyDictionary[Prior, dict[int, DecodingEngine]] = weakref.WeakKeyDictionary()


def engine_for(prior: Prior, batch_size: int) -> DecodingEngine:
    """The prior's engine for ``batch_size`` sequences, made once and kept while the prior
    lives (its buffers, and on CUDA its captured graph, serve every window of a song); made
    again when the prior's dtype or device changed."""
    engines = _ENGINES.setdefault(prior, {})
    engine = engines.get(batch_size)
    w = prior.prior.x_emb.weight
    if (
        engine is None
        or engine.dtype != w.dtype
        or engine.device != w.device
        or engine.emb is not w
    ):
        engine = engines[batch_size] = DecodingEngine(prior, batch_size)
    return engine


__all__ = ["NOISE_BLOCK", "START", "DecodingEngine", "engine_for"]
