"""The Jukebox hierarchical VQ-VAE (paper §3, ``jukebox/vqvae/vqvae.py``), exact architecture.

Level L (0 = bottom) has its own encoder on raw audio, its own codebook and its own decoder,
which reconstructs audio from that level's codes only. Parameter and buffer names are those of
OpenAI's checkpoint, so a released ``vqvae.pth.tar`` state dict loads unchanged:

    encoders.<L>.level_blocks.<l>.model.<i>.0.weight                   strided conv of step i
    encoders.<L>.level_blocks.<l>.model.<i>.1.model.<d>.model.{1,3}.*  residual unit d of step i
    encoders.<L>.level_blocks.<l>.model.<down_t>.*                     output projection to D
    decoders.<L>.level_blocks.<l>.model.0.*                            input projection from D
    decoders.<L>.level_blocks.<l>.model.<i+1>.0.model.<d>.model.{1,3}.* residual units
    decoders.<L>.level_blocks.<l>.model.<i+1>.1.*                      transposed conv of step i
    decoders.<L>.out.*                                                 to audio
    bottleneck.level_blocks.<L>.k                                      codebook [K, D]

plus our EMA buffers ``bottleneck.level_blocks.<L>.{k_sum,k_elem,initialised}`` (see
``teacher/vqvae/quantizer.py``), which an OpenAI state dict may lack.

Audio at this API is ``Tensor[B, 1, T]`` in [-1, 1], channels-first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from teacher.config import save_config
from teacher.io import atomic_dir, load_model_weights, read_model_config, save_tensors
from teacher.vqvae import losses
from teacher.vqvae.config import VQVAEConfig
from teacher.vqvae.modules import Decoder, Encoder
from teacher.vqvae.quantizer import EMA_BUFFERS, Bottleneck

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class VQVAEOutput:
    """Result of :meth:`VQVAE.forward`.

    Attributes:
        loss: scalar training loss ``sum(weights[k] * terms[k])``.
        terms: named unweighted loss terms: ``recons_l{L}``, ``multispectral_l{L}``,
            ``spectral_l{L}`` (only when ``cfg.spectral`` is non-zero) and ``commit`` (sum over
            levels). They carry gradients.
        weights: the weight of each term (``VQVAE.loss_weights``).
        metrics: detached scalars per level: ``sc_l{L}`` (spectral convergence, batch mean),
            ``sc_db_l{L}`` (20·log10 of it), ``commit_l{L}``, ``usage_l{L}``, ``entropy_l{L}``,
            ``fit_l{L}``, ``dk_l{L}`` and when training ``alive_l{L}``.
        recons: per level the reconstruction ``Tensor[B, 1, T]`` (with gradients).
        codes: per level ``LongTensor[B, T_L]``.
    """

    loss: Tensor
    terms: dict[str, Tensor]
    weights: dict[str, float]
    metrics: dict[str, Tensor]
    recons: list[Tensor] = field(default_factory=list)
    codes: list[Tensor] = field(default_factory=list)


class VQVAE(nn.Module):
    """Jukebox VQ-VAE built from a :class:`~teacher.config.VQVAEConfig` (kept as ``self.cfg``).

    ``train()`` mode makes :meth:`forward` update the codebooks (EMA, restarts); ``eval()`` mode
    leaves them alone. :meth:`encode` and :meth:`decode` never touch the codebooks.
    """

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(cfg.levels):
            # the multiplier scales width AND depth of every block of this level's encoder and
            # decoder (Jukebox hvqvae_multipliers: the bottom level gets the biggest network)
            m = cfg.multipliers[level]
            block = dict(
                width=cfg.width * m,
                depth=cfg.depth * m,
                m_conv=cfg.m_conv,
                dilation_growth_rate=cfg.dilation_growth_rate,
                dilation_cycle=cfg.dilation_cycle,
                zero_out=cfg.zero_out,
                res_scale=cfg.res_scale,
            )
            downs, strides = cfg.downs_t[: level + 1], cfg.strides_t[: level + 1]
            self.encoders.append(Encoder(cfg.channels, cfg.emb_width, downs, strides, **block))
            self.decoders.append(
                Decoder(
                    cfg.channels,
                    cfg.emb_width,
                    downs,
                    strides,
                    **block,
                    reverse_dilation=cfg.reverse_decoder_dilation,
                )
            )
        self.bottleneck = Bottleneck(
            cfg.l_bins, cfg.emb_width, cfg.mu, cfg.levels, cfg.revival_threshold
        )

    # -- basic facts ------------------------------------------------------------------------

    @property
    def levels(self) -> int:
        return self.cfg.levels

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Samples per code at each level, bottom first (8, 32, 128 for the released model)."""
        return self.cfg.hop_lengths

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of every loss term name of :attr:`VQVAEOutput.terms`."""
        cfg = self.cfg
        weights: dict[str, float] = {}
        for level in range(cfg.levels):
            weights[f"recons_l{level}"] = 1.0  # the lmix weights are inside the term
            weights[f"multispectral_l{level}"] = cfg.multispectral
            if cfg.spectral:
                weights[f"spectral_l{level}"] = cfg.spectral
        weights["commit"] = cfg.commit
        return weights

    def codebook(self, level: int) -> Tensor:
        """The codebook of ``level``: ``Tensor[K, D]``."""
        return self.bottleneck.level_blocks[level].k

    def _param_dtype(self) -> torch.dtype:
        return self.decoders[0].out.weight.dtype

    def _check_audio(self, audio: Tensor, top_level: int) -> None:
        if audio.dim() != 3 or audio.shape[1] != self.cfg.channels:
            raise ValueError(
                f"audio must be Tensor[B, {self.cfg.channels}, T], got {tuple(audio.shape)}"
            )
        hop = self.hop_lengths[top_level]
        if audio.shape[-1] % hop:
            raise ValueError(
                f"audio length {audio.shape[-1]} must be a multiple of the level-{top_level} "
                f"hop length {hop}"
            )

    def _level_range(self, start_level: int, end_level: int | None) -> range:
        end_level = self.levels if end_level is None else end_level
        if not 0 <= start_level < end_level <= self.levels:
            raise ValueError(
                f"bad level range [{start_level}, {end_level}) for {self.levels} levels"
            )
        return range(start_level, end_level)

    # -- inference --------------------------------------------------------------------------

    def encode_latents(self, audio: Tensor, level: int) -> Tensor:
        """Encoder output of ``level`` before quantisation: ``Tensor[B, 1, T]`` -> ``[B, D, T_L]``."""
        self._check_audio(audio, level)
        return self.encoders[level](audio.to(self._param_dtype()))

    @torch.no_grad()
    def encode(
        self, audio: Tensor, start_level: int = 0, end_level: int | None = None
    ) -> list[Tensor]:
        """Audio ``Tensor[B, 1, T]`` -> codes ``[LongTensor[B, T / hop_L]]`` for levels
        ``start_level..end_level-1`` (bottom first). T must be a multiple of the highest
        requested level's hop. Only the needed encoders run."""
        levels = self._level_range(start_level, end_level)
        self._check_audio(audio, levels[-1])
        latents = [self.encode_latents(audio, level) for level in levels]
        return self.bottleneck.encode(latents, start_level=start_level)

    def decode_latents(self, x: Tensor, level: int) -> Tensor:
        """Decode code vectors (or any ``Tensor[B, D, T_L]`` in code space, e.g. straight-through
        soft codes of a student) with the decoder of ``level``: -> ``Tensor[B, 1, T_L * hop_L]``."""
        return self.decoders[level](x.to(self._param_dtype()))

    def decode(self, codes: Sequence[Tensor], start_level: int = 0) -> Tensor:
        """Codes -> audio ``Tensor[B, 1, T]``, like Jukebox's ``decode``.

        ``codes[0]`` holds the codes of ``start_level`` (``LongTensor[B, T_L]``) and is decoded by
        that level's decoder; further entries (higher levels) are accepted and ignored, since
        every level reconstructs from its own codes only.
        """
        if not len(codes):
            raise ValueError("codes must hold at least one level")
        self._level_range(start_level, start_level + 1)
        (x,) = self.bottleneck.decode([codes[0]], start_level=start_level)
        return self.decode_latents(x, start_level)

    # -- training ---------------------------------------------------------------------------

    def forward(self, audio: Tensor) -> VQVAEOutput:
        """Encode, quantise and decode every level; return the loss and metrics.

        ``audio``: ``Tensor[B, 1, T]`` in [-1, 1], T a multiple of the top hop. In train mode the
        codebooks take one EMA step (initialised from this batch on the first call). The loss is
        ``Σ_L (lmix_L + multispectral·mspec_L + spectral·spec_L) + commit·Σ_L commit_L`` with
        the bandwidth normalisation of ``cfg.bandwidth`` (Jukebox ``VQVAE.forward``).
        """
        cfg, bw = self.cfg, self.cfg.bandwidth
        self._check_audio(audio, self.levels - 1)
        x = audio.to(self._param_dtype())
        target = audio.float()
        latents = [self.encoders[level](x) for level in range(self.levels)]
        quantized = self.bottleneck(latents)

        terms: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        recons = []
        for level, q in enumerate(quantized):
            x_hat = self.decode_latents(q.x, level)
            recons.append(x_hat)
            x_hat = x_hat.float()
            terms[f"recons_l{level}"] = losses.lmix_loss(
                target,
                x_hat,
                l1=cfg.lmix_l1,
                l2=cfg.lmix_l2,
                linf=cfg.lmix_linf,
                linf_k=cfg.linf_k,
                bandwidth_l1=bw.l1,
                bandwidth_l2=bw.l2,
            )
            mspec = losses.multispectral_loss(
                target, x_hat, cfg.multispec_n_fft, cfg.multispec_hop, cfg.multispec_win
            )
            terms[f"multispectral_l{level}"] = mspec.mean() / bw.spec
            if cfg.spectral:
                terms[f"spectral_l{level}"] = losses.spectral_loss(target, x_hat).mean() / bw.spec
            with torch.no_grad():
                sc = losses.spectral_convergence(target, x_hat.detach()).mean()
                metrics[f"sc_l{level}"] = sc
                metrics[f"sc_db_l{level}"] = losses.sc_db(sc)
                metrics[f"commit_l{level}"] = q.commit_loss.detach()
                for name, value in q.metrics.items():
                    metrics[f"{name}_l{level}"] = value.detach()
        terms["commit"] = torch.stack([q.commit_loss for q in quantized]).sum()
        weights = self.loss_weights
        loss = sum(weights[name] * terms[name] for name in weights)
        return VQVAEOutput(
            loss=loss,
            terms=terms,
            weights=weights,
            metrics=metrics,
            recons=recons,
            codes=[q.codes for q in quantized],
        )

    # -- OpenAI checkpoints -----------------------------------------------------------------

    def jukebox_state_dict(self) -> dict[str, Tensor]:
        """The state dict restricted to OpenAI's keys (no EMA buffers), as in ``vqvae.pth.tar``."""
        return {
            key: value
            for key, value in self.state_dict().items()
            if not (key.startswith("bottleneck.") and key.rsplit(".", 1)[-1] in EMA_BUFFERS)
        }

    def tokens_per_step(self, batch_size: int = 1, world_size: int = 1) -> list[int]:
        """Codes per level in one optimiser step: ``(sample_length // hop_L) · batch · ranks``.

        Jukebox's ``make_vqvae`` passes this with ``batch_size=1`` to ``restore_k``.
        """
        return [
            (self.cfg.sample_length // hop) * batch_size * world_size for hop in self.hop_lengths
        ]

    def load_jukebox_state_dict(
        self, state_dict: Mapping[str, Tensor], num_tokens: Sequence[int] | None = None
    ) -> None:
        """Load an OpenAI VQ-VAE state dict (strictly) and restore the EMA state from ``k``.

        Accepts the checkpoint's ``"model"`` dict or the whole checkpoint dict, with or without
        DDP's ``module.`` prefix. The EMA state is rebuilt as Jukebox's ``restore_k``
        (``k_sum = k``, ``k_elem = 1``); with ``num_tokens`` (per level, e.g.
        :meth:`tokens_per_step`) both are scaled by ``num_tokens / K`` so fine-tuning does not
        restart every code on its first step. A plain ``load_state_dict(sd, strict=True)`` also
        works and restores like ``num_tokens=None``.
        """
        if "model" in state_dict and isinstance(state_dict["model"], Mapping):
            state_dict = state_dict["model"]
        sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
        self.load_state_dict(sd, strict=True)
        if num_tokens is not None:
            self.bottleneck.restore_ema(list(num_tokens))

    # -- folders ----------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``path/config.json`` and ``path/model.safetensors`` (all weights and EMA state),
        atomically: a crash never leaves a half-written folder at ``path``."""
        with atomic_dir(path) as tmp:
            save_config(self.cfg, str(Path(tmp) / CONFIG_FILE))
            save_tensors(self.state_dict(), Path(tmp) / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> VQVAE:
        """Rebuild a model saved by :meth:`save_pretrained` (strict load), in eval mode."""
        model = cls(read_model_config(path, VQVAEConfig, "VQ-VAE"))
        load_model_weights(model, path, "VQ-VAE")  # one file or shards
        return model.to(device).eval()
