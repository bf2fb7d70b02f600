"""Weight conversion into our teacher models.

For now: the transformers port of the Jukebox VQ-VAE (``JukeboxVQVAE``, transformers
``models/deprecated/jukebox``) to our :class:`~teacher.vqvae.VQVAE`, whose keys are OpenAI's.
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
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from teacher.config import VQVAEConfig

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
