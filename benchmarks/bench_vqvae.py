"""VQ-VAE speed and quality on CPU, one thread.

Speed, at the released architecture (width 32, depth 4, multipliers (2,1,1), emb 64, 2048 bins,
hops 8/32/128) on 22.05 kHz audio: encode (all levels) and decode (per level) in ms per second
of audio, and training steps/s. Quality: spectral convergence in dB (20·log10) per level on
held-out clips of the built-in dataset, for the untrained model and after a short CPU training
(``teacher.train.train_vqvae``, the same code path as ``fastjukebox train vqvae``).

    python benchmarks/bench_vqvae.py [--train_steps 300] [--preset small]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from teacher.data.dataset import AudioDataset, DataConfig, compute_bandwidth
from teacher.data.synth import SynthConfig, write_synth_dataset
from teacher.presets import VQVAE_PRESETS, jukebox_vqvae
from teacher.train import TrainConfig, train_vqvae
from teacher.vqvae import VQVAE
from teacher.vqvae.losses import sc_db, spectral_convergence

SR = 22050


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def speed_table(seconds: float, repeats: int, batch: int, crop: int) -> Table:
    cfg = dataclasses.replace(jukebox_vqvae(), sample_rate=SR, sample_length=crop).validate()
    model = VQVAE(cfg).eval()
    n = int(seconds * SR) // 128 * 128
    x = torch.randn(1, 1, n).clamp(-1, 1) * 0.3
    secs = n / SR
    table = Table(title=f"VQ-VAE speed, released architecture, {SR} Hz, CPU 1 thread")
    table.add_column("operation")
    table.add_column("ms per audio second", justify="right")
    table.add_column("x real time", justify="right")
    with torch.no_grad():
        t = _time(lambda: model.encode(x), repeats)
        table.add_row("encode (3 levels)", f"{1000 * t / secs:.1f}", f"{secs / t:.1f}")
        codes = model.encode(x)
        for level in range(cfg.levels):
            t = _time(lambda lv=level: model.decode(codes[lv : lv + 1], start_level=lv), repeats)
            table.add_row(
                f"decode level {level} (hop {cfg.hop_lengths[level]})",
                f"{1000 * t / secs:.1f}",
                f"{secs / t:.1f}",
            )
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    xb = torch.randn(batch, 1, crop).clamp(-1, 1) * 0.3

    def step() -> None:
        out = model(xb)
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    t = _time(step, max(2, repeats))
    table.add_row(
        f"training step (batch {batch} x {crop} samples)",
        f"{1000 * t:.0f} ms/step",
        f"{1 / t:.2f} steps/s",
    )
    return table


@torch.no_grad()
def sc_per_level(model: VQVAE, clips: torch.Tensor) -> list[float]:
    """Mean SC in dB per level over ``clips`` (N, 1, T)."""
    model.eval()
    codes = model.encode(clips)
    out = []
    for level in range(model.cfg.levels):
        y = model.decode(codes[level : level + 1], start_level=level)
        out.append(float(sc_db(spectral_convergence(clips, y)).mean()))
    return out


def quality_table(preset: str, train_steps: int, workdir: Path) -> Table:
    train_dir, eval_dir = workdir / "train", workdir / "eval"
    write_synth_dataset(train_dir, SynthConfig(n_songs=24, seconds=10.0, sample_rate=SR, seed=0))
    write_synth_dataset(eval_dir, SynthConfig(n_songs=4, seconds=10.0, sample_rate=SR, seed=99))
    cfg = dataclasses.replace(VQVAE_PRESETS[preset](), sample_rate=SR).validate()
    data = DataConfig(
        root=str(train_dir),
        sample_rate=SR,
        sample_length=cfg.sample_length,
        cache_dir=str(workdir / "cache"),
    )
    eval_data = dataclasses.replace(data, root=str(eval_dir), aug_blend=False)
    eval_ds = AudioDataset(eval_data)
    clips = torch.stack([eval_ds.crop(i % len(eval_ds.files), 0)["audio"] for i in range(4)])

    untrained = VQVAE(dataclasses.replace(cfg, bandwidth=compute_bandwidth(AudioDataset(data))))
    # the untrained codebook is all zeros: initialise it the way training does (first batch)
    untrained.train()
    untrained(clips)
    before = sc_per_level(untrained, clips)

    run = TrainConfig(
        output_dir=str(workdir / "run"),
        train_batch_size=4,
        max_train_steps=train_steps,
        checkpointing_steps=train_steps,
        lr_warmup_steps=20,
        logging_steps=max(1, train_steps // 10),
    )
    t0 = time.perf_counter()
    model_dir = train_vqvae(cfg, data, run)
    train_s = time.perf_counter() - t0
    after = sc_per_level(VQVAE.from_pretrained(model_dir), clips)

    table = Table(
        title=f"Spectral convergence (dB, 20·log10; lower is better), preset '{preset}', "
        f"{train_steps} steps in {train_s:.0f} s on CPU, held-out synth clips"
    )
    table.add_column("level (hop)")
    table.add_column("untrained", justify="right")
    table.add_column("trained", justify="right")
    table.add_column("gain dB", justify="right")
    for level, (b, a) in enumerate(zip(before, after)):
        table.add_row(f"{level} ({cfg.hop_lengths[level]})", f"{b:.1f}", f"{a:.1f}", f"{b - a:.1f}")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="audio length for encode/decode")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=2, help="training batch for steps/s")
    p.add_argument("--crop", type=int, default=32768, help="training crop in samples")
    p.add_argument("--preset", default="small", choices=sorted(VQVAE_PRESETS))
    p.add_argument("--train_steps", type=int, default=300)
    p.add_argument("--skip_quality", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    console.print(speed_table(args.seconds, args.repeats, args.batch, args.crop))
    if not args.skip_quality:
        with tempfile.TemporaryDirectory() as d:
            console.print(quality_table(args.preset, args.train_steps, Path(d)))


if __name__ == "__main__":
    main()
