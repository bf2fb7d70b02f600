"""Exact generation of whole songs (Jukebox paper §4.3): the KV-cached per-window sampler and the
level samplers (:mod:`~teacher.generate.sampler`), windows and per-level settings
(:mod:`~teacher.generate.windows`), the label of every window (:mod:`~teacher.generate.labels`),
results (:mod:`~teacher.generate.result`) and the song loop over levels and windows,
:class:`Jukebox` (:mod:`~teacher.generate.jukebox`)."""

from teacher.generate.jukebox import Jukebox
from teacher.generate.result import GenerationResult

__all__ = ["GenerationResult", "Jukebox"]
