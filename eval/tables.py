"""The report's numbers and tables: one formatting (:func:`fmt`), one :class:`Table` type.

:func:`fmt` prints every number of both reports; :func:`headline_numbers` picks the few the
reports lead with; each ``*_table`` function builds one section's :class:`Table` from the
metrics of :func:`eval.evaluate.evaluate`, which :func:`eval.report.write_report` renders as
HTML and as Markdown (so a number reads identically in both).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: significant digits of every number in the reports
DIGITS = 4


# ---------------------------------------------------------------------------------------------
# numbers


def _per_level(value: Any) -> str:
    """A setting per level (``{"middle": 6, ...}`` -> ``middle 6, bottom 6``), or one value."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) or "—"
    return fmt(value)


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


def get(d: Mapping[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


#: the audio distances every quality table shows, in this order: metric keys and headers
AUDIO_KEYS = ("sc_db", "mrstft", "mel_l1")
AUDIO_HEADERS = ("SC dB", "MR-STFT", "mel L1")
#: the musicality columns (:mod:`eval.musicality`)
MUSIC_KEYS = ("voiced", "pitch_agreement", "chroma_similarity", "flatness")
MUSIC_HEADERS = ("voiced", "pitch agr.", "chroma sim.", "flatness")
MUSIC_CAPTION = (
    " Musicality: voiced = fraction of pyin frames voiced (80 Hz-1 kHz); pitch agr. = of the "
    "ground truth's voiced frames, the fraction voiced within 50 cents of it; chroma sim. = "
    "mean frame-wise cosine of chroma_cqt; flatness = spectral flatness (~0 tones, 1 noise)."
)


def cells(m: Mapping[str, Any], *keys: str) -> list[str]:
    """:func:`fmt` of ``m[key]`` for each key, in order (a dash where a key is missing): a run
    of a row's metric cells."""
    return [fmt(m.get(k)) for k in keys]


def headline_numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers both reports lead with (and metrics.json repeats under ``headline``):
    the bottom level's ceiling and floor, each mode's MR-STFT, FD-VQ and upsampling speedup,
    the end-to-end speedups and the Amdahl bound, and the top prior's NLL of real codes."""
    out: dict[str, float] = {}
    bounds = metrics.get("bounds", {})
    level = bounds.get("level", "bottom")
    for side in ("ceiling", "floor"):
        for key, label in (("mrstft", "MR-STFT"), ("sc_db", "SC dB")):
            v = get(bounds, side, key)
            if v is not None:
                out[f"{side} {label} ({level})"] = v
    gt = get(bounds, "ground_truth", "voiced")
    if gt is not None:
        out["ground truth: voiced fraction"] = gt
    for mode, m in metrics.get("modes", {}).items():
        out[f"{mode}: MR-STFT ({level})"] = m["mrstft"]
        if m.get("pitch_agreement") is not None:
            out[f"{mode}: pitch agreement"] = m["pitch_agreement"]
        out[f"{mode}: FD-VQ"] = m["fd_vq"]
        if "speedup" in m:
            out[f"{mode}: upsampling speedup"] = m["speedup"]
    e2e = metrics.get("end_to_end", {})
    for mode, m in e2e.get("modes", {}).items():
        if "speedup" in m:
            out[f"{mode}: end-to-end speedup"] = m["speedup"]
        voiced = get(m, "musicality", "voiced")
        if voiced is not None:
            out[f"{mode}: song from nothing, voiced fraction"] = voiced
    if "amdahl_bound" in e2e:
        out["Amdahl bound (free upsampling)"] = e2e["amdahl_bound"]
    nll = get(metrics, "top_prior", "real_codes_nll_bits")
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


def setup_table(setup: Mapping[str, Any]) -> Table:
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
        ["speculative γ", _per_level(setup.get("gamma"))],
        [
            "speculative drafts",
            _per_level(setup.get("drafts")),
        ],
    ]
    for mode, why in setup.get("modes_skipped", {}).items():
        rows.append([f"skipped: {mode}", why])
    for name, h in setup.get("config_hashes", {}).items():
        rows.append([f"config hash {name}", h[:12]])
    for i, c in enumerate(setup.get("clips", [])):
        rows.append([f"clip {i}", f"{c['file']} @ {c['offset']} samples ({c.get('artist')})"])
    return Table("Setup", ["field", "value"], rows)


def headline_table(headline: Mapping[str, float]) -> Table:
    return Table(
        "Headline numbers",
        ["metric", "value"],
        [[k, fmt(v)] for k, v in headline.items()],
        "MR-STFT and SC dB of the bottom level's audio against the ground truth (lower is "
        "better); speedups against exact sampling on this machine.",
    )


def timing_table(e2e: Mapping[str, Any]) -> Table | None:
    modes = e2e.get("modes", {})
    if not modes:
        return None
    stages = sorted({s for m in modes.values() for s in m["stages"]}, key=stage_order)
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
                *cells(m.get("musicality", {}), "voiced", "flatness"),
            ]
        )
    cap = f"One {fmt(e2e.get('song_seconds'))} s song sampled from nothing; seconds inside each "
    cap += (
        "stage's sampler (decoding excluded). RTF: audio seconds per wall second. Amdahl "
        "predicted: the speedup Amdahl's law gives from this mode's per-stage speedups over the "
        "exact run's stage times (it differs from the measured one by the top stage's "
        "run-to-run noise). voiced / flatness: the song's pyin voiced fraction and spectral "
        "flatness (compare with the ground truth row of the modes table)."
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
            "voiced",
            "flatness",
        ],  # fmt: skip
        rows,
        cap,
    )


def stage_order(name: str) -> int:
    return {"top": 0, "middle": 1, "bottom": 2}.get(name, 3)


def reconstruction_table(metrics: Mapping[str, Any]) -> Table:
    rows = []
    for level, m in metrics.get("reconstruction", {}).items():
        cb = m["codebook"]
        used = [f"{cb['used']}", fmt(100 * cb["fraction"]), fmt(cb["perplexity"])]
        rows.append([level, *cells(m, *AUDIO_KEYS, "si_sdr", *MUSIC_KEYS), *used])
    cap = (
        "Each level encodes and decodes the clips on its own codes. SC dB = 20·log10(spectral "
        "convergence), lower is better; MR-STFT: multi-resolution STFT distance; mel L1 of "
        "log-mel power; SI-SDR in dB (higher is better)." + MUSIC_CAPTION
    )
    nll = get(metrics, "top_prior", "real_codes_nll_bits")
    if nll is not None:
        cap += f" Top prior NLL of the real top-level codes: {fmt(nll)} bits/token."
    return Table(
        "Per-level reconstruction",
        [
            "level",
            *AUDIO_HEADERS,
            "SI-SDR dB",
            *MUSIC_HEADERS,
            "codes used",
            "usage %",
            "perplexity",
        ],
        rows,
        cap,
    )


def students_tables(metrics: Mapping[str, Any]) -> list[Table]:
    out = []
    for level, entry in metrics.get("upsampling", {}).items():
        rows = []
        for name, m in entry["samplers"].items():
            sp = m["speed"]
            spec = m.get("speculative", {})
            kl = [fmt(m.get(k)) for k in ("kl_per_token", "entropy_per_token")]
            speed = [*cells(sp, "wall_s", "rtf", "tokens_per_s"), fmt(_mib(sp["peak_mem_bytes"]))]
            acceptance = fmt(spec.get("acceptance_rate")) if spec else "—"
            audio = cells(m, "token_accuracy", *AUDIO_KEYS, "voiced", "pitch_agreement")
            rows.append(
                [name, fmt(m["nll_bits"]), *kl, *audio, *speed, fmt(m.get("speedup")), acceptance]
            )
        for side in ("ceiling", "floor"):
            m = entry[side]
            nll = entry["real_codes_nll_bits"] if side == "ceiling" else m.get("nll_bits")
            label = f"{side} ({'true' if side == 'ceiling' else 'random'} codes)"
            audio = cells(m, "token_accuracy", *AUDIO_KEYS, "voiced", "pitch_agreement")
            rows.append([label, fmt(nll), "—", "—", *audio, *["—"] * 6])
        out.append(
            Table(
                f"Teacher vs students: {level} level on the true upper codes",
                [
                    "sampler",
                    "NLL bits/token",
                    "KL nats/token",
                    "entropy nats",
                    "token acc.",
                    *AUDIO_HEADERS,
                    "voiced",
                    "pitch agr.",
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


def modes_table(metrics: Mapping[str, Any]) -> Table | None:
    modes = metrics.get("modes", {})
    if not modes:
        return None
    bounds = metrics.get("bounds", {})
    rows = []
    for mode, m in modes.items():
        plan = ", ".join(f"{k}={v}" for k, v in m["level_modes"].items())
        sp = m["speed"]
        speed = cells(sp, "wall_s", "tokens_per_s")
        quality = cells(m, *AUDIO_KEYS, "fd_vq", *MUSIC_KEYS)
        rows.append([mode, plan, *quality, *speed, fmt(m.get("speedup"))])
    for side in ("ground_truth", "ceiling", "floor"):
        b = bounds.get(side)
        if b:
            what = {"ground_truth": "the clips", "ceiling": "true codes", "floor": "random codes"}
            quality = cells(b, *AUDIO_KEYS, "fd_vq", *MUSIC_KEYS)
            rows.append([side.replace("_", " "), what[side], *quality, "—", "—", "—"])
    fd = metrics.get("setup", {}).get("fd_vq", {})
    return Table(
        "Modes: quality vs speed from the true top codes",
        [
            "mode",
            "levels",
            *AUDIO_HEADERS,
            "FD-VQ",
            *MUSIC_HEADERS,
            "upsampling s",
            "tokens/s",
            "speedup",
        ],
        rows,
        f"Each mode upsamples the clips' true top-level codes through every lower level; the "
        f"{bounds.get('level', 'bottom')} level's audio is compared with the ground truth. "
        f"FD-VQ: {fd.get('name', 'Fréchet distance on VQ-VAE encoder features')} of the "
        f"{fd.get('level')} encoder, {fd.get('frames_per_vector')} latent frames per vector "
        "(not FAD: no downloaded embedding)." + MUSIC_CAPTION,
    )


__all__ = [
    "AUDIO_HEADERS",
    "AUDIO_KEYS",
    "MUSIC_HEADERS",
    "MUSIC_KEYS",
    "DIGITS",
    "Table",
    "cells",
    "fmt",
    "get",
    "headline_numbers",
    "headline_table",
    "modes_table",
    "reconstruction_table",
    "setup_table",
    "stage_order",
    "students_tables",
    "timing_table",
]
