"""Configuration plumbing shared by every model config: errors, checks, JSON round trips.

One config per model (nanoGPT style): the model takes it and keeps ``self.cfg``; it is saved as
``config.json`` beside ``model.safetensors`` and the model is rebuilt from it. Presets are plain
functions returning configs. ``validate()`` runs before any work starts, so a bad value is one
clear error instead of a shape mismatch deep inside a training step.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; raised before any work starts."""


def check(ok: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``ok``."""
    if not ok:
        raise ConfigError(msg)


def check_resnet(width: int, m_conv: float, growth: int, cycle: int | None, what: str = "") -> None:
    """Validate the settings of a dilated residual stack (Jukebox ``Resnet1D``): a residual
    width ``int(m_conv · width) >= 1``, dilation growth >= 1 and cycle None or >= 1."""
    check(
        m_conv > 0 and int(m_conv * width) >= 1,
        f"{what}m_conv must give a residual width >= 1, got {m_conv}",
    )
    check(growth >= 1, f"{what}dilation_growth_rate must be >= 1")
    check(cycle is None or cycle >= 1, f"{what}dilation_cycle must be None or >= 1, got {cycle}")


def check_stft_resolutions(
    n_fft: tuple[int, ...], hop: tuple[int, ...], win: tuple[int, ...], what: str
) -> None:
    """Validate STFT resolutions given as three parallel tuples: the same (>= 1) length, and
    each resolution with ``hop > 0`` and ``0 < win <= n_fft``."""
    check(
        len(n_fft) == len(hop) == len(win) >= 1,
        f"{what}: n_fft, hop and window sizes need the same (>= 1) length",
    )
    check(
        all(0 < h and 0 < w <= n for n, h, w in zip(n_fft, hop, win)),
        f"{what}: each resolution needs hop > 0 and 0 < win <= n_fft",
    )


# ---------------------------------------------------------------------------------------------
# (de)serialisation shared by every config dataclass


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild ``cls`` from :func:`config_to_dict` output, restoring tuples and nested configs.

    Unknown keys are an error (a config written by a newer version should not load silently).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    hints = _resolved_types(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value)
    return cls(**kwargs)


def _resolved_types(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _coerce(tp: Any, value: Any) -> Any:
    import types
    import typing

    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def save_config(cfg: Any, path: str) -> None:
    """Write ``cfg`` as JSON with a ``"_class"`` tag (the dataclass name)."""
    data = {"_class": type(cfg).__name__, **config_to_dict(cfg)}
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def read_json_object(path: str | os.PathLike, error: type[ConfigError] = ConfigError) -> dict:
    """The JSON object in ``path``, or ``error`` with one line naming the file: missing,
    unreadable, not valid JSON (with line and column) or not an object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: unreadable ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    path: str | os.PathLike,
    error: type[ConfigError] = ConfigError,
    kind: str | None = None,
) -> T:
    """Read a config written by :func:`save_config`; checks the class tag.

    Every problem is one ``error`` naming the file (:func:`read_json_object`; the config of
    another class; unknown or mistyped fields). ``kind`` (e.g. ``"VQ-VAE"``) says in those
    messages what the file should configure.
    """
    data = read_json_object(path, error)
    tag = data.pop("_class", cls.__name__)
    what = f"{kind} ({cls.__name__})" if kind else cls.__name__
    if tag != cls.__name__:
        raise error(f"{path} holds a {tag}, expected a {what}")
    try:
        return config_from_dict(cls, data)
    except (ConfigError, TypeError, ValueError) as err:
        raise error(f"{path}: invalid {what}: {err}") from None
