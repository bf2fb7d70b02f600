"""Probing, cropping (seek + soxr), loading and writing audio files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from teacher.data.audio import (
    SOUNDFILE_MP3,
    AudioError,
    iter_blocks,
    load_audio,
    probe,
    read_crop,
    read_crop_samples,
    resample,
    write_wav,
)


def _stereo(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """``[T, 2]``: a 440 Hz sine left, noise right (so resampler edges would show)."""
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * rng.standard_normal(len(t))
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.fixture
def wav44(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _stereo(44100, 3.0), 44100, subtype="FLOAT")
    return str(path)


def test_probe(wav44):
    info = probe(wav44)
    assert (info.sample_rate, info.channels, info.frames) == (44100, 2, 132300)
    assert info.duration == pytest.approx(3.0)
    assert info.length_at(22050) == 66150


def test_crop_shape_and_matches_whole_file(wav44):
    full = load_audio(wav44, 22050)
    assert full.shape == (2, 66150) and full.dtype == np.float32
    for offset in (0, 1, 12345, 66150 - 4096):
        crop = read_crop_samples(wav44, offset, 4096, 22050)
        assert crop.shape == (2, 4096) and crop.dtype == np.float32
        np.testing.assert_allclose(crop, full[:, offset : offset + 4096], atol=1e-5)
    assert read_crop(wav44, 1.0, 0.5, 22050).shape == (2, 11025)


@pytest.mark.parametrize("rate_in, rate_out", [(48000, 22050), (16000, 22050), (37800, 16000)])
def test_crop_matches_whole_file_odd_ratios(tmp_path, rate_in, rate_out):
    path = str(tmp_path / "x.flac")
    sf.write(path, _stereo(rate_in, 2.0, seed=1), rate_in)
    full = load_audio(path, rate_out)
    crop = read_crop_samples(path, 7777, 2048, rate_out)
    np.testing.assert_allclose(crop, full[:, 7777 : 7777 + 2048], atol=1e-4)


def test_crop_past_end_zero_padded(wav44):
    crop = read_crop_samples(wav44, 66150 - 100, 300, 22050)
    assert crop.shape == (2, 300)
    assert np.abs(crop[:, :100]).max() > 0.01 and not crop[:, 100:].any()
    same_rate = read_crop_samples(wav44, 132300 - 10, 30, 44100)
    assert same_rate.shape == (2, 30) and not same_rate[:, 10:].any()


def test_resampling_preserves_sine_frequency(tmp_path):
    sr_in, sr_out, f0 = 44100, 16000, 1000.0
    t = np.arange(sr_in * 2) / sr_in
    path = str(tmp_path / "sine.wav")
    sf.write(path, 0.5 * np.sin(2 * np.pi * f0 * t), sr_in, subtype="FLOAT")
    x = read_crop(path, 0.5, 1.0, sr_out)[0]
    assert x.shape == (sr_out,)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / sr_out)
    assert abs(freqs[spec.argmax()] - f0) <= 1.0
    assert np.sqrt(np.mean(x**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.skipif(not SOUNDFILE_MP3, reason="libsndfile without MP3")
def test_mp3_crop_seeks(tmp_path):
    path = str(tmp_path / "a.mp3")
    sf.write(path, _stereo(44100, 2.0), 44100, format="MP3")
    full = load_audio(path, 22050)
    crop = read_crop_samples(path, 20000, 1024, 22050)
    np.testing.assert_allclose(crop, full[:, 20000:21024], atol=1e-4)


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty"), (b"RIFF" + bytes(range(256)) * 20, "corrupt")],
    ids=["empty", "corrupt"],
)
def test_unreadable_files_raise_audio_error(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError) as e:
        probe(str(path))
    assert e.value.reason == reason and isinstance(e.value, ValueError)
    assert "bad.wav" in str(e.value)
    with pytest.raises(AudioError):
        read_crop(str(path), 0.0, 0.1, 16000)
    with pytest.raises(AudioError) as e:
        probe(str(tmp_path / "missing.wav"))
    assert e.value.reason == "unreadable"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_raise_audio_error(tmp_path, bad):
    """NaN/Inf samples are refused wherever they are read: whole file, blocks, a crop that
    covers them (resampled or not); a crop elsewhere in the file still reads."""
    x = _stereo(16000, 1.0)
    x[8000, 1] = bad  # 0.5 s, right channel
    path = str(tmp_path / "bad.wav")
    sf.write(path, x, 16000, subtype="FLOAT")
    kind = "NaN" if np.isnan(bad) else "Inf"
    for read in (
        lambda: load_audio(path),
        lambda: load_audio(path, 22050, mono=True),
        lambda: list(iter_blocks(path, block_frames=1000)[1]),
        lambda: read_crop_samples(path, 7000, 2000, 16000),
        lambda: read_crop_samples(path, 5000, 2000, 11025),
    ):
        with pytest.raises(
            AudioError, match=rf"bad\.wav: non finite \(1 {kind} samples, the first at 0\.500 s\)"
        ) as e:
            read()
        assert e.value.reason == "non_finite"
    assert np.isfinite(read_crop_samples(path, 0, 4000, 16000)).all()


def test_write_wav_clips_and_accepts_tensors(tmp_path):
    path = str(tmp_path / "sub" / "out.wav")
    write_wav(path, torch.tensor([[0.5, 2.0, -3.0, 0.0]]), 8000)
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == 8000 and x.shape == (4, 1)
    np.testing.assert_allclose(x[:, 0], [0.5, 1.0, -1.0, 0.0], atol=1e-4)
    write_wav(path, np.zeros(10), 8000, subtype="FLOAT")
    assert probe(path).frames == 10
    with pytest.raises(ValueError, match="shape"):
        write_wav(path, np.zeros((1, 2, 3)), 8000)


def test_resample_identity_and_mono_load(wav44):
    x = np.ones((2, 100), dtype=np.float32)
    assert resample(x, 100, 100) is x
    mono = load_audio(wav44, 22050, mono=True)
    assert mono.shape == (1, 66150)
