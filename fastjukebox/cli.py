"""The ``fastjukebox`` console script: one entry point, one subcommand per task.

Heavy imports (torch, accelerate, librosa) happen inside the subcommands so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("fastjukebox")


def setup_logging(level: int = logging.INFO) -> None:
    """Rich console logging; quiet on non-main ranks of a distributed run."""
    from rich.logging import RichHandler

    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )
    # accelerate logs every file of every checkpoint at INFO
    logging.getLogger("accelerate").setLevel(logging.WARNING)


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
        from teacher.synth import SynthConfig, write_synth_dataset

        cfg = SynthConfig(
            n_songs=args.n_songs, seconds=args.seconds, sample_rate=args.sample_rate, seed=args.seed
        )
        write_synth_dataset(args.out, cfg)  # logs its own summary
        return 0
    if args.data_cmd == "chorales":
        from teacher.chorales import write_chorales

        write_chorales(args.out, sample_rate=args.sample_rate, limit=args.limit)  # logs a summary
        return 0
    if args.data_cmd == "scan":
        from teacher.data import DataConfig, scan_audio

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
    from teacher.train import PRIOR_HELP, add_prior_args, add_vqvae_args

    p = sub.add_parser(
        "train",
        help="train a teacher model (single process; use `accelerate launch -m teacher.train` "
        "for several)",
    )
    tsub = p.add_subparsers(dest="stage", required=True)
    add_vqvae_args(tsub.add_parser("vqvae", help="train the hierarchical VQ-VAE"))
    add_prior_args(tsub.add_parser("prior", help=PRIOR_HELP))


def _run_train(args: argparse.Namespace) -> int:
    from teacher.train import run

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

    from teacher.audio import load_audio, write_wav
    from teacher.losses import sc_db, spectral_convergence
    from teacher.vqvae import VQVAE

    model = VQVAE.from_pretrained(args.model).eval()
    cfg = model.cfg
    hop = cfg.hop_lengths[-1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.inputs:
        audio = load_audio(path, cfg.sample_rate, mono=True)  # (1, T)
        if args.max_seconds is not None:
            audio = audio[..., : int(args.max_seconds * cfg.sample_rate)]
        n = audio.shape[-1] // hop * hop
        if n == 0:
            log.error("%s is shorter than one top-level code (%d samples)", path, hop)
            return 2
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastjukebox",
        description="Jukebox-style music generation, made fast by distilled upsamplers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    _add_train(sub)
    _add_reconstruct(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    from teacher.audio import AudioError
    from teacher.config import ConfigError
    from teacher.data import DataError

    setup_logging()
    args = build_parser().parse_args(argv)
    handlers = {"data": _run_data, "train": _run_train, "reconstruct": _run_reconstruct}
    try:
        return handlers[args.command](args)
    except (ConfigError, DataError, AudioError, FileNotFoundError) as err:
        # errors meant for the user: one line, no traceback, nothing half-written
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
