"""Parallel students of the Jukebox upsamplers (DESIGN.md §5).

* :class:`CategoricalIAF` — the Gumbel-max IAF: K causal conv stages sharing one Gumbel noise.
* :class:`GaussianIAF` — the ClariNet-style affine IAF in a code-embedding space (baseline).

Both sample every code of a window in K parallel passes and save as a folder (``config.json`` +
``model.safetensors``); :func:`load_student` reloads either family.
"""

from student.base import Student, StudentSample, load_student
from student.categorical import CategoricalIAF
from student.config import (
    GaussianConfig,
    LossConfig,
    StageConfig,
    StudentConfig,
    small_student,
    student_config_for,
    tiny_student,
)
from student.gaussian import GaussianIAF

__all__ = [
    "CategoricalIAF",
    "GaussianConfig",
    "GaussianIAF",
    "LossConfig",
    "StageConfig",
    "Student",
    "StudentConfig",
    "StudentSample",
    "load_student",
    "small_student",
    "student_config_for",
    "tiny_student",
]
