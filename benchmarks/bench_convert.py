"""Peak memory of converting a multi-GB checkpoint in OpenAI's layout into a teacher folder.

A synthetic teacher is written the way OpenAI's files are (``torch.save({"model": state_dict})``
per part): the released VQ-VAE, the released middle upsampler (width 1920, conditioner width
1024) cut to ``--depth`` layers, which holds almost all the bytes, and tiny bottom and top
priors. Each conversion runs in a fresh subprocess, which reports its peak resident set
(``VmHWM``) and, sampled every 20 ms, the peak of its anonymous and file-backed parts. Modes:

- ``zip``: torch's zip format, memory-mapped, mapped pages released after each tensor (default);
- ``zip-keep-pages``: the same without releasing pages (they stay resident as page cache
  mapped into the process: reclaimable, but counted in its RSS);
- ``legacy``: the pre-1.6 format (``_use_new_zipfile_serialization=False``, as OpenAI's 2020
  files), which cannot be mapped: unpickled onto the meta device, data read by file offset
  (default);
- ``legacy-whole``: the same file read whole by ``torch.load`` (the fallback for layouts the
  lazy reader does not cover), once to check and once to write.

    python benchmarks/bench_convert.py [--depth 56] [--workdir /tmp/bench_convert]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("zip", "zip-keep-pages", "legacy", "legacy-whole")


def synthetic_configs(depth: int):
    """Released VQ-VAE, tiny bottom/top priors, and the released middle upsampler at ``depth``."""
    from teacher.presets import (
        ModelConfigs,
        jukebox_vqvae,
        tiny_top_prior,
        tiny_upsampler,
        upsampler,
    )

    middle = upsampler(1)
    middle = dataclasses.replace(
        middle, transformer=dataclasses.replace(middle.transformer, depth=depth)
    )
    return ModelConfigs(
        "synthetic", jukebox_vqvae(), (tiny_upsampler(0), middle.validate(), tiny_top_prior())
    )


def write_checkpoints(folder: Path, depth: int, legacy: bool) -> int:
    """OpenAI-style ``.pth.tar`` files of random weights; returns their total size in bytes."""
    from teacher.released.convert import expected_tensors

    folder.mkdir(parents=True, exist_ok=True)
    cfgs = synthetic_configs(depth)
    files = {"vqvae.pth.tar": cfgs.vqvae}
    files.update({f"prior_level_{i}.pth.tar": c for i, c in enumerate(cfgs.priors)})
    g = torch.Generator().manual_seed(0)
    for name, cfg in files.items():
        state = {
            k: torch.randn(shape, generator=g, dtype=dtype)
            for k, (shape, dtype) in expected_tensors(cfg).items()
        }
        torch.save(
            {"model": state, "step": 0},
            folder / name,
            _use_new_zipfile_serialization=not legacy,
        )
        del state
    return sum((folder / n).stat().st_size for n in files)


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child(args: argparse.Namespace) -> None:
    """Convert once and print a JSON line of measurements."""
    import teacher.released.checkpoints as checkpoints
    import teacher.released.convert as convert

    checkpoints.RELEASE_PAGES = args.mode != "zip-keep-pages"
    checkpoints.LAZY_LEGACY = args.mode != "legacy-whole"
    cfgs = synthetic_configs(args.depth)
    base = _status("VmRSS")
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k in peaks:
                peaks[k] = max(peaks[k], _status(k))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    convert.convert_openai([args.ckpt], args.out, model=cfgs, overwrite=True)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    print(
        json.dumps(
            {
                "base_rss": base,
                "peak_rss": _status("VmHWM"),
                "peak_anon": peaks["RssAnon"],
                "peak_file": peaks["RssFile"],
                "seconds": seconds,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=56, help="layers of the big prior (~3.2 GB at 56)")
    p.add_argument("--workdir", default="/tmp/bench_convert")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="zip", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    work = Path(args.workdir)
    rows = []
    try:
        for mode in args.modes:
            legacy = mode.startswith("legacy")
            ckpt = work / ("legacy" if legacy else "zip")
            if not ckpt.exists():
                t0 = time.perf_counter()
                size = write_checkpoints(ckpt, args.depth, legacy)
                print(f"wrote {ckpt}: {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
            size = sum(f.stat().st_size for f in ckpt.iterdir())
            out = work / f"out-{mode}"
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--depth", str(args.depth)]
            cmd += ["--ckpt", str(ckpt), "--out", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            m = json.loads(res.stdout.strip().splitlines()[-1])
            written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            shutil.rmtree(out)
            rows.append((mode, size, written, m))
    finally:
        if work.exists():
            shutil.rmtree(work)

    gb = 1e9
    print(f"\ntorch {torch.__version__}, {os.cpu_count()} CPUs, depth {args.depth}")
    print(
        "| mode | checkpoint GB | written GB | RSS before GB | peak RSS GB | "
        "peak RSS / checkpoint | (peak - before) / checkpoint | peak anon GB | peak file GB | s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, size, written, m in rows:
        print(
            f"| {mode} | {size / gb:.2f} | {written / gb:.2f} | {m['base_rss'] / gb:.2f} | "
            f"{m['peak_rss'] / gb:.2f} | {m['peak_rss'] / size:.2f} | "
            f"{(m['peak_rss'] - m['base_rss']) / size:.2f} | {m['peak_anon'] / gb:.2f} | "
            f"{m['peak_file'] / gb:.2f} | {m['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
