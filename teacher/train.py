"""Teacher training entry point: ``accelerate launch -m teacher.train vqvae|prior ...``.

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
      train_args.json        the run configuration (+ for priors the data summary: files,
                             files without metadata, lyric characters transliterated/dropped)

A prior's ``model/`` also holds ``vocab.json`` (artist/genre names -> ids, for the sampler)
and ``vqvae.json`` (path and fingerprint of the VQ-VAE whose codes it models). Priors train on
a code cache by default (``--codes cache``; ``teacher/codes.py``), which
``benchmarks/bench_codes.py`` measured faster than encoding every crop on the fly.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
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


def make_accelerator(cfg: TrainConfig, kwargs_handlers: Sequence[Any] | None = None) -> Any:
    """An Accelerator for ``cfg`` (imported lazily: accelerate is slow to import).

    ``kwargs_handlers``: extra accelerate handlers, e.g. ``DistributedDataParallelKwargs``.
    """
    from accelerate import Accelerator

    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
        kwargs_handlers=list(kwargs_handlers) if kwargs_handlers else None,
    )


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
    ``OUTPUT_DIR/model`` folder (``export_name``: ``student`` for distillation) is refreshed
    the same way. Old checkpoints beyond ``checkpoints_total_limit`` are pruned.
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
    model, optimizer, loader, scheduler, generator = prepare_training(
        accelerator, model, dataset, cfg
    )
    pos = restore_checkpoint(accelerator, resume)
    if cfg.report_to != "none":
        accelerator.init_trackers("vqvae", config={"lr": cfg.learning_rate})

    unwrapped = accelerator.unwrap_model(model)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", main)

    def export(folder: Path) -> None:
        unwrapped.save_pretrained(folder)
        scan.vocab.save(str(folder / "vocab.json"))  # the data's artist/genre names -> ids

    def checkpoint_state() -> dict[str, Any]:
        digests = [_tensor_digest(b.k) for b in unwrapped.bottleneck.level_blocks]
        per_rank = gather_object([digests])
        if any(d != per_rank[0] for d in per_rank):
            raise RuntimeError(f"codebooks diverged across ranks: {per_rank}")
        return {
            **pos.as_state(),
            "world_size": accelerator.num_processes,
            "codebook_digests": per_rank,
            "time": time.time(),
        }

    model.train()
    levels = model_cfg.levels
    with make_progress(main) as progress:
        start_step = pos.step
        task = progress.add_task("vqvae", total=cfg.max_train_steps, completed=start_step, info="")
        batches = resumable_batches(accelerator, loader, dataset, generator, cfg.seed, pos)
        while pos.step < cfg.max_train_steps:
            batch = next(batches)
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
            pos.step += 1
            step = pos.step
            loss = out.loss.detach().float().item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at step {step}")
            record = {"loss": loss, "lr": scheduler.get_last_lr()[0]}
            record.update({k: _scalar(v) for k, v in out.terms.items()})
            record.update({k: _scalar(v) for k, v in out.metrics.items()})
            sc = " ".join(f"{record.get(f'sc_db_l{lv}', float('nan')):.1f}" for lv in range(levels))
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
    if pos.step == start_step:
        # nothing trained in this run (already at max_train_steps): export what was loaded
        if main:
            with atomic_dir(out_dir / "model") as folder:
                export(folder)
        accelerator.wait_for_everyone()
    if cfg.report_to != "none":
        accelerator.end_training()
    return out_dir / "model"


# ---------------------------------------------------------------------------------------------
# prior

LEVEL_NAMES = ("top", "middle", "bottom")
PRIOR_PRESETS = ("tiny", "small")
VQVAE_LINK_FILE = "vqvae.json"


def level_index(name: str | int, levels: int) -> int:
    """``top``/``middle``/``bottom`` (or an int) -> level index, 0 = bottom."""
    if isinstance(name, int) or str(name).isdigit():
        level = int(name)
    elif name == "top":
        level = levels - 1
    elif name == "bottom":
        level = 0
    elif name == "middle":
        if levels != 3:
            raise ConfigError(f"'middle' needs a 3-level VQ-VAE, this one has {levels} levels")
        level = 1
    else:
        raise ConfigError(f"--level must be top, middle, bottom or an index, got {name!r}")
    if not 0 <= level < levels:
        raise ConfigError(f"level {level} outside [0, {levels - 1}]")
    return level


def prior_preset(
    preset: str,
    level: int,
    vq_cfg: VQVAEConfig,
    n_ctx: int | None = None,
    n_tokens: int | None = None,
    lyric_version: str = "v3",
) -> Any:
    """A :class:`~teacher.prior.config.PriorConfig` for ``level`` of the VQ-VAE ``vq_cfg``.

    The level decides the conditioning, as in the released models: the top prior gets
    artist/genre labels, timing and (when ``n_tokens > 0``) single-sequence lyrics
    (1b_lyrics style); an upsampler conditions on the level above plus artist/genre labels,
    no timing (Jukebox ``upsamplers`` hparams: ``y_bins`` but ``include_time_signal`` only
    without an upper conditioner). ``n_ctx``/``n_tokens`` override the preset's window and
    lyric window (``None`` keeps them; tiny top: 16 chars, small top: none). The VQ-VAE fixes
    the codebook size, hops and sample rate; the artist/genre bins are set from the data's
    vocabulary by :func:`train_prior`.
    """
    from teacher.labels import LabelConfig
    from teacher.prior import config as pc

    if preset not in PRIOR_PRESETS:
        raise ConfigError(f"--preset must be one of {PRIOR_PRESETS}, got {preset!r}")
    top = level == vq_cfg.levels - 1
    sr = vq_cfg.sample_rate
    if top:
        if preset == "tiny":
            want_lyrics = n_tokens is None or n_tokens > 0
            cfg = pc.tiny_top_prior(lyrics="single" if want_lyrics else None)
        else:
            cfg = pc.small_top_prior(sample_rate=sr)
            if n_tokens:
                # the small top has depth 8; 1b_lyrics' attn_order 12 puts its prime layer at
                # d % 16 == 15, so lyrics need depth 16 (two dense-free groups of 8)
                tr = dataclasses.replace(cfg.transformer, depth=16, attn_order=12, prime_len=0)
                cfg = dataclasses.replace(
                    cfg, transformer=tr, lyrics=pc.LyricsConfig(style="single", n_tokens=1)
                )
    else:
        make = pc.tiny_upsampler if preset == "tiny" else pc.small_upsampler
        cfg = make(level=level) if preset == "tiny" else make(level, sample_rate=sr)
    cfg = dataclasses.replace(
        cfg,
        level=level,
        l_bins=vq_cfg.l_bins,
        downs_t=tuple(vq_cfg.downs_t),
        strides_t=tuple(vq_cfg.strides_t),
        sample_rate=sr,
    )
    if cfg.lyrics is not None:
        n_vocab = LabelConfig(lyric_version=lyric_version).n_vocab
        n = cfg.lyrics.n_tokens if n_tokens is None else n_tokens
        if n == 0:
            raise ConfigError("this preset's lyric layers need --n_tokens > 0")
        cfg = dataclasses.replace(
            cfg, lyrics=dataclasses.replace(cfg.lyrics, n_tokens=n, n_vocab=n_vocab)
        )
    elif n_tokens and not top:
        raise ConfigError("lyrics (--n_tokens > 0) condition the top prior only")
    return with_window(cfg, n_ctx if n_ctx is not None else cfg.n_ctx)


def with_window(cfg: Any, n_ctx: int) -> Any:
    """``cfg`` with ``n_ctx`` music codes per window; the transformer (and, for single-style
    lyrics, its prime length) follow."""
    n = cfg.n_tokens
    tr = cfg.transformer
    if cfg.single_sequence:
        tr = dataclasses.replace(tr, n_ctx=n_ctx + n, prime_len=n)
    else:
        tr = dataclasses.replace(tr, n_ctx=n_ctx)
        if cfg.lyrics is not None:  # encoder style
            enc = dataclasses.replace(cfg.lyrics.encoder, n_ctx=n)
            cfg = dataclasses.replace(cfg, lyrics=dataclasses.replace(cfg.lyrics, encoder=enc))
            tr = dataclasses.replace(tr, encoder_dims=n)
    return dataclasses.replace(cfg, n_ctx=n_ctx, transformer=tr).validate()


def _fit_labels(cfg: Any, vocab: Any) -> Any:
    """``cfg`` with artist/genre bins from the data's vocabulary (Jukebox ``y_bins``)."""
    if cfg.labels is None:
        return cfg
    labels = dataclasses.replace(cfg.labels, artist_bins=vocab.n_artists, genre_bins=vocab.n_genres)
    return dataclasses.replace(cfg, labels=labels).validate()


def _check_prior_against_vqvae(cfg: Any, vq: VQVAEConfig) -> None:
    if cfg.l_bins != vq.l_bins:
        raise ConfigError(f"prior l_bins {cfg.l_bins} != VQ-VAE l_bins {vq.l_bins}")
    if tuple(cfg.downs_t) != tuple(vq.downs_t) or tuple(cfg.strides_t) != tuple(vq.strides_t):
        raise ConfigError(
            f"prior geometry downs_t={cfg.downs_t} strides_t={cfg.strides_t} differs from the "
            f"VQ-VAE's downs_t={vq.downs_t} strides_t={vq.strides_t}"
        )
    if cfg.sample_rate != vq.sample_rate:
        raise ConfigError(f"prior sample_rate {cfg.sample_rate} != VQ-VAE {vq.sample_rate}")


def _longest_file(data_cfg: Any) -> int:
    """Length in samples (model rate) of the longest readable audio file; headers only."""
    from teacher.audio import AudioError, probe, resampled_length
    from teacher.data import DataError, find_audio_files

    root = os.path.abspath(data_cfg.root)
    if not os.path.isdir(root):
        raise DataError(f"audio folder {data_cfg.root!r} does not exist or is not a folder")
    longest = 0
    for path in find_audio_files(root, data_cfg.extensions):
        try:
            info = probe(path)
        except (AudioError, OSError):
            continue  # the scan skips it with a warning
        longest = max(
            longest, resampled_length(info.frames, info.sample_rate, data_cfg.sample_rate)
        )
    return longest


def _check_timing(cfg: Any, lengths: Sequence[int]) -> None:
    """Every file's length must be inside the top prior's timing range (Jukebox filters its
    data by ``min_duration``/``max_duration`` for the same reason)."""
    lab = cfg.labels
    if lab is None or not lab.include_timing or not lengths:
        return
    lo, hi = lab.min_duration * cfg.sample_rate, lab.max_duration * cfg.sample_rate
    bad = [n for n in lengths if not lo <= n < hi]
    if bad:
        raise ConfigError(
            f"{len(bad)} files are outside the timing range [{lab.min_duration}, "
            f"{lab.max_duration}) s of the prior's labels (e.g. {bad[0] / cfg.sample_rate:.2f} s)"
        )


class _TiedOutputFilter(logging.Filter):
    """Drop accelerate's warning that the tied output head (``prior.x_out.weight``, the same
    tensor as ``prior.x_emb.weight`` unless ``merged_decoder``) was left out of a safetensors
    checkpoint: it is restored through the tie on load (the resume test checks the weights)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Removed shared tensor" in msg and "{'prior.x_out.weight'}" in msg)


def _quiet_tied_weight_warning() -> None:
    target = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedOutputFilter) for f in target.filters):
        target.addFilter(_TiedOutputFilter())


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train_prior(
    prior_cfg: Any,
    vqvae_dir: str | os.PathLike,
    data_cfg: Any,
    cfg: TrainConfig,
    codes_mode: str = "cache",
    code_cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Train one Jukebox prior on the codes of the frozen VQ-VAE at ``vqvae_dir``.

    ``codes_mode``: ``"cache"`` (the default, the faster one on CPU: ``benchmarks/
    bench_codes.py``) encodes every file once into a code cache (:func:`teacher.codes.
    build_code_cache`; the main process builds it first, the other ranks then open it) and
    trains on :class:`teacher.codes.CodeDataset` windows; ``"on_the_fly"`` crops
    ``n_ctx · hop`` samples with :class:`teacher.data.AudioDataset` and encodes them inside
    every step. Artist/genre bins are set from the data's vocabulary on a fresh run; a resumed
    run takes the config and the vocabulary from its checkpoint.

    The loop is :func:`train_vqvae`'s: accelerate ``prepare``, gradient accumulation,
    clipping, LambdaLR, atomic checkpoints with ``state.json`` (per-rank weight digests,
    checked equal), resume from the latest, ``metrics.jsonl`` and a rich progress bar with the
    loss terms in bits per token. The exported ``OUTPUT_DIR/model`` holds the prior
    (``config.json`` + ``model.safetensors``), ``vocab.json`` and ``vqvae.json`` (path and
    fingerprint of the VQ-VAE whose codes it models). Returns that folder.
    """
    from accelerate.utils import gather_object, set_seed

    from teacher.codes import CODES_MODES, CodeDataset, build_code_cache, vqvae_fingerprint
    from teacher.data import AudioDataset, scan_audio
    from teacher.labels import LabelConfig, Vocab
    from teacher.prior.config import load_prior_config
    from teacher.prior.model import Prior
    from teacher.vqvae import VQVAE

    # -- everything that can be wrong is checked before any work -----------------------------
    cfg.validate()
    prior_cfg.validate()
    data_cfg.validate()
    if codes_mode not in CODES_MODES:
        raise ConfigError(f"--codes must be one of {CODES_MODES}, got {codes_mode!r}")
    vq_path = Path(vqvae_dir)
    if not (vq_path / "config.json").is_file():
        raise FileNotFoundError(f"{vq_path} is not a VQ-VAE folder (no config.json)")
    vq_cfg = load_config(VQVAEConfig, str(vq_path / "config.json"))
    out_dir = Path(cfg.output_dir)
    resume = resolve_resume(cfg.resume_from_checkpoint, out_dir / "checkpoints")
    if resume is not None:
        prior_cfg = load_prior_config(str(resume / "model" / "config.json"))
        link = resume / "model" / VQVAE_LINK_FILE
        if link.is_file() and read_json(link)["fingerprint"] != vqvae_fingerprint(vq_path):
            raise ConfigError(
                f"{resume} was trained on the codes of another VQ-VAE "
                f"({read_json(link)['path']}); --vqvae {vq_path} has different weights"
            )
    _check_prior_against_vqvae(prior_cfg, vq_cfg)
    level, n_ctx = prior_cfg.level, prior_cfg.n_ctx
    window = prior_cfg.sample_length  # n_ctx · hop samples
    label_cfg = LabelConfig(
        max_genres=prior_cfg.labels.max_genres if prior_cfg.labels is not None else 1,
        n_tokens=prior_cfg.n_tokens,
        lyric_version=data_cfg.labels.lyric_version,
    ).validate()
    if prior_cfg.lyrics is not None and prior_cfg.lyrics.n_vocab != label_cfg.n_vocab:
        raise ConfigError(
            f"lyrics n_vocab {prior_cfg.lyrics.n_vocab} != {label_cfg.n_vocab} of lyric "
            f"version {label_cfg.lyric_version}"
        )
    data_cfg = dataclasses.replace(
        data_cfg, sample_rate=vq_cfg.sample_rate, sample_length=window, labels=label_cfg
    ).validate()
    longest = _longest_file(data_cfg)
    if longest < window:
        raise ConfigError(
            f"the level-{level} window n_ctx·hop = {n_ctx}·{prior_cfg.hop_length} = {window} "
            f"samples ({window / data_cfg.sample_rate:.2f} s) is longer than every audio file "
            f"(longest {longest / data_cfg.sample_rate:.2f} s): lower --n_ctx"
        )

    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    set_seed(cfg.seed, device_specific=False)
    _quiet_tied_weight_warning()

    # -- data: the main process builds the code cache (or scans) first, the others reuse it --
    vocab_saved = Vocab.load(str(resume / "model")) if resume is not None else None
    vqvae = None
    with accelerator.main_process_first():
        if codes_mode == "cache":
            cache = build_code_cache(vq_path, data_cfg, code_cache_dir, progress=main)
        else:
            scan = scan_audio(data_cfg)  # raises DataError when nothing is usable
    if codes_mode == "cache":
        vocab = vocab_saved or cache.vocab
        dataset = CodeDataset(cache, level, n_ctx, label_cfg, seed=data_cfg.seed, vocab=vocab)
        lengths = [cache.files[i].length for i in dataset.file_ids]
        text, no_meta, n_files = dataset.text_stats, dataset.no_metadata, len(lengths)
        source = f"code cache {cache.root}"
    else:
        vocab = vocab_saved or scan.vocab
        dataset = AudioDataset(data_cfg, scan=scan, vocab=vocab)
        lengths = [f.length for f in scan.files]
        text, no_meta, n_files = scan.text, scan.no_metadata, len(lengths)
        source = f"on the fly from {scan.root}"
        if no_meta:
            log.warning(
                "%d of %d files have no metadata row: artist and genre id 0 (unknown), no lyrics",
                no_meta,
                n_files,
            )
        vqvae = VQVAE.from_pretrained(vq_path, device=accelerator.device).eval()
        vqvae.requires_grad_(False)
    if resume is None:
        prior_cfg = _fit_labels(prior_cfg, vocab)
    _check_timing(prior_cfg, lengths)
    summary = {
        "codes": codes_mode,
        "source": source,
        "level": level,
        "n_ctx": n_ctx,
        "window_samples": window,
        "files": n_files,
        "items_per_epoch": len(dataset),
        "no_metadata": no_meta,
        "artists": len(vocab.artists) - 1,
        "genres": len(vocab.genres) - 1,
        "lyric_chars": text.chars,
        "lyric_transliterated": text.mapped,
        "lyric_dropped": text.dropped,
        "lyric_dropped_chars": dict(text.dropped_chars.most_common(20)),
    }
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "prior level %d (n_ctx %d = %.2f s), codes %s: %d files, %d windows/epoch; "
            "%d without metadata; %s",
            level,
            n_ctx,
            window / data_cfg.sample_rate,
            source,
            n_files,
            len(dataset),
            no_meta,
            text.summary(),
        )
        atomic_write_json(
            out_dir / "train_args.json",
            {
                "train": config_to_dict(cfg),
                "data": config_to_dict(data_cfg),
                "model": config_to_dict(prior_cfg),
                "vqvae": str(vq_path.resolve()),
                "codes": codes_mode,
                "code_cache_dir": str(cache.root) if codes_mode == "cache" else None,
                "summary": summary,
            },
        )

    # -- model, optimiser, loop ---------------------------------------------------------------
    model = Prior(prior_cfg)
    model, optimizer, loader, scheduler, generator = prepare_training(
        accelerator, model, dataset, cfg
    )
    pos = restore_checkpoint(accelerator, resume)
    if cfg.report_to != "none":
        accelerator.init_trackers("prior", config={"lr": cfg.learning_rate, "level": level})

    unwrapped = accelerator.unwrap_model(model)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", main)
    vq_link = {
        "path": str(vq_path.resolve()),
        "fingerprint": vqvae_fingerprint(vq_path),
        "level": level,
        "hop_length": prior_cfg.hop_length,
        "codes": codes_mode,
    }

    def export(folder: Path) -> None:
        unwrapped.save_pretrained(folder)
        vocab.save(str(folder / "vocab.json"))
        atomic_write_json(folder / VQVAE_LINK_FILE, vq_link)

    def checkpoint_state() -> dict[str, Any]:
        per_rank = gather_object([_weights_digest(unwrapped)])
        if any(d != per_rank[0] for d in per_rank):
            raise RuntimeError(f"prior weights diverged across ranks: {per_rank}")
        return {
            **pos.as_state(),
            "world_size": accelerator.num_processes,
            "weight_digests": per_rank,
            "time": time.time(),
        }

    def batch_inputs(batch: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(codes [B, T], labels [B, L] | None, upper [B, T_up] | None) of a batch."""
        labels = batch["labels"] if prior_cfg.labels is not None else None
        if codes_mode == "cache":
            return batch["codes"], labels, batch.get("upper")
        top = min(level + 2, vq_cfg.levels)
        with torch.no_grad():
            zs = vqvae.encode(batch["audio"], start_level=level, end_level=top)
        return zs[0], labels, zs[1] if prior_cfg.is_upsampler else None

    model.train()
    with make_progress(main) as progress:
        name = LEVEL_NAMES[vq_cfg.levels - 1 - level] if vq_cfg.levels == 3 else f"l{level}"
        start_step = pos.step
        task = progress.add_task(
            f"prior {name}", total=cfg.max_train_steps, completed=start_step, info=""
        )
        batches = resumable_batches(accelerator, loader, dataset, generator, cfg.seed, pos)
        while pos.step < cfg.max_train_steps:
            batch = next(batches)
            codes, labels, upper = batch_inputs(batch)
            with accelerator.accumulate(model):
                out = model(codes, labels=labels, upper=upper)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            pos.step += 1
            step = pos.step
            loss = out.loss.detach().float().item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss} at step {step}")
            record = {"loss": loss, "lr": scheduler.get_last_lr()[0]}
            record.update({k: float(v.detach()) for k, v in out.terms.items()})
            record.update({k: float(v) for k, v in out.metrics.items()})
            terms = " ".join(f"{k} {record[k]:.3f}" for k in out.terms)
            progress.update(
                task,
                advance=1,
                info=f"loss {loss:.3f} bits/token ({terms}) acc {record['accuracy']:.3f}",
            )
            if step % cfg.logging_steps == 0 or step == cfg.max_train_steps:
                metrics_log.write(step, record)
                if cfg.report_to != "none":
                    accelerator.log(record, step=step)
            if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                save_checkpoint(accelerator, cfg, step, export, checkpoint_state())
    if pos.step == start_step:
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


PRIOR_HELP = (
    "train one prior (top, middle or bottom) on the codes of a trained VQ-VAE "
    "(default --codes cache: the files are encoded once into a code cache, the faster way)"
)


def add_prior_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``train prior`` (shared by ``python -m teacher.train`` and ``fastjukebox``)."""
    from teacher.codes import CODES_MODES, DEFAULT_CODES_MODE

    p.add_argument(
        "--level", required=True, help="top, middle or bottom (or a level index, 0 = bottom)"
    )
    p.add_argument("--vqvae", required=True, help="trained VQ-VAE folder (frozen; gives the codes)")
    p.add_argument("--data_dir", required=True, help="folder of audio files (+ metadata)")
    p.add_argument("--metadata", default=None, help="metadata JSONL/CSV (default: in data_dir)")
    p.add_argument(
        "--preset",
        choices=PRIOR_PRESETS,
        default="small",
        help="prior size preset; the level decides the conditioning (top: labels + timing "
        "+ lyrics when --n_tokens > 0; upsamplers: upper codes + artist/genre labels)",
    )
    p.add_argument("--n_ctx", type=int, default=None, help="codes per window (preset default)")
    p.add_argument(
        "--n_tokens",
        type=int,
        default=None,
        help="lyric characters per window, top prior only; 0 = no lyrics (preset default)",
    )
    p.add_argument("--lyric_version", choices=("v2", "v3"), default="v3")
    p.add_argument(
        "--codes",
        choices=CODES_MODES,
        default=DEFAULT_CODES_MODE,
        help="'cache' (default; measured faster on CPU by benchmarks/bench_codes.py): encode "
        "every file once into a code cache and train on windows of it; 'on_the_fly': encode "
        "each crop with the VQ-VAE inside every step (keeps the random stereo blend)",
    )
    p.add_argument(
        "--code_cache_dir",
        default=None,
        help="code cache folder (default: <cache_dir>/codes/<fingerprint> or "
        "~/.cache/fastjukebox/codes/<fingerprint>); rebuilt only when the VQ-VAE or the "
        "audio changes",
    )
    p.add_argument("--no_aug_blend", action="store_true", help="fixed 0.5 stereo downmix")
    p.add_argument(
        "--data_cache",
        choices=("decoded", "none"),
        default="decoded",
        help="decode each audio file once into a memory-mapped cache or seek every crop",
    )
    p.add_argument("--cache_dir", default=None, help="decoded audio cache folder")
    add_train_args(p)


def prior_configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`train_prior` from parsed ``train prior`` arguments."""
    from teacher.data import DataConfig
    from teacher.labels import LabelConfig

    vq_path = Path(args.vqvae)
    if not (vq_path / "config.json").is_file():
        raise FileNotFoundError(f"--vqvae {vq_path} is not a VQ-VAE folder (no config.json)")
    vq_cfg = load_config(VQVAEConfig, str(vq_path / "config.json"))
    level = level_index(args.level, vq_cfg.levels)
    prior_cfg = prior_preset(
        args.preset, level, vq_cfg, args.n_ctx, args.n_tokens, args.lyric_version
    )
    data_cfg = DataConfig(
        root=args.data_dir,
        metadata=args.metadata,
        sample_rate=vq_cfg.sample_rate,
        sample_length=prior_cfg.sample_length,
        aug_blend=not args.no_aug_blend,
        labels=LabelConfig(lyric_version=args.lyric_version),
        cache=args.data_cache,
        cache_dir=args.cache_dir,
        seed=args.seed,
    )
    return dict(
        prior_cfg=prior_cfg,
        vqvae_dir=vq_path,
        data_cfg=data_cfg,
        cfg=train_config_from_args(args),
        codes_mode=args.codes,
        code_cache_dir=args.code_cache_dir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m teacher.train", description="Train a teacher model."
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    add_vqvae_args(sub.add_parser("vqvae", help="train the hierarchical VQ-VAE"))
    add_prior_args(sub.add_parser("prior", help=PRIOR_HELP))
    return parser


def run(args: argparse.Namespace) -> Path:
    """Run the stage named by parsed arguments (shared by the console script)."""
    if args.stage == "vqvae":
        return train_vqvae(*vqvae_configs_from_args(args))
    if args.stage == "prior":
        return train_prior(**prior_configs_from_args(args))
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
