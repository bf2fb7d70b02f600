"""The released Jukebox models as configs: exact hyperparameters of OpenAI's checkpoints.

Each preset is a plain function returning the config whose module tree has the same tensor
names and shapes as OpenAI's ``*.pth.tar`` (``jukebox/hparams.py`` + ``make_models.py``), so
:mod:`teacher.convert` can check a checkpoint tensor by tensor before writing anything.

Levels count from the bottom, as everywhere in this package: our level 0 is the bottom
upsampler (OpenAI's ``prior_level_0.pth.tar``, hop 8), level 2 the top prior
(``prior_level_2.pth.tar``, hop 128). transformers' port counts from the top instead.

Label vocabularies differ per model (``jukebox/sample.py``): the upsamplers and the 5b/5b_lyrics
top priors use the ``v2`` artist/genre/lyric sets (``y_bins = (120 genres, 4111 artists)``,
``t_bins`` 128, 5 genre slots, 80 lyric symbols); the 1b_lyrics top prior uses ``v3``
(``(604, 7898)``, ``t_bins`` 64, 1 genre slot, 79 lyric symbols). :data:`MODELS` mirrors
``make_models.MODELS``; :func:`memory_table` gives what a model needs on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from teacher.config import ConfigError, VQVAEConfig, jukebox_vqvae
from teacher.prior.config import (
    LabelConditionerConfig,
    LyricsConfig,
    PriorConfig,
    UpsamplerConditionerConfig,
)
from teacher.prior.transformer import TransformerConfig

log = logging.getLogger(__name__)

__all__ = [
    "LEVEL_NAMES",
    "MODELS",
    "MemoryRow",
    "ModelConfigs",
    "format_memory_table",
    "jukebox_vqvae",
    "label_version",
    "memory_table",
    "model_configs",
    "parameter_count",
    "prior_1b_lyrics",
    "prior_5b",
    "prior_5b_lyrics",
    "upsampler",
]

#: our level -> the teacher folder's sub-folder (and OpenAI's ``prior_level_<level>``)
LEVEL_NAMES = {0: "bottom", 1: "middle", 2: "top"}

_N_CTX_UPSAMPLER = 8192
_N_CTX_5B = 8192
_N_CTX_1B = 6144


def _labels_v2(include_timing: bool, min_duration: float = 0.0) -> LabelConditionerConfig:
    """hparams ``labels``: y_bins (120, 4111), t_bins 128, max_bow_genre_size 5."""
    return LabelConditionerConfig(
        artist_bins=4111,
        genre_bins=120,
        max_genres=5,
        include_timing=include_timing,
        t_bins=128,
        min_duration=min_duration,
        max_duration=600.0,
    )


def _labels_v3(min_duration: float) -> LabelConditionerConfig:
    """hparams ``labels_v3``: y_bins (604, 7898), t_bins 64, max_bow_genre_size 1."""
    return LabelConditionerConfig(
        artist_bins=7898,
        genre_bins=604,
        max_genres=1,
        include_timing=True,
        t_bins=64,
        min_duration=min_duration,
        max_duration=600.0,
    )


def upsampler(level: int) -> PriorConfig:
    """OpenAI's ``upsampler_level_{0,1}`` (``prior_level_{0,1}.pth.tar``): level 0 = bottom
    (hop 8), 1 = middle (hop 32); shared by all three released models.

    Width 1920, depth 72, 1 head, attn_order 2, blocks 128, init_scale 0.4, n_ctx 8192;
    conditioner width 1024, depth 16, growth 3, cycle 8 (``cond_res_scale`` only at level 1);
    v2 labels without timing (the upper codes carry the position).
    """
    if level not in (0, 1):
        raise ConfigError(f"released upsamplers are levels 0 (bottom) and 1 (middle), got {level}")
    n_ctx = _N_CTX_UPSAMPLER
    return PriorConfig(
        level=level,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=1920, depth=72, heads=1, n_ctx=n_ctx, attn_order=2, blocks=128, init_scale=0.4
        ),
        # upsamplers never set min/max_duration (hparams default None): unused without timing
        labels=_labels_v2(include_timing=False),
        conditioner=UpsamplerConditionerConfig(
            width=1024,
            depth=16,
            m_conv=1.0,
            dilation_growth_rate=3,
            dilation_cycle=8,
            res_scale=level == 1,
        ),
    ).validate()


def prior_5b() -> PriorConfig:
    """OpenAI's ``prior_5b`` (``5b/prior_level_2.pth.tar``): no lyrics, v2 labels with timing.

    Width 4800, depth 72, 8 heads, attn_order 2, blocks 128, init_scale 0.1, n_ctx 8192,
    durations [60, 600) s, ``merged_decoder`` (untied output head). Released with fp16 weights.
    """
    n_ctx = _N_CTX_5B
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=4800, depth=72, heads=8, n_ctx=n_ctx, attn_order=2, blocks=128, init_scale=0.1
        ),
        labels=_labels_v2(include_timing=True, min_duration=60.0),
        merged_decoder=True,
    ).validate()


def prior_5b_lyrics() -> PriorConfig:
    """OpenAI's ``prior_5b_lyrics`` (``5b_lyrics/prior_level_2.pth.tar``): a separate lyric
    encoder feeding cross-attention every 10th layer (attn_order 10), v2 labels and lyrics.

    Width 4800, depth 79, 8 heads, blocks 128, init_scale 0.1, n_ctx 8192, durations
    [23.8, 600) s, ``merged_decoder``; 512 lyric tokens of 80 symbols; lyric encoder width 1280,
    depth 18, 4 heads, attn_order 2, blocks 32, init_scale 0.7; ``prime_loss_fraction`` 0.4;
    alignment head 2 of layer 68.
    """
    n_ctx, n_tokens = _N_CTX_5B, 512
    encoder = TransformerConfig(
        width=1280, depth=18, heads=4, n_ctx=n_tokens, attn_order=2, blocks=32, init_scale=0.7
    )
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=4800,
            depth=79,
            heads=8,
            n_ctx=n_ctx,
            attn_order=10,
            blocks=128,
            init_scale=0.1,
            encoder_dims=n_tokens,
        ),
        labels=_labels_v2(include_timing=True, min_duration=23.8),
        lyrics=LyricsConfig(
            style="encoder",
            n_tokens=n_tokens,
            n_vocab=80,
            loss_fraction=0.4,
            encoder=encoder,
            alignment_layer=68,
            alignment_head=2,
        ),
        merged_decoder=True,
    ).validate()


def prior_1b_lyrics() -> PriorConfig:
    """OpenAI's ``prior_1b_lyrics`` (``1b_lyrics/prior_level_2.pth.tar``): one sequence
    ``[384 lyric chars | 6144 codes]`` (``single_enc_dec``) with prime attention, v3 labels.

    Width 2048, depth 72, 2 heads, attn_order 12, blocks 64, init_scale 0.2, durations
    [17.84, 600) s, tied output head (``merged_decoder`` False); 79 lyric symbols;
    ``prime_loss_fraction`` 0.4; alignment head 0 of layer 63. The transformer's window is
    6144 + 384 = 6528 positions (block_ctx 102).
    """
    n_ctx, n_tokens = _N_CTX_1B, 384
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=2048,
            depth=72,
            heads=2,
            n_ctx=n_ctx + n_tokens,
            attn_order=12,
            blocks=64,
            init_scale=0.2,
            prime_len=n_tokens,
        ),
        labels=_labels_v3(min_duration=17.84),
        lyrics=LyricsConfig(
            style="single",
            n_tokens=n_tokens,
            n_vocab=79,
            loss_fraction=0.4,
            alignment_layer=63,
            alignment_head=0,
        ),
    ).validate()


#: ``make_models.MODELS``: (VQ-VAE, bottom upsampler, middle upsampler, top prior) builders
MODELS: dict[str, tuple[Callable[[], VQVAEConfig | PriorConfig], ...]] = {
    "5b": (jukebox_vqvae, partial(upsampler, 0), partial(upsampler, 1), prior_5b),
    "5b_lyrics": (jukebox_vqvae, partial(upsampler, 0), partial(upsampler, 1), prior_5b_lyrics),
    "1b_lyrics": (jukebox_vqvae, partial(upsampler, 0), partial(upsampler, 1), prior_1b_lyrics),
}


@dataclass(frozen=True)
class ModelConfigs:
    """All configs of one released model.

    Attributes:
        name: a key of :data:`MODELS`.
        vqvae: the VQ-VAE.
        priors: per level, bottom first (``priors[2]`` is the top prior).
    """

    name: str
    vqvae: VQVAEConfig
    priors: tuple[PriorConfig, ...]

    @property
    def top(self) -> PriorConfig:
        return self.priors[-1]

    def vocab_version(self, level: int) -> str:
        """The artist/genre/lyric set of the prior at ``level`` (``"v2"`` or ``"v3"``)."""
        return label_version(self.priors[level])


def model_configs(name: str) -> ModelConfigs:
    """The configs of a released model: ``"1b_lyrics"``, ``"5b"`` or ``"5b_lyrics"``."""
    if name not in MODELS:
        raise ConfigError(f"unknown Jukebox model {name!r}; expected one of {sorted(MODELS)}")
    vqvae, *priors = (make() for make in MODELS[name])
    return ModelConfigs(name, vqvae.validate(), tuple(priors))


def label_version(cfg: PriorConfig) -> str:
    """``"v3"`` for a prior trained on the v3 sets (79 lyric symbols or 7898 artists), else
    ``"v2"`` (the released upsamplers and 5b/5b_lyrics top priors)."""
    if cfg.lyrics is not None:
        return "v3" if cfg.lyrics.n_vocab == 79 else "v2"
    if cfg.labels is not None and cfg.labels.artist_bins == 7898:
        return "v3"
    return "v2"


# ---------------------------------------------------------------------------------------------
# sizes


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


def format_memory_table(names: tuple[str, ...] = ("1b_lyrics", "5b", "5b_lyrics")) -> str:
    """A markdown table of :func:`memory_table` for ``names`` (GiB; upsamplers and VQ-VAE are
    shared, so they appear once)."""
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


if __name__ == "__main__":  # python -m teacher.presets: the README's table
    import sys

    sys.stdout.write(format_memory_table() + "\n")
