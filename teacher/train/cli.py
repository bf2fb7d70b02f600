"""Command line of the teacher trainers: ``python -m teacher.train vqvae|prior ...`` (also under
``accelerate launch``) and ``fastjukebox train``. Flag names follow the diffusers training
scripts so a user's muscle memory works (``--output_dir``, ``--train_batch_size``,
``--max_train_steps``, ``--checkpointing_steps``, ``--resume_from_checkpoint latest``, ...).

Output folder::

    OUTPUT_DIR/
      model/                 exported model (config.json + model.safetensors), refreshed at
                             every checkpoint and at the end
      checkpoints/checkpoint-STEP/
                             accelerate state (model/optimizer/scheduler/RNG, weights_only
                             loadable) + model/ + state.json (written last; marks it complete)
      metrics.jsonl          one JSON line per logged step
      train_args.json        the run configuration (+ for priors the data summary: files,
                             files without metadata, lyric characters transliterated/dropped)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from teacher.config import ConfigError
from teacher.console import run_main
from teacher.io import read_model_config
from teacher.levels import level_index
from teacher.presets import PRIOR_PRESETS, VQVAE_PRESETS, prior_preset
from teacher.train.loop import LR_SCHEDULERS, MIXED_PRECISION, REPORT_TO, TrainConfig
from teacher.train.prior import read_init_prior, train_prior
from teacher.train.vqvae import init_vqvae_config, train_vqvae
from teacher.vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The run flags every trainer shares (diffusers names and meanings)."""
    d = TrainConfig(output_dir="")
    p.add_argument("--output_dir", required=True, help="where checkpoints and the model go")
    p.add_argument("--train_batch_size", type=int, default=d.train_batch_size)
    p.add_argument("--gradient_accumulation_steps", type=int, default=d.gradient_accumulation_steps)
    p.add_argument("--learning_rate", type=float, default=d.learning_rate)
    p.add_argument("--adam_beta1", type=float, default=d.adam_beta1)
    p.add_argument("--adam_beta2", type=float, default=d.adam_beta2)
    p.add_argument("--adam_weight_decay", type=float, default=d.adam_weight_decay)
    p.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default=d.lr_scheduler)
    p.add_argument("--lr_warmup_steps", type=int, default=d.lr_warmup_steps)
    p.add_argument("--max_train_steps", type=int, default=d.max_train_steps)
    p.add_argument("--checkpointing_steps", type=int, default=d.checkpointing_steps)
    p.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=d.checkpoints_total_limit,
        help="keep at most this many checkpoints (0 keeps all)",
    )
    p.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='"latest" (fresh start when there is none) or a checkpoint folder',
    )
    p.add_argument("--mixed_precision", choices=MIXED_PRECISION, default=d.mixed_precision)
    p.add_argument("--max_grad_norm", type=float, default=d.max_grad_norm)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dataloader_num_workers", type=int, default=d.dataloader_num_workers)
    p.add_argument("--logging_steps", type=int, default=d.logging_steps)
    p.add_argument("--report_to", choices=REPORT_TO, default=d.report_to)
    p.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute each transformer block in the backward pass instead of keeping its "
        "activations (priors only: the VQ-VAE and the distilled students have none)",
    )


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def add_data_args(p: argparse.ArgumentParser, stereo_blend: bool = True) -> None:
    """The data flags every trainer shares: the audio folder, its metadata, the decoded-audio
    cache and (when the trainer reads stereo crops) the stereo blend."""
    p.add_argument("--data_dir", required=True, help="folder of audio files (+ metadata)")
    p.add_argument("--metadata", default=None, help="metadata JSONL/CSV (default: in data_dir)")
    if stereo_blend:
        p.add_argument("--no_aug_blend", action="store_true", help="fixed 0.5 stereo downmix")
    p.add_argument(
        "--data_cache",
        choices=("decoded", "none"),
        default="decoded",
        help="decode each audio file once into a memory-mapped cache (fastest) or seek every crop",
    )
    p.add_argument(
        "--cache_dir", default=None, help="decoded audio cache folder (default ~/.cache)"
    )


def data_config_from_args(args: argparse.Namespace, sample_rate: int, **fields: Any) -> Any:
    """The :class:`~teacher.data.dataset.DataConfig` of :func:`add_data_args`' flags at
    ``sample_rate`` (``fields`` set the rest, e.g. ``sample_length``, ``labels``)."""
    from teacher.data.dataset import DataConfig

    return DataConfig(
        root=args.data_dir,
        metadata=args.metadata,
        sample_rate=sample_rate,
        aug_blend=not getattr(args, "no_aug_blend", True),
        cache=args.data_cache,
        cache_dir=args.cache_dir,
        seed=args.seed,
        **fields,
    )


def add_init_from_arg(p: argparse.ArgumentParser, kind: str) -> None:
    """``--init_from DIR``: fine-tune the ``kind`` model folder ``DIR``."""
    p.add_argument(
        "--init_from",
        default=None,
        metavar="DIR",
        help=f"start from this {kind} model folder (fine-tuning: a converted teacher's part or "
        "a run's model/); the architecture comes from its config.json (--preset is refused, "
        "other architecture flags must agree), the training flags stay as given; "
        "--resume_from_checkpoint takes precedence",
    )


def check_init_flags(args: argparse.Namespace, values: dict[str, Any]) -> None:
    """With ``--init_from`` the architecture is the folder's: refuse ``--preset`` and any
    architecture flag of ``values`` (flag name -> the folder's value) given another value."""
    folder = args.init_from
    if args.preset is not None:
        raise ConfigError(
            f"--preset {args.preset} and --init_from {folder} exclude each other: the "
            f"architecture comes from {Path(folder) / 'config.json'}"
        )
    for name, value in values.items():
        given = getattr(args, name)
        if given is not None and given != value:
            raise ConfigError(
                f"--{name} {given} conflicts with --init_from {folder}, whose model has "
                f"{name} {value}: fine-tuning keeps the folder's architecture (drop --{name})"
            )


def add_vqvae_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``train vqvae``."""
    add_data_args(p)
    p.add_argument(
        "--preset",
        choices=sorted(VQVAE_PRESETS),
        default=None,
        help="VQ-VAE size preset (default small; not with --init_from)",
    )
    add_init_from_arg(p, "VQ-VAE")
    p.add_argument("--sample_rate", type=int, default=None, help="override the preset's rate")
    p.add_argument(
        "--sample_length", type=int, default=None, help="crop in samples (multiple of top hop)"
    )
    p.add_argument("--l_bins", type=int, default=None, help="codebook size override")
    add_train_args(p)


def vqvae_configs_from_args(args: argparse.Namespace) -> tuple[VQVAEConfig, Any, TrainConfig]:
    """Build (model, data, run) configs from parsed ``train vqvae`` arguments (with
    ``--init_from`` the model config is the folder's, ``--sample_length`` the training crop)."""
    if getattr(args, "init_from", None) is not None:
        model_cfg = init_vqvae_config(args.init_from, args.sample_length)
        check_init_flags(args, {"sample_rate": model_cfg.sample_rate, "l_bins": model_cfg.l_bins})
    else:
        model_cfg = VQVAE_PRESETS[args.preset or "small"]()
        overrides = {
            k: getattr(args, k)
            for k in ("sample_rate", "sample_length", "l_bins")
            if getattr(args, k) is not None
        }
        model_cfg = dataclasses.replace(model_cfg, **overrides).validate()
    data_cfg = data_config_from_args(
        args, model_cfg.sample_rate, sample_length=model_cfg.sample_length
    )
    return model_cfg, data_cfg, train_config_from_args(args)


PRIOR_HELP = (
    "train one prior (top, middle or bottom) on the codes of a trained VQ-VAE "
    "(default --codes cache: the files are encoded once into a code cache, the faster way)"
)


def add_prior_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``train prior`` (shared by ``python -m teacher.train`` and ``fastjukebox``)."""
    from teacher.data.codes import CODES_MODES, DEFAULT_CODES_MODE

    p.add_argument(
        "--level", required=True, help="top, middle or bottom (or a level index, 0 = bottom)"
    )
    p.add_argument("--vqvae", required=True, help="trained VQ-VAE folder (frozen; gives the codes)")
    add_data_args(p)
    p.add_argument(
        "--preset",
        choices=PRIOR_PRESETS,
        default=None,
        help="prior size preset (default small; not with --init_from); the level decides the "
        "conditioning (top: labels + timing + lyrics when --n_tokens > 0; upsamplers: upper "
        "codes + artist/genre labels)",
    )
    add_init_from_arg(p, "prior")
    p.add_argument("--n_ctx", type=int, default=None, help="codes per window (preset default)")
    p.add_argument(
        "--n_tokens",
        type=int,
        default=None,
        help="lyric characters per window, top prior only; 0 = no lyrics (preset default)",
    )
    p.add_argument(
        "--lyric_version",
        choices=("v2", "v3"),
        default=None,
        help="lyric tokenizer and name normalisation (default v3; with --init_from the model's)",
    )
    p.add_argument(
        "--codes",
        choices=CODES_MODES,
        default=DEFAULT_CODES_MODE,
        help="'cache' (default; measured faster on CPU by benchmarks/bench_codes.py): encode "
        "every file once into a code cache and train on windows of it; 'on_the_fly': encode "
        "each crop with the VQ-VAE inside every step (keeps the random stereo blend)",
    )
    p.add_argument(
        "--code_cache_dir",
        default=None,
        help="code cache folder (default: <cache_dir>/codes/<fingerprint> or "
        "~/.cache/fastjukebox/codes/<fingerprint>); rebuilt only when the VQ-VAE or the "
        "audio changes",
    )
    add_train_args(p)


def prior_configs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`train_prior` from parsed ``train prior`` arguments."""
    from teacher.data.labels import LabelConfig

    vq_path = Path(args.vqvae)
    vq_cfg = read_model_config(vq_path, VQVAEConfig, "VQ-VAE")
    level = level_index(args.level, vq_cfg.levels)
    init = None
    if getattr(args, "init_from", None) is not None:
        init = read_init_prior(args.init_from, level, vq_path, vq_cfg)
        arch = {"n_ctx": init.cfg.n_ctx, "n_tokens": init.cfg.n_tokens}
        check_init_flags(args, {**arch, "lyric_version": init.version})
        prior_cfg, version = init.cfg, init.version
    else:
        version = args.lyric_version or "v3"
        prior_cfg = prior_preset(
            args.preset or "small", level, vq_cfg, args.n_ctx, args.n_tokens, version
        )
    data_cfg = data_config_from_args(
        args,
        vq_cfg.sample_rate,
        sample_length=prior_cfg.sample_length,
        labels=LabelConfig(lyric_version=version),
    )
    return dict(
        prior_cfg=prior_cfg,
        vqvae_dir=vq_path,
        data_cfg=data_cfg,
        cfg=train_config_from_args(args),
        codes_mode=args.codes,
        code_cache_dir=args.code_cache_dir,
        init_from=init,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m teacher.train", description="Train a teacher model."
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    add_vqvae_args(sub.add_parser("vqvae", help="train the hierarchical VQ-VAE"))
    add_prior_args(sub.add_parser("prior", help=PRIOR_HELP))
    return parser


def run(args: argparse.Namespace) -> Path:
    """Run the stage named by parsed arguments (shared by the console script)."""
    if args.stage == "vqvae":
        if getattr(args, "gradient_checkpointing", False):
            raise ConfigError(
                "--gradient_checkpointing: the VQ-VAE has no transformer blocks to recompute "
                "(only the priors do: `train prior`)"
            )
        return train_vqvae(*vqvae_configs_from_args(args), init_from=args.init_from)
    if args.stage == "prior":
        return train_prior(**prior_configs_from_args(args))
    raise ConfigError(f"unknown stage {args.stage}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m teacher.train``: exit status 0, or 2 with one error line."""
    return run_main(build_parser(), run, argv, "model")
