"""The evaluation run behind ``fastjukebox eval`` (DESIGN §6): every number of the report.

:func:`evaluate` loads a teacher folder and its students (:class:`distill.pipeline.FastJukebox`),
cuts ``n_clips`` deterministic held-out clips from a data folder and measures:

* **reconstruction**, per VQ-VAE level: the clip encoded and decoded by that level alone —
  SC in dB (``20·log10``, lower is better), multi-resolution STFT distance, log-mel L1, SI-SDR
  and codebook usage/perplexity (:mod:`eval.metrics`); and the top prior's NLL of the real
  top-level codes (bits/token).
* **teacher vs students per upsampling level**, on the SAME ground-truth upper codes (all
  levels above are the clip's true codes, so each level is judged on its own): the teacher
  sampling exactly, the student, and speculative sampling (the student drafting, the teacher
  verifying). Per sampler: teacher NLL in bits/token of the codes it drew (against the teacher's
  NLL of the real codes), the student's closed-form KL and entropy per token, token accuracy
  against the true codes, the level decoded and compared with the ground truth, codebook usage
  and speed (wall seconds inside the sampler, real-time factor, tokens/s, peak memory;
  :mod:`eval.speed`). A **ceiling** (the true codes decoded) and a **floor** (uniformly random
  codes decoded) go through the same audio metrics.
* **modes**: each sampling mode (exact, accelerated, hybrid, speculative) upsamples the clips'
  TRUE TOP codes through every lower level, as a real run would; the bottom level's audio is
  compared with the ground truth and with the teacher's encoder features ("FD-VQ": a Fréchet
  distance on VQ-VAE encoder features, not FAD), against the same ceiling and floor: the
  quality-vs-speed Pareto plot.
* **end to end**: one song sampled from nothing in every mode (top prior autoregressive, then
  the upsamplers of the mode), per-stage wall seconds, the measured speedup and the Amdahl
  bound ``T_total / T_top`` that free upsampling would reach.
* the top prior's **lyric-to-music attention** on one real window (the capture hook of
  :class:`teacher.prior.attention.FactoredAttention`), and a 2-D map (t-SNE, or PCA for fewer
  than 5 points) of its learned **artist and genre embeddings**.

It returns an :class:`~eval.results.EvalResult` (numbers, audio, figure inputs) that
:func:`eval.report.write_report` turns into ``report.html``, ``report.md`` and ``metrics.json``.
Timings are wall clock on whatever device the models sit on; tiny models measure overheads,
not the asymptotic speedup (DESIGN §5).

This module is the entry point (:func:`evaluate`, the modes that can run, the ``eval`` command
line); the clips and windowed NLL live in :mod:`eval.clips`, the phases in :mod:`eval.runner`,
the attention in :mod:`eval.alignment` and the embedding map in :mod:`eval.embeddings`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

import torch

from distill.pipeline import FAST_MODES, FastJukebox, parse_students
from distill.speculative import parse_gamma
from eval.clips import clip_length, load_clips
from eval.report import write_report
from eval.results import EvalResult
from eval.runner import Evaluation
from teacher.config import ConfigError
from teacher.console import run_main
from teacher.device import add_device_args

log = logging.getLogger(__name__)

#: hybrid mode's per-level plan when none is given: the bottom level (most of the sequential
#: work, DESIGN §1) by its student, the middle exactly
DEFAULT_HYBRID = "middle=exact,bottom=student"
#: latent frames pooled into one FD-VQ feature vector (at most)
DEFAULT_FD_FRAMES = 16


def available_modes(
    fj: FastJukebox, modes: Sequence[str], hybrid: str
) -> tuple[list[str], dict[str, str]]:
    """The modes this teacher and its students can run, and why the others are skipped."""
    run, skipped = [], {}
    for mode in modes:
        if mode not in FAST_MODES:
            raise ConfigError(f"unknown mode {mode!r}; expected some of {FAST_MODES}")
        try:
            fj.plan(mode, hybrid if mode == "hybrid" else None)
        except ConfigError as err:
            skipped[mode] = str(err)
            continue
        run.append(mode)
    return run, skipped


def evaluate(
    teacher_dir: str | os.PathLike,
    students: str | os.PathLike | Mapping[int | str, str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    n_clips: int = 4,
    seconds: float | None = None,
    seed: int = 0,
    modes: Sequence[str] = FAST_MODES,
    *,
    metadata: str | None = None,
    song_seconds: float | None = None,
    hybrid: str = DEFAULT_HYBRID,
    gamma: int | str | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    fd_level: int | None = None,
    fd_frames: int = DEFAULT_FD_FRAMES,
) -> EvalResult:
    """Evaluate a teacher and its students on held-out clips (module docs).

    Args:
        teacher_dir: a teacher folder (``vqvae/``, ``top/``, ``middle/``, ``bottom/``).
        students: level -> student folder, one folder with ``middle/`` and ``bottom/``, or None
            for ``TEACHER/students`` (:meth:`FastJukebox.from_pretrained`). Modes whose
            students are missing are skipped with the reason in ``metrics["setup"]``.
        data_dir: held-out audio (with its metadata for labels and lyrics).
        out_dir: when given, :func:`eval.report.write_report` writes the report there.
        n_clips: clips (at least 2).
        seconds: clip length; default one top-prior window.
        seed: the clip choice, the floor's random codes and every sampler's noise (clip i is
            sampled with seed ``seed + i``).
        modes: sampling modes to compare; those that cannot run here are skipped.
        song_seconds: length of the end-to-end song; default the clip length.
        hybrid: hybrid mode's per-level plan (``"middle=exact,bottom=student"``).
        gamma: speculative drafts per teacher pass, ``"auto"``, or None (the draft's default:
            4 incremental, 6 window).
        device: where the models run (``"auto"``: CUDA when present, else the CPU).
        dtype: the priors' and students' precision (default fp32).
        fd_level: VQ-VAE level whose encoder gives the FD-VQ features (default the top).
        fd_frames: latent frames pooled into one FD-VQ vector (fewer for short clips).
    """
    if data_dir is None:
        raise ConfigError("evaluate needs a data folder of held-out audio (data_dir)")
    gamma = parse_gamma(gamma)
    fj = FastJukebox.from_pretrained(teacher_dir, students=students, device=device, dtype=dtype)
    jb = fj.jukebox
    length = clip_length(jb, seconds)
    song = clip_length(jb, song_seconds) if song_seconds is not None else length
    modes_run, skipped = available_modes(fj, modes, hybrid)
    clips, audio = load_clips(data_dir, jb.sample_rate, length, n_clips, seed, metadata)
    log.info(
        "evaluating %d clips of %.2f s from %s; modes %s",
        n_clips,
        length / jb.sample_rate,
        data_dir,
        modes_run,
    )
    ev = Evaluation(fj, clips, audio, seed, hybrid, gamma, fd_level, fd_frames)
    notes = [f"mode {m} skipped: {why}" for m, why in skipped.items()]
    ev.keep("ground truth", ev.audio[0])
    reconstruction = ev.reconstruction()
    upsampling = {ev.names[lv]: ev.level(lv) for lv in ev.upsamplers}
    modes_out = {m: ev.mode(m) for m in modes_run} if ev.upsamplers else {}
    if "exact" in modes_out:
        base = modes_out["exact"]["speed"]["wall_s"]
        for m in modes_out.values():
            m["speedup"] = base / max(m["speed"]["wall_s"], 1e-12)
    bounds = ev.bounds()
    end_to_end = ev.end_to_end(modes_run, song)
    attention, embeddings = ev.top_figures(notes)
    metrics = {
        "setup": ev.setup(
            teacher_dir=str(teacher_dir),
            data_dir=str(data_dir),
            modes_requested=list(modes),
            modes=modes_run,
            modes_skipped=skipped,
        ),
        "reconstruction": reconstruction,
        "top_prior": ev.top_prior(),
        "upsampling": upsampling,
        "bounds": bounds,
        "modes": modes_out,
        "end_to_end": end_to_end,
        "notes": notes,
    }
    result = EvalResult(
        metrics=metrics,
        audio=ev.kept,
        spectrograms=ev.spectrograms,
        attention=attention,
        embeddings=embeddings,
        notes=notes,
    )
    if out_dir is not None:
        write_report(result, out_dir)
    return result


# ---------------------------------------------------------------------------------------------
# the command


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``fastjukebox eval``."""
    parser.add_argument("--teacher", required=True, help="teacher folder (vqvae/, top/, ...)")
    parser.add_argument(
        "--students",
        nargs="+",
        default=None,
        help="a folder holding middle/ and bottom/, or LEVEL=DIR pairs (default TEACHER/students)",
    )
    parser.add_argument("--data", required=True, help="held-out audio folder (with metadata)")
    parser.add_argument("--metadata", default=None, help="metadata file (default: in --data)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--n_clips", type=int, default=4)
    parser.add_argument(
        "--seconds", type=float, default=None, help="clip length (default one top-prior window)"
    )
    parser.add_argument(
        "--song_seconds", type=float, default=None, help="end-to-end song (default: --seconds)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--modes",
        default=",".join(FAST_MODES),
        help=f"comma-separated modes to compare (default {','.join(FAST_MODES)})",
    )
    parser.add_argument("--hybrid", default=DEFAULT_HYBRID, help="hybrid mode's level modes")
    parser.add_argument(
        "--gamma",
        default=None,
        help="speculative drafts per teacher pass (default 4 with incremental drafts, 6 with "
        "window drafts), or auto",
    )
    add_device_args(parser)
    parser.add_argument(
        "--fd_frames", type=int, default=DEFAULT_FD_FRAMES, help="latent frames per FD-VQ vector"
    )
    return parser


def _students_arg(values: Sequence[str] | None) -> str | dict[str, str] | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    out: dict[str, str] = {}
    for v in values:
        parsed = parse_students(v)
        if isinstance(parsed, str):
            raise ConfigError(f"--students: give one folder or LEVEL=DIR pairs, got {v!r}")
        out.update(parsed)
    return out


def run_eval(args: argparse.Namespace) -> int:
    """Run ``fastjukebox eval``: :func:`evaluate`, then the report; returns the exit code."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    result = evaluate(
        args.teacher,
        _students_arg(args.students),
        args.data,
        args.out,
        n_clips=args.n_clips,
        seconds=args.seconds,
        seed=args.seed,
        modes=modes,
        metadata=args.metadata,
        song_seconds=args.song_seconds,
        hybrid=args.hybrid,
        gamma=args.gamma,
        device=args.device,
        dtype=args.dtype,
        fd_frames=args.fd_frames,
    )
    for kind, path in result.files.items():
        log.info("%s: %s", kind, path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.evaluate``: the same as ``fastjukebox eval``."""
    parser = add_eval_args(
        argparse.ArgumentParser(prog="python -m eval.evaluate", description=__doc__.split("\n")[0])
    )
    return run_main(parser, run_eval, argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "DEFAULT_FD_FRAMES",
    "DEFAULT_HYBRID",
    "add_eval_args",
    "available_modes",
    "evaluate",
    "run_eval",
]
