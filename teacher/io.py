"""Safe, atomic file I/O shared by every model and trainer.

- Model folders are written into a temporary sibling and renamed into place, so a killed
  process never leaves a half-written folder where a complete one is expected.
- Weights are safetensors; nothing here unpickles (loading never executes code).
- Training checkpoints carry a ``state.json`` with their step; the latest complete one is
  found by reading those files, not by parsing folder names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from teacher.config import ConfigError, read_json_object

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
    """Load a safetensors file (never unpickles); a truncated or foreign file is a
    ``ValueError`` naming it."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


# ---------------------------------------------------------------------------------------------
# model weights in one or several safetensors files

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


def shard_file_name(index: int, count: int) -> str:
    """Name of shard ``index`` (0-based) of ``count``: ``model-00001-of-00003.safetensors``."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Split tensor names (in the given order) into shards of at most ``max_shard_bytes``.

    A tensor larger than the limit gets a shard of its own.
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[list[str]] = []
    used = 0
    for name, size in sizes.items():
        if not shards or (used + size > max_shard_bytes and shards[-1]):
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


#: torch dtype -> safetensors' dtype code
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

TensorSpec = tuple[tuple[int, ...], torch.dtype]


def _nbytes(spec: TensorSpec) -> int:
    shape, dtype = spec
    return math.prod(shape) * dtype.itemsize


def write_safetensors_streaming(
    path: str | os.PathLike,
    specs: Mapping[str, TensorSpec],
    read: Callable[[str], torch.Tensor],
) -> None:
    """Write a safetensors file one tensor at a time: only the tensor being written is in
    memory (``safetensors.torch.save_file`` needs them all at once).

    ``specs`` gives each tensor's ``(shape, dtype)`` up front (the header comes first and
    holds every offset); ``read(name)`` is then called once per tensor, in ``specs`` order,
    and must return exactly that shape and dtype. The format (an 8-byte little-endian header
    length, a JSON header padded with spaces to 8 bytes, then the raw little-endian data) is
    what ``safetensors`` reads; the tests load these files with it.
    """
    if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
        raise RuntimeError("streaming safetensors writes need a little-endian machine")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, spec in specs.items():
        shape, dtype = spec
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {dtype} has no safetensors code")
        n = _nbytes(spec)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, (shape, dtype) in specs.items():
            t = read(name)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(
                    f"tensor {name!r}: read {tuple(t.shape)} {t.dtype}, declared {shape} {dtype}"
                )
            f.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
            del t


def save_tensors_sharded(
    folder: str | os.PathLike,
    specs: Mapping[str, TensorSpec],
    read: Callable[[str], torch.Tensor],
    max_shard_bytes: int,
) -> list[str]:
    """Write tensors into ``folder`` streaming, one tensor in memory at a time.

    ``specs`` maps each name to its ``(shape, dtype)``, known before any tensor is read (e.g.
    from a memory-mapped checkpoint); ``read(name)`` returns the tensor when it is written
    (see :func:`write_safetensors_streaming`). Up to ``max_shard_bytes`` this is one
    ``model.safetensors``; beyond, :func:`shard_file_name` files plus
    ``model.safetensors.index.json`` (transformers' layout: ``{"metadata": {"total_size"},
    "weight_map": {name: file}}``). Returns the file names written.
    """
    folder = Path(folder)
    shards = plan_shards({n: _nbytes(s) for n, s in specs.items()}, max_shard_bytes)
    if len(shards) <= 1:
        names = shards[0] if shards else []
        write_safetensors_streaming(folder / WEIGHTS_FILE, {n: specs[n] for n in names}, read)
        return [WEIGHTS_FILE]
    files, weight_map = [], {}
    for i, names in enumerate(shards):
        file = shard_file_name(i, len(shards))
        write_safetensors_streaming(folder / file, {n: specs[n] for n in names}, read)
        weight_map.update({n: file for n in names})
        files.append(file)
    total = int(sum(_nbytes(s) for s in specs.values()))
    atomic_write_json(
        folder / WEIGHTS_INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return [*files, WEIGHTS_INDEX_FILE]


def load_state_dict_from_folder(
    folder: str | os.PathLike, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """All tensors of a model folder: ``model.safetensors``, or the shards listed in
    ``model.safetensors.index.json`` (written by :func:`save_tensors_sharded`).

    Raises ``FileNotFoundError`` when the folder has neither or a listed shard is missing, and
    ``ValueError`` when the shards do not hold exactly the tensors the index lists.
    """
    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_FILE
    if not index.is_file():
        single = folder / WEIGHTS_FILE
        if not single.is_file():
            raise FileNotFoundError(
                f"{folder} holds neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}"
            )
        return load_tensors(single, device=device)
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: no weight_map")
    out: dict[str, torch.Tensor] = {}
    for file in sorted(set(weight_map.values())):
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in {index} is missing")
        shard = load_tensors(path, device=device)
        listed = {n for n, f in weight_map.items() if f == file}
        if set(shard) != listed:
            extra = sorted(set(shard) ^ listed)[:3]
            raise ValueError(f"{path} does not hold the tensors {index} lists for it: {extra}")
        out.update(shard)
    return out


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# loading model folders: one clear error per problem

CONFIG_FILE = "config.json"


class ModelFolderError(ConfigError):
    """A model folder cannot be loaded. The message is one line naming the folder (or file)
    and the problem: missing, unreadable or truncated files, bad JSON, another kind of model,
    tensors missing, unexpected or of the wrong shape."""


def read_model_config(folder: str | os.PathLike, cls: type, kind: str) -> Any:
    """The validated config dataclass ``cls`` of the model folder ``folder`` (a ``kind``, e.g.
    ``"VQ-VAE"``), or :class:`ModelFolderError`: no such folder, no ``config.json``, bad JSON
    (line, column), the config of another kind of model, unknown or invalid fields."""
    from teacher.config import load_config

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such {kind} folder")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no {CONFIG_FILE} (not a {kind} folder?)")
    cfg = load_config(cls, path, ModelFolderError, kind)
    try:
        return cfg.validate()
    except (ConfigError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{path}: invalid {kind} config: {err}") from None


def _listed(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def load_model_weights(
    model: torch.nn.Module,
    folder: str | os.PathLike,
    kind: str,
    device: str | torch.device = "cpu",
    assign: bool = False,
) -> None:
    """Load a model folder's weights (one file or shards) into ``model``, strictly, or raise
    :class:`ModelFolderError`: weights missing, unreadable or truncated, or tensors missing,
    unexpected or misshaped for this ``kind`` (the first few by name and a count). ``model``
    may live on the meta device (``assign=True`` then adopts the loaded tensors)."""
    from safetensors import SafetensorError

    folder = Path(folder)
    try:
        state = load_state_dict_from_folder(folder, device=device)
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        # missing, truncated or unreadable files; the messages name the file when they can
        text = str(err)
        raise ModelFolderError(
            text if str(folder) in text else f"{folder}: unreadable weights ({text})"
        ) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {list(state[k].shape)} (needs {list(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = [
        f"{len(names)} {what}: {_listed(names)}"
        for what, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("misshaped", misshaped),
        )
        if names
    ]
    if problems:
        raise ModelFolderError(
            f"{folder}: the weights do not fit this {kind}: {'; '.join(problems)}"
        )
    model.load_state_dict(state, strict=True, assign=assign)


def model_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 (hex, 16 chars) of a model folder's ``config.json`` and weight files (one
    ``model.safetensors``, or the shards and their ``model.safetensors.index.json``): what a
    prior's ``vqvae.json``, a student's ``teacher.json`` and the code cache record of the model
    they were made with."""
    folder = Path(folder)
    files = [folder / "config.json"] + sorted(folder.glob("*.safetensors"))
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        files.append(index)
    if len(files) == 1:
        files.append(folder / WEIGHTS_FILE)
    h = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a model folder (no {path.name})")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


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
