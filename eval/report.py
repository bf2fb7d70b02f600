"""The evaluation report: one self-contained HTML page, the same tables in Markdown, all numbers
in JSON (DESIGN §6).

:func:`write_report` renders an :class:`EvalResult` (made by :func:`eval.evaluate.evaluate`)
into ``OUT/``::

    report.html     one page that works offline and when copied elsewhere: inline CSS,
                    figures as base64 PNG <img>, audio as base64 WAV <audio> players, no URL
    report.md       the same tables; figures as PNG files in figures/, audio as WAVs in audio/
    metrics.json    every number (setup: machine, versions, seeds, config hashes), plus the
                    headline numbers both reports show
    figures/*.png   audio/*.wav

Sections: setup; headline numbers; per-stage timing (bars); per-level reconstruction;
teacher vs students on the same upper codes; modes and the quality-vs-speed Pareto plot
bracketed by a ceiling (true codes decoded) and a floor (random codes decoded); end to end and
the Amdahl bound; spectrograms; audio players; the top prior's lyric-to-music attention; a 2-D
map of its artist and genre embeddings; notes.

Both reports are built from the same table objects and the same number formatting
(:func:`fmt`), so a number reads identically in HTML, Markdown and (rounded) JSON. Figures use
matplotlib's object API on the Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from teacher.io import atomic_write_json

log = logging.getLogger(__name__)

HTML_FILE = "report.html"
MD_FILE = "report.md"
JSON_FILE = "metrics.json"
FIGURES_DIR = "figures"
AUDIO_DIR = "audio"
#: significant digits of every number in the reports
DIGITS = 4
_MODE_COLORS = {
    "exact": "#1f77b4",
    "accelerated": "#d62728",
    "hybrid": "#9467bd",
    "speculative": "#2ca02c",
}
_STAGE_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


# ---------------------------------------------------------------------------------------------
# what evaluate() hands over


@dataclass
class AttentionAlignment:
    """The top prior's lyric-to-music attention on one window.

    Attributes:
        probs: ``float32[n_tokens, T]``: row c, column t is the attention music position t pays
            to lyric character c (rows of the softmax restricted to lyric keys).
        chars: the window's characters (``·`` for padding), one per row.
        layer: the transformer layer it was read from.
        kind: ``"prime"`` (single-sequence lyrics) or ``"cross"`` (lyric encoder).
        heads: which heads (``"mean of H heads"`` or ``"head h"``).
        lyrics: the window's text.
    """

    probs: np.ndarray
    chars: list[str]
    layer: int
    kind: str
    heads: str
    lyrics: str = ""


@dataclass
class EmbeddingMap:
    """A 2-D map of learned label embeddings: ``xy float[N, 2]``, a name and a group
    (``"artist"``/``"genre"``) per point, and the method (t-SNE or PCA)."""

    xy: np.ndarray
    names: list[str]
    groups: list[str]
    method: str


@dataclass
class EvalResult:
    """Everything a report shows.

    Attributes:
        metrics: JSON-ready numbers (sections ``setup``, ``reconstruction``, ``top_prior``,
            ``upsampling``, ``bounds``, ``modes``, ``end_to_end``, ``notes``; see
            :func:`eval.evaluate.evaluate`).
        audio: name -> ``(sample_rate, float32[T])`` mono audio, in the order players show it.
        spectrograms: names in ``audio`` to draw spectrograms of, in order.
        attention: the lyric-to-music alignment, or None (no lyrics).
        embeddings: the artist/genre map, or None (unlabelled top prior).
        notes: sentences the report prints at the end (skipped modes, missing lyrics...).
        files: what :func:`write_report` wrote (filled in by it).
    """

    metrics: dict[str, Any]
    audio: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    spectrograms: list[str] = field(default_factory=list)
    attention: AttentionAlignment | None = None
    embeddings: EmbeddingMap | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# numbers


def fmt(value: Any, digits: int = DIGITS) -> str:
    """A number as both reports print it: ints as they are, floats to ``digits`` significant
    digits (``%g``), None/NaN as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return "—"
        return f"{v:.{digits}g}"
    return str(value)


def _mib(n: int | None) -> float | None:
    return None if n is None else n / 2**20


def _gib(n: int | None) -> float | None:
    return None if n is None else n / 2**30


def _get(d: Mapping[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def headline_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers both reports lead with (and metrics.json repeats under ``headline``):
    the bottom level's ceiling and floor, each mode's MR-STFT, FD-VQ and upsampling speedup,
    the end-to-end speedups and the Amdahl bound, and the top prior's NLL of real codes."""
    out: dict[str, float] = {}
    bounds = metrics.get("bounds", {})
    level = bounds.get("level", "bottom")
    for side in ("ceiling", "floor"):
        for key, label in (("mrstft", "MR-STFT"), ("sc_db", "SC dB")):
            v = _get(bounds, side, key)
            if v is not None:
                out[f"{side} {label} ({level})"] = v
    for mode, m in metrics.get("modes", {}).items():
        out[f"{mode}: MR-STFT ({level})"] = m["mrstft"]
        out[f"{mode}: FD-VQ"] = m["fd_vq"]
        if "speedup" in m:
            out[f"{mode}: upsampling speedup"] = m["speedup"]
    e2e = metrics.get("end_to_end", {})
    for mode, m in e2e.get("modes", {}).items():
        if "speedup" in m:
            out[f"{mode}: end-to-end speedup"] = m["speedup"]
    if "amdahl_bound" in e2e:
        out["Amdahl bound (free upsampling)"] = e2e["amdahl_bound"]
    nll = _get(metrics, "top_prior", "real_codes_nll_bits")
    if nll is not None:
        out["top prior NLL of real codes (bits/token)"] = nll
    return out


# ---------------------------------------------------------------------------------------------
# tables


@dataclass
class Table:
    """A titled table of text cells, rendered identically as HTML and Markdown."""

    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str = ""

    def html(self, heading: bool = True) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        cap = f"<p class='caption'>{html.escape(self.caption)}</p>" if self.caption else ""
        title = f"<h3>{html.escape(self.title)}</h3>" if heading else ""
        return f"{title}{cap}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def markdown(self, heading: bool = True) -> str:
        def cell(c: str) -> str:
            return c.replace("|", "\\|").replace("\n", " ")

        lines = [f"### {self.title}", ""] if heading else []
        if self.caption:
            lines += [self.caption, ""]
        lines.append("| " + " | ".join(cell(h) for h in self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _setup_table(setup: Mapping[str, Any]) -> Table:
    machine = setup.get("machine", {})
    versions = machine.get("versions", {})
    rows = [
        ["teacher", str(setup.get("teacher_dir"))],
        ["students", ", ".join(f"{k}: {v}" for k, v in setup.get("students", {}).items()) or "—"],
        ["data", str(setup.get("data_dir"))],
        ["device", f"{setup.get('device')} ({machine.get('device_name')})"],
        [
            "machine",
            f"{machine.get('cpu')}; {machine.get('cpu_usable')} of {machine.get('cpu_count')} "
            f"cores usable; {machine.get('torch_threads')} torch threads; "
            f"{fmt(_gib(machine.get('mem_total_bytes')))} GiB memory",
        ],
        ["platform", f"{machine.get('platform')}, Python {machine.get('python')}"],
        ["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "—"],
        [
            "clips",
            f"{setup.get('n_clips')} × {fmt(setup.get('clip_seconds'))} s at "
            f"{setup.get('sample_rate')} Hz",
        ],
        ["seeds", json.dumps(setup.get("seeds"))],
        ["modes", ", ".join(setup.get("modes", [])) or "—"],
        ["hybrid plan", str(setup.get("hybrid"))],
        ["speculative γ", fmt(setup.get("gamma"))],
    ]
    for mode, why in setup.get("modes_skipped", {}).items():
        rows.append([f"skipped: {mode}", why])
    for name, h in setup.get("config_hashes", {}).items():
        rows.append([f"config hash {name}", h[:12]])
    for i, c in enumerate(setup.get("clips", [])):
        rows.append([f"clip {i}", f"{c['file']} @ {c['offset']} samples ({c.get('artist')})"])
    return Table("Setup", ["field", "value"], rows)


def _headline_table(headline: Mapping[str, float]) -> Table:
    return Table(
        "Headline numbers",
        ["metric", "value"],
        [[k, fmt(v)] for k, v in headline.items()],
        "MR-STFT and SC dB of the bottom level's audio against the ground truth (lower is "
        "better); speedups against exact sampling on this machine.",
    )


def _timing_table(e2e: Mapping[str, Any]) -> Table | None:
    modes = e2e.get("modes", {})
    if not modes:
        return None
    stages = sorted({s for m in modes.values() for s in m["stages"]}, key=_stage_order)
    rows = []
    for mode, m in modes.items():
        rows.append(
            [mode]
            + [fmt(m["stages"].get(s)) for s in stages]
            + [
                fmt(m["total_s"]),
                fmt(m["rtf"]),
                fmt(m.get("speedup")),
                fmt(m.get("amdahl_predicted")),
                fmt(_mib(m.get("peak_mem_bytes"))),
            ]
        )
    cap = f"One {fmt(e2e.get('song_seconds'))} s song sampled from nothing; seconds inside each "
    cap += (
        "stage's sampler (decoding excluded). RTF: audio seconds per wall second. Amdahl "
        "predicted: the speedup Amdahl's law gives from this mode's per-stage speedups over the "
        "exact run's stage times (it differs from the measured one by the top stage's "
        "run-to-run noise)."
    )
    if "amdahl_bound" in e2e:
        cap += (
            f" Distilled stages ({', '.join(e2e['distilled_stages'])}) take "
            f"{fmt(100 * e2e['distilled_share'])}% of exact sampling: however fast the students, "
            f"the end-to-end speedup is at most {fmt(e2e['amdahl_bound'])}x (Amdahl)."
        )
    return Table(
        "Per-stage timing, end to end",
        [
            "mode",
            *(f"{s} s" for s in stages),
            "total s",
            "RTF",
            "speedup",
            "Amdahl predicted",
            "peak MiB",
        ],  # fmt: skip
        rows,
        cap,
    )


def _stage_order(name: str) -> int:
    return {"top": 0, "middle": 1, "bottom": 2}.get(name, 3)


def _reconstruction_table(metrics: Mapping[str, Any]) -> Table:
    rows = []
    for level, m in metrics.get("reconstruction", {}).items():
        cb = m["codebook"]
        rows.append(
            [
                level,
                fmt(m["sc_db"]),
                fmt(m["mrstft"]),
                fmt(m["mel_l1"]),
                fmt(m["si_sdr"]),
                f"{cb['used']}",
                fmt(100 * cb["fraction"]),
                fmt(cb["perplexity"]),
            ]
        )
    cap = (
        "Each level encodes and decodes the clips on its own codes. SC dB = 20·log10(spectral "
        "convergence), lower is better; MR-STFT: multi-resolution STFT distance; mel L1 of "
        "log-mel power; SI-SDR in dB (higher is better)."
    )
    nll = _get(metrics, "top_prior", "real_codes_nll_bits")
    if nll is not None:
        cap += f" Top prior NLL of the real top-level codes: {fmt(nll)} bits/token."
    return Table(
        "Per-level reconstruction",
        [
            "level",
            "SC dB",
            "MR-STFT",
            "mel L1",
            "SI-SDR dB",
            "codes used",
            "usage %",
            "perplexity",
        ],  # fmt: skip
        rows,
        cap,
    )


def _students_tables(metrics: Mapping[str, Any]) -> list[Table]:
    out = []
    for level, entry in metrics.get("upsampling", {}).items():
        rows = []
        for name, m in entry["samplers"].items():
            sp = m["speed"]
            spec = m.get("speculative", {})
            rows.append(
                [
                    name,
                    fmt(m["nll_bits"]),
                    fmt(m.get("kl_per_token")),
                    fmt(m.get("entropy_per_token")),
                    fmt(m["token_accuracy"]),
                    fmt(m["sc_db"]),
                    fmt(m["mrstft"]),
                    fmt(m["mel_l1"]),
                    fmt(sp["wall_s"]),
                    fmt(sp["rtf"]),
                    fmt(sp["tokens_per_s"]),
                    fmt(_mib(sp["peak_mem_bytes"])),
                    fmt(m.get("speedup")),
                    fmt(spec.get("acceptance_rate")) if spec else "—",
                ]
            )
        for side in ("ceiling", "floor"):
            m = entry[side]
            rows.append(
                [
                    f"{side} ({'true' if side == 'ceiling' else 'random'} codes)",
                    fmt(entry["real_codes_nll_bits"] if side == "ceiling" else m.get("nll_bits")),
                    "—",
                    "—",
                    fmt(m["token_accuracy"]),
                    fmt(m["sc_db"]),
                    fmt(m["mrstft"]),
                    fmt(m["mel_l1"]),
                    *["—"] * 6,
                ]
            )
        out.append(
            Table(
                f"Teacher vs students: {level} level on the true upper codes",
                [
                    "sampler",
                    "NLL bits/token",
                    "KL nats/token",
                    "entropy nats",
                    "token acc.",
                    "SC dB",
                    "MR-STFT",
                    "mel L1",
                    "wall s",
                    "RTF",
                    "tokens/s",
                    "peak MiB",
                    "speedup",
                    "acceptance",
                ],  # fmt: skip
                rows,
                "Every level above is the clips' true codes. NLL: the teacher's, in bits/token, "
                "of the codes each sampler drew (the ceiling row: of the real codes). KL: the "
                "student's closed-form reverse KL to the teacher on its own samples. Speed: wall "
                "seconds inside the sampler over all clips; peak memory added during the call.",
            )
        )
    return out


def _modes_table(metrics: Mapping[str, Any]) -> Table | None:
    modes = metrics.get("modes", {})
    if not modes:
        return None
    bounds = metrics.get("bounds", {})
    rows = []
    for mode, m in modes.items():
        plan = ", ".join(f"{k}={v}" for k, v in m["level_modes"].items())
        sp = m["speed"]
        rows.append(
            [
                mode,
                plan,
                fmt(m["sc_db"]),
                fmt(m["mrstft"]),
                fmt(m["mel_l1"]),
                fmt(m["fd_vq"]),
                fmt(sp["wall_s"]),
                fmt(sp["tokens_per_s"]),
                fmt(m.get("speedup")),
            ]
        )
    for side in ("ceiling", "floor"):
        b = bounds.get(side)
        if b:
            rows.append(
                [side, "true codes" if side == "ceiling" else "random codes", fmt(b["sc_db"]),
                 fmt(b["mrstft"]), fmt(b["mel_l1"]), fmt(b["fd_vq"]), "—", "—", "—"]
            )  # fmt: skip
    fd = metrics.get("setup", {}).get("fd_vq", {})
    return Table(
        "Modes: quality vs speed from the true top codes",
        [
            "mode",
            "levels",
            "SC dB",
            "MR-STFT",
            "mel L1",
            "FD-VQ",
            "upsampling s",
            "tokens/s",
            "speedup",
        ],  # fmt: skip
        rows,
        f"Each mode upsamples the clips' true top-level codes through every lower level; the "
        f"{bounds.get('level', 'bottom')} level's audio is compared with the ground truth. "
        f"FD-VQ: {fd.get('name', 'Fréchet distance on VQ-VAE encoder features')} of the "
        f"{fd.get('level')} encoder, {fd.get('frames_per_vector')} latent frames per vector "
        "(not FAD: no downloaded embedding).",
    )


# ---------------------------------------------------------------------------------------------
# figures


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
        stages = sorted({s for m in e2e.values() for s in m["stages"]}, key=_stage_order)
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
        v = _get(bounds, side, "mrstft")
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


# ---------------------------------------------------------------------------------------------
# audio


def wav_bytes(x: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV of mono float audio (clipped to [-1, 1])."""
    import soundfile as sf

    buf = io.BytesIO()
    data = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float32).reshape(-1)), -1.0, 1.0)
    sf.write(buf, data, int(sample_rate), format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "item"


# ---------------------------------------------------------------------------------------------
# json


def _jsonable(x: Any) -> Any:
    """Numbers as plain Python (non-finite -> None), numpy arrays as lists, paths as text."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, os.PathLike):
        return str(x)
    return x


def _non_finite(x: Any, path: str = "") -> list[str]:
    if isinstance(x, Mapping):
        return [p for k, v in x.items() for p in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(x, list | tuple):
        return [p for i, v in enumerate(x) for p in _non_finite(v, f"{path}[{i}]")]
    if isinstance(x, float) and not math.isfinite(x):
        return [path]
    return []


# ---------------------------------------------------------------------------------------------
# the report

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1180px;padding:1.5em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tbody tr:nth-child(even){background:#fafafa}
.caption{color:#555;font-size:.85em;margin:.2em 0}
img{max-width:100%;height:auto;border:1px solid #eee}
.players{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8em}
.player{border:1px solid #ddd;border-radius:6px;padding:.5em}
.player p{margin:0 0 .3em;font-size:.85em}audio{width:100%}
nav{font-size:.9em}nav a{margin-right:.9em}
.note{color:#8a5a00}
"""


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def write_report(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``metrics.json``, ``figures/*.png`` and
    ``audio/*.wav`` into ``out_dir`` (module docs); returns ``{"html", "md", "json",
    "figures", "audio"}`` -> paths (folders for the last two), also set as ``result.files``.

    Each file is written atomically and ``metrics.json`` last, so its presence marks a
    complete report (the demo's resume test); other files in ``out_dir`` are left alone.
    Sections whose inputs are missing (no students, no lyrics...) are left out or say why.
    """
    out = Path(out_dir)
    (out / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    metrics = result.metrics
    headline = headline_numbers(metrics)

    # ---- figures -----------------------------------------------------------------------------
    figures: dict[str, tuple[str, bytes]] = {}  # key -> (alt text, png)

    def add(key: str, alt: str, png: bytes | None) -> None:
        if png is not None:
            figures[key] = (alt, png)

    add("timing", "per-stage timing bars", timing_figure(metrics))
    add("pareto", "quality vs speed Pareto plot", pareto_figure(metrics))
    add(
        "spectrograms",
        "log-mel spectrograms",
        spectrogram_figure(result.audio, result.spectrograms),
    )
    if result.attention is not None:
        add("attention", "lyric-to-music attention", attention_figure(result.attention))
    if result.embeddings is not None:
        add("embeddings", "artist and genre embedding map", embedding_figure(result.embeddings))
    for key, (_, png) in figures.items():
        _write_bytes(out / FIGURES_DIR / f"{key}.png", png)

    # ---- audio -------------------------------------------------------------------------------
    wavs: dict[str, tuple[str, bytes]] = {}  # name -> (file name, wav)
    used: set[str] = set()
    for name, (sr, x) in result.audio.items():
        slug = _slug(name)
        while slug in used:
            slug += "_"
        used.add(slug)
        data = wav_bytes(x, sr)
        wavs[name] = (f"{slug}.wav", data)
        _write_bytes(out / AUDIO_DIR / f"{slug}.wav", data)

    # ---- tables ------------------------------------------------------------------------------
    setup = metrics.get("setup", {})
    tables = {
        "setup": [_setup_table(setup)],
        "headline": [_headline_table(headline)],
        "timing": [t for t in [_timing_table(metrics.get("end_to_end", {}))] if t],
        "reconstruction": [_reconstruction_table(metrics)],
        "students": _students_tables(metrics),
        "modes": [t for t in [_modes_table(metrics)] if t],
    }
    notes = list(dict.fromkeys([*result.notes, *metrics.get("notes", [])]))
    att_text = _attention_text(result.attention)
    emb_text = (
        f"{len(result.embeddings.names)} rows of the top prior's artist and genre embedding "
        f"tables, mapped to 2-D by {result.embeddings.method}."
        if result.embeddings is not None
        else "The top prior has no artist/genre embeddings (unlabelled)."
    )
    sections = [
        ("setup", "Setup", tables["setup"], [], ""),
        ("headline", "Headline numbers", tables["headline"], [], ""),
        ("timing", "Per-stage timing", tables["timing"], ["timing"], ""),
        ("reconstruction", "Per-level reconstruction", tables["reconstruction"], [], ""),
        ("students", "Teacher vs students", tables["students"], [], ""),
        ("modes", "Quality vs speed", tables["modes"], ["pareto"], ""),
        ("spectrograms", "Spectrograms", [], ["spectrograms"], "Clip 0, log-mel power."),
        ("audio", "Audio", [], [], ""),
        ("attention", "Lyric-to-music attention (top prior)", [], ["attention"], att_text),
        ("embeddings", "Artist and genre embeddings (top prior)", [], ["embeddings"], emb_text),
    ]

    # ---- HTML --------------------------------------------------------------------------------
    parts = []
    for anchor, title, tabs, figs, text in sections:
        body = f"<p>{html.escape(text)}</p>" if text else ""
        body += "".join(t.html(heading=t.title != title) for t in tabs)
        body += "".join(_img(figures[f][1], figures[f][0]) for f in figs if f in figures)
        if anchor == "audio":
            body += (
                "<div class='players'>"
                + "".join(
                    "<div class='player'>"
                    f"<p>{html.escape(name)}</p>"
                    "<audio controls preload='none' "
                    f"src='data:audio/wav;base64,{base64.b64encode(data).decode('ascii')}'></audio>"
                    "</div>"
                    for name, (_, data) in wavs.items()
                )
                + "</div>"
            )
        if anchor in ("attention", "embeddings") and not any(f in figures for f in figs):
            body = f"<p class='note'>{html.escape(text or 'not available')}</p>"
        parts.append(_section(anchor, title, body))
    if notes:
        parts.append(
            _section(
                "notes",
                "Notes",
                "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
            )
        )
    nav = "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t, *_ in sections) + (
        "<a href='#notes'>Notes</a>" if notes else ""
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>fastjukebox evaluation report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>fastjukebox evaluation report</h1>"
        f"<p class='caption'>{html.escape(_subtitle(setup))}</p>"
        f"<nav>{nav}</nav>{''.join(parts)}</body></html>\n"
    )
    _write_bytes(out / HTML_FILE, page.encode("utf-8"))

    # ---- Markdown ----------------------------------------------------------------------------
    md = ["# fastjukebox evaluation report", "", _subtitle(setup), ""]
    for anchor, title, tabs, figs, text in sections:
        md += [f"## {title}", ""]
        if text:
            md += [text, ""]
        md += [t.markdown(heading=t.title != title) for t in tabs]
        md += [f"![{figures[f][0]}]({FIGURES_DIR}/{f}.png)\n" for f in figs if f in figures]
        if anchor == "audio":
            md += [f"- [{name}]({AUDIO_DIR}/{file})" for name, (file, _) in wavs.items()] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    _write_bytes(out / MD_FILE, "\n".join(md).encode("utf-8"))

    # ---- JSON --------------------------------------------------------------------------------
    bad = _non_finite(metrics)
    if bad:
        log.warning("non-finite metrics written as null: %s", ", ".join(bad))
    payload = {
        **metrics,
        "headline": headline,
        "figures": {k: f"{FIGURES_DIR}/{k}.png" for k in figures},
        "audio": {name: f"{AUDIO_DIR}/{file}" for name, (file, _) in wavs.items()},
    }
    if result.attention is not None:
        a = result.attention
        payload["attention"] = {
            "layer": a.layer,
            "kind": a.kind,
            "heads": a.heads,
            "lyrics": a.lyrics,
            "shape": list(a.probs.shape),
        }
    if result.embeddings is not None:
        e = result.embeddings
        payload["embeddings"] = {
            "method": e.method,
            "points": [
                {"name": n, "group": g, "x": float(p[0]), "y": float(p[1])}
                for n, g, p in zip(e.names, e.groups, np.asarray(e.xy))
            ],
        }
    atomic_write_json(out / JSON_FILE, _jsonable(payload))
    files = {
        "html": out / HTML_FILE,
        "md": out / MD_FILE,
        "json": out / JSON_FILE,
        "figures": out / FIGURES_DIR,
        "audio": out / AUDIO_DIR,
    }
    result.files = files
    log.info("report written to %s", out / HTML_FILE)
    return files


def _subtitle(setup: Mapping[str, Any]) -> str:
    machine = setup.get("machine", {})
    return (
        f"teacher {setup.get('teacher_dir')} · {setup.get('n_clips')} clips of "
        f"{fmt(setup.get('clip_seconds'))} s · device {setup.get('device')} "
        f"({machine.get('device_name', '?')}) · torch {machine.get('torch_version', '?')}"
    )


def _attention_text(att: AttentionAlignment | None) -> str:
    if att is None:
        return "The top prior has no lyrics: there is no lyric-to-music attention to show."
    n, t = att.probs.shape
    return (
        f"Attention of {t} music positions to {n} lyric characters in layer {att.layer} "
        f"({att.kind} attention, {att.heads}) on the first window of clip 0; lyrics in the "
        f"window: {att.lyrics.strip()!r}. A trained model shows a diagonal band: the music "
        "reads the characters being sung."
    )


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "AttentionAlignment",
    "EmbeddingMap",
    "EvalResult",
    "Table",
    "attention_figure",
    "embedding_figure",
    "fmt",
    "headline_numbers",
    "pareto_figure",
    "spectrogram_figure",
    "timing_figure",
    "wav_bytes",
    "write_report",
]
