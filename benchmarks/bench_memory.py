"""Memory of one fine-tuning step per released Jukebox part, and of distilling its upsamplers.

Computed on the meta device (:mod:`teacher.train.memory`: the model is built and run under
``FakeTensorMode``, nothing is allocated, so the counts are exact for the tensors they cover)
from the released configs of :mod:`teacher.presets`: the VQ-VAE (``jukebox_vqvae``, crops of
its ``sample_length``), the upsampler (``upsampler(0)``; the middle one has the same shapes),
the 1b_lyrics, 5b and 5b_lyrics top priors, each at its full window, ``--batch`` samples (default
1) per process. Per part: parameters; weights, gradients and Adam's two moments (all fp32, as
``train prior`` keeps them under ``--mixed_precision bf16``); the activations autograd saves for
the backward pass in fp32 and under bf16 autocast, without and with ``--gradient_checkpointing``;
the totals; and the per-GPU total when FSDP ``FULL_SHARD`` splits weights, gradients and Adam
state over ``--shards`` GPUs (``configs/fsdp.yaml``; activations are not sharded). Activations
grow linearly with the batch.

The second table plans distillation from the released upsamplers (``distill --dry_run`` at
released shapes): the frozen teacher in bf16, the ``small`` categorical student, its EMA copy,
and the step's activations under bf16 autocast.

With ``--gpu`` (and a CUDA device) one real step per part is also run on the GPU (random
weights, Adam, bf16 autocast, checkpointing on) and ``torch.cuda.max_memory_allocated`` is
reported next to the computed total.

    python benchmarks/bench_memory.py [--batch 1] [--shards 8] [--gpu] [--out_md FILE]

Measured here (2-core CPU, torch 2.13; meta device; about 40 s): the tables in README.md
("Memory: gradient checkpointing, FSDP, DeepSpeed, the distillation dry run"). Measured on a
GPU: not run (no GPU in this session).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from benchmarks.tables import Table  # noqa: E402
from teacher.presets import (  # noqa: E402
    jukebox_vqvae,
    prior_1b_lyrics,
    prior_5b,
    prior_5b_lyrics,
    upsampler,
)
from teacher.train.memory import (  # noqa: E402
    StepMemory,
    prior_inputs,
    prior_step_memory,
    vqvae_step_memory,
)

GiB = 1 << 30

#: (label, config builder, is the VQ-VAE)
PARTS: list[tuple[str, Callable[[], object], bool]] = [
    ("vqvae", jukebox_vqvae, True),
    ("upsampler (bottom, middle)", lambda: upsampler(0), False),
    ("1b_lyrics top", prior_1b_lyrics, False),
    ("5b top", prior_5b, False),
    ("5b_lyrics top", prior_5b_lyrics, False),
]


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def measure_part(label: str, make: Callable[[], object], vq: bool, batch: int) -> dict:
    """fp32 and bf16 :class:`StepMemory` of one part, and its window as text."""
    cfg = make()
    fn = vqvae_step_memory if vq else prior_step_memory
    out: dict = {p: fn(cfg, batch, p, name=label) for p in ("fp32", "bf16")}
    if vq:
        out["window"] = f"{batch} x {cfg.sample_length} samples"
    elif cfg.lyrics is not None and cfg.lyrics.style == "single":
        out["window"] = f"{batch} x ({cfg.n_tokens} lyrics + {cfg.n_ctx} codes)"
    elif cfg.lyrics is not None:
        out["window"] = f"{batch} x {cfg.n_ctx} codes (+ {cfg.n_tokens} lyrics, encoder)"
    else:
        out["window"] = f"{batch} x {cfg.n_ctx} codes"
    return out


def cuda_step_peak(make: Callable[[], object], vq: bool, batch: int) -> str:
    """Peak bytes allocated on CUDA by one real step (bf16 autocast, checkpointing, Adam), as
    GiB text, or why it was not measured."""
    from teacher.prior.model import Prior
    from teacher.vqvae import VQVAE

    dev = torch.device("cuda")
    cfg = make()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    try:
        with torch.device(dev):
            model = (VQVAE(cfg) if vq else Prior(cfg)).train()
        for m in model.modules():
            if isinstance(getattr(m, "gradient_checkpointing", None), bool):
                m.gradient_checkpointing = True
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if vq:
                loss = model(0.1 * torch.randn(batch, cfg.channels, cfg.sample_length, device=dev))
            else:
                x = {
                    k: v.to(dev) if v is not None else None
                    for k, v in prior_inputs(cfg, batch).items()
                }
                loss = model(x["codes"], labels=x["labels"], upper=x["upper"])
        loss.loss.backward()
        opt.step()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        del model, opt, loss
        return gib(peak)
    except torch.cuda.OutOfMemoryError:
        return "out of memory"
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def fine_tune_table(batch: int, shards: int, gpu: bool) -> Table:
    cols = [
        "part",
        "params M",
        "batch x window",
        "weights",
        "grads",
        "Adam",
        "act fp32",
        "act fp32 ckpt",
        "act bf16",
        "act bf16 ckpt",
        "total fp32",
        "total bf16 ckpt",
        f"bf16 ckpt, FSDP x{shards}",
    ]
    if gpu:
        cols.append("GPU peak (bf16 ckpt)")
    table = Table(
        f"One fine-tuning step per process, GiB (meta device; batch {batch}; Adam; fp32 "
        "weights/grads/Adam; activations saved for backward)",
        cols,
        note="ckpt = --gradient_checkpointing (the VQ-VAE has no transformer blocks: '-'); "
        f"FSDP x{shards} = (weights + grads + Adam) / {shards} + bf16 ckpt activations. "
        "Measured on a GPU: "
        + ("see the last column" if gpu else "not run (no GPU in this session)"),
    )
    for label, make, vq in PARTS:
        t0 = time.perf_counter()
        m = measure_part(label, make, vq, batch)
        f32: StepMemory = m["fp32"]
        b16: StepMemory = m["bf16"]
        act_b16 = b16.activations_ckpt if b16.activations_ckpt is not None else b16.activations
        sharded = f32.states // shards + act_b16
        row = [
            label,
            f"{f32.params / 1e6:,.1f}",
            m["window"],
            gib(f32.weights),
            gib(f32.grads),
            gib(f32.optimizer),
            gib(f32.activations),
            gib(f32.activations_ckpt),
            gib(b16.activations),
            gib(b16.activations_ckpt),
            gib(f32.total),
            gib(f32.states + act_b16),
            gib(sharded),
        ]
        if gpu:
            row.append(cuda_step_peak(make, vq, batch))
        table.add(*row)
        print(f"  {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return table


def distill_table(batch: int) -> Table:
    from distill.config import DistillConfig, student_config_from_preset
    from distill.dry_run import plan_distillation

    vq = jukebox_vqvae()
    table = Table(
        f"Distilling a student from a released upsampler, GiB per process (meta device; batch "
        f"{batch}; `distill --dry_run`)",
        [
            "level",
            "student params M",
            "teacher + VQ-VAE (bf16, frozen)",
            "student weights",
            "grads",
            "Adam",
            "EMA",
            "activations (bf16)",
            "total",
        ],
        note="small categorical student (K = 4), teacher in bf16 (--teacher_dtype bfloat16), "
        "--mixed_precision bf16, windows of the teacher's 8192 codes.",
    )
    for level, name in ((1, "middle"), (0, "bottom")):
        pc = upsampler(level)
        dcfg = DistillConfig(level=level, teacher_dtype="bfloat16")
        scfg = student_config_from_preset(dcfg, pc, vq)
        plan = plan_distillation(pc, vq, scfg, dcfg, batch, "bf16")
        s = plan.step
        table.add(
            name,
            f"{plan.student_params / 1e6:,.1f}",
            gib(s.frozen_weights),
            gib(s.weights),
            gib(s.grads),
            gib(s.optimizer),
            gib(plan.ema),
            gib(s.activations),
            gib(plan.total),
        )
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1, help="samples per process")
    p.add_argument("--shards", type=int, default=8, help="GPUs FSDP shards the states over")
    p.add_argument("--gpu", action="store_true", help="also run one real step per part on CUDA")
    p.add_argument("--out_md", default=None, help="also write the tables as markdown here")
    args = p.parse_args()
    gpu = args.gpu and torch.cuda.is_available()
    console = Console(width=200)
    if args.gpu and not gpu:
        console.print("--gpu: no CUDA device here; measured on a GPU: not run")
    tables = [fine_tune_table(args.batch, args.shards, gpu), distill_table(args.batch)]
    for t in tables:
        console.print(t.rich())
    if args.out_md:
        Path(args.out_md).write_text("\n".join(t.markdown() for t in tables))
        console.print(f"tables written to {args.out_md}")


if __name__ == "__main__":
    main()
