"""The prior transformer core: every attention kind, the KV cache, OpenAI names, HF parity."""

from __future__ import annotations

import re

import pytest
import torch

from teacher.config import ConfigError
from teacher.prior.attention import AttnKind, FactoredAttention, attention_kind, prime_keys
from teacher.prior.transformer import KVCache, Transformer, TransformerConfig

N_CTX, BLOCKS, BC = 24, 4, 6  # block_ctx 6: chunks below start and end mid-block
WIDTH = 16
PRIME_LEN, PRIME_KEYS = 5, 8  # reference _prime_len: (5 // 4 + 1) * 4
ENC = 7
SPREAD = 2
ATOL = 1e-5

ALL_KINDS = [0, 1, 2, 3, 4, 5, 6, 7]
# attn_order -> depth that contains every kind of its cycle
ORDER_DEPTH = {0: 2, 1: 2, 2: 3, 3: 2, 4: 2, 5: 4, 6: 4, 7: 16, 8: 10, 9: 4, 10: 19, 11: 48, 12: 48}
CHUNKINGS = [(5, 1, 7, 6), (24,), (6, 6, 12), (1, 11, 2)]  # then single steps to the end


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights that make attention sharp and every branch (incl. zero-init ones) matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".w"):
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
                if "c_proj" in name:
                    p.mul_(0.3)  # keep the residual stream O(1) through deep stacks
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _attn(kind: int, heads: int) -> FactoredAttention:
    torch.manual_seed(kind)
    m = FactoredAttention(
        WIDTH,
        N_CTX,
        8,
        heads,
        kind,
        blocks=BLOCKS,
        spread=SPREAD,
        prime_len=PRIME_LEN,
        encoder_dims=ENC,
    )
    return _randomize(m, seed=kind)


def _cfg(order: int, heads: int = 2, **kw) -> TransformerConfig:
    base = dict(
        width=WIDTH,
        depth=ORDER_DEPTH[order],
        heads=heads,
        n_ctx=N_CTX,
        attn_order=order,
        blocks=BLOCKS,
        spread=SPREAD,
        prime_len=PRIME_LEN,
        encoder_dims=ENC,
    )
    return TransformerConfig(**{**base, **kw})


def _model(order: int, heads: int = 2, **kw) -> Transformer:
    torch.manual_seed(order)
    return _randomize(Transformer(_cfg(order, heads, **kw)), seed=order)


def _inputs(batch: int = 2, T: int = N_CTX, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T, WIDTH, generator=g), torch.randn(batch, ENC, WIDTH, generator=g)


def _run_cached(model, x, enc, chunks, *, cache=None, attn=False):
    """Prime with `chunks` then step one by one; returns the concatenated outputs."""
    outs = []
    if attn:
        lc = model.new_cache(x.shape[0], x.device, x.dtype) if cache is None else cache
        p = 0
        for n in [*chunks, *[1] * (x.shape[1] - sum(chunks))]:
            outs.append(model(x[:, p : p + n], enc, lc, p))
            p += n
        return torch.cat(outs, 1)
    cache = model.new_cache(x.shape[0]) if cache is None else cache
    for n in [*chunks, *[1] * (x.shape[1] - sum(chunks))]:
        p = cache.position
        outs.append(model(x[:, p : p + n], enc, cache=cache))
    return torch.cat(outs, 1)


# ----------------------------------------------------------------- naive reference
def _allowed(kind: int, T: int) -> torch.Tensor:
    """(T, T) bool: query i may attend key j, written from the kinds' definitions."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= i
    if kind == AttnKind.DENSE:
        return causal
    if kind == AttnKind.ROW:
        return causal & (j // BC == i // BC)
    if kind == AttnKind.COLUMN:
        return causal & (j % BC == i % BC)
    if kind == AttnKind.PREV_ROW:
        return j // BC == i // BC - 1
    if kind == AttnKind.PRIME:
        return causal & (j < PRIME_KEYS)
    spread = 1 if kind == AttnKind.SUMMARY else SPREAD
    return causal & (j % BC >= BC - spread) & (j // BC < BLOCKS - 1)


def _naive(attn: FactoredAttention, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
    """Dense-mask attention in float64; n zero keys for the summary kinds, 0 for empty rows."""
    d = torch.float64
    x, enc = x.to(d), enc.to(d)
    B, T, _ = x.shape
    H = attn.heads
    w = {n: p.detach().to(d) for n, p in attn.named_parameters()}

    def heads(t):
        return t.view(B, t.shape[1], H, -1).transpose(1, 2)

    if attn.kind == AttnKind.CROSS:
        q = heads(x @ w["c_attn.w"] + w["c_attn.b"])
        k, v = (enc @ w["c_enc_kv.w"] + w["c_enc_kv.b"]).chunk(2, -1)
        k, v = heads(k), heads(v)
        allowed = torch.ones(T, ENC, dtype=torch.bool)
    else:
        q, k, v = (heads(t) for t in (x @ w["c_attn.w"] + w["c_attn.b"]).chunk(3, -1))
        allowed = _allowed(attn.kind, T)
        if attn.kind in (AttnKind.SUMMARY, AttnKind.SUMMARY_SPREAD):
            n0 = 1 if attn.kind == AttnKind.SUMMARY else SPREAD
            zeros = k.new_zeros(B, H, n0, k.shape[-1])
            k, v = torch.cat([zeros, k], 2), torch.cat([zeros, v], 2)
            allowed = torch.cat([torch.ones(T, n0, dtype=torch.bool), allowed], 1)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    p = s.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)  # empty row -> 0
    a = (p @ v).transpose(1, 2).reshape(B, T, -1)
    return (a @ w["c_proj.w"] + w["c_proj.b"]).float()


# ------------------------------------------------------------------- per kind
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_kind_matches_naive_dense_mask(kind, heads):
    attn = _attn(kind, heads)
    x, enc = _inputs()
    with torch.no_grad():
        for T in (N_CTX, 17, 6, 1):  # whole window, partial, one block, one position
            out = attn(x[:, :T], enc)
            ref = _naive(attn, x[:, :T], enc)
            assert out.shape == (2, T, WIDTH)
            torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_kind_cached_equals_full(kind, heads):
    attn = _attn(kind, heads)
    x, enc = _inputs()
    with torch.no_grad():
        full = attn(x, enc)
        for chunks in [(), *CHUNKINGS]:
            out = _run_cached(attn, x, enc, chunks, attn=True)
            torch.testing.assert_close(out, full, atol=ATOL, rtol=0, msg=f"chunks {chunks}")


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_kind_causal(kind):
    attn = _attn(kind, 2)
    x, enc = _inputs()
    with torch.no_grad():
        out = attn(x, enc)
        for t in (0, 5, 6, 13, 22):
            x2 = x.clone()
            x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 10
            torch.testing.assert_close(attn(x2, enc)[:, : t + 1], out[:, : t + 1], atol=0, rtol=0)


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k != AttnKind.CROSS])
def test_kind_gradient_pattern(kind):
    """Reference ``FactoredAttention.check``: the gradient of output t reaches exactly the
    positions the kind attends to (plus t itself through q)."""
    attn = _attn(kind, 2)
    x, _ = _inputs(batch=1)
    x.requires_grad_(True)
    t = 20
    attn(x)[0, t].sum().backward()
    touched = set((x.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist())
    expect = set(_allowed(kind, N_CTX)[t].nonzero().flatten().tolist()) | {t}
    assert touched == expect


# ---------------------------------------------------------------- transformer
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("order", [0, 2, 10, 12])
def test_order_cached_equals_full(order, heads):
    model = _model(order, heads)
    x, enc = _inputs()
    with torch.no_grad():
        full = model(x, enc)
        assert full.abs().max() < 100  # sanity: the comparison below is at a sane scale
        for chunks in [(), *CHUNKINGS]:
            out = _run_cached(model, x, enc, chunks)
            torch.testing.assert_close(out, full, atol=ATOL, rtol=0, msg=f"chunks {chunks}")
        # a partial window equals the prefix of the whole one
        for T in (1, 6, 17):
            torch.testing.assert_close(model(x[:, :T], enc), full[:, :T], atol=ATOL, rtol=0)


@pytest.mark.parametrize("order", [1, 3, 4, 5, 6, 7, 8, 9, 11])
def test_other_orders_cached_equals_full(order):
    model = _model(order)
    x, enc = _inputs()
    with torch.no_grad():
        full = model(x, enc)
        for chunks in [(), (5, 1, 7, 6)]:
            torch.testing.assert_close(_run_cached(model, x, enc, chunks), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("order", [0, 2, 12])
def test_order_causal(order):
    model = _model(order)
    x, enc = _inputs()
    with torch.no_grad():
        out = model(x, enc)
        for t in (3, 11):
            x2 = x.clone()
            x2[:, t + 1 :] += 5.0
            torch.testing.assert_close(model(x2, enc)[:, : t + 1], out[:, : t + 1], atol=0, rtol=0)


def test_attn_order_tables():
    """The reference's attn_func table for the released orders."""
    assert [attention_kind(2, d) for d in range(6)] == [1, 2, 3, 1, 2, 3]
    k12 = [attention_kind(12, d) for d in range(64)]
    assert [d for d, k in enumerate(k12) if k == 7] == [15, 31, 63]
    assert [d for d, k in enumerate(k12) if k == 0] == [47]
    assert k12[:15] == [1, 2, 3] * 5
    k10 = [attention_kind(10, d) for d in range(79)]
    assert [d for d, k in enumerate(k10) if k == 6] == [18, 28, 38, 48, 58, 68, 78]
    assert attention_kind(10, 79) == attention_kind(10, 0)
    assert [attention_kind(11, d) for d in (15, 31, 47)] == [6, 6, 0]
    assert prime_keys(384, 64) == 448  # 1b_lyrics
    assert _cfg(12).prime_keys == PRIME_KEYS


# ------------------------------------------------------------------- the cache
def _expected_positions(kind: int) -> int:
    return {
        0: N_CTX,
        1: BC,
        2: N_CTX,
        3: 2 * BC,
        4: BLOCKS,
        5: BLOCKS * SPREAD,
        6: ENC,
        7: PRIME_KEYS,
    }[kind]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_cache_holds_only_what_the_kind_reads(kind):
    attn = _attn(kind, 2)
    lc = attn.new_cache(3, torch.device("cpu"), torch.float32)
    # keys + values, batch 3, 2 heads of 4, fp32
    assert lc.nbytes == 2 * 3 * 8 * _expected_positions(kind) * 4
    assert lc.k.shape[:2] == (3, 2) and lc.k.shape[-1] == 4


def test_cache_no_growth_and_no_cat(monkeypatch):
    """Stepping a whole window allocates no cache memory and never concatenates."""
    model = _model(12, depth=48)
    model2 = _model(10)
    x, enc = _inputs()
    with torch.no_grad():
        for m in (model, model2):
            cache = m.new_cache(2)
            ptrs = [layer.kv.data_ptr() for layer in cache.layers]
            nbytes = cache.nbytes()

            def no_cat(*a, **k):
                raise AssertionError("torch.cat in the step path")

            with monkeypatch.context() as mp:
                mp.setattr(torch, "cat", no_cat)
                for t in range(N_CTX):
                    m(x[:, t : t + 1], enc, cache=cache)
            assert cache.position == N_CTX
            assert [layer.kv.data_ptr() for layer in cache.layers] == ptrs
            assert cache.nbytes() == nbytes
    per_kind = {}
    for layer in model.new_cache(1).layers:
        per_kind[layer.kind] = layer.nbytes
    assert per_kind[AttnKind.ROW] == 2 * 4 * BC * 4  # k+v, S = 4 fp32, block_ctx only
    assert per_kind[AttnKind.PREV_ROW] == 2 * per_kind[AttnKind.ROW]
    assert per_kind[AttnKind.COLUMN] == per_kind[AttnKind.DENSE] == BLOCKS * per_kind[1]


def test_chunk_fills_cache_as_steps_do():
    model = _model(2)
    x, _ = _inputs()
    with torch.no_grad():
        by_steps, by_chunk = model.new_cache(2), model.new_cache(2)
        _run_cached(model, x[:, :15], None, (), cache=by_steps)
        model(x[:, :15], cache=by_chunk)
        assert by_steps.position == by_chunk.position == 15
        for a, b in zip(by_steps.layers, by_chunk.layers):
            if a.kind == AttnKind.ROW:  # live part: positions 12..14 of block 2
                torch.testing.assert_close(a.kv[..., :3, :], b.kv[..., :3, :], atol=ATOL, rtol=0)
            elif a.kind == AttnKind.COLUMN:  # positions < 15 in (c, n) layout
                for t in range(15):
                    n, c = divmod(t, BC)
                    torch.testing.assert_close(a.kv[..., c, n, :], b.kv[..., c, n, :])
            else:  # PREV_ROW ring: block 1 (slot 1) whole, block 2 (slot 0) positions 12..14
                torch.testing.assert_close(
                    a.kv[..., 1, :, :], b.kv[..., 1, :, :], atol=ATOL, rtol=0
                )
                torch.testing.assert_close(
                    a.kv[..., 0, :3, :], b.kv[..., 0, :3, :], atol=ATOL, rtol=0
                )


def test_cache_reset_select_rewind():
    model = _model(2)
    x, _ = _inputs(batch=3)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(3)
        _run_cached(model, x[:, :10], None, (4,), cache=cache)
        # select: reorder / duplicate / drop batch rows, then continue
        idx = torch.tensor([2, 0, 2, 1])
        cache.select(idx)
        assert cache.batch_size == 4
        out = torch.cat([model(x[idx, t : t + 1], cache=cache) for t in range(10, N_CTX)], 1)
        torch.testing.assert_close(out, full[idx, 10:], atol=ATOL, rtol=0)
        # rewind within the block of the last position: continue on a different future
        cache = model.new_cache(3)
        _run_cached(model, x[:, :10], None, (7,), cache=cache)
        assert cache.can_rewind(8) and cache.can_rewind(6) and cache.can_rewind(10)
        assert not cache.can_rewind(5) and not cache.can_rewind(11)
        with pytest.raises(ValueError, match="cannot rewind"):
            cache.rewind(3)
        cache.rewind(8)
        x2 = x.clone()
        x2[:, 8:] = torch.randn_like(x2[:, 8:])
        out = torch.cat([model(x2[:, t : t + 1], cache=cache) for t in range(8, N_CTX)], 1)
        torch.testing.assert_close(out, model(x2)[:, 8:], atol=ATOL, rtol=0)
        # dense layers can go back anywhere
        dense = _model(0)
        c = dense.new_cache(3)
        dense(x[:, :20], cache=c)
        c.rewind(3)
        assert c.position == 3
        # reset: start again, cross attention re-projects the new encoder states
        m10 = _model(10)
        xb, enc = _inputs(seed=5)
        c = m10.new_cache(2)
        m10(xb[:, :9], enc, cache=c)
        c.reset()
        enc2 = enc.flip(1)
        out = _run_cached(m10, xb, enc2, (3,), cache=c)
        torch.testing.assert_close(out, m10(xb, enc2), atol=ATOL, rtol=0)


def test_cache_errors():
    model = _model(10)
    x, enc = _inputs()
    with torch.no_grad():
        cache = model.new_cache(2)
        with pytest.raises(ValueError, match="encoder_kv"):
            model(x[:, :1], cache=cache)
        with pytest.raises(ValueError, match="encoder_kv"):
            model(x)
        with pytest.raises(ValueError, match=r"encoder_kv \("):
            model(x, enc[:, :3])
        with pytest.raises(ValueError, match="batch"):
            model(x[:1, :1], enc[:1], cache=cache)
        model(x, enc, cache=cache)
        with pytest.raises(ValueError, match="exceed n_ctx"):
            model(x[:, :1], enc, cache=cache)
        with pytest.raises(ValueError, match="exceeds n_ctx"):
            model(torch.cat([x, x], 1), enc)


# --------------------------------------------------------- names, init, config
def test_parameter_names_and_shapes_match_openai():
    """Keys below OpenAI's transformer (jukebox/transformer/{transformer,factored_attention,
    ops}.py: Conv1D w is (n_in, n_out)); attn_order 6 cycles row, column, prev-row, cross."""
    D, S, M = 16, 8, 32
    cfg = TransformerConfig(
        width=D, depth=4, heads=2, n_ctx=24, attn_order=6, blocks=4, m_attn=0.5, m_mlp=2.0,
        encoder_dims=5,
    )  # fmt: skip
    expected = {}
    for i, cross in enumerate([False, False, False, True]):
        pre = f"_attn_mods.{i}."
        if cross:
            expected |= {
                pre + "attn.c_attn.w": (D, S),
                pre + "attn.c_attn.b": (S,),
                pre + "attn.c_enc_kv.w": (D, 2 * S),
                pre + "attn.c_enc_kv.b": (2 * S,),
            }
        else:
            expected |= {pre + "attn.c_attn.w": (D, 3 * S), pre + "attn.c_attn.b": (3 * S,)}
        expected |= {
            pre + "attn.c_proj.w": (S, D),
            pre + "attn.c_proj.b": (D,),
            pre + "ln_0.weight": (D,),
            pre + "ln_0.bias": (D,),
            pre + "mlp.c_fc.w": (D, M),
            pre + "mlp.c_fc.b": (M,),
            pre + "mlp.c_proj.w": (M, D),
            pre + "mlp.c_proj.b": (D,),
            pre + "ln_1.weight": (D,),
            pre + "ln_1.bias": (D,),
        }
    got = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    assert got == expected


def test_init():
    torch.manual_seed(0)
    cfg = TransformerConfig(
        width=64, depth=4, heads=2, n_ctx=24, attn_order=6, blocks=4, encoder_dims=5,
        init_scale=0.5,
    )  # fmt: skip
    m = Transformer(cfg)
    w = m._attn_mods[0].mlp.c_fc.w
    assert abs(w.std().item() - 0.01) < 0.001  # 0.02 * init_scale
    assert m._attn_mods[0].attn.c_proj.w.abs().sum() > 0
    cross = m._attn_mods[3]  # CROSS layers start as the identity (reference zero_out)
    assert cross.attn.c_proj.w.abs().sum() == 0 and cross.mlp.c_proj.w.abs().sum() == 0
    assert cross.attn.c_enc_kv.w.abs().sum() > 0
    z = Transformer(TransformerConfig(width=16, depth=2, heads=2, n_ctx=8, zero_out=True))
    x = torch.randn(1, 8, 16)
    torch.testing.assert_close(z(x), x)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(attn_order=13), "attn_order"),
        (dict(attn_order=2, blocks=None), "blocks"),
        (dict(attn_order=2, blocks=5), "blocks"),
        (dict(heads=3), "multiple of heads"),
        (dict(attn_order=12, depth=16, blocks=4, prime_len=None), "prime_len"),
        (dict(attn_order=10, depth=19, blocks=4, encoder_dims=None), "encoder_dims"),
        (dict(attn_order=4, blocks=4, spread=None), "spread"),
        (dict(attn_order=4, blocks=4, spread=7), "spread"),
        (dict(depth=0), "depth"),
        (dict(attn_dropout=1.0), "attn_dropout"),
    ],
)
def test_config_validation(kw, msg):
    base = dict(width=16, depth=2, heads=2, n_ctx=24)
    with pytest.raises(ConfigError, match=msg):
        TransformerConfig(**{**base, **kw}).validate()
    with pytest.raises(ConfigError):
        Transformer(TransformerConfig(**{**base, **kw}))


def test_training_features():
    """Dropout only in training; gradient checkpointing gives the same gradients."""
    model = _model(2, attn_dropout=0.1, resid_dropout=0.1)
    x, _ = _inputs()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)
    model.train()
    torch.manual_seed(3)
    y = model(x)
    assert not torch.allclose(y, a)
    model = _model(2).train()
    xs = x.clone().requires_grad_(True)
    model(xs).square().sum().backward()
    g0 = xs.grad.clone()
    model.zero_grad()
    xs.grad = None
    model.gradient_checkpointing = True
    model(xs).square().sum().backward()
    torch.testing.assert_close(xs.grad, g0)


def test_bf16_cache_path():
    """Low precision: LayerNorm and softmax in fp32, step path agrees with the full pass."""
    model = _model(2).to(torch.bfloat16)
    x, _ = _inputs()
    x = x.to(torch.bfloat16)
    with torch.no_grad():
        full = model(x)
        out = _run_cached(model, x, None, (5,))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), full.float(), atol=0.1, rtol=0.05)


# ---------------------------------------------------------------- HF parity
_HF_NAMES = {
    0: "dense_attn",
    1: "block_attn",
    2: "transpose_block_attn",
    3: "prev_block_attn",
    4: "summary_attn",
    5: "summary_spread_attn",
    6: "cross_attention",
    7: "prime_attn",
}


def _to_hf(key: str) -> str:
    """Our (= OpenAI) names -> transformers' JukeboxLayerStack names."""
    key = re.sub(r"\.w$", ".weight", re.sub(r"\.b$", ".bias", key))
    return key.replace(".ln_0.", ".layer_norm_0.").replace(".ln_1.", ".layer_norm_1.")


@pytest.mark.parametrize(
    "order, kw",
    [(0, {}), (2, {}), (2, dict(res_scale=True)), (10, {}), (12, dict(depth=16)), (3, {}), (4, {})],
)
def test_matches_transformers_layer_stack(order, kw, monkeypatch):
    """Numerical parity with transformers' deprecated JukeboxLayerStack, full pass and its
    sampling path (orders 3 and 4 exercise the summary kinds, full pass only)."""
    mj = pytest.importorskip("transformers.models.deprecated.jukebox.modeling_jukebox")
    from transformers.models.deprecated.jukebox.configuration_jukebox import JukeboxPriorConfig

    model = _model(order, **kw)
    cfg = model.cfg
    kinds = cfg.kinds
    # HF's own "full_dense_attention" names a missing kind; map every layer explicitly
    monkeypatch.setitem(mj.ATTENTION_PATTERNS, "ours", lambda d: _HF_NAMES[int(kinds[d])])
    hcfg = JukeboxPriorConfig(
        hidden_size=WIDTH,
        n_heads=cfg.heads,
        num_layers=cfg.depth,
        blocks=BLOCKS,
        spread=SPREAD,
        mask=True,
        attn_res_scale=cfg.res_scale,
        attention_multiplier=cfg.m_attn,
        mlp_multiplier=cfg.m_mlp,
        nb_relevant_lyric_tokens=ENC if order == 10 else PRIME_LEN,
        attention_pattern="ours",
    )
    hf = mj.JukeboxLayerStack(hcfg, n_ctx=N_CTX).eval()
    hf.load_state_dict({_to_hf(k): v for k, v in model.state_dict().items()}, strict=True)
    x, enc = _inputs()
    enc = enc if order == 10 else None
    with torch.no_grad():
        ours = model(x, enc)
        torch.testing.assert_close(ours, hf(x, enc), atol=ATOL, rtol=0)
        if order in (3, 4):
            return
        hf.del_cache()
        theirs = torch.cat([hf(x[:, t : t + 1], enc, sample=True) for t in range(N_CTX)], 1)
        torch.testing.assert_close(_run_cached(model, x, enc, ()), theirs, atol=ATOL, rtol=0)


def test_kvcache_is_exported():
    assert isinstance(_model(0).new_cache(1), KVCache)
