"""Distillation losses: the closed-form reverse KL against a hand computation and a Monte-Carlo
estimate, gradients through q only, the per-stage KL terms, the Gaussian MC option, MR-STFT and
power losses, straight-through code embeddings through a frozen VQ-VAE decoder, warm-up and
the weighted total."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    categorical_distill_terms,
    ce_warmup,
    gaussian_mc_terms,
    mrstft_loss,
    power_loss,
    reverse_kl,
    straight_through_embeddings,
    total_loss,
    total_variation,
    warmup_weight,
)
from student import CategoricalIAF, GaussianIAF, tiny_student
from student.base import StudentSample, straight_through_onehot
from teacher.presets import tiny_vqvae
from teacher.vqvae import VQVAE


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# (d) reverse KL


def test_reverse_kl_matches_hand_computation():
    s = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]])
    t = torch.tensor([[[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]]])
    got = reverse_kl(s, t)
    assert got.shape == (1, 2)
    for pos in range(2):
        zq = sum(math.exp(x) for x in s[0, pos].tolist())
        zp = sum(math.exp(x) for x in t[0, pos].tolist())
        want = 0.0
        for a, b in zip(s[0, pos].tolist(), t[0, pos].tolist()):
            q, p = math.exp(a) / zq, math.exp(b) / zp
            want += q * (math.log(q) - math.log(p))
        assert got[0, pos].item() == pytest.approx(want, rel=1e-5)


def test_reverse_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(1, 1, 12, generator=g) * 2, torch.randn(1, 1, 12, generator=g) * 2
    log_q, log_p = s.log_softmax(-1)[0, 0], t.log_softmax(-1)[0, 0]
    draws = torch.multinomial(log_q.exp(), 200_000, replacement=True, generator=g)
    mc = (log_q[draws] - log_p[draws]).mean().item()
    assert reverse_kl(s, t).item() == pytest.approx(mc, abs=0.02)


def test_reverse_kl_zero_iff_equal_and_shift_invariant():
    s = torch.randn(3, 5, 7)
    assert torch.allclose(reverse_kl(s, s), torch.zeros(3, 5), atol=1e-6)
    assert torch.allclose(reverse_kl(s, s + 4.0), torch.zeros(3, 5), atol=1e-5)  # logits
    assert (reverse_kl(s, torch.randn(3, 5, 7)) > 0).all()
    with pytest.raises(ValueError, match="shape"):
        reverse_kl(s, s[:, :4])


def test_reverse_kl_gradient_flows_through_q_only():
    s = torch.randn(2, 4, 6, requires_grad=True)
    t = torch.randn(2, 4, 6, requires_grad=True)
    reverse_kl(s, t).sum().backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    # d KL / d logits = q ⊙ (log q − log p − KL): check against that closed form
    log_q, log_p = s.detach().log_softmax(-1), t.detach().log_softmax(-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1, keepdim=True)
    assert torch.allclose(s.grad, log_q.exp() * (log_q - log_p - kl), atol=1e-6)


def test_reverse_kl_mask_and_fp32_under_autocast():
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    full, masked = reverse_kl(s, t), reverse_kl(s, t, mask)
    assert torch.equal(masked, full * mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reverse_kl(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# total variation: one minus a speculative draft's acceptance


def test_total_variation_is_half_l1_and_one_minus_the_acceptance_of_a_draft():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
    tv = total_variation(s, t)
    q, p = s.softmax(-1), t.softmax(-1)
    assert tv.shape == (2, 3)
    assert torch.allclose(tv, 0.5 * (q - p).abs().sum(-1), atol=1e-6)
    # speculative sampling's rule: a draft d ~ q is kept with probability min(1, p(d)/q(d))
    n = 200_000
    d = torch.multinomial(q[0, 0], n, replacement=True, generator=g)
    kept = torch.rand(n, generator=g) < (p[0, 0, d] / q[0, 0, d]).clamp(max=1.0)
    assert kept.float().mean().item() == pytest.approx(1.0 - tv[0, 0].item(), abs=0.005)
    assert torch.allclose(total_variation(s, s + 3.0), torch.zeros(2, 3), atol=1e-6)
    assert ((tv > 0) & (tv < 1)).all()
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(total_variation(s, t, mask), tv * mask)
    with pytest.raises(ValueError, match="differ in shape"):
        total_variation(s, t[..., :5])


def test_total_variation_gradient_through_q_only_raises_the_acceptance():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 5, 9, generator=g, requires_grad=True)
    t = torch.randn(4, 5, 9, generator=g, requires_grad=True)
    before = total_variation(s, t).mean()
    before.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    with torch.no_grad():
        after = total_variation(s - 0.5 * s.grad / s.grad.norm(), t).mean()
    assert after < before - 1e-4


def test_categorical_distill_terms():
    g = torch.Generator().manual_seed(0)
    stages = [torch.randn(2, 5, 8, generator=g, requires_grad=True) for _ in range(3)]
    teacher = torch.randn(2, 5, 8, generator=g)
    sample = StudentSample(codes=torch.zeros(2, 5, dtype=torch.long), logits=stages)
    terms = categorical_distill_terms(sample, teacher, intermediate_weight=0.25)
    per = [reverse_kl(lg, teacher).mean() for lg in stages]
    assert terms["kl"].item() == pytest.approx(per[2].item())
    # the earlier stages are scored against the SAME teacher logits
    assert terms["kl_intermediate"].item() == pytest.approx((per[0] + per[1]).item() / 2)
    assert torch.allclose(terms["kl_stages"], torch.stack(per).detach())
    assert not terms["kl_stages"].requires_grad
    assert terms["distill"].item() == pytest.approx((per[2] + 0.25 * (per[0] + per[1]) / 2).item())
    # tv: the final stage's, against the same teacher logits
    assert terms["tv"].item() == pytest.approx(total_variation(stages[2], teacher).mean().item())
    terms["kl_intermediate"].backward()
    assert stages[2].grad is None and stages[0].grad.abs().sum() > 0
    one = categorical_distill_terms(StudentSample(sample.codes, stages[:1]), teacher)
    assert one["kl_intermediate"].item() == 0.0
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True
    masked = categorical_distill_terms(sample, teacher, mask=mask)
    assert masked["kl"].item() == pytest.approx(reverse_kl(stages[2], teacher)[0, :2].mean().item())


def test_gaussian_student_calibrated_terms_and_mc_terms():
    torch.manual_seed(0)
    st = GaussianIAF(tiny_student(1, "gaussian", labels=False))
    out = st(torch.randint(0, 32, (2, 2)), generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(2, 8, 32)
    cal = categorical_distill_terms(out, teacher)
    assert cal["kl"] > 0 and cal["kl_stages"].shape == (st.n_passes,)
    e = st.codes_unit()
    s, d = 0.3, st.cfg.gaussian.code_dim
    mc = gaussian_mc_terms(out, teacher, e, bandwidth=s)
    # brute force with torch.distributions: the teacher lifted to a Gaussian mixture around the
    # unit-norm codes, and the entropy of the student's Gaussian N(μ_tot, σ_tot²)
    ce, ent = [], []
    for b in range(2):
        for t in range(8):
            v = out.extras["v"][b, t].detach()
            log_comp = torch.distributions.Normal(e, s).log_prob(v).sum(-1)
            ce.append(-torch.logsumexp(teacher[b, t].log_softmax(-1) + log_comp, dim=0))
            mu, log_sigma = out.extras["mu"][b, t].detach(), out.extras["log_sigma"][b, t].detach()
            ent.append(torch.distributions.Normal(mu, log_sigma.exp()).entropy().sum())
    assert mc["cross_entropy"].item() == pytest.approx(torch.stack(ce).mean().item(), rel=1e-4)
    assert mc["entropy"].item() == pytest.approx(torch.stack(ent).mean().item(), rel=1e-4)
    assert mc["kl"].item() == pytest.approx((mc["cross_entropy"] - mc["entropy"]).item(), rel=1e-5)
    assert d == e.shape[1]
    mc["kl"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in st.flows.parameters())


# ---------------------------------------------------------------------------------------------
# (e) audio losses, straight-through embeddings


def test_mrstft_zero_for_identical_and_grows_with_noise():
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 4096)
    clean = (torch.sin(2 * math.pi * 440 * t) + 0.3 * torch.sin(2 * math.pi * 1234 * t)).view(
        1, 1, -1
    )
    clean = clean.repeat(2, 1, 1)
    assert mrstft_loss(clean, clean.clone()).item() == pytest.approx(0.0, abs=1e-6)
    losses = [
        mrstft_loss(clean + a * torch.randn(clean.shape, generator=g), clean).item()
        for a in (0.01, 0.1, 0.5)
    ]
    assert 0 < losses[0] < losses[1] < losses[2]
    small = dict(fft_sizes=(128, 64), hop_sizes=(32, 16), win_lengths=(128, 64))
    assert mrstft_loss(clean, clean, **small).item() == pytest.approx(0.0, abs=1e-6)
    assert mrstft_loss(clean + 0.1, clean, **small).item() > 0
    with pytest.raises(ValueError, match="Tensor"):
        mrstft_loss(clean[:, 0], clean[:, 0])
    x = clean.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mrstft_loss(x * 0.5, clean)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.abs().sum() > 0


def test_power_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 2048, generator=g)
    assert power_loss(x, x.clone(), n_fft=256).item() == 0.0
    quiet = power_loss(0.2 * x, x, n_fft=256).item()
    assert quiet > power_loss(0.9 * x, x, n_fft=256).item() > 0
    # average power per band: a pure tone and its time shift have (nearly) the same
    t = torch.arange(2048.0)
    tone = torch.sin(2 * math.pi * 0.0625 * t).view(1, 1, -1)
    shifted = torch.sin(2 * math.pi * 0.0625 * (t + 3)).view(1, 1, -1)
    assert power_loss(tone, shifted, n_fft=256) < 1e-2 * power_loss(0.5 * tone, tone, n_fft=256)


def test_straight_through_embeddings():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 10, generator=g, requires_grad=True)
    noise = -torch.log(-torch.log(torch.rand(2, 6, 10, generator=g)))
    tokens = (logits.detach() + noise).argmax(-1)
    soft = straight_through_onehot(tokens, logits + noise, tau=0.5)
    codebook = torch.randn(10, 4, generator=g)
    emb = straight_through_embeddings(soft, codebook)
    assert emb.shape == (2, 4, 6)
    assert torch.equal(emb.detach(), codebook[tokens].transpose(1, 2))
    (emb * torch.randn(2, 4, 6, generator=g)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_spectral_loss_reaches_the_student_through_the_frozen_decoder():
    """The whole spectral path: student straight-through codes -> frozen VQ-VAE decoder of the
    level -> MR-STFT against the decoded ground truth; gradients reach the student only."""
    torch.manual_seed(0)
    vq = VQVAE(tiny_vqvae()).eval().requires_grad_(False)
    vq.codebook(1).normal_()  # a fresh codebook is zeros until its first training batch
    cfg = tiny_student(1, labels=False)
    st = CategoricalIAF(cfg)
    truth = torch.randint(0, 32, (2, 32))
    out = st(torch.randint(0, 32, (2, 8)))
    audio = vq.decode_latents(straight_through_embeddings(out.soft, vq.codebook(1)), 1)
    target = vq.decode([truth], start_level=1)
    assert audio.shape == target.shape == (2, 1, 32 * 32)
    assert torch.allclose(audio, vq.decode([out.codes], start_level=1), atol=1e-5)
    lc = cfg.loss
    loss = mrstft_loss(
        audio, target, lc.stft_fft_sizes, lc.stft_hop_sizes, lc.stft_win_lengths
    ) + power_loss(audio, target, lc.power_n_fft)
    loss.backward()
    assert st.stages[-1].net.out[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vq.parameters())


# ---------------------------------------------------------------------------------------------
# warm-up and total


def test_ce_warmup_and_weight():
    logits = torch.randn(2, 5, 7)
    codes = torch.randint(0, 7, (2, 5))
    want = F.cross_entropy(logits.reshape(-1, 7), codes.reshape(-1))
    assert ce_warmup(logits, codes).item() == pytest.approx(want.item(), rel=1e-6)
    mask = torch.zeros(2, 5)
    mask[1] = 1
    want = F.cross_entropy(logits[1], codes[1])
    assert ce_warmup(logits, codes, mask).item() == pytest.approx(want.item(), rel=1e-6)
    assert [warmup_weight(s, 4) for s in (0, 1, 2, 4, 9)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    assert warmup_weight(0, 0) == 0.0


def test_total_loss():
    terms = {
        "kl": torch.tensor(2.0),
        "kl_intermediate": torch.tensor(3.0),
        "mrstft": torch.tensor(5.0),
    }
    got = total_loss(terms, {"kl": 1.0, "kl_intermediate": 0.1, "mrstft": 2.0, "power": 0.0})
    assert got.item() == pytest.approx(2.0 + 0.3 + 10.0)
    with pytest.raises(KeyError, match="power"):
        total_loss(terms, {"kl": 1.0, "power": 1.0})
    with pytest.raises(ValueError, match="zero"):
        total_loss(terms, {"kl": 0.0})
