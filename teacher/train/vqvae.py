"""Training the Jukebox VQ-VAE (``train vqvae``): its data, its loss step, its export.

The loop is :func:`teacher.train.loop.run_training`. Bandwidth statistics (the loss
normalisers) are measured once on the data before the first step and saved in the model config;
a resumed run takes them from the checkpoint. Every checkpoint also records the per-rank digests
of the codebooks (all-reduced EMA statistics and broadcast restarts keep them equal).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from teacher.config import ConfigError, config_to_dict, load_config
from teacher.io import atomic_write_json, read_model_config, resolve_resume
from teacher.train.loop import (
    Job,
    StepOutput,
    TrainConfig,
    make_accelerator,
    run_training,
    tensor_digest,
)
from teacher.vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)


def describe(record: Mapping[str, float], levels: int) -> str:
    """Progress text: the loss, spectral convergence in dB and live codes per level."""
    sc = " ".join(f"{record.get(f'sc_db_l{lv}', float('nan')):.1f}" for lv in range(levels))
    alive = " ".join(
        str(int(record.get(f"alive_l{lv}", record.get(f"usage_l{lv}", 0)))) for lv in range(levels)
    )
    return f"loss {record['loss']:.3f} SC dB {sc} codes {alive}"


#: the config fields a fine-tuning run may change: the training crop and the loss normalisers
FINETUNE_FIELDS = ("sample_length", "bandwidth")


def init_vqvae_config(folder: str | os.PathLike, sample_length: int | None = None) -> VQVAEConfig:
    """The config of the VQ-VAE model folder ``folder`` (``--init_from``: fine-tuning), with
    the training crop ``sample_length`` when given; a missing or damaged folder is one
    :class:`~teacher.io.ModelFolderError` naming it."""
    model_cfg = read_model_config(folder, VQVAEConfig, "VQ-VAE")
    if sample_length is not None:
        model_cfg = dataclasses.replace(model_cfg, sample_length=sample_length).validate()
    return model_cfg


def train_vqvae(
    model_cfg: VQVAEConfig,
    data_cfg: Any,
    cfg: TrainConfig,
    init_from: str | os.PathLike | None = None,
) -> Path:
    """Train the Jukebox VQ-VAE on ``data_cfg``'s audio; returns the exported model folder.

    ``init_from`` (fine-tuning): start from the weights of this VQ-VAE model folder (read with
    safetensors). ``model_cfg`` must be its config (:func:`init_vqvae_config`) but for
    :data:`FINETUNE_FIELDS`; the bandwidth statistics are measured on the new data as in a
    fresh run, and the codebooks' EMA state restarts from the codebooks as Jukebox's
    ``restore_k`` does (counts scaled to the codes per step, so used codes are not restarted on
    the first step). A resumed run continues from its checkpoint and does not read
    ``init_from`` again.
    """
    from accelerate.utils import set_seed

    from teacher.data.dataset import AudioDataset, compute_bandwidth, scan_audio
    from teacher.vqvae.model import VQVAE

    cfg.validate()
    model_cfg.validate()
    data_cfg.validate()
    if init_from is not None:
        init_cfg = read_model_config(init_from, VQVAEConfig, "VQ-VAE")
        keep = {f: getattr(init_cfg, f) for f in FINETUNE_FIELDS}
        if dataclasses.replace(model_cfg, **keep) != init_cfg:
            differ = [
                f.name
                for f in dataclasses.fields(VQVAEConfig)
                if f.name not in FINETUNE_FIELDS
                and getattr(model_cfg, f.name) != getattr(init_cfg, f.name)
            ]
            raise ConfigError(
                f"the VQ-VAE config given differs from --init_from {init_from} in "
                f"{', '.join(differ)}: fine-tuning keeps the folder's architecture (only "
                f"{', '.join(FINETUNE_FIELDS)} may change)"
            )
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
    # the weights to start from, read before any data work (a damaged folder fails here)
    init = VQVAE.from_pretrained(init_from) if init_from is not None and resume is None else None
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed, device_specific=False)

    # the main process scans first and fills the decoded cache; the others then reuse it
    with accelerator.main_process_first():
        scan = scan_audio(data_cfg)  # raises DataError when nothing is usable
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("%s", scan.summary())
        atomic_write_json(
            out_dir / "train_args.json",
            {
                "train": config_to_dict(cfg),
                "data": config_to_dict(data_cfg),
                "model": config_to_dict(model_cfg),
                "init_from": str(Path(init_from).resolve()) if init_from is not None else None,
            },
        )
    dataset = AudioDataset(data_cfg, scan=scan)

    if resume is not None:
        model_cfg = load_config(VQVAEConfig, str(resume / "model" / "config.json"))
        if init_from is not None:
            log.info("resuming from %s: --init_from %s is not read again", resume, init_from)
    else:
        model_cfg = dataclasses.replace(model_cfg, bandwidth=compute_bandwidth(dataset))
    model = VQVAE(model_cfg)
    if init is not None:
        model.load_state_dict(init.state_dict(), strict=True)
        del init
        model.bottleneck.restore_ema(
            model.tokens_per_step(cfg.train_batch_size, accelerator.num_processes)
        )

    def step(model: Any, batch: dict[str, Any], pos: Any) -> StepOutput:
        out = model(batch["audio"])
        return StepOutput(out.loss, {**out.terms, **out.metrics})

    def export(vqvae: Any, folder: Path) -> None:
        vqvae.save_pretrained(folder)
        scan.vocab.save(str(folder / "vocab.json"))  # the data's artist/genre names -> ids

    def codebooks() -> dict[str, Any]:
        return {"codebook_digests": [tensor_digest(b.k) for b in model.bottleneck.level_blocks]}

    job = Job(
        name="vqvae",
        model=model,
        dataset=dataset,
        step=step,
        export=export,
        describe=lambda r: describe(r, model_cfg.levels),
        rank_state=codebooks,
        tracker_config={"lr": cfg.learning_rate},
    )
    return run_training(accelerator, cfg, job, resume)


__all__ = ["FINETUNE_FIELDS", "describe", "init_vqvae_config", "train_vqvae"]
