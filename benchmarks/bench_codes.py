"""Code cache vs encoding on the fly: where a prior's training codes should come from (CPU).

At the demo sizes (``small_vqvae`` at 22.05 kHz: hops 8/32/128, width 32; the ``small`` prior
presets with 512-code windows) and one thread, for each level:

  items/s      -- one training window with its labels (and the upper codes): (cache)
                  ``CodeDataset`` slicing the memory-mapped codes; (on the fly)
                  ``AudioDataset`` cropping ``n_ctx · hop`` samples from the decoded-audio
                  cache AND encoding them with the VQ-VAE (levels L and L+1).
  step ms      -- one optimiser step of the prior on a batch, including getting the batch
                  (and, on the fly, encoding it): DataLoader-free, so it is data + encode +
                  forward + backward + Adam.
  build s      -- the cache's one-off cost: encoding all the audio once at every level
                  (``build_code_cache``), and after how many steps it has paid for itself.

The VQ-VAE and the prior have random weights: the costs do not depend on training.

    python benchmarks/bench_codes.py [--minutes 2] [--batch 4] [--seconds 3]

Measured here (2 vCPU machine, 1 thread, torch 2.13.0+cpu, 2 min of audio, batch 4)::

    cache build (all levels, once): 11.8 s (10x real time)

    level   n_ctx   window   items/s cache  on the fly   ratio   step ms cache  on the fly   ratio
    top       512    2.97s           50217        29.9   1680x           216.7       347.2   1.60x
    middle    512    0.74s           42420        51.2    828x            83.6       153.0   1.83x
    bottom    512    0.19s           44450       147.4    302x            83.3       104.5   1.25x

So ``--codes cache`` is the default: every step is faster, the build is paid once per VQ-VAE
and dataset (break-even after 90-550 steps of a single level's run) and shared by all levels.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from benchmarks.timing import seconds_per_call  # noqa: E402
from teacher.data.codes import CodeDataset, build_code_cache  # noqa: E402
from teacher.data.dataset import AudioDataset, DataConfig  # noqa: E402
from teacher.data.labels import LabelConfig  # noqa: E402
from teacher.presets import prior_preset, small_vqvae  # noqa: E402
from teacher.vqvae import VQVAE  # noqa: E402

SR = 22050
LEVELS = {2: "top", 1: "middle", 0: "bottom"}


def make_files(root: str, minutes: float, n_files: int = 4) -> None:
    """``n_files`` mono files of ``minutes / n_files`` each: chirps plus a little noise."""
    rng = np.random.default_rng(0)
    seconds = minutes * 60 / n_files
    for i in range(n_files):
        t = np.arange(int(SR * seconds)) / SR
        f0 = 110.0 * (i + 2)
        x = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.01 * t)) + 0.05 * rng.standard_normal(len(t))
        sf.write(os.path.join(root, f"song{i}.wav"), x.astype(np.float32), SR, subtype="PCM_16")


def _stack(items: list[dict]) -> dict:
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def measure_level(level: int, vq_cfg, vqvae, cache, base: DataConfig, args) -> tuple:
    """(level, n_ctx, window samples, s/item cache, s/item on the fly, s/step cache,
    s/step on the fly) for the ``small`` prior of ``level``."""
    from teacher.prior.model import Prior

    pcfg = prior_preset("small", level, vq_cfg)
    lab = pcfg.labels
    pcfg = dataclasses.replace(pcfg, labels=dataclasses.replace(lab, artist_bins=2, genre_bins=2))
    label_cfg = LabelConfig(max_genres=lab.max_genres, n_tokens=pcfg.n_tokens)
    data_cfg = dataclasses.replace(
        base, sample_length=pcfg.sample_length, labels=label_cfg, aug_blend=True
    )
    codes_ds = CodeDataset(cache, level, pcfg.n_ctx, label_cfg)
    audio_ds = AudioDataset(data_cfg)
    upper = level < vq_cfg.levels - 1
    end = level + 2 if upper else level + 1
    prior = Prior(pcfg).train()
    opt = torch.optim.Adam(prior.parameters(), lr=1e-4)
    b = args.batch

    def cache_item(i: int) -> object:
        return codes_ds[i % len(codes_ds)]

    def fly_item(i: int) -> object:
        x = audio_ds[i % len(audio_ds)]
        with torch.no_grad():
            return vqvae.encode(x["audio"][None], start_level=level, end_level=end)

    def step(i: int, mode: str) -> None:
        if mode == "cache":
            items = [codes_ds[(i * b + j) % len(codes_ds)] for j in range(b)]
            batch = _stack([{k: v for k, v in it.items() if k != "index"} for it in items])
            codes, upper_codes = batch["codes"], batch.get("upper")
        else:
            items = [audio_ds[(i * b + j) % len(audio_ds)] for j in range(b)]
            batch = _stack([{"audio": it["audio"], "labels": it["labels"]} for it in items])
            with torch.no_grad():
                zs = vqvae.encode(batch["audio"], start_level=level, end_level=end)
            codes, upper_codes = zs[0], zs[1] if upper else None
        out = prior(codes, labels=batch["labels"], upper=upper_codes)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    item_c = seconds_per_call(cache_item, args.seconds)
    item_f = seconds_per_call(fly_item, args.seconds)
    step_c = seconds_per_call(lambda i: step(i, "cache"), args.seconds, max_calls=200)
    step_f = seconds_per_call(lambda i: step(i, "on_the_fly"), args.seconds, max_calls=200)
    return level, pcfg.n_ctx, pcfg.sample_length, item_c, item_f, step_c, step_f


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=2.0, help="audio in the dataset")
    p.add_argument("--batch", type=int, default=4, help="windows per training step")
    p.add_argument("--seconds", type=float, default=3.0, help="time budget per measurement")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = os.path.join(tmp, "audio")
        os.makedirs(audio)
        make_files(audio, args.minutes)
        vq_cfg = small_vqvae(SR)
        vqvae = VQVAE(vq_cfg)
        vqvae.train()
        vqvae(torch.randn(2, 1, vq_cfg.sample_length) * 0.3)  # initialise the codebooks
        vqvae.eval().requires_grad_(False)
        vq_dir = os.path.join(tmp, "vqvae")
        vqvae.save_pretrained(vq_dir)
        base = DataConfig(root=audio, sample_rate=SR, cache_dir=os.path.join(tmp, "decoded"))

        t0 = time.perf_counter()
        cache = build_code_cache(vq_dir, base, os.path.join(tmp, "codes"), progress=False)
        build_s = time.perf_counter() - t0

        for level in (2, 1, 0):
            rows.append(measure_level(level, vq_cfg, vqvae, cache, base, args))

    secs = args.minutes * 60
    print(
        f"\nCPU, 1 thread, torch {torch.__version__}; {args.minutes:g} min of audio at {SR} Hz; "
        f"small VQ-VAE + small priors; batch {args.batch}\n"
    )
    print(
        f"cache build (all levels, once): {build_s:.1f} s "
        f"({secs / build_s:.0f}x real time); every later run with the same VQ-VAE and data "
        "reuses it\n"
    )
    head = (
        f"{'level':<7}{'n_ctx':>6}{'window':>9}  {'items/s cache':>14}{'on the fly':>12}"
        f"{'ratio':>8}  {'step ms cache':>14}{'on the fly':>12}{'ratio':>8}{'break-even':>12}"
    )
    print(head)
    print("-" * len(head))
    for level, n_ctx, window, ic, if_, sc, sf_ in rows:
        saved = sf_ - sc
        even = f"{build_s / saved:.0f} steps" if saved > 0 else "never"
        print(
            f"{LEVELS[level]:<7}{n_ctx:>6}{window / SR:>8.2f}s  {1 / ic:>14.0f}{1 / if_:>12.1f}"
            f"{if_ / ic:>7.0f}x  {sc * 1e3:>14.1f}{sf_ * 1e3:>12.1f}{sf_ / sc:>7.2f}x{even:>12}"
        )
    print(
        "\nratio = on the fly / cache time (higher: the cache is faster). break-even = cache "
        "build time / time saved per step."
    )


if __name__ == "__main__":
    main()
