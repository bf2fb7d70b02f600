"""Teacher training entry point: ``accelerate launch -m teacher.train vqvae ...``.

One readable function per stage over a small run config (``TrainConfig``); accelerate does the
device placement, mixed precision, gradient accumulation and DDP. Flag names follow the
diffusers training scripts so a user's muscle memory works (``--output_dir``,
``--train_batch_size``, ``--max_train_steps``, ``--checkpointing_steps``,
``--resume_from_checkpoint latest``, ...).

Output folder::

    OUTPUT_DIR/
      model/                 exported model (config.json + model.safetensors), refreshed at
                             every checkpoint and at the end
      checkpoints/checkpoint-STEP/
                             accelerate state (model/optimizer/scheduler/RNG, weights_only
                             loadable) + model/ + state.json (written last; marks it complete)
      metrics.jsonl          one JSON line per logged step
      train_args.json        the run configuration
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from teacher.config import VQVAE_PRESETS, ConfigError, VQVAEConfig, config_to_dict, load_config
from teacher.io import (
    STATE_FILE,
    atomic_dir,
    atomic_write_json,
    prune_checkpoints,
    read_json,
    resolve_resume,
)

log = logging.getLogger(__name__)

LR_SCHEDULERS = ("constant", "linear", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """How to run a training job (not what to build): shared by the teacher trainers."""

    output_dir: str
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 100
    max_train_steps: int = 1000
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None
    mixed_precision: str = "no"
    max_grad_norm: float = 1.0
    seed: int = 0
    dataloader_num_workers: int = 0
    logging_steps: int = 10
    report_to: str = "none"

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` on the first bad value; return ``self``."""
        positive = (
            "train_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "checkpointing_steps",
            "logging_steps",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_warmup_steps < 0:
            raise ConfigError("--lr_warmup_steps must be >= 0")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"--lr_scheduler must be one of {LR_SCHEDULERS}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"--mixed_precision must be one of {MIXED_PRECISION}")
        if not self.max_grad_norm > 0:
            raise ConfigError("--max_grad_norm must be > 0")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError("--report_to must be none, tensorboard or wandb")
        return self


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base learning rate at an optimiser step: warm-up, then the schedule."""

    def fn(step: int) -> float:
        if step < cfg.lr_warmup_steps:
            return (step + 1) / (cfg.lr_warmup_steps + 1)
        if cfg.lr_scheduler == "constant":
            return 1.0
        span = max(1, cfg.max_train_steps - cfg.lr_warmup_steps)
        frac = min(1.0, (step - cfg.lr_warmup_steps) / span)
        if cfg.lr_scheduler == "linear":
            return 1.0 - frac
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    return fn


# ---------------------------------------------------------------------------------------------
# shared loop pieces


def make_accelerator(cfg: TrainConfig) -> Any:
    """An Accelerator for ``cfg`` (imported lazily: accelerate is slow to import)."""
    from accelerate import Accelerator

    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
    )


def save_checkpoint(
    accelerator: Any,
    cfg: TrainConfig,
    step: int,
    export: Callable[[Path], None],
    state: dict[str, Any],
) -> Path:
    """Write ``checkpoints/checkpoint-STEP`` atomically on every rank's behalf.

    accelerate writes the training state into a hidden temporary folder (each rank its own
    RNG file); the main process then adds the exported model and ``state.json`` and renames the
    folder into place, so a checkpoint either exists complete or not at all. The exported
    ``OUTPUT_DIR/model`` folder is refreshed the same way. Old checkpoints beyond
    ``checkpoints_total_limit`` are pruned.
    """
    root = Path(cfg.output_dir) / "checkpoints"
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export(tmp / "model")
        atomic_write_json(tmp / STATE_FILE, {"step": step, **state})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_dir(Path(cfg.output_dir) / "model") as out:
            export(out)
        prune_checkpoints(root, cfg.checkpoints_total_limit)
    accelerator.wait_for_everyone()
    return final


class MetricsLog:
    """Append-only JSON-lines metrics file, written by the main process only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")


def make_progress(enabled: bool) -> Any:
    """A rich progress bar with a free-text field for the current losses."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
    )


def _scalar(v: Any) -> float:
    return float(v.detach()) if torch.is_tensor(v) else float(v)


def _tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# VQ-VAE


def train_vqvae(model_cfg: VQVAEConfig, data_cfg: Any, cfg: TrainConfig) -> Path:
    """Train the Jukebox VQ-VAE on ``data_cfg``'s audio; returns the exported model folder.

    Bandwidth statistics (loss normalisers) are measured once on the data before the first
    step and saved in the model config; a resumed run takes them from the checkpoint.
    """
    from accelerate.utils import gather_object, set_seed

    from teacher.data import AudioDataset, compute_bandwidth, scan_audio
    from teacher.vqvae import VQVAE

    cfg.validate()
    model_cfg.validate()
    data_cfg.validate()
    if data_cfg.sample_length != model_cfg.sample_length:
        raise ConfigError(
            f"data sample_length {data_cfg.sample_length} != model sample_length "
            f"{model_cfg.sample_length}"
        )
    if data_cfg.sample_rate != model_cfg.sample_rate:
        raise ConfigError(
            f"data sample_rate {data_cfg.sample_rate} != model sample_rate {model_cfg.sample_rate}"
        )
    out_dir = Path(cfg.output_dir)
    resume = resolve_resume(cfg.resume_from_checkpoint, out_dir / "checkpoints")
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    set_seed(cfg.seed, device_specific=False)

    # the main process scans first and fills the decoded cache; the others then reuse it
    with accelerator.main_process_first():
        scan = scan_audio(data_cfg)  # raises DataError when nothing is usable
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("%s", scan.summary())
        atomic_write_json(
            out_dir / "train_args.json",
            {
                "train": config_to_dict(cfg),
                "data": config_to_dict(data_cfg),
                "model": config_to_dict(model_cfg),
            },
        )
    dataset = AudioDataset(data_cfg, scan=scan)

    if resume is not None:
        model_cfg = load_config(VQVAEConfig, str(resume / "model" / "config.json"))
    else:
        model_cfg = dataclasses.replace(model_cfg, bandwidth=compute_bandwidth(dataset))
    model = VQVAE(model_cfg)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train_batch_size,
        shuffle=True,
        drop_last=len(dataset) >= cfg.train_batch_size,
        num_workers=cfg.dataloader_num_workers,
        generator=generator,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step, epoch = 0, 0
    if resume is not None:
        accelerator.load_state(str(resume))
        state = read_json(resume / STATE_FILE)
        step, epoch = int(state["step"]), int(state.get("epoch", 0))
        if main:
            log.info("resumed from %s at step %d", resume, step)
    if cfg.report_to != "none":
        accelerator.init_trackers("vqvae", config={"lr": cfg.learning_rate})

    unwrapped = accelerator.unwrap_model(model)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", main)

    def export(folder: Path) -> None:
        unwrapped.save_pretrained(folder)

    def checkpoint_state() -> dict[str, Any]:
        digests = [_tensor_digest(b.k) for b in unwrapped.bottleneck.level_blocks]
        per_rank = gather_object([digests])
        if any(d != per_rank[0] for d in per_rank):
            raise RuntimeError(f"codebooks diverged across ranks: {per_rank}")
        return {
            "epoch": epoch,
            "world_size": accelerator.num_processes,
            "codebook_digests": per_rank,
            "time": time.time(),
        }

    model.train()
    levels = model_cfg.levels
    with make_progress(main) as progress:
        task = progress.add_task("vqvae", total=cfg.max_train_steps, completed=step, info="")
        while step < cfg.max_train_steps:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            for batch in loader:
                with accelerator.accumulate(model):
                    out = model(batch["audio"])
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                step += 1
                loss = out.loss.detach().float().item()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss} at step {step}")
                record = {"loss": loss, "lr": scheduler.get_last_lr()[0]}
                record.update({k: _scalar(v) for k, v in out.terms.items()})
                record.update({k: _scalar(v) for k, v in out.metrics.items()})
                sc = " ".join(
                    f"{record.get(f'sc_db_l{lv}', float('nan')):.1f}" for lv in range(levels)
                )
                alive = " ".join(
                    str(int(record.get(f"alive_l{lv}", record.get(f"usage_l{lv}", 0))))
                    for lv in range(levels)
                )
                progress.update(task, advance=1, info=f"loss {loss:.3f} SC dB {sc} codes {alive}")
                if step % cfg.logging_steps == 0 or step == cfg.max_train_steps:
                    metrics_log.write(step, record)
                    if cfg.report_to != "none":
                        accelerator.log(record, step=step)
                if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                    save_checkpoint(accelerator, cfg, step, export, checkpoint_state())
                if step >= cfg.max_train_steps:
                    break
            epoch += 1
    if step == 0 or not (out_dir / "model" / "config.json").exists():
        # nothing to train (already at max_train_steps): still export what was loaded
        if main:
            with atomic_dir(out_dir / "model") as folder:
                export(folder)
        accelerator.wait_for_everyone()
    if cfg.report_to != "none":
        accelerator.end_training()
    return out_dir / "model"


# ---------------------------------------------------------------------------------------------
# command line


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The run flags every trainer shares (diffusers names and meanings)."""
    d = TrainConfig(output_dir="")
    p.add_argument("--output_dir", required=True, help="where checkpoints and the model go")
    p.add_argument("--train_batch_size", type=int, default=d.train_batch_size)
    p.add_argument("--gradient_accumulation_steps", type=int, default=d.gradient_accumulation_steps)
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--adam_beta1", type=float, default=d.adam_beta1)
    p.add_argument("--adam_beta2", type=float, default=d.adam_beta2)
    p.add_argument("--adam_weight_decay", type=float, default=d.adam_weight_decay)
    p.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default=d.lr_scheduler)
    p.add_argument("--lr_warmup_steps", type=int, default=d.lr_warmup_steps)
    p.add_argument("--max_train_steps", type=int, default=d.max_train_steps)
    p.add_argument("--checkpointing_steps", type=int, default=d.checkpointing_steps)
    p.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=d.checkpoints_total_limit,
        help="keep at most this many checkpoints (0 keeps all)",
    )
    p.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='"latest" (fresh start when there is none) or a checkpoint folder',
    )
    p.add_argument("--mixed_precision", choices=MIXED_PRECISION, default=d.mixed_precision)
    p.add_argument("--max_grad_norm", type=float, default=d.max_grad_norm)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dataloader_num_workers", type=int, default=d.dataloader_num_workers)
    p.add_argument("--logging_steps", type=int, default=d.logging_steps)
    p.add_argument("--report_to", choices=("none", "tensorboard", "wandb"), default=d.report_to)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def add_vqvae_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_dir", required=True, help="folder of audio files (+ metadata)")
    p.add_argument("--metadata", default=None, help="metadata JSONL/CSV (default: in data_dir)")
    p.add_argument(
        "--preset", choices=sorted(VQVAE_PRESETS), default="small", help="VQ-VAE size preset"
    )
    p.add_argument("--sample_rate", type=int, default=None, help="override the preset's rate")
    p.add_argument(
        "--sample_length", type=int, default=None, help="crop in samples (multiple of top hop)"
    )
    p.add_argument("--l_bins", type=int, default=None, help="codebook size override")
    p.add_argument("--no_aug_blend", action="store_true", help="fixed 0.5 stereo downmix")
    p.add_argument(
        "--data_cache",
        choices=("decoded", "none"),
        default="decoded",
        help="decode each file once into a memory-mapped cache (fastest) or seek every crop",
    )
    p.add_argument("--cache_dir", default=None, help="decoded cache folder (default ~/.cache)")
    add_train_args(p)


def vqvae_configs_from_args(args: argparse.Namespace) -> tuple[VQVAEConfig, Any, TrainConfig]:
    """Build (model, data, run) configs from parsed ``train vqvae`` arguments."""
    from teacher.data import DataConfig

    model_cfg = VQVAE_PRESETS[args.preset]()
    overrides = {
        k: getattr(args, k)
        for k in ("sample_rate", "sample_length", "l_bins")
        if getattr(args, k) is not None
    }
    model_cfg = dataclasses.replace(model_cfg, **overrides).validate()
    data_cfg = DataConfig(
        root=args.data_dir,
        metadata=args.metadata,
        sample_rate=model_cfg.sample_rate,
        sample_length=model_cfg.sample_length,
        aug_blend=not args.no_aug_blend,
        cache=args.data_cache,
        cache_dir=args.cache_dir,
        seed=args.seed,
    )
    return model_cfg, data_cfg, train_config_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m teacher.train", description="Train a teacher model."
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    add_vqvae_args(sub.add_parser("vqvae", help="train the hierarchical VQ-VAE"))
    return parser


def run(args: argparse.Namespace) -> Path:
    """Run the stage named by parsed arguments (shared by the console script)."""
    if args.stage == "vqvae":
        return train_vqvae(*vqvae_configs_from_args(args))
    raise ConfigError(f"unknown stage {args.stage}")


def main(argv: Sequence[str] | None = None) -> int:
    from fastjukebox.cli import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    from teacher.data import DataError

    try:
        out = run(args)
    except (ConfigError, DataError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    log.info("model written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
