"""Frozen configuration dataclasses for the teacher models, and their presets.

One config per model (nanoGPT style): the model takes it and keeps ``self.cfg``; it is saved as
``config.json`` beside ``model.safetensors`` and the model is rebuilt from it. Presets are plain
functions returning configs. ``validate()`` runs before any work starts, so a bad value is one
clear error instead of a shape mismatch deep inside a training step.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; raised before any work starts."""


@dataclass(frozen=True)
class Bandwidth:
    """Data statistics that normalise the VQ-VAE losses (Jukebox ``calculate_bandwidth``).

    ``l2`` is the variance of the samples, ``l1`` their mean absolute value and ``spec`` the
    mean Frobenius norm of an item's STFT magnitude (n_fft 2048, hop 256, window 1536).
    """

    l1: float = 1.0
    l2: float = 1.0
    spec: float = 1.0


@dataclass(frozen=True)
class VQVAEConfig:
    """The Jukebox hierarchical VQ-VAE (paper §3, ``jukebox/vqvae``).

    Level 0 is the bottom (hop 8 in the released model), the last level the top (hop 128).
    Defaults are the released 44.1 kHz model, so weights published by OpenAI load into it.
    """

    sample_rate: int = 44100
    channels: int = 1
    sample_length: int = 393216  # training crop in samples; a multiple of the top hop
    levels: int = 3
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    emb_width: int = 64
    l_bins: int = 2048
    mu: float = 0.99  # EMA decay of the codebook sums and counts
    revival_threshold: float = 1.0  # codes whose EMA count falls below are restarted
    width: int = 32
    depth: int = 4
    m_conv: float = 1.0
    dilation_growth_rate: int = 3
    dilation_cycle: int | None = None
    multipliers: tuple[int, ...] = (2, 1, 1)  # per level: scales width and depth
    reverse_decoder_dilation: bool = True
    zero_out: bool = False
    res_scale: bool = False
    # loss weights (Jukebox hparams "vqvae")
    commit: float = 0.02
    multispectral: float = 1.0
    spectral: float = 0.0
    lmix_l1: float = 0.0
    lmix_l2: float = 1.0
    lmix_linf: float = 0.02
    linf_k: int = 2048
    multispec_n_fft: tuple[int, ...] = (2048, 1024, 512)
    multispec_hop: tuple[int, ...] = (240, 120, 50)
    multispec_win: tuple[int, ...] = (1200, 600, 240)
    bandwidth: Bandwidth = field(default_factory=Bandwidth)

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Samples per code at each level (cumulative product of ``stride ** down``)."""
        hops, acc = [], 1
        for s, d in zip(self.strides_t, self.downs_t):
            acc *= s**d
            hops.append(acc)
        return tuple(hops)

    def validate(self) -> VQVAEConfig:
        """Raise :class:`ConfigError` naming the first bad field; return ``self``."""
        _check(self.levels >= 1, "levels must be >= 1")
        for name in ("downs_t", "strides_t", "multipliers"):
            _check(
                len(getattr(self, name)) == self.levels,
                f"{name} must have one entry per level ({self.levels}), got {getattr(self, name)}",
            )
        _check(all(d >= 1 for d in self.downs_t), f"downs_t must be >= 1, got {self.downs_t}")
        _check(all(s >= 2 for s in self.strides_t), f"strides_t must be >= 2, got {self.strides_t}")
        # kernel 2s with padding s/2 maps T to exactly T/s only for even strides (Jukebox's
        # assert_shape would fail otherwise)
        _check(
            all(s % 2 == 0 for s in self.strides_t), f"strides_t must be even, got {self.strides_t}"
        )
        _check(self.channels == 1, "Jukebox models are mono: channels must be 1")
        _check(self.sample_rate > 0, "sample_rate must be positive")
        top = self.hop_lengths[-1]
        _check(
            self.sample_length > 0 and self.sample_length % top == 0,
            f"sample_length ({self.sample_length}) must be a positive multiple of the top hop "
            f"length {top}",
        )
        _check(self.emb_width > 0 and self.l_bins > 1, "emb_width > 0 and l_bins > 1 required")
        _check(0.0 < self.mu < 1.0, f"mu must be in (0, 1), got {self.mu}")
        _check(self.width > 0 and self.depth > 0, "width and depth must be positive")
        _check(
            all(m >= 1 for m in self.multipliers),
            f"multipliers must be >= 1, got {self.multipliers}",
        )
        _check(
            self.m_conv > 0 and int(self.m_conv * self.width) >= 1,
            f"m_conv must give a residual width >= 1, got {self.m_conv}",
        )
        _check(self.dilation_growth_rate >= 1, "dilation_growth_rate must be >= 1")
        _check(
            self.dilation_cycle is None or self.dilation_cycle >= 1,
            f"dilation_cycle must be None or >= 1, got {self.dilation_cycle}",
        )
        _check(self.revival_threshold >= 0, "revival_threshold must be >= 0")
        for name in ("commit", "multispectral", "spectral", "lmix_l1", "lmix_l2", "lmix_linf"):
            _check(getattr(self, name) >= 0, f"loss weight {name} must be >= 0")
        bw = self.bandwidth
        _check(
            bw.l1 > 0 and bw.l2 > 0 and bw.spec > 0,
            f"bandwidth statistics must be positive, got {bw}",
        )
        _check(
            len(self.multispec_n_fft) == len(self.multispec_hop) == len(self.multispec_win),
            "multispec_n_fft, multispec_hop and multispec_win must have the same length",
        )
        _check(
            all(
                0 < h and 0 < w <= n
                for n, h, w in zip(self.multispec_n_fft, self.multispec_hop, self.multispec_win)
            ),
            "each multispectral resolution needs hop > 0 and 0 < win <= n_fft",
        )
        _check(self.linf_k > 0, "linf_k must be positive")
        return self


def jukebox_vqvae() -> VQVAEConfig:
    """The released 44.1 kHz VQ-VAE (hops 8/32/128, 2048 bins, width 32, depth 4, ×(2,1,1))."""
    return VQVAEConfig()


def small_vqvae(sample_rate: int = 22050) -> VQVAEConfig:
    """A CPU-trainable VQ-VAE with the released topology (hops 8/32/128), for the demo."""
    return VQVAEConfig(
        sample_rate=sample_rate,
        sample_length=128 * 128,
        l_bins=256,
        width=32,
        depth=3,
        multipliers=(1, 1, 1),
        linf_k=512,
    )


def tiny_vqvae(sample_rate: int = 8000) -> VQVAEConfig:
    """A seconds-to-train VQ-VAE for tests: hops 8/32/128 at width 8."""
    return VQVAEConfig(
        sample_rate=sample_rate,
        sample_length=128 * 16,
        l_bins=32,
        emb_width=16,
        width=8,
        depth=2,
        multipliers=(2, 1, 1),
        linf_k=64,
        multispec_n_fft=(256, 128, 64),
        multispec_hop=(32, 16, 8),
        multispec_win=(128, 64, 32),
    )


VQVAE_PRESETS = {"jukebox": jukebox_vqvae, "small": small_vqvae, "tiny": tiny_vqvae}


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


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


def load_config(cls: type[T], path: str) -> T:
    """Read a config written by :func:`save_config`; checks the class tag."""
    with open(path) as f:
        data = json.load(f)
    tag = data.pop("_class", cls.__name__)
    if tag != cls.__name__:
        raise ConfigError(f"{path} holds a {tag}, expected a {cls.__name__}")
    return config_from_dict(cls, data)
