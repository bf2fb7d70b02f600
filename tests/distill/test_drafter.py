"""The incremental draft model: the categorical student's final stage stepped one position at a
time (and primed over a prefix at once) gives the logits of its parallel pass, for rows at the
same or at different positions and after rewinds; what it cannot run is refused."""

from __future__ import annotations

import pytest
import torch

from distill.drafter import IncrementalStage
from student.base import Student
from student.config import StageConfig, student_config_for
from tests.distill.test_speculative import _randomise, make_prior, upsampler_cfg


@pytest.fixture(scope="module")
def setup():
    prior = make_prior(upsampler_cfg(n_ctx=64, l_bins=8, blocks=8), seed=3)
    cfg = student_config_for(
        prior.cfg, family="categorical", n_stages=3, stage=StageConfig(width=8, depth=5)
    )
    student = _randomise(Student.from_teacher(prior, cfg), 1, 0.3)
    g = torch.Generator().manual_seed(0)
    upper = torch.randint(8, (3, 16), generator=g)
    codes = torch.randint(8, (3, 64), generator=g)
    with torch.no_grad():
        cond = student.condition(upper)[:, :64]
        want = student.stage_logits(2, codes, cond).float()
    return student, cond, codes, want


def test_stepping_equals_the_parallel_stage(setup):
    student, cond, codes, want = setup
    inc = IncrementalStage(student, 3, 64)
    with torch.no_grad():
        inc.begin(cond)
        got = inc.forward(codes)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_primed_prefix_then_steps_equal_the_parallel_stage(setup):
    student, cond, codes, want = setup
    inc = IncrementalStage(student, 3, 64)
    with torch.no_grad():
        inc.begin(cond)
        inc.prime(codes[:, :41])
        got = torch.stack([inc.step(t, codes[:, t - 1]) for t in range(41, 64)], 1)
    torch.testing.assert_close(got, want[:, 41:], atol=1e-5, rtol=1e-5)


def test_rows_at_their_own_positions_and_rewinds(setup):
    """Row r steps positions from its own start; wrong tokens written past a row's position
    (rejected drafts) are overwritten by the next steps there."""
    student, cond, codes, want = setup
    inc = IncrementalStage(student, 3, 64)
    start = torch.tensor([10, 25, 40])
    with torch.no_grad():
        inc.begin(cond)
        inc.prime(codes[:, :10])
        for t in range(10, 40):  # rows 1 and 2 catch up with their true codes
            inc.step(torch.tensor([10, min(t, 25), t]), codes[:, [9, min(t, 25) - 1, t - 1]].diag())
        pos = start.clone()
        for _ in range(6):  # rejected drafts: random tokens at every row's next 6 positions
            inc.step(pos, torch.randint(8, (3,)))
            pos += 1
        got = []
        pos = start.clone()
        for _ in range(12):  # rewound: the true codes again
            got.append(inc.step(pos, codes[torch.arange(3), pos - 1]))
            pos += 1
    got = torch.stack(got, 1)
    for r in range(3):
        s = int(start[r])
        torch.testing.assert_close(got[r], want[r, s : s + 12], atol=1e-5, rtol=1e-5)


def test_what_it_cannot_run_is_refused(setup):
    student = setup[0]
    with pytest.raises(ValueError, match="stage 0"):
        IncrementalStage(student, 1, 8, stage=0)
    prior = make_prior(upsampler_cfg(n_ctx=64, l_bins=8, blocks=8), seed=3)
    cfg = student_config_for(prior.cfg, family="gaussian", n_stages=2, code_dim=4)
    with pytest.raises(ValueError, match="categorical"):
        IncrementalStage(Student.from_teacher(prior, cfg), 1, 8)
