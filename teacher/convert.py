"""Weight conversion into our teacher models.

The transformers port of the Jukebox VQ-VAE (``JukeboxVQVAE``, transformers
``models/deprecated/jukebox``) to our :class:`~teacher.vqvae.VQVAE`, whose keys are OpenAI's,
and of its priors (``JukeboxPrior``, see the table above :func:`prior_from_transformers_state_dict`)
to our :class:`~teacher.prior.model.Prior`.
The port renamed OpenAI's ``nn.Sequential`` indices into named lists; this module maps them back:

    transformers                                                   ours (= OpenAI)
    encoders.L.level_blocks.l.downsample_block.<2i>.*              ...model.<i>.0.*
    encoders.L.level_blocks.l.downsample_block.<2i+1>.resnet_block.<d>.conv1d_{1,2}.*
                                                                   ...model.<i>.1.model.<d>.model.{1,3}.*
    encoders.L.level_blocks.l.proj_out.*                           ...model.<down_t>.*
    decoders.L.level_blocks.l.proj_in.*                            ...model.0.*
    decoders.L.level_blocks.l.upsample_block.<2i>.resnet_block.<d>.conv1d_{1,2}.*
                                                                   ...model.<i+1>.0.model.<d>.model.{1,3}.*
    decoders.L.level_blocks.l.upsample_block.<2i+1>.*              ...model.<i+1>.1.*
    decoders.L.out.*                                               decoders.L.out.*
    bottleneck.level_blocks.L.codebook                             bottleneck.level_blocks.L.k

Whole teachers from the published weights (``fastjukebox convert``): :func:`convert_openai`
reads OpenAI's ``vqvae.pth.tar`` + ``prior_level_{0,1,2}.pth.tar`` (configs from
:mod:`teacher.presets`), :func:`convert_transformers` a transformers ``JukeboxModel`` folder;
both check every tensor against the config before writing, stream the weights into sharded
safetensors (see the memory notes below) and write the teacher folder atomically. Errors are
:class:`ConvertError`, naming the file and the tensor.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import mmap
import os
import pickle
import re
import struct
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from teacher.config import VQVAEConfig
from teacher.io import (
    SAFETENSORS_DTYPES,
    WEIGHTS_FILE,
    atomic_dir,
    atomic_write_json,
    read_json,
    save_tensors_sharded,
)
from teacher.labels import UNKNOWN, VOCAB_FILE, Vocab
from teacher.presets import LEVEL_NAMES, MODELS, ModelConfigs, label_version, model_configs
from teacher.prior.config import (
    LabelConditionerConfig,
    LyricsConfig,
    PriorConfig,
    UpsamplerConditionerConfig,
    save_prior_config,
)
from teacher.prior.transformer import TransformerConfig
from teacher.text import LyricTokenizer

log = logging.getLogger(__name__)

_CONV = {"conv1d_1": "1", "conv1d_2": "3"}

_ENC_STEP = re.compile(r"^(encoders\.\d+\.level_blocks\.\d+)\.downsample_block\.(\d+)\.(.+)$")
_ENC_OUT = re.compile(r"^(encoders\.\d+\.level_blocks\.\d+)\.proj_out\.(weight|bias)$")
_DEC_STEP = re.compile(r"^(decoders\.\d+\.level_blocks\.\d+)\.upsample_block\.(\d+)\.(.+)$")
_DEC_IN = re.compile(r"^(decoders\.\d+\.level_blocks\.\d+)\.proj_in\.(weight|bias)$")
_DEC_OUT = re.compile(r"^decoders\.\d+\.out\.(weight|bias)$")
_CODEBOOK = re.compile(r"^(bottleneck\.level_blocks\.\d+)\.codebook$")
_RES = re.compile(r"^resnet_block\.(\d+)\.(conv1d_[12])\.(weight|bias)$")
_PARAM = re.compile(r"^(weight|bias)$")


def _resnet_key(rest: str, key: str) -> str:
    m = _RES.match(rest)
    if m is None:
        raise KeyError(f"unexpected transformers JukeboxVQVAE key {key!r}")
    depth, conv, param = m.groups()
    return f"model.{depth}.model.{_CONV[conv]}.{param}"


def vqvae_from_transformers_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a transformers ``JukeboxVQVAE`` state dict to ours (OpenAI's key names).

    Accepts the VQ-VAE's own state dict or a whole ``JukeboxModel`` one (keys under
    ``vqvae.``; the priors' keys are then ignored). Tensors are shared, not copied. The result
    has no EMA buffers: :meth:`VQVAE.load_state_dict` rebuilds them from the codebooks (see
    ``teacher/quantizer.py``). Raises ``KeyError`` on a key it does not know.
    """
    if any(k.startswith("vqvae.") for k in state_dict):
        state_dict = {
            k[len("vqvae.") :]: v for k, v in state_dict.items() if k.startswith("vqvae.")
        }

    # the encoder's output projection sits after its down steps: index = number of steps
    down_steps: dict[str, int] = {}
    for key in state_dict:
        m = _ENC_STEP.match(key)
        if m is not None:
            prefix, j = m.group(1), int(m.group(2))
            down_steps[prefix] = max(down_steps.get(prefix, 0), j // 2 + 1)

    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if m := _ENC_STEP.match(key):
            prefix, j, rest = m.group(1), int(m.group(2)), m.group(3)
            if j % 2 == 0 and _PARAM.match(rest):
                new = f"{prefix}.model.{j // 2}.0.{rest}"
            else:
                new = f"{prefix}.model.{j // 2}.1.{_resnet_key(rest, key)}"
        elif m := _ENC_OUT.match(key):
            prefix = m.group(1)
            new = f"{prefix}.model.{down_steps.get(prefix, 0)}.{m.group(2)}"
        elif m := _DEC_IN.match(key):
            new = f"{m.group(1)}.model.0.{m.group(2)}"
        elif m := _DEC_STEP.match(key):
            prefix, j, rest = m.group(1), int(m.group(2)), m.group(3)
            if j % 2 == 0:
                new = f"{prefix}.model.{j // 2 + 1}.0.{_resnet_key(rest, key)}"
            elif _PARAM.match(rest):
                new = f"{prefix}.model.{j // 2 + 1}.1.{rest}"
            else:
                raise KeyError(f"unexpected transformers JukeboxVQVAE key {key!r}")
        elif _DEC_OUT.match(key):
            new = key
        elif m := _CODEBOOK.match(key):
            new = f"{m.group(1)}.k"
        else:
            raise KeyError(f"unexpected transformers JukeboxVQVAE key {key!r}")
        out[new] = value
    return out


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def vqvae_config_from_transformers(hf_cfg: Any, sample_rate: int | None = None) -> VQVAEConfig:
    """Our :class:`VQVAEConfig` for a transformers ``JukeboxVQVAEConfig`` (object or dict).

    The port always reverses the decoder dilations and has no loss settings; those keep our
    (Jukebox) defaults. ``sample_rate`` defaults to the config's ``sampling_rate`` if it has one
    (the VQ-VAE sub-config usually does not), else 44100.
    """
    levels = int(_get(hf_cfg, "levels"))
    multipliers = _get(hf_cfg, "multipliers") or [1] * levels
    cycle = _get(hf_cfg, "res_dilation_cycle")
    sr = sample_rate or _get(hf_cfg, "sampling_rate") or 44100
    return VQVAEConfig(
        sample_rate=int(sr),
        channels=int(_get(hf_cfg, "conv_input_shape", 1)),
        sample_length=int(_get(hf_cfg, "sample_length")),
        levels=levels,
        downs_t=tuple(int(v) for v in _get(hf_cfg, "res_downs_t")),
        strides_t=tuple(int(v) for v in _get(hf_cfg, "res_strides_t")),
        emb_width=int(_get(hf_cfg, "embed_dim")),
        l_bins=int(_get(hf_cfg, "nb_discrete_codes")),
        mu=float(_get(hf_cfg, "lmu", 0.99)),
        width=int(_get(hf_cfg, "res_conv_width")),
        depth=int(_get(hf_cfg, "res_conv_depth")),
        m_conv=float(_get(hf_cfg, "res_convolution_multiplier", 1)),
        dilation_growth_rate=int(_get(hf_cfg, "res_dilation_growth_rate")),
        dilation_cycle=None if cycle is None else int(cycle),
        multipliers=tuple(int(v) for v in multipliers),
        reverse_decoder_dilation=True,
        zero_out=bool(_get(hf_cfg, "zero_out", False)),
        res_scale=bool(_get(hf_cfg, "conv_res_scale", False)),
        commit=float(_get(hf_cfg, "commit", 0.02)),
    ).validate()


# ---------------------------------------------------------------------------------------------
# priors
#
# transformers' ``JukeboxPrior`` holds OpenAI's prior under new names; ours are OpenAI's:
#
#   transformers                                          ours (= OpenAI)
#   prior.embed_tokens.weight                             prior.x_emb.weight
#   prior.fc_proj_out.weight                              prior.x_out.weight
#   prior.pos_emb.pos_emb, prior.start_token              (same)
#   {prior,encoder}.transformer._attn_mods.i.attn.{c_attn,c_proj,c_enc_kv}.{weight,bias}
#                                                         {prior,prime_prior}.transformer._attn_mods.i.attn.*.{w,b}
#   ..._attn_mods.i.layer_norm_{0,1}.*                    ..._attn_mods.i.ln_{0,1}.*
#   ..._attn_mods.i.mlp.{c_fc,c_proj}.{weight,bias}       ..._attn_mods.i.mlp.*.{w,b}
#   encoder.{embed_tokens.weight,pos_emb.pos_emb,start_token}
#                                                         prime_prior.{x_emb.weight,pos_emb.pos_emb,start_token}
#   encoder.proj_in.{weight,bias}                         prime_state_proj.{w,b}
#   encoder.final_layer_norm.*                            prime_state_ln.*
#   encoder.lm_head.weight                                prime_x_out.weight
#   metadata_embedding.{bow_genre,artist}_emb.weight      y_emb.{bow_genre,artist}_emb.emb.weight
#   metadata_embedding.{total_length,absolute_pos,relative_pos}_emb.emb.weight
#                                                         y_emb.*_emb.emb.weight
#   conditioner_blocks.embed_tokens.weight                conditioner_blocks.0.x_emb.weight
#   conditioner_blocks.upsampler.proj_in.*                conditioner_blocks.0.cond.model.0.*
#   conditioner_blocks.upsampler.upsample_block.<2i>.resnet_block.<d>.conv1d_{1,2}.*
#                                                         conditioner_blocks.0.cond.model.<i+1>.0.blocks.<d>.model.{1,3}.*
#   conditioner_blocks.upsampler.upsample_block.<2i+1>.*  conditioner_blocks.0.cond.model.<i+1>.1.*
#   conditioner_blocks.layer_norm.*                       conditioner_blocks.0.ln.*
#
# transformers counts prior levels from the top (its level 0 is our top, ``levels - 1``).

#: transformers' attention pattern names -> the reference's attn_order
HF_ATTENTION_PATTERNS = {
    "full_dense_attention": 0,
    "raw_column_previous_row_attention": 2,
    "large_separated_enc_dec_w_lyrics": 10,
    "enc_dec_with_lyrics": 12,
}

_WB = {"weight": "w", "bias": "b"}
_HF_BLOCK = re.compile(r"^(prior|encoder)\.transformer\._attn_mods\.(\d+)\.(.+)$")
_HF_BLOCK_CONV = re.compile(
    r"^(attn\.(?:c_attn|c_proj|c_enc_kv)|mlp\.(?:c_fc|c_proj))\.(weight|bias)$"
)
_HF_BLOCK_LN = re.compile(r"^layer_norm_([01])\.(weight|bias)$")
_HF_META = re.compile(r"^metadata_embedding\.(bow_genre_emb|artist_emb)\.weight$")
_HF_RANGE = re.compile(
    r"^metadata_embedding\.(total_length_emb|absolute_pos_emb|relative_pos_emb)\.emb\.weight$"
)
_HF_COND_STEP = re.compile(r"^conditioner_blocks\.upsampler\.upsample_block\.(\d+)\.(.+)$")
_HF_COND_RES = re.compile(r"^resnet_block\.(\d+)\.conv1d_([12])\.(weight|bias)$")
_HF_FIXED = {
    "prior.embed_tokens.weight": "prior.x_emb.weight",
    "prior.fc_proj_out.weight": "prior.x_out.weight",
    "prior.pos_emb.pos_emb": "prior.pos_emb.pos_emb",
    "prior.start_token": "prior.start_token",
    "encoder.embed_tokens.weight": "prime_prior.x_emb.weight",
    "encoder.pos_emb.pos_emb": "prime_prior.pos_emb.pos_emb",
    "encoder.start_token": "prime_prior.start_token",
    "encoder.proj_in.weight": "prime_state_proj.w",
    "encoder.proj_in.bias": "prime_state_proj.b",
    "encoder.final_layer_norm.weight": "prime_state_ln.weight",
    "encoder.final_layer_norm.bias": "prime_state_ln.bias",
    "encoder.lm_head.weight": "prime_x_out.weight",
    "conditioner_blocks.embed_tokens.weight": "conditioner_blocks.0.x_emb.weight",
    "conditioner_blocks.upsampler.proj_in.weight": "conditioner_blocks.0.cond.model.0.weight",
    "conditioner_blocks.upsampler.proj_in.bias": "conditioner_blocks.0.cond.model.0.bias",
    "conditioner_blocks.layer_norm.weight": "conditioner_blocks.0.ln.weight",
    "conditioner_blocks.layer_norm.bias": "conditioner_blocks.0.ln.bias",
}


def _prior_key(key: str) -> str:
    if key in _HF_FIXED:
        return _HF_FIXED[key]
    if m := _HF_BLOCK.match(key):
        owner, i, rest = m.groups()
        owner = "prior" if owner == "prior" else "prime_prior"
        if c := _HF_BLOCK_CONV.match(rest):
            rest = f"{c.group(1)}.{_WB[c.group(2)]}"
        elif c := _HF_BLOCK_LN.match(rest):
            rest = f"ln_{c.group(1)}.{c.group(2)}"
        else:
            raise KeyError(f"unexpected transformers JukeboxPrior key {key!r}")
        return f"{owner}.transformer._attn_mods.{i}.{rest}"
    if m := _HF_META.match(key):
        return f"y_emb.{m.group(1)}.emb.weight"
    if m := _HF_RANGE.match(key):
        return f"y_emb.{m.group(1)}.emb.weight"
    if m := _HF_COND_STEP.match(key):
        j, rest = int(m.group(1)), m.group(2)
        step = f"conditioner_blocks.0.cond.model.{j // 2 + 1}"
        if j % 2 == 0 and (r := _HF_COND_RES.match(rest)):
            d, conv, param = r.groups()
            return f"{step}.0.blocks.{d}.model.{_CONV['conv1d_' + conv]}.{param}"
        if j % 2 == 1 and _PARAM.match(rest):
            return f"{step}.1.{rest}"
    raise KeyError(f"unexpected transformers JukeboxPrior key {key!r}")


def prior_state_dict_from_transformers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a transformers ``JukeboxPrior`` state dict to ours (OpenAI's key names).

    Tensors are shared, not copied. Raises ``KeyError`` on a key it does not know.
    """
    return {_prior_key(k): v for k, v in state_dict.items()}


def _transformer_config_from_transformers(
    hf_cfg: Any, n_ctx: int, prime_len: int | None = None, encoder_dims: int | None = None
) -> TransformerConfig:
    pattern = _get(hf_cfg, "attention_pattern")
    if pattern not in HF_ATTENTION_PATTERNS:
        raise ValueError(f"unknown transformers attention_pattern {pattern!r}")
    if not _get(hf_cfg, "mask", False):
        # the port's default is mask=False (bidirectional); Jukebox priors are always causal
        raise ValueError("only causal priors convert: the transformers config has mask=False")
    if _get(hf_cfg, "act_fn", "quick_gelu") != "quick_gelu":
        raise ValueError(f"only quick_gelu priors convert, got {_get(hf_cfg, 'act_fn')!r}")
    attn_order = HF_ATTENTION_PATTERNS[pattern]
    blocks = _get(hf_cfg, "blocks")
    if attn_order == 0 and blocks and n_ctx % int(blocks):
        blocks = None  # unused by dense layers, and it need not divide n_ctx there
    return TransformerConfig(
        width=int(_get(hf_cfg, "hidden_size")),
        depth=int(_get(hf_cfg, "num_layers")),
        heads=int(_get(hf_cfg, "n_heads")),
        n_ctx=n_ctx,
        attn_order=attn_order,
        blocks=None if blocks is None else int(blocks),
        spread=_get(hf_cfg, "spread"),
        m_attn=float(_get(hf_cfg, "attention_multiplier", 0.25)),
        m_mlp=float(_get(hf_cfg, "mlp_multiplier", 1.0)),
        init_scale=float(_get(hf_cfg, "init_scale", 1.0)),
        res_scale=bool(_get(hf_cfg, "attn_res_scale", False)),
        zero_out=bool(_get(hf_cfg, "zero_out", False)),
        attn_dropout=float(_get(hf_cfg, "attn_dropout", 0.0)),
        resid_dropout=float(_get(hf_cfg, "resid_dropout", 0.0)),
        prime_len=prime_len,
        encoder_dims=encoder_dims,
    )


def prior_config_from_transformers(hf_cfg: Any, hf_level: int | None = None) -> PriorConfig:
    """Our :class:`~teacher.prior.config.PriorConfig` for a transformers ``JukeboxPriorConfig``
    (object or dict).

    ``hf_level`` is the port's level (0 = top; default: the config's ``level``). Its
    ``res_downs_t``/``res_strides_t`` are read bottom-first as in the VQ-VAE; the port indexes
    them top-first for the upsampler's conditioner, so a geometry where the two disagree (not
    the released one) raises ``ValueError``.
    """
    downs = tuple(int(v) for v in _get(hf_cfg, "res_downs_t"))
    strides = tuple(int(v) for v in _get(hf_cfg, "res_strides_t"))
    levels = len(downs)
    hf_level = int(_get(hf_cfg, "level", 0) if hf_level is None else hf_level)
    level = levels - 1 - hf_level
    n_ctx = int(_get(hf_cfg, "n_ctx"))
    n_tokens = int(_get(hf_cfg, "nb_relevant_lyric_tokens", 0) or 0)
    single = bool(_get(hf_cfg, "is_encoder_decoder", False))
    n_vocab = int(_get(hf_cfg, "lyric_vocab_size", 80))
    fraction = float(_get(hf_cfg, "encoder_loss_fraction", 0.4))
    alignment = dict(
        alignment_layer=_get(hf_cfg, "alignment_layer"),
        alignment_head=_get(hf_cfg, "alignment_head"),
    )

    lyrics = None
    if single:
        if n_tokens == 0:
            raise ValueError("an is_encoder_decoder (single-sequence) prior needs lyric tokens")
        transformer = _transformer_config_from_transformers(
            hf_cfg, n_ctx + n_tokens, prime_len=n_tokens
        )
        lyrics = LyricsConfig("single", n_tokens, n_vocab, fraction, **alignment)
    elif n_tokens > 0:
        enc_cfg = _get(hf_cfg, "encoder_config")
        if enc_cfg is None:
            raise ValueError("a prior with a separate lyric encoder needs its encoder_config")
        encoder = _transformer_config_from_transformers(enc_cfg, n_tokens)
        transformer = _transformer_config_from_transformers(hf_cfg, n_ctx, encoder_dims=n_tokens)
        lyrics = LyricsConfig(
            "encoder",
            n_tokens,
            n_vocab,
            fraction,
            encoder,
            emb_dropout=float(_get(enc_cfg, "emb_dropout", 0.0)),
            **alignment,
        )
    else:
        transformer = _transformer_config_from_transformers(hf_cfg, n_ctx)

    labels = None
    if _get(hf_cfg, "metadata_conditioning", True):
        genre_bins, artist_bins = (int(v) for v in _get(hf_cfg, "metadata_dims"))
        labels = LabelConditionerConfig(
            artist_bins=artist_bins,
            genre_bins=genre_bins,
            max_genres=int(_get(hf_cfg, "max_nb_genres")),
            include_timing=hf_level == 0,
            t_bins=int(_get(hf_cfg, "timing_dims")),
            min_duration=float(_get(hf_cfg, "min_duration")),
            max_duration=float(_get(hf_cfg, "max_duration")),
        )

    conditioner = None
    if hf_level != 0:
        if (downs[hf_level], strides[hf_level]) != (downs[level + 1], strides[level + 1]):
            raise ValueError(
                f"the port's level-{hf_level} conditioner upsamples by res_*_t[{hf_level}] but "
                f"the level above ours is res_*_t[{level + 1}]: {downs}, {strides} disagree"
            )
        cycle = _get(hf_cfg, "res_dilation_cycle")
        conditioner = UpsamplerConditionerConfig(
            width=int(_get(hf_cfg, "res_conv_width")),
            depth=int(_get(hf_cfg, "res_conv_depth")),
            m_conv=float(_get(hf_cfg, "res_convolution_multiplier", 1)),
            dilation_growth_rate=int(_get(hf_cfg, "res_dilation_growth_rate", 1)),
            dilation_cycle=None if cycle is None else int(cycle),
            zero_out=False,  # an init-time choice; the weights come from the checkpoint
            res_scale=bool(_get(hf_cfg, "conv_res_scale", False)),
        )

    return PriorConfig(
        level=level,
        n_ctx=n_ctx,
        transformer=transformer,
        l_bins=int(_get(hf_cfg, "music_vocab_size")),
        downs_t=downs,
        strides_t=strides,
        sample_rate=int(_get(hf_cfg, "sampling_rate", 44100)),
        labels=labels,
        conditioner=conditioner,
        lyrics=lyrics,
        merged_decoder=bool(_get(hf_cfg, "merged_decoder", False)),
        emb_dropout=float(_get(hf_cfg, "emb_dropout", 0.0)),
    ).validate()


def prior_from_transformers_state_dict(
    state_dict: Mapping[str, Tensor], hf_config: Any, hf_level: int | None = None
) -> tuple[PriorConfig, dict[str, Tensor]]:
    """Config and state dict of our :class:`~teacher.prior.model.Prior` for a transformers
    ``JukeboxPrior`` (its ``state_dict()`` and ``config``).

    A whole ``JukeboxModel`` state dict works too: the keys under ``priors.<hf_level>.`` are
    taken. ``hf_level`` defaults to the config's ``level`` (0 = top in the port).
    """
    cfg = prior_config_from_transformers(hf_config, hf_level)
    hf_level = cfg.levels - 1 - cfg.level
    prefix = f"priors.{hf_level}."
    if any(k.startswith("priors.") for k in state_dict):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return cfg, prior_state_dict_from_transformers(state_dict)


# ---------------------------------------------------------------------------------------------
# whole teachers from published checkpoints
#
# Memory: a released prior is up to ~10 GB (fp16) on disk, so nothing here holds a whole
# checkpoint, let alone two. Zip checkpoints (``torch.save`` since torch 1.6, transformers'
# ``.bin``) are memory-mapped (``torch.load(mmap=True)``); safetensors inputs are read tensor by
# tensor from their header offsets. The output is streamed: each safetensors file gets its
# header first and then one tensor at a time (``teacher.io.write_safetensors_streaming``), and
# the mapped pages a tensor came from are dropped from the resident set once it is copied
# (``madvise(MADV_DONTNEED)``: they are clean, a later read faults them in again from the
# file), so the peak is about one tensor plus the interpreter. Legacy (pre-zip) checkpoints
# cannot be mapped; they are read lazily too (:class:`_LegacySource`: the pickle is unpickled
# onto the meta device, the data read by file offset). ``benchmarks/bench_convert.py`` measures
# these and the two whole-file fallbacks.

#: default largest output file (memory does not depend on it: files are written streaming)
DEFAULT_MAX_SHARD_BYTES = 2 << 30
#: the teacher folder layout: part -> sub-folder (our level 0 = bottom)
TEACHER_PARTS = ("vqvae", "bottom", "middle", "top")
PART_LEVELS = {"bottom": 0, "middle": 1, "top": 2}
#: OpenAI's file names (``jukebox/hparams.py`` restore_*); prior_level_0 is the BOTTOM upsampler
OPENAI_FILES = {
    "vqvae.pth.tar": "vqvae",
    "prior_level_0.pth.tar": "bottom",
    "prior_level_1.pth.tar": "middle",
    "prior_level_2.pth.tar": "top",
}
MANIFEST_FILE = "teacher.json"
_ZIP_MAGIC = b"PK\x03\x04"
_MADV_DONTNEED = 4  # Linux and macOS
#: set to False to keep mapped checkpoint pages resident (the benchmark compares both)
RELEASE_PAGES = True
#: set to False to read legacy checkpoints whole (the benchmark compares both)
LAZY_LEGACY = True


class ConvertError(ValueError):
    """A checkpoint cannot be converted; the message names the file and, where one is at
    fault, the tensor. Raised before anything is written where possible; the output folder is
    never left half-written."""


def _libc() -> Any:
    if not sys.platform.startswith(("linux", "darwin")):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to call
        return None


_LIBC = _libc()


def _release_pages(t: Tensor) -> None:
    """Drop the pages of a memory-mapped tensor from this process's resident set.

    Only for tensors of a read-only file mapping (never written, so nothing is lost): the
    range is rounded inwards to whole pages of this storage, never touching other memory.
    """
    if not RELEASE_PAGES or _LIBC is None:
        return
    storage = t.untyped_storage()
    ptr, n = storage.data_ptr(), storage.nbytes()
    page = mmap.PAGESIZE
    start, end = -(-ptr // page) * page, (ptr + n) // page * page
    if end > start:
        _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _numpy_safe_globals() -> list[Any]:
    """What ``weights_only`` needs for numpy scalars in a checkpoint's ``hps`` (OpenAI saved
    e.g. ``sample_length`` as ``numpy.int64``): the scalar and dtype constructors, which
    rebuild values from bytes and run no code. numpy 1 pickles name ``numpy.core``."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    allowed: list[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    for code in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"):
        cls = type(np.dtype(code))
        allowed.append((cls, f"numpy.dtypes.{cls.__name__}"))
    return allowed


def _is_zip_checkpoint(path: Path) -> bool:
    """True for torch's zip format; ``ConvertError`` for a zip that is cut short."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            raise ConvertError(
                f"{path}: truncated or corrupt checkpoint (a zip archive without its central "
                "directory; download it again)"
            )
        return True
    return False


@contextlib.contextmanager
def _unpickling(path: Path) -> Iterator[None]:
    """Unpickle under ``weights_only`` rules (+ numpy scalars); failures become one
    :class:`ConvertError` naming the file and what was refused."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            yield
    except (ConvertError, _NotLazy):
        raise
    except pickle.UnpicklingError as err:
        text = str(err)
        if m := re.search(r"Unsupported global: GLOBAL (\S+)", text):
            raise ConvertError(
                f"{path}: refusing to load it: its pickle calls {m.group(1)}, which "
                "weights_only=True does not allow (it could run code; checkpoints of weights "
                "never need it)"
            ) from err
        m = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, flags=re.S)
        raise ConvertError(
            f"{path}: not a PyTorch checkpoint (unpickling failed: "
            f"{m.group(1).strip() if m else text.splitlines()[0]})"
        ) from err
    except Exception as err:  # torch raises RuntimeError/EOFError/OSError/... on bad files
        raise ConvertError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): {err}"
        ) from err


def load_checkpoint(path: str | os.PathLike) -> tuple[Any, bool]:
    """``torch.load`` a checkpoint without running any of its code: ``weights_only=True``,
    memory-mapped when it is in the zip format. Returns ``(object, mapped)``.

    Legacy (pre-torch-1.6) files cannot be mapped and are read into memory here (the
    converter reads them lazily instead, see :class:`_LegacySource`). Numpy scalars are
    allowed (see :func:`_numpy_safe_globals`); any other class in the pickle is refused with a
    :class:`ConvertError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    mapped = _is_zip_checkpoint(path)
    with _unpickling(path):
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    return obj, mapped


def _state_dict_of(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a loaded checkpoint: its ``"model"`` entry (OpenAI) or the object itself
    (a bare state dict), with DDP's ``module.`` prefix removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            top = sorted(map(str, obj))[:6]
            raise ConvertError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor (expected a "
                f"state dict, or a dict with one under 'model'; keys: {top})"
            )
        out[str(key).removeprefix("module.")] = value
    return out


class TensorSource:
    """Named tensors of one checkpoint file: shapes and dtypes at once, data on :meth:`read`.

    ``specs`` maps each name to ``(shape, dtype)``. :meth:`read` returns a contiguous CPU
    tensor the caller owns.
    """

    def __init__(self, path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.path = path
        self.specs = specs

    @staticmethod
    def open(path: str | os.PathLike) -> TensorSource:
        """A source for a ``.safetensors`` file or a torch checkpoint (anything else)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            return _SafetensorsSource(path)
        if not path.is_file():
            raise ConvertError(f"{path}: no such file")
        if _is_zip_checkpoint(path):
            return _TorchSource(path)
        try:
            if not LAZY_LEGACY:
                raise _NotLazy("lazy legacy reading is off")
            return _LegacySource(path)
        except _NotLazy as why:  # a layout the lazy reader does not cover: read it whole
            log.warning("%s: %s; reading the whole file into memory", path, why)
            return _TorchSource(path)

    def read(self, name: str) -> Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Forget loaded data (a later :meth:`read` loads it again)."""


class _TorchSource(TensorSource):
    def __init__(self, path: Path):
        obj, self.mapped = load_checkpoint(path)
        tensors = _state_dict_of(obj, path)
        specs = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
        super().__init__(path, specs)
        # a mapped file costs no memory until read; a legacy one is dropped until written
        self._tensors: dict[str, Tensor] | None = tensors if self.mapped else None

    def read(self, name: str) -> Tensor:
        if self._tensors is None:
            self._tensors = _state_dict_of(load_checkpoint(self.path)[0], self.path)
        t = self._tensors[name]
        if not self.mapped:
            return t.contiguous()
        out = torch.empty(t.shape, dtype=t.dtype)
        out.copy_(t)
        _release_pages(t)
        return out

    def close(self) -> None:
        self._tensors = None


class _NotLazy(Exception):
    """A legacy checkpoint the lazy reader does not handle (read it whole instead)."""


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


class _LegacySource(TensorSource):
    """A pre-zip (torch < 1.6) ``torch.save`` file, read lazily.

    The legacy format is: pickles of the magic number, protocol and system info; the object
    pickle, whose tensors name their storages by key (persistent ids); a pickle of the storage
    keys in file order; then per storage an int64 element count and its raw little-endian
    bytes. The object pickle is read with the ``weights_only`` unpickler, storages built on
    the meta device (no memory), and each storage's byte offset found by walking the records;
    :meth:`read` then reads one tensor's bytes. OpenAI's 2020 checkpoints predate torch 1.6.
    """

    def __init__(self, path: Path):
        from torch import _weights_only_unpickler as wou

        roots: dict[str, Any] = {}
        sizes: dict[str, tuple[int, int]] = {}  # storage key -> (elements, bytes per element)
        key_of: dict[int, str] = {}  # meta StorageImpl address -> storage key

        def persistent_load(saved_id: Any) -> Any:
            if not (isinstance(saved_id, tuple) and len(saved_id) == 6):
                raise _NotLazy(f"unexpected persistent id {saved_id!r}")
            typename, storage_type, key, _location, numel, view = saved_id
            if typename not in ("storage", b"storage") or view is not None:
                raise _NotLazy("storage views")
            if key not in roots:
                dtype = storage_type.dtype
                sizes[key] = (int(numel), dtype.itemsize)
                st = torch.UntypedStorage(int(numel) * dtype.itemsize, device="meta")
                roots[key] = torch.storage.TypedStorage(
                    wrap_storage=st, dtype=dtype, _internal=True
                )
                key_of[st._cdata] = key
            return roots[key]

        size = path.stat().st_size
        with open(path, "rb") as f, _unpickling(path):
            if wou.load(f) != _LEGACY_MAGIC:
                raise ConvertError(f"{path}: not a PyTorch checkpoint (bad magic number)")
            if wou.load(f) != _LEGACY_PROTOCOL:
                raise ConvertError(f"{path}: unknown legacy checkpoint protocol")
            if not wou.load(f).get("little_endian", True):
                raise _NotLazy("a big-endian file")
            unpickler = wou.Unpickler(f)
            unpickler.persistent_load = persistent_load
            obj = unpickler.load()
            storage_keys = wou.load(f)
            offset = f.tell()
        tensors = _state_dict_of(obj, path)
        self._meta = tensors
        self._key = {name: key_of[t.untyped_storage()._cdata] for name, t in tensors.items()}
        first_user = {}
        for name, key in self._key.items():
            first_user.setdefault(key, name)
        self._data: dict[str, int] = {}  # storage key -> file offset of its first byte
        with open(path, "rb") as f:
            for key in storage_keys:
                numel, itemsize = sizes[key]
                nbytes = numel * itemsize
                f.seek(offset)
                head = f.read(8)
                if len(head) < 8 or offset + 8 + nbytes > size:
                    what = f"tensor {first_user[key]!r}" if key in first_user else "a storage"
                    raise ConvertError(f"{path}: truncated: the data of {what} is cut off")
                if struct.unpack("<q", head)[0] != numel:
                    raise ConvertError(f"{path}: corrupt: storage {key} has the wrong length")
                self._data[key] = offset + 8
                offset += 8 + nbytes
        super().__init__(path, {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()})

    def read(self, name: str) -> Tensor:
        t = self._meta[name]
        if t.numel() == 0:
            return torch.empty(t.shape, dtype=t.dtype)
        extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
        buf = torch.empty(extent, dtype=t.dtype)
        with open(self.path, "rb") as f:
            f.seek(self._data[self._key[name]] + t.storage_offset() * t.dtype.itemsize)
            f.readinto(buf.view(torch.uint8).numpy())
        return buf.as_strided(t.shape, t.stride()).contiguous()


_ST_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}


class _SafetensorsSource(TensorSource):
    """Reads a safetensors file by its header (8-byte length, JSON of dtype/shape/offsets),
    one tensor at a time with plain file reads: nothing is mapped, so nothing lingers."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ConvertError(f"{path}: no such file")
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    raise ValueError(f"header length {n} exceeds the file")
                header = json.loads(f.read(n))
        except (ValueError, struct.error, UnicodeDecodeError) as err:
            raise ConvertError(f"{path}: not a safetensors file: {err}") from err
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._offsets: dict[str, tuple[int, int]] = {}
        specs = {}
        for name, info in header.items():
            try:
                dtype, shape = _ST_DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"])
                begin, end = (int(v) for v in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise ConvertError(f"{path}: tensor {name!r}: bad header entry {info!r}") from err
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise ConvertError(f"{path}: tensor {name!r}: {end - begin} bytes for {shape}")
            if self._base + end > size:
                raise ConvertError(
                    f"{path}: truncated: tensor {name!r} ends at byte {self._base + end} of a "
                    f"{size}-byte file"
                )
            specs[name] = (shape, dtype)
            self._offsets[name] = (begin, end)
        super().__init__(path, specs)

    def read(self, name: str) -> Tensor:
        shape, dtype = self.specs[name]
        begin, end = self._offsets[name]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._base + begin)
            if f.readinto(buf.numpy()) != end - begin:
                raise ConvertError(f"{self.path}: truncated while reading tensor {name!r}")
        return buf.view(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# a conversion plan: per part, our tensor names -> (source, source name); checked, then written


@dataclass
class _Part:
    name: str  # a TEACHER_PARTS entry
    cfg: VQVAEConfig | PriorConfig
    tensors: dict[str, tuple[TensorSource, str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class PartSummary:
    """One written part: its folder, number of tensors, bytes and files."""

    folder: Path
    tensors: int
    bytes: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_openai` / :func:`convert_transformers` wrote.

    Attributes:
        out: the teacher folder (``vqvae/``, ``bottom/``, ``middle/``, ``top/``, ``teacher.json``).
        model: the released model it matches (a :data:`teacher.presets.MODELS` key) or ``None``.
        source: ``"openai"`` or ``"transformers"``.
        parts: per part, a :class:`PartSummary`.
        seconds: wall time.
    """

    out: Path
    model: str | None
    source: str
    parts: dict[str, PartSummary]
    seconds: float


def _expected(cfg: VQVAEConfig | PriorConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of the checkpoint tensors of ``cfg``'s model (built on the meta
    device, so a 5B prior costs nothing). The VQ-VAE's EMA buffers are not expected."""
    from teacher.prior.model import Prior
    from teacher.vqvae import VQVAE

    with torch.device("meta"):
        if isinstance(cfg, VQVAEConfig):
            state = VQVAE(cfg).jukebox_state_dict()
        else:
            state = Prior(cfg).state_dict()
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def _problems(part: _Part, what: str) -> list[str]:
    """Everything wrong with ``part``'s tensors against its config, as messages naming the
    file and tensor (empty when it converts). Fills a tied output head that a format left out
    (transformers cannot save tied tensors as safetensors)."""
    expected = _expected(part.cfg)
    tensors = part.tensors
    if isinstance(part.cfg, PriorConfig) and not part.cfg.merged_decoder:
        tied, emb = "prior.x_out.weight", "prior.x_emb.weight"
        if tied not in tensors and emb in tensors:
            tensors[tied] = tensors[emb]
    where = ", ".join(str(f) for f in part.files) or part.name

    def name(key: str) -> str:
        src, src_key = tensors[key]
        alias = "" if src_key == key else f" (ours {key!r})"
        return f"{src.path}: tensor {src_key!r}{alias}"

    # a shape mismatch says most about a wrong architecture, so it comes first
    out = []
    for key in sorted(set(expected) & set(tensors)):
        (shape, dtype), (src, src_key) = expected[key], tensors[key]
        got_shape, got_dtype = src.specs[src_key]
        if tuple(got_shape) != tuple(shape):
            out.append(f"{name(key)} has shape {list(got_shape)}, the {what} needs {list(shape)}")
        elif dtype.is_floating_point != got_dtype.is_floating_point:
            out.append(f"{name(key)} has dtype {got_dtype}, the {what} needs a {dtype}")
    for key in sorted(set(expected) - set(tensors)):
        out.append(f"{where}: tensor {key!r} of the {what} is missing")
    for key in sorted(set(tensors) - set(expected)):
        out.append(f"{name(key)} is not a tensor of the {what}")
    return out


def _raise_first(problems: list[str], hint: str = "") -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ConvertError(problems[0] + more + hint)


def _part_label(part: str, model: str | None) -> str:
    kind = "VQ-VAE" if part == "vqvae" else f"{part} prior"
    return f"{model} {kind}" if model else kind


# ---------------------------------------------------------------------------------------------
# vocabularies


def _vocab_version_of_file(path: str | os.PathLike) -> str | None:
    m = re.match(r"^(v[23])_", Path(path).name)
    return m.group(1) if m else None


def vocabs_from_id_lists(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], default_version: str
) -> dict[str, Vocab]:
    """Jukebox's ``name;id`` lists (``jukebox/data/ids/v{2,3}_{artist,genre}_ids.txt``) by
    version: a pair's version comes from its file names (``v2_``/``v3_``), else
    ``default_version``."""
    out: dict[str, Vocab] = {}
    for artists, genres in pairs:
        version = _vocab_version_of_file(artists) or _vocab_version_of_file(genres)
        version = version or default_version
        if version in out:
            raise ConvertError(f"two {version} vocabularies given ({artists}, {genres})")
        try:
            out[version] = Vocab.from_id_lists(str(artists), str(genres), version)
        except (OSError, ValueError) as err:
            raise ConvertError(f"cannot read the vocabulary {artists}, {genres}: {err}") from err
    return out


def vocabs_from_transformers(
    artists: Mapping[str, int], genres: Mapping[str, int]
) -> dict[str, Vocab]:
    """``artists.json``/``genres.json`` of transformers' ``JukeboxTokenizer`` by version.

    One file holds both sets: v2 names carry a ``.v2`` suffix (normalised as Jukebox's v2,
    ``alan_jackson.v2``), v3 names are lower case (``alan jackson``). A set is returned only
    when the files have names of it.
    """
    out: dict[str, Vocab] = {}
    for version in ("v2", "v3"):

        def pick(table: Mapping[str, int], version: str = version) -> dict[str, int]:
            if version == "v2":
                return {k[: -len(".v2")]: int(v) for k, v in table.items() if k.endswith(".v2")}
            return {k: int(v) for k, v in table.items() if not k.endswith(".v2")}

        a, g = pick(artists), pick(genres)
        if any(k != UNKNOWN for k in a) or any(k != UNKNOWN for k in g):
            out[version] = Vocab(version, {UNKNOWN: 0, **a}, {UNKNOWN: 0, **g})
    return out


def _check_vocab_fits(vocab: Vocab, cfg: PriorConfig, part: str, source: str) -> None:
    labels = cfg.labels
    if labels is None:
        return
    if vocab.n_artists > labels.artist_bins or vocab.n_genres > labels.genre_bins:
        raise ConvertError(
            f"{source}: the {vocab.version} vocabulary has artist ids up to "
            f"{vocab.n_artists - 1} and genre ids up to {vocab.n_genres - 1}, but the {part} "
            f"prior has {labels.artist_bins} artist and {labels.genre_bins} genre embeddings "
            "(a list of the other version?)"
        )


def _check_lyrics_json(path: Path, version: str) -> None:
    """transformers' ``lyrics.json`` (character -> id) must agree with our tokenizer."""
    table = read_json(path)
    tok = LyricTokenizer(version)
    if len(table) != tok.n_vocab:
        log.info(
            "%s has %d symbols, not %s's %d: not checked", path, len(table), version, tok.n_vocab
        )
        return
    theirs = {c: int(i) for c, i in table.items() if int(i) != 0}
    for char, idx in tok.vocab.items():
        if theirs.get(char) != idx:
            raise ConvertError(
                f"{path}: character {char!r} has id {theirs.get(char)}, our {version} lyric "
                f"tokenizer gives {idx}"
            )


# ---------------------------------------------------------------------------------------------
# configs


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, dict):
            out.update(_flat_dict(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _flat_dict(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat_dict(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_differences(ours: Any, released: Any) -> list[str]:
    """Fields where two configs of the same class differ: ``"name: a != b"``."""
    a, b = _flat(ours), _flat(released)
    return [
        f"{k}: {a.get(k)!r} != {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def infer_model(top_specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]], file: str) -> str:
    """The released model whose top prior has exactly these tensors (name -> shape, dtype)."""

    reasons = []
    for name in MODELS:
        src = TensorSource(Path(file), dict(top_specs))
        part = _Part("top", model_configs(name).top, {k: (src, k) for k in top_specs})
        problems = _problems(part, _part_label("top", name))
        if not problems:
            return name
        reasons.append(f"{name}: {problems[0]}")
    raise ConvertError(
        f"{file}: its tensors match no released top prior; pass --model. " + "; ".join(reasons)
    )


def _transformers_configs(folder: Path) -> tuple[VQVAEConfig, list[PriorConfig]]:
    """Our configs (priors bottom first) for a transformers ``JukeboxModel`` folder.

    The port's ``JukeboxModel.set_shared_params`` overwrites every prior's sampling rate,
    timing bins, duration range, genre slots and metadata flag with the top-level values when
    it builds the model; the same is done here so the config is what the port ran.
    """
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError(f"{folder}: no config.json (not a transformers model folder)")
    data = read_json(path)
    if data.get("model_type") != "jukebox":
        raise ConvertError(
            f"{path}: model_type {data.get('model_type')!r}; expected 'jukebox' (a whole "
            "JukeboxModel: VQ-VAE and three priors)"
        )
    try:
        from transformers.models.deprecated.jukebox.configuration_jukebox import JukeboxConfig
    except ImportError as err:  # pragma: no cover - transformers is a test dependency
        raise ConvertError("converting a transformers folder needs `transformers`") from err
    hf = JukeboxConfig.from_dict(data)
    for pc in hf.prior_configs:  # JukeboxModel.set_shared_params
        for name in (
            "sampling_rate",
            "timing_dims",
            "min_duration",
            "max_duration",
            "max_nb_genres",
            "metadata_conditioning",
        ):
            setattr(pc, name, getattr(hf, name))
    try:
        vqvae = vqvae_config_from_transformers(hf.vqvae_config, sample_rate=hf.sampling_rate)
        if vqvae.levels != 3 or len(hf.prior_configs) != 3:
            raise ValueError(
                f"a teacher has 3 levels; this model has {vqvae.levels} VQ-VAE levels and "
                f"{len(hf.prior_configs)} priors"
            )
        priors = [
            prior_config_from_transformers(pc, hf_level=i) for i, pc in enumerate(hf.prior_configs)
        ]
    except (ValueError, KeyError, TypeError) as err:  # ConfigError is a ValueError
        raise ConvertError(f"{path}: {err}") from err
    return vqvae, sorted(priors, key=lambda c: c.level)


# ---------------------------------------------------------------------------------------------
# writing


def _write_part(
    part: _Part, folder: Path, dtype: torch.dtype | None, max_shard_bytes: int
) -> PartSummary:
    def out_dtype(src_dtype: torch.dtype) -> torch.dtype:
        return dtype if dtype is not None and src_dtype.is_floating_point else src_dtype

    def read(key: str) -> Tensor:
        src, src_key = part.tensors[key]
        t = src.read(src_key)
        return t.to(out_dtype(t.dtype))

    specs = {}
    for key in sorted(part.tensors):
        src, src_key = part.tensors[key]
        shape, src_dtype = src.specs[src_key]
        specs[key] = (tuple(shape), out_dtype(src_dtype))
    if isinstance(part.cfg, VQVAEConfig):
        from teacher.vqvae import VQVAE

        # small (~6 MB): load it for real so the EMA state is rebuilt from the codebooks
        model = VQVAE(part.cfg)
        model.load_jukebox_state_dict({k: read(k) for k in part.tensors})
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(folder)
        files: tuple[str, ...] = (WEIGHTS_FILE,)
    else:
        with atomic_dir(folder) as tmp:
            save_prior_config(part.cfg, str(tmp / "config.json"))
            files = tuple(save_tensors_sharded(tmp, specs, read, max_shard_bytes))
    for src in {id(s): s for s, _ in part.tensors.values()}.values():
        src.close()
    nbytes = sum(math.prod(shape) * dt.itemsize for shape, dt in specs.values())
    return PartSummary(folder, len(specs), int(nbytes), files)


def _write_teacher(
    out: Path,
    parts: list[_Part],
    *,
    model: str | None,
    source: str,
    inputs: list[str],
    vocabs: dict[str, Vocab],
    dtype: torch.dtype | None,
    max_shard_bytes: int,
    overwrite: bool,
    start: float,
) -> ConvertResult:
    """Write every part into a temporary sibling of ``out`` and rename it into place."""

    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ConvertError(f"{out} exists and is not empty: choose another --out or --overwrite")
    summaries: dict[str, PartSummary] = {}
    with atomic_dir(out) as tmp:
        for part in parts:
            log.info("writing %s (%d tensors)", part.name, len(part.tensors))
            summary = _write_part(part, tmp / part.name, dtype, max_shard_bytes)
            summaries[part.name] = dataclasses.replace(summary, folder=out / part.name)
            if isinstance(part.cfg, PriorConfig) and part.cfg.labels is not None:
                vocab = vocabs.get(label_version(part.cfg))
                if vocab is not None:
                    vocab.save(str(tmp / part.name / VOCAB_FILE))
        manifest = {
            "format": 1,
            "source": source,
            "model": model,
            "inputs": inputs,
            "dtype": "keep" if dtype is None else str(dtype).removeprefix("torch."),
            "parts": {p: {"folder": p, "level": PART_LEVELS.get(p)} for p in summaries},
        }
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    result = ConvertResult(out, model, source, summaries, time.perf_counter() - start)
    total = sum(s.bytes for s in summaries.values())
    log.info("wrote %s: %.2f GB in %.1f s", out, total / 1e9, result.seconds)
    return result


# ---------------------------------------------------------------------------------------------
# entry points


def _openai_files(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in map(Path, paths):
        candidates = [p / n for n in OPENAI_FILES if (p / n).is_file()] if p.is_dir() else [p]
        if p.is_dir() and not candidates:
            raise ConvertError(f"{p}: holds none of {', '.join(OPENAI_FILES)}")
        for c in candidates:
            part = OPENAI_FILES.get(c.name)
            if part is None:
                raise ConvertError(
                    f"{c}: not an OpenAI Jukebox file name (expected {', '.join(OPENAI_FILES)}; "
                    "prior_level_0 is the bottom upsampler, prior_level_2 the top prior)"
                )
            if part in found:
                raise ConvertError(f"{c}: {c.name} given twice ({found[part]})")
            found[part] = c
    missing = [n for n, part in OPENAI_FILES.items() if part not in found]
    if missing:
        raise ConvertError(f"a teacher needs all four files; missing {', '.join(missing)}")
    return found


def convert_openai(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: str | ModelConfigs | None = None,
    vocab_files: Sequence[tuple[str | os.PathLike, str | os.PathLike]] = (),
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert OpenAI's released checkpoints into a teacher folder.

    Args:
        paths: ``vqvae.pth.tar`` and ``prior_level_{0,1,2}.pth.tar`` (files, or folders holding
            them; the 5b upsamplers/VQ-VAE serve all three models). Their state dict is under
            ``"model"``; they are read with ``weights_only=True`` (no code runs).
        out: the teacher folder to create: ``vqvae/``, ``bottom/``, ``middle/``, ``top/`` (each
            ``config.json`` + safetensors, priors sharded by ``max_shard_bytes``; priors with
            labels also get ``vocab.json`` when a vocabulary of their version is given) and
            ``teacher.json``.
        model: ``"1b_lyrics"``, ``"5b"`` or ``"5b_lyrics"``; ``None`` infers it from the top
            prior's tensor shapes; a :class:`~teacher.presets.ModelConfigs` gives the configs
            directly (other architectures, tests).
        vocab_files: ``(artist_ids, genre_ids)`` pairs of Jukebox's ``name;id`` lists; the
            version comes from a ``v2_``/``v3_`` file name prefix, else the top prior's.
        dtype: cast floating tensors (``None`` keeps the checkpoint's: OpenAI's 5b priors are
            partly fp16).
        overwrite: replace an existing non-empty ``out``.

    Every tensor is checked (names, shapes) against the preset before anything is written; a
    bad file raises :class:`ConvertError` naming the file and tensor. ``out`` appears complete
    or not at all.
    """

    start = time.perf_counter()
    out = Path(out)
    files = _openai_files(paths)
    sources = {part: TensorSource.open(path) for part, path in files.items()}
    try:
        if model is None:
            model = infer_model(sources["top"].specs, str(files["top"]))
            log.info("%s: the released %s top prior", files["top"], model)
        cfgs = model if isinstance(model, ModelConfigs) else model_configs(model)
        model = cfgs.name
        by_part = {"vqvae": cfgs.vqvae, **{p: cfgs.priors[lv] for p, lv in PART_LEVELS.items()}}
        parts = []
        for name in TEACHER_PARTS:
            src = sources[name]
            part = _Part(name, by_part[name], {k: (src, k) for k in src.specs}, [files[name]])
            problems = _problems(part, _part_label(name, model))
            hint = ""
            if problems and name == "top":
                try:
                    other = infer_model(src.specs, str(files[name]))
                    hint = f" (the file is the released {other} top prior: --model {other})"
                except ConvertError:
                    pass
            _raise_first(problems, hint)
            parts.append(part)
        vocabs = vocabs_from_id_lists(vocab_files, label_version(cfgs.top))
        _check_vocabs(vocabs, cfgs.priors, ", ".join(str(p) for pair in vocab_files for p in pair))
        if not vocabs:
            log.warning("no --vocab given: the priors get no vocab.json (artist/genre names)")
        return _write_teacher(
            out,
            parts,
            model=model,
            source="openai",
            inputs=[str(files[p]) for p in TEACHER_PARTS],
            vocabs=vocabs,
            dtype=dtype,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
            start=start,
        )
    finally:
        for src in sources.values():
            src.close()


def _check_vocabs(vocabs: dict[str, Vocab], priors: Sequence[PriorConfig], source: str) -> None:

    for cfg in priors:
        vocab = vocabs.get(label_version(cfg))
        if vocab is not None:
            _check_vocab_fits(vocab, cfg, LEVEL_NAMES[cfg.level], source)


def _transformers_sources(folder: Path) -> dict[str, TensorSource]:
    """transformers' weight files of ``folder`` -> key -> the source holding it."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map: dict[str, str] = read_json(index)["weight_map"]
            opened: dict[str, TensorSource] = {}
            out: dict[str, TensorSource] = {}
            for key, file in weight_map.items():
                if file not in opened:
                    opened[file] = TensorSource.open(folder / file)
                if key not in opened[file].specs:
                    raise ConvertError(
                        f"{folder / file}: tensor {key!r} listed in {index} is missing"
                    )
                out[key] = opened[file]
            return out
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            src = TensorSource.open(folder / single)
            return {k: src for k in src.specs}
    raise ConvertError(
        f"{folder}: no weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])"
    )


def _split_transformers_keys(
    keys: Mapping[str, TensorSource],
) -> dict[str, dict[str, tuple[TensorSource, str]]]:
    """transformers keys -> per part our (OpenAI) names -> (source, transformers key)."""
    per_part: dict[str, dict[str, str]] = {p: {} for p in TEACHER_PARTS}
    hf_part = {0: "top", 1: "middle", 2: "bottom"}  # the port counts priors from the top
    for key in keys:
        if key.startswith("vqvae."):
            per_part["vqvae"][key[len("vqvae.") :]] = key
            continue
        m = re.match(r"^priors\.(\d+)\.(.+)$", key)
        if m is None or int(m.group(1)) not in hf_part:
            raise ConvertError(f"{keys[key].path}: tensor {key!r} is not part of a Jukebox teacher")
        per_part[hf_part[int(m.group(1))]][m.group(2)] = key
    out: dict[str, dict[str, tuple[TensorSource, str]]] = {}
    for part, table in per_part.items():
        mapped: dict[str, tuple[TensorSource, str]] = {}
        if part == "vqvae":
            try:
                names = vqvae_from_transformers_state_dict(table)
            except KeyError:  # name the culprit: every key but proj_out maps on its own
                for short, key in table.items():
                    try:
                        vqvae_from_transformers_state_dict({short: key})
                    except KeyError as err:
                        raise ConvertError(
                            f"{keys[key].path}: tensor {key!r}: {err.args[0]}"
                        ) from err
                raise
        else:
            names = {}
            for short, key in table.items():
                try:
                    names[_prior_key(short)] = key
                except KeyError as err:
                    raise ConvertError(f"{keys[key].path}: tensor {key!r}: {err.args[0]}") from err
        for ours, key in names.items():
            mapped[ours] = (keys[key], key)
        out[part] = mapped
    return out


def convert_transformers(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    model: str | ModelConfigs | None = None,
    vocab_files: Sequence[tuple[str | os.PathLike, str | os.PathLike]] = (),
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert a transformers ``JukeboxModel`` folder (``openai/jukebox-1b-lyrics`` layout)
    into a teacher folder (see :func:`convert_openai` for ``out`` and the other arguments).

    The folder holds ``config.json``, the weights (``pytorch_model*.bin`` and/or
    ``*.safetensors``, one file or shards with an index json) and, optionally, the tokenizer
    files ``artists.json``/``genres.json`` (one table for v2 and v3, see
    :func:`vocabs_from_transformers`) and ``lyrics.json`` (checked against our tokenizer).
    The configs come from ``config.json`` as the port builds the model; with ``model`` the
    released hyperparameters are used instead and every difference is logged (the port's
    ``JukeboxModel`` shares e.g. the duration range across priors).
    """

    start = time.perf_counter()
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a folder (a transformers model is a folder)")
    vqvae_cfg, prior_cfgs = _transformers_configs(folder)
    if model is not None:
        released = model if isinstance(model, ModelConfigs) else model_configs(model)
        model = released.name
        for ours, rel, what in (
            (vqvae_cfg, released.vqvae, "vqvae"),
            *((p, r, LEVEL_NAMES[p.level]) for p, r in zip(prior_cfgs, released.priors)),
        ):
            diffs = config_differences(ours, rel)
            if diffs:
                shown = "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
                log.warning(
                    "%s: the %s config differs from the released %s in %d fields (the released "
                    "values are used): %s",
                    folder,
                    what,
                    model,
                    len(diffs),
                    shown,
                )
        vqvae_cfg, prior_cfgs = released.vqvae, list(released.priors)
    sources = _transformers_sources(folder)
    try:
        tables = _split_transformers_keys(sources)
        by_part = {"vqvae": vqvae_cfg, **{p: prior_cfgs[lv] for p, lv in PART_LEVELS.items()}}
        parts = []
        for name in TEACHER_PARTS:
            part = _Part(name, by_part[name], tables[name], [folder])
            _raise_first(_problems(part, _part_label(name, model)))
            parts.append(part)
        vocabs: dict[str, Vocab] = {}
        if (folder / "artists.json").is_file() and (folder / "genres.json").is_file():
            vocabs = vocabs_from_transformers(
                read_json(folder / "artists.json"), read_json(folder / "genres.json")
            )
            _check_vocabs(vocabs, prior_cfgs, f"{folder}/artists.json, genres.json")
        if vocab_files:  # --vocab replaces the tokenizer's tables of the same version
            given = vocabs_from_id_lists(vocab_files, _top_version(prior_cfgs))
            _check_vocabs(given, prior_cfgs, ", ".join(str(p) for v in vocab_files for p in v))
            vocabs.update(given)
        if (folder / "lyrics.json").is_file() and prior_cfgs[-1].lyrics is not None:
            _check_lyrics_json(folder / "lyrics.json", _top_version(prior_cfgs))
        return _write_teacher(
            out,
            parts,
            model=model,
            source="transformers",
            inputs=[str(folder)],
            vocabs=vocabs,
            dtype=dtype,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
            start=start,
        )
    finally:
        for src in {id(s): s for s in sources.values()}.values():
            src.close()


def _top_version(priors: Sequence[PriorConfig]) -> str:

    return label_version(priors[-1])


def parse_size(text: str) -> int:
    """Bytes of ``"500MB"``, ``"2GB"``, ``"1GiB"`` or a plain number (:class:`ConvertError`
    otherwise)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", text, flags=re.IGNORECASE)
    if m is None:
        raise ConvertError(f"not a size: {text!r} (e.g. 500MB, 2GB)")
    unit = (m.group(2) or "").upper().rstrip("B")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    scale.update({"KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40})
    if unit not in scale:
        raise ConvertError(f"not a size: {text!r} (e.g. 500MB, 2GB)")
    return int(float(m.group(1)) * scale[unit])
