"""Training the Jukebox VQ-VAE (``train vqvae``): its data, its loss step, its export.

The loop is :func:`teacher.train.loop.run_training`. Bandwidth statistics (the loss
normalisers) are measured once on the data before the first step and saved in the model config;
a resumed run takes them from the checkpoint. Every checkpoint also records the per-rank digests
of the codebooks (all-reduced EMA statistics and broadcast restarts keep them equal).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from teacher.config import ConfigError, config_to_dict, load_config
from teacher.io import atomic_write_json, resolve_resume
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


def train_vqvae(model_cfg: VQVAEConfig, data_cfg: Any, cfg: TrainConfig) -> Path:
    """Train the Jukebox VQ-VAE on ``data_cfg``'s audio; returns the exported model folder."""
    from accelerate.utils import set_seed

    from teacher.data.dataset import AudioDataset, compute_bandwidth, scan_audio
    from teacher.vqvae.model import VQVAE

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
            },
        )
    dataset = AudioDataset(data_cfg, scan=scan)

    if resume is not None:
        model_cfg = load_config(VQVAEConfig, str(resume / "model" / "config.json"))
    else:
        model_cfg = dataclasses.replace(model_cfg, bandwidth=compute_bandwidth(dataset))
    model = VQVAE(model_cfg)

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


__all__ = ["describe", "train_vqvae"]
