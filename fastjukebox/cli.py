"""The ``fastjukebox`` console script: one entry point, one subcommand per task.

Heavy imports (torch, accelerate, librosa) happen inside the subcommands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from teacher.console import run_main

log = logging.getLogger("fastjukebox")

#: the longer help texts of the subcommands, by ``command.flag``
_HELP = {
    "sample.description": (
        "Windowed hierarchical sampling of whole songs: ancestral by default, continue with "
        "--prompt, upsample given top-level codes with --codes."
    ),
    "sample.mode": (
        "exact: every level autoregressive; accelerated: students for middle and bottom; hybrid: "
        "per level with --level_modes; speculative: students draft, the teacher verifies (exactly "
        "the teacher's distribution, fewer teacher passes)"
    ),
    "sample.students": (
        "students folder with middle/ and bottom/ (default TEACHER/students), or "
        "middle=DIR,bottom=DIR; each a student folder or a distill output folder"
    ),
    "sample.level_modes": (
        "per level: exact, student or speculative, e.g. middle=exact,bottom=student (required by "
        "--mode hybrid; overrides the mode's default for the levels it names)"
    ),
    "sample.codes": "codes.safetensors of an earlier run: upsample its top level (upsample mode)",
    "sample.temperature": "one value, or top,middle,bottom values (default 0.98,0.99,0.99)",
    "convert.help": (
        "convert published Jukebox weights (OpenAI .pth.tar or transformers) to a teacher"
    ),
    "convert.description": (
        "Write a teacher folder (vqvae/, bottom/, middle/, top/) from OpenAI's vqvae.pth.tar + "
        "prior_level_{0,1,2}.pth.tar (prior_level_0 is the bottom upsampler) or a transformers "
        "JukeboxModel folder. Nothing is downloaded; checkpoints are read with weights_only=True, "
        "memory-mapped, and written in streamed shards."
    ),
    "convert.model": (
        "released model (openai: default inferred from the top prior's shapes; hf: use its "
        "released hyperparameters instead of config.json's)"
    ),
    "convert.vocab": "Jukebox's name;id lists (v2_/v3_ file names pick the version); repeatable",
    "convert.dtype": (
        "cast floating weights (keep: as published; OpenAI's 5b priors are partly fp16)"
    ),
}


# ---------------------------------------------------------------------------------------------
# data


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make or inspect datasets")
    dsub = p.add_subparsers(dest="data_cmd", required=True)

    s = dsub.add_parser("synth", help="write the built-in generated dataset (no downloads)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n_songs", type=int, default=24)
    s.add_argument("--seconds", type=float, default=12.0)
    s.add_argument("--sample_rate", type=int, default=22050)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--artists", default=None, help="comma-separated artists (timbres); default: all of them"
    )
    s.add_argument(
        "--genres", default=None, help="comma-separated genres (styles); default: all of them"
    )

    c = dsub.add_parser("chorales", help="render Bach chorales with lyrics from music21's corpus")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--sample_rate", type=int, default=22050)
    c.add_argument("--limit", type=int, default=None, help="at most this many chorales")

    sc = dsub.add_parser("scan", help="check a folder of audio: usable files and skip reasons")
    sc.add_argument("data_dir")
    sc.add_argument("--metadata", default=None)
    sc.add_argument("--sample_rate", type=int, default=22050)
    sc.add_argument("--sample_length", type=int, default=16384)


def _run_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "synth":
        from teacher.data.synth import SynthConfig, write_synth_dataset

        names = {
            k: tuple(n.strip() for n in v.split(",") if n.strip())
            for k in ("artists", "genres")
            if (v := getattr(args, k)) is not None
        }
        cfg = SynthConfig(
            n_songs=args.n_songs,
            seconds=args.seconds,
            sample_rate=args.sample_rate,
            seed=args.seed,
            **names,
        )
        write_synth_dataset(args.out, cfg)  # logs its own summary
        return 0
    if args.data_cmd == "chorales":
        from teacher.data.chorales import write_chorales

        write_chorales(args.out, sample_rate=args.sample_rate, limit=args.limit)  # logs a summary
        return 0
    if args.data_cmd == "scan":
        from teacher.data.dataset import DataConfig, scan_audio

        cfg = DataConfig(
            root=args.data_dir,
            metadata=args.metadata,
            sample_rate=args.sample_rate,
            sample_length=args.sample_length,
        )
        log.info("%s", scan_audio(cfg).summary())
        return 0
    raise AssertionError(args.data_cmd)


# ---------------------------------------------------------------------------------------------
# train


def _add_train(sub: argparse._SubParsersAction) -> None:
    from teacher.train.cli import PRIOR_HELP, add_prior_args, add_vqvae_args

    p = sub.add_parser(
        "train",
        help="train a teacher model (single process; use `accelerate launch -m teacher.train` "
        "for several)",
    )
    tsub = p.add_subparsers(dest="stage", required=True)
    add_vqvae_args(tsub.add_parser("vqvae", help="train the hierarchical VQ-VAE"))
    add_prior_args(tsub.add_parser("prior", help=PRIOR_HELP))


def _run_train(args: argparse.Namespace) -> int:
    from teacher.train.cli import run

    out = run(args)
    log.info("model written to %s", out)
    return 0


# ---------------------------------------------------------------------------------------------
# reconstruct


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode audio at every VQ-VAE level")
    p.add_argument("inputs", nargs="+", help="audio files")
    p.add_argument("--model", required=True, help="VQ-VAE folder (config.json + safetensors)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max_seconds", type=float, default=None, help="only the first N seconds")


def _run_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from teacher.config import ConfigError
    from teacher.data.audio import load_audio, write_wav
    from teacher.vqvae import VQVAE
    from teacher.vqvae.losses import sc_db, spectral_convergence

    model = VQVAE.from_pretrained(args.model).eval()
    cfg = model.cfg
    hop = cfg.hop_lengths[-1]
    out = Path(args.out)  # created by the first file written
    for path in args.inputs:
        audio = load_audio(path, cfg.sample_rate, mono=True)  # (1, T)
        if args.max_seconds is not None:
            audio = audio[..., : int(args.max_seconds * cfg.sample_rate)]
        n = audio.shape[-1] // hop * hop
        if n == 0:
            raise ConfigError(f"{path} is shorter than one top-level code ({hop} samples)")
        x = torch.as_tensor(audio[..., :n], dtype=torch.float32).reshape(1, 1, n)
        stem = Path(path).stem
        with torch.no_grad():
            codes = model.encode(x)
            for level in range(cfg.levels):
                y = model.decode(codes[level : level + 1], start_level=level)
                dst = out / f"{stem}_level{level}_hop{cfg.hop_lengths[level]}.wav"
                write_wav(dst, y[0].numpy(), cfg.sample_rate)
                log.info(
                    "%s: SC %.1f dB -> %s",
                    stem,
                    float(sc_db(spectral_convergence(x, y)).mean()),
                    dst,
                )
    return 0


# ---------------------------------------------------------------------------------------------
# sample


def _add_sample(sub: argparse._SubParsersAction) -> None:
    from distill.pipeline import FAST_MODES
    from distill.speculative import DRAFT_DTYPES, DRAFTS
    from teacher.device import add_device_args

    p = sub.add_parser(
        "sample",
        help="generate songs with a teacher (VQ-VAE + top/middle/bottom priors)",
        description=_HELP["sample.description"],
    )
    p.add_argument("--mode", default="exact", choices=FAST_MODES, help=_HELP["sample.mode"])
    p.add_argument("--students", default=None, help=_HELP["sample.students"])
    p.add_argument("--level_modes", default=None, help=_HELP["sample.level_modes"])
    p.add_argument(
        "--gamma",
        default=None,
        help="speculative drafts per teacher pass (default 4 with incremental drafts, 6 with "
        "window drafts), or auto: chosen from the measured acceptance and costs, and windows "
        "where drafting was measured slower sampled by the teacher alone",
    )
    p.add_argument(
        "--draft",
        default="auto",
        choices=DRAFTS,
        help="how a categorical student drafts in speculative mode: incremental (its final "
        "stage stepped per draft), window (one student sample per window, read per round) or "
        "auto (window when a draft step costs a sizable part of a teacher step)",
    )
    p.add_argument(
        "--draft_dtype",
        default="auto",
        choices=DRAFT_DTYPES,
        help="the precision students draft in: auto (bf16 where native bf16 products pay: "
        "window drafts on AMX CPUs, CUDA), keep (the loaded one) or a dtype; the samples' "
        "distribution never depends on it",
    )
    p.add_argument(
        "--student_temperature", type=float, default=1.0, help="students' sampling temperature"
    )
    p.add_argument("--teacher", required=True, help="folder with vqvae/, top/, middle/, bottom/")
    p.add_argument("--artist", default=None)
    p.add_argument("--genre", default=None, help="a genre (several: comma-separated)")
    lyr = p.add_mutually_exclusive_group()
    lyr.add_argument("--lyrics", default=None, help="lyrics text")
    lyr.add_argument("--lyrics_file", default=None, help="UTF-8 lyrics file")
    p.add_argument("--seconds", type=float, default=20.0, help="song length (not with --codes)")
    p.add_argument("--out", required=True, help="output folder (WAVs, codes, labels.json)")
    p.add_argument("--prompt", default=None, help="audio to continue (continue mode)")
    p.add_argument("--prompt_seconds", type=float, default=None, help="default: all of it")
    p.add_argument("--codes", default=None, help=_HELP["sample.codes"])
    p.add_argument("--n_samples", type=int, default=1)
    p.add_argument("--temperature", default=None, help=_HELP["sample.temperature"])
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--levels", default=None, help="levels to sample, e.g. top or top,middle")
    p.add_argument(
        "--student_chunk_size",
        type=int,
        default=None,
        help="codes a student draws per call (default: sized to bound the memory)",
    )
    add_device_args(p)
    p.add_argument("--no_progress", action="store_true")


def _run_sample(args: argparse.Namespace) -> int:
    from distill.pipeline import FastJukebox, parse_students
    from distill.speculative import parse_gamma
    from teacher.config import ConfigError
    from teacher.generate.labels import load_lyrics
    from teacher.levels import level_index

    if args.prompt is not None and args.codes is not None:
        raise ConfigError("--prompt (continue) and --codes (upsample) exclude each other")
    gamma = parse_gamma(args.gamma)
    students = parse_students(args.students) if args.students else None
    jb = FastJukebox.from_pretrained(
        args.teacher, students=students, device=args.device, dtype=args.dtype
    )
    temperature = None
    if args.temperature is not None:
        try:
            temps = [float(v) for v in args.temperature.split(",")]
        except ValueError as err:
            raise ConfigError(f"--temperature: {err}") from None
        temperature = temps[0] if len(temps) == 1 else temps
    passed = ("artist", "top_k", "top_p", "seed", "mode", "level_modes", "student_temperature")
    passed += ("draft", "draft_dtype")
    passed += ("student_chunk_size",)
    common: dict[str, Any] = {k: getattr(args, k) for k in passed}  # flags taken as they are
    common.update(
        genre=[g.strip() for g in args.genre.split(",")] if args.genre else None,
        lyrics=load_lyrics(args.lyrics, args.lyrics_file),
        temperature=temperature,
        progress=not args.no_progress,
        gamma=gamma,
    )
    if args.levels is not None:
        common["levels"] = [v.strip() for v in args.levels.split(",") if v.strip()]
    if args.codes is not None:
        from teacher.io import load_tensors

        try:
            saved = load_tensors(args.codes)
        except ValueError as err:  # truncated or not safetensors: names the file
            raise ConfigError(f"--codes {err}") from None
        top = f"level{jb.levels - 1}"
        if top not in saved:
            raise ConfigError(f"{args.codes} holds no {top} codes (has {sorted(saved)})")
        if "levels" in common:
            top_i = jb.levels - 1
            if any(level_index(v, jb.levels) == top_i for v in common["levels"]):
                raise ConfigError("upsample mode samples below the given top level")
        result = jb.upsample(saved[top], **common)
    elif args.prompt is not None:
        result = jb.generate_from_audio(
            args.prompt,
            prompt_seconds=args.prompt_seconds,
            duration_seconds=args.seconds,
            n_samples=args.n_samples,
            **common,
        )
    else:
        result = jb.generate(duration_seconds=args.seconds, n_samples=args.n_samples, **common)
    for path in result.save(args.out):
        log.info("wrote %s", path)
    return 0


# ---------------------------------------------------------------------------------------------
# convert


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from teacher.presets import MODELS

    p = sub.add_parser(
        "convert", help=_HELP["convert.help"], description=_HELP["convert.description"]
    )
    p.add_argument("--from", dest="source", required=True, choices=("openai", "hf"))
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="openai: files or a folder; hf: a folder"
    )
    p.add_argument("--out", required=True, help="teacher folder to create")
    models, dtypes = tuple(sorted(MODELS)), ("keep", "float32", "float16", "bfloat16")
    p.add_argument("--model", default=None, choices=models, help=_HELP["convert.model"])
    pairs = {"nargs": 2, "action": "append", "default": [], "metavar": ("ARTIST_IDS", "GENRE_IDS")}
    p.add_argument("--vocab", **pairs, help=_HELP["convert.vocab"])
    p.add_argument("--dtype", default="keep", choices=dtypes, help=_HELP["convert.dtype"])
    p.add_argument("--max_shard_size", default="2GiB", help="largest weights file, e.g. 2GiB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _run_convert(args: argparse.Namespace) -> int:
    import torch

    from teacher.released.convert import (
        ConvertError,
        convert_openai,
        convert_transformers,
        parse_size,
    )

    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    # a ConvertError names the file and the tensor; nothing was left half-written
    common = dict(
        out=args.out,
        model=args.model,
        vocab_files=[tuple(pair) for pair in args.vocab],
        dtype=dtype,
        max_shard_bytes=parse_size(args.max_shard_size),
        overwrite=args.overwrite,
    )
    if args.source == "openai":
        result = convert_openai(args.paths, **common)
    else:
        if len(args.paths) != 1:
            raise ConvertError("--from hf takes one folder")
        result = convert_transformers(args.paths[0], **common)
    for name, part in result.parts.items():
        log.info(
            "%s: %d tensors, %.2f GB, %d files",
            name,
            part.tensors,
            part.bytes / 1e9,
            len(part.files),
        )
    return 0


# ---------------------------------------------------------------------------------------------
# distill


def _add_distill(sub: argparse._SubParsersAction) -> None:
    from distill.train import add_distill_args

    p = sub.add_parser(
        "distill",
        help="distil a teacher upsampler into a parallel student (single process; use "
        "`accelerate launch -m distill.train` for several)",
    )
    add_distill_args(p)


def _run_distill(args: argparse.Namespace) -> int:
    from distill.train import run

    out = run(args)
    log.info("%s written to %s", "dry-run plan" if args.dry_run else "student", out)
    return 0


# ---------------------------------------------------------------------------------------------
# eval


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from eval.evaluate import add_eval_args

    add_eval_args(
        sub.add_parser(
            "eval",
            help="evaluate teacher + students: report.html, report.md, metrics.json",
        )
    )


def _run_eval(args: argparse.Namespace) -> int:
    from eval.evaluate import run_eval

    return run_eval(args)


# ---------------------------------------------------------------------------------------------
# demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from eval.demo import add_demo_args

    add_demo_args(
        sub.add_parser(
            "demo",
            help="built-in data -> VQ-VAE -> priors -> students -> every mode -> report "
            "(re-running resumes)",
        )
    )


def _run_demo(args: argparse.Namespace) -> int:
    from eval.demo import run_from_args

    res = run_from_args(args)
    log.info("demo finished in %.1f min: report in %s", res.seconds / 60, res.out / "report")
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastjukebox",
        description="Jukebox-style music generation, made fast by distilled upsamplers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_train(sub)
    _add_reconstruct(sub)
    _add_sample(sub)
    _add_convert(sub)
    _add_distill(sub)
    _add_eval(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code. Errors meant for the user
    are one line and exit status 2 (``--debug``: with the traceback): ``run_main``."""
    handlers = {
        "data": _run_data,
        "train": _run_train,
        "reconstruct": _run_reconstruct,
        "sample": _run_sample,
        "convert": _run_convert,
        "distill": _run_distill,
        "eval": _run_eval,
        "demo": _run_demo,
    }
    return run_main(build_parser(), lambda args: handlers[args.command](args), argv)


if __name__ == "__main__":
    sys.exit(main())
