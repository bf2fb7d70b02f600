"""The static decoding engine: every attention kind and lyric style against teacher forcing,
the multi-query step and rewind, greedy decoding against recomputation, half precision, and
static shapes (one compiled graph for every position; a CUDA graph where CUDA exists)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from teacher.generate.engine import NOISE_BLOCK, START, DecodingEngine, engine_for
from teacher.generate.sampler import gumbel_noise, sample_window
from teacher.presets import tiny_top_prior, tiny_upsampler
from teacher.prior.model import Prior
from teacher.prior.transformer import TransformerConfig

B = 2


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_prior(cfg, seed: int = 0) -> Prior:
    """A prior with O(1) logits that vary with position (not the small init)."""
    torch.manual_seed(seed)
    prior = Prior(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in prior.named_parameters():
            base = 1.0 if "ln" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.15 * torch.randn(p.shape, generator=g))
    return prior


def _with_order(order: int, depth: int, **kw):
    """The tiny unlabelled-lyrics top prior with another attention order (every kind)."""
    cfg = tiny_top_prior(None)
    tr = TransformerConfig(
        width=32, depth=depth, heads=2, n_ctx=cfg.n_ctx, attn_order=order, blocks=4, **kw
    )
    return dataclasses.replace(cfg, transformer=tr).validate()


# style -> config: every attention kind (0 dense ... 7 prime) and both lyric styles
STYLES = {
    "single_lyrics_prime": lambda: tiny_top_prior("single"),  # row, column, prev-row, prime
    "encoder_lyrics_cross": lambda: tiny_top_prior("encoder"),  # row, column, prev-row, cross
    "dense": lambda: _with_order(0, 2),
    "row_col_prev_dense": lambda: _with_order(9, 4),
    "summary": lambda: _with_order(3, 2),
    "summary_spread": lambda: _with_order(4, 2, spread=2),
    "upsampler": lambda: tiny_upsampler(1),
}


def _inputs(prior: Prior, seed: int = 0):
    cfg = prior.cfg
    g = torch.Generator().manual_seed(seed)
    labels = upper = None
    if cfg.labels is not None:
        lab = cfg.labels
        total = int(cfg.sample_rate * (lab.min_duration + 2.0)) if lab.include_timing else 1
        rows = [
            [total, 0, cfg.sample_length, b + 1, b + 1] + [-1] * (lab.max_genres - 1)
            for b in range(B)
        ]
        labels = torch.tensor(rows)
        if cfg.n_tokens:
            lyr = torch.randint(1, cfg.lyrics.n_vocab, (B, cfg.n_tokens), generator=g)
            labels = torch.cat([labels, lyr], dim=1)
    if cfg.is_upsampler:
        upper = torch.randint(0, cfg.l_bins, (B, cfg.n_ctx // cfg.upsample_ratio), generator=g)
    codes = torch.randint(0, cfg.l_bins, (B, cfg.n_ctx), generator=g)
    return codes, labels, upper


def _forced(prior: Prior, cond) -> torch.Tensor | None:
    return cond.lyrics if prior.cfg.single_sequence else None


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("style", STYLES)
def test_step_and_multi_query_equal_teacher_forcing(style, static):
    prior = _random_prior(STYLES[style]())
    codes, labels, upper = _inputs(prior)
    shift = prior.cfg.vocab_offset
    with torch.no_grad():
        ref = prior.logits(codes, labels, upper)  # (B, T, V) teacher forcing
        cond = prior.condition(labels, upper)
        engine = DecodingEngine(prior, B, static=static)
        engine.begin(cond, _forced(prior, cond))
        for t in range(codes.shape[1]):
            if t:
                engine.set_token(codes[:, t - 1])
            torch.testing.assert_close(engine.step(), ref[:, t], rtol=0, atol=1e-5)
        # the multi-query step, from the window's start, in uneven chunks
        engine.begin(cond, _forced(prior, cond))
        first = engine.prev[:, None] if prior.cfg.single_sequence else torch.full((B, 1), START)
        inputs = torch.cat([first, codes[:, :-1] + shift], dim=1)
        got = torch.cat(
            [engine.score(inputs[:, a:b]) for a, b in ((0, 5), (5, 6), (6, 19), (19, 32))], 1
        )
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        assert engine.position == engine.n_lyrics + codes.shape[1]


@pytest.mark.parametrize("style", ["single_lyrics_prime", "upsampler", "row_col_prev_dense"])
def test_rewind_then_rescore_equals_teacher_forcing(style):
    """Speculative sampling's pattern: score up to 4 inputs of which only the first few are
    right, rewind over the rest (a pointer moves), go on from there, across block boundaries:
    every kept logit equals teacher forcing of the right sequence."""
    prior = _random_prior(STYLES[style]())
    codes, labels, upper = _inputs(prior)
    shift, t_len = prior.cfg.vocab_offset, codes.shape[1]
    accepts = torch.randint(0, 4, (t_len,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.no_grad():
        ref = prior.logits(codes, labels, upper)
        cond = prior.condition(labels, upper)
        engine = DecodingEngine(prior, B, static=True)
        engine.begin(cond, _forced(prior, cond))
        p0 = engine.position
        first = engine.prev[:, None] if prior.cfg.single_sequence else torch.full((B, 1), START)
        right = torch.cat([first, codes[:, :-1] + shift], dim=1)  # inputs of every position
        wrong = (right + 1) % prior.cfg.l_bins + shift
        m, rewinds = 0, 0
        while m < t_len:
            n = min(4, t_len - m)
            keep = min(accepts[m] + 1, n)
            draft = torch.cat([right[:, m : m + keep], wrong[:, m + keep : m + n]], dim=1)
            got = engine.score(draft)
            torch.testing.assert_close(got[:, :keep], ref[:, m : m + keep], rtol=0, atol=1e-5)
            rewinds += keep < n
            engine.rewind(p0 + m + keep)
            m += keep
        assert rewinds > 3


@pytest.mark.parametrize("style", ["upsampler", "row_col_prev_dense", "encoder_lyrics_cross"])
def test_rows_at_different_positions_score_their_own_positions(style):
    """Every row keeps its own position: rounds of 4 inputs per row, each row keeping a
    different number of them (its rewind target differs), across blocks: the kept logits of
    every row equal teacher forcing of that row's sequence."""
    prior = _random_prior(STYLES[style]())
    codes, labels, upper = _inputs(prior)
    t_len = codes.shape[1]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        ref = prior.logits(codes, labels, upper)
        cond = prior.condition(labels, upper)
        engine = DecodingEngine(prior, B, static=True)
        engine.begin(cond)
        right = torch.cat([torch.full((B, 1), START), codes[:, :-1]], dim=1)
        right = torch.cat([right, right[:, -1:].expand(-1, 4)], dim=1)  # runs past the end
        m = torch.zeros(B, dtype=torch.long)
        apart = False
        while int(m.min()) < t_len:
            inputs = torch.stack([right[b, int(m[b]) : int(m[b]) + 4] for b in range(B)])
            got = engine.score(inputs)
            keep = torch.randint(1, 5, (B,), generator=g)
            for b in range(B):
                for j in range(int(keep[b])):
                    t = int(m[b]) + j
                    if t < t_len:
                        torch.testing.assert_close(got[b, j], ref[b, t], rtol=0, atol=1e-5)
            m = (m + keep).clamp(max=t_len)
            apart |= bool(m[0] != m[1])
            engine.rewind(m.clone())
        assert apart and engine.calls > t_len // 4


def test_greedy_sampling_equals_recomputation():
    """Top-1 decoding on the engine = argmax of teacher forcing recomputed at every step."""
    prior = _random_prior(tiny_top_prior("single"))
    _, labels, _ = _inputs(prior)
    with torch.no_grad():
        cond = prior.condition(labels, None)
        out = sample_window(prior, B, cond, prior.cfg.n_ctx, top_k=1)
        codes = torch.zeros(B, 0, dtype=torch.long)
        for _t in range(prior.cfg.n_ctx):
            nxt = torch.zeros(B, 1, dtype=torch.long)
            logits = prior.logits(torch.cat([codes, nxt], 1), labels)[:, -1]
            codes = torch.cat([codes, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, codes)


def test_engines_are_reused_per_prior_and_batch():
    prior = _random_prior(tiny_upsampler(1))
    a = engine_for(prior, 2)
    assert engine_for(prior, 2) is a and engine_for(prior, 3) is not a
    prior.to(torch.bfloat16)
    assert engine_for(prior, 2) is not a and engine_for(prior, 2).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 0.25), (torch.float16, 0.05)])
def test_half_precision_tracks_fp32(dtype, tol):
    """Half-precision weights decode with fp32 layer norms, softmax and logits: the logits of
    teacher-forced inputs stay within ``tol`` of fp32 (bf16 keeps 8 mantissa bits)."""
    prior = _random_prior(tiny_top_prior("single"))
    codes, labels, _ = _inputs(prior)
    with torch.no_grad():
        ref = prior.logits(codes, labels)
        half = _random_prior(tiny_top_prior("single")).to(dtype)
        for static in (False, True):
            cond = half.condition(labels, None)
            engine = DecodingEngine(half, B, static=static)
            engine.begin(cond, cond.lyrics)
            got = []
            for t in range(codes.shape[1]):
                if t:
                    engine.set_token(codes[:, t - 1])
                got.append(engine.step().clone())
            got = torch.stack(got, 1)
            assert got.dtype == torch.float32
            err = (got - ref).abs().max().item()
            assert err < tol, (static, err)
        codes = sample_window(half, B, cond, 20, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (B, 20) and codes.dtype == torch.long


def test_eager_and_static_sample_steps_draw_the_same_codes():
    """The eager step counts its noise rows on the host, the static one on the device: the
    same noise blocks (two set_noise calls, the first one not used up) give the same codes."""
    prior = _random_prior(tiny_upsampler(1))
    _, labels, upper = _inputs(prior)
    g = torch.Generator().manual_seed(3)
    blocks = [gumbel_noise((n, B, prior.cfg.l_bins), g) for n in (16, 9)]
    outs = []
    with torch.no_grad():
        cond = prior.condition(labels, upper)
        for static in (False, True):
            engine = DecodingEngine(prior, B, static=static)
            engine.begin(cond)
            codes = []
            for noise in blocks:
                engine.set_noise(noise, 0.9)
                codes += [engine.sample_step().clone() for _ in range(noise.shape[0])]
            outs.append(torch.stack(codes, 1))
    assert outs[0].shape == (B, 25) and NOISE_BLOCK > 16
    assert torch.equal(outs[0], outs[1])
    assert len(outs[0].unique()) > 4  # the draws vary


@pytest.mark.slow
def test_the_static_step_compiles_once_for_every_position():
    import torch._dynamo
    from torch._dynamo.utils import counters

    prior = _random_prior(tiny_upsampler(1))
    codes, labels, upper = _inputs(prior)
    with torch.no_grad():
        cond = prior.condition(labels, upper)
        engine = DecodingEngine(prior, B, static=True)
        torch._dynamo.reset()
        counters.clear()
        engine.compile()
        engine.begin(cond)
        ref = prior.logits(codes, labels, upper)
        for t in range(20):
            if t:
                engine.set_token(codes[:, t - 1])
            torch.testing.assert_close(engine.step(), ref[:, t], rtol=0, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_sampling_equals_eager():
    prior = _random_prior(tiny_upsampler(1)).cuda()
    _, labels, upper = _inputs(prior)
    with torch.no_grad():
        cond = prior.condition(labels.cuda(), upper.cuda())
        outs = []
        for graph in (False, True):
            engine = DecodingEngine(prior, B, cuda_graph=graph, static=True)
            engine.begin(cond)
            g = torch.Generator(device="cuda").manual_seed(0)
            noise = -torch.log(
                -torch.log(torch.rand(32, B, prior.cfg.l_bins, generator=g, device="cuda"))
            )
            engine.set_noise(noise, 0.9)
            outs.append(torch.stack([engine.sample_step().clone() for _ in range(32)]))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_checkpoint_of_mixed_dtypes_loads_and_samples_in_every_dtype(tmp_path, dtype):
    """Half of the tensors stored in fp16 (as in OpenAI's 5b priors): the folder loads with
    every tensor cast to the requested dtype, and samples."""
    from teacher.device import resolve_dtype
    from teacher.io import load_tensors, save_tensors

    prior = _random_prior(tiny_top_prior("single"))
    prior.save_pretrained(tmp_path / "p")
    state = load_tensors(tmp_path / "p" / "model.safetensors")
    mixed = {k: v.half() if i % 2 else v for i, (k, v) in enumerate(sorted(state.items()))}
    assert {v.dtype for v in mixed.values()} == {torch.float32, torch.float16}
    save_tensors(mixed, tmp_path / "p" / "model.safetensors")
    loaded = Prior.from_pretrained(tmp_path / "p", dtype=resolve_dtype(dtype)).eval()
    assert {p.dtype for p in loaded.parameters()} == {resolve_dtype(dtype)}
    _, labels, _ = _inputs(loaded)
    with torch.no_grad():
        cond = loaded.condition(labels, None)
        codes = sample_window(loaded, B, cond, 24, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (B, 24) and bool(((codes >= 0) & (codes < loaded.cfg.l_bins)).all())
