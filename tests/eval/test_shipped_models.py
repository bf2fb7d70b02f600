"""The shipped demo models make music: issue 14's targets measured on held-out synth songs
(eval.demo.card, the same code that wrote the model card's numbers), and speculative sampling
on the shipped teacher/student pair still draws the teacher's distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from distill.speculative import SpeculativeSampler
from eval.demo.card import TARGETS, check_targets, measure
from eval.demo.pretrained import load_pretrained
from student.base import load_student
from teacher.generate.sampler import ExactSampler
from teacher.prior.model import Prior


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained()


@pytest.fixture(scope="module")
def numbers(shipped):
    return measure(
        shipped.teacher_dir,
        shipped.students_dir / "categorical",
        shipped.synth,
        n_clips=3,
        seconds=4.0,
        n_songs=2,
        modes=("exact", "accelerated"),
    )


@pytest.fixture(scope="module")
def verdicts(numbers):
    return check_targets(numbers)


#: targets the shipped models miss, with what they measure (MODEL_CARD.md would say why):
#: strict, so a better model that meets one fails here until it moves to the met ones. None
#: since the middle student's 13500 steps (0.216 nats/token after 6000, 0.183 now).
MISSED: dict[str, str] = {}


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=MISSED[t]))
        if t in MISSED
        else t
        for t in sorted(TARGETS)
    ],
)
def test_shipped_models_meet_their_targets(verdicts, target):
    met, shown = verdicts[target]
    assert met, f"{TARGETS[target]}: measured {shown}"


def _two_sample_p(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    ca, cb = np.bincount(a, minlength=bins), np.bincount(b, minlength=bins)
    keep = (ca + cb) >= 10
    table = np.stack([np.r_[ca[keep], ca[~keep].sum()], np.r_[cb[keep], cb[~keep].sum()]])
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table).pvalue)


@pytest.mark.parametrize("draft", ["incremental", "window"])
def test_speculative_draws_the_shipped_teachers_distribution(shipped, draft):
    """The middle level after a fixed 64-code prefix: the next three codes drawn 1600 times by
    exact and by speculative sampling (the shipped categorical student drafting, stepped or
    from one sample per window) agree, code by code (chi-square, cells under 10 pooled)."""
    prior = Prior.from_pretrained(shipped.teacher_dir / "middle")
    student = load_student(shipped.students_dir / "categorical" / "middle")
    cfg = prior.cfg
    g = torch.Generator().manual_seed(0)
    b, reps, t0, new = 200, 8, 64, 3
    upper = torch.randint(0, cfg.l_bins, (1, 32), generator=g).expand(b, -1)
    prefix = torch.randint(0, cfg.l_bins, (1, t0), generator=g).expand(b, -1)
    labels = None
    if cfg.labels is not None:
        size = 4 + cfg.labels.max_genres + cfg.n_tokens
        labels = torch.zeros(b, size, dtype=torch.long)
        labels[:, 0] = 10 * cfg.sample_rate  # a 10 s song, its first window
        labels[:, 2] = cfg.sample_length
        labels[:, 4 + 1 : 4 + cfg.labels.max_genres] = -1
    samplers = {
        "exact": ExactSampler(prior, temperature=0.99),
        "speculative": SpeculativeSampler(prior, student, gamma=2, temperature=0.99, draft=draft),
    }
    draws = {}
    for name, sampler in samplers.items():
        gen = torch.Generator().manual_seed(1 if name == "exact" else 2)
        out = [sampler.sample_window(t0 + new, prefix, labels, upper, gen) for _ in range(reps)]
        draws[name] = torch.cat(out)[:, t0:].numpy()
    st = samplers["speculative"].stats
    assert st.accepted > 0 and st.evaluated > st.accepted  # drafts accepted and rejected
    for j in range(new):
        p = _two_sample_p(draws["exact"][:, j], draws["speculative"][:, j], cfg.l_bins)
        assert p > 0.001, (j, p)
