"""The report's figures, each a PNG (bytes): timing bars, the quality-vs-speed Pareto plot,
log-mel spectrograms, the lyric-to-music attention heat map and the embedding map.

matplotlib's object API on the Agg canvas (no pyplot, no global backend switch); numbers are
printed with :func:`eval.tables.fmt`, as in the tables. :func:`eval.report.write_report` puts
them in the report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eval.results import AttentionAlignment, EmbeddingMap
from eval.tables import fmt, get, stage_order

_MODE_COLORS = {
    "exact": "#1f77b4",
    "accelerated": "#d62728",
    "hybrid": "#9467bd",
    "speculative": "#2ca02c",
}
_STAGE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # no "Software" text chunk: it carries matplotlib's URL, and the page holds no URL at all
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def timing_figure(metrics: Mapping[str, Any]) -> bytes | None:
    """Horizontal bars: left, each mode's end-to-end seconds stacked by stage; right, each
    upsampling level's samplers (wall seconds over all clips)."""
    e2e = metrics.get("end_to_end", {}).get("modes", {})
    ups = metrics.get("upsampling", {})
    if not e2e and not ups:
        return None
    fig = _figure(11, 0.6 + 0.45 * max(len(e2e), sum(len(e["samplers"]) for e in ups.values()), 3))
    ax1, ax2 = fig.subplots(1, 2)
    if e2e:
        modes = list(e2e)
        stages = sorted({s for m in e2e.values() for s in m["stages"]}, key=stage_order)
        left = np.zeros(len(modes))
        for i, s in enumerate(stages):
            w = np.array([e2e[m]["stages"].get(s, 0.0) for m in modes])
            ax1.barh(modes, w, left=left, label=s, color=_STAGE_COLORS[i % len(_STAGE_COLORS)])
            left += w
        for y, total in enumerate(left):
            ax1.text(total, y, f" {fmt(total, 3)} s", va="center", fontsize=8)
        ax1.invert_yaxis()
        ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="stage")
        ax1.set_xlabel("wall seconds (one song, by stage)")
        ax1.set_title("end to end")
        ax1.margins(x=0.2)
    else:
        ax1.set_axis_off()
    labels, values, colors = [], [], []
    for level, entry in ups.items():
        for name, m in entry["samplers"].items():
            labels.append(f"{level}: {name}")
            values.append(m["speed"]["wall_s"])
            colors.append(
                {"exact": "#1f77b4", "student": "#d62728", "speculative": "#2ca02c"}.get(
                    name, "#7f7f7f"
                )
            )
    if labels:
        ax2.barh(labels, values, color=colors)
        for y, v in enumerate(values):
            ax2.text(v, y, f" {fmt(v, 3)} s", va="center", fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xlabel("wall seconds (all clips, sampler only)")
        ax2.set_title("per level, true upper codes")
        ax2.margins(x=0.2)
    else:
        ax2.set_axis_off()
    return _png(fig)


def pareto_figure(metrics: Mapping[str, Any]) -> bytes | None:
    """Quality (MR-STFT, lower is better) against upsampling wall seconds (log) per mode, the
    Pareto front of the modes, and the ceiling and floor as horizontal lines."""
    modes = metrics.get("modes", {})
    if not modes:
        return None
    bounds = metrics.get("bounds", {})
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    pts = []
    for mode, m in modes.items():
        x, y = max(m["speed"]["wall_s"], 1e-9), m["mrstft"]
        pts.append((x, y))
        ax.scatter([x], [y], s=60, color=_MODE_COLORS.get(mode, "#7f7f7f"), zorder=3)
        label = mode + (f" ({fmt(m['speedup'], 3)}x)" if "speedup" in m else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    front = []
    for x, y in sorted(pts):
        if not front or y < front[-1][1]:
            front.append((x, y))
    if len(front) > 1:
        ax.plot(*zip(*front), ls=":", color="#555555", zorder=2, label="Pareto front")
    for side, color in (("ceiling", "#2ca02c"), ("floor", "#d62728")):
        v = get(bounds, side, "mrstft")
        if v is not None:
            what = "true codes decoded" if side == "ceiling" else "random codes decoded"
            ax.axhline(v, ls="--", color=color, label=f"{side}: {what} ({fmt(v, 3)})")
    ax.set_xscale("log")
    ax.set_xlabel("upsampling wall seconds, all clips (log)")
    ax.set_ylabel(f"MR-STFT vs ground truth ({bounds.get('level', 'bottom')}; lower is better)")
    ax.set_title("quality vs speed")
    ax.margins(x=0.15, y=0.12)
    ax.legend(fontsize=8)
    return _png(fig)


def _log_mel(x: np.ndarray, sr: int) -> np.ndarray:
    import torch

    from eval.metrics import log_mel

    n_fft = 2 ** max(6, round(math.log2(sr * 0.046)))  # ~46 ms: 2048 at 44.1 kHz, 512 at 8 kHz
    n_fft = min(n_fft, 2 ** int(math.log2(max(len(x), 64))))
    n_mels = min(80, n_fft // 8)
    return log_mel(torch.from_numpy(np.ascontiguousarray(x))[None], sr, n_mels, n_fft, n_fft // 4)[
        0
    ].numpy()


def spectrogram_figure(
    audio: Mapping[str, tuple[int, np.ndarray]], names: Sequence[str]
) -> bytes | None:
    """Log-mel spectrograms of ``names`` (one row each, one colour scale)."""
    names = [n for n in names if n in audio]
    if not names:
        return None
    specs = [(n, *audio[n]) for n in names]
    mels = [_log_mel(x, sr) for _, sr, x in specs]
    vmax = max(float(m.max()) for m in mels)
    vmin = vmax - 80 * math.log(10) / 10  # an 80 dB range in natural-log power
    fig = _figure(9, 1.5 * len(names) + 0.4)
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
    im = None
    for ax, (name, sr, x), mel in zip(axes, specs, mels):
        dur = len(x) / sr
        im = ax.imshow(
            mel,
            origin="lower",
            aspect="auto",
            extent=(0.0, dur, 0, mel.shape[0]),
            vmin=vmin,
            vmax=vmax,
            cmap="magma",
        )
        ax.set_ylabel("mel bin", fontsize=8)
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1].set_xlabel("seconds")
    fig.colorbar(im, ax=list(axes), label="log mel power")
    return _png(fig)


def attention_figure(att: AttentionAlignment) -> bytes:
    """Heat map: lyric characters (rows) × music positions (columns)."""
    n, t = att.probs.shape
    fig = _figure(min(12, 3 + 0.12 * t), min(10, 1.5 + 0.18 * n))
    ax = fig.subplots()
    im = ax.imshow(
        att.probs, aspect="auto", origin="upper", cmap="viridis", interpolation="nearest"
    )
    if n <= 96:
        ax.set_yticks(range(n))
        ax.set_yticklabels(
            [c if c.strip() else "␣" for c in att.chars], fontsize=7, family="monospace"
        )
    ax.set_xlabel("music position (top-level code)")
    ax.set_ylabel("lyric character")
    ax.set_title(f"layer {att.layer} ({att.kind} attention, {att.heads})", fontsize=10)
    fig.colorbar(im, ax=ax, label="attention probability")
    return _png(fig)


def embedding_figure(emb: EmbeddingMap) -> bytes:
    """Scatter of the 2-D embedding map, artists and genres by marker, labelled by name."""
    fig = _figure(8, 6)
    ax = fig.subplots()
    xy = np.asarray(emb.xy)
    for group, marker, color in (("artist", "o", "#1f77b4"), ("genre", "s", "#d62728")):
        idx = [i for i, g in enumerate(emb.groups) if g == group]
        if idx:
            ax.scatter(xy[idx, 0], xy[idx, 1], marker=marker, color=color, label=group, s=30)
    if len(emb.names) <= 80:
        for (x, y), name in zip(xy, emb.names):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_title(f"artist and genre embeddings of the top prior ({emb.method})", fontsize=10)
    ax.legend(fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


__all__ = [
    "attention_figure",
    "embedding_figure",
    "pareto_figure",
    "spectrogram_figure",
    "timing_figure",
]
