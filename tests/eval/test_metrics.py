"""Evaluation metrics on hand-computable cases: scaled copies, identical signals, known SNR,
known distributions, Gaussians with exactly known covariances."""

import logging
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from distill.losses import mrstft_loss
from eval import metrics
from teacher.presets import tiny_upsampler, tiny_vqvae
from teacher.prior.model import Prior
from teacher.vqvae import VQVAE


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def noise(batch: int, length: int, seed: int = 0, channels: int | None = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, length) if channels is None else (batch, channels, length)
    return 0.1 * torch.randn(shape, generator=g)


# ---------------------------------------------------------------------------------------------
# audio


@pytest.mark.parametrize("a", [0.5, 1.5, 0.9])
def test_sc_db_of_scaled_copy(a):
    # |S(a x)| = a |S(x)|, so SC = |1 - a| exactly and SC dB = 20 log10 |1 - a|
    x = noise(2, 8192)
    got = metrics.sc_db(x, a * x)
    assert got.shape == (2,)
    torch.testing.assert_close(
        got, torch.full((2,), 20 * math.log10(abs(1 - a))), atol=1e-3, rtol=0
    )


def test_sc_db_half_is_minus_6db_and_identical_hits_floor():
    x = noise(1, 8192, channels=None)  # [B, T] works too
    assert metrics.sc_db(x, 0.5 * x).item() == pytest.approx(-6.0206, abs=1e-3)
    assert metrics.sc_db(x, x).item() == pytest.approx(-200.0)
    # near-silent references are masked to the floor (Jukebox's definition)
    silent = torch.zeros(1, 8192)
    assert metrics.sc_db(silent, x).item() == pytest.approx(-200.0)


def test_sc_db_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.sc_db(noise(1, 4096), noise(1, 2048))


def test_mrstft_identical_is_zero_and_matches_training_loss():
    x = noise(3, 8192)
    y = x + 0.3 * noise(3, 8192, seed=1)
    assert torch.allclose(metrics.mrstft_distance(x, x), torch.zeros(3), atol=1e-6)
    d = metrics.mrstft_distance(x, y)
    assert d.shape == (3,) and bool((d > 0).all())
    # per item it is the students' training loss with the reference as auraloss's target
    for b in range(3):
        ref = mrstft_loss(y[b : b + 1], x[b : b + 1])
        torch.testing.assert_close(d[b], ref)


def test_mrstft_short_signals_and_scaled_resolutions():
    assert metrics.scaled_resolutions(8000) == ((512, 44, 218), (256, 22, 109), (128, 9, 44))
    assert metrics.scaled_resolutions(44100) == metrics.JUKEBOX_RESOLUTIONS
    x = noise(2, 1000)
    y = noise(2, 1000, seed=3)
    # 1000 samples: only n_fft 512 of Jukebox's three fits
    d = metrics.mrstft_distance(x, y)
    ref = torch.stack(
        [mrstft_loss(y[b : b + 1], x[b : b + 1], (512,), (50,), (240,)) for b in range(2)]
    )
    torch.testing.assert_close(d, ref)
    # shorter than every n_fft: one power-of-two fallback resolution
    short = metrics.mrstft_distance(x[..., :300], y[..., :300])
    assert bool(torch.isfinite(short).all()) and bool((short > 0).all())
    assert torch.allclose(
        metrics.mrstft_distance(x[..., :300], x[..., :300]), torch.zeros(2), atol=1e-6
    )
    assert bool(torch.isfinite(metrics.mrstft_distance(x, y, sample_rate=8000)).all())
    with pytest.raises(ValueError, match="too short"):
        metrics.mrstft_distance(x[..., :8], y[..., :8])


def test_mel_l1_identical_scaled_and_librosa_reference():
    import librosa

    sr = 16000
    x = noise(2, 16000)
    assert torch.allclose(metrics.mel_l1(x, x, sr), torch.zeros(2))
    # scaling by a multiplies mel power by a², so the log-mel L1 is exactly 2 ln a
    torch.testing.assert_close(
        metrics.mel_l1(x, 2.0 * x, sr), torch.full((2,), 2 * math.log(2.0)), atol=1e-4, rtol=0
    )
    # the mel power spectrogram is librosa's (same filterbank, periodic Hann, reflect padding)
    ours = metrics.log_mel(x[:1], sr).exp()[0].numpy()
    ref = librosa.feature.melspectrogram(
        y=x[0, 0].numpy(), sr=sr, n_fft=1024, hop_length=256, n_mels=64, pad_mode="reflect"
    )
    np.testing.assert_allclose(ours, np.maximum(ref, 1e-5), rtol=1e-3, atol=1e-6)
    # the filterbank is built once per (sr, n_fft, n_mels)
    before = metrics._mel_filterbank.cache_info().hits
    metrics.mel_l1(x, x, sr)
    assert metrics._mel_filterbank.cache_info().hits >= before + 2


def test_si_sdr_identical_known_snr_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(160000) / 16000
    ref = (0.5 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.randn(160000, generator=g))[None]
    assert metrics.si_sdr(ref, ref).item() > 60
    for snr in (0.0, 10.0, 20.0):
        n = torch.randn(160000, generator=g)[None]
        n = n * (ref.pow(2).sum() / n.pow(2).sum() / 10 ** (snr / 10)).sqrt()
        est = ref + n
        got = metrics.si_sdr(ref, est).item()
        assert got == pytest.approx(snr, abs=0.5)
        # invariant to scaling the estimate and to a DC offset
        assert metrics.si_sdr(ref, 3.0 * est + 0.1).item() == pytest.approx(got, abs=1e-3)


def test_si_sdr_hand_case_and_shapes():
    # ref = [1, -1, 1, -1], est = ref + [1, 1, -1, -1] (orthogonal, zero-mean): 0 dB
    ref = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    est = ref + torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    assert metrics.si_sdr(ref, est).item() == pytest.approx(0.0, abs=1e-5)
    # half the noise energy: 10 log10 4 = 6.02 dB
    assert metrics.si_sdr(ref, ref + 0.5 * (est - ref)).item() == pytest.approx(6.0206, abs=1e-4)
    assert metrics.si_sdr(noise(3, 500), noise(3, 500, seed=1)).shape == (3,)


# ---------------------------------------------------------------------------------------------
# teacher NLL


@pytest.fixture(scope="module")
def upsampler():
    torch.manual_seed(0)
    prior = Prior(tiny_upsampler(0, labels=False)).eval()
    cfg = prior.cfg
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, cfg.l_bins, (3, cfg.n_ctx), generator=g)
    upper = torch.randint(0, cfg.l_bins, (3, cfg.n_ctx // cfg.upsample_ratio), generator=g)
    return prior, codes, upper


def test_teacher_nll_bits_by_hand(upsampler):
    prior, codes, upper = upsampler
    got = metrics.teacher_nll_bits(prior, codes, upper=upper)
    with torch.no_grad():
        p = torch.softmax(prior.logits(codes, upper=upper).double(), dim=-1)
        hand = -torch.log2(p.gather(-1, codes[..., None])[..., 0]).mean(dim=1)
        # the training loss (bits/token, mean over the batch) agrees too
        bits = prior(codes, upper=upper).metrics["bits_per_token"]
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), hand, atol=1e-5, rtol=0)
    assert got.mean().item() == pytest.approx(bits.item(), abs=1e-5)
    # temperature divides the logits
    with torch.no_grad():
        p2 = torch.softmax(prior.logits(codes, upper=upper).double() / 0.5, dim=-1)
        hand2 = -torch.log2(p2.gather(-1, codes[..., None])[..., 0]).mean(dim=1)
    torch.testing.assert_close(
        metrics.teacher_nll_bits(prior, codes, upper=upper, temperature=0.5).double(),
        hand2,
        atol=1e-5,
        rtol=0,
    )
    with pytest.raises(ValueError, match="temperature"):
        metrics.teacher_nll_bits(prior, codes, upper=upper, temperature=0.0)


def test_teacher_nll_bits_of_constant_logits_is_log2_v():
    torch.manual_seed(0)
    prior = Prior(tiny_upsampler(0, labels=False)).eval()
    with torch.no_grad():
        prior.prior.x_out.weight.zero_()  # tied to x_emb: every logit is 0
    cfg = prior.cfg
    codes = torch.randint(0, cfg.l_bins, (2, cfg.n_ctx))
    upper = torch.randint(0, cfg.l_bins, (2, cfg.n_ctx // cfg.upsample_ratio))
    got = metrics.teacher_nll_bits(prior, codes, upper=upper)
    torch.testing.assert_close(got, torch.full((2,), math.log2(cfg.l_bins)))


# ---------------------------------------------------------------------------------------------
# distributions and codes


def test_kl_per_token():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 16, generator=g)
    assert torch.allclose(metrics.kl_per_token(logits, logits), torch.zeros(2), atol=1e-6)
    # KL([3/4, 1/4] ‖ [1/2, 1/2]) = 3/4 ln(3/2) + 1/4 ln(1/2)
    q = torch.tensor([0.75, 0.25]).log().expand(2, 4, 2)
    p = torch.zeros(2, 4, 2)
    hand = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    torch.testing.assert_close(metrics.kl_per_token(q, p), torch.full((2,), hand))
    assert metrics.kl_per_token(q, p, reduction="none").shape == (2, 4)
    # temperature: teacher logits log[1/3, 2/3] at τ = 0.5 become log[1/5, 4/5]
    pt = torch.tensor([1 / 3, 2 / 3]).log().expand(1, 1, 2)
    qt = torch.tensor([0.5, 0.5]).log().expand(1, 1, 2)
    hand_t = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert metrics.kl_per_token(qt, pt, teacher_temperature=0.5).item() == pytest.approx(
        hand_t, abs=1e-6
    )
    # masked positions do not count
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    torch.testing.assert_close(metrics.kl_per_token(q, p, mask=mask), torch.full((2,), hand))
    with pytest.raises(ValueError, match="reduction"):
        metrics.kl_per_token(q, p, reduction="sum")


def test_entropy_per_token():
    v = 32
    torch.testing.assert_close(
        metrics.entropy_per_token(torch.zeros(2, 3, v)), torch.full((2,), math.log(v))
    )
    two = torch.tensor([0.75, 0.25]).log().expand(1, 6, 2)
    hand = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert metrics.entropy_per_token(two).item() == pytest.approx(hand, abs=1e-6)
    peaked = torch.zeros(1, 2, v)
    peaked[..., 3] = 100.0
    assert metrics.entropy_per_token(peaked).item() == pytest.approx(0.0, abs=1e-6)
    assert metrics.entropy_per_token(two, reduction="none").shape == (1, 6)


def test_codebook_usage():
    l_bins = 32
    uniform = torch.arange(8).repeat(2, 5)  # 8 codes, 10 times each
    u = metrics.codebook_usage(uniform, l_bins)
    assert u["used"] == 8 and u["fraction"] == pytest.approx(0.25)
    assert u["perplexity"] == pytest.approx(8.0, rel=1e-5)
    assert u["entropy"] == pytest.approx(math.log(8), abs=1e-5)
    single = metrics.codebook_usage(torch.full((3, 7), 5), l_bins)
    assert single["used"] == 1 and single["perplexity"] == pytest.approx(1.0, abs=1e-6)
    # 3/4 of one code, 1/4 of another: perplexity exp(H(3/4, 1/4))
    mixed = metrics.codebook_usage(torch.tensor([0, 0, 0, 1]), l_bins)
    assert mixed["perplexity"] == pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-5
    )
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        metrics.codebook_usage(torch.tensor([0, 32]), l_bins)


def test_token_accuracy():
    pred = torch.tensor([[1, 2, 3, 4], [1, 1, 1, 1]])
    true = torch.tensor([[1, 2, 0, 4], [0, 0, 0, 0]])
    torch.testing.assert_close(metrics.token_accuracy(pred, true), torch.tensor([0.75, 0.0]))
    torch.testing.assert_close(metrics.token_accuracy(true, true), torch.ones(2))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(metrics.token_accuracy(pred, true, mask), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.token_accuracy(pred, true[:, :3])


# ---------------------------------------------------------------------------------------------
# Fréchet distance


def exact_gaussian_sample(n: int, mean, std, seed: int) -> torch.Tensor:
    """n points whose sample mean and (unbiased) covariance are EXACTLY mean and diag(std²)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(torch.cov(x.T))
    x = x @ torch.linalg.inv(chol).T  # whitened: covariance exactly I
    return x * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)


def test_frechet_distance_exact_cases():
    a = exact_gaussian_sample(50, [0.0, 0.0, 0.0], [1.0, 2.0, 1.0], seed=0)
    b = exact_gaussian_sample(70, [1.0, -2.0, 0.5], [2.0, 3.0, 1.0], seed=1)
    # ‖μ_a − μ_b‖² + Σ (σ_a − σ_b)² for diagonal covariances = 5.25 + 1 + 1
    assert metrics.frechet_distance(a, b) == pytest.approx(7.25, abs=1e-4)
    assert metrics.frechet_distance(b, a) == pytest.approx(metrics.frechet_distance(a, b), abs=1e-9)
    assert metrics.frechet_distance(a, a.clone()) == pytest.approx(0.0, abs=1e-6)
    # the ridge follows the features' scale: FD(c·a, c·b) = c²·FD(a, b), even for tiny c
    for c in (1e-4, 1e3):
        assert metrics.frechet_distance(c * a, c * b) == pytest.approx(7.25 * c**2, rel=1e-5)
    # float32 input works as well
    assert metrics.frechet_distance(a.float(), b.float()) == pytest.approx(7.25, abs=1e-3)


def test_frechet_distance_large_sample_mean_shift():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.5, -1.0, 0.0, 2.0])
    a = torch.randn(20000, 4, generator=g)
    b = torch.randn(20000, 4, generator=g) + mu
    assert metrics.frechet_distance(a, b) == pytest.approx(float(mu.pow(2).sum()), abs=0.05)


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(
        6, 6, generator=g, dtype=torch.float64
    )
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) + 0.3
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = scipy.linalg.sqrtm(ca @ cb).real
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum()) + np.trace(ca + cb - 2 * root)
    assert metrics.frechet_distance(a, b, eps=0.0) == pytest.approx(ref, rel=1e-8, abs=1e-8)


def test_frechet_distance_fewer_samples_than_dims(caplog):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 16, generator=g)
    metrics._WARNED_FD.discard((5, 5, 16))
    with caplog.at_level(logging.WARNING, logger="eval.metrics"):
        fd = metrics.frechet_distance(a, a + 1.0)
        metrics.frechet_distance(a, a + 2.0)  # the same shapes again: no second warning
    assert caplog.text.count("rank-deficient") == 1
    assert math.isfinite(fd) and fd == pytest.approx(16.0, abs=1e-3)  # equal covariances
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="Tensor\\[N, D\\]"):
        metrics.frechet_distance(a, a[:, :3])


def test_encoder_features_and_fd_vq():
    torch.manual_seed(0)
    vqvae = VQVAE(tiny_vqvae()).eval()
    audio = noise(2, 2048)
    level = 2
    feats = metrics.encoder_features(vqvae, audio, level)
    d = vqvae.cfg.emb_width
    assert feats.shape == (2, 2 * d) and feats.dtype == torch.float32
    with torch.no_grad():
        z = vqvae.encode_latents(audio, level)  # [B, D, 16]
    torch.testing.assert_close(feats[:, :d], z.mean(-1))
    torch.testing.assert_close(feats[:, d:], z.std(-1, unbiased=False))
    seg = metrics.encoder_features(vqvae, audio, level, frames_per_vector=4)
    assert seg.shape == (2 * z.shape[-1] // 4, 2 * d)
    torch.testing.assert_close(seg[1, :d], z[0, :, 4:8].mean(-1))
    assert metrics.fd_vq(vqvae, audio, audio.clone(), level, frames_per_vector=4) == pytest.approx(
        0.0, abs=1e-6
    )
    other = metrics.fd_vq(
        vqvae, audio, 0.5 * noise(2, 2048, seed=5) + 0.2, level, frames_per_vector=4
    )
    assert other > 0
    assert "FAD" not in metrics.FD_VQ_NAME and "VQ-VAE encoder" in metrics.FD_VQ_NAME
    with pytest.raises(ValueError, match="frames_per_vector"):
        metrics.encoder_features(vqvae, audio, level, frames_per_vector=1)
