"""The frozen teacher a distillation run needs: one upsampler prior and the VQ-VAE of a teacher
folder (``TEACHER/vqvae``, ``TEACHER/middle``, ``TEACHER/bottom``), checked to belong together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from teacher.config import ConfigError, read_json_object
from teacher.device import resolve_dtype
from teacher.io import ModelFolderError, model_fingerprint, read_model_config
from teacher.levels import level_name
from teacher.vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)

VQVAE_FOLDER = "vqvae"
#: the file in a student folder naming the teacher it was distilled from
TEACHER_LINK_FILE = "teacher.json"
VOCAB_FILE = "vocab.json"


@dataclass
class Teacher:
    """The frozen pieces of a teacher folder a distillation run needs.

    Attributes:
        prior: the upsampler prior of the level (eval, ``requires_grad`` off).
        vqvae: the VQ-VAE (eval, ``requires_grad`` off): codebook and level decoder.
        vocab: artist/genre names -> ids of the prior's labels.
        root, prior_dir, vqvae_dir: the folders.
        fingerprint: SHA-256 (16 hex) of the prior folder's config and weights.
        vqvae_fingerprint: the same of the VQ-VAE folder.
    """

    prior: Any
    vqvae: Any
    vocab: Any
    root: Path
    prior_dir: Path
    vqvae_dir: Path
    fingerprint: str
    vqvae_fingerprint: str

    @property
    def level(self) -> int:
        return self.prior.cfg.level

    @classmethod
    def in_memory(cls, prior: Any, vqvae: Any) -> Teacher:
        """A teacher of models already built (no folder, no fingerprints, no vocabulary): the
        meta-device dry run and tests."""
        return cls(prior, vqvae, None, Path(), Path(), Path(), "", "")


def teacher_paths(teacher_dir: str | Path, level: int) -> tuple[Path, Path]:
    """``(prior folder, VQ-VAE folder)`` of ``level`` in a teacher folder, checked to exist.

    Raises :class:`ConfigError` naming the missing path, or when ``level`` is not an upsampler
    of the teacher's VQ-VAE.
    """
    root = Path(teacher_dir)
    vq_dir = root / VQVAE_FOLDER
    if not (vq_dir / "config.json").is_file():
        raise ConfigError(f"teacher VQ-VAE folder {vq_dir} is missing (no config.json)")
    vq_cfg = read_model_config(vq_dir, VQVAEConfig, "VQ-VAE")
    if not 0 <= level < vq_cfg.levels - 1:
        raise ConfigError(
            f"--level must be an upsampler level (middle or bottom), not the top: level {level} "
            f"of a {vq_cfg.levels}-level VQ-VAE"
        )
    name = level_name(level, vq_cfg.levels)
    prior_dir = root / name
    if not (prior_dir / "config.json").is_file():
        raise ConfigError(
            f"teacher prior folder {prior_dir} for level {level} ({name}) is missing "
            "(no config.json): train it with `python -m teacher.train prior --level "
            f"{name} ... --output_dir ...` and copy its model/ folder there"
        )
    return prior_dir, vq_dir


def read_teacher_configs(teacher_dir: str | Path, level: int) -> tuple[Path, Path, Any, Any]:
    """``(prior folder, VQ-VAE folder, prior config, VQ-VAE config)`` of ``level`` in a teacher
    folder, read without weights and checked: the prior is that level's upsampler
    (:class:`ConfigError`) and fits the VQ-VAE's geometry (:class:`ModelFolderError` naming
    both folders)."""
    from teacher.prior.config import PriorConfig, check_against_vqvae

    prior_dir, vq_dir = teacher_paths(teacher_dir, level)
    prior_cfg = read_model_config(prior_dir, PriorConfig, "prior")
    if not prior_cfg.is_upsampler or prior_cfg.level != level:
        raise ConfigError(
            f"{prior_dir} holds a level-{prior_cfg.level} prior"
            f"{'' if prior_cfg.is_upsampler else ' (not an upsampler)'}, expected the "
            f"level-{level} upsampler"
        )
    vq_cfg = read_model_config(vq_dir, VQVAEConfig, "VQ-VAE")
    try:
        check_against_vqvae(prior_cfg, vq_cfg)
    except ConfigError as err:
        raise ModelFolderError(f"{prior_dir} does not fit {vq_dir}: {err}") from None
    return prior_dir, vq_dir, prior_cfg, vq_cfg


def load_teacher(
    teacher_dir: str | Path,
    level: int,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> Teacher:
    """Load and freeze the level-``level`` upsampler (in ``dtype``, default fp32: its scoring
    pass computes logits in fp32 either way) and the VQ-VAE of ``teacher_dir``.

    Checks that the prior is that level's upsampler, matches the VQ-VAE's geometry and, when
    its ``vqvae.json`` names a fingerprint, was trained on this VQ-VAE's codes.
    """
    from teacher.data.labels import Vocab
    from teacher.prior.model import Prior
    from teacher.train.prior import VQVAE_LINK_FILE
    from teacher.vqvae import VQVAE

    prior_dir, vq_dir, prior_cfg, vq_cfg = read_teacher_configs(teacher_dir, level)
    # loaded on the CPU, then moved: safetensors refuses device strings such as "cpu:0"
    vqvae = VQVAE.from_pretrained(vq_dir).to(device).eval().requires_grad_(False)
    vq_fp = model_fingerprint(vq_dir)
    link = prior_dir / VQVAE_LINK_FILE
    if link.is_file():
        linked_to = read_json_object(link, ModelFolderError)
        linked = linked_to.get("fingerprint")
        if linked is not None and linked != vq_fp:
            raise ConfigError(
                f"{prior_dir} was trained on the codes of another VQ-VAE "
                f"({linked_to.get('path')}, fingerprint {linked}); {vq_dir} is {vq_fp}"
            )
    else:
        log.warning("%s has no %s: cannot check it belongs to %s", prior_dir, link.name, vq_dir)
    if (prior_dir / VOCAB_FILE).is_file():
        vocab = Vocab.load(str(prior_dir))
        if prior_cfg.labels is not None:  # ids beyond the tables: another model's vocabulary
            lab = prior_cfg.labels
            vocab.check_rows(lab.artist_bins, lab.genre_bins, str(prior_dir / VOCAB_FILE))
    else:
        vocab = None
        log.warning("%s has no %s: the code cache's vocabulary is used", prior_dir, VOCAB_FILE)
    prior = Prior.from_pretrained(prior_dir, dtype=resolve_dtype(dtype))
    prior = prior.to(device).eval().requires_grad_(False)
    return Teacher(
        prior=prior,
        vqvae=vqvae,
        vocab=vocab,
        root=Path(teacher_dir),
        prior_dir=prior_dir,
        vqvae_dir=vq_dir,
        fingerprint=model_fingerprint(prior_dir),
        vqvae_fingerprint=vq_fp,
    )


__all__ = [
    "TEACHER_LINK_FILE",
    "VQVAE_FOLDER",
    "Teacher",
    "load_teacher",
    "read_teacher_configs",
    "teacher_paths",
]
