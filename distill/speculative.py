"""Speculative sampling of an upsampler: a parallel student drafts, the teacher verifies.

Exact speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative
Sampling"), one window at a time, inside the teacher's own windowing loop
(:class:`SpeculativeSampler` is a :class:`~teacher.generate.sampler.LevelSampler`). Per window
the teacher's decoding engine (:class:`~teacher.generate.engine.DecodingEngine`) is primed on the
window's prefix once; then every round, for every row of the batch at its own position ``m``:

1. draft: the proposal (the student) drafts γ tokens ``d_m … d_{m+γ-1}`` one after the other,
   each conditioned on the accepted prefix and on the drafts before it, with the distribution
   ``q`` it drew each from (:class:`CategoricalProposal`: the student's final stage stepped
   incrementally, :class:`~distill.drafter.IncrementalStage`);
2. verify: the teacher scores ``[x_{m-1}, d_m, …, d_{m+γ-1}]`` in ONE multi-query call of the
   engine (γ + 1 inputs at positions m … m+γ — position t reads token t−1 — give the logits of
   tokens m … m+γ, the last one the bonus token's);
3. accept, on the device (a few rows on a CPU: on the host, the same draws): drafts are
   accepted in order with probability ``min(1, p(d)/q(d))``; at the first rejection the token
   is redrawn from ``norm(max(0, p − q))``; when all γ are accepted a bonus token is drawn from
   the teacher's last logits (a round yields 1 … γ+1 codes);
4. rewind: each row's position moves to its accepted length (a pointer moves: the engine masks
   what the rejected drafts left, the drafter overwrites it).

Rows advance independently (their own positions and rewinds); the round's one host sync reads
the rows' new positions (to stop, and to address the next drafts). ``p`` is the teacher's
distribution exactly as exact mode draws from it: ``softmax(filter(l/τ))`` with the same
temperature τ and top-k / top-p filter.

Why the result is exactly the teacher's distribution
-----------------------------------------------------
Look at one position t of one row with accepted history ``x_<t``. Let H be everything the
algorithm has computed before the draft at t (accepted tokens, earlier drafts, the student's
noise, earlier coin flips, other rows). The proposal ``q_t`` is a function of H; the draft is
``d_t = argmax(log q_t + g_t)`` with Gumbel noise ``g_t`` drawn fresh, independent of H, so
``d_t | H ~ q_t`` (Gumbel-max). The coin ``u_t`` is fresh too. Then, for every token v::

    P(x_t = v | H) = q_t(v) · min(1, p(v)/q_t(v)) + P(reject | H) · r(v)
                   = min(q_t(v), p(v)) + (1 − Σ_w min(q_t(w), p(w))) · r(v),
    r = max(0, p − q_t) / Σ max(0, p − q_t),  and  1 − Σ min(q, p) = Σ max(0, p − q),

so ``P(x_t = v | H) = min(q, p)(v) + max(0, p − q)(v) = p(v | x_<t)``. A bonus token is drawn
from p directly. Which positions get a draft, where a round ends and what happens after it only
depend on what came before (stopping times), so every token is an exact draw from
``p(· | x_<t)`` given any H, and each row is distributed as the teacher's. The argument needs
only that q_t is computed BEFORE the draft's own noise is drawn; a poor student costs speed,
never exactness. What breaks it: a q that is not the distribution the draft was drawn from (e.g.
the Gaussian student's snapped token with its calibrated logits), or a draft whose noise also
shaped q.

The proposals
-------------
* :class:`CategoricalProposal` (Gumbel-max IAF): its final stage as an autoregressive model,
  ``q(x_t | x_<t) = softmax(stage(x_<t)[t] / τ_s)``, stepped one position at a time with
  per-layer queues of its dilated convolutions and the conditioning projected once per window:
  a draft costs one column of the stage, and each draft reads the drafts before it.
* :class:`WindowProposal` (the same student, ``draft="window"``): ONE K-pass sample of the
  whole window (:func:`student_sample`, the prefix forced) at the window's start; a round reads
  its codes at ``m … m+γ−1`` as the drafts and its final stage's ``softmax(logits / τ_s)``
  there as q. Exact by the argument above: the stages are causal, so q_t is a function of the
  noise ``g_<t`` and ``d_t = argmax(log q_t + g_t)``; nothing the rounds before t use (drafts at
  positions < t, coins, residual draws) depends on ``g_t``. q_t does not see the accepted
  prefix (it reads the student's own previous stage), so acceptance is lower than
  incremental drafting, but a round costs no student work at all: it pays where a draft step
  costs as much as a teacher step (small teachers on a CPU, :func:`choose_draft`).
* :class:`GaussianProposal` (affine IAF baseline): it has no token-level stage (its flows read
  continuous vectors), so each round runs its K flows over a span (its receptive field before
  m, plus γ) with fresh noise and the row's accepted prefix forced; ``q`` is its calibrated
  soft-assignment logits (DESIGN §5) and the drafts are drawn FROM q by Gumbel-max — never
  snapped, since the snap is not a draw from q. Expect lower acceptance and slow rounds.

Cost of a round and γ: ``γ · c_draft + c_verify(γ+1) + c_accept`` for an expected
``(1 − α^{γ+1})/(1 − α)`` codes (:func:`expected_tokens_per_pass`); by default γ = 4 for
incremental drafts and 6 for window drafts (free per round: only the verification grows with
γ); ``gamma="auto"`` measures the costs and α while sampling and picks the γ that maximises
codes per second (:func:`best_gamma`, :func:`verify_cost_model`), γ = 0 (rounds without
drafts) included. ``gamma="auto"`` also drafts only where drafting pays: it probes the
teacher's exact step at each batch size (a few steps), measures a speculative window there
(seconds per code, the student's work included), and samples each later window the faster way
— by the teacher alone, as exact mode does, where the student costs more than it saves (a batch
of 16 on a CPU: a batched teacher step serves 16 rows for ~2 single-row steps while the
student's work grows with every row). Within a drafted window, once its rounds are measured
slower than the teacher's steps (after the exploration, then every :data:`AUTO_EVERY` rounds),
the rows behind take single teacher steps up to the front row's position while the rows there
wait (their draws discarded, which was decided before they were drawn), and the teacher
finishes the window alone from that common position. Like an autotuner's, the measurements are
kept per process (:func:`window_costs`). Exactness is untouched: every switch is decided from
what was already measured, nothing kept is redrawn, and the teacher's continuation draws from
p given the kept prefix.
:attr:`SpeculativeStats.seconds` breaks the rounds' time down into draft, verify, accept and
rewind, beside the proposal's start per window (the student's window sample).

Precision of the drafts: the student may draft in another dtype than it was loaded in
(``draft_dtype``, :func:`resolve_draft_dtype`): by default bf16 where native bf16 products pay
(window drafts on AMX CPUs — a window sample of the demo student 85 -> 47 ms —, any draft on
CUDA). Exactness does not depend on it: q is whatever the draft was drawn from.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distill.drafter import IncrementalStage, step_parameters
from student.base import Student, gumbel_noise
from teacher.config import ConfigError
from teacher.device import DTYPES, native_bf16, resolve_dtype
from teacher.generate.engine import START, engine_for
from teacher.generate.sampler import (
    ExactSampler,
    LevelSampler,
    ProgressFn,
    WindowInputs,
    filter_logits,
)
from teacher.prior.model import Prior

log = logging.getLogger(__name__)

#: positions per call when priming a window on its prefix (as exact mode's default)
DEFAULT_PRIME_CHUNK = 1024
#: draft length γ when none is given, for incremental drafts (each draft costs a student step)
DEFAULT_GAMMA = 4
#: ... and for window drafts (free: a round costs its verification, which grows slowly with γ)
DEFAULT_WINDOW_GAMMA = 6
#: the largest γ (the drafter's spare positions past a window's end)
MAX_GAMMA = 64
#: how a categorical student drafts: ``incremental`` (its final stage stepped per draft, reading
#: the accepted prefix), ``window`` (one K-pass sample per window, read per round) or ``auto``
#: (:func:`choose_draft`)
DRAFTS = ("auto", "incremental", "window")
#: ``draft="auto"`` drafts by window when one incremental draft step reads at least this
#: fraction of the weights of one teacher step
WINDOW_DRAFT_RATIO = 0.25
#: the smallest positive float32: q is clipped there before dividing by it
_TINY = float(torch.finfo(torch.float32).tiny)
#: the largest γ ``gamma="auto"`` considers
MAX_AUTO_GAMMA = 12
#: ``gamma="auto"`` explores these γ for :data:`AUTO_ROUNDS` rounds each, then picks
AUTO_START = (2, 6)
AUTO_ROUNDS = 6
#: rounds between two choices of γ
AUTO_EVERY = 32
#: ``gamma="auto"`` takes the shortest γ whose predicted rate is within this fraction of the best
GAMMA_TIE = 0.03
#: ``gamma="auto"``: exact steps timed (after a warm-up one) to compare with a speculative window
PROBE_STEPS = 4
#: ``gamma="auto"`` finishes a window by the teacher alone when its rounds made codes this much
#: more slowly than exact steps would (a margin: the exploration's short rounds are the slowest,
#: and a needless switch costs what drafting saves)
FINISH_MARGIN = 1.1


# ---------------------------------------------------------------------------------------------
# the student's sampling with a forced prefix


@dataclass
class StudentDraw:
    """One run of a student over a span (:func:`student_sample`).

    Attributes:
        codes: ``LongTensor[B, T]``, equal to the prefix at its positions.
        logits: ``Tensor[B, T, V]`` fp32 of the final stage (categorical) or the calibrated
            logits of the final flow (Gaussian), before the temperature; at a position t past
            the prefix, ``softmax(logits[:, t] / temperature)`` is the distribution the
            categorical student's ``codes[:, t]`` was drawn from given the noise at ``< t``.
        passes: network passes run (K).
    """

    codes: Tensor
    logits: Tensor
    passes: int


def receptive_field(student: Student) -> int:
    """Positions before t that one stage (or flow) reads: its stack's receptive field.

    With the prefix forced at every stage, stage k's output at ``t >= T0`` reads stage k−1's
    tokens at ``[t − RF, t)`` only, and those before ``T0`` are the prefix whatever the earlier
    stages did: so a span starting ``RF`` positions before the first new position gives the
    same outputs there as the whole window (tested).
    """
    return student.cfg.stage.receptive_field


def student_sample(
    student: Student,
    cond: Tensor,
    prefix: Tensor | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    noise: Tensor | None = None,
) -> StudentDraw:
    """Sample a span with a student in K passes, ``prefix`` forced at every stage.

    Args:
        student: a :class:`~student.categorical.CategoricalIAF` or
            :class:`~student.gaussian.GaussianIAF`.
        cond: ``Tensor[B, T, C]`` from ``student.condition`` over exactly the span.
        prefix: ``LongTensor[B, T0]`` codes of the span's first ``T0`` positions (``T0 < T``),
            or None. Categorical: every stage's tokens are overwritten by them at their
            positions, so later positions condition on the real codes (continue mode, windows,
            chunks). Gaussian: every flow's output vectors there are replaced by the unit code
            vectors scaled to ``√D`` (the norm of the N(0, I) noise the flows start from), so
            they snap to the prefix and the later flows read them.
        generator: draws the noise when ``noise`` is None.
        temperature: categorical: ``argmax(l/τ + g)``; Gaussian: the noise is scaled by τ.
        noise: Gumbel ``[B, T, V]`` (categorical) or normal ``[B, T, D]`` (Gaussian).
    """
    b, t = cond.shape[:2]
    t0 = 0 if prefix is None else prefix.shape[1]
    if prefix is not None and (prefix.dim() != 2 or prefix.shape[0] != b or t0 >= t + 1):
        raise ValueError(f"prefix must be ({b}, T0 <= {t}), got {tuple(prefix.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student.family == "gaussian":
        return _gaussian_sample(student, cond, prefix, generator, temperature, noise)
    if noise is None:
        noise = student.make_noise(b, t, generator=generator, device=cond.device)
    tokens: Tensor | None = None
    logits = cond.new_zeros(0)
    for k in range(student.n_passes):
        logits = student.stage_logits(k, tokens, cond)
        tokens = student.select(logits, noise, temperature)  # SAME g at every stage (DESIGN §5)
        if t0:
            tokens[:, :t0] = prefix  # every later stage reads the real codes there
    return StudentDraw(tokens, logits.float(), student.n_passes)


def _gaussian_sample(student, cond, prefix, generator, temperature, noise) -> StudentDraw:
    b, t = cond.shape[:2]
    dim = student.cfg.gaussian.code_dim
    if noise is None:
        noise = student.make_noise(b, t, generator=generator, device=cond.device)
    u = noise.to(device=cond.device, dtype=torch.float32) * temperature
    t0 = 0 if prefix is None else prefix.shape[1]
    forced = student.codes_unit()[prefix] * math.sqrt(dim) if t0 else None
    v = u
    mu_tot = torch.zeros_like(u)
    log_sigma_tot = torch.zeros_like(u)
    for flow in student.flows:
        v, mu, log_sigma = flow(v, cond)
        mu_tot = mu + torch.exp(log_sigma) * mu_tot
        log_sigma_tot = log_sigma_tot + log_sigma
        if t0:
            v = v.clone()
            v[:, :t0] = forced
    codes = student.snap(v)
    if t0:
        codes[:, :t0] = prefix
    logits = student.calibrated_logits(mu_tot, log_sigma_tot)
    return StudentDraw(codes, logits, student.n_passes)


# ---------------------------------------------------------------------------------------------
# proposals


@runtime_checkable
class Proposal(Protocol):
    """What :class:`SpeculativeSampler` needs from a draft model.

    ``begin`` is called once per window with the window's codes buffer ``LongTensor[B, L]``
    (the first ``n_known`` are the prefix), labels and upper codes. ``draft(codes, m, gamma,
    generator)`` gets each row's accepted length ``m`` (``list[int]``; ``codes[b, :m[b]]`` are
    accepted) and returns ``(tokens LongTensor[B, gamma], probs Tensor[B, gamma, V])``: drafts
    for positions ``m[b] … m[b]+gamma−1`` and, for each, the EXACT distribution it was drawn
    from, computed before its own randomness (module docs). ``passes`` counts network passes
    (a draft step of an incremental stage counts one).
    """

    passes: int

    def begin(
        self,
        codes: Tensor,
        n_known: int,
        labels: Tensor | None,
        upper: Tensor | None,
        generator: torch.Generator | None,
    ) -> None: ...

    def draft(
        self, codes: Tensor, m: list[int], gamma: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]: ...


def student_labels(student: Student, labels: Tensor | None) -> Tensor | None:
    """The labels a student takes: the windowing loop builds them for the teacher's prior (lyric
    tokens included); an unlabelled student (of a labelled teacher) takes none."""
    return None if labels is None or student.cfg.labels is None else labels


def _gumbel_draw(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of ``softmax(logits)`` (``Tensor[..., V]``) by Gumbel-max, with noise
    drawn fresh from ``generator`` (on its own device, then moved)."""
    g = gumbel_noise(tuple(logits.shape), generator, logits.device)
    return (logits.float() + g).argmax(dim=-1)


class _StudentProposal:
    """What both students' proposals share: the family check, the temperature, the receptive
    field, the pass counter and the window's conditioning (:meth:`begin`)."""

    family = ""

    def __init__(self, student: Student, temperature: float = 1.0) -> None:
        if student.family != self.family:
            raise ConfigError(f"{type(self).__name__} needs a {self.family} student, got {student}")
        if temperature <= 0:
            raise ConfigError(f"the student temperature must be positive, got {temperature}")
        self.student = student.eval()
        self.temperature = float(temperature)
        self.rf = receptive_field(student)
        self.passes = 0
        self.cond: Tensor | None = None

    def begin(self, codes, n_known, labels, upper, generator) -> None:
        length = codes.shape[1]
        cond = self.student.condition(upper, student_labels(self.student, labels))
        if cond.shape[1] < length:
            raise ValueError(f"the student's conditioning covers {cond.shape[1]} < {length}")
        self.cond = cond[:, :length]


class CategoricalProposal(_StudentProposal):
    """Drafts from a :class:`~student.categorical.CategoricalIAF`: its final stage stepped one
    position at a time (:class:`~distill.drafter.IncrementalStage`), each draft reading the
    accepted prefix and the drafts before it (module docs). One stage column per draft."""

    family = "categorical"

    def __init__(self, student: Student, temperature: float = 1.0) -> None:
        super().__init__(student, temperature)
        self.stage: IncrementalStage | None = None

    def begin(self, codes, n_known, labels, upper, generator) -> None:
        super().begin(codes, n_known, labels, upper, generator)
        b, length = codes.shape
        if self.stage is None or self.stage.batch_size != b or self.stage.length < length:
            self.stage = IncrementalStage(self.student, b, length)
        self.stage.begin(self.cond)
        if n_known:  # the queues over the prefix, in one batched pass
            self.stage.prime(codes[:, :n_known])
            self.passes += 1

    def draft(self, codes, m, gamma, generator) -> tuple[Tensor, Tensor]:
        b, dev = codes.shape[0], codes.device
        shared = m[0] if all(x == m[0] for x in m) else None
        if shared is not None:
            pos = None
            prev = codes[:, shared - 1] if shared else None
        else:
            pos = torch.tensor(m, device=dev)
            rows = torch.arange(b, device=dev)
            prev = torch.where(pos > 0, codes[rows, (pos - 1).clamp(min=0)], START)
        # the drafts' Gumbel noise, drawn before any q: independent of every q it meets
        noise = gumbel_noise((gamma, b, self.stage.table.shape[0] - 1), generator, dev)
        tokens, logits = [], []
        for j in range(gamma):
            z = self.stage.step(shared + j if pos is None else pos + j, prev)
            if self.temperature != 1.0:
                z = z / self.temperature
            prev = torch.argmax(z + noise[j], dim=-1)  # a draw from softmax(z)
            tokens.append(prev)
            logits.append(z)
        self.passes += gamma
        return torch.stack(tokens, 1), torch.softmax(torch.stack(logits, 1), dim=-1)


class WindowProposal(_StudentProposal):
    """Drafts from one K-pass sample of the window by a
    :class:`~student.categorical.CategoricalIAF` (module docs): :meth:`begin` samples the
    window from one receptive field before its first new position, the prefix forced;
    :meth:`draft` reads that sample's codes and its final stage's distribution at the rows'
    positions. K passes per window (over its new part), none per round."""

    family = "categorical"

    def begin(self, codes, n_known, labels, upper, generator) -> None:
        super().begin(codes, n_known, labels, upper, generator)
        b, length = codes.shape
        # the stages from one receptive field before the first new position: with the prefix
        # forced they give there what the whole window would (receptive_field)
        s0 = max(0, n_known - self.rf)
        prefix = codes[:, s0:n_known] if n_known > s0 else None
        draw = student_sample(self.student, self.cond[:, s0:], prefix, generator, self.temperature)
        v = draw.logits.shape[-1]
        # positions before s0 are never drafted; rows near the end may be asked past the window
        # (discarded drafts): a spare of MAX_GAMMA positions, uniform there. q of every position
        # at once: a round only reads it
        self.tokens = draw.codes.new_zeros(b, length + MAX_GAMMA)
        self.tokens[:, s0:length] = draw.codes
        logits = draw.logits.new_zeros(b, length + MAX_GAMMA, v)
        logits[:, s0:length] = draw.logits / self.temperature
        self.probs = torch.softmax(logits, dim=-1)
        self.passes += draw.passes

    def draft(self, codes, m, gamma, generator) -> tuple[Tensor, Tensor]:
        if all(x == m[0] for x in m):
            at = slice(m[0], m[0] + gamma)
            return self.tokens[:, at], self.probs[:, at]
        dev = self.tokens.device
        cols = torch.tensor(m, device=dev)[:, None] + torch.arange(gamma, device=dev)
        rows = torch.arange(len(m), device=dev)[:, None]
        return self.tokens[rows, cols], self.probs[rows, cols]


class GaussianProposal(_StudentProposal):
    """Drafts from a :class:`~student.gaussian.GaussianIAF`: ``q`` = its calibrated logits over
    a span run with fresh noise and the row's accepted prefix forced; drafts drawn FROM q
    (module docs). K flow passes per row and round."""

    family = "gaussian"

    def draft(self, codes, m, gamma, generator) -> tuple[Tensor, Tensor]:
        tokens, probs = [], []
        length = self.cond.shape[1]
        for b, mb in enumerate(m):
            if mb >= length:  # a finished row: any draft (discarded)
                tokens.append(codes.new_zeros(1, gamma))
                v = self.student.cfg.l_bins
                probs.append(self.cond.new_full((1, gamma, v), 1.0 / v))
                continue
            s0, e = max(0, mb - self.rf), min(mb + gamma, length)
            draw = student_sample(
                self.student,
                self.cond[b : b + 1, s0:e],
                codes[b : b + 1, s0:mb],
                generator,
                self.temperature,
            )
            self.passes += draw.passes
            logits = draw.logits[:, mb - s0 :] / self.temperature
            if logits.shape[1] < gamma:  # past the window's end: any draft (discarded)
                logits = F.pad(logits, (0, 0, 0, gamma - logits.shape[1]))
            tokens.append(_gumbel_draw(logits, generator))
            probs.append(torch.softmax(logits, dim=-1))
        return torch.cat(tokens), torch.cat(probs)


def make_proposal(
    student: Student, temperature: float = 1.0, draft: str = "incremental"
) -> Proposal:
    """The proposal of a student's family; a categorical student drafts ``incremental`` or by
    ``window`` (module docs; resolve ``auto`` with :func:`choose_draft` first)."""
    if draft not in DRAFTS[1:]:
        raise ConfigError(f"draft must be one of {DRAFTS[1:]} here, got {draft!r}")
    if student.family == "categorical":
        if draft == "window":
            return WindowProposal(student, temperature)
        return CategoricalProposal(student, temperature)
    if student.family == "gaussian":
        return GaussianProposal(student, temperature)
    raise ConfigError(f"no speculative proposal for a {student.family!r} student")


#: ``draft_dtype`` names: ``auto``, ``keep`` and the dtypes' (:data:`teacher.device.DTYPES`)
DRAFT_DTYPES = ("auto", "keep", *DTYPES)


def parse_draft_dtype(value: str | torch.dtype | None) -> str | torch.dtype | None:
    """A draft precision as given: ``auto``, ``keep``, None, a dtype name (``bfloat16`` ...)
    or a floating torch dtype; anything else is a :class:`ConfigError` (before any model
    runs)."""
    if value is None or value in DRAFT_DTYPES:
        return value
    try:
        resolve_dtype(value)
    except ConfigError:
        raise ConfigError(
            f"draft_dtype must be one of {', '.join(DRAFT_DTYPES)}, got {value!r}"
        ) from None
    return value


def resolve_draft_dtype(
    student: Student, draft_dtype: str | torch.dtype | None, draft: str = "window"
) -> torch.dtype:
    """The precision a student drafts in: ``"auto"`` — bf16 for an fp32 student where bf16
    products are native and pay (:func:`~teacher.device.native_bf16`): on CUDA, and on AMX
    CPUs for ``window`` drafts (a whole window's products; one incremental column at a time is
    slower in bf16 there), else the student's own; ``"keep"`` or None — the student's; or a
    dtype (name). The drafts' precision never changes the samples' distribution (the accept
    rule divides by the q each draft was drawn from), only the acceptance — within noise for
    the demo's students."""
    parse_draft_dtype(draft_dtype)
    param = next(student.parameters())
    if draft_dtype is None or draft_dtype == "keep":
        return param.dtype
    if draft_dtype == "auto":
        pays = param.device.type == "cuda" or draft == "window"
        fast = param.dtype == torch.float32 and pays and native_bf16(param.device)
        return torch.bfloat16 if fast else param.dtype
    return resolve_dtype(draft_dtype)


_DRAFT_COPIES: weakref.WeakKeyDictionary[Student, tuple[Any, Student]] = weakref.WeakKeyDictionary()


def draft_student(student: Student, dtype: torch.dtype) -> Student:
    """``student`` in ``dtype`` for drafting: itself when it is in ``dtype`` already, else an
    eval-mode cast copy, made once and kept while the student lives and its weights are
    unchanged (an optimizer step or a loaded state makes a new copy; a student made under
    ``torch.inference_mode`` has no version counters: a new copy per call)."""
    params = list(student.parameters())
    if params[0].dtype == dtype:
        return student
    if any(p.is_inference() for p in params):  # no version counters: a fresh copy each time
        return copy.deepcopy(student).to(dtype=dtype).eval()
    key = (dtype, tuple((id(p), p._version) for p in params))
    kept = _DRAFT_COPIES.get(student)
    if kept is None or kept[0] != key:
        cast = copy.deepcopy(student).to(dtype=dtype).eval()
        kept = _DRAFT_COPIES[student] = (key, cast)
    return kept[1]


def draft_weight_ratio(prior: Prior, student: Student) -> float:
    """Weights one incremental draft step reads (:func:`distill.drafter.step_parameters`) over
    those one teacher step reads (the prior's transformer and its output head): about the cost
    of a draft in teacher steps where both are bound by reading their weights."""
    tr = prior.prior.transformer
    teacher = sum(p.numel() for p in tr.parameters()) + prior.cfg.l_bins * tr.cfg.width
    return step_parameters(student) / teacher


def parse_draft(value: str) -> str:
    """A draft mode as given: one of :data:`DRAFTS`, anything else a :class:`ConfigError`."""
    if value not in DRAFTS:
        raise ConfigError(f"draft must be one of {', '.join(DRAFTS)}, got {value!r}")
    return value


def choose_draft(prior: Prior, student: Student, draft: str = "auto") -> str:
    """``draft`` checked, ``auto`` resolved: ``window`` when an incremental draft step reads at
    least :data:`WINDOW_DRAFT_RATIO` of a teacher step's weights (the demo's CPU students: 2.5x
    the teacher's), else ``incremental`` (a released teacher: ~1% of it). Students other than
    categorical draft their own way (:class:`GaussianProposal`): only ``auto`` is accepted."""
    draft = parse_draft(draft)
    if student.family != "categorical":
        if draft != "auto":
            raise ConfigError(f"draft={draft!r} is for categorical students, got {student}")
        return "incremental"
    if draft != "auto":
        return draft
    return "window" if draft_weight_ratio(prior, student) >= WINDOW_DRAFT_RATIO else "incremental"


# ---------------------------------------------------------------------------------------------
# statistics and the choice of γ


def default_gamma(draft: str) -> int:
    """γ when none is given: :data:`DEFAULT_WINDOW_GAMMA` for window drafts, else
    :data:`DEFAULT_GAMMA`."""
    return DEFAULT_WINDOW_GAMMA if draft == "window" else DEFAULT_GAMMA


def parse_gamma(value: int | str | None) -> int | str | None:
    """A draft length as given on a command line or in a call: an int in ``1 …``
    :data:`MAX_GAMMA` (also as text), ``"auto"``, or None (the draft's default,
    :func:`default_gamma`); anything else is a :class:`ConfigError`."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_GAMMA:
        raise ConfigError(f"gamma must be 1 … {MAX_GAMMA} drafts or 'auto', got {value!r}")
    return value


def expected_tokens_per_pass(alpha: float, gamma: int) -> float:
    """``(1 − α^{γ+1}) / (1 − α)``: expected tokens per teacher pass with γ drafts whose
    acceptances are independent with probability α (Leviathan et al. 2023, eq. 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def predicted_speedup(
    alpha: float, gamma: int, draft_s: float, verify_s: float, accept_s: float, step_s: float
) -> float:
    """Codes per second of speculative over exact sampling: ``E[codes per round] · step /
    (γ · draft + verify + accept)``, ``step`` being exact mode's seconds per code."""
    cost = gamma * draft_s + verify_s + accept_s
    return expected_tokens_per_pass(alpha, gamma) * step_s / cost if cost > 0 else 0.0


def ideal_speedup(alpha: float, draft_steps: float, max_gamma: int = 8) -> float:
    """The most any round could gain over exact sampling with drafts that cost
    ``draft_steps`` exact steps each at acceptance ``alpha``: verification at the cost of one
    exact step, accept and rewind free, the best γ in ``1 … max_gamma`` (``max_γ E[codes](α,
    γ) / (γ · draft_steps + 1)``). Below 1 no tuning of the round makes speculative mode pay."""
    return max(
        predicted_speedup(alpha, g, draft_steps, 1.0, 0.0, 1.0) for g in range(1, max_gamma + 1)
    )


def verify_cost_model(measured: dict[int, tuple[float, int]]) -> Callable[[int], float]:
    """Seconds of a verification call of n queries, linear in n: the least-squares line through
    the measured ``{queries: (total seconds, calls)}``, each count weighted by its calls (a
    count seen once weighs little against one seen hundreds of times); never below 1 ns, its
    slope never negative. One count measured: that cost for every n; none: 1 s."""
    pts = [(n, s / c, c) for n, (s, c) in sorted(measured.items()) if c > 0]
    if not pts:
        return lambda n: 1.0
    w = sum(c for _, _, c in pts)
    mx = sum(n * c for n, _, c in pts) / w
    my = sum(y * c for _, y, c in pts) / w
    var = sum(c * (n - mx) ** 2 for n, _, c in pts)
    slope = max(0.0, sum(c * (n - mx) * (y - my) for n, y, c in pts) / var) if var > 0 else 0.0
    return lambda n: max(my + slope * (n - mx), 1e-9)


def best_gamma(
    alpha: float, draft_s: float, verify_s: Callable[[int], float], accept_s: float, limit: int
) -> int:
    """The γ in ``0 … limit`` with the most codes per second, ``E[codes](α, γ) / (γ · draft +
    verify(γ + 1) + accept)`` (``verify(n)``: seconds of a call of n queries), or the shortest
    within :data:`GAMMA_TIE` of it: the rates of long γ are extrapolations (α taken as the
    same at every draft of a round, while it falls after the first rejection's history goes
    stale) and a long round wastes more at a rejection. γ = 0 is a teacher step without drafts
    (one code per call): what the rounds fall back to when drafting costs more than it
    saves."""

    def rate(g: int) -> float:
        return expected_tokens_per_pass(alpha, g) / (g * draft_s + verify_s(g + 1) + accept_s)

    rates = [rate(g) for g in range(limit + 1)]
    best = max(rates)
    return next(g for g, r in enumerate(rates) if r >= (1.0 - GAMMA_TIE) * best)


@dataclass
class WindowCosts:
    """What ``gamma="auto"`` measured at one batch size for one teacher / draft pair: seconds
    per new code of a window, priming excluded (:func:`window_costs`).

    Attributes:
        speculative: the last speculative window, its student work included (the window
            sample of window drafts, the queues primed of incremental ones).
        exact: the last window the teacher sampled alone, or before any, a probe of its steps.
    """

    speculative: float | None = None
    exact: float | None = None
    #: whether the last choice (drafts or the teacher alone) was logged
    told: bool | None = field(default=None, compare=False, repr=False)

    def speculate(self) -> bool:
        """Whether to draft the next window: until a speculative window was measured, yes (to
        measure it); then if it was faster than exact. (Left to the teacher, a batch size stays
        so for the process: :func:`clear_window_costs` measures again.)"""
        if self.speculative is None or self.exact is None:
            return True
        return self.speculative < self.exact


#: :class:`WindowCosts` per teacher, draft student and (draft kind, batch size): measured once
#: per process and shape, as an autotuner caches its choices
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def window_costs(prior: Prior, student: Student, key: tuple) -> WindowCosts:
    """The :class:`WindowCosts` of ``prior`` drafted by ``student`` at ``key`` (kept while both
    modules live; :func:`clear_window_costs` forgets them)."""
    per_student = _COSTS.setdefault(prior, weakref.WeakKeyDictionary())
    return per_student.setdefault(student, {}).setdefault(key, WindowCosts())


def clear_window_costs() -> None:
    """Forget every measured :class:`WindowCosts` (tests; a machine whose load changed)."""
    _COSTS.clear()


@dataclass
class SpeculativeStats:
    """Counters of a :class:`SpeculativeSampler` (accumulated over windows; add two with +).

    Attributes:
        windows: windows sampled (drafted or not).
        rounds: draft-verify rounds.
        teacher_passes: verification calls of the teacher (one multi-query call each, all rows).
        row_passes: rows served by those calls (finished rows not counted).
        prime_passes: calls priming windows on their prefix.
        tokens: codes produced, all rows.
        drafted: draft tokens proposed to live rows.
        evaluated: drafts that reached the accept test (the rest came after a rejection).
        accepted: drafts accepted.
        proposal_passes: the student's network passes (a draft column counts one).
        exact_windows: windows ``gamma="auto"`` left to the teacher alone (drafting them would
            not pay: :class:`WindowCosts`); their codes are in ``exact_codes``, not ``tokens``.
        exact_codes: codes the teacher sampled alone, all rows: those windows', and the rest of
            drafted windows whose rounds ``gamma="auto"`` measured slower than its steps.
        seconds: wall seconds of the rounds by part: draft, verify, accept, rewind, and the
            proposal's start per window (``proposal``: the student's window sample, or its
            queues primed) (measured with device syncs only when the sampler's ``profile`` is
            on, or for ``gamma="auto"``).
        gammas: the γ of every round (``gamma="auto"`` picks them; 0: no drafts).
    """

    windows: int = 0
    rounds: int = 0
    teacher_passes: int = 0
    row_passes: int = 0
    prime_passes: int = 0
    tokens: int = 0
    drafted: int = 0
    evaluated: int = 0
    accepted: int = 0
    proposal_passes: int = 0
    exact_windows: int = 0
    exact_codes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    gammas: dict[int, int] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        """α: accepted / evaluated drafts."""
        return self.accepted / self.evaluated if self.evaluated else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Codes per teacher pass per row (exact mode: 1)."""
        return self.tokens / self.row_passes if self.row_passes else 0.0

    def __add__(self, other: SpeculativeStats) -> SpeculativeStats:
        out = SpeculativeStats()
        for name in ("seconds", "gammas"):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(out, name, {k: mine.get(k, 0) + theirs.get(k, 0) for k in {*mine, *theirs}})
        for k, v in asdict(self).items():
            if isinstance(v, int):
                setattr(out, k, v + getattr(other, k))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_pass": self.tokens_per_pass,
        }


# ---------------------------------------------------------------------------------------------
# the sampler


LogitsHook = Callable[[int, int, Tensor], None]
ROUND_PARTS = ("draft", "verify", "accept", "rewind")


class SpeculativeSampler(LevelSampler):
    """A :class:`teacher.generate.LevelSampler`: the teacher's distribution, drafted by a student
    and verified by the teacher (module docs).

    Args:
        prior: the level's teacher prior (eval mode is set).
        student: the level's student (or None with ``proposal``).
        gamma: drafts per round γ, ``"auto"`` (measured while sampling, module docs) or None
            (:func:`default_gamma`: 4 for incremental drafts, 6 for window drafts). At most the
            engine's queries per call minus one (a block of the prior).
        temperature, top_k, top_p: the teacher's sampling settings, as in exact mode.
        student_temperature: the student's sampling temperature (1.0: what it was distilled
            to match — the teacher at its distillation temperature).
        chunk_size: positions per call while priming a window on its prefix.
        draft: how a categorical student drafts: ``incremental``, ``window`` or ``auto``
            (module docs, :func:`choose_draft`); :attr:`draft` holds the one used.
        draft_dtype: the precision the student drafts in (:func:`resolve_draft_dtype`):
            ``"auto"`` (bf16 where native bf16 products pay), ``"keep"``, or a dtype;
            :attr:`draft_dtype` holds the one used (None with a custom proposal).
        proposal: a custom :class:`Proposal` (tests, other draft models).
        profile: time the rounds' parts with a device sync between them
            (:attr:`SpeculativeStats.seconds`; always on a CPU, where a sync costs nothing).
        on_logits: test hook, ``on_logits(row, t, logits)`` with the teacher's fp32 ``[V]``
            logits (before temperature and filtering) of every code t a row produces; they equal
            row t of ``prior.logits`` of the returned codes.

    ``stats`` (:class:`SpeculativeStats`) accumulates over calls.
    """

    def __init__(
        self,
        prior: Prior,
        student: Student | None = None,
        gamma: int | str | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        student_temperature: float = 1.0,
        chunk_size: int | None = DEFAULT_PRIME_CHUNK,
        proposal: Proposal | None = None,
        profile: bool = False,
        on_logits: LogitsHook | None = None,
        draft: str = "auto",
        draft_dtype: str | torch.dtype | None = "auto",
    ) -> None:
        gamma = parse_gamma(gamma)
        self.auto = gamma == "auto"
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        if top_k < 0 or not 0.0 <= top_p <= 1.0:
            raise ConfigError(f"need top_k >= 0 and 0 <= top_p <= 1, got {top_k}, {top_p}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        if proposal is None:
            if student is None:
                raise ConfigError("speculative sampling needs a student (or a proposal)")
            _check_pair(prior, student)
            draft = choose_draft(prior, student, draft)
            dtype = resolve_draft_dtype(student, draft_dtype, draft)
            proposal = make_proposal(draft_student(student, dtype), student_temperature, draft)
        else:
            draft, dtype = "custom", None
        self.draft = draft
        self.draft_dtype = dtype
        self.prior = prior.eval()
        self.proposal = proposal
        if gamma is None:
            gamma = default_gamma(draft)
        self.gamma = AUTO_START[0] if self.auto else int(gamma)
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.chunk_size = chunk_size
        self.profile = bool(profile)
        self.on_logits = on_logits
        self.n_ctx = prior.cfg.n_ctx
        self.stats = SpeculativeStats()
        self._verify: dict[int, list[float]] = {}  # queries -> [seconds, calls]
        # what samples the windows (or their rests) gamma="auto" leaves to the teacher alone
        self._exact = ExactSampler(
            self.prior,
            self.temperature,
            self.top_k,
            self.top_p,
            chunk_size,
            on_logits=None if on_logits is None else _per_row(on_logits),
        )

    #: batches of at most this many rows on a CPU accept on the host (:meth:`_accept_host`,
    #: a loop over the rows: 18 µs a round at batch 1 against 63 µs for the device path, slower
    #: than it from ~8 rows); 0: the device path everywhere (tests compare the two)
    host_accept_rows = 4

    # -- the accept rule (overridable: tests break it on purpose) -----------------------------

    def accept_probability(self, p_draft: Tensor, q_draft: Tensor) -> Tensor:
        """``min(1, p(d) / q(d))`` for the drafts' probabilities ``Tensor[B, g]`` (float32
        numpy arrays ``[g]`` on the host path: the rule is written for both)."""
        return (p_draft / q_draft.clip(min=_TINY)).clip(max=1.0)

    def residual(self, p: Tensor, q: Tensor) -> Tensor:
        """Where a rejected token is redrawn from: ``norm(max(0, p − q))`` (unnormalised here),
        ``Tensor[B, V]`` (numpy ``[V]`` on the host path)."""
        return (p - q).clip(min=0.0)

    # -- LevelSampler ---------------------------------------------------------------------------

    def draw(
        self, w: WindowInputs, generator: torch.Generator | None, progress: ProgressFn | None
    ) -> Tensor:
        """See :class:`~teacher.generate.sampler.LevelSampler`: ``LongTensor[B, length]`` whose
        first ``prefix.shape[1]`` codes are ``prefix``."""
        length, prefix = w.length, w.prefix
        cfg = self.prior.cfg
        if not 1 <= length <= cfg.n_ctx:
            raise ValueError(f"length must be in [1, n_ctx={cfg.n_ctx}], got {length}")
        if prefix.dim() != 2 or prefix.shape[1] >= length:
            raise ValueError(f"prefix must be (B, T0 < {length}), got {tuple(prefix.shape)}")
        if prefix.numel() and not bool(((prefix >= 0) & (prefix < cfg.l_bins)).all()):
            raise ValueError(f"prefix codes must be in [0, {cfg.l_bins})")
        with torch.inference_mode():
            costs = self.costs(prefix.shape[0]) if self.auto else None
            if costs is not None and not self._drafts_pay(w, costs):
                out = self._exact_window(w, generator, progress, costs)
            else:
                out = self._window(length, prefix, w.labels, w.upper, generator, progress, costs)
        return out.clone()  # a normal tensor again

    # -- gamma="auto": whether a window is drafted at all ----------------------------------------

    def costs(self, b: int) -> WindowCosts:
        """The :class:`WindowCosts` ``gamma="auto"`` keeps for batches of ``b`` rows (shared by
        every sampler of this teacher and draft student in the process)."""
        key = getattr(self.proposal, "student", self.proposal)
        return window_costs(self.prior, key, (self.draft, b))

    def _drafts_pay(self, w: WindowInputs, costs: WindowCosts) -> bool:
        """``gamma="auto"``: whether to draft this window (:meth:`WindowCosts.speculate`); the
        teacher's exact step is probed first at a new batch size (the rounds are compared with
        it too)."""
        if costs.exact is None:
            costs.exact = self._probe_step(w)
        drafts = costs.speculate()
        if costs.speculative is not None and costs.told is not drafts:
            log.info(
                "gamma auto, batch %d: drafting measured %.3g ms a code against the teacher's "
                "%.3g ms: %s",
                w.prefix.shape[0],
                1e3 * costs.speculative,
                1e3 * costs.exact,
                "windows drafted" if drafts else "windows left to the teacher alone",
            )
            costs.told = drafts
        return drafts

    def _probe_step(self, w: WindowInputs) -> float:
        """Seconds of one exact step of the teacher at this window's batch size: its engine put
        at the middle of the window's new codes, :data:`PROBE_STEPS` of exact mode's sample
        steps (a CUDA graph on CUDA) timed after a warm-up one. They only time (a step costs the
        same whatever the cache and the noise buffer hold); whatever samples the window begins
        the engine again."""
        b, t0 = w.prefix.shape
        engine = engine_for(self.prior, b)
        mid = engine.n_lyrics + (t0 + w.length) // 2
        engine.rewind(min(mid, engine.n_ctx - PROBE_STEPS - 1))
        engine.set_noise(engine.noise[: PROBE_STEPS + 1].clone(), 1.0)  # its rows from the first
        engine.sample_step()
        t = _now(engine.device)
        for _ in range(PROBE_STEPS):
            engine.sample_step()
        return (_now(engine.device) - t) / PROBE_STEPS

    def _exact_window(
        self,
        w: WindowInputs,
        generator: torch.Generator | None,
        progress: ProgressFn | None,
        costs: WindowCosts,
        whole: bool = True,
    ) -> Tensor:
        """The window sampled by the teacher alone, by exact mode's own sampler
        (:class:`~teacher.generate.sampler.ExactSampler`; ``whole=False``: the rest of a drafted
        window, from a position every row reached); its steps' time updates ``costs.exact``."""
        b, t0 = w.prefix.shape
        device = next(self.prior.parameters()).device
        stamps: list[float] = []

        def tick(done: int, total: int) -> None:
            if done == 1 or done == total:  # the steps' time, priming excluded
                stamps.append(_now(device))
            if progress is not None:
                progress(done, total)

        out = self._exact.draw(w, generator, tick)
        if len(stamps) == 2:
            costs.exact = (stamps[1] - stamps[0]) / (w.length - t0 - 1)
        self.stats.windows += whole
        self.stats.exact_windows += whole
        self.stats.exact_codes += b * (w.length - t0)
        return out

    def _window(self, length, prefix, labels, upper, generator, progress, costs) -> Tensor:
        prior, stats = self.prior, self.stats
        b, t0 = prefix.shape
        engine = engine_for(prior, b)
        device = engine.device
        # a round of γ + 1 <= block_ctx + 1 queries ends at most one block past the block of
        # its first accepted position: the engine's rings can rewind there (DecodingEngine)
        limit = min(MAX_AUTO_GAMMA if self.auto else self.gamma, engine.max_queries)
        if not self.auto and self.gamma > limit:
            raise ConfigError(
                f"gamma={self.gamma}: this prior verifies at most {engine.max_queries} drafts "
                "per round (its block_ctx)"
            )
        timed = self.profile or self.auto or device.type != "cuda"
        clock = _Clock(device, timed, stats.seconds)
        cond = prior.condition(labels, upper).expand(b)
        n_lyr, shift = engine.n_lyrics, engine.shift
        codes = torch.zeros(b, length + limit + 1, dtype=torch.long, device=device)
        prefix = prefix.to(device)
        codes[:, :t0] = prefix
        forced = []
        if n_lyr:
            forced.append(cond.lyrics.to(device).expand(b, -1))
        if t0:
            forced.append(prefix + shift)
        forced_t = torch.cat(forced, dim=1) if forced else None
        calls0, passes0 = engine.calls, self.proposal.passes
        engine.begin(cond, forced_t, self.chunk_size)
        stats.prime_passes += engine.calls - calls0
        clock.start()
        t_begin = clock.t if timed else 0.0
        self.proposal.begin(codes[:, :length], t0, labels, upper, generator)
        clock.lap("proposal")
        t_rounds, rounds_here = clock.t, 0
        # gamma="auto", once this window's rounds are measured slower than exact steps: the
        # position every row is brought to (rows behind step alone, rows there wait), from
        # which the teacher finishes the window alone
        finish_at: int | None = None
        # each row's input token for its next position (joint vocabulary)
        last = forced_t[:, -1].clone() if forced_t is not None else codes.new_full((b,), START)
        m = [t0] * b
        m_t = torch.full((b,), t0, dtype=torch.long, device=device)
        together = engine.rows_together
        # a few rows on a CPU: the accept step on the host (numpy views of the same tensors),
        # the same draws as the device path (tested) in a few operations instead of ~30
        host = device.type == "cpu" and b <= self.host_accept_rows
        codes_np = codes.numpy() if host else None
        rows_np = np.arange(b)
        while min(m) < length:
            live = [x < length for x in m]
            n_live = sum(live)
            if finish_at is None and costs is not None and max(m) < length:
                if self._rounds_lose(costs, rounds_here, t_rounds, m, t0, device):
                    finish_at = max(m)
            if finish_at is not None:
                if min(m) == finish_at:
                    break
                g = 0  # the rows behind take one teacher step each
            else:
                g = min(self._gamma(limit), max(length - x - 1 for x in m if x < length))
            clock.start()
            if g:
                drafts, q = self.proposal.draft(codes, m, g, generator)
                if drafts.shape != (b, g) or q.shape[:2] != (b, g):
                    raise RuntimeError(
                        f"the proposal returned drafts {tuple(drafts.shape)}, q {tuple(q.shape)} "
                        f"for ({b}, {g})"
                    )
            else:
                drafts = codes.new_zeros(b, 0)
                q = torch.zeros(b, 0, engine.l_bins, device=device)
            clock.lap("draft")
            # ONE teacher call: [x_{m-1}, d_m … d_{m+g-1}] at positions n_lyr+m … n_lyr+m+g
            calls = engine.calls
            logits = engine.score(torch.cat([last[:, None], drafts + shift], dim=1))
            p = self._probs(logits)  # [B, g+1, V]
            clock.lap("verify")
            self._note_verify(g + 1, clock)
            # one uniform draw per round: the coins, then the exponential noise of the last token
            u = _uniform((b, g + engine.l_bins), generator, device)
            if host:
                m_list, a_list = self._accept_host(p, q, drafts, u, m, codes_np, length, together)
            else:
                m_new, a = self._accept_device(p, q, drafts, u, m_t, codes, length, together)
            clock.lap("accept")
            if not host:
                m_list = m_new.tolist()  # the round's one host sync
                a_list = a.tolist()
            if finish_at is not None:  # rows already there wait: their draw (known to be
                # discarded before it was drawn) is overwritten when the teacher finishes
                m_list = [x if x == finish_at else y for x, y in zip(m, m_list)]
                if not host:
                    m_new = torch.tensor(m_list, device=device)
            # finished rows go to position 0: their (discarded) queries stay inside the window
            target = [n_lyr + x if x < length else 0 for x in m_list]
            if all(x == target[0] for x in target):
                engine.rewind(target[0])
            elif host:
                engine.rewind(torch.tensor(target, device=device))
            else:
                engine.rewind(torch.where(m_new < length, n_lyr + m_new, 0))
            if host:
                last = torch.from_numpy(codes_np[rows_np, np.asarray(m_list) - 1] + shift)
            else:
                last = codes.gather(1, (m_new - 1)[:, None])[:, 0] + shift
                m_t = m_new
            clock.lap("rewind")

            if self.on_logits is not None:
                for r in range(b):
                    for j in range(m_list[r] - m[r]):
                        self.on_logits(r, m[r] + j, logits[r, j])
            stats.rounds += 1
            stats.teacher_passes += engine.calls - calls
            stats.row_passes += n_live
            stats.gammas[g] = stats.gammas.get(g, 0) + 1
            for r in range(b):
                if live[r]:
                    made = m_list[r] - m[r]
                    stats.tokens += made
                    stats.drafted += g
                    stats.evaluated += min(a_list[r] + 1, g, made)
                    stats.accepted += min(a_list[r], made)
            m = m_list
            rounds_here += 1
            if progress is not None:
                progress(min(m) - t0, length - t0)
        stats.windows += 1
        stats.proposal_passes += self.proposal.passes - passes0
        if costs is not None:
            costs.speculative = (_now(device) - t_begin) / (min(m) - t0)
        if finish_at is not None and finish_at < length:
            shown = None
            if progress is not None:
                done0 = finish_at - t0

                def shown(done: int, total: int) -> None:
                    progress(done0 + done, length - t0)

            rest = WindowInputs(length, codes[:, :finish_at], labels, upper)
            codes[:, :length] = self._exact_window(rest, generator, shown, costs, whole=False)
        return codes[:, :length]

    def _rounds_lose(
        self,
        costs: WindowCosts,
        rounds: int,
        since: float,
        m: list[int],
        t0: int,
        device: torch.device,
    ) -> bool:
        """``gamma="auto"``: whether this window's rounds so far (``rounds`` of them since the
        clock read ``since``, the rows now at ``m``) made codes more slowly than the teacher's
        exact steps (``costs.exact``) by more than :data:`FINISH_MARGIN`, judged after the
        exploration and then every :data:`AUTO_EVERY` rounds."""
        first = len(AUTO_START) * AUTO_ROUNDS
        if costs.exact is None or rounds < first or (rounds - first) % AUTO_EVERY:
            return False
        made = sum(m) / len(m) - t0  # codes per row
        return made * costs.exact * FINISH_MARGIN < _now(device) - since

    def _accept_device(
        self,
        p: Tensor,
        q: Tensor,
        drafts: Tensor,
        u: Tensor,
        m_t: Tensor,
        codes: Tensor,
        length: int,
        together: bool,
    ) -> tuple[Tensor, Tensor]:
        """The accept step of a round on the device, without a host sync: ``p`` the teacher's
        ``Tensor[B, g+1, V]``, ``q`` the drafts' ``Tensor[B, g, V]``, ``drafts``
        ``LongTensor[B, g]``, ``u`` the round's uniforms ``Tensor[B, g + V]`` (coins, then the
        last token's noise), ``m_t`` the rows' positions ``LongTensor[B]``. Writes each row's
        accepted drafts and its drawn token into ``codes``; returns the rows' new positions and
        their accepted drafts (``LongTensor[B]`` each)."""
        b, g = drafts.shape
        rows = torch.arange(b, device=codes.device)
        if g:
            q = q.float()
            p_d = p[:, :g].gather(-1, drafts[..., None]).squeeze(-1)
            q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
            ok = u[:, :g] < self.accept_probability(p_d, q_d)
            a = ok.long().cumprod(1).sum(1)  # leading accepted drafts per row
            # the row's token after its run: from the residual at its first rejection
            # (p itself where p = q up to rounding), or the bonus from the last logits
            at = a.clamp(max=g - 1)
            p_a = p[rows, at]
            resid = self.residual(p_a, q[rows, at])
            resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p_a)
            weights = torch.where((a < g)[:, None], resid, p[:, g])
        else:
            a = codes.new_zeros(b)
            weights = p[:, 0]
        # a draw from weights: argmax(w / E) with E = −log u exponential, the same draw as
        # Gumbel-max argmax(log w − log E) without the logarithms of w
        out = torch.cat([drafts, codes.new_zeros(b, 1)], dim=1)
        out[rows, a] = torch.argmax(weights / u[:, g:].log().neg_(), dim=-1)
        codes.scatter_(1, m_t[:, None] + torch.arange(g + 1, device=codes.device), out)
        n_new = a + 1
        if together:  # prime / summary layers: the rows advance in lockstep
            n_new = n_new.masked_fill(m_t >= length, g + 1).min().expand(b)
        return (m_t + n_new).clamp(max=length), a

    def _accept_host(
        self,
        p: Tensor,
        q: Tensor,
        drafts: Tensor,
        u: Tensor,
        m: list[int],
        codes_np: np.ndarray,
        length: int,
        together: bool,
    ) -> tuple[list[int], list[int]]:
        """:meth:`_accept_device` on the host for CPU tensors (the same draws from the same
        ``u``: the coins compared with the same probabilities, the same float32 division and
        first-maximum argmax), with ``m`` the rows' positions as a list and ``codes_np`` a
        numpy view of the codes buffer. Returns the rows' new positions and accepted drafts."""
        b, g = drafts.shape
        e = u[:, g:].log().neg_().numpy()  # the last token's exponential noise, [B, V]
        un, pn, dn = u.numpy(), p.numpy(), drafts.numpy()
        if g:
            qn = q.float().numpy()
            cols = np.arange(g)
        a_list, n_list = [], []
        for r in range(b):
            a = g
            if g:
                d = dn[r]
                ok = un[r, :g] < self.accept_probability(pn[r, cols, d], qn[r, cols, d])
                a = g if ok.all() else int(ok.argmin())  # leading accepted drafts
            if a < g:  # the residual at the first rejection (p where p = q up to rounding)
                w = self.residual(pn[r, a], qn[r, a])
                if not (w > 0).any():
                    w = pn[r, a]
            else:
                w = pn[r, g]
            mr = m[r]
            codes_np[r, mr : mr + a] = dn[r, :a]
            codes_np[r, mr + a] = int(np.argmax(w / e[r]))
            a_list.append(a)
            n_list.append(a + 1)
        if together:
            n = min([n for n, x in zip(n_list, m) if x < length], default=g + 1)
            n_list = [n] * b
        return [min(x + n, length) for x, n in zip(m, n_list)], a_list

    def _probs(self, logits: Tensor) -> Tensor:
        """The teacher's sampling distribution, as exact mode draws it: temperature, then the
        top-k / top-p filter, softmax in fp32."""
        z = logits / self.temperature if self.temperature != 1.0 else logits
        if (0 < self.top_k < z.shape[-1]) or self.top_p > 0.0:
            z = filter_logits(z, self.top_k, self.top_p)
        return torch.softmax(z, dim=-1)

    # -- γ ----------------------------------------------------------------------------------------

    def _note_verify(self, queries: int, clock: _Clock) -> None:
        """Add a verification call of ``queries`` queries to the cost model; the first call at
        each count is a warm-up (masks and buffers made, caches cold) and is not counted."""
        if clock.timed:
            entry = self._verify.setdefault(queries, [0.0, -1])
            if entry[1] >= 0:
                entry[0] += clock.last
            entry[1] += 1

    def _gamma(self, limit: int) -> int:
        """This round's γ: the fixed one, or with ``gamma="auto"`` the exploration schedule
        (:data:`AUTO_START`), then :func:`best_gamma` on what was measured, every
        :data:`AUTO_EVERY` rounds."""
        if not self.auto:
            return self.gamma
        r = self.stats.rounds
        explore = len(AUTO_START) * AUTO_ROUNDS
        if r < explore:
            return min(AUTO_START[r // AUTO_ROUNDS], limit)
        if (r - explore) % AUTO_EVERY == 0:
            self.gamma = self._best(limit)
        return min(self.gamma, limit)

    def _best(self, limit: int) -> int:
        st = self.stats
        draft_cols = sum(g * n for g, n in st.gammas.items())
        if not draft_cols or not st.evaluated:
            return self.gamma
        draft_s = st.seconds.get("draft", 0.0) / draft_cols
        accept_s = (st.seconds.get("accept", 0.0) + st.seconds.get("rewind", 0.0)) / st.rounds
        verify = verify_cost_model({n: (s, c) for n, (s, c) in self._verify.items() if c > 0})
        # acceptance saturates just below 1 (α = 1 would make every γ equal in tokens)
        alpha = min(st.acceptance_rate, 0.999)
        return best_gamma(alpha, draft_s, verify, accept_s, limit)


class _Clock:
    """Wall time of a round's parts (device synced first when ``timed``), added to ``into``."""

    def __init__(self, device: torch.device, timed: bool, into: dict[str, float]) -> None:
        self.device, self.timed, self.into = device, timed, into
        self.t = 0.0
        self.last = 0.0

    def start(self) -> None:
        if self.timed:
            self.t = _now(self.device)

    def lap(self, part: str) -> None:
        if self.timed:
            now = _now(self.device)
            self.last = now - self.t
            self.into[part] = self.into.get(part, 0.0) + self.last
            self.t = now


def _per_row(hook: LogitsHook) -> Callable[[int, Tensor], None]:
    """``hook(row, t, logits[V])`` as :func:`~teacher.generate.sampler.sample_window`'s
    ``on_logits(t, logits[B, V])``."""

    def every_row(t: int, z: Tensor) -> None:
        for r in range(z.shape[0]):
            hook(r, t, z[r])

    return every_row


def _now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work (CUDA kernels are asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _check_pair(prior: Prior, student: Student) -> None:
    if student.cfg.level != prior.cfg.level:
        raise ConfigError(
            f"the student replaces level {student.cfg.level}, the prior is level {prior.cfg.level}"
        )
    if student.cfg.l_bins != prior.cfg.l_bins:
        raise ConfigError(
            f"the student has {student.cfg.l_bins} bins, the prior {prior.cfg.l_bins}"
        )


__all__ = [
    "CategoricalProposal",
    "DEFAULT_GAMMA",
    "DEFAULT_WINDOW_GAMMA",
    "DRAFT_DTYPES",
    "DRAFTS",
    "GaussianProposal",
    "MAX_AUTO_GAMMA",
    "MAX_GAMMA",
    "Proposal",
    "SpeculativeSampler",
    "SpeculativeStats",
    "StudentDraw",
    "WindowProposal",
    "best_gamma",
    "choose_draft",
    "default_gamma",
    "draft_student",
    "draft_weight_ratio",
    "expected_tokens_per_pass",
    "ideal_speedup",
    "make_proposal",
    "parse_draft",
    "parse_draft_dtype",
    "parse_gamma",
    "predicted_speedup",
    "receptive_field",
    "resolve_draft_dtype",
    "student_labels",
    "student_sample",
    "verify_cost_model",
]
