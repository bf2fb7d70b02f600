"""The demo's shipped teacher and students: trained by the demo recipe for hours (see
``pretrained/MODEL_CARD.md``), stored in fp16, loaded by ``fastjukebox demo`` by default.

Layout of :data:`PRETRAINED_DIR`::

    pretrained/
      MODEL_CARD.md                 how they were trained (commands, steps, wall time, machine,
                                    data seed) and what they measure
      recipe.json                   the synth data they were trained on (a SynthConfig) and
                                    the measured numbers of the model card
      teacher/{vqvae,top,middle,bottom}/        model folders (config.json + safetensors)
      students/categorical/{middle,bottom}/     the students the samples and the report use
                                    (the Gaussian baselines are not shipped: a
                                    ``--from_scratch`` run trains them)

:func:`load_pretrained` checks every folder loads (config and weights) before the demo uses
them: a missing or damaged one is one :class:`~teacher.config.ConfigError` naming it and
suggesting ``--from_scratch``; nothing is retrained silently. :func:`export_pretrained` writes
a trained teacher and its students in this layout (what made the shipped files).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from teacher.config import ConfigError, config_from_dict, config_to_dict
from teacher.io import ModelFolderError, atomic_dir, atomic_write_json, load_tensors, save_tensors

#: where the shipped models live (inside the installed package)
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
RECIPE_FILE = "recipe.json"
MODEL_CARD = "MODEL_CARD.md"
TEACHER_PARTS = ("vqvae", "top", "middle", "bottom")
STUDENT_PARTS = tuple(f"categorical/{lvl}" for lvl in ("middle", "bottom"))


class PretrainedError(ConfigError):
    """The shipped demo models are missing or damaged."""


@dataclass(frozen=True)
class Pretrained:
    """The shipped models, checked to load.

    Attributes:
        root: the folder (:data:`PRETRAINED_DIR` by default).
        teacher_dir: ``root/teacher`` (``Jukebox.from_pretrained``).
        students_dir: ``root/students`` (``<family>/<level>`` student folders).
        synth: the :class:`~teacher.data.synth.SynthConfig` of their training data.
        recipe: everything ``recipe.json`` holds (the model card's numbers among it).
    """

    root: Path
    teacher_dir: Path
    students_dir: Path
    synth: Any
    recipe: dict[str, Any]


def _damaged(root: Path, what: str, err: Exception | str) -> PretrainedError:
    return PretrainedError(
        f"the shipped demo models in {root} are damaged: {what}: {err} -- reinstall fastjukebox "
        "(git checkout the folder) or train your own with `fastjukebox demo --from_scratch`"
    )


def load_pretrained(root: str | Path = PRETRAINED_DIR) -> Pretrained:
    """Check that every shipped model folder loads (config, weights, tensor names and shapes)
    and return where they are; one :class:`PretrainedError` names the first damaged file."""
    from student.base import load_student
    from teacher.data.synth import SynthConfig
    from teacher.prior.model import Prior
    from teacher.vqvae import VQVAE

    root = Path(root)
    if not (root / RECIPE_FILE).is_file():
        raise _damaged(root, RECIPE_FILE, "missing")
    try:
        recipe = json.loads((root / RECIPE_FILE).read_text(encoding="utf-8"))
        synth = config_from_dict(SynthConfig, dict(recipe["synth"]))
    except (ValueError, KeyError, TypeError) as err:
        raise _damaged(root, RECIPE_FILE, err) from None
    loaders = {"vqvae": VQVAE.from_pretrained}
    for part in TEACHER_PARTS:
        folder = root / "teacher" / part
        try:
            loaders.get(part, Prior.from_pretrained)(folder)
        except (ModelFolderError, FileNotFoundError, ValueError) as err:
            raise _damaged(root, f"teacher/{part}", err) from None
    for part in STUDENT_PARTS:
        try:
            load_student(root / "students" / part)
        except (ModelFolderError, FileNotFoundError, ValueError) as err:
            raise _damaged(root, f"students/{part}", err) from None
    return Pretrained(root, root / "teacher", root / "students", synth, recipe)


def export_pretrained(
    teacher_dir: str | Path,
    students_dir: str | Path,
    out: str | Path,
    synth: Any,
    recipe: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a teacher (``vqvae/``, ``top/``, ``middle/``, ``bottom/``) and its students
    (``<family>/<level>/``) as shipped demo models into ``out``, atomically: every floating
    tensor cast to ``dtype`` (the models cast back to fp32 when they load), every other file of
    the folders copied, ``recipe.json`` = ``recipe`` + the training data's ``synth`` config."""
    teacher_dir, students_dir = Path(teacher_dir), Path(students_dir)
    with atomic_dir(out) as tmp:
        parts = [(teacher_dir / p, tmp / "teacher" / p) for p in TEACHER_PARTS]
        parts += [(students_dir / p, tmp / "students" / p) for p in STUDENT_PARTS]
        for src, dst in parts:
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
            for weights in src.glob("*.safetensors"):
                state = load_tensors(weights)
                cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
                save_tensors(cast, dst / weights.name)
        _relink(tmp)
        atomic_write_json(tmp / RECIPE_FILE, {**(recipe or {}), "synth": config_to_dict(synth)})
    return Path(out)


def _relink(root: Path) -> None:
    """Point the exported folders' links at each other (paths relative to ``root``, the
    fingerprints of the CAST weights): each prior's ``vqvae.json`` at ``teacher/vqvae``, each
    student's ``teacher.json`` at its prior and the VQ-VAE, so that a shipped prior can start a
    fine-tuning run (``--init_from``) on the shipped VQ-VAE."""
    from distill.teacher import TEACHER_LINK_FILE
    from teacher.io import model_fingerprint, read_json
    from teacher.train.prior import VQVAE_LINK_FILE

    vq = root / "teacher" / "vqvae"
    vq_fp = model_fingerprint(vq)
    for part in TEACHER_PARTS[1:]:
        link = root / "teacher" / part / VQVAE_LINK_FILE
        if link.is_file():
            atomic_write_json(
                link, {**read_json(link), "path": "teacher/vqvae", "fingerprint": vq_fp}
            )
    for part in STUDENT_PARTS:
        link = root / "students" / part / TEACHER_LINK_FILE
        if not link.is_file():
            continue
        data = read_json(link)
        prior = root / "teacher" / str(data.get("level_name", part.split("/")[-1]))
        data.update(
            prior=str(prior.relative_to(root)),
            teacher_dir="teacher",
            vqvae="teacher/vqvae",
            fingerprint=model_fingerprint(prior),
            vqvae_fingerprint=vq_fp,
        )
        atomic_write_json(link, data)


__all__ = [
    "MODEL_CARD",
    "PRETRAINED_DIR",
    "RECIPE_FILE",
    "Pretrained",
    "PretrainedError",
    "export_pretrained",
    "load_pretrained",
]
