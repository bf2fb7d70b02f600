"""The parallel students: config, causality given the noise, K passes for any length, shared
Gumbel noise, save/load, copying the teacher's conditioner, the Gaussian flow's log-det and
snapping, and a smoke distillation against a fixed tiny teacher."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import categorical_distill_terms, total_loss
from student import (
    CategoricalIAF,
    GaussianIAF,
    StageConfig,
    Student,
    load_student,
    small_student,
    tiny_student,
)
from student.config import (
    GaussianConfig,
    LossConfig,
    load_student_config,
    save_student_config,
    student_config_for,
)
from student.layers import AffineARFlow, CausalConv1d, CausalStack, shift_right
from teacher.config import ConfigError
from teacher.presets import tiny_upsampler
from teacher.prior.model import Prior

FAMILIES = ("categorical", "gaussian")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_labels(batch: int, sr: int = 8000) -> torch.Tensor:
    """Label vectors ``[total, offset, length, artist, genre, genre]`` for tiny_upsampler."""
    rows = [[sr * 10, 97 * b, 1024, b % 6, 1 + b % 4, -1 if b % 2 else 2] for b in range(batch)]
    return torch.tensor(rows)


def make_student(family: str, labels: bool = True, seed: int = 0, **overrides) -> Student:
    torch.manual_seed(seed)
    cfg = tiny_student(1, family, labels=labels)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides).validate()
    cls = CategoricalIAF if family == "categorical" else GaussianIAF
    model = cls(cfg).eval()
    _unzero(model)
    return model


def _unzero(model: Student) -> None:
    """Give the zero-initialised flow outputs random weights, so the flows are not the
    identity (otherwise every causality check on them would pass trivially)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CausalStack):
                last = m.out[-1]
                if not last.weight.abs().sum():
                    last.weight.normal_(std=0.3)
                    last.bias.normal_(std=0.1)


def upper_codes(batch: int, t_up: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 32, (batch, t_up), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# config


def test_presets_validate_and_round_trip(tmp_path):
    for cfg in (
        tiny_student(1, "categorical"),
        tiny_student(0, "gaussian", labels=False),
        small_student(0),
        small_student(1, "gaussian"),
    ):
        assert cfg.validate() is cfg
        save_student_config(cfg, str(tmp_path / "c.json"))
        assert load_student_config(str(tmp_path / "c.json")) == cfg
    cfg = tiny_student(1)
    assert cfg.upsample_ratio == 4 and cfg.hop_length == 32 and cfg.label_size == 6
    assert cfg.stage.receptive_field == 16
    assert small_student(1).n_stages == 4
    assert set(cfg.loss.weights()) == {"kl", "kl_intermediate", "tv", "mrstft", "power", "ce"}
    assert cfg.loss.weights()["kl_intermediate"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(family="diffusion"), "family"),
        (dict(family="gaussian"), "GaussianConfig"),
        (dict(gaussian=GaussianConfig()), "categorical student takes no"),
        (dict(level=2), "level must be in"),
        (dict(n_stages=0), "n_stages"),
        (dict(stage=StageConfig(kernel_size=1)), "kernel_size"),
        (dict(loss=LossConfig(kl=-1.0)), "loss weight kl"),
        (dict(loss=LossConfig(stft_fft_sizes=(64,))), "same"),
        (dict(loss=LossConfig(gaussian_objective="x")), "gaussian_objective"),
    ],
)
def test_config_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(tiny_student(1), **change).validate()


def test_config_errors_gaussian_and_labels():
    g = tiny_student(1, "gaussian")
    with pytest.raises(ConfigError, match="code_space"):
        dataclasses.replace(g, gaussian=GaussianConfig(code_space="pca")).validate()
    with pytest.raises(ConfigError, match="log_sigma_min"):
        dataclasses.replace(g, gaussian=GaussianConfig(log_sigma_min=3.0)).validate()
    with pytest.raises(ConfigError, match="share_stages"):
        dataclasses.replace(g, share_stages=True).validate()
    c = tiny_student(1)
    with pytest.raises(ConfigError, match="timing"):
        dataclasses.replace(c, labels=dataclasses.replace(c.labels, include_timing=True)).validate()


def test_check_teacher_mismatch():
    prior = Prior(tiny_upsampler(1))
    with pytest.raises(ConfigError, match="level"):
        Student.from_teacher(prior, tiny_student(0))
    with pytest.raises(ConfigError, match="labelled teacher"):
        Student.from_teacher(Prior(tiny_upsampler(1, labels=False)), tiny_student(1))
    with pytest.raises(ConfigError, match="upsamplers"):
        from teacher.presets import tiny_top_prior

        student_config_for(tiny_top_prior(None))


# ---------------------------------------------------------------------------------------------
# layers


def test_shift_right_and_causal_conv():
    x = torch.arange(6.0).view(1, 6, 1)
    assert shift_right(x).flatten().tolist() == [0, 0, 1, 2, 3, 4]
    assert shift_right(x, fill=-1.0).flatten().tolist() == [-1, 0, 1, 2, 3, 4]
    conv = CausalConv1d(1, 1, 2, dilation=3)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    y = conv(torch.arange(1.0, 7.0).view(1, 1, 6))
    # y[t] = x[t] + x[t - 3] (zero-padded on the left only)
    assert y.flatten().tolist() == [1, 2, 3, 5, 7, 9]


def test_causal_stack_receptive_field():
    torch.manual_seed(0)
    cfg = StageConfig(width=8, depth=3, kernel_size=2, dilation_growth_rate=2)
    stack = CausalStack(4, 5, 3, cfg)
    x = torch.randn(1, 20, 4, requires_grad=True)
    out = stack(x, torch.randn(1, 20, 5))
    (grad,) = torch.autograd.grad(out[0, 12].sum(), x)
    reads = grad[0].abs().sum(-1).nonzero().flatten().tolist()
    # position 12 reads inputs 12 - (rf - 1) .. 12 and nothing after it
    assert reads == list(range(12 - cfg.receptive_field + 1, 13))


@pytest.mark.parametrize(
    "cfg, in_channels, batch",
    [
        (StageConfig(width=16, depth=5, kernel_size=2), 8, 1),
        (StageConfig(width=12, depth=4, kernel_size=3, dilation_growth_rate=3), 0, 3),
        (StageConfig(width=8, depth=6, dilation_cycle=2, skip_width=20), 5, 2),
        (StageConfig(width=8, depth=1), 4, 2),  # one layer: no residual projection
    ],
)
def test_causal_stack_inference_path_equals_the_convolutions(cfg, in_channels, batch):
    """Without autograd the stack runs as time-major matrix products (CausalStack.infer): the
    convolutions' function up to rounding, for any kernel, dilations, skip width and batch."""
    torch.manual_seed(0)
    stack = CausalStack(in_channels, 6, 7, cfg)
    with torch.no_grad():
        for p in stack.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(batch, 40, in_channels) if in_channels else None
    cond = torch.randn(batch, 40, 6)
    ref = stack(x, cond)  # autograd on: the convolutions
    assert ref.requires_grad
    with torch.no_grad():
        fast = stack(x, cond)
        direct = stack.infer(x, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = stack(x, cond)  # autocast: the convolutions as it casts them
    assert fast.shape == ref.shape == (batch, 40, 7) and fast.dtype == torch.float32
    with torch.no_grad():  # an empty span is an empty output, as the convolutions give
        empty = stack.infer(None if x is None else x[:, :0], cond[:, :0])
    assert empty.shape == (batch, 0, 7)
    torch.testing.assert_close(fast, ref.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(fast, direct)
    assert not torch.equal(cast, fast) and (cast - ref).abs().max() < 0.2
    # bf16 weights: the same function at bf16 precision
    half = CausalStack(in_channels, 6, 7, cfg).to(torch.bfloat16)
    half.load_state_dict(stack.state_dict())
    with torch.no_grad():
        out = half(None if x is None else x.bfloat16(), cond.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.detach(), rtol=0.1, atol=0.1)


# ---------------------------------------------------------------------------------------------
# shapes, conditioning, stage logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("labels", [True, False])
def test_forward_shapes(family, labels):
    st = make_student(family, labels=labels)
    up = upper_codes(2, 5)
    lab = make_labels(2) if labels else None
    cond = st.condition(up, lab)
    assert cond.shape == (2, 20, st.cfg.cond_width)
    out = st(up, lab)
    k, v = st.n_passes, st.cfg.l_bins
    assert out.codes.shape == (2, 20) and out.codes.dtype == torch.long
    assert len(out.logits) == k
    assert all(lg.shape == (2, 20, v) and lg.dtype == torch.float32 for lg in out.logits)
    assert out.soft.shape == (2, 20, v)
    # the straight-through codes are exactly one-hot of the sample in the forward pass
    assert torch.equal(out.soft.detach(), F.one_hot(out.codes, v).float())
    assert out.codes.min() >= 0 and out.codes.max() < v
    if family == "gaussian":
        d = st.cfg.gaussian.code_dim
        assert {k: tuple(t.shape) for k, t in out.extras.items()} == {
            "u": (2, 20, d),
            "v": (2, 20, d),
            "mu": (2, 20, d),
            "log_sigma": (2, 20, d),
            "log_det": (2, 20),
        }
        assert torch.equal(out.codes, st.snap(out.extras["v"]))
    else:
        assert out.extras["tokens"].shape == (k, 2, 20)
        assert torch.equal(out.extras["tokens"][-1], out.codes)
    codes = st.sample(up, lab)
    assert codes.shape == (2, 20) and not codes.requires_grad


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_outputs_under_autocast_and_bf16_weights(family):
    st = make_student(family)
    up, lab = upper_codes(2, 4), make_labels(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st(up, lab)
    assert all(lg.dtype == torch.float32 for lg in out.logits)
    assert out.soft.dtype == torch.float32
    out = st.to(torch.bfloat16)(up, lab)
    assert all(lg.dtype == torch.float32 for lg in out.logits)


def test_condition_errors():
    st = make_student("categorical")
    up = upper_codes(2, 4)
    with pytest.raises(ValueError, match="labelled"):
        st.condition(up)
    with pytest.raises(ValueError, match="labels of shape"):
        st.condition(up, make_labels(2)[:, :4])
    with pytest.raises(ValueError, match="unlabelled"):
        make_student("categorical", labels=False).condition(up, make_labels(2))
    with pytest.raises(ValueError, match="noise of shape"):
        st(up, make_labels(2), noise=torch.zeros(2, 16, 7))
    with pytest.raises(ValueError, match="upper-level code"):
        st.condition(up + 100, make_labels(2))
    with pytest.raises(NotImplementedError):
        make_student("gaussian").stage_logits(0, None, st.condition(up, make_labels(2)))


def test_labels_are_used_and_lyrics_ignored():
    st = make_student("categorical")
    up = upper_codes(2, 4)
    lab = make_labels(2)
    other = lab.clone()
    other[:, 3] = (other[:, 3] + 1) % 6
    assert not torch.allclose(st.condition(up, lab), st.condition(up, other))
    longer = torch.cat([lab, torch.randint(0, 79, (2, 10))], dim=1)
    assert torch.equal(st.condition(up, lab), st.condition(up, longer))


def test_stage_logits_reproduce_forward():
    st = make_student("categorical")
    up, lab = upper_codes(2, 6), make_labels(2)
    cond = st.condition(up, lab)
    out = st(None, cond=cond, generator=torch.Generator().manual_seed(3))
    tokens = out.extras["tokens"]
    assert torch.allclose(st.stage_logits(0, None, cond), out.logits[0])
    for k in range(1, st.n_passes):
        assert torch.allclose(st.stage_logits(k, tokens[k - 1], cond), out.logits[k])


# ---------------------------------------------------------------------------------------------
# (a) causality given the noise


@pytest.mark.parametrize("family", FAMILIES)
def test_output_at_t_ignores_noise_after_t(family):
    st = make_student(family)
    up, lab = upper_codes(2, 8), make_labels(2)
    cond = st.condition(up, lab)
    noise = st.make_noise(2, 32, generator=torch.Generator().manual_seed(0))
    base = st(None, cond=cond, noise=noise)
    for t in (0, 9, 30):
        other = noise.clone()
        other[:, t + 1 :] = st.make_noise(2, 31 - t, generator=torch.Generator().manual_seed(t))
        out = st(None, cond=cond, noise=other)
        assert torch.equal(out.codes[:, : t + 1], base.codes[:, : t + 1])
        for k in range(st.n_passes):
            assert torch.allclose(out.logits[k][:, : t + 1], base.logits[k][:, : t + 1])
        if t < 30:  # and the noise after t did matter somewhere after t
            assert not torch.equal(out.codes[:, t + 1 :], base.codes[:, t + 1 :])


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_at_t_ignore_noise_at_t(family):
    """q_t is the conditional of token t given the noise BEFORE t: the logits at t must not
    move when only the noise at t changes (the tokens at t may)."""
    st = make_student(family)
    cond = st.condition(upper_codes(1, 8), make_labels(1))
    noise = st.make_noise(1, 32, generator=torch.Generator().manual_seed(0))
    base = st(None, cond=cond, noise=noise)
    other = noise.clone()
    other[:, 5] = st.make_noise(1, 1, generator=torch.Generator().manual_seed(9))[:, 0]
    out = st(None, cond=cond, noise=other)
    assert torch.allclose(out.logits[-1][:, :6], base.logits[-1][:, :6])


def test_categorical_stage_ignores_prev_tokens_at_and_after_t():
    st = make_student("categorical")
    cond = st.condition(upper_codes(2, 8), make_labels(2))
    g = torch.Generator().manual_seed(0)
    prev = torch.randint(0, 32, (2, 32), generator=g)
    for stage in range(1, st.n_passes):
        base = st.stage_logits(stage, prev, cond)
        for t in (0, 11, 31):
            changed = prev.clone()
            changed[:, t:] = torch.randint(0, 32, (2, 32 - t), generator=g)
            out = st.stage_logits(stage, changed, cond)
            assert torch.allclose(out[:, : t + 1], base[:, : t + 1])
            if t < 31:
                assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


def test_gaussian_jacobian_is_strictly_causal():
    """∂v_t/∂u_s = 0 for s > t, and μ_tot, σ_tot at t do not depend on u_s for s >= t."""
    st = make_student("gaussian")
    cond = st.condition(upper_codes(1, 3), make_labels(1)).detach()
    u = st.make_noise(1, 12, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = st(None, cond=cond, noise=u)
    t = 6
    (gv,) = torch.autograd.grad(out.extras["v"][0, t].sum(), u, retain_graph=True)
    assert gv[0, t + 1 :].abs().max() == 0 and gv[0, : t + 1].abs().sum() > 0
    (gm,) = torch.autograd.grad(
        out.extras["mu"][0, t].sum() + out.extras["log_sigma"][0, t].sum(), u
    )
    assert gm[0, t:].abs().max() == 0 and gm[0, :t].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# (b) K passes whatever the length


@pytest.mark.parametrize(
    "family, share", [("categorical", False), ("categorical", True), ("gaussian", False)]
)
def test_sampling_costs_k_passes_for_any_length(family, share):
    st = make_student(family, share_stages=share)
    nets = st.stages if family == "categorical" else st.flows
    if share:
        assert len(nets) == 2 and st.n_passes == 3
    calls = []
    hooks = [net.register_forward_hook(lambda *a: calls.append(1)) for net in nets]
    lab = make_labels(1)
    for t in (64, 512):
        calls.clear()
        codes = st.sample(upper_codes(1, t // 4), lab, generator=torch.Generator().manual_seed(0))
        assert codes.shape == (1, t)
        assert len(calls) == st.n_passes == st.cfg.n_stages
    for h in hooks:
        h.remove()


# ---------------------------------------------------------------------------------------------
# (c) the same Gumbel noise at every stage


def test_every_stage_uses_the_same_gumbel_noise(monkeypatch):
    st = make_student("categorical")
    seen = []
    original = CategoricalIAF.select

    def spy(logits, noise, temperature=1.0):
        seen.append(noise)
        return original(logits, noise, temperature)

    monkeypatch.setattr(CategoricalIAF, "select", staticmethod(spy))
    st(upper_codes(2, 4), make_labels(2), generator=torch.Generator().manual_seed(0))
    assert len(seen) == st.n_passes
    assert all(n is seen[0] for n in seen)


def test_identical_stages_give_identical_tokens_with_shared_noise():
    """With every stage a copy of stage 0 (token input switched off) the logits of all stages
    agree, so shared noise gives the same tokens at every stage — each stage refines the same
    sample. Fresh noise per stage would give unrelated samples."""
    st = make_student("categorical")
    with torch.no_grad():
        for k in range(1, st.n_passes):
            st.stages[k].net.load_state_dict(st.stages[0].net.state_dict(), strict=False)
            st.stages[k].net.inp.weight.zero_()
            st.stages[k].net.inp.bias.zero_()
    out = st(upper_codes(2, 8), make_labels(2), generator=torch.Generator().manual_seed(0))
    tokens = out.extras["tokens"]
    for k in range(1, st.n_passes):
        assert torch.allclose(out.logits[k], out.logits[0], atol=1e-5)
        assert torch.equal(tokens[k], tokens[0])
    fresh = CategoricalIAF.select(out.logits[1], st.make_noise(2, 32), 1.0)
    assert not torch.equal(fresh, tokens[0])


def test_temperature_and_noise_determine_the_sample():
    st = make_student("categorical")
    up, lab = upper_codes(2, 8), make_labels(2)
    noise = st.make_noise(2, 32, generator=torch.Generator().manual_seed(4))
    a = st.sample(up, lab, noise=noise, temperature=0.7)
    b = st.sample(up, lab, noise=noise.clone(), temperature=0.7)
    assert torch.equal(a, b)
    out = st(up, lab, noise=noise, temperature=0.7)
    assert torch.equal(out.codes, a)
    assert torch.equal(a, (out.logits[-1] / 0.7 + noise).argmax(-1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(st.sample(up, lab, generator=g1), st.sample(up, lab, generator=g2))


# ---------------------------------------------------------------------------------------------
# (f) save / load, from_teacher


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(family, tmp_path):
    st = make_student(family)
    up, lab = upper_codes(2, 8), make_labels(2)
    noise = st.make_noise(2, 32, generator=torch.Generator().manual_seed(0))
    st.save_pretrained(tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    cls = type(st)
    for loaded in (
        cls.from_pretrained(tmp_path / "s"),
        Student.from_pretrained(tmp_path / "s"),
        load_student(tmp_path / "s"),
    ):
        assert type(loaded) is cls and loaded.cfg == st.cfg
        assert torch.equal(loaded.sample(up, lab, noise=noise), st.sample(up, lab, noise=noise))
        a, b = loaded(up, lab, noise=noise), st(up, lab, noise=noise)
        assert torch.equal(a.logits[-1], b.logits[-1])
    other = GaussianIAF if family == "categorical" else CategoricalIAF
    with pytest.raises(ValueError, match="student"):
        other.from_pretrained(tmp_path / "s")


@pytest.mark.parametrize("family", FAMILIES)
def test_from_teacher_copies_conditioner_and_labels(family):
    torch.manual_seed(0)
    prior = Prior(tiny_upsampler(1))
    st = Student.from_teacher(prior, tiny_student(1, family))
    assert isinstance(st, CategoricalIAF if family == "categorical" else GaussianIAF)
    teacher_cond = prior.conditioner_blocks[0].state_dict()
    mine = st.conditioner.state_dict()
    assert mine.keys() == teacher_cond.keys()
    for k in mine:
        assert torch.equal(mine[k], teacher_cond[k]), k
        assert mine[k].data_ptr() != teacher_cond[k].data_ptr()  # a copy, not shared
    for k, v in st.y_emb.state_dict().items():
        assert torch.equal(v, prior.y_emb.state_dict()[k])
    up = upper_codes(2, 8)
    start, _ = prior.y_emb(make_labels(2))
    expected = prior.conditioner_blocks[0](up) + start
    assert torch.allclose(st.condition(up, make_labels(2)), expected)


def test_gaussian_code_spaces():
    torch.manual_seed(0)
    prior = Prior(tiny_upsampler(1))
    codebook = torch.randn(32, 16) * 3
    st = Student.from_teacher(prior, tiny_student(1, "gaussian"), codebook=codebook)
    assert isinstance(st, GaussianIAF)
    assert torch.allclose(st.code_table, F.normalize(codebook, dim=-1))
    assert torch.allclose(st.codes_unit().norm(dim=-1), torch.ones(32))
    cfg = student_config_for(tiny_upsampler(1), "gaussian", n_stages=2, code_space="teacher_head")
    assert cfg.gaussian.code_dim == 32
    st = GaussianIAF.from_teacher(prior, cfg)
    assert torch.allclose(st.code_table, F.normalize(prior.prior.x_out.weight, dim=-1))
    cfg = student_config_for(tiny_upsampler(1), "gaussian", n_stages=2, code_space="learned")
    st = GaussianIAF(cfg)
    assert isinstance(st.code_table, torch.nn.Parameter)
    with pytest.raises(ValueError, match="codebook of shape"):
        st.set_codebook(torch.randn(31, 64))


# ---------------------------------------------------------------------------------------------
# (g) the Gaussian flow: log-det, snapping, calibrated logits


def test_gaussian_log_det_matches_brute_force_jacobian():
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        tiny_student(1, "gaussian", labels=False),
        gaussian=GaussianConfig(code_dim=3),
        stage=StageConfig(width=8, depth=2),
        n_stages=3,
    ).validate()
    st = GaussianIAF(cfg).double()
    _unzero(st)
    cond = st.condition(upper_codes(1, 1)).detach()
    t, d = cond.shape[1], 3
    u = torch.randn(1, t, d, dtype=torch.float64)

    def flow(x: torch.Tensor) -> torch.Tensor:
        v, *_ = st.flow(x.view(1, t, d), cond)
        return v.reshape(-1)

    jac = torch.autograd.functional.jacobian(flow, u.reshape(-1))
    sign, logabsdet = torch.linalg.slogdet(jac)
    _, _, mu, log_sigma = st.flow(u, cond)
    assert abs(log_sigma.abs().sum().item()) > 0.1  # not the identity
    assert torch.allclose(log_sigma.sum(), logabsdet, atol=1e-9)
    # v = μ_tot + σ_tot ⊙ u, the accumulated affine map (ClariNet form)
    v, *_ = st.flow(u, cond)
    assert torch.allclose(v, mu + log_sigma.exp() * u, atol=1e-12)
    # the Jacobian is lower-triangular in time (IAF), diagonal σ_tot
    assert torch.allclose(torch.diagonal(jac), log_sigma.exp().reshape(-1), atol=1e-12)
    assert torch.equal(jac.triu(1), torch.zeros_like(jac))


def test_log_sigma_is_clamped():
    torch.manual_seed(0)
    flow = AffineARFlow(4, 5, StageConfig(width=8, depth=2), -1.0, 0.5)
    with torch.no_grad():
        flow.net.out[-1].weight.normal_(std=50.0)
    _, _, log_sigma = flow(torch.randn(2, 9, 4), torch.randn(2, 9, 5))
    assert log_sigma.min() >= -1.0 and log_sigma.max() <= 0.5
    assert (log_sigma == -1.0).any() and (log_sigma == 0.5).any()


def test_snap_returns_nearest_code_and_calibrated_logits():
    st = make_student("gaussian")
    e = st.codes_unit()
    v = torch.randn(2, 7, e.shape[1]) * 2
    nearest = torch.cdist(v.reshape(-1, e.shape[1]), e).argmin(-1).view(2, 7)
    assert torch.equal(st.snap(v), nearest)
    assert torch.equal(st.snap(e[None, [3, 17, 0]] * 5), torch.tensor([[3, 17, 0]]))
    mu, log_sigma = torch.randn(1, 2, e.shape[1]), torch.randn(1, 2, e.shape[1]) * 0.3
    got = st.calibrated_logits(mu, log_sigma)
    b, t, k = 0, 1, 5
    std = math.sqrt(sum((log_sigma[b, t] * 2).exp()[i] * e[k, i] ** 2 for i in range(e.shape[1])))
    want = (mu[b, t] @ e[k]) / (math.sqrt(6) / math.pi * std)
    assert got[b, t, k].item() == pytest.approx(want.item(), rel=1e-5)


def test_calibrated_logits_approximate_snap_frequencies():
    """The calibrated softmax matches the Monte-Carlo distribution of the snap roughly (it is
    a Gumbel-for-Gaussian moment match, DESIGN §5), much better than a uniform guess."""
    torch.manual_seed(0)
    st = make_student("gaussian")
    d = st.cfg.gaussian.code_dim
    mu = torch.randn(1, 1, d) * 0.6
    log_sigma = torch.full((1, 1, d), math.log(0.3))
    q = st.calibrated_logits(mu, log_sigma).softmax(-1)[0, 0]
    draws = st.snap(mu + log_sigma.exp() * torch.randn(20000, 1, d))[:, 0]
    freq = torch.bincount(draws, minlength=32).float() / draws.numel()
    tv = 0.5 * (q - freq).abs().sum()
    tv_uniform = 0.5 * (1 / 32 - freq).abs().sum()
    assert tv < 0.5 * tv_uniform


# ---------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_every_stage_and_the_conditioner(family):
    st = make_student(family).train()
    up, lab = upper_codes(2, 8), make_labels(2)
    out = st(up, lab, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(2, 32, 32)
    loss = total_loss(categorical_distill_terms(out, teacher), {"kl": 1.0, "kl_intermediate": 0.1})
    loss.backward()
    nets = st.stages if family == "categorical" else st.flows
    for net in nets:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert st.conditioner.x_emb.weight.grad.abs().sum() > 0
    st.zero_grad()
    out = st(up, lab, generator=torch.Generator().manual_seed(0))
    (out.soft * torch.randn(2, 32, 32)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in list(nets)[-1].parameters())


# ---------------------------------------------------------------------------------------------
# (h) smoke distillation


def test_smoke_distillation_lowers_reverse_kl():
    """30 Adam steps of the categorical student against a fixed random tiny teacher. The
    teacher's weights are scaled ×3 so its conditionals are peaked (max prob ≈ 0.4) and vary
    with the context; at init scale they are near uniform and the test would be trivial."""
    torch.manual_seed(0)
    prior = Prior(tiny_upsampler(1, labels=False)).eval()
    with torch.no_grad():
        for p in prior.parameters():
            p.mul_(3.0)
    prior.requires_grad_(False)
    st = Student.from_teacher(prior, tiny_student(1, labels=False))
    opt = torch.optim.Adam(st.parameters(), lr=3e-3)
    up = upper_codes(16, 8)
    eval_noise = st.make_noise(16, 32, generator=torch.Generator().manual_seed(5))
    weights = {"kl": 1.0, "kl_intermediate": 0.1}

    def eval_kl() -> float:
        with torch.no_grad():
            s = st(up, noise=eval_noise)
            return categorical_distill_terms(s, prior.logits(s.codes, upper=up))["kl"].item()

    before = eval_kl()
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        s = st(up, generator=gen)
        with torch.no_grad():
            teacher = prior.logits(s.codes, upper=up)  # ONE teacher-forced pass
        loss = total_loss(categorical_distill_terms(s, teacher), weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_kl()
    assert before > 0.5
    assert after < 0.7 * before, (before, after)
