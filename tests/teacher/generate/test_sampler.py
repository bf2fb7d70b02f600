"""Top-k/top-p filtering and the cached single-window sampler.

The central check (as the reference's ``check_sample``): the logits the cached sampler computes
at each step equal the teacher-forced logits of the sequence it returned, for every
conditioning style, ancestral and primed, with the prefix primed in one or several chunks.
"""

import math

import pytest
import torch

from teacher.generate.sampler import filter_logits, sample_window
from teacher.presets import tiny_top_prior, tiny_upsampler
from teacher.prior.config import PriorConfig
from teacher.prior.model import Prior


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_cond_inputs(cfg: PriorConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = upper = None
    if cfg.labels is not None:
        lab = cfg.labels
        rows = []
        for b in range(batch):
            total = int(cfg.sample_rate * (lab.min_duration + 2.0 + 3.0 * b))
            genres = [b % lab.genre_bins] + [-1] * (lab.max_genres - 1)
            rows.append([total, 1000 * b, cfg.sample_length, b % lab.artist_bins, *genres])
        labels = torch.tensor(rows)
        if cfg.n_tokens:
            lyr = torch.randint(0, cfg.lyrics.n_vocab, (batch, cfg.n_tokens), generator=g)
            labels = torch.cat([labels, lyr], dim=1)
    if cfg.is_upsampler:
        upper = torch.randint(0, cfg.l_bins, (batch, cfg.n_ctx // cfg.upsample_ratio), generator=g)
    return labels, upper


STYLES = {
    "top_timing_single_lyrics": lambda: tiny_top_prior("single"),
    "top_encoder_lyrics": lambda: tiny_top_prior("encoder"),
    "top_no_timing": lambda: tiny_top_prior(None, timing=False),
    "upsampler": lambda: tiny_upsampler(1),
    "upsampler_unlabelled": lambda: tiny_upsampler(0, labels=False),
}


def _prior(cfg: PriorConfig, seed: int = 0) -> Prior:
    torch.manual_seed(seed)
    prior = Prior(cfg).eval()
    # random weights well away from the small init, so logits are O(1) and vary with position
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in prior.named_parameters():
            base = 1.0 if "ln" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.15 * torch.randn(p.shape, generator=g))
    return prior


# ---------------------------------------------------------------------------------------------
# filtering


def test_top_k_keeps_the_k_largest_and_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, 3.0], [0.0, -1.0, 5.0, 4.0, 4.5]])
    out = filter_logits(logits, top_k=2)
    inf = float("-inf")
    assert out.tolist() == [[inf, 3.0, inf, inf, 3.0], [inf, inf, 5.0, inf, 4.5]]
    # k=3 with a tie at the threshold keeps both tied values (reference: remove only "<")
    out = filter_logits(torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]]), top_k=3)
    assert out.tolist() == [[inf, 2.0, 2.0, 2.0, inf]]
    assert torch.equal(filter_logits(logits, top_k=0), logits)
    assert torch.equal(filter_logits(logits, top_k=10), logits)  # k > V keeps everything


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1]])
    logits = probs.log()[:, [2, 0, 3, 1]]  # shuffled: [0.15, 0.5, 0.1, 0.25]
    inf = float("-inf")
    keep = lambda p: (filter_logits(logits, top_p=p) > inf).tolist()[0]  # noqa: E731
    assert keep(0.4) == [False, True, False, False]  # 0.5 alone reaches 0.4
    assert keep(0.45) == [False, True, False, False]
    assert keep(0.6) == [False, True, False, True]  # 0.5 + 0.25
    assert keep(0.8) == [True, True, False, True]  # 0.5 + 0.25 + 0.15
    assert keep(0.95) == [True, True, True, True]
    assert keep(1e-6) == [False, True, False, False]  # the top token always stays
    out = filter_logits(logits, top_p=0.6)
    assert torch.equal(out[out > inf], logits[out > inf])  # kept logits are unchanged
    assert torch.equal(filter_logits(logits), logits)


@pytest.mark.parametrize("top_k, top_p", [(5, 0.0), (0, 0.3), (0, 0.9), (40, 0.0)])
def test_filter_matches_the_reference_on_random_logits(top_k, top_p):
    ref = pytest.importorskip("transformers.models.deprecated.jukebox.modeling_jukebox")
    logits = torch.randn(3, 2, 37, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(
        filter_logits(logits, top_k, top_p), ref.filter_logits(logits, top_k, top_p)
    )


def test_filter_combines_k_and_p_and_checks_arguments():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    out = filter_logits(logits, top_k=3, top_p=0.5)
    assert (out > float("-inf")).tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError):
        filter_logits(logits, top_k=-1)
    with pytest.raises(ValueError):
        filter_logits(logits, top_p=1.5)


# ---------------------------------------------------------------------------------------------
# the sampler


def _sample_and_record(prior, cond, n, length, **kw):
    steps: dict[int, torch.Tensor] = {}
    codes = sample_window(
        prior, n, cond, length, on_logits=lambda t, lg: steps.__setitem__(t, lg.clone()), **kw
    )
    return codes, steps


@pytest.mark.parametrize("style", STYLES)
def test_step_logits_equal_teacher_forced_logits(style):
    cfg = STYLES[style]()
    prior = _prior(cfg)
    labels, upper = make_cond_inputs(cfg, batch=2)
    cond = prior.condition(labels, upper)
    gen = torch.Generator().manual_seed(1)
    codes, steps = _sample_and_record(prior, cond, 2, cfg.n_ctx, generator=gen)
    assert codes.shape == (2, cfg.n_ctx) and codes.dtype == torch.long
    assert ((codes >= 0) & (codes < cfg.l_bins)).all()
    assert sorted(steps) == list(range(cfg.n_ctx))
    with torch.no_grad():
        forced = prior.logits(codes, cond=cond)
    for t, lg in steps.items():
        torch.testing.assert_close(lg, forced[:, t], rtol=0, atol=1e-5, msg=f"step {t}")
    # not a degenerate sample: several distinct codes
    assert codes.unique().numel() > 3


@pytest.mark.parametrize("style", ["top_timing_single_lyrics", "top_encoder_lyrics", "upsampler"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_primed_sampling_keeps_the_prefix_and_matches_teacher_forcing(style, chunk_size):
    cfg = STYLES[style]()
    prior = _prior(cfg)
    labels, upper = make_cond_inputs(cfg, batch=2)
    cond = prior.condition(labels, upper)
    prefix = torch.randint(0, cfg.l_bins, (2, 13), generator=torch.Generator().manual_seed(3))
    length = cfg.n_ctx - 3  # a partial window
    codes, steps = _sample_and_record(
        prior,
        cond,
        2,
        length,
        prefix=prefix,
        chunk_size=chunk_size,
        generator=torch.Generator().manual_seed(2),
    )
    assert codes.shape == (2, length)
    assert torch.equal(codes[:, :13], prefix)
    assert sorted(steps) == list(range(13, length))
    with torch.no_grad():
        forced = prior.logits(codes, cond=cond)
    for t, lg in steps.items():
        torch.testing.assert_close(lg, forced[:, t], rtol=0, atol=1e-5, msg=f"step {t}")


def test_generator_reproducibility_and_batch_one_conditioning():
    cfg = tiny_top_prior("single")
    prior = _prior(cfg)
    labels, _ = make_cond_inputs(cfg, batch=1)
    cond = prior.condition(labels)
    a = sample_window(prior, 3, cond, 20, generator=torch.Generator().manual_seed(5))
    b = sample_window(prior, 3, cond, 20, generator=torch.Generator().manual_seed(5))
    c = sample_window(prior, 3, cond, 20, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 20)


def _mean_entropy_of_samples(prior, cond, temperature, seed=0):
    codes = sample_window(
        prior,
        8,
        cond,
        prior.cfg.n_ctx,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        lp = torch.log_softmax(prior.logits(codes, cond=cond) / temperature, -1)
    return -(lp.exp() * lp).sum(-1).mean().item(), codes


def test_lower_temperature_lowers_entropy():
    cfg = tiny_upsampler(1)
    prior = _prior(cfg)
    labels, upper = make_cond_inputs(cfg, batch=1)
    cond = prior.condition(labels, upper)
    h_hot, _ = _mean_entropy_of_samples(prior, cond, 1.0)
    h_cold, codes = _mean_entropy_of_samples(prior, cond, 0.3)
    assert h_cold < h_hot - 0.3
    # top_k=1 is greedy: the argmax of the teacher-forced logits everywhere
    greedy = sample_window(prior, 2, cond, cfg.n_ctx, top_k=1)
    with torch.no_grad():
        assert torch.equal(greedy, prior.logits(greedy, cond=cond).argmax(-1))
    assert math.isfinite(h_hot)


def test_progress_and_errors():
    cfg = tiny_upsampler(1)
    prior = _prior(cfg)
    labels, upper = make_cond_inputs(cfg, batch=1)
    cond = prior.condition(labels, upper)
    calls = []
    sample_window(
        prior,
        1,
        cond,
        10,
        prefix=torch.zeros(1, 4, dtype=torch.long),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(i, 6) for i in range(1, 7)]
    with pytest.raises(ValueError, match="length"):
        sample_window(prior, 1, cond, cfg.n_ctx + 1)
    with pytest.raises(ValueError, match="shorter"):
        sample_window(prior, 1, cond, 4, prefix=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="prefix codes"):
        sample_window(prior, 1, cond, 8, prefix=torch.full((1, 4), cfg.l_bins))
    with pytest.raises(ValueError, match="expand"):
        sample_window(prior, 3, prior.condition(*make_cond_inputs(cfg, batch=2)), 8)
    with pytest.raises(ValueError, match="temperature"):
        sample_window(prior, 1, cond, 8, temperature=0.0)
    prior.train()
    with pytest.raises(RuntimeError, match="eval"):
        sample_window(prior, 1, cond, 8)
