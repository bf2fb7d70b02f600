"""transformers' Jukebox port -> our teacher models: state-dict keys and configs.

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

It also builds our :class:`~teacher.vqvae.config.VQVAEConfig` and
:class:`~teacher.prior.config.PriorConfig` from the port's configs (one at a time, or all of a
model folder's ``config.json`` with :func:`transformers_configs`). Whole transformers folders
are converted by :func:`teacher.released.convert.convert_transformers`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from teacher.io import read_json
from teacher.prior.config import (
    LabelConditionerConfig,
    LyricsConfig,
    PriorConfig,
    UpsamplerConditionerConfig,
)
from teacher.prior.transformer import TransformerConfig
from teacher.released.checkpoints import ConvertError
from teacher.vqvae.config import VQVAEConfig

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
    ``teacher/vqvae/quantizer.py``). Raises ``KeyError`` on a key it does not know.
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


def prior_key(key: str) -> str:
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
    return {prior_key(k): v for k, v in state_dict.items()}


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


def transformers_configs(folder: Path) -> tuple[VQVAEConfig, list[PriorConfig]]:
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
