"""Reading and writing audio: probe, crop without decoding the whole file, load, write.

Crops seek with soundfile and read only the frames they need (plus a resampler margin), then
resample with soxr onto the model-rate sample grid of the whole file: a crop at model-rate
offset ``o`` equals samples ``o : o + n`` of the whole file resampled (to ~1e-6), so crops of
the same file agree wherever they overlap. libsndfile ≥ 1.1 reads MP3; with an older one MP3
falls back to librosa/audioread with offset and duration (slower, approximate seeking).

Arrays are float32 ``[C, T]`` (channels first) everywhere.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Extensions scanned for audio (lower case, no dot).
AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")
#: Whether this libsndfile decodes MP3 (libsndfile ≥ 1.1).
SOUNDFILE_MP3 = "MP3" in sf.available_formats()
# Resampler context each side of a crop, in model-rate samples at ratio ≤ 1; soxr's HQ filter
# needs ~128 output samples to match a whole-file resample to 1e-6 (measured), 2x for safety.
_MARGIN = 256


class AudioError(ValueError):
    """An audio file cannot be used. ``reason``: ``empty``, ``corrupt``, ``unreadable`` or
    ``non_finite`` (NaN or Inf samples)."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        msg = f"{path}: {reason.replace('_', ' ')}"
        super().__init__(f"{msg} ({detail})" if detail else msg)


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`probe` learns from a header: native rate, channels, frames, seconds."""

    sample_rate: int
    channels: int
    frames: int
    duration: float

    def length_at(self, sample_rate: int) -> int:
        """Number of samples of the whole file resampled to ``sample_rate`` (soxr's count)."""
        return resampled_length(self.frames, self.sample_rate, sample_rate)


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """Length soxr gives ``frames`` resampled from ``rate_in`` to ``rate_out`` (round half up)."""
    if rate_in == rate_out:
        return frames
    return (2 * frames * rate_out + rate_in) // (2 * rate_in)


def _use_soundfile(path: str) -> bool:
    return SOUNDFILE_MP3 or not path.lower().endswith(".mp3")


def _fail(path: str, exc: BaseException) -> AudioError:
    """Classify an exception from a decoder as an :class:`AudioError`."""
    if isinstance(exc, AudioError):
        return exc
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return AudioError(path, "unreadable", str(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.ENOENT, errno.EISDIR):
        return AudioError(path, "unreadable", str(exc))
    try:
        if os.path.getsize(path) == 0:
            return AudioError(path, "empty", "0 bytes")
    except OSError as e:
        return AudioError(path, "unreadable", str(e))
    if not os.access(path, os.R_OK):
        return AudioError(path, "unreadable", "permission denied")
    return AudioError(path, "corrupt", f"{type(exc).__name__}: {exc}".strip())


def check_finite(path: str, x: np.ndarray, start: int = 0, sample_rate: int = 0) -> np.ndarray:
    """``x`` (``[C, n]`` native-rate frames from frame ``start``) if every sample is finite,
    else :class:`AudioError` ``non_finite`` saying how many NaN/Inf samples there are and
    where the first one is (seconds when ``sample_rate`` is known, else frames)."""
    finite = np.isfinite(x)
    if finite.all():
        return x
    n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    first = start + int(np.argmin(finite.all(axis=0)))
    where = f"{first / sample_rate:.3f} s" if sample_rate > 0 else f"frame {first}"
    kinds = " and ".join(f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "Inf")) if n)
    raise AudioError(path, "non_finite", f"{kinds} samples, the first at {where}")


def probe(path: str) -> AudioInfo:
    """Header information of ``path`` without decoding it.

    Raises :class:`AudioError` (``empty`` for 0 bytes, ``corrupt`` when no decoder
    understands it, ``unreadable`` when it cannot be opened).
    """
    path = os.fspath(path)
    try:
        if _use_soundfile(path):
            info = sf.info(path)
            sr, ch, frames = int(info.samplerate), int(info.channels), int(info.frames)
        else:  # pragma: no cover - only with libsndfile < 1.1
            import audioread

            with audioread.audio_open(path) as f:
                sr, ch = int(f.samplerate), int(f.channels)
                frames = int(round(f.duration * sr))
    except Exception as e:  # decoders raise many types; all mean "cannot use this file"
        raise _fail(path, e) from e
    if sr <= 0 or ch <= 0:
        raise AudioError(path, "corrupt", f"sample rate {sr}, channels {ch}")
    return AudioInfo(sample_rate=sr, channels=ch, frames=frames, duration=frames / sr)


def _read_frames(path: str, start: int, frames: int) -> np.ndarray:
    """Native-rate frames ``[start, start + frames)`` as float32 ``[C, n]`` (n may be short).

    NaN or Inf samples are an :class:`AudioError` (``non_finite``): they would poison every
    statistic, cache, code and loss they reach.
    """
    try:
        if _use_soundfile(path):
            with sf.SoundFile(path) as f:
                if start > 0:
                    f.seek(start)
                data = f.read(frames, dtype="float32", always_2d=True)
                sr = int(f.samplerate)
            x = np.ascontiguousarray(data.T)
        else:  # pragma: no cover - only with libsndfile < 1.1
            import librosa

            sr = probe(path).sample_rate
            y, _ = librosa.load(
                path, sr=None, mono=False, offset=start / sr, duration=frames / sr, dtype=np.float32
            )
            x = np.atleast_2d(y)[:, :frames]
    except Exception as e:
        raise _fail(path, e) from e
    return check_finite(path, x, start, sr)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """``x [C, T]`` cut or right-padded with zeros to ``[C, n]``."""
    if x.shape[1] >= n:
        return x[:, :n]
    return np.pad(x, ((0, 0), (0, n - x.shape[1])))


def resample(x: np.ndarray, rate_in: int, rate_out: int, quality: str = "HQ") -> np.ndarray:
    """Resample float32 ``[C, T]`` with soxr → ``[C, resampled_length(T)]``."""
    if rate_in == rate_out:
        return x
    y = soxr.resample(np.ascontiguousarray(x.T), rate_in, rate_out, quality=quality)
    return np.ascontiguousarray(np.asarray(y, dtype=np.float32).reshape(-1, x.shape[0]).T)


def read_crop_samples(
    path: str, offset: int, length: int, sample_rate: int, info: AudioInfo | None = None
) -> np.ndarray:
    """Samples ``[offset, offset + length)`` of ``path`` at ``sample_rate``: float32 ``[C, length]``.

    Reads only the native frames that cover the crop plus a resampler margin. The read starts
    on an input frame that falls exactly on the output grid (a multiple of
    ``rate_in / gcd(rate_in, rate_out)``), so the result equals the same samples of the whole
    file resampled. Past the end of the file the crop is zero-padded. ``info`` skips a probe.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"offset and length must be >= 0, got {offset}, {length}")
    info = info or probe(path)
    rin, rout = info.sample_rate, sample_rate
    if rin == rout:
        return _fit(_read_frames(path, offset, length), length)
    g = math.gcd(rin, rout)
    step_in, step_out = rin // g, rout // g
    margin = max(_MARGIN, math.ceil(_MARGIN * rout / rin))
    out0 = max(0, (offset - margin) // step_out * step_out)  # on the grid: out0 * rin / rout ∈ ℕ
    in0 = out0 // step_out * step_in
    in1 = min(info.frames, -(-(offset + length + margin) * rin // rout))
    if in0 >= in1:
        return np.zeros((info.channels, length), dtype=np.float32)
    chunk = _read_frames(path, in0, in1 - in0)
    y = resample(chunk, rin, rout)
    return _fit(y[:, offset - out0 :], length)


def read_crop(path: str, start_s: float, duration_s: float, sample_rate: int) -> np.ndarray:
    """``duration_s`` seconds from ``start_s`` at ``sample_rate``: float32 ``[C, T]``.

    ``T = round(duration_s * sample_rate)``; see :func:`read_crop_samples`.
    """
    return read_crop_samples(
        path, round(start_s * sample_rate), round(duration_s * sample_rate), sample_rate
    )


def load_audio(path: str, sample_rate: int | None = None, mono: bool = False) -> np.ndarray:
    """The whole file as float32 ``[C, T]`` at ``sample_rate`` (``None``: native rate).

    ``mono=True`` averages the channels → ``[1, T]``.
    """
    info = probe(path)
    x = _read_frames(path, 0, info.frames)
    if sample_rate is not None:
        x = resample(x, info.sample_rate, sample_rate)
    if mono and x.shape[0] > 1:
        x = x.mean(axis=0, keepdims=True)
    return x


def iter_blocks(path: str, block_frames: int = 1 << 16) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """``(info, blocks)``: the file's native-rate float32 ``[C, n]`` blocks, decoded in turn.

    Lets a caller stream a long file (e.g. RMS over the whole file) in bounded memory. A block
    with NaN or Inf samples raises :class:`AudioError` (``non_finite``).
    """
    info = probe(path)

    def gen() -> Iterator[np.ndarray]:
        if not _use_soundfile(path):  # pragma: no cover - only with libsndfile < 1.1
            yield _read_frames(path, 0, info.frames)
            return
        start = 0
        try:
            with sf.SoundFile(path) as f:
                while True:
                    data = f.read(block_frames, dtype="float32", always_2d=True)
                    if not len(data):
                        break
                    block = check_finite(
                        path, np.ascontiguousarray(data.T), start, info.sample_rate
                    )
                    start += block.shape[1]
                    yield block
        except Exception as e:
            raise _fail(path, e) from e

    return info, gen()


def write_wav(
    path: str, audio: np.ndarray | torch.Tensor, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """Write ``audio`` (numpy or torch, ``[C, T]`` or ``[T]``) as WAV, clipped to [-1, 1].

    Creates missing parent folders. ``subtype`` is a soundfile subtype (``PCM_16``, ``FLOAT``).
    """
    if hasattr(audio, "detach"):  # a torch tensor, without importing torch here
        audio = audio.detach().float().cpu().numpy()
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio must be [C, T] or [T], got shape {x.shape}")
    if x.shape[0] > x.shape[1]:
        log.warning("writing %s with %d channels and %d samples: is it [T, C]?", path, *x.shape)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    sf.write(path, np.clip(x, -1.0, 1.0).T, sample_rate, subtype=subtype, format="WAV")
