"""Audio losses and metrics against hand numbers and an independent STFT (librosa)."""

import math

import numpy as np
import pytest
import torch

from teacher.vqvae import losses


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and unlike two it does not slow
    down many-fold when a neighbouring process keeps the other core busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _noise(b: int = 2, t: int = 4096, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, t, generator=g) * 2 - 1


def test_identical_signals_give_zero():
    x = _noise()
    assert losses.lmix_loss(x, x, l1=1.0, l2=1.0, linf=1.0, linf_k=64).item() == 0.0
    assert torch.all(losses.multispectral_loss(x, x) == 0)
    assert torch.all(losses.spectral_loss(x, x) == 0)
    assert torch.all(losses.spectral_convergence(x, x) == 0)


def test_sample_losses_hand_numbers():
    x = torch.zeros(2, 1, 4)
    x_hat = torch.tensor([[[3.0, 1.0, 2.0, 0.0]], [[1.0, -1.0, 1.0, -1.0]]])
    # squared errors: item 0 [9, 1, 4, 0], item 1 [1, 1, 1, 1]
    assert losses.l2_loss(x, x_hat).item() == pytest.approx(18 / 8)
    assert losses.l1_loss(x, x_hat).item() == pytest.approx(10 / 8)
    # top-2 per item: (9 + 4) / 2 = 6.5 and 1, then the batch mean
    assert losses.linf_loss(x, x_hat, k=2).item() == pytest.approx((6.5 + 1) / 2)
    # k larger than the clip is capped: mean of everything
    assert losses.linf_loss(x, x_hat, k=100).item() == pytest.approx(18 / 8)
    mix = losses.lmix_loss(
        x, x_hat, l1=0.5, l2=1.0, linf=0.1, linf_k=2, bandwidth_l1=2.0, bandwidth_l2=4.0
    )
    assert mix.item() == pytest.approx(0.5 * (10 / 8) / 2 + (18 / 8) / 4 + 0.1 * 3.75 / 4)


def test_stft_magnitude_matches_librosa():
    librosa = pytest.importorskip("librosa")
    x = _noise(1, 3000)
    ours = losses.stft_magnitude(x, 512, 128, 384)[0].numpy()
    ref = np.abs(
        librosa.stft(
            x[0, 0].numpy().astype(np.float64),
            n_fft=512,
            hop_length=128,
            win_length=384,
            window="hann",
            center=True,
            pad_mode="reflect",
        )
    )
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_spectral_losses_hand_cases():
    x = _noise(2, 4096)
    # |S| is linear in the signal: silence as the estimate leaves the reference's own norm
    ref_norm = losses.stft_magnitude(x).reshape(2, -1).norm(dim=1)
    torch.testing.assert_close(losses.spectral_loss(x, torch.zeros_like(x)), ref_norm)
    per_res = [
        losses.stft_magnitude(x, n, h, w).reshape(2, -1).norm(dim=1)
        for n, h, w in [(2048, 240, 1200), (1024, 120, 600), (512, 50, 240)]
    ]
    torch.testing.assert_close(
        losses.multispectral_loss(x, torch.zeros_like(x)), torch.stack(per_res).mean(0)
    )
    # a scaled copy: SC = |1 - a| exactly
    sc = losses.spectral_convergence(x, 0.7 * x)
    torch.testing.assert_close(sc, torch.full((2,), 0.3), rtol=1e-5, atol=1e-6)


def test_spectral_convergence_masks_silence_and_db():
    x = torch.zeros(2, 1, 4096)
    x[1] = _noise(1, 4096)[0]
    sc = losses.spectral_convergence(x, _noise(2, 4096, seed=1))
    assert sc[0].item() == 0.0  # near-silent reference: masked, not a huge ratio
    assert sc[1].item() > 0.5
    assert losses.sc_db(torch.tensor(0.1)).item() == pytest.approx(-20.0)
    assert losses.sc_db(torch.tensor(0.01)).item() == pytest.approx(-40.0)
    assert math.isfinite(losses.sc_db(torch.tensor(0.0)).item())


def test_dtype_and_layouts():
    x = _noise(2, 2048)
    mag = losses.stft_magnitude(x.bfloat16(), 256, 64, 256)
    assert mag.dtype == torch.float32 and mag.shape == (2, 129, 33)
    # (B, T) and (B, 1, T) agree; stereo is averaged to mono
    torch.testing.assert_close(losses.stft_magnitude(x[:, 0]), losses.stft_magnitude(x))
    stereo = torch.cat([x, -x + 0.5], dim=1)
    torch.testing.assert_close(
        losses.stft_magnitude(stereo), losses.stft_magnitude(torch.full_like(x, 0.25))
    )
    # signals shorter than n_fft / 2 still work (zero padding instead of reflect)
    assert losses.stft_magnitude(_noise(1, 256)).shape[0] == 1


def test_codebook_statistics():
    codes = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    counts = losses.code_counts(codes, 8)
    assert counts.tolist() == [2, 2, 2, 2, 0, 0, 0, 0]
    assert losses.codebook_usage(counts).item() == 4
    assert losses.codebook_entropy(counts).item() == pytest.approx(math.log(4), abs=1e-6)
    assert losses.codebook_entropy(torch.tensor([5.0, 0, 0])).item() == pytest.approx(0, abs=1e-6)
    assert losses.codebook_entropy(torch.zeros(4)).item() == 0.0
    assert losses.max_entropy(2048) == pytest.approx(math.log(2048))
