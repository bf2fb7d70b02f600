"""The evaluation report: one self-contained HTML page, the same tables in Markdown, all numbers
in JSON (DESIGN §6).

:func:`write_report` renders an :class:`~eval.results.EvalResult` (made by
:func:`eval.evaluate.evaluate`) into ``OUT/``::

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
(:mod:`eval.tables`, :func:`~eval.tables.fmt`), so a number reads identically in HTML, Markdown
and (rounded) JSON. The figures come from :mod:`eval.figures` (matplotlib's object API on the
Agg canvas: no pyplot, no global backend switch). This module assembles the pages, encodes the
audio and writes every file.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eval.figures import (
    attention_figure,
    embedding_figure,
    pareto_figure,
    spectrogram_figure,
    timing_figure,
)
from eval.results import AttentionAlignment, EvalResult
from eval.tables import (
    fmt,
    headline_numbers,
    headline_table,
    modes_table,
    reconstruction_table,
    setup_table,
    students_tables,
    timing_table,
)
from teacher.io import atomic_write_json

log = logging.getLogger(__name__)

HTML_FILE = "report.html"
MD_FILE = "report.md"
JSON_FILE = "metrics.json"
FIGURES_DIR = "figures"
AUDIO_DIR = "audio"


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
        "setup": [setup_table(setup)],
        "headline": [headline_table(headline)],
        "timing": [t for t in [timing_table(metrics.get("end_to_end", {}))] if t],
        "reconstruction": [reconstruction_table(metrics)],
        "students": students_tables(metrics),
        "modes": [t for t in [modes_table(metrics)] if t],
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
    "AUDIO_DIR",
    "FIGURES_DIR",
    "HTML_FILE",
    "JSON_FILE",
    "MD_FILE",
    "wav_bytes",
    "write_report",
]
