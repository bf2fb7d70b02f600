r"""Reading published checkpoint files safely and without holding them in memory.

:func:`load_checkpoint` ``torch.load``\ s a file under ``weights_only`` rules (plus numpy
scalars, which OpenAI's ``hps`` hold); anything else in the pickle is refused with a
:class:`ConvertError` naming it. :class:`TensorSource` gives the names, shapes and dtypes of a
file's tensors at once and their data one tensor at a time, for torch zip checkpoints
(memory-mapped), legacy pre-zip ones (read lazily by file offset) and safetensors files (read
by header offset).

Memory: a released prior is up to ~10 GB (fp16) on disk, so nothing here holds a whole
checkpoint, let alone two. Zip checkpoints (``torch.save`` since torch 1.6, transformers'
``.bin``) are memory-mapped (``torch.load(mmap=True)``); safetensors inputs are read tensor by
tensor from their header offsets. The output is streamed: each safetensors file gets its
header first and then one tensor at a time (``teacher.io.write_safetensors_streaming``), and
the mapped pages a tensor came from are dropped from the resident set once it is copied
(``madvise(MADV_DONTNEED)``: they are clean, a later read faults them in again from the
file), so the peak is about one tensor plus the interpreter. Legacy (pre-zip) checkpoints
cannot be mapped; they are read lazily too (:class:`_LegacySource`: the pickle is unpickled
onto the meta device, the data read by file offset). ``benchmarks/bench_convert.py`` measures
these and the two whole-file fallbacks.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import mmap
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from teacher.io import SAFETENSORS_DTYPES

log = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_MADV_DONTNEED = 4  # Linux and macOS
#: set to False to keep mapped checkpoint pages resident (the benchmark compares both)
RELEASE_PAGES = True
#: set to False to read legacy checkpoints whole (the benchmark compares both)
LAZY_LEGACY = True


class ConvertError(ValueError):
    """A checkpoint cannot be converted; the message names the file and, where one is at
    fault, the tensor. Raised before anything is written where possible; the output folder is
    never left half-written."""


def _libc() -> Any:
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to call
        return None


_LIBC = _libc()


def _release_pages(t: Tensor) -> None:
    """Drop the pages of a memory-mapped tensor from this process's resident set.

    Only for tensors of a read-only file mapping (never written, so nothing is lost): the
    range is rounded inwards to whole pages of this storage, never touching other memory.
    """
    if not RELEASE_PAGES or _LIBC is None:
        return
    storage = t.untyped_storage()
    ptr, n = storage.data_ptr(), storage.nbytes()
    page = mmap.PAGESIZE
    start, end = -(-ptr // page) * page, (ptr + n) // page * page
    if end > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _numpy_safe_globals() -> list[Any]:
    """What ``weights_only`` needs for numpy scalars in a checkpoint's ``hps`` (OpenAI saved
    e.g. ``sample_length`` as ``numpy.int64``): the scalar and dtype constructors, which
    rebuild values from bytes and run no code. numpy 1 pickles name ``numpy.core``."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    allowed: list[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    for code in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"):
        cls = type(np.dtype(code))
        allowed.append((cls, f"numpy.dtypes.{cls.__name__}"))
    return allowed


def _is_zip_checkpoint(path: Path) -> bool:
    """True for torch's zip format; ``ConvertError`` for a zip that is cut short."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            raise ConvertError(
                f"{path}: truncated or corrupt checkpoint (a zip archive without its central "
                "directory; download it again)"
            )
        return True
    return False


def _pickle_globals(stream: Any) -> Iterator[str]:
    """``module.name`` of every global the pickles in ``stream`` reference, read from their
    opcodes (:mod:`pickletools`: nothing is executed). A protocol-4 ``STACK_GLOBAL`` takes its
    names from the strings pushed just before it (directly or from the memo)."""
    import pickletools

    for _ in range(8):  # a legacy torch file is several pickles, then raw data
        strings: list[str | None] = []
        memo: dict[int, str | None] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    yield str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2 and None not in strings[-2:]:
                    yield f"{strings[-2]}.{strings[-1]}"
                elif isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(int(arg)))
        except Exception:  # the raw data after the pickles, or a damaged stream
            return


def _refused_global(path: Path, message: str) -> str | None:
    """The global that made ``weights_only`` refuse ``path``: from torch's ``message``, else the
    first global of the pickle that is neither torch's nor one ``weights_only`` allows."""
    if m := re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message):
        return m.group(1)
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - another torch
        allowed = set()
    allowed.update(name for g in _numpy_safe_globals() if isinstance(g, tuple) for name in g[1:])
    try:
        with contextlib.ExitStack() as stack:
            if zipfile.is_zipfile(path):
                zf = stack.enter_context(zipfile.ZipFile(path))
                pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if pkl is None:
                    return None
                stream = stack.enter_context(zf.open(pkl))
            else:
                stream = stack.enter_context(open(path, "rb"))
            for name in _pickle_globals(stream):
                if name not in allowed and not name.startswith("torch."):
                    return name
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def _unpickling_reason(message: str) -> str:
    """Why torch's unpickler failed, without its advice to load with ``weights_only=False``."""
    keep = [
        p.strip()
        for p in re.split(r"\n\s*\n", message)
        if p.strip() and "weights_only" not in p and "Check the documentation" not in p
    ]
    text = " ".join(keep).removeprefix("WeightsUnpickler error:").strip()
    return text or "unsupported pickle content"


@contextlib.contextmanager
def _unpickling(path: Path) -> Iterator[None]:
    """Unpickle under ``weights_only`` rules (+ numpy scalars); failures become one
    :class:`ConvertError` naming the file and, for a pickle that calls code, the global it
    calls (never advising to load it unsafely)."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), warnings.catch_warnings():
            # torch warns about pickle protocols it does not expect; the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield
    except (ConvertError, _NotLazy):
        raise
    except pickle.UnpicklingError as err:
        text = str(err)
        if name := _refused_global(path, text):
            raise ConvertError(
                f"{path}: refused for safety: its pickle calls {name}, which could run code "
                "(only tensors and plain data are loaded; a checkpoint of weights never needs it)"
            ) from None
        raise ConvertError(
            f"{path}: not a PyTorch checkpoint (unpickling failed: {_unpickling_reason(text)})"
        ) from None
    except Exception as err:  # torch raises RuntimeError/EOFError/OSError/... on bad files
        if path.is_file() and path.stat().st_size == 0:
            raise ConvertError(f"{path}: empty file (0 bytes)") from None
        raise ConvertError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): "
            f"{str(err) or type(err).__name__}"
        ) from err


def load_checkpoint(path: str | os.PathLike) -> tuple[Any, bool]:
    """``torch.load`` a checkpoint without running any of its code: ``weights_only=True``,
    memory-mapped when it is in the zip format. Returns ``(object, mapped)``.

    Legacy (pre-torch-1.6) files cannot be mapped and are read into memory here (the
    converter reads them lazily instead, see :class:`_LegacySource`). Numpy scalars are
    allowed (see :func:`_numpy_safe_globals`); any other class in the pickle is refused with a
    :class:`ConvertError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    mapped = _is_zip_checkpoint(path)
    with _unpickling(path):
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    return obj, mapped


def _state_dict_of(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a loaded checkpoint: its ``"model"`` entry (OpenAI) or the object itself
    (a bare state dict), with DDP's ``module.`` prefix removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            top = sorted(map(str, obj))[:6]
            raise ConvertError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor (expected a "
                f"state dict, or a dict with one under 'model'; keys: {top})"
            )
        out[str(key).removeprefix("module.")] = value
    return out


class TensorSource:
    """Named tensors of one checkpoint file: shapes and dtypes at once, data on :meth:`read`.

    ``specs`` maps each name to ``(shape, dtype)``. :meth:`read` returns a contiguous CPU
    tensor the caller owns.
    """

    def __init__(self, path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.path = path
        self.specs = specs

    @staticmethod
    def open(path: str | os.PathLike) -> TensorSource:
        """A source for a ``.safetensors`` file or a torch checkpoint (anything else)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            return _SafetensorsSource(path)
        if not path.is_file():
            raise ConvertError(f"{path}: no such file")
        if _is_zip_checkpoint(path):
            return _TorchSource(path)
        try:
            if not LAZY_LEGACY:
                raise _NotLazy("lazy legacy reading is off")
            return _LegacySource(path)
        except _NotLazy as why:  # a layout the lazy reader does not cover: read it whole
            log.warning("%s: %s; reading the whole file into memory", path, why)
            return _TorchSource(path)

    def read(self, name: str) -> Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Forget loaded data (a later :meth:`read` loads it again)."""


class _TorchSource(TensorSource):
    def __init__(self, path: Path):
        obj, self.mapped = load_checkpoint(path)
        tensors = _state_dict_of(obj, path)
        specs = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
        super().__init__(path, specs)
        # a mapped file costs no memory until read; a legacy one is dropped until written
        self._tensors: dict[str, Tensor] | None = tensors if self.mapped else None

    def read(self, name: str) -> Tensor:
        if self._tensors is None:
            self._tensors = _state_dict_of(load_checkpoint(self.path)[0], self.path)
        t = self._tensors[name]
        if not self.mapped:
            return t.contiguous()
        out = torch.empty(t.shape, dtype=t.dtype)
        out.copy_(t)
        _release_pages(t)
        return out

    def close(self) -> None:
        self._tensors = None


class _NotLazy(Exception):
    """A legacy checkpoint the lazy reader does not handle (read it whole instead)."""


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


class _LegacySource(TensorSource):
    """A pre-zip (torch < 1.6) ``torch.save`` file, read lazily.

    The legacy format is: pickles of the magic number, protocol and system info; the object
    pickle, whose tensors name their storages by key (persistent ids); a pickle of the storage
    keys in file order; then per storage an int64 element count and its raw little-endian
    bytes. The object pickle is read with the ``weights_only`` unpickler, storages built on
    the meta device (no memory), and each storage's byte offset found by walking the records;
    :meth:`read` then reads one tensor's bytes. OpenAI's 2020 checkpoints predate torch 1.6.
    """

    def __init__(self, path: Path):
        from torch import _weights_only_unpickler as wou

        roots: dict[str, Any] = {}
        sizes: dict[str, tuple[int, int]] = {}  # storage key -> (elements, bytes per element)
        key_of: dict[int, str] = {}  # meta StorageImpl address -> storage key

        def persistent_load(saved_id: Any) -> Any:
            if not (isinstance(saved_id, tuple) and len(saved_id) == 6):
                raise _NotLazy(f"unexpected persistent id {saved_id!r}")
            typename, storage_type, key, _location, numel, view = saved_id
            if typename not in ("storage", b"storage") or view is not None:
                raise _NotLazy("storage views")
            if key not in roots:
                dtype = storage_type.dtype
                sizes[key] = (int(numel), dtype.itemsize)
                st = torch.UntypedStorage(int(numel) * dtype.itemsize, device="meta")
                roots[key] = torch.storage.TypedStorage(
                    wrap_storage=st, dtype=dtype, _internal=True
                )
                key_of[st._cdata] = key
            return roots[key]

        size = path.stat().st_size
        with open(path, "rb") as f, _unpickling(path):
            if wou.load(f) != _LEGACY_MAGIC:
                raise ConvertError(f"{path}: not a PyTorch checkpoint (bad magic number)")
            if wou.load(f) != _LEGACY_PROTOCOL:
                raise ConvertError(f"{path}: unknown legacy checkpoint protocol")
            if not wou.load(f).get("little_endian", True):
                raise _NotLazy("a big-endian file")
            unpickler = wou.Unpickler(f)
            unpickler.persistent_load = persistent_load
            obj = unpickler.load()
            storage_keys = wou.load(f)
            offset = f.tell()
        tensors = _state_dict_of(obj, path)
        self._meta = tensors
        self._key = {name: key_of[t.untyped_storage()._cdata] for name, t in tensors.items()}
        first_user = {}
        for name, key in self._key.items():
            first_user.setdefault(key, name)
        self._data: dict[str, int] = {}  # storage key -> file offset of its first byte
        with open(path, "rb") as f:
            for key in storage_keys:
                numel, itemsize = sizes[key]
                nbytes = numel * itemsize
                f.seek(offset)
                head = f.read(8)
                if len(head) < 8 or offset + 8 + nbytes > size:
                    what = f"tensor {first_user[key]!r}" if key in first_user else "a storage"
                    raise ConvertError(f"{path}: truncated: the data of {what} is cut off")
                if struct.unpack("<q", head)[0] != numel:
                    raise ConvertError(f"{path}: corrupt: storage {key} has the wrong length")
                self._data[key] = offset + 8
                offset += 8 + nbytes
        super().__init__(path, {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()})

    def read(self, name: str) -> Tensor:
        t = self._meta[name]
        if t.numel() == 0:
            return torch.empty(t.shape, dtype=t.dtype)
        extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
        buf = torch.empty(extent, dtype=t.dtype)
        with open(self.path, "rb") as f:
            f.seek(self._data[self._key[name]] + t.storage_offset() * t.dtype.itemsize)
            f.readinto(buf.view(torch.uint8).numpy())
        return buf.as_strided(t.shape, t.stride()).contiguous()


_ST_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}


class _SafetensorsSource(TensorSource):
    """Reads a safetensors file by its header (8-byte length, JSON of dtype/shape/offsets),
    one tensor at a time with plain file reads: nothing is mapped, so nothing lingers."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ConvertError(f"{path}: no such file")
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    raise ValueError(f"header length {n} exceeds the file")
                header = json.loads(f.read(n))
        except (ValueError, struct.error, UnicodeDecodeError) as err:
            raise ConvertError(f"{path}: not a safetensors file: {err}") from err
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._offsets: dict[str, tuple[int, int]] = {}
        specs = {}
        for name, info in header.items():
            try:
                dtype, shape = _ST_DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"])
                begin, end = (int(v) for v in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise ConvertError(f"{path}: tensor {name!r}: bad header entry {info!r}") from err
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise ConvertError(f"{path}: tensor {name!r}: {end - begin} bytes for {shape}")
            if self._base + end > size:
                raise ConvertError(
                    f"{path}: truncated: tensor {name!r} ends at byte {self._base + end} of a "
                    f"{size}-byte file"
                )
            specs[name] = (shape, dtype)
            self._offsets[name] = (begin, end)
        super().__init__(path, specs)

    def read(self, name: str) -> Tensor:
        shape, dtype = self.specs[name]
        begin, end = self._offsets[name]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._base + begin)
            if f.readinto(buf.numpy()) != end - begin:
                raise ConvertError(f"{self.path}: truncated while reading tensor {name!r}")
        return buf.view(dtype).reshape(shape)
