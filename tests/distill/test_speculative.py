"""Speculative sampling: the output distribution is the teacher's (chi-square against exact mode
and against the teacher's exact joint, on a 4-code teacher and 3-code windows), rows advancing
alone or in lockstep, and a broken accept rule is caught; a proposal equal to the teacher
accepts everything; the engine is primed once per window and rewound per row across block
boundaries with the teacher's logits unchanged; the measured tokens per pass follow
(1 − α^{γ+1})/(1 − α); ``gamma="auto"`` explores then chooses, and leaves to the teacher the
windows where drafting was measured slower (exactly exact mode's draws); the students' local
spans equal whole windows."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from distill import speculative
from distill.speculative import (
    DEFAULT_GAMMA,
    DEFAULT_PRIME_CHUNK,
    DEFAULT_WINDOW_GAMMA,
    GAMMA_TIE,
    CategoricalProposal,
    SpeculativeSampler,
    WindowCosts,
    WindowProposal,
    best_gamma,
    choose_draft,
    clear_window_costs,
    draft_student,
    draft_weight_ratio,
    expected_tokens_per_pass,
    ideal_speedup,
    parse_gamma,
    predicted_speedup,
    receptive_field,
    resolve_draft_dtype,
    student_sample,
    verify_cost_model,
)
from student.base import Student
from student.config import StageConfig, student_config_for
from teacher.config import ConfigError
from teacher.generate.engine import engine_for
from teacher.generate.sampler import ExactSampler
from teacher.presets import tiny_top_prior
from teacher.prior.config import PriorConfig, UpsamplerConditionerConfig
from teacher.prior.model import Prior
from teacher.prior.transformer import TransformerConfig

V, L = 4, 3  # codes, window length of the distribution tests: 64 joint outcomes
UPPER = torch.tensor([[2]])  # one upper code covers 4 positions >= L


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_window_costs()  # gamma="auto"'s measurements: each test starts without any
    yield
    torch.set_num_threads(n)


def _randomise(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "ln" in name and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
    return model.eval()


def upsampler_cfg(n_ctx=8, l_bins=V, attn_order=2, blocks=4, width=16) -> PriorConfig:
    return PriorConfig(
        level=1,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=width,
            depth=3,
            heads=1,
            n_ctx=n_ctx,
            attn_order=attn_order,
            blocks=blocks if attn_order else None,
        ),
        l_bins=l_bins,
        sample_rate=8000,
        conditioner=UpsamplerConditionerConfig(width=8, depth=1, dilation_cycle=1),
        merged_decoder=True,  # untied head: strong token inputs, moderate logits
    ).validate()


def make_prior(cfg: PriorConfig, seed: int = 2) -> Prior:
    """Random weights chosen so the 3-code joint is broad (max cell ~0.1, ~26 cells > 1%) and
    strongly context dependent (the next code's distribution moves with the previous one)."""
    prior = _randomise(Prior(cfg), seed, 0.1)
    with torch.no_grad():
        prior.prior.x_emb.weight.mul_(10.0)
        prior.prior.x_out.weight.mul_(3.5)
    return prior


def make_student(prior: Prior, family: str = "categorical", seed: int = 1) -> Student:
    kw = dict(code_dim=4, code_space="learned") if family == "gaussian" else {}
    cfg = student_config_for(
        prior.cfg, family=family, n_stages=2, stage=StageConfig(width=8, depth=2), **kw
    )
    return _randomise(Student.from_teacher(prior, cfg), seed, 0.3)


@pytest.fixture(scope="module")
def prior():
    return make_prior(upsampler_cfg())


@pytest.fixture(scope="module")
def students(prior):
    return {fam: make_student(prior, fam) for fam in ("categorical", "gaussian")}


def _empty(b: int) -> torch.Tensor:
    return torch.zeros(b, 0, dtype=torch.long)


def _index(codes: torch.Tensor) -> np.ndarray:
    """Each row of ``[N, L]`` codes -> its joint outcome ``0 … V^L − 1``."""
    return (codes * (V ** torch.arange(L - 1, -1, -1))).sum(1).numpy()


def _two_sample_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """Chi-square two-sample test over the joint outcomes (cells with < 10 draws pooled)."""
    ca, cb = (np.bincount(_index(x), minlength=V**L) for x in (a, b))
    keep = (ca + cb) >= 10
    table = np.stack([np.r_[ca[keep], ca[~keep].sum()], np.r_[cb[keep], cb[~keep].sum()]])
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table).pvalue)


def _joint(prior: Prior) -> np.ndarray:
    """The teacher's exact joint over the V^L windows, by teacher forcing all of them."""
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    with torch.no_grad():
        logp = prior.logits(seqs, upper=UPPER.expand(len(seqs), -1)).log_softmax(-1)
    return logp.gather(-1, seqs[..., None])[..., 0].sum(-1).exp().double().numpy()


def _goodness_p(codes: torch.Tensor, joint: np.ndarray) -> float:
    """One-sample chi-square against the exact joint (cells expecting < 5 pooled)."""
    obs = np.bincount(_index(codes), minlength=V**L)
    exp = joint / joint.sum() * len(codes)
    keep = exp >= 5
    return float(
        chisquare(np.r_[obs[keep], obs[~keep].sum()], np.r_[exp[keep], exp[~keep].sum()]).pvalue
    )


def _speculative(sampler, n: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [
        sampler.sample_window(L, _empty(batch), None, UPPER.expand(batch, -1), g)
        for _ in range(n // batch)
    ]
    return torch.cat(rows)


@pytest.fixture(scope="module")
def exact_codes(prior):
    g = torch.Generator().manual_seed(0)
    n = 4000
    return ExactSampler(prior).sample_window(L, _empty(n), None, UPPER.expand(n, -1), g)


# ---------------------------------------------------------------------------------------------
# the distribution


def test_teacher_distribution_is_broad_and_exact_mode_matches_it(prior, exact_codes):
    joint = _joint(prior)
    assert abs(joint.sum() - 1) < 1e-5 and joint.max() < 0.15 and (joint > 0.01).sum() >= 20
    assert _goodness_p(exact_codes, joint) > 0.01  # the reference sampler itself


@pytest.mark.parametrize(
    "family, draft, lockstep",
    [
        ("categorical", "incremental", False),
        ("categorical", "incremental", True),
        ("categorical", "window", False),
        ("gaussian", "auto", False),
    ],
)
def test_speculative_samples_the_teacher_distribution(
    prior, students, exact_codes, family, draft, lockstep
):
    """4000 windows in batches of 500: every row advances on its own (its own position, rewinds
    and bonus tokens) — or, as priors with prime / summary layers need, the rows in lockstep
    (a round ends at the first rejection of any row); categorical drafts stepped per draft or
    read from one student sample per window."""
    sp = SpeculativeSampler(prior, students[family], gamma=2, draft=draft)
    assert sp.draft == ("incremental" if family == "gaussian" else draft)
    engine = engine_for(prior, 500)
    engine.rows_together = lockstep
    try:
        codes = _speculative(sp, 4000, 500, seed=1)
    finally:
        engine.rows_together = False
    p_two, p_fit = _two_sample_p(exact_codes, codes), _goodness_p(codes, _joint(prior))
    assert p_two > 0.01 and p_fit > 0.01, (p_two, p_fit)
    st = sp.stats
    assert 0.3 < st.acceptance_rate < 0.95  # the student is a real, imperfect proposal
    assert st.evaluated > st.accepted > 0 and st.tokens == 4000 * L
    if not lockstep:  # rows that advance alone need fewer row passes than lockstep ones
        assert st.tokens_per_pass > 1.3


@pytest.mark.parametrize("draft", ["incremental", "window"])
def test_speculative_one_row_at_a_time_uses_multi_token_rounds(prior, students, exact_codes, draft):
    """Batch 1: rounds accept several drafts and end with a redraw or a bonus token."""
    sp = SpeculativeSampler(prior, students["categorical"], gamma=2, draft=draft)
    codes = _speculative(sp, 1500, 1, seed=2)
    p_two, p_fit = _two_sample_p(exact_codes, codes), _goodness_p(codes, _joint(prior))
    assert p_two > 0.01 and p_fit > 0.01, (p_two, p_fit)
    assert sp.stats.tokens_per_pass > 1.3  # > 1 token per teacher pass on average


# the rule's inputs are tensors on the device path, numpy arrays on the CPU's host path:
# written with the operations both have
class AlwaysAccept(SpeculativeSampler):
    def accept_probability(self, p_draft, q_draft):
        return p_draft * 0 + 1


class InvertedRatio(SpeculativeSampler):
    def accept_probability(self, p_draft, q_draft):
        return (q_draft / p_draft).clip(max=1.0)


@pytest.mark.parametrize("broken", [AlwaysAccept, InvertedRatio])
def test_a_broken_accept_rule_is_detected(prior, students, exact_codes, broken):
    sp = broken(prior, students["categorical"], gamma=2, draft="incremental")
    codes = _speculative(sp, 4000, 500, seed=1)
    p_two, p_fit = _two_sample_p(exact_codes, codes), _goodness_p(codes, _joint(prior))
    assert p_two < 1e-3 and p_fit < 1e-3, (p_two, p_fit)


@pytest.mark.parametrize("draft", ["incremental", "window"])
@pytest.mark.parametrize("batch, n_prefix, lockstep", [(1, 0, False), (3, 5, False), (3, 2, True)])
def test_the_host_accept_step_makes_the_device_paths_draws(
    long_prior, draft, batch, n_prefix, lockstep
):
    """A few rows on a CPU accept on the host (numpy): from the same uniforms it draws exactly
    what the device path draws (so the chi-square tests of the device path cover it), rows apart
    or in lockstep, rejections, residual draws and bonus tokens included."""
    student = make_student(long_prior, seed=4)
    g = torch.Generator().manual_seed(9)
    upper = torch.randint(8, (batch, 8), generator=g)
    prefix = torch.randint(8, (batch, n_prefix), generator=g)
    outs, stats = [], []
    engine = engine_for(long_prior, batch)
    engine.rows_together = lockstep
    try:
        for rows in (batch, 0):  # the host path, then the device path
            sp = SpeculativeSampler(long_prior, student, gamma=3, draft=draft, top_k=6)
            sp.host_accept_rows = rows
            g = torch.Generator().manual_seed(11)
            outs.append(sp.sample_window(32, prefix, None, upper, g))
            stats.append(sp.stats)
    finally:
        engine.rows_together = False
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][:, :n_prefix], prefix)
    host, device = stats
    assert (host.tokens, host.accepted, host.evaluated, host.rounds) == (
        device.tokens,
        device.accepted,
        device.evaluated,
        device.rounds,
    )
    assert 0 < host.accepted < host.evaluated  # rejections and acceptances both happened
    if lockstep:  # every row advanced by the same count each round: none finished early
        assert host.row_passes == host.rounds * batch


# ---------------------------------------------------------------------------------------------
# the teacher's side: passes, cache, rewinds


class TeacherProposal:
    """Drafts from the teacher itself (full teacher-forced passes): q = p, so every draft is
    accepted (up to float rounding between the cached chunk and the full pass)."""

    def __init__(self, prior: Prior, temperature: float = 1.0):
        self.prior, self.temperature, self.passes = prior, temperature, 0

    def begin(self, codes, n_known, labels, upper, generator):
        def row(x, r):
            return None if x is None else x[r : r + 1]

        self.conds = [
            self.prior.condition(row(labels, r), row(upper, r)) for r in range(codes.shape[0])
        ]

    def draft(self, codes, m, gamma, generator):
        toks, probs = [], []
        for r, mr in enumerate(m):
            seq = codes[r : r + 1, :mr]
            cond = self.conds[r]
            tr, pr = [], []
            for _ in range(gamma):
                step = torch.cat([seq, seq.new_zeros(1, 1)], 1)
                if step.shape[1] > self.prior.cfg.n_ctx:  # a finished row: any draft
                    q = torch.full((1, self.prior.cfg.l_bins), 1.0 / self.prior.cfg.l_bins)
                else:
                    q = (self.prior.logits(step, cond=cond)[:, -1] / self.temperature).softmax(-1)
                d = torch.multinomial(q, 1, generator=generator)
                tr.append(d)
                pr.append(q)
                seq = torch.cat([seq, d], 1)
            toks.append(torch.cat(tr, 1))
            probs.append(torch.stack(pr, 1))
        self.passes += gamma
        return torch.cat(toks), torch.cat(probs)


class UniformProposal:
    """q uniform: accepts by chance only (many rejections, rewinds everywhere)."""

    passes = 0

    def begin(self, codes, n_known, labels, upper, generator):
        pass

    def draft(self, codes, m, gamma, generator):
        b, v = codes.shape[0], self.v
        q = torch.full((b, gamma, v), 1.0 / v)
        return torch.randint(v, (b, gamma), generator=generator), q

    def __init__(self, v: int):
        self.v = v


@pytest.fixture(scope="module")
def long_prior():
    """32-code windows, 8 codes, blocks of 8: row, column and previous-row layers."""
    return make_prior(upsampler_cfg(n_ctx=32, l_bins=8, attn_order=2, blocks=4), seed=3)


def test_a_proposal_equal_to_the_teacher_is_always_accepted(long_prior):
    b, length, gamma = 2, 32, 3
    sp = SpeculativeSampler(long_prior, proposal=TeacherProposal(long_prior), gamma=gamma)
    engine = engine_for(long_prior, b)
    calls0 = engine.calls
    g = torch.Generator().manual_seed(0)
    upper = torch.randint(8, (b, 8), generator=g)
    out = sp.sample_window(length, _empty(b), None, upper, g)
    st = sp.stats
    assert out.shape == (b, length)
    assert st.acceptance_rate >= 0.999 and st.prime_passes == 0
    # one call of the engine per round, every call a verification (no prefix to prime)
    assert engine.calls - calls0 == st.teacher_passes == st.rounds
    # all accepted: a round gives its drafts + the bonus (γ + 1) across block boundaries too
    assert st.tokens_per_pass == gamma + 1 and st.rounds == length / (gamma + 1)


@pytest.mark.parametrize(
    "attn_order, gamma, n_prefix, top_k",
    [(2, 3, 0, 0), (2, 6, 5, 0), (2, 7, 13, 3), (2, 8, 3, 0), (0, 5, 4, 0)],
)
def test_rewinds_across_blocks_keep_the_teachers_logits(
    long_prior, attn_order, gamma, n_prefix, top_k
):
    """The logits each produced code was verified with equal the teacher-forced logits of the
    final window, row by row: rewinds after rejections (rows at different positions), block
    boundaries and the bonus positions are all consistent. The cache is primed once (prefix)."""
    prior = long_prior
    if attn_order == 0:
        prior = make_prior(upsampler_cfg(n_ctx=32, l_bins=8, attn_order=0), seed=4)
    seen = {}
    sp = SpeculativeSampler(
        prior,
        proposal=UniformProposal(8),
        gamma=gamma,
        top_k=top_k,
        temperature=0.9,
        chunk_size=3,
        on_logits=lambda r, t, z: seen.__setitem__((r, t), z.clone()),
    )
    b = 3
    g = torch.Generator().manual_seed(attn_order * 100 + gamma)
    upper = torch.randint(8, (b, 8), generator=g)
    prefix = torch.randint(8, (b, n_prefix), generator=g)
    engine = engine_for(prior, b)
    calls0 = engine.calls
    out = sp.sample_window(32, prefix, None, upper, g)
    assert torch.equal(out[:, :n_prefix], prefix)
    with torch.no_grad():
        want = prior.logits(out, upper=upper)
    assert sorted(seen) == [(r, t) for r in range(b) for t in range(n_prefix, 32)]
    for (r, t), z in seen.items():
        torch.testing.assert_close(z, want[r, t], atol=1e-4, rtol=1e-4)
    st = sp.stats
    assert st.evaluated > st.accepted  # rejections (and rewinds) happened
    assert st.prime_passes == -(-n_prefix // 3)  # chunks of 3, once
    assert engine.calls - calls0 == st.prime_passes + st.teacher_passes
    assert max(st.gammas) <= gamma
    # one call per round, or two when γ + 1 queries exceed a block (8)
    assert st.teacher_passes == st.rounds + (st.gammas.get(8, 0) if attn_order else 0)
    if top_k:
        # codes outside the teacher's top-k are never produced
        ranks = want.argsort(-1, descending=True).argsort(-1).gather(-1, out[..., None])[..., 0]
        assert int(ranks[:, n_prefix:].max()) < top_k


@pytest.mark.parametrize("lyrics", ["single", "encoder"])
def test_lyric_top_priors_verify_with_the_exact_logits(lyrics):
    """The verifier handles the single-sequence layout (lyrics first, shifted vocabulary, prime
    layers) and cross-attention to encoded lyrics."""
    cfg = tiny_top_prior(lyrics)
    prior = _randomise(Prior(cfg), seed=5, scale=0.15)
    g = torch.Generator().manual_seed(0)
    lyr = torch.randint(1, cfg.lyrics.n_vocab, (1, cfg.n_tokens), generator=g)
    labels = torch.cat([torch.tensor([[8000 * 3, 0, cfg.sample_length, 1, 2, -1]]), lyr], 1)
    seen = {}
    sp = SpeculativeSampler(
        prior,
        proposal=UniformProposal(cfg.l_bins),
        gamma=4,
        on_logits=lambda r, t, z: seen.__setitem__((r, t), z),
    )
    b = 2  # prime layers: the rows advance in lockstep
    prefix = torch.randint(cfg.l_bins, (b, 3), generator=g)
    labels = labels.expand(b, -1)
    out = sp.sample_window(20, prefix, labels, None, g)
    with torch.no_grad():
        want = prior.logits(out, labels=labels)
    for (r, t), z in seen.items():
        torch.testing.assert_close(z, want[r, t], atol=1e-4, rtol=1e-4)
    assert sorted(seen) == [(r, t) for r in range(b) for t in range(3, 20)]


# ---------------------------------------------------------------------------------------------
# acceptance statistics


class FixedProposal:
    """The same q at every position: against a uniform teacher each draft is accepted with
    probability α = Σ min(1/V, q), independently."""

    passes = 0

    def __init__(self, q: torch.Tensor):
        self.q = q

    def begin(self, codes, n_known, labels, upper, generator):
        pass

    def draft(self, codes, m, gamma, generator):
        q = self.q.expand(codes.shape[0], gamma, -1)
        return torch.multinomial(q.reshape(-1, q.shape[-1]), 1, generator=generator).view(
            q.shape[:2]
        ), q


def test_tokens_per_pass_follow_the_acceptance_formula():
    cfg = upsampler_cfg(n_ctx=128, attn_order=0)
    prior = make_prior(cfg)
    with torch.no_grad():
        prior.prior.x_out.weight.zero_()  # logits 0: the teacher is uniform
    q = torch.tensor([0.55, 0.15, 0.15, 0.15])
    alpha = float(torch.minimum(q, torch.full_like(q, 0.25)).sum())  # 0.7
    gamma = 3
    sp = SpeculativeSampler(prior, proposal=FixedProposal(q), gamma=gamma)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        sp.sample_window(128, _empty(1), None, torch.zeros(1, 32, dtype=torch.long), g)
    st = sp.stats
    assert abs(st.acceptance_rate - alpha) < 0.03, st.to_dict()
    want = expected_tokens_per_pass(alpha, gamma)  # 2.53
    # the last round of a window is cut at its end: slightly fewer tokens than the formula
    assert want * 0.93 < st.tokens_per_pass < want * 1.03, (st.tokens_per_pass, want)
    assert expected_tokens_per_pass(1.0, gamma) == gamma + 1
    assert expected_tokens_per_pass(0.0, gamma) == 1.0


def test_best_gamma_trades_acceptance_against_the_cost_of_a_round():
    def flat(n: int) -> float:  # a call costs the same whatever its queries (launch bound)
        return 1.0

    def rate(alpha: float, draft: float, g: int) -> float:
        return expected_tokens_per_pass(alpha, g) / (g * draft + flat(g + 1))

    # cheap drafts and a confident student: long rounds pay
    assert best_gamma(0.9, 0.01, flat, 0.0, 12) >= 8
    # one draft pays (1.5 codes for 1.4 calls), a second does not (1.75 for 1.8)
    assert best_gamma(0.5, 0.4, flat, 0.0, 12) == 1
    # a poor student, or drafts as costly as a verification: the teacher alone (γ = 0: one
    # code a call) beats every round with drafts
    assert best_gamma(0.1, 0.3, flat, 0.0, 12) == 0
    assert best_gamma(0.5, 1.0, flat, 0.0, 12) == 0
    # free drafts, α = 0.65: the predicted rate still grows to γ = 12, by 3% from γ = 8; the
    # shortest γ within GAMMA_TIE of the best is taken
    g = best_gamma(0.65, 0.0, flat, 0.0, 12)
    best = max(rate(0.65, 0.0, k) for k in range(13))
    assert g < 12 and rate(0.65, 0.0, g) >= (1 - GAMMA_TIE) * best > rate(0.65, 0.0, g - 1)
    # the predicted speedup is tokens per round over the round's cost in exact steps
    assert predicted_speedup(0.0, 3, 0.0, 1.0, 0.0, 1.0) == 1.0
    assert abs(predicted_speedup(0.8, 4, 0.1, 1.0, 0.0, 1.0) - 3.3616 / 1.4) < 1e-9


def test_the_verify_cost_model_weighs_counts_by_their_calls():
    """γ auto's cost of a verification: a line through the measured counts, each weighted by its
    calls, so one slow call at a new count does not tilt it (the sampler also drops the first
    call at every count: a warm-up)."""
    model = verify_cost_model({3: (3.0, 1), 5: (200 * 1.0, 200), 9: (200 * 1.4, 200)})
    assert model(5) == pytest.approx(1.0, rel=0.05) and model(9) == pytest.approx(1.4, rel=0.05)
    assert model(13) > model(9)  # extrapolates along the slope
    flat = verify_cost_model({3: (2.0, 2), 7: (1.0, 2)})  # cheaper with more queries: noise
    assert flat(3) == flat(13) == pytest.approx(0.75)
    assert verify_cost_model({5: (0.5, 1)})(12) == 0.5 and verify_cost_model({})(4) == 1.0


def test_the_ideal_speedup_bounds_every_round_of_a_given_draft_cost():
    # free drafts: the best γ is the longest and the bound is its tokens per pass
    assert ideal_speedup(0.8, 0.0, max_gamma=8) == expected_tokens_per_pass(0.8, 8)
    # drafts at half a step, α = 0.5: γ = 1 gives 1.5 / 1.5, γ = 2 1.75 / 2: exactly break-even
    assert abs(ideal_speedup(0.5, 0.5) - 1.0) < 1e-12
    # the shipped demo pair on a CPU (bench_distill (b2)): drafts at 0.75 of a step never pay
    # at the middle's acceptance, whatever γ; a 20x cheaper draft would pay 3x
    assert ideal_speedup(0.64, 0.75) < 1.0
    assert ideal_speedup(0.82, 0.05) > 3.0
    # no real round beats it: any γ, any verify >= one step, any accept cost
    for g in range(1, 9):
        assert predicted_speedup(0.7, g, 0.3, 1.2, 0.1, 1.0) < ideal_speedup(0.7, 0.3)


def _auto_sampler_recording_logits(prior: Prior) -> tuple[SpeculativeSampler, dict]:
    """A ``gamma="auto"`` sampler with uniform drafts, and the teacher's logits it reports
    per (row, position)."""
    seen = {}
    sp = SpeculativeSampler(
        prior,
        proposal=UniformProposal(8),
        gamma="auto",
        on_logits=lambda r, t, z: seen.__setitem__((r, t), z.clone()),
    )
    return sp, seen


def test_auto_gamma_explores_then_chooses_and_stays_exact(long_prior):
    """``gamma="auto"``: γ = 2 then 6 for six rounds each, then the measured best in 0 … 8 (the
    prior's block); the teacher's logits of every code are still exact."""
    sp, seen = _auto_sampler_recording_logits(long_prior)
    g = torch.Generator().manual_seed(5)
    upper = torch.randint(8, (2, 8), generator=g)
    out = sp.sample_window(32, _empty(2), None, upper, g)
    with torch.no_grad():
        want = long_prior.logits(out, upper=upper)
    for (r, t), z in seen.items():
        torch.testing.assert_close(z, want[r, t], atol=1e-4, rtol=1e-4)
    st = sp.stats
    assert st.gammas.get(2, 0) >= 6 and st.gammas.get(6, 0) >= 1  # (and clipped at the end)
    assert set(st.seconds) == {"proposal", "draft", "verify", "accept", "rewind"}
    assert st.rounds > 12 and 0 <= sp.gamma <= 8


def test_auto_leaves_to_the_teacher_the_windows_where_drafting_was_slower(long_prior, caplog):
    """``gamma="auto"``: the teacher's step is probed and the first window at a batch size is
    drafted and measured; once the teacher's steps are faster per code, a window is sampled as
    exact mode samples it — the same codes from the same generator, the teacher's logits
    reported — and faster drafting brings the drafts back. Each batch size keeps its own
    measurements."""
    sp, seen = _auto_sampler_recording_logits(long_prior)
    b = 2
    g = torch.Generator().manual_seed(5)
    upper = torch.randint(8, (b, 8), generator=g)
    prefix = torch.randint(8, (b, 5), generator=g)
    costs = sp.costs(b)
    assert costs == WindowCosts() and costs.speculate()  # nothing measured: draft, to measure
    sp.sample_window(32, _empty(b), None, upper, g)
    assert sp.stats.exact_windows == 0 and costs.speculative > 0 and costs.exact > 0

    costs.speculative = 2 * costs.exact  # drafting measured slower than the teacher's steps
    codes0 = sp.stats.exact_codes  # (the rounds may have lost to the probe: module docs)
    with caplog.at_level("INFO", logger="distill.speculative"):
        out = sp.sample_window(32, prefix, None, upper, torch.Generator().manual_seed(9))
    assert "batch 2: drafting measured" in caplog.text  # the user is told why, once
    assert "windows left to the teacher alone" in caplog.text
    exact = ExactSampler(long_prior, chunk_size=DEFAULT_PRIME_CHUNK)
    want = exact.sample_window(32, prefix, None, upper, torch.Generator().manual_seed(9))
    assert torch.equal(out, want) and not out.is_inference()  # a normal tensor, as drafted ones
    st = sp.stats
    assert (st.windows, st.exact_windows, st.exact_codes - codes0) == (2, 1, b * 27)
    assert costs.exact > 0 and not costs.speculate()
    with torch.no_grad():
        logits = long_prior.logits(out, upper=upper)
    for r, t in itertools.product(range(b), range(5, 32)):
        torch.testing.assert_close(seen[r, t], logits[r, t], atol=1e-4, rtol=1e-4)

    assert sp.costs(3) == WindowCosts() and sp.costs(b) is costs
    costs.speculative = 0.0  # drafting measured faster: drafted again
    caplog.clear()
    with caplog.at_level("INFO", logger="distill.speculative"):
        sp.sample_window(32, _empty(b), None, upper, g)
    assert (st.windows, st.exact_windows) == (3, 1) and costs.speculative > 0
    assert "windows drafted" in caplog.text


def test_auto_finishes_a_window_exactly_once_its_rounds_lose(long_prior):
    """``gamma="auto"``: once a window's rounds are measured slower than the teacher's steps,
    the rows behind step alone to the front row's position (the rows there wait, their draws
    discarded), then the teacher finishes the window alone; every code's logits are still the
    teacher's, and every code is counted once."""
    sp, seen = _auto_sampler_recording_logits(long_prior)
    b, length = 3, 32
    costs = sp.costs(b)
    costs.exact = 1e-12  # the teacher's steps measured (nearly) free: the rounds lose
    g = torch.Generator().manual_seed(2)
    upper = torch.randint(8, (b, 8), generator=g)
    shown = []
    out = sp.sample_window(length, _empty(b), None, upper, g, lambda d, t: shown.append((d, t)))
    assert shown[-1] == (length, length) and all(x[0] <= y[0] for x, y in itertools.pairwise(shown))
    st = sp.stats
    first = 2 * 6  # the exploration's rounds (AUTO_START, AUTO_ROUNDS)
    assert st.exact_windows == 0 and st.windows == 1
    assert first <= st.rounds and 0 < st.exact_codes < b * length
    assert st.tokens + st.exact_codes == b * length  # each code made once, all rows
    assert st.gammas.get(0, 0) >= 1 or st.tokens % b == 0  # rows behind caught up alone
    with torch.no_grad():
        logits = long_prior.logits(out, upper=upper)
    for r, t in itertools.product(range(b), range(length)):
        torch.testing.assert_close(seen[r, t], logits[r, t], atol=1e-4, rtol=1e-4)


def test_auto_windows_finished_exactly_keep_the_teachers_distribution(
    prior, students, exact_codes, monkeypatch
):
    """4000 windows of 4 codes (their first 3 tested: the same joint) in batches of 500, each
    judged after one round of γ = 1: the rows brought to the front row's position (the rows
    behind step alone), then the teacher finishes alone."""
    monkeypatch.setattr(speculative, "AUTO_START", (1,))
    monkeypatch.setattr(speculative, "AUTO_ROUNDS", 1)
    sp = SpeculativeSampler(prior, students["categorical"], gamma="auto", draft="window")
    g = torch.Generator().manual_seed(4)
    rows = []
    for _ in range(8):
        costs = sp.costs(500)
        costs.exact, costs.speculative = 1e-12, None  # draft, then lose to the teacher
        rows.append(sp.sample_window(L + 1, _empty(500), None, UPPER.expand(500, -1), g))
    codes = torch.cat(rows)[:, :L]
    p_two, p_fit = _two_sample_p(exact_codes, codes), _goodness_p(codes, _joint(prior))
    assert p_two > 0.01 and p_fit > 0.01, (p_two, p_fit)
    st = sp.stats
    assert st.rounds > 8 and st.gammas.get(0, 0) >= 8 and st.exact_windows == 0
    assert st.tokens + st.exact_codes == 4000 * (L + 1)


def test_auto_windows_drafted_or_not_keep_the_teachers_distribution(prior, students, exact_codes):
    """4000 windows in batches of 500 under ``gamma="auto"``, every other batch left to the
    teacher alone (the measurements set so) and γ chosen as measured (0 included)."""
    sp = SpeculativeSampler(prior, students["categorical"], gamma="auto", draft="window")
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(8):
        costs = sp.costs(500)
        if i:
            costs.speculative, costs.exact = (1.0, 0.5) if i % 2 else (0.5, 1.0)
        rows.append(sp.sample_window(L, _empty(500), None, UPPER.expand(500, -1), g))
    codes = torch.cat(rows)
    p_two, p_fit = _two_sample_p(exact_codes, codes), _goodness_p(codes, _joint(prior))
    assert p_two > 0.01 and p_fit > 0.01, (p_two, p_fit)
    assert sp.stats.exact_windows == 4 and sp.stats.tokens == 4 * 500 * L


# ---------------------------------------------------------------------------------------------
# the students' spans and the proposals


@pytest.mark.parametrize("family", ["categorical", "gaussian"])
def test_a_local_span_with_the_prefix_forced_equals_the_whole_window(long_prior, family):
    """What makes drafting cheap: stage outputs at t >= m read only the RF codes before t, the
    prefix being forced at every stage."""
    student = make_student(long_prior, family, seed=7)
    rf = receptive_field(student)
    g = torch.Generator().manual_seed(0)
    b, length, m = 2, 32, 20
    upper = torch.randint(8, (b, 8), generator=g)
    codes = torch.randint(8, (b, length), generator=g)
    with torch.no_grad():
        cond = student.condition(upper)
        noise = student.make_noise(b, length, generator=g)
        whole = student_sample(student, cond, codes[:, :m], noise=noise)
        assert torch.equal(whole.codes[:, :m], codes[:, :m])
        s0 = m - rf
        local = student_sample(student, cond[:, s0:], codes[:, s0:m], noise=noise[:, s0:])
        short = student_sample(
            student, cond[:, s0 + 1 :], codes[:, s0 + 1 : m], noise=noise[:, s0 + 1 :]
        )
    torch.testing.assert_close(local.logits[:, m - s0 :], whole.logits[:, m:])
    assert torch.equal(local.codes[:, m - s0 :], whole.codes[:, m:])
    assert not torch.allclose(short.logits[:, m - s0 - 1 :], whole.logits[:, m:])  # RF is tight
    assert whole.passes == student.n_passes


def _draft_setup(prior: Prior, cls, n: int = 3000):
    """A categorical student's proposal of class ``cls`` at temperature 0.8, and ``n`` rows of
    the same 32 codes and upper codes (the same prefix: the same q in every row right after it)."""
    student = make_student(prior, "categorical", seed=8)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(8, (1, 32), generator=g).expand(n, -1).clone()
    upper = torch.randint(8, (1, 8), generator=g).expand(n, -1)
    return student, cls(student, temperature=0.8), g, codes, upper


def _assert_draws_follow(draws: torch.Tensor, q: torch.Tensor) -> None:
    """``draws`` ``LongTensor[n]`` follow the distribution ``q`` ``Tensor[V]`` (chi-square over
    the codes expecting >= 5 draws)."""
    n = len(draws)
    freq = np.bincount(draws.numpy(), minlength=len(q))
    qn = q.double().numpy()
    keep = qn * n >= 5
    obs, exp = freq[keep], qn[keep] * n
    assert chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 0.01


def test_categorical_drafts_are_draws_from_their_q(long_prior):
    """The proposal's q is the final stage on the accepted prefix, and the drafts are Gumbel-max
    draws from it: over many draws their frequencies follow q."""
    student, prop, g, codes, upper = _draft_setup(long_prior, CategoricalProposal)
    n = len(codes)
    with torch.no_grad():
        prop.begin(codes, 10, None, upper, g)  # the same prefix: the same q in every row
        d, q = prop.draft(codes, [10] * n, 1, g)
    assert torch.allclose(q[0], q[-1]) and d.shape == (n, 1) and prop.passes == 1 + 1
    _assert_draws_follow(d[:, 0], q[0, 0])


def test_window_drafts_are_draws_from_their_q(long_prior):
    """A window proposal's drafts are its one student sample's codes and q its final stage's
    distribution: right after a shared prefix q is the same in every row and the drafts follow
    it; further on each row reads its own sample."""
    student, prop, g, codes, upper = _draft_setup(long_prior, WindowProposal)
    n = len(codes)
    with torch.no_grad():
        prop.begin(codes, 10, None, upper, g)
        d, q = prop.draft(codes, [10] * n, 3, g)
        cond = student.condition(upper)[:, :32]
        ref = student_sample(student, cond, codes[:, :10], torch.Generator().manual_seed(1), 0.8)
    assert prop.passes == student.n_passes and d.shape == (n, 3) and q.shape == (n, 3, 8)
    s0 = 10 - prop.rf  # the sample starts one receptive field before the first new position
    assert 0 < s0 and torch.equal(prop.tokens[:, s0:10], codes[:, s0:10])
    assert torch.equal(d, prop.tokens[:, 10:13])
    assert torch.allclose(q[0, 0], q[-1, 0]) and not torch.allclose(q[0, 2], q[-1, 2])
    # the same distribution at position 10 as any other sample of the student there
    assert torch.allclose(q[0, 0], torch.softmax(ref.logits[0, 10] / 0.8, -1), atol=1e-6)
    _assert_draws_follow(d[:, 0], q[0, 0])
    # rows at their own positions read their own columns
    d2, q2 = prop.draft(codes, [10, 12, 20], 2, g)
    assert torch.equal(d2[1], prop.tokens[1, 12:14]) and torch.equal(d2[2], prop.tokens[2, 20:22])


def test_auto_drafts_by_window_when_a_draft_step_costs_like_a_teacher_step(prior, students):
    small = make_student(prior, "categorical")  # the fixtures' pair: 0.32 of a teacher step
    assert 0.25 < draft_weight_ratio(prior, small) < 0.4
    assert choose_draft(prior, small) == "window"
    cfg = student_config_for(
        prior.cfg, family="categorical", n_stages=2, stage=StageConfig(width=2, depth=1)
    )
    tiny = Student.from_teacher(prior, cfg)
    assert draft_weight_ratio(prior, tiny) < 0.05 and choose_draft(prior, tiny) == "incremental"
    assert choose_draft(prior, small, "incremental") == "incremental"
    assert SpeculativeSampler(prior, tiny).draft == "incremental"
    assert isinstance(SpeculativeSampler(prior, small).proposal, WindowProposal)
    with pytest.raises(ConfigError, match="draft must be one of"):
        choose_draft(prior, small, "fast")
    with pytest.raises(ConfigError, match="categorical"):
        SpeculativeSampler(prior, students["gaussian"], draft="window")


def test_gamma_defaults_to_the_drafts_own(prior, students):
    """Window drafts cost nothing per round: their default γ is longer (6) than incremental
    drafts' (4), whose every draft is a student step."""
    small = students["categorical"]
    assert SpeculativeSampler(prior, small, draft="window").gamma == DEFAULT_WINDOW_GAMMA == 6
    assert SpeculativeSampler(prior, small, draft="incremental").gamma == DEFAULT_GAMMA == 4
    assert SpeculativeSampler(prior, students["gaussian"]).gamma == 4
    assert SpeculativeSampler(prior, small, gamma=3, draft="window").gamma == 3


def test_students_draft_in_bf16_where_the_device_multiplies_it_natively(
    prior, students, exact_codes, monkeypatch
):
    """``draft_dtype="auto"``: an fp32 student drafts through a bf16 copy where native bf16
    products pay (window drafts on AMX CPUs; CUDA), made once and remade when the weights
    change; the samples stay the teacher's (chi-square), only the acceptance may move."""
    import distill.speculative as spec

    student = make_student(prior, seed=7)
    for native, want in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(spec, "native_bf16", lambda device, native=native: native)
        assert resolve_draft_dtype(student, "auto") == want
        assert SpeculativeSampler(prior, student, draft="window").draft_dtype == want
        # one incremental column at a time on a CPU: fp32 (bf16 does not pay there)
        assert resolve_draft_dtype(student, "auto", "incremental") == torch.float32
        assert SpeculativeSampler(prior, student, draft="incremental").draft_dtype == torch.float32
    assert resolve_draft_dtype(student, "keep") == torch.float32
    assert resolve_draft_dtype(student, "float16") == torch.float16
    assert resolve_draft_dtype(student.to(torch.float16), "auto") == torch.float16
    student.float()
    assert draft_student(student, torch.float32) is student
    half = draft_student(student, torch.bfloat16)
    assert half is draft_student(student, torch.bfloat16)  # kept
    assert next(half.parameters()).dtype == torch.bfloat16 and not half.training
    with torch.no_grad():
        next(student.parameters()).add_(1.0)  # the weights changed: a new copy
    fresh = draft_student(student, torch.bfloat16)
    assert fresh is not half
    torch.testing.assert_close(
        next(fresh.parameters()).float(), next(student.parameters()), atol=0.02, rtol=0.01
    )
    with torch.inference_mode():  # made here: no version counters, still drafts
        frozen = make_student(prior, seed=7)
    assert draft_student(frozen, torch.bfloat16) is not draft_student(frozen, torch.bfloat16)
    for draft in ("window", "incremental"):  # (bf16 incremental drafts: CUDA's default)
        sp = SpeculativeSampler(
            prior, students["categorical"], gamma=2, draft=draft, draft_dtype="bfloat16"
        )
        assert next(sp.proposal.student.parameters()).dtype == torch.bfloat16
        codes = _speculative(sp, 4000, 500, seed=3)
        p_two, p_fit = _two_sample_p(exact_codes, codes), _goodness_p(codes, _joint(prior))
        assert p_two > 0.01 and p_fit > 0.01, (draft, p_two, p_fit)
        assert 0.3 < sp.stats.acceptance_rate < 0.95


def test_bad_settings_are_clear_errors(prior, students, long_prior):
    with pytest.raises(ConfigError, match="gamma"):
        SpeculativeSampler(prior, students["categorical"], gamma=0)
    with pytest.raises(ConfigError, match="gamma"):
        SpeculativeSampler(prior, students["categorical"], gamma="fast")
    assert parse_gamma("auto") == "auto" and parse_gamma(" 7 ") == 7 and parse_gamma(3) == 3
    assert parse_gamma(None) is None  # the draft's default
    for bad in ("0", "2.5", 65, True):
        with pytest.raises(ConfigError, match="gamma must be"):
            parse_gamma(bad)
    with pytest.raises(ConfigError, match="at most 8"):  # blocks of 8: at most 8 drafts
        SpeculativeSampler(long_prior, proposal=UniformProposal(8), gamma=9).sample_window(
            32, _empty(1), None, torch.zeros(1, 8, dtype=torch.long)
        )
    with pytest.raises(ConfigError, match="needs a student"):
        SpeculativeSampler(prior)
    with pytest.raises(ConfigError, match="dtype"):
        SpeculativeSampler(prior, students["categorical"], draft_dtype="int8")
    with pytest.raises(ConfigError, match="bins"):
        SpeculativeSampler(long_prior, students["categorical"])  # 4-code student, 8-code prior
    other = make_prior(dataclasses.replace(upsampler_cfg(), level=0).validate())
    with pytest.raises(ConfigError, match="level"):
        SpeculativeSampler(other, students["categorical"])
    sp = SpeculativeSampler(prior, students["categorical"])
    with pytest.raises(ValueError, match="length"):
        sp.sample_window(9, _empty(1), None, torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="prefix"):
        sp.sample_window(3, torch.zeros(1, 3, dtype=torch.long), None, UPPER)
