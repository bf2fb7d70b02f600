"""A static decoding engine for a prior: autoregressive steps at the speed of the hardware.

The cost of sampling Jukebox is the autoregressive step, repeated ~414,000 times per minute of
44.1 kHz audio. :class:`DecodingEngine` makes one step a fixed sequence of kernels, so that it
can be captured once as a CUDA graph and replayed per token (launch overhead paid once), or
compiled once (``torch.compile(fullgraph=True, dynamic=False)``):

* the KV cache is preallocated per (batch, window), in layouts that keep per layer only what
  its attention kind reads (below);
* the positions are a device tensor (``pos``, one per row), advanced in place; cache writes
  scatter at slots computed from them, and every layer attends over its fixed buffer (or the
  slots it gathers) under a mask computed from them, once per call and shared by the layers of
  a kind — no tensor changes shape from one token to the next and nothing syncs with the host;
* the inputs of a step (the previous token, the start embedding, the per-position embeddings
  and conditioning of the window) and its outputs (logits, the drawn code) live in
  preallocated buffers.

:meth:`DecodingEngine.score` is the multi-query step: N new positions per row against the cache
in one call (priming, and the verification pass of speculative sampling); the rows of a batch
may stand at different positions and :meth:`DecodingEngine.rewind` moves each row's pointer back
over rejected drafts (stale keys beyond a row's position are masked, never read).

Cache layouts (keys and values in one buffer ``(2, B, H, slots, Dh)``; ``bc = block_ctx``,
``nb = blocks``; one spare block of slots lets a call run past the window's end, its results
discarded)::

    DENSE      every position (n_ctx + spare)
    ROW        a ring of 2 blocks: block n in slots (n mod 2)·bc …
    COLUMN     (bc, nb + 1): position n·bc + i in slot i·(nb + 1) + n, a column contiguous
    PREV_ROW   a ring of 3 blocks (a call spanning blocks n, n+1 reads n−1 and n while writing
               n and n+1)
    PRIME      the first prime-length keys;  SUMMARY kinds: the block tails;  CROSS: the
               encoder's keys and values, projected once per window

A call spans at most two blocks (``N <= block_ctx``), so the rings always hold what it reads and
a rewind within the last call is exact. The prime and summary kinds (single-style lyric tops,
attn_order 3-5) need every row at the same position.

Precision: the weights may be fp32, bf16 or fp16 (the prior is cast before the engine is made);
layer norms, the softmax and the logits are computed in fp32 whatever the weights.

Eager on a CPU (``static=False``, the default off CUDA) a step or a multi-query call at one
shared position selects views at the host position instead of gathering (the same kernels
without the index arithmetic; a call's queries are split per block only inside the blocked
attentions); the static path (CUDA graphs, compilation, rows at different positions) indexes
everything by the device positions: previous-row attention reads its whole ring under a mask
(no per-query copy of the previous block), column attention copies each query's contiguous
column.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from teacher.prior.attention import AttnKind, FactoredAttention
from teacher.prior.model import Conditioning, Prior
from teacher.prior.transformer import ResAttnBlock, quick_gelu_mlp

log = logging.getLogger(__name__)

#: the input token of position 0 (the start embedding)
START = -1
#: steps of Gumbel noise drawn at once (the draw order is part of the reproducibility contract)
NOISE_BLOCK = 64
#: queries per call of a prior without blocked layers (its spare positions)
DENSE_SPARE = 64
#: causal masks of calls of at most this many queries (and < max_queries keys before) are kept
MASK_CACHE_QUERIES = 16
_BLOCKED = frozenset(
    {AttnKind.ROW, AttnKind.COLUMN, AttnKind.PREV_ROW, AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD}
)
_SUMMARY = frozenset({AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD})
#: kinds whose cache needs every row at the same position
_SHARED = frozenset({AttnKind.PRIME, AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD})


@dataclass
class _Geometry:
    """What the layers derive from the positions ``p`` (``LongTensor[B, N]``) of one call."""

    p: Tensor
    n: Tensor | None = None  # block of each position
    i: Tensor | None = None  # offset in the block
    dense_mask: Tensor | None = None  # (B, 1, N, S)
    row_write: Tensor | None = None  # (B, N) ring slot
    row_mask: Tensor | None = None  # (B, 1, N, 2·bc)
    col_write: Tensor | None = None  # (B, N)
    col_i: Tensor | None = None  # (B, N) the query's column (its index in the block)
    col_mask: Tensor | None = None  # (B, 1, N, 1, nb + 1)
    prev_write: Tensor | None = None  # (B, N)
    prev_mask: Tensor | None = None  # (B, 1, N, 3·bc) the previous block's slots of the ring
    prev_gate: Tensor | None = None  # (B, 1, N, 1) False in the first block
    shared_p: Tensor | None = None  # (N,) row 0's positions (prime and summary kinds)
    prime_write: Tensor | None = None
    prime_gate: Tensor | None = None
    prime_mask: Tensor | None = None
    summary_write: Tensor | None = None
    summary_gate: Tensor | None = None
    summary_mask: Tensor | None = None


@dataclass
class _Span:
    """An eager multi-query call at one host position ``p0`` (:meth:`DecodingEngine._span`):
    ``pieces`` = ``(j0, j1, block, i0, causal mask or None)`` per block its N queries touch."""

    p0: int
    n: int
    dense_mask: Tensor | None = None
    pieces: list = field(default_factory=list)


class _Layer:
    """One transformer block as the engine runs it: its cache buffer ``kv`` ``(2, B, H, slots,
    Dh)`` with the views ``k``, ``v``, and its tensors and constants as plain attributes, read
    once (a module's submodules and parameters cost a ``Module.__getattr__`` per access, ~16 per
    layer and step)."""

    __slots__ = (
        "attn",
        "kv",
        "k",
        "v",
        "kind",
        "heads",
        "dh",
        "scale",
        "qkv_w",
        "qkv_b",
        "proj_w",
        "proj_b",
        "mlp",
        "ln_0",
        "ln_1",
        "res_scale",
    )

    def __init__(self, block: ResAttnBlock, kv: Tensor) -> None:
        attn, mlp = block.attn, block.mlp
        self.attn, self.kv, self.k, self.v = attn, kv, kv[0], kv[1]
        self.kind, self.heads, self.dh, self.scale = (
            attn.kind,
            attn.heads,
            attn.head_dim,
            attn.scale,
        )
        self.qkv_w, self.qkv_b = attn.c_attn.w, attn.c_attn.b
        self.proj_w, self.proj_b = attn.c_proj.w, attn.c_proj.b
        self.mlp = (mlp.c_fc.w, mlp.c_fc.b, mlp.c_proj.w, mlp.c_proj.b)
        self.ln_0, self.ln_1 = (
            ((ln.weight.shape[0],), ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)
            for ln in (block.ln_0, block.ln_1)
        )
        self.res_scale = block.res_scale


class DecodingEngine:
    """Static-shape decoding of one prior for ``batch_size`` sequences.

    >>> engine = DecodingEngine(prior.eval(), batch_size=1)          # doctest: +SKIP
    >>> engine.begin(prior.condition(labels, upper), forced)         # doctest: +SKIP
    >>> logits = engine.step()   # (B, l_bins) fp32 of the next position; then set_token(...)

    Args:
        prior: an eval-mode prior, already in the dtype and on the device to run in.
        batch_size: B, fixed for the engine's life.
        cuda_graph: capture :meth:`sample_step` as a CUDA graph (default: when on CUDA).
        static: index everything by the device positions (default: with a CUDA graph); the
            eager alternative selects views at the host position (faster on a CPU).
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
        tcfg = tr.cfg
        self.cfg, self.core, self.transformer = cfg, core, tr  # not the prior: engine_for's key
        self.batch_size = b = int(batch_size)
        weight = core.x_emb.weight
        self.device, self.dtype = weight.device, weight.dtype
        dev, dt = self.device, self.dtype
        self.kinds = kinds = set(tcfg.kinds)
        self.n_ctx = tcfg.n_ctx  # transformer positions (lyrics + music for single style)
        self.n_lyrics = cfg.n_tokens if cfg.single_sequence else 0
        self.shift = cfg.vocab_offset
        self.l_bins = cfg.l_bins
        self.width = tcfg.width
        self.bc = tcfg.block_ctx or 0
        self.nb = tcfg.blocks or 0
        self.prime = tcfg.prime_keys or 0
        blocked = bool(kinds & _BLOCKED)
        self.max_queries = self.bc if blocked else DENSE_SPARE
        self.slots = self.n_ctx + self.max_queries  # positions the buffers can address
        self.spread = 0
        self.layers = []
        for block in tr._attn_mods:
            attn = block.attn
            if attn.kind in _SUMMARY:
                self.spread = attn.spread
                self._slot_pos = attn.summary_positions(self.nb * self.spread, dev)
            kv = torch.zeros(
                2, b, attn.heads, self._layout(attn), attn.head_dim, dtype=dt, device=dev
            )
            self.layers.append(_Layer(block, kv))
        self.head_t = core.x_out.weight[self.shift :].detach().float().t().contiguous()
        self.emb = weight
        # static inputs and outputs
        self.pos = torch.zeros(b, dtype=torch.long, device=dev)  # each row's next position
        self.prev = torch.zeros(b, dtype=torch.long, device=dev)  # its input token (joint vocab)
        self.start = torch.zeros(b, self.width, dtype=dt, device=dev)
        pos_emb = torch.zeros(self.slots, 1, self.width, dtype=dt, device=dev)
        pos_emb[: self.n_ctx, 0] = core.pos_emb().detach().to(dt)
        self._pos_emb = pos_emb
        self.add = torch.zeros(self.slots, b, self.width, dtype=dt, device=dev)
        # the conditioning is added again after the stack unless the decoder is merged
        self.out_add = torch.zeros_like(self.add) if core.add_cond_after_transformer else None
        self.logits = torch.zeros(b, self.l_bins, dtype=torch.float32, device=dev)
        self.token = torch.zeros(b, dtype=torch.long, device=dev)  # the last drawn code
        # Gumbel noise of the next sample steps, row noise_row for the next one (set_noise)
        self.noise = torch.zeros(NOISE_BLOCK, b, self.l_bins, dtype=torch.float32, device=dev)
        self.noise_row = torch.zeros((), dtype=torch.long, device=dev)
        self._noise_at = 0  # the same, on the host (eager)
        self.temperature = torch.ones((), dtype=torch.float32, device=dev)
        self._rows = torch.arange(b, device=dev)
        self.shared: int | None = 0  # the position every row stands at (None: rows differ)
        self.cuda_graph = (dev.type == "cuda") if cuda_graph is None else bool(cuda_graph)
        self.static = self.cuda_graph if static is None else bool(static) or self.cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._step_fn: Callable[[], Tensor] = self._step
        self.calls = 0  # multi-query calls (priming and verification)
        self._masks: dict[tuple[int, int], Tensor] = {}  # causal masks by (keys before, queries)
        #: prime and summary layers: every row must stand at the same position
        self.rows_together = bool(kinds & _SHARED)

    def _layout(self, attn: FactoredAttention) -> int:
        """Key slots of a layer's buffer (module docs)."""
        kind, bc = attn.kind, self.bc
        return {
            AttnKind.DENSE: self.slots,
            AttnKind.ROW: 2 * bc,
            AttnKind.COLUMN: bc * (self.nb + 1),
            AttnKind.PREV_ROW: 3 * bc,
            AttnKind.PRIME: self.prime,
            AttnKind.CROSS: attn.encoder_dims or 0,
        }.get(kind, self.nb * attn.spread)  # the summary kinds

    # -- per window -----------------------------------------------------------------------------

    def begin(
        self, cond: Conditioning, forced: Tensor | None = None, chunk_size: int | None = None
    ) -> None:
        """Start a window: copy its conditioning into the static buffers, put every row at
        position 0 and prime the ``forced`` tokens (``LongTensor[B, F]`` in the joint
        vocabulary: the lyric window, then prefix codes + ``vocab_offset``) with multi-query
        calls of at most ``chunk_size`` positions; every row then stands at position ``F``."""
        b, core = self.batch_size, self.core
        cond = cond.expand(b)
        self.add.copy_(self._pos_emb.expand(-1, b, -1))
        if self.out_add is not None:
            self.out_add.zero_()
        if cond.x_cond is not None:
            xc = cond.x_cond[:, : self.n_ctx].to(self.dtype).transpose(0, 1)  # (S_c, B, D)
            self.add[: xc.shape[0]] += xc
            if self.out_add is not None:
                self.out_add[: xc.shape[0]] = xc
        self.start.copy_(core.start_embedding(cond.start, b)[:, 0].to(self.dtype))
        for layer in self.layers:
            if layer.kind == AttnKind.CROSS:
                k, v = layer.attn.encoder_keys_values(cond.encoder_kv, self.start[:, None])
                layer.k.copy_(k)
                layer.v.copy_(v)
        self.rewind(0)
        if forced is not None and forced.shape[1]:
            inputs = torch.cat([forced.new_full((b, 1), START), forced[:, :-1]], dim=1)
            self.score(inputs, chunk_size=chunk_size, logits=False)
            self.prev.copy_(forced[:, -1])

    # -- one position (every row at the same one) ------------------------------------------------

    def step(self) -> Tensor:
        """Logits ``Tensor[B, l_bins]`` (fp32, the static :attr:`logits` buffer) of the next
        position, whose input token is :attr:`prev`; every row advances by one."""
        out = self._step_fn()
        if self.shared is not None:
            self.shared += 1
        return out

    def _step(self) -> Tensor:
        b = self.batch_size
        if self.static or self.shared is None:
            p = self.pos[:, None]
            first = (self.pos == 0)[:, None]
            x = torch.where(first, self.start, F.embedding(self.prev.clamp(min=0), self.emb))
            x = x + self.add[self.pos, self._rows]
            x = self._blocks(x, self._geometry(p), b, 1)
            if self.out_add is not None:
                x = x + self.out_add[self.pos, self._rows]
        else:
            p = self.shared
            x = self.start if p == 0 else torch.embedding(self.emb, self.prev)
            x = self._blocks(x + self.add[p], p, b, 1)
            if self.out_add is not None:
                x = x + self.out_add[p]
        torch.mm(x.float(), self.head_t, out=self.logits)
        self.pos.add_(1)
        return self.logits

    def sample_step(self) -> Tensor:
        """One drawn code per row, ``LongTensor[B]`` (the static :attr:`token` buffer): the
        step's logits plus :attr:`temperature` times row :attr:`noise_row` of the Gumbel
        noise block (:meth:`set_noise`), argmax (a draw from the softmax at that temperature);
        the code becomes the next position's input. On CUDA it replays as one graph."""
        if self.cuda_graph:
            if self._graph is None:
                self._capture()
            self._graph.replay()
        else:
            self._sample_body()
        if self.shared is not None:
            self.shared += 1
        return self.token

    def _sample_body(self) -> None:
        logits = self._step_fn()
        if self.static:  # the row index lives on the device (a graph replays it)
            g = self.noise.index_select(0, self.noise_row.view(1))[0]
            self.noise_row.add_(1)
        else:
            g = self.noise[self._noise_at]
            self._noise_at += 1
        torch.argmax(torch.addcmul(logits, g, self.temperature), dim=-1, out=self.token)
        torch.add(self.token, self.shift, out=self.prev)

    def set_noise(self, noise: Tensor, temperature: float) -> None:
        """Use ``noise`` (``Tensor[R, B, l_bins]`` standard Gumbel, ``R <= NOISE_BLOCK``) for
        the next ``R`` sample steps at ``temperature`` (``argmax(l / τ + g) = argmax(l +
        τ·g)``)."""
        self.noise[: noise.shape[0]].copy_(noise)
        self.noise_row.zero_()
        self._noise_at = 0
        self.temperature.fill_(float(temperature))

    def set_token(self, token: Tensor) -> None:
        """Make ``token`` (``LongTensor[B]`` codes, music vocabulary) the next position's input."""
        self.prev.copy_(token + self.shift)

    def _capture(self) -> None:
        """Capture :meth:`_sample_body` as a CUDA graph (after warm-up runs on a side stream
        that leave the state as it was)."""
        kvs = [layer.kv for layer in self.layers]
        state = [self.pos, self.prev, self.token, self.noise_row, *kvs]
        saved = [t.clone() for t in state]
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._sample_body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._sample_body()
        for t, s in zip(state, saved):
            t.copy_(s)
        self._graph = graph

    # -- many positions ---------------------------------------------------------------------------

    def score(
        self, inputs: Tensor, chunk_size: int | None = None, logits: bool = True
    ) -> Tensor | None:
        """The multi-query step: each row's next N positions (from :attr:`pos`), whose input
        tokens are ``inputs`` (``LongTensor[B, N]``, joint vocabulary; :data:`START` for position
        0), in one call per at most ``block_ctx`` (and ``chunk_size``) positions -> their logits
        ``Tensor[B, N, l_bins]`` fp32 (None with ``logits=False``). The cache holds their keys
        and values afterwards and every row advances by N; :attr:`prev` is left alone. Rows may
        stand at different positions unless the prior has prime or summary layers."""
        b, n = inputs.shape
        if b != self.batch_size:
            raise ValueError(f"batch {b} != the engine's {self.batch_size}")
        if self.shared is None and self.kinds & _SHARED:
            raise ValueError("prime and summary layers need every row at the same position")
        if self.shared is not None and self.shared + n > self.n_ctx:
            raise ValueError(
                f"positions {self.shared}..{self.shared + n - 1} exceed n_ctx {self.n_ctx}"
            )
        outs = []
        lo = 0
        while lo < n:
            hi = min(n, lo + self._segment(lo, chunk_size))
            m = hi - lo
            if self._lean():  # one host position, eager: views instead of gathers
                p0 = self.shared
                toks = inputs[:, lo:hi]
                if p0 == 0:
                    x = torch.where(
                        toks[..., None] == START,
                        self.start[:, None],
                        F.embedding(toks.clamp(min=0), self.emb),
                    )
                else:
                    x = F.embedding(toks, self.emb)
                x = x + self.add[p0 : p0 + m].transpose(0, 1)
                x = self._blocks(x.reshape(b * m, self.width), self._span(p0, m), b, m)
                x = x.view(b, m, self.width)
                if logits and self.out_add is not None:
                    x = x + self.out_add[p0 : p0 + m].transpose(0, 1)
            else:
                p = self.pos[:, None] + torch.arange(m, device=self.device)
                x = torch.where(
                    inputs[:, lo:hi, None] == START,
                    self.start[:, None],
                    F.embedding(inputs[:, lo:hi].clamp(min=0), self.emb),
                )
                x = x + self.add[p, self._rows[:, None]]
                x = self._blocks(x.reshape(b * m, self.width), self._geometry(p), b, m)
                x = x.view(b, m, self.width)
                if logits and self.out_add is not None:
                    x = x + self.out_add[p, self._rows[:, None]]
            if logits:
                outs.append(torch.matmul(x.float(), self.head_t))
            self.pos.add_(hi - lo)
            if self.shared is not None:
                self.shared += hi - lo
            self.calls += 1
            lo = hi
        if not logits:
            return None
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _segment(self, lo: int, chunk_size: int | None) -> int:
        """Positions of the next call: at most ``max_queries`` and ``chunk_size``; with the
        rows together, within one side of the prime length and of a block's summary tail (a
        call's writes to those kinds then go to distinct slots, or none)."""
        n = min(self.max_queries, chunk_size or self.max_queries)
        if self.shared is not None:
            p = self.shared
            if self.prime and p < self.prime:
                n = min(n, self.prime - p)
            if self.spread:
                tail = p // self.bc * self.bc + self.bc - self.spread
                n = min(n, tail - p) if p < tail else min(n, (p // self.bc + 1) * self.bc - p)
        return max(1, n)

    def _lean(self) -> bool:
        """Whether a multi-query call takes the eager view path (:class:`_Span`): every row at
        one host position, not static, and no prime / summary layers."""
        return not self.static and self.shared is not None and not self.kinds & _SHARED

    def _span(self, p0: int, n: int) -> _Span:
        """The pieces and masks of an eager call of ``n`` queries from host position ``p0``."""
        span = _Span(p0=p0, n=n)
        if AttnKind.DENSE in self.kinds and n > 1:
            span.dense_mask = self._causal(p0, n)
        if self.bc:
            j = 0
            while j < n:
                blk, i0 = divmod(p0 + j, self.bc)
                length = min(n - j, self.bc - i0)
                mask = self._causal(i0, length) if length > 1 else None
                span.pieces.append((j, j + length, blk, i0, mask))
                j += length
        return span

    def _causal(self, k0: int, n: int) -> Tensor:
        """The additive mask ``(n, k0 + n)`` of n queries after ``k0`` keys: query j sees keys
        ``<= k0 + j`` (0 there, −inf elsewhere; additive in the weights' dtype, so attention
        does not convert a boolean mask in every layer)."""
        mask = self._masks.get((k0, n))
        if mask is None:
            ar = torch.arange(k0 + n, device=self.device)
            seen = ar <= (k0 + torch.arange(n, device=self.device))[:, None]
            mask = torch.zeros(n, k0 + n, dtype=self.dtype, device=self.device)
            mask.masked_fill_(~seen, float("-inf"))
            if n <= MASK_CACHE_QUERIES and k0 < self.max_queries:
                # kept: verification rounds inside a block meet the same few shapes
                self._masks[k0, n] = mask
        return mask

    # -- positions -------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The next position of every row (an error when the rows stand apart)."""
        if self.shared is None:
            raise ValueError("the rows stand at different positions: read .pos")
        return self.shared

    def can_rewind(self, position: int, current: int | None = None) -> bool:
        """Whether a row whose next position is ``current`` (default :attr:`position`) can go
        back to ``position`` exactly: the ring layouts hold the last two blocks."""
        cur = self.position if current is None else current
        if not 0 <= position <= cur:
            return False
        if not self.bc or position == cur:
            return True
        return position // self.bc >= (cur - 1) // self.bc - 1

    def rewind(self, position: int | Tensor, token: Tensor | None = None) -> None:
        """Put the rows at ``position`` (an int for all, or ``LongTensor[B]`` one per row):
        positions from there on are forgotten (their keys are masked until written again; a
        pointer moves, nothing is copied). ``token`` (music codes ``LongTensor[B]``) becomes the
        input of that position. Only targets within the last call are exact (:meth:`can_rewind`)."""
        if isinstance(position, int):
            self.pos.fill_(position)
            self.shared = position
        else:
            self.pos.copy_(position)
            self.shared = None
        if token is not None:
            self.set_token(token)

    # -- the layers --------------------------------------------------------------------------------

    def _geometry(self, p: Tensor) -> _Geometry:
        """Positions ``p`` (``LongTensor[B, N]``) -> what the layers need, once per call."""
        kinds, bc, geo = self.kinds, self.bc, _Geometry(p=p)
        dev = p.device
        if AttnKind.DENSE in kinds:
            ar = torch.arange(self.slots, device=dev)
            geo.dense_mask = (ar <= p[..., None]).unsqueeze(1)
        if kinds & _BLOCKED:
            geo.n, geo.i = torch.div(p, bc, rounding_mode="floor"), p % bc
            n, i = geo.n, geo.i
            if AttnKind.ROW in kinds:
                geo.row_write = (n % 2) * bc + i
                ar = torch.arange(2 * bc, device=dev)
                same = (ar // bc) == (n % 2)[..., None]
                geo.row_mask = (same & ((ar % bc) <= i[..., None])).unsqueeze(1)
            if AttnKind.COLUMN in kinds:
                nbs = self.nb + 1
                geo.col_write = i * nbs + n
                ar = torch.arange(nbs, device=dev)
                geo.col_i = i
                geo.col_mask = (ar <= n[..., None]).unsqueeze(1).unsqueeze(3)
            if AttnKind.PREV_ROW in kinds:
                geo.prev_write = (n % 3) * bc + i
                ring = torch.arange(3 * bc, device=dev) // bc
                geo.prev_mask = (ring == ((n - 1) % 3)[..., None]).unsqueeze(1)
                geo.prev_gate = (n > 0).unsqueeze(1).unsqueeze(-1)
        if kinds & _SHARED:
            sp = geo.shared_p = p[0]
            if AttnKind.PRIME in kinds:
                geo.prime_write = sp.clamp(max=self.prime - 1)
                geo.prime_gate = (sp < self.prime).view(1, 1, 1, -1, 1)
                geo.prime_mask = torch.arange(self.prime, device=dev) <= sp[:, None]
            if kinds & _SUMMARY:
                s = self.spread
                n, i = torch.div(sp, bc, rounding_mode="floor"), sp % bc
                gate = (i >= bc - s) & (n + 1 < self.nb)
                geo.summary_write = torch.where(gate, (n + 1) * s + i - (bc - s), 0)
                geo.summary_gate = gate.view(1, 1, 1, -1, 1)
                geo.summary_mask = self._slot_pos <= sp[:, None]
        return geo

    def _blocks(self, x: Tensor, geo: _Geometry | _Span | int, b: int, n: int) -> Tensor:
        """The transformer on ``x`` ``Tensor[B·N, D]`` at the positions of ``geo`` (or, one
        eager position shared by the rows, at the host position ``geo``; or N eager positions
        from a shared host position, a :class:`_Span`)."""
        norm = self._norm
        for layer in self.layers:
            h = norm(x, layer.ln_0)
            if isinstance(geo, int):
                a = self._attention_at(layer, h, geo, b)
            elif isinstance(geo, _Span):
                a = self._attention_span(layer, h, geo, b)
            else:
                a = self._attention(layer, h, geo, b, n)
            a = torch.addmm(layer.proj_b, a, layer.proj_w)
            xa = x + a
            m = quick_gelu_mlp(norm(xa, layer.ln_1), *layer.mlp)
            x = xa + m if layer.res_scale == 1.0 else x + layer.res_scale * (a + m)
        return x

    @staticmethod
    def _norm(x: Tensor, ln: tuple[tuple[int], Tensor, Tensor, float]) -> Tensor:
        """Layer norm in fp32 (the weights' dtype in and out); ``ln`` = (shape, fp32 weight,
        fp32 bias, eps)."""
        if x.dtype == torch.float32:
            return torch.layer_norm(x, *ln)
        return torch.layer_norm(x.float(), *ln).to(x.dtype)

    @staticmethod
    def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        """Softmax attention ``(..., Nq, Dh) x (..., Nk, Dh)``; ``mask`` boolean (True =
        attend) or additive (0 / −inf). The softmax is fp32: SDPA for fp32 weights, the explicit
        product for half precision."""
        if q.dtype == torch.float32:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        w = torch.matmul(q, k.transpose(-1, -2)).float() * scale
        if mask is not None and mask.dtype == torch.bool:
            w = w.masked_fill(~mask, float("-inf"))
        elif mask is not None:
            w = w + mask.float()
        return torch.matmul(w.softmax(dim=-1).to(v.dtype), v)

    @staticmethod
    def _write(kv: Tensor, slots: Tensor, new: Tensor) -> None:
        """``kv[:, b, :, slots[b, j]] = new[:, b, :, j]``: ``kv (2, B, H, S, Dh)``,
        ``slots (B, N)``, ``new (2, B, H, N, Dh)``."""
        idx = slots[None, :, None, :, None].expand(2, -1, kv.shape[2], -1, kv.shape[-1])
        kv.scatter_(3, idx, new)

    def _read(self, kv: Tensor, cols: Tensor, bc: int, nbs: int) -> Tensor:
        """``(2, B, H, N, nbs, Dh)``: for every query ``(b, j)`` the column ``cols[b, j]`` of a
        ``(bc, nbs)`` layout (its ``nbs`` slots are contiguous: one copy per query)."""
        two, b, h, _, dh = kv.shape
        grid = kv.view(two, b, h, bc, nbs, dh)
        return grid[:, self._rows[:, None], :, cols].permute(2, 0, 3, 1, 4, 5)

    def _project(self, layer: _Layer, x: Tensor, b: int, n: int) -> tuple[Tensor, Tensor | None]:
        """``x`` ``Tensor[B·N, D]`` -> the queries ``(B, H, N, Dh)`` and the new keys and
        values ``(2, B, H, N, Dh)``; for cross-attention (keys and values fixed per window) the
        attended output ``Tensor[B·N, S]`` and None."""
        heads, dh = layer.heads, layer.dh
        if layer.kind == AttnKind.CROSS:
            q = torch.addmm(layer.qkv_b, x, layer.qkv_w).view(b, n, heads, dh).transpose(1, 2)
            a = self._attend(q, layer.k, layer.v, None, layer.scale)
            return a.transpose(1, 2).reshape(b * n, heads * dh), None
        qkv = torch.addmm(layer.qkv_b, x, layer.qkv_w).view(b, n, 3, heads, dh)
        return qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1:].permute(2, 0, 3, 1, 4)

    def _attention(self, layer: _Layer, x: Tensor, geo: _Geometry, b: int, n: int) -> Tensor:
        """One layer's attention of ``x`` ``Tensor[B·N, D]`` -> ``Tensor[B·N, S]``: write the
        new keys/values at their slots, attend over the buffer (or gathered slots) masked."""
        heads, dh, kind, scale, kv = layer.heads, layer.dh, layer.kind, layer.scale, layer.kv
        q, new = self._project(layer, x, b, n)
        if new is None:  # cross-attention: attended already
            return q
        if kind == AttnKind.DENSE:
            self._write(kv, geo.p, new)
            a = self._attend(q, kv[0], kv[1], geo.dense_mask, scale)
        elif kind == AttnKind.ROW:
            self._write(kv, geo.row_write, new)
            a = self._attend(q, kv[0], kv[1], geo.row_mask, scale)
        elif kind == AttnKind.COLUMN:
            self._write(kv, geo.col_write, new)
            cols = self._read(kv, geo.col_i, self.bc, self.nb + 1)  # (2, B, H, N, nb + 1, Dh)
            a = self._attend(q.unsqueeze(3), cols[0], cols[1], geo.col_mask, scale).squeeze(3)
        elif kind == AttnKind.PREV_ROW:
            self._write(kv, geo.prev_write, new)
            # the whole ring, masked to the previous block: no gather of its keys per query
            a = self._attend(q, kv[0], kv[1], geo.prev_mask, scale)
            # the first block attends to nothing (the reference's zero block): exactly 0
            a = a.masked_fill(~geo.prev_gate, 0.0)
        else:  # prime and summary kinds, every row at the same positions
            if kind == AttnKind.PRIME:
                slots, gate, mask = geo.prime_write, geo.prime_gate, geo.prime_mask
            else:
                slots, gate, mask = geo.summary_write, geo.summary_gate, geo.summary_mask
            old = kv.index_select(3, slots)  # slots not written keep their value
            kv.index_copy_(3, slots, torch.where(gate, new, old))
            a = self._attend(q, kv[0], kv[1], mask, scale)
        return a.transpose(1, 2).reshape(b * n, heads * dh)

    def _attention_at(self, layer: _Layer, x: Tensor, p: int, b: int) -> Tensor:
        """The eager one-position attention (every row at host position ``p``): the same
        layouts, written and read as views."""
        heads, dh, kind, scale, bc = layer.heads, layer.dh, layer.kind, layer.scale, self.bc
        kv, k, v = layer.kv, layer.k, layer.v
        if kind == AttnKind.CROSS:
            q = torch.addmm(layer.qkv_b, x, layer.qkv_w).view(b, heads, 1, dh)
            return self._attend(q, k, v, None, scale).view(b, heads * dh)
        # (B, 3, H, 1, Dh): q = [:, 0] is (B, H, 1, Dh), the new keys/values one slot each
        qkv = torch.addmm(layer.qkv_b, x, layer.qkv_w).view(b, 3, heads, 1, dh)
        new = qkv[:, 1:].transpose(0, 1)  # (2, B, H, 1, Dh)
        n, i = divmod(p, bc) if bc else (0, 0)
        if kind == AttnKind.DENSE:
            kv.narrow(3, p, 1).copy_(new)
            s0, length = 0, p + 1
        elif kind == AttnKind.ROW:
            s0 = (n % 2) * bc
            kv.narrow(3, s0 + i, 1).copy_(new)
            length = i + 1
        elif kind == AttnKind.COLUMN:
            nbs = self.nb + 1
            s0, length = i * nbs, n + 1
            kv.narrow(3, s0 + n, 1).copy_(new)
        elif kind == AttnKind.PREV_ROW:
            kv.narrow(3, (n % 3) * bc + i, 1).copy_(new)
            if n == 0:  # the reference attends to a zero block: exactly 0
                return x.new_zeros(b, heads * dh)
            s0, length = ((n - 1) % 3) * bc, bc
        elif kind == AttnKind.PRIME:
            if p < self.prime:
                kv.narrow(3, p, 1).copy_(new)
            s0, length = 0, min(p + 1, self.prime)
        else:  # summary kinds: slot n+1 takes the tail of block n
            s, t0 = self.spread, bc - self.spread
            if i >= t0 and n + 1 < self.nb:
                kv.narrow(3, (n + 1) * s + i - t0, 1).copy_(new)
            s0, length = 0, min((n + 1) * s + max(0, i - t0 + 1), self.nb * s)
        keys, values = k.narrow(2, s0, length), v.narrow(2, s0, length)
        if self.dtype == torch.float32:  # the one call of most layers: no dispatch in Python
            a = F.scaled_dot_product_attention(qkv[:, 0], keys, values, scale=scale)
        else:
            a = self._attend(qkv[:, 0], keys, values, None, scale)
        return a.view(b, heads * dh)

    def _attention_span(self, layer: _Layer, x: Tensor, span: _Span, b: int) -> Tensor:
        """The eager multi-query attention (every row at host position ``span.p0``, N queries):
        the same layouts written and read as views, one piece per block the queries touch."""
        heads, dh, kind, scale, bc = layer.heads, layer.dh, layer.kind, layer.scale, self.bc
        kv, n, p0 = layer.kv, span.n, span.p0
        q, new = self._project(layer, x, b, n)
        if new is None:  # cross-attention: attended already
            return q
        if kind == AttnKind.DENSE:
            kv.narrow(3, p0, n).copy_(new)
            keys = kv.narrow(3, 0, p0 + n)
            a = self._attend(q, keys[0], keys[1], span.dense_mask, scale)
            return a.transpose(1, 2).reshape(b * n, heads * dh)
        outs = []
        whole = len(span.pieces) == 1  # one block: the queries as they are, no slicing
        for j0, j1, blk, i0, mask in span.pieces:
            m = j1 - j0
            qp, newp = (q, new) if whole else (q[:, :, j0:j1], new[:, :, :, j0:j1])
            if kind == AttnKind.ROW:
                s0 = (blk % 2) * bc
                kv.narrow(3, s0 + i0, m).copy_(newp)
                keys, values = layer.k.narrow(2, s0, i0 + m), layer.v.narrow(2, s0, i0 + m)
                outs.append(self._attend(qp, keys, values, mask, scale))
            elif kind == AttnKind.COLUMN:
                nbs = self.nb + 1
                start = i0 * nbs + blk
                kv[:, :, :, start : start + (m - 1) * nbs + 1 : nbs].copy_(newp)
                cols = kv.narrow(3, i0 * nbs, m * nbs).unflatten(3, (m, nbs))[..., : blk + 1, :]
                # each query its own column: (B, H·m) "heads" of one query each
                k = cols[0].reshape(b, heads * m, blk + 1, dh)
                v = cols[1].reshape(b, heads * m, blk + 1, dh)
                a = self._attend(qp.reshape(b, heads * m, 1, dh), k, v, None, scale)
                outs.append(a.view(b, heads, m, dh))
            else:  # PREV_ROW
                kv.narrow(3, (blk % 3) * bc + i0, m).copy_(newp)
                if blk == 0:  # the reference attends to a zero block: exactly 0
                    outs.append(qp.new_zeros(qp.shape))
                else:
                    s0 = ((blk - 1) % 3) * bc
                    keys, values = layer.k.narrow(2, s0, bc), layer.v.narrow(2, s0, bc)
                    outs.append(self._attend(qp, keys, values, None, scale))
        a = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return a.transpose(1, 2).reshape(b * n, heads * dh)

    # -- compilation ---------------------------------------------------------------------------

    def compile(self, **kwargs) -> None:
        """Run :meth:`step`'s body through ``torch.compile`` (``fullgraph=True,
        dynamic=False`` by default): one graph for every position."""
        opts = {"fullgraph": True, "dynamic": False, **kwargs}
        self.static = True
        self.noise_row.fill_(self._noise_at)
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


__all__ = ["DENSE_SPARE", "NOISE_BLOCK", "START", "DecodingEngine", "engine_for"]
