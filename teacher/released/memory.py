"""What the released Jukebox models need on a GPU: parameters, weight memory and KV cache.

Counted on the meta device from the released configs (:mod:`teacher.presets`), so nothing is
allocated; ``python -m teacher.presets`` (or this module) prints the README's table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from teacher.levels import LEVEL_NAMES
from teacher.presets import MODELS, model_configs
from teacher.prior.config import PriorConfig
from teacher.vqvae.config import VQVAEConfig

__all__ = ["MemoryRow", "format_memory_table", "main", "memory_table", "parameter_count"]


def _meta_prior(cfg: PriorConfig) -> torch.nn.Module:
    from teacher.prior.model import Prior

    with torch.device("meta"):
        return Prior(cfg)


def parameter_count(cfg: PriorConfig | VQVAEConfig) -> int:
    """Distinct parameters of the model built from ``cfg`` (tied weights counted once), built on
    the meta device so nothing is allocated."""
    if isinstance(cfg, VQVAEConfig):
        from teacher.vqvae import VQVAE

        with torch.device("meta"):
            model = VQVAE(cfg)
    else:
        model = _meta_prior(cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() skips shared tensors


@dataclass(frozen=True)
class MemoryRow:
    """GPU memory of one model part (bytes; one sample).

    Attributes:
        part: ``"vqvae"``, ``"bottom"``, ``"middle"`` or ``"top"``.
        params: distinct parameters.
        weights_fp32, weights_fp16: parameter memory.
        kv_fp16: our preallocated KV cache at ``n_ctx`` for one sample in fp16: each layer keeps
            only what its attention kind reads (row layers one block, previous-row two, column
            and dense the window; ``teacher/prior/attention.py``), plus the lyric encoder's.
        kv_full_fp16: the 2020 code's cache, which keeps every layer's keys and values for the
            whole window (its ``torch.cat`` growth also copies them every step).
    """

    part: str
    params: int
    weights_fp32: int
    weights_fp16: int
    kv_fp16: int = 0
    kv_full_fp16: int = 0


def _kv_bytes(model: torch.nn.Module, cfg: PriorConfig) -> tuple[int, int]:
    """(ours, full-window) fp16 KV-cache bytes of one sample, from meta-device caches."""
    half = torch.finfo(torch.float16).bits // 8
    tr = model.prior.transformer
    ours = tr.new_cache(1, device="meta", dtype=torch.float16).nbytes()
    full = 2 * tr.cfg.depth * tr.cfg.n_ctx * tr.cfg.n_state * half
    if cfg.lyrics is not None and cfg.lyrics.style == "encoder":
        enc = model.prime_prior.transformer
        ours += enc.new_cache(1, device="meta", dtype=torch.float16).nbytes()
        full += 2 * enc.cfg.depth * enc.cfg.n_ctx * enc.cfg.n_state * half
    return int(ours), int(full)


def memory_table(name: str) -> list[MemoryRow]:
    """Per part of a released model: parameters, weight memory, KV cache (see :class:`MemoryRow`)."""
    cfgs = model_configs(name)
    rows = [
        MemoryRow(
            "vqvae",
            n := parameter_count(cfgs.vqvae),
            4 * n,
            2 * n,
        )
    ]
    for level, cfg in enumerate(cfgs.priors):
        model = _meta_prior(cfg)
        n = sum(p.numel() for p in model.parameters())
        kv, full = _kv_bytes(model, cfg)
        rows.append(MemoryRow(LEVEL_NAMES[level], n, 4 * n, 2 * n, kv, full))
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def format_memory_table(names: tuple[str, ...] = tuple(sorted(MODELS))) -> str:
    """A markdown table of :func:`memory_table` for ``names`` (default: every released model;
    GiB; upsamplers and VQ-VAE are shared, so they appear once)."""
    lines = [
        "| model part | parameters | fp32 weights GiB | fp16 weights GiB | "
        "KV cache fp16 GiB/sample (ours) | KV cache fp16 GiB/sample (full window) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    seen: set[str] = set()
    for name in names:
        for row in memory_table(name):
            label = f"{name} top prior" if row.part == "top" else f"{row.part} (shared)"
            if label in seen:
                continue
            seen.add(label)
            kv = _gib(row.kv_fp16) if row.part != "vqvae" else "-"
            full = _gib(row.kv_full_fp16) if row.part != "vqvae" else "-"
            lines.append(
                f"| {label} | {row.params / 1e6:,.1f} M | {_gib(row.weights_fp32)} | "
                f"{_gib(row.weights_fp16)} | {kv} | {full} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Print :func:`format_memory_table` (``python -m teacher.released.memory``)."""
    sys.stdout.write(format_memory_table() + "\n")


if __name__ == "__main__":
    main()
