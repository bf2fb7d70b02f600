"""What generation returns and writes: :class:`GenerationResult` (codes, decoded audio and the
label of every window), saved as WAVs, ``codes.safetensors`` and ``labels.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from teacher.data.audio import write_wav
from teacher.generate.labels import WindowLabel
from teacher.io import atomic_write_json, save_tensors
from teacher.levels import LEVEL_NAMES, level_name


@dataclass
class GenerationResult:
    """What :class:`Jukebox` generated.

    Attributes:
        codes: level (0 = bottom) -> ``LongTensor[B, T_level]``, every complete level.
        audio: level -> ``Tensor[B, 1, T]`` decoded by that level's decoder (T samples).
        windows: level -> the :class:`WindowLabel` of every window sampled at that level.
        sample_rate: of the audio.
        info: mode, names, cleaned lyrics, dropped characters, seed, temperatures, seconds...
    """

    codes: dict[int, Tensor]
    audio: dict[int, Tensor]
    windows: dict[int, list[WindowLabel]]
    sample_rate: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return int(self.info.get("levels", len(LEVEL_NAMES)))

    @property
    def n_samples(self) -> int:
        return next(iter(self.codes.values())).shape[0]

    def labels(self, level: int) -> Tensor | None:
        """The label vectors of ``level``'s windows, ``LongTensor[n_windows, Y]`` (None if the
        prior is unlabelled or nothing was sampled there)."""
        rows = [w.label for w in self.windows.get(level, []) if w.label is not None]
        return torch.tensor(rows, dtype=torch.long) if rows else None

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write ``level{L}_{name}.wav`` per level (``level{L}_{name}_{i}.wav`` per sample when
        B > 1), ``codes.safetensors`` (``level{L}``: ``LongTensor[B, T_L]``) and
        ``labels.json`` (the run's settings and every window's label, decoded). Each file is
        written atomically; other files in ``out_dir`` are left alone. Returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        b = self.n_samples
        for level in sorted(self.audio):
            name = f"level{level}_{level_name(level, self.levels)}"
            for i in range(b):
                path = out / (f"{name}.wav" if b == 1 else f"{name}_{i}.wav")
                _atomic(
                    path, lambda tmp, x=self.audio[level][i]: write_wav(tmp, x, self.sample_rate)
                )
                written.append(path)
        codes = {f"level{level}": c for level, c in self.codes.items()}
        path = out / "codes.safetensors"
        _atomic(path, lambda tmp: save_tensors(codes, tmp))
        written.append(path)
        meta = {
            **self.info,
            "sample_rate": self.sample_rate,
            "windows": {
                level_name(level, self.levels): [w.to_dict() for w in ws]
                for level, ws in sorted(self.windows.items(), reverse=True)
            },
        }
        path = out / "labels.json"
        atomic_write_json(path, meta)
        written.append(path)
        return written


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_labels_json(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the ``labels.json`` written by :meth:`GenerationResult.save`."""
    with open(Path(out_dir) / "labels.json", encoding="utf-8") as f:
        return json.load(f)


__all__ = ["GenerationResult", "read_labels_json"]
