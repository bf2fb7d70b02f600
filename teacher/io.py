"""Safe, atomic file I/O shared by every model and trainer.

- Model folders are written into a temporary sibling and renamed into place, so a killed
  process never leaves a half-written folder where a complete one is expected.
- Weights are safetensors; nothing here unpickles (loading never executes code).
- Training checkpoints carry a ``state.json`` with their step; the latest complete one is
  found by reading those files, not by parsing folder names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces ``target`` when the block succeeds.

    On an exception the temporary folder is removed and ``target`` is left untouched.
    The swap is two renames on the same file system; an existing ``target`` is moved
    aside first and deleted only after the new folder is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{tag}"
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Save a flat dict of tensors as safetensors (made contiguous, moved to CPU).

    Tensors that share storage are cloned, since safetensors refuses aliases.
    """
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().to("cpu")
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v.contiguous()
    save_file(out, str(path))


def load_tensors(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never unpickles)."""
    return load_file(str(path), device=str(device))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# training checkpoints


def list_checkpoints(checkpoint_root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``checkpoint_root`` as ``(step, path)``, oldest first.

    A checkpoint is complete when its ``state.json`` exists (written last, atomically).
    """
    root = Path(checkpoint_root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        state = child / STATE_FILE
        if child.is_dir() and not child.name.startswith(".") and state.is_file():
            try:
                step = int(read_json(state)["step"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("ignoring unreadable checkpoint %s: %s", child, err)
                continue
            found.append((step, child))
    return sorted(found)


def latest_checkpoint(checkpoint_root: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    ckpts = list_checkpoints(checkpoint_root)
    return ckpts[-1][1] if ckpts else None


def resolve_resume(
    resume_from_checkpoint: str | None, checkpoint_root: str | os.PathLike
) -> Path | None:
    """Map ``--resume_from_checkpoint`` (``None``, ``"latest"`` or a path) to a folder.

    ``"latest"`` with no checkpoint yet means a fresh start; an explicit path that is not a
    complete checkpoint is an error.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(checkpoint_root)
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def prune_checkpoints(checkpoint_root: str | os.PathLike, keep: int | None) -> None:
    """Delete the oldest complete checkpoints so at most ``keep`` remain (None keeps all)."""
    if keep is None or keep <= 0:
        return
    ckpts = list_checkpoints(checkpoint_root)
    for _, path in ckpts[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
