"""The one training loop every trainer runs: the VQ-VAE, the priors and the distilled students.

A trainer builds its model, its dataset and its loss step, wraps them in a :class:`Job` and
calls :func:`run_training`; everything else happens here, once:

* accelerate ``prepare`` (device placement, DDP, mixed precision) of the model, Adam, the
  warm-up/decay schedule (:func:`lr_lambda`) and a shuffling loader whose per-epoch seed makes a
  resumed run see exactly the batches of an unbroken one (:func:`resumable_batches`);
* gradient accumulation, gradient clipping, the optimiser and scheduler steps;
* a guard that stops on a non-finite loss (naming the step);
* an optional EMA of the weights (:class:`EMA`; the EMA weights are the exported ones);
* ``metrics.jsonl`` (cut back to the restored step on resume, so no step is logged twice),
  trackers (``--report_to``) and a rich progress bar;
* atomic checkpoints (:func:`save_checkpoint`: accelerate state + the exported model +
  ``state.json`` written last, with per-rank weight digests checked equal), pruning, resume from
  the latest, and the export of ``OUTPUT_DIR/<export_name>`` (also when nothing was left to
  train).

Run flags follow the diffusers training scripts (:class:`TrainConfig`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from teacher.config import ConfigError
from teacher.console import progress_bar
from teacher.io import (
    STATE_FILE,
    atomic_dir,
    atomic_write_json,
    load_tensors,
    prune_checkpoints,
    read_json,
)

log = logging.getLogger(__name__)

LR_SCHEDULERS = ("constant", "linear", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")
REPORT_TO = ("none", "tensorboard", "wandb")
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """How to run a training job (not what to build): shared by every trainer."""

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
    #: recompute each transformer block in the backward pass instead of keeping its
    #: activations (:func:`enable_gradient_checkpointing`; priors only)
    gradient_checkpointing: bool = False

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
        if self.report_to not in REPORT_TO:
            raise ConfigError("--report_to must be none, tensorboard or wandb")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(
                f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}"
            )
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


def make_accelerator(cfg: TrainConfig, kwargs_handlers: Sequence[Any] | None = None) -> Any:
    """An Accelerator for ``cfg`` (imported lazily: accelerate is slow to import).

    ``kwargs_handlers``: extra accelerate handlers, e.g. ``DistributedDataParallelKwargs``.
    """
    from accelerate import Accelerator

    configured = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # DeepSpeed's engine clips (accelerate's clip_grad_norm_ does nothing there):
        # --max_grad_norm reaches it unless the launcher's config names a gradient_clipping
        os.environ.setdefault("ACCELERATE_GRADIENT_CLIPPING", str(cfg.max_grad_norm))
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
        kwargs_handlers=list(kwargs_handlers) if kwargs_handlers else None,
    )
    if accelerator.is_main_process:
        # the launcher always exports its setting ('no' by default): only a config asking for
        # reduced precision the run flag does not is worth a word
        if configured not in (None, "no") and configured != cfg.mixed_precision:
            log.warning(
                "the accelerate config asks for mixed precision %s, the run flag "
                "--mixed_precision is %s: the run flag is used",
                configured,
                cfg.mixed_precision,
            )
        kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
        for env, name in (
            ("ACCELERATE_USE_FSDP", "FSDP"),
            ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED"),
        ):
            if os.environ.get(env, "false").lower() == "true" and kind != name:
                log.warning(
                    "the accelerate config asks for %s but accelerate runs %s here (it shards "
                    "only on GPUs/accelerators; on CPUs an FSDP config runs as DDP and "
                    "DeepSpeed is refused): every process holds the whole model",
                    name,
                    kind,
                )
    return accelerator


def is_sharded(accelerator: Any) -> bool:
    """Whether ``accelerator`` shards the model across processes (FSDP or DeepSpeed): the live
    weights are then never whole on one rank, and exports go through
    ``accelerator.get_state_dict`` (a collective every rank joins)."""
    return str(accelerator.distributed_type).rsplit(".", 1)[-1] in ("FSDP", "DEEPSPEED")


def checkpointable_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``model`` that can recompute their blocks in the backward pass (those with
    a boolean ``gradient_checkpointing`` attribute: the priors' transformers, including the
    5b_lyrics lyric encoder)."""
    return [
        m for m in model.modules() if isinstance(getattr(m, "gradient_checkpointing", None), bool)
    ]


def enable_gradient_checkpointing(model: torch.nn.Module, name: str) -> int:
    """Turn on gradient (activation) checkpointing in every :func:`checkpointable_modules` of
    ``model``: each transformer block keeps only its input in the forward pass and is recomputed
    in the backward pass (same gradients, about one more forward pass of compute). Returns the
    number of transformers switched; a :class:`ConfigError` naming ``name`` when it has none."""
    mods = checkpointable_modules(model)
    if not mods:
        raise ConfigError(
            f"--gradient_checkpointing: {name} has no transformer blocks to recompute (only the "
            "priors do: `train prior`)"
        )
    for m in mods:
        m.gradient_checkpointing = True
    return len(mods)


def load_full_state(model: torch.nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy a full (gathered) state dict into ``model`` in place; a name missing from ``state`` is
    accepted only when it is a tied alias of a parameter ``state`` holds (e.g. the prior's
    ``x_out.weight`` = ``x_emb.weight``). Raises ``RuntimeError`` naming what does not fit."""
    result = model.load_state_dict(dict(state), strict=False)
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    covered = {n for names in groups.values() if any(k in state for k in names) for n in names}
    missing = [k for k in result.missing_keys if k not in covered]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"the gathered state dict does not fit the model: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


# ---------------------------------------------------------------------------------------------
# the pieces of the loop


@dataclass
class LoopPosition:
    """Where a training loop is: optimiser steps done, epoch, batches of that epoch consumed.

    Saved in every checkpoint's ``state.json``; with the per-epoch shuffle seed used by
    :func:`resumable_batches`, a resumed run sees exactly the batches an unbroken run sees.
    """

    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0

    def as_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "epoch_batches": self.epoch_batches}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LoopPosition:
        return cls(
            step=int(state["step"]),
            epoch=int(state.get("epoch", 0)),
            epoch_batches=int(state.get("epoch_batches", 0)),
        )


class MetricsLog:
    """Append-only JSON-lines metrics file, written by the main process only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, step: int, values: Mapping[str, float]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")

    def truncate(self, step: int) -> None:
        """Drop the lines after ``step`` (a resumed run logs those steps again), atomically."""
        if not (self.enabled and self.path.is_file()):
            return
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                logged = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a line torn by the kill
                continue
            if logged <= step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
            log.info("metrics log cut back to step %d (%d later lines dropped)", step, dropped)


def resumable_batches(
    accelerator: Any,
    loader: Any,
    dataset: Any,
    generator: torch.Generator,
    seed: int,
    pos: LoopPosition,
) -> Iterator[Any]:
    """Yield batches forever, epoch after epoch, advancing ``pos.epoch``/``pos.epoch_batches``.

    Each epoch's shuffle is seeded from (seed, epoch) and a resumed epoch skips the batches it
    had already consumed. accelerate's loader sets the dataset's epoch from its own iteration
    count, which restarts at 0 in a resumed run, so it is given ours.
    """
    while True:
        generator.manual_seed(seed * 1_000_003 + pos.epoch)
        batches = loader
        if pos.epoch_batches:
            batches = accelerator.skip_first_batches(loader, pos.epoch_batches)
        batches.set_epoch(pos.epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(pos.epoch)
        for batch in batches:
            pos.epoch_batches += 1
            yield batch
        pos.epoch, pos.epoch_batches = pos.epoch + 1, 0


def prepare_training(
    accelerator: Any, model: torch.nn.Module, dataset: Any, cfg: TrainConfig
) -> tuple[Any, Any, Any, Any, torch.Generator]:
    """Adam + the warm-up schedule + a shuffling loader, through ``accelerator.prepare``.

    Returns ``(model, optimizer, loader, scheduler, generator)``; ``generator`` drives the
    loader's shuffle and is re-seeded per epoch by :func:`resumable_batches`.
    """
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
    return model, optimizer, loader, scheduler, generator


def restore_checkpoint(accelerator: Any, resume: Path | None) -> LoopPosition:
    """Load accelerate's state from ``resume`` (if any) and return where its loop stood."""
    if resume is None:
        return LoopPosition()
    accelerator.load_state(str(resume))
    pos = LoopPosition.from_state(read_json(resume / STATE_FILE))
    if accelerator.is_main_process:
        log.info("resumed from %s at step %d", resume, pos.step)
    return pos


def save_checkpoint(
    accelerator: Any,
    cfg: TrainConfig,
    step: int,
    export: Callable[[Path], None],
    state: dict[str, Any],
    export_name: str = "model",
) -> Path:
    """Write ``checkpoints/checkpoint-STEP`` atomically on every rank's behalf.

    accelerate writes the training state into a hidden temporary folder (each rank its own
    RNG file); the main process then adds the exported model and ``state.json`` and renames the
    folder into place, so a checkpoint either exists complete or not at all. The exported
    ``OUTPUT_DIR/<export_name>`` folder is refreshed the same way. Old checkpoints beyond
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
        export(tmp / export_name)
        atomic_write_json(tmp / STATE_FILE, {"step": step, **state})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with atomic_dir(Path(cfg.output_dir) / export_name) as out:
            export(out)
        prune_checkpoints(root, cfg.checkpoints_total_limit)
    accelerator.wait_for_everyone()
    return final


def tensor_digest(t: Tensor) -> str:
    """SHA-256 (16 hex) of a tensor's values (as fp32)."""
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex) of a model's state dict (names and fp32 values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class EMA:
    """Exponential moving average of a model's parameters (Polyak averaging), kept in a frozen
    copy of the model (``self.model``, the weights that are exported and validated).

    The decay at update n is ``min(decay, (1 + n) / (10 + n))`` (diffusers' ``EMAModel``), so a
    short run's average is not dominated by the random initialisation. Buffers are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """``ema ← d·ema + (1 − d)·param`` for every parameter of ``model``."""
        d = self.current_decay()
        self.num_updates += 1
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def load_folder(self, folder: Path, num_updates: int) -> None:
        """Restore the averaged weights from an exported model folder."""
        state = load_tensors(
            folder / "model.safetensors", device=next(self.model.parameters()).device
        )
        self.model.load_state_dict(state, strict=True)
        self.num_updates = num_updates


def scalar(v: Any) -> float:
    """A Python float of a tensor or number."""
    return float(v.detach()) if torch.is_tensor(v) else float(v)


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class StepOutput:
    """What a trainer's loss step returns for one micro-batch.

    Attributes:
        loss: the scalar to back-propagate.
        record: what to log about it, under its log keys (tensors or numbers; the loop makes
            floats of them after the optimiser step).
    """

    loss: Tensor
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """What one trainer supplies to :func:`run_training`.

    Attributes:
        name: the progress bar's label and the trackers' project name.
        model: the model to train (not yet prepared).
        dataset: map-style dataset of the batches (optionally with ``set_epoch``).
        step: ``(prepared model, batch, position) -> StepOutput`` for one micro-batch; it runs
            inside ``accelerator.accumulate`` (the loop does backward, clipping and stepping).
        export: ``(model, folder)`` writes the exported model folder from the unwrapped model
            (or its EMA copy when ``ema_decay`` is set).
        describe: the progress bar's text for a step's record.
        export_name: the exported folder's name under ``OUTPUT_DIR`` and in checkpoints.
        ema_decay: keep an :class:`EMA` of the weights (exported instead of the live weights).
        rank_state: extra per-rank values for ``state.json`` (name -> a value per rank,
            checked equal across ranks), e.g. codebook digests.
        after_step: ``(step, exported model) -> extra record`` on the main process after each
            optimiser step (validation); a non-empty result is logged at that step.
        project: the trackers' project name (default: ``name``).
        tracker_config: what the trackers record about the run.
    """

    name: str
    model: torch.nn.Module
    dataset: Any
    step: Callable[[Any, Any, LoopPosition], StepOutput]
    export: Callable[[torch.nn.Module, Path], None]
    describe: Callable[[Mapping[str, float]], str] = lambda r: f"loss {r['loss']:.3f}"
    export_name: str = "model"
    ema_decay: float | None = None
    rank_state: Callable[[], Mapping[str, Any]] | None = None
    after_step: Callable[[int, torch.nn.Module], Mapping[str, float]] | None = None
    project: str | None = None
    tracker_config: Mapping[str, Any] = field(default_factory=dict)


def run_training(accelerator: Any, cfg: TrainConfig, job: Job, resume: Path | None = None) -> Path:
    """Train ``job`` for ``cfg.max_train_steps`` optimiser steps (from ``resume``, a complete
    checkpoint folder, when given) and return the exported ``OUTPUT_DIR/<export_name>``.

    ``cfg.gradient_checkpointing`` switches on :func:`enable_gradient_checkpointing`. Under a
    sharding launcher config (FSDP, DeepSpeed: :func:`is_sharded`) the main process keeps a CPU
    copy of the model (taken before ``prepare``) that every export and ``weight_digests`` entry
    reads, refreshed from ``accelerator.get_state_dict`` (all ranks) before each checkpoint; the
    training state itself is saved and restored by accelerate in the format the config names.
    """
    from accelerate.utils import gather_object

    main = accelerator.is_main_process
    out_dir = Path(cfg.output_dir)
    sharded = is_sharded(accelerator)
    fsdp_plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if cfg.gradient_checkpointing and getattr(fsdp_plugin, "activation_checkpointing", False):
        raise ConfigError(
            "--gradient_checkpointing and the accelerate config's fsdp_activation_checkpointing "
            "both recompute the transformer blocks: use one of them"
        )
    if cfg.gradient_checkpointing:
        n_ckpt = enable_gradient_checkpointing(job.model, job.name)
        if main:
            log.info("gradient checkpointing on in %d transformer(s) of %s", n_ckpt, job.name)
    if sharded and (job.ema_decay is not None or job.after_step is not None):
        raise ConfigError(
            f"{job.name} keeps an EMA/validates the live weights every step: run it with DDP "
            f"(no FSDP or DeepSpeed config; accelerate runs {accelerator.distributed_type})"
        )
    # the whole model for exports under sharding (the live one is split across ranks)
    shadow = (
        copy.deepcopy(job.model).cpu().eval().requires_grad_(False) if sharded and main else None
    )
    model, optimizer, loader, scheduler, generator = prepare_training(
        accelerator, job.model, job.dataset, cfg
    )
    unwrapped = accelerator.unwrap_model(model)
    ema = EMA(unwrapped, job.ema_decay) if job.ema_decay is not None else None
    pos = restore_checkpoint(accelerator, resume)
    if ema is not None and resume is not None:
        ema.load_folder(resume / job.export_name, num_updates=pos.step)
    exported = shadow if sharded else ema.model if ema is not None else unwrapped

    def gather_weights() -> None:
        """Sharded runs: every rank joins the gather, the main process's copy takes the weights."""
        if sharded:
            state = accelerator.get_state_dict(model)
            if main:
                load_full_state(shadow, state)

    if cfg.report_to != "none":
        accelerator.init_trackers(job.project or job.name, config=dict(job.tracker_config))
    metrics_log = MetricsLog(out_dir / METRICS_FILE, main)
    metrics_log.truncate(pos.step)

    def export(folder: Path) -> None:
        job.export(exported, folder)

    def checkpoint_state() -> dict[str, Any]:
        # sharded ranks hold different shards: one digest of the gathered weights instead
        mine: dict[str, Any] = {} if sharded else {"weight_digests": weights_digest(unwrapped)}
        if ema is not None:
            mine["ema_digests"] = weights_digest(ema.model)
        if job.rank_state is not None:
            mine.update(job.rank_state())
        per_rank = gather_object([mine])
        state: dict[str, Any] = {**pos.as_state(), "world_size": accelerator.num_processes}
        for key in mine:
            values = [r[key] for r in per_rank]
            if any(v != values[0] for v in values):
                raise RuntimeError(f"{job.name}: {key} differ across ranks: {values}")
            state[key] = values
        if sharded:
            state["weight_digests"] = [weights_digest(shadow)] if main else []
        state["time"] = time.time()
        return state

    model.train()
    with progress_bar(main, info=True) as progress:
        start_step = pos.step
        task = progress.add_task(job.name, total=cfg.max_train_steps, completed=start_step, info="")
        batches = resumable_batches(accelerator, loader, job.dataset, generator, cfg.seed, pos)
        while pos.step < cfg.max_train_steps:
            batch = next(batches)
            with accelerator.accumulate(model):
                out = job.step(model, batch, pos)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.update(unwrapped)
            pos.step += 1
            step = pos.step
            loss = out.loss.detach().float().item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at step {step}")
            record = {"loss": loss, "lr": scheduler.get_last_lr()[0]}
            record.update({k: scalar(v) for k, v in out.record.items()})
            progress.update(task, advance=1, info=job.describe(record))
            extra = job.after_step(step, exported) if job.after_step is not None and main else {}
            record.update(extra)
            if step % cfg.logging_steps == 0 or step == cfg.max_train_steps or extra:
                metrics_log.write(step, record)
                if cfg.report_to != "none":
                    accelerator.log(record, step=step)
            if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                gather_weights()
                save_checkpoint(
                    accelerator, cfg, step, export, checkpoint_state(), export_name=job.export_name
                )
    if pos.step == start_step:
        # nothing trained in this run (already at max_train_steps): export what was loaded
        gather_weights()
        if main:
            with atomic_dir(out_dir / job.export_name) as folder:
                export(folder)
        accelerator.wait_for_everyone()
    if cfg.report_to != "none":
        accelerator.end_training()
    return out_dir / job.export_name


__all__ = [
    "EMA",
    "LR_SCHEDULERS",
    "MIXED_PRECISION",
    "Job",
    "LoopPosition",
    "MetricsLog",
    "StepOutput",
    "TrainConfig",
    "checkpointable_modules",
    "enable_gradient_checkpointing",
    "is_sharded",
    "load_full_state",
    "lr_lambda",
    "make_accelerator",
    "prepare_training",
    "restore_checkpoint",
    "resumable_batches",
    "run_training",
    "save_checkpoint",
    "scalar",
    "tensor_digest",
    "weights_digest",
]
