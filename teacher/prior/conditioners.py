"""Conditioning blocks of the Jukebox priors (paper §4, ``jukebox/prior/conditioners.py``).

* :class:`LabelConditioner` — artist + bag of genres → the start token; at the top level also
  the timing signal: three :class:`RangeEmbedding` (total length, absolute position interpolated
  over the window, relative position) summed into one vector per position.
* :class:`UpsamplerConditioner` — the codes of the level above → one vector per position of
  this level (embedding, decoder-style residual stack + transposed convolutions, LayerNorm).

Module and parameter names are OpenAI's checkpoint keys below ``y_emb.`` and
``conditioner_blocks.0.``: ``bow_genre_emb.emb.weight``, ``artist_emb.emb.weight``,
``{total_length,absolute_pos,relative_pos}_emb.emb.weight``; ``x_emb.weight``,
``cond.model.0.*`` (input conv), ``cond.model.<i+1>.0.blocks.<d>.model.{1,3}.*`` (residual
unit d before up step i), ``cond.model.<i+1>.1.*`` (transposed conv of step i), ``ln.*``.
The residual units sit in a ``blocks`` list, not a ``model`` Sequential, because the released
upsamplers were built with ``cond_c_res=1`` (Jukebox's ``Resnet1D`` renames its list when it
checkpoints), and those are the keys in ``prior_level_{0,1}.pth.tar``.

Shapes: label vectors ``LongTensor[B, 4 + G]``, codes ``LongTensor[B, T]``, outputs
``Tensor[B, T, D]`` (channels last, as the transformer wants them).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from einops import rearrange
from torch import Tensor, nn

from teacher.device import has_values
from teacher.prior.attention import LayerNorm
from teacher.prior.config import LabelConditionerConfig, UpsamplerConditionerConfig
from teacher.vqvae.modules import ResConv1DBlock, resnet_dilations


class SimpleEmbedding(nn.Module):
    """``nn.Embedding`` kept under ``.emb`` (OpenAI's ``SimpleEmbedding``), init std
    ``0.01 · init_scale``; indices are checked, since a bad label id would otherwise be a device
    assert on GPU."""

    def __init__(self, bins: int, width: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.bins = bins
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)

    def forward(self, ids: Tensor) -> Tensor:
        """LongTensor[B, K] with ids in ``[0, bins)`` -> Tensor[B, K, D]."""
        _check_ids(ids, self.bins, "label id")
        return self.emb(ids)

    @torch.no_grad()
    def grow(self, bins: int) -> None:
        """Append rows up to ``bins`` (new names): the table ``[bins_old, D]`` becomes
        ``[bins, D]`` with the old rows bit-identical and every new row a copy of row 0 (the
        unknown name), so a new name starts out conditioning as "unknown" did. A new
        parameter replaces the old one (build the optimiser afterwards)."""
        if bins < self.bins:
            raise ValueError(f"cannot shrink an embedding of {self.bins} rows to {bins}")
        if bins == self.bins:
            return
        old = self.emb.weight
        new = nn.Embedding(bins, old.shape[1], device=old.device, dtype=old.dtype)
        new.weight[: self.bins] = old
        new.weight[self.bins :] = old[0]
        new.weight.requires_grad_(old.requires_grad)
        self.emb, self.bins = new, bins


class RangeEmbedding(nn.Module):
    """Embed a value (or a linearly interpolated range of values) by binning it.

    ``[pos_min, pos_max)`` is cut into ``bins`` equal bins: ``bin = floor(bins · (v − min) /
    (max − min))``. With ``n_time > 1`` the input is a range ``[start, end)`` and position ``i``
    of the window gets ``start + (end − start) · i / n_time``. ``clamp`` clips ``end`` into
    ``[min, max]`` first (Jukebox does so for the relative position only). The arithmetic is
    fp32 and in the reference's order so bins match it exactly at bin edges.
    """

    def __init__(
        self,
        n_time: int,
        bins: int,
        pos_range: tuple[float, float],
        width: int,
        init_scale: float = 1.0,
        clamp: bool = False,
    ) -> None:
        super().__init__()
        self.n_time = n_time
        self.bins = bins
        self.pos_min, self.pos_max = float(pos_range[0]), float(pos_range[1])
        self.clamp = clamp
        self.emb = nn.Embedding(bins, width)
        nn.init.normal_(self.emb.weight, std=0.01 * init_scale)

    def bin_index(self, pos_start: Tensor, pos_end: Tensor | None = None) -> Tensor:
        """Bins ``LongTensor[B, n_time]`` of values ``Tensor[B, 1]`` (range ends ``[B, 1]``).

        Raises ``ValueError`` when a bin falls outside ``[0, bins)`` (the value is outside the
        range the model was built for).
        """
        if pos_start.dim() != 2:
            raise ValueError(f"expected positions of shape (B, 1), got {tuple(pos_start.shape)}")
        pos_start = pos_start.float()
        if self.n_time != 1:
            if pos_end is None:
                raise ValueError("an interpolated range embedding needs pos_end")
            pos_end = pos_end.float()
            if self.clamp:
                pos_end = pos_end.clamp(self.pos_min, self.pos_max)
            steps = torch.arange(self.n_time, dtype=torch.float, device=pos_start.device)
            interpolation = steps.view(1, self.n_time) / self.n_time
            position = pos_start + (pos_end - pos_start) * interpolation
        else:
            position = pos_start
        normalised = (position - self.pos_min) / (self.pos_max - self.pos_min)
        index = (self.bins * normalised).floor().long()
        _check_ids(
            index,
            self.bins,
            f"timing bin (range [{self.pos_min:g}, {self.pos_max:g}) — is the label's total "
            "length/offset inside the prior's min/max duration?)",
        )
        return index

    def forward(self, pos_start: Tensor, pos_end: Tensor | None = None) -> Tensor:
        """Tensor[B, 1] (and Tensor[B, 1]) -> Tensor[B, n_time, D]."""
        return self.emb(self.bin_index(pos_start, pos_end))


class LabelConditioner(nn.Module):
    """Artist/genre start token and the top level's timing signal (Jukebox ``LabelConditioner``).

    Args:
        cfg: the label layout and timing ranges.
        width: the prior's width D.
        n_time: positions of the timing signal (the prior's ``n_ctx`` music codes).
        sample_rate: converts ``cfg``'s durations (seconds) to the label's sample units.
        init_scale: the prior's init scale (embeddings std ``0.01 · init_scale``).
    """

    def __init__(
        self,
        cfg: LabelConditionerConfig,
        width: int,
        n_time: int,
        sample_rate: int,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.width = width
        self.n_time = n_time
        self.bow_genre_emb = SimpleEmbedding(cfg.genre_bins, width, init_scale)
        self.artist_emb = SimpleEmbedding(cfg.artist_bins, width, init_scale)
        if cfg.include_timing:
            sr = sample_rate
            self.total_length_emb = RangeEmbedding(
                1, cfg.t_bins, (cfg.min_duration * sr, cfg.max_duration * sr), width, init_scale
            )
            self.absolute_pos_emb = RangeEmbedding(
                n_time, cfg.t_bins, (0.0, cfg.max_duration * sr), width, init_scale
            )
            self.relative_pos_emb = RangeEmbedding(
                n_time, cfg.t_bins, (0.0, 1.0), width, init_scale, clamp=True
            )

    def grow(self, artist_bins: int, genre_bins: int) -> None:
        """Grow the artist and genre tables to ``artist_bins``/``genre_bins`` rows for new
        names (:meth:`SimpleEmbedding.grow`: old rows untouched, new rows copies of the
        unknown row 0) and record the new sizes in ``self.cfg``."""
        self.artist_emb.grow(artist_bins)
        self.bow_genre_emb.grow(genre_bins)
        self.cfg = dataclasses.replace(self.cfg, artist_bins=artist_bins, genre_bins=genre_bins)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """Label vectors without lyrics ``LongTensor[B, 4 + G]`` ->
        ``(start Tensor[B, 1, D], timing Tensor[B, n_time, D] | None)``.

        ``y = [total_length, offset, length, artist, genre × G]``, lengths in samples; empty
        genre slots are -1 and contribute nothing (Jukebox masks them out of the bag).
        """
        g = self.cfg.max_genres
        if y.dim() != 2 or y.shape[1] != 4 + g:
            raise ValueError(f"expected labels of shape (B, {4 + g}), got {tuple(y.shape)}")
        total_length, offset, length = y[:, 0:1], y[:, 1:2], y[:, 2:3]
        artist, genre = y[:, 3:4], y[:, 4:]
        mask = rearrange((genre >= 0).to(self.artist_emb.emb.weight.dtype), "b g -> b g 1")
        genre_emb = (self.bow_genre_emb(genre.clamp(min=0)) * mask).sum(dim=1, keepdim=True)
        start = genre_emb + self.artist_emb(artist)
        if not self.cfg.include_timing:
            return start, None
        total = total_length.float()
        begin, end = offset.float(), (offset + length).float()
        timing = (
            self.total_length_emb(total)
            + self.absolute_pos_emb(begin, end)
            + self.relative_pos_emb(begin / total, end / total)
        )
        return start, timing


class ConditionerResnet(nn.Module):
    """Dilated residual stack with its units in ``blocks`` (OpenAI ``Resnet1D`` built with
    ``checkpoint_res=1``): dilation ``growth ** (d % cycle)``, optional ``1/sqrt(depth)``
    residual scale and zero-initialised unit outputs."""

    def __init__(self, width: int, cfg: UpsamplerConditionerConfig) -> None:
        super().__init__()
        scale = 1.0 / math.sqrt(cfg.depth) if cfg.res_scale else 1.0
        dilations = resnet_dilations(cfg.depth, cfg.dilation_growth_rate, cfg.dilation_cycle)
        hidden = int(cfg.m_conv * width)
        self.blocks = nn.ModuleList(
            ResConv1DBlock(width, hidden, d, cfg.zero_out, scale) for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, C, T] -> Tensor[B, C, T]."""
        for block in self.blocks:
            x = block(x)
        return x


class ConditionerDecoderBlock(nn.Module):
    """Jukebox ``DecoderConvBock`` as the conditioner builds it: ``model.0 = Conv1d(D, W, 3)``,
    then per up step ``model.<i+1> = Sequential(ConditionerResnet, ConvTranspose1d(k=2s, stride
    s, pad s/2))``; the last transposed conv returns to D channels. Dilations are not reversed.
    """

    def __init__(
        self, cfg: UpsamplerConditionerConfig, width: int, down_t: int, stride_t: int
    ) -> None:
        super().__init__()
        kernel, pad = 2 * stride_t, stride_t // 2
        steps: list[nn.Module] = [nn.Conv1d(width, cfg.width, 3, 1, 1)]
        for i in range(down_t):
            out = width if i == down_t - 1 else cfg.width
            steps.append(
                nn.Sequential(
                    ConditionerResnet(cfg.width, cfg),
                    nn.ConvTranspose1d(cfg.width, out, kernel, stride_t, pad),
                )
            )
        self.model = nn.Sequential(*steps)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, D, T] -> Tensor[B, D, T · stride**down_t]."""
        return self.model(x)


class UpsamplerConditioner(nn.Module):
    """Codes of the level above -> one conditioning vector per code of this level.

    ``x_emb`` embeds the upper codes at the prior's width D (std ``0.02 · init_scale``);
    ``cond`` is a decoder block (Jukebox ``DecoderConvBock``: ``Conv1d(D, W, 3)`` then per up step
    a residual stack and ``ConvTranspose1d(k=2s, stride s, pad s/2)``, the last back to D);
    ``ln`` a LayerNorm. Maps ``LongTensor[B, T_up]`` to ``Tensor[B, T_up · s**down, D]``.
    """

    def __init__(
        self,
        cfg: UpsamplerConditionerConfig,
        l_bins: int,
        width: int,
        down_t: int,
        stride_t: int,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.l_bins = l_bins
        self.ratio = stride_t**down_t
        self.x_emb = nn.Embedding(l_bins, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * init_scale)
        self.cond = ConditionerDecoderBlock(cfg, width, down_t, stride_t)
        self.ln = LayerNorm(width)

    def forward(self, upper: Tensor) -> Tensor:
        """LongTensor[B, T_up] -> Tensor[B, T_up · ratio, D]."""
        if upper.dim() != 2:
            raise ValueError(f"expected upper codes of shape (B, T_up), got {tuple(upper.shape)}")
        _check_ids(upper, self.l_bins, "upper-level code")
        x = rearrange(self.x_emb(upper), "b t d -> b d t")
        x = self.cond(x)
        return self.ln(rearrange(x, "b d t -> b t d"))


def _check_ids(ids: Tensor, bins: int, what: str) -> None:
    """Raise ``ValueError`` unless every id is in ``[0, bins)`` (one host sync)."""
    if ids.numel() and has_values(ids) and not bool(((ids >= 0) & (ids < bins)).all()):
        bad = ids[(ids < 0) | (ids >= bins)]
        raise ValueError(f"{what} out of range [0, {bins}): {bad[:8].tolist()}")


__all__ = [
    "ConditionerDecoderBlock",
    "ConditionerResnet",
    "LabelConditioner",
    "RangeEmbedding",
    "SimpleEmbedding",
    "UpsamplerConditioner",
]
