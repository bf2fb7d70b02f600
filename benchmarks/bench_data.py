"""Crops per second of the three ways to read training audio (one thread).

Writes a few minutes of 44.1 kHz stereo WAV and FLAC into a temporary folder and reads random
crops at 22.05 kHz:

  (a) seek + soxr   -- ``cache="none"``: soundfile seeks, reads the crop's frames, soxr
  (b) full decode   -- ``librosa.load`` of the whole file per item, then slice (what a naive
                       loader does; for comparison only)
  (c) decoded cache -- ``cache="decoded"``: the file decoded once at 22.05 kHz into a .npy,
                       crops memory-mapped from it

(a) and (c) go through ``AudioDataset`` (crop + blend + label); (b) is the bare read.

    python benchmarks/bench_data.py [--minutes 4] [--lengths 16384 262144] [--seconds 2]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from benchmarks.timing import seconds_per_call  # noqa: E402
from teacher.data.dataset import AudioDataset, DataConfig, scan_audio  # noqa: E402

SR_FILE, SR_MODEL = 44100, 22050


def make_files(root: str, minutes: float, fmt: str, n_files: int = 2) -> None:
    """``n_files`` stereo files of ``minutes / n_files`` each: tones plus a little noise."""
    rng = np.random.default_rng(0)
    seconds = minutes * 60 / n_files
    for i in range(n_files):
        t = np.arange(int(SR_FILE * seconds)) / SR_FILE
        f0 = 110.0 * (i + 2)
        left = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(len(t))
        right = 0.3 * np.sin(2 * np.pi * 1.5 * f0 * t) + 0.05 * rng.standard_normal(len(t))
        x = np.stack([left, right], axis=1).astype(np.float32)
        sf.write(os.path.join(root, f"song{i}.{fmt}"), x, SR_FILE, subtype="PCM_16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0, help="audio per format")
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 262144])
    p.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement")
    args = p.parse_args()

    def rate(fn: Callable[[int], object], max_calls: int = 2000) -> float:
        """Items per second of ``fn(i)`` over about ``--seconds``."""
        return 1 / seconds_per_call(fn, args.seconds, max_calls)

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import librosa

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("wav", "flac"):
            root = os.path.join(tmp, fmt)
            os.makedirs(root)
            make_files(root, args.minutes, fmt)
            files = sorted(os.path.join(root, f) for f in os.listdir(root))
            for length in args.lengths:
                base = dict(root=root, sample_rate=SR_MODEL, sample_length=length, seed=0)
                cache_dir = os.path.join(tmp, f"cache_{fmt}_{length}")
                seek = AudioDataset(DataConfig(cache="none", **base))
                t0 = time.perf_counter()
                scan = scan_audio(DataConfig(cache="decoded", cache_dir=cache_dir, **base))
                prep = time.perf_counter() - t0
                cached = AudioDataset(
                    DataConfig(cache="decoded", cache_dir=cache_dir, **base), scan
                )
                n = len(seek)

                def full(i: int, length: int = length, files: list[str] = files) -> np.ndarray:
                    rng = np.random.default_rng(i)
                    path = files[int(rng.integers(len(files)))]
                    y, _ = librosa.load(path, sr=SR_MODEL, mono=False, res_type="soxr_hq")
                    off = int(rng.integers(y.shape[-1] - length))
                    return y[:, off : off + length]

                r_seek = rate(lambda i, ds=seek, n=n: ds[i % n])
                r_full = rate(full, max_calls=50)
                r_cache = rate(lambda i, ds=cached, n=n: ds[i % n])
                rows.append((fmt, length, r_seek, r_full, r_cache, prep))

    header = ["format", "crop", "(a) seek+soxr /s", "(b) full decode /s", "(c) cache /s"]
    header += ["a/b", "c/b", "c/a", "cache build s"]
    table = [
        [
            fmt,
            f"{length} ({length / SR_MODEL:.2f} s)",
            f"{a:.1f}",
            f"{b:.2f}",
            f"{c:.1f}",
            f"{a / b:.0f}x",
            f"{c / b:.0f}x",
            f"{c / a:.1f}x",
            f"{prep:.2f}",
        ]
        for fmt, length, a, b, c, prep in rows
    ]
    title = (
        f"items/s, 1 thread: {args.minutes:g} min of {SR_FILE} Hz stereo per format "
        f"(2 files), read at {SR_MODEL} Hz; torch {torch.__version__}, "
        f"libsndfile {sf.__libsndfile_version__}"
    )
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for h in header:
            t.add_column(h, justify="right")
        for r in table:
            t.add_row(*r)
        Console(width=160).print(t)
    except ImportError:
        print(title)
        print(" | ".join(header))
        for r in table:
            print(" | ".join(r))


if __name__ == "__main__":
    main()
