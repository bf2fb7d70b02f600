"""Speculative sampling of an upsampler: a parallel student drafts, the teacher verifies.

Exact speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative
Sampling"), one window at a time, inside the teacher's own windowing loop
(:class:`SpeculativeSampler` is a :class:`teacher.generate.LevelSampler`). Per window:

1. the teacher's KV cache is primed on the window's prefix (the kept codes) in chunks, once;
2. a round: the proposal (the student) drafts γ tokens ``d_m … d_{m+γ-1}`` after the ``m``
   accepted ones, with the probabilities ``q`` it drew them from;
3. the teacher scores ``[x_{m-1}, d_m, …, d_{m+γ-1}]`` in ONE cached chunk forward (γ + 1
   inputs at positions m … m+γ — the prior's input is shifted: position t reads token t−1 —
   give the logits of tokens m … m+γ, the last one the bonus token's);
4. drafts are accepted in order with probability ``min(1, p(d)/q(d))``; at the first rejection
   the token is redrawn from ``norm(max(0, p − q))`` and the round ends; when all γ are accepted
   a bonus token is drawn from the teacher's last logits (so a round yields 1 … γ+1 tokens);
5. the cache is rewound to the accepted length (:meth:`KVCache.rewind`), never re-primed.

``p`` is the teacher's distribution exactly as exact mode draws from it: ``softmax(filter(l/τ))``
with the same temperature τ and top-k / top-p filter.

Why the result is exactly the teacher's distribution
-----------------------------------------------------
Look at one position t with accepted history ``x_<t``. Let H be everything the algorithm has
computed before the draft at t (accepted tokens, earlier drafts, the student's noise of earlier
rounds and positions, earlier coin flips). The proposal ``q_t`` is a function of H; the draft is
``d_t = argmax(log q_t + g_t)`` with Gumbel noise ``g_t`` drawn fresh, independent of H, so
``d_t | H ~ q_t`` (Gumbel-max). The coin ``u_t`` is fresh too. Then, for every token v::

    P(x_t = v | H) = q_t(v) · min(1, p(v)/q_t(v)) + P(reject | H) · r(v)
                   = min(q_t(v), p(v)) + (1 − Σ_w min(q_t(w), p(w))) · r(v),
    r = max(0, p − q_t) / Σ max(0, p − q_t),  and  1 − Σ min(q, p) = Σ max(0, p − q),

so ``P(x_t = v | H) = min(q, p)(v) + max(0, p − q)(v) = p(v | x_<t)``. A bonus token is drawn
from p directly. Which positions get a draft, where a round ends and what happens after it only
depend on what came before (stopping times), so every token is an exact draw from
``p(· | x_<t)`` given any H, and the sequence is distributed as the teacher's. The argument needs
only that q_t is computed BEFORE the draft's own noise is drawn — q may depend on anything in
the past, including the student's earlier noise and its stale guesses, so a poor or stale
student costs speed, never exactness. What breaks it: a q that is not the distribution the
draft was drawn from (e.g. the Gaussian student's snapped token with its calibrated logits), or
a draft whose noise also shaped q.

The proposals
-------------
* :class:`CategoricalProposal` (Gumbel-max IAF): at the window's start the student samples the
  whole window in K passes with the prefix forced at every stage (:func:`student_sample`); that
  sample is the first guess of the future. Each round re-runs the FINAL stage
  (``stage_logits(K−1, prev, cond)``) over the local span it needs (its receptive field before
  m, plus γ) on ``prev`` = accepted prefix + the latest guess; ``q_t = softmax(l_t / τ_s)``
  depends on ``prev`` at ``< t`` only, and the drafts are drawn from q with fresh noise. The
  drafts become the latest guess at their positions. Cost: one stage pass of ``RF + γ``
  positions per round. ``restage=True`` instead re-runs all K stages on the span with the
  accepted prefix forced (K passes per round; q is then exactly the student's own conditional
  given its noise, the quantity distillation trained).
* :class:`GaussianProposal` (affine IAF baseline): it has no ``stage_logits`` (its flows read
  continuous vectors, not tokens). Each round runs its K flows on the span with fresh noise and
  the accepted prefix forced (as code vectors); ``q`` is its calibrated soft-assignment logits
  (DESIGN §5) and the drafts are drawn FROM q by Gumbel-max — never snapped, since the snap is
  not a draw from q and would break exactness. Expect lower acceptance.

Batches: the B rows of a window share one KV cache, so they advance in lockstep. A round ends
at the first position where ANY row rejects: rows that accepted there keep their draft, rows
that rejected keep their redraw (both exact), and later drafts are dropped. That is a stopping
time too, so exactness holds; the cost is fewer tokens per pass for B > 1.

Blocks: a row / previous-row attention layer caches only the current (and previous) block, so
the cache can be rewound only within the block of the last processed position (see
:meth:`KVCache.can_rewind`). With such layers a round's drafts are clipped so that every
possible rewind target lies in one block (γ ≤ ``block_ctx − (P+1) mod block_ctx`` for a chunk
starting at position P). Should a rewind still be impossible, the cache is re-primed on the
accepted sequence (counted in :attr:`SpeculativeStats.reprimes`; 0 in practice).

Expected tokens per teacher pass for an acceptance rate α and γ drafts: ``(1 − α^{γ+1})/(1 − α)``
(:func:`expected_tokens_per_pass`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from student.base import Student, gumbel_noise
from teacher.config import ConfigError
from teacher.generate.sampler import LevelSampler, ProgressFn, WindowInputs, filter_logits
from teacher.prior.attention import AttnKind
from teacher.prior.model import Prior

log = logging.getLogger(__name__)

#: positions per forward when priming a window on its prefix (as exact mode's default)
DEFAULT_PRIME_CHUNK = 1024
#: draft length γ when none is given
DEFAULT_GAMMA = 4


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
    generator)`` returns ``(tokens LongTensor[B, g], probs Tensor[B, g, V])`` with
    ``1 <= g <= gamma``: drafts for positions ``m … m+g−1`` and, for each, the EXACT
    distribution it was drawn from, computed before its own randomness (module docs).
    ``codes[:, :m]`` holds the accepted tokens. ``passes`` counts network passes.
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
        self, codes: Tensor, m: int, gamma: int, generator: torch.Generator | None
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
    """Drafts from a :class:`~student.categorical.CategoricalIAF` (module docs).

    Args:
        student: the level's categorical student.
        temperature: the student's sampling temperature τ_s (1.0: the distribution it was
            distilled to match, the teacher at its ``teacher_temperature``).
        restage: re-run all K stages on each round's span (K passes) instead of the final stage
            on the accepted prefix + latest guess (1 pass).
    """

    family = "categorical"

    def __init__(self, student: Student, temperature: float = 1.0, restage: bool = False):
        super().__init__(student, temperature)
        self.restage = restage
        self.guess: Tensor | None = None

    def begin(self, codes, n_known, labels, upper, generator) -> None:
        super().begin(codes, n_known, labels, upper, generator)
        if self.restage:
            self.guess = None
            return
        # the whole window in K passes from the prefix: the first guess of the future
        draw = student_sample(
            self.student, self.cond, codes[:, :n_known], generator, self.temperature
        )
        self.passes += draw.passes
        self.guess = draw.codes

    def draft(self, codes, m, gamma, generator) -> tuple[Tensor, Tensor]:
        s0, e = max(0, m - self.rf), min(m + gamma, codes.shape[1])
        cond = self.cond[:, s0:e]
        tau = self.temperature
        if self.restage:
            draw = student_sample(self.student, cond, codes[:, s0:m], generator, tau)
            self.passes += draw.passes
            logits = draw.logits[:, m - s0 :] / tau
            # the K-stage tokens are the drafts: token t is argmax(l_t/τ + g_t) with l_t read
            # from earlier stages at < t only, so it IS a draw from softmax(l_t/τ) (module docs)
            return draw.codes[:, m - s0 :], torch.softmax(logits, dim=-1)
        prev = self.guess[:, s0:e].clone()
        prev[:, : m - s0] = codes[:, s0:m]  # accepted prefix + the latest guess after it
        k = self.student.n_passes - 1
        logits = self.student.stage_logits(k, prev, cond)[:, m - s0 :].float() / tau
        self.passes += 1
        tokens = _gumbel_draw(logits, generator)  # fresh noise: q was fixed before it
        self.guess[:, m:e] = tokens
        return tokens, torch.softmax(logits, dim=-1)


class GaussianProposal(_StudentProposal):
    """Drafts from a :class:`~student.gaussian.GaussianIAF`: ``q`` = its calibrated logits over
    a span run with fresh noise and the accepted prefix forced; drafts drawn FROM q (module
    docs). K flow passes per round."""

    family = "gaussian"

    def draft(self, codes, m, gamma, generator) -> tuple[Tensor, Tensor]:
        s0, e = max(0, m - self.rf), min(m + gamma, codes.shape[1])
        draw = student_sample(
            self.student, self.cond[:, s0:e], codes[:, s0:m], generator, self.temperature
        )
        self.passes += draw.passes
        # calibrated logits at t read the flows' vectors at < t (noise of this round, prefix)
        logits = draw.logits[:, m - s0 :] / self.temperature
        return _gumbel_draw(logits, generator), torch.softmax(logits, dim=-1)


def make_proposal(student: Student, temperature: float = 1.0, restage: bool = False) -> Proposal:
    """The proposal of a student's family."""
    if student.family == "categorical":
        return CategoricalProposal(student, temperature, restage=restage)
    if student.family == "gaussian":
        return GaussianProposal(student, temperature)
    raise ConfigError(f"no speculative proposal for a {student.family!r} student")


# ---------------------------------------------------------------------------------------------
# statistics


def expected_tokens_per_pass(alpha: float, gamma: int) -> float:
    """``(1 − α^{γ+1}) / (1 − α)``: expected tokens per teacher pass with γ drafts whose
    acceptances are independent with probability α (Leviathan et al. 2023, eq. 1)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


@dataclass
class SpeculativeStats:
    """Counters of a :class:`SpeculativeSampler` (accumulated over windows).

    Attributes:
        windows: windows sampled.
        teacher_passes: verification forwards of the teacher (one cached chunk each).
        prime_passes: chunked forwards priming windows on their prefix (once per window).
        reprimes: re-primings after a rewind the cache could not do (see module docs).
        positions: positions produced (per row; ``tokens = positions · B``).
        tokens: codes produced, all rows.
        drafted: draft tokens proposed, all rows.
        evaluated: drafts that reached the accept test (the rest came after a rejection).
        accepted: drafts accepted.
        proposal_passes: the student's network passes.
    """

    windows: int = 0
    teacher_passes: int = 0
    prime_passes: int = 0
    reprimes: int = 0
    positions: int = 0
    tokens: int = 0
    drafted: int = 0
    evaluated: int = 0
    accepted: int = 0
    proposal_passes: int = 0

    @property
    def acceptance_rate(self) -> float:
        """α: accepted / evaluated drafts."""
        return self.accepted / self.evaluated if self.evaluated else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Positions produced per teacher verification pass (exact mode: 1)."""
        return self.positions / self.teacher_passes if self.teacher_passes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_pass": self.tokens_per_pass,
        }


# ---------------------------------------------------------------------------------------------
# the sampler


LogitsHook = Callable[[int, Tensor], None]


class SpeculativeSampler(LevelSampler):
    """A :class:`teacher.generate.LevelSampler`: the teacher's distribution, drafted by a student
    and verified by the teacher (module docs).

    Args:
        prior: the level's teacher prior (eval mode is set).
        student: the level's student (or None with ``proposal``).
        gamma: drafts per round γ (clipped at block boundaries and the window's end).
        temperature, top_k, top_p: the teacher's sampling settings, as in exact mode.
        student_temperature: the student's sampling temperature (1.0: what it was distilled
            to match — the teacher at its distillation temperature).
        chunk_size: positions per forward while priming a window.
        proposal: a custom :class:`Proposal` (tests, other draft models).
        restage: :class:`CategoricalProposal`'s option.
        on_logits: test hook, ``on_logits(t, logits)`` with the teacher's fp32 ``[B, V]``
            logits (before temperature and filtering) of every produced position t; they equal
            row t of ``prior.logits`` of the returned codes.

    ``stats`` (:class:`SpeculativeStats`) accumulates over calls.
    """

    def __init__(
        self,
        prior: Prior,
        student: Student | None = None,
        gamma: int = DEFAULT_GAMMA,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        student_temperature: float = 1.0,
        chunk_size: int | None = DEFAULT_PRIME_CHUNK,
        proposal: Proposal | None = None,
        restage: bool = False,
        on_logits: LogitsHook | None = None,
    ) -> None:
        if gamma < 1:
            raise ConfigError(f"gamma (drafts per teacher pass) must be >= 1, got {gamma}")
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
            proposal = make_proposal(student, student_temperature, restage=restage)
        self.prior = prior.eval()
        self.proposal = proposal
        self.gamma = int(gamma)
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.chunk_size = chunk_size
        self.on_logits = on_logits
        self.n_ctx = prior.cfg.n_ctx
        self.stats = SpeculativeStats()
        kinds = set(prior.cfg.transformer.kinds)
        tr = prior.cfg.transformer
        # row / previous-row caches hold one block: keep rewind targets inside one block
        self.block_ctx = tr.block_ctx if kinds & {AttnKind.ROW, AttnKind.PREV_ROW} else None

    # -- the accept rule (overridable: tests break it on purpose) -----------------------------

    def accept_probability(self, p_draft: Tensor, q_draft: Tensor) -> Tensor:
        """``min(1, p(d) / q(d))`` for the drafts' probabilities ``Tensor[B, g]``."""
        return (p_draft / q_draft.clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)

    def residual(self, p: Tensor, q: Tensor) -> Tensor:
        """Where a rejected token is redrawn from: ``norm(max(0, p − q))`` (unnormalised here),
        ``Tensor[B, V]``."""
        return (p - q).clamp_min(0.0)

    # -- LevelSampler ---------------------------------------------------------------------------

    def draw(
        self, w: WindowInputs, generator: torch.Generator | None, progress: ProgressFn | None
    ) -> Tensor:
        """See :class:`~teacher.generate.sampler.LevelSampler`: ``LongTensor[B, length]`` whose
        first ``prefix.shape[1]`` codes are ``prefix``."""
        length, prefix, labels, upper = w.length, w.prefix, w.labels, w.upper
        cfg = self.prior.cfg
        if not 1 <= length <= cfg.n_ctx:
            raise ValueError(f"length must be in [1, n_ctx={cfg.n_ctx}], got {length}")
        if prefix.dim() != 2 or prefix.shape[1] >= length:
            raise ValueError(f"prefix must be (B, T0 < {length}), got {tuple(prefix.shape)}")
        if prefix.numel() and not bool(((prefix >= 0) & (prefix < cfg.l_bins)).all()):
            raise ValueError(f"prefix codes must be in [0, {cfg.l_bins})")
        with torch.inference_mode():
            out = self._window(length, prefix, labels, upper, generator, progress)
        return out.clone()  # a normal tensor again

    def _window(self, length, prefix, labels, upper, generator, progress) -> Tensor:
        prior, cfg, stats = self.prior, self.prior.cfg, self.stats
        core = prior.prior
        b, t0 = prefix.shape
        weight = core.x_emb.weight
        device, dtype = weight.device, weight.dtype
        cond = prior.condition(labels, upper).expand(b)
        n_lyr = cfg.n_tokens if cfg.single_sequence else 0
        shift = cfg.vocab_offset
        total = n_lyr + length
        if cond.x_cond is not None and cond.x_cond.shape[1] < total:
            raise ValueError(f"the conditioning covers {cond.x_cond.shape[1]} < {total} positions")

        codes = torch.zeros(b, length, dtype=torch.long, device=device)
        codes[:, :t0] = prefix.to(device)
        seq = torch.zeros(b, total, dtype=torch.long, device=device)  # the transformer's tokens
        if n_lyr:
            seq[:, :n_lyr] = cond.lyrics.to(device)
        seq[:, n_lyr : n_lyr + t0] = codes[:, :t0] + shift
        x_cond = None if cond.x_cond is None else cond.x_cond[:, :total].to(dtype)
        add = core.pos_emb()[:total].unsqueeze(0)
        add = add + x_cond if x_cond is not None else add.expand(b, -1, -1)
        out_cond = x_cond if core.add_cond_after_transformer else None
        start = core.start_embedding(cond.start, b).to(dtype)
        head = core.x_out.weight[shift:].float()  # music rows only
        transformer = core.transformer
        cache = transformer.new_cache(b, device=device, dtype=dtype)
        enc = cond.encoder_kv

        def inputs(lo: int, toks: Tensor) -> Tensor:
            """Inputs of positions lo … lo+n−1 given the tokens they read (positions lo−1 …):
            ``toks [B, n]`` is ``seq[lo−1 : lo+n−1]`` (its first column unused at lo = 0)."""
            x = core.x_emb(toks)
            if lo == 0:
                x = torch.cat([start, x[:, 1:]], dim=1)
            return x + add[:, lo : lo + toks.shape[1]]

        def prime(upto: int) -> None:
            cache.reset()
            step = self.chunk_size or upto
            for lo in range(0, upto, step):
                hi = min(lo + step, upto)
                toks = seq[:, max(lo - 1, 0) : hi - 1]
                if lo == 0:
                    toks = torch.cat([seq[:, :1], toks], dim=1)  # placeholder for the start
                transformer(inputs(lo, toks), encoder_kv=enc, cache=cache)
                stats.prime_passes += 1

        passes0 = self.proposal.passes
        self.proposal.begin(codes, t0, labels, upper, generator)
        if n_lyr + t0:
            prime(n_lyr + t0)
        m = t0
        while m < length:
            p0 = n_lyr + m  # cache.position: positions < p0 hold accepted inputs
            g = min(self.gamma, length - m)
            if self.block_ctx:
                g = min(g, self.block_ctx - (p0 + 1) % self.block_ctx)
            drafts, q = self.proposal.draft(codes, m, g, generator)
            g = drafts.shape[1]
            if not 1 <= g <= self.gamma or q.shape[:2] != drafts.shape:
                raise RuntimeError(f"the proposal returned {tuple(drafts.shape)} drafts")
            bonus = m + g < length
            n_in = g + 1 if bonus else g
            # ONE teacher pass: [x_{m-1}, d_m .. d_{m+n_in-2}] at positions p0 .. p0+n_in-1
            prev_tok = seq[:, p0 - 1 : p0] if p0 else seq[:, :1]
            toks = torch.cat([prev_tok, drafts[:, : n_in - 1] + shift], dim=1)
            h = transformer(inputs(p0, toks), encoder_kv=enc, cache=cache)
            if out_cond is not None:
                h = h + out_cond[:, p0 : p0 + n_in]
            logits = F.linear(h.float(), head)  # [B, n_in, V] fp32
            stats.teacher_passes += 1
            p = self._probs(logits)
            q = q.float()

            p_d = p[:, :g].gather(-1, drafts[..., None]).squeeze(-1)
            q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
            coin = _uniform((b, g), generator, device)
            ok = coin < self.accept_probability(p_d, q_d)  # [B, g]
            rejected = ~ok
            first = torch.where(rejected.any(1), rejected.float().argmax(1), g)  # per row
            s = int(first.min())  # lockstep: the round ends at the first rejection of any row
            new = drafts[:, : min(s + 1, g)].clone()
            if s < g:
                rej = first == s
                redraw = _categorical(self.residual(p[:, s], q[:, s]), p[:, s], generator)
                new[:, s] = torch.where(rej, redraw, drafts[:, s])
                stats.evaluated += b * (s + 1)
                stats.accepted += b * (s + 1) - int(rej.sum())
            else:
                stats.evaluated += b * g
                stats.accepted += b * g
                if bonus:  # every draft accepted: the teacher's last logits give one more
                    new = torch.cat([new, _categorical(p[:, g], None, generator)[:, None]], 1)
            n_new = new.shape[1]
            stats.drafted += b * g
            if self.on_logits is not None:
                for i in range(n_new):
                    self.on_logits(m + i, logits[:, i])
            codes[:, m : m + n_new] = new
            seq[:, p0 : p0 + n_new] = new + shift
            m += n_new
            stats.positions += n_new
            stats.tokens += b * n_new
            target = n_lyr + m
            if cache.position > target:
                if cache.can_rewind(target):
                    cache.rewind(target)  # forget the rejected drafts' keys/values
                else:  # not reached with the block clipping above; kept as a safe fallback
                    log.debug("re-priming at %d: the cache cannot rewind there", target)
                    stats.reprimes += 1
                    prime(target)
            if progress is not None:
                progress(m - t0, length - t0)
        stats.windows += 1
        stats.proposal_passes += self.proposal.passes - passes0
        return codes

    def _probs(self, logits: Tensor) -> Tensor:
        """The teacher's sampling distribution, as exact mode draws it: temperature, then the
        top-k / top-p filter, softmax in fp32."""
        z = logits / self.temperature
        if (0 < self.top_k < z.shape[-1]) or self.top_p > 0.0:
            z = filter_logits(z, self.top_k, self.top_p)
        return torch.softmax(z, dim=-1)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _categorical(
    weights: Tensor, fallback: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """One draw per row of ``weights / weights.sum()`` (``Tensor[B, V]``, >= 0) by Gumbel-max on
    the log weights; rows whose weights sum to 0 (p = q up to rounding) draw from ``fallback``."""
    if fallback is not None:
        empty = weights.sum(-1, keepdim=True) <= 0
        weights = torch.where(empty, fallback, weights)
    return _gumbel_draw(torch.log(weights), generator)


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
    "GaussianProposal",
    "Proposal",
    "SpeculativeSampler",
    "SpeculativeStats",
    "StudentDraw",
    "expected_tokens_per_pass",
    "make_proposal",
    "receptive_field",
    "student_labels",
    "student_sample",
]
