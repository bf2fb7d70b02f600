"""Reusable convolutional blocks of the Jukebox VQ-VAE (paper §3, ``jukebox/vqvae/encdec.py``).

Every block keeps the attribute names and ``nn.Sequential`` layout of OpenAI's code, so that the
parameter names of an assembled model are exactly the keys of the released ``vqvae.pth.tar``
(e.g. ``level_blocks.0.model.0.1.model.3.model.1.weight``). Reordering or renaming a submodule
here breaks loading the published weights: ``tests/teacher/test_vqvae.py`` guards the key list.

Shapes: audio and features are channels-first, ``Tensor[B, C, T]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class ResConv1DBlock(nn.Module):
    """Dilated residual unit ``x + res_scale * conv1x1(relu(conv3_dilated(relu(x))))``.

    Layout ``model = Sequential(ReLU, Conv1d(k=3, dilation), ReLU, Conv1d(k=1))`` as in Jukebox,
    so its weights are ``model.1.*`` and ``model.3.*``.

    Args:
        width: channels C of the input and output.
        hidden: channels of the inner 3-tap convolution (``int(m_conv * width)`` in Jukebox).
        dilation: dilation of the 3-tap convolution; padding equals it, so T is preserved.
        zero_out: zero the output convolution at init, so the block starts as the identity.
        res_scale: factor on the residual branch.
    """

    def __init__(
        self,
        width: int,
        hidden: int,
        dilation: int = 1,
        zero_out: bool = False,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(width, hidden, 3, 1, dilation, dilation),
            nn.ReLU(),
            nn.Conv1d(hidden, width, 1, 1, 0),
        )
        if zero_out:
            nn.init.zeros_(self.model[-1].weight)
            nn.init.zeros_(self.model[-1].bias)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, C, T] -> Tensor[B, C, T]."""
        return x + self.res_scale * self.model(x)


def resnet_dilations(
    depth: int, growth_rate: int, cycle: int | None, reverse: bool = False
) -> list[int]:
    """Dilation of each residual unit: ``growth_rate ** (d % cycle)`` (no cycle: ``** d``).

    With ``reverse`` (the decoder) the list is reversed, so the decoder runs the widest
    dilation first and mirrors the encoder.
    """
    dilations = [growth_rate ** (d if cycle is None else d % cycle) for d in range(depth)]
    return dilations[::-1] if reverse else dilations


class Resnet1D(nn.Module):
    """A stack of ``depth`` :class:`ResConv1DBlock` with growing dilation (``model.<d>``).

    Args:
        width: channels C.
        depth: number of residual units.
        m_conv: inner width multiplier of each unit.
        dilation_growth_rate, dilation_cycle: see :func:`resnet_dilations`.
        zero_out: zero-initialise each unit's output convolution.
        res_scale: if True scale every residual branch by ``1/sqrt(depth)`` so the variance of
            the stack's output does not grow with depth.
        reverse_dilation: reverse the order of the units (decoder).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        reverse_dilation: bool = False,
    ) -> None:
        super().__init__()
        scale = 1.0 / math.sqrt(depth) if res_scale else 1.0
        dilations = resnet_dilations(depth, dilation_growth_rate, dilation_cycle, reverse_dilation)
        self.model = nn.Sequential(
            *[ResConv1DBlock(width, int(m_conv * width), d, zero_out, scale) for d in dilations]
        )

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, C, T] -> Tensor[B, C, T]."""
        return self.model(x)


def _resnet_kwargs(
    depth: int,
    m_conv: float,
    dilation_growth_rate: int,
    dilation_cycle: int | None,
    zero_out: bool,
    res_scale: bool,
) -> dict:
    return dict(
        depth=depth,
        m_conv=m_conv,
        dilation_growth_rate=dilation_growth_rate,
        dilation_cycle=dilation_cycle,
        zero_out=zero_out,
        res_scale=res_scale,
    )


class EncoderConvBlock(nn.Module):
    """``down_t`` strided down steps, each ``Conv1d(k=2s, stride s, pad s//2)`` + a residual
    stack, then ``Conv1d(width, out_channels, 3, 1, 1)``.

    ``model.<i>.0`` is the strided conv of step i, ``model.<i>.1`` its :class:`Resnet1D`,
    ``model.<down_t>`` the output projection. Maps ``Tensor[B, C_in, T]`` to
    ``Tensor[B, C_out, T / stride**down_t]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        down_t: int,
        stride_t: int,
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
    ) -> None:
        super().__init__()
        kernel, pad = 2 * stride_t, stride_t // 2
        res = _resnet_kwargs(
            depth, m_conv, dilation_growth_rate, dilation_cycle, zero_out, res_scale
        )
        blocks: list[nn.Module] = []
        for i in range(down_t):
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(in_channels if i == 0 else width, width, kernel, stride_t, pad),
                    Resnet1D(width, **res),
                )
            )
        blocks.append(nn.Conv1d(width, out_channels, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, C_in, T] -> Tensor[B, C_out, T // stride**down_t]."""
        return self.model(x)


class DecoderConvBlock(nn.Module):
    """Mirror of :class:`EncoderConvBlock`: ``Conv1d(in_channels, width, 3, 1, 1)`` then per
    step a residual stack and ``ConvTranspose1d(k=2s, stride s, pad s//2)``; the last transposed
    conv outputs ``out_channels``.

    ``model.0`` is the input projection, ``model.<i+1>.0`` the stack and ``model.<i+1>.1`` the
    transposed conv of step i (Jukebox's ``DecoderConvBock``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        down_t: int,
        stride_t: int,
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        reverse_dilation: bool = True,
    ) -> None:
        super().__init__()
        kernel, pad = 2 * stride_t, stride_t // 2
        res = _resnet_kwargs(
            depth, m_conv, dilation_growth_rate, dilation_cycle, zero_out, res_scale
        )
        blocks: list[nn.Module] = [nn.Conv1d(in_channels, width, 3, 1, 1)]
        for i in range(down_t):
            last = i == down_t - 1
            blocks.append(
                nn.Sequential(
                    Resnet1D(width, **res, reverse_dilation=reverse_dilation),
                    nn.ConvTranspose1d(
                        width, out_channels if last else width, kernel, stride_t, pad
                    ),
                )
            )
        self.model = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, C_in, T] -> Tensor[B, C_out, T * stride**down_t]."""
        return self.model(x)


class Encoder(nn.Module):
    """Raw audio to the latents of one level: chains the down blocks of levels ``0..L``.

    Jukebox gives every level its own encoder on raw audio (no sharing between levels); the
    encoder of level L has ``L + 1`` entries in ``level_blocks``, block 0 reading the audio
    channels and later blocks reading ``emb_width`` channels.

    Args:
        in_channels: audio channels (1).
        emb_width: latent width D.
        downs_t, strides_t: per chained level, number of down steps and their stride.
        width, depth, ...: residual stack settings, already scaled by the level's multiplier.
    """

    def __init__(
        self,
        in_channels: int,
        emb_width: int,
        downs_t: Sequence[int],
        strides_t: Sequence[int],
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
    ) -> None:
        super().__init__()
        if len(downs_t) != len(strides_t):
            raise ValueError("downs_t and strides_t must have the same length")
        self.level_blocks = nn.ModuleList(
            EncoderConvBlock(
                in_channels if level == 0 else emb_width,
                emb_width,
                down_t,
                stride_t,
                width,
                depth,
                m_conv,
                dilation_growth_rate,
                dilation_cycle,
                zero_out,
                res_scale,
            )
            for level, (down_t, stride_t) in enumerate(zip(downs_t, strides_t))
        )

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, C, T] -> Tensor[B, D, T / hop] (hop = prod of stride**down)."""
        for block in self.level_blocks:
            x = block(x)
        return x


class Decoder(nn.Module):
    """Latents of one level back to audio: the up blocks of levels ``L..0``, then
    ``out = Conv1d(emb_width, out_channels, 3, 1, 1)``.

    Same argument meanings as :class:`Encoder`; ``reverse_dilation`` reverses each residual
    stack (Jukebox ``vqvae_reverse_decoder_dilation``).
    """

    def __init__(
        self,
        out_channels: int,
        emb_width: int,
        downs_t: Sequence[int],
        strides_t: Sequence[int],
        width: int,
        depth: int,
        m_conv: float = 1.0,
        dilation_growth_rate: int = 1,
        dilation_cycle: int | None = None,
        zero_out: bool = False,
        res_scale: bool = False,
        reverse_dilation: bool = True,
    ) -> None:
        super().__init__()
        if len(downs_t) != len(strides_t):
            raise ValueError("downs_t and strides_t must have the same length")
        self.level_blocks = nn.ModuleList(
            DecoderConvBlock(
                emb_width,
                emb_width,
                down_t,
                stride_t,
                width,
                depth,
                m_conv,
                dilation_growth_rate,
                dilation_cycle,
                zero_out,
                res_scale,
                reverse_dilation,
            )
            for down_t, stride_t in zip(downs_t, strides_t)
        )
        self.out = nn.Conv1d(emb_width, out_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[B, D, T / hop] -> Tensor[B, C, T]; runs the level blocks top-down."""
        for block in reversed(self.level_blocks):
            x = block(x)
        return self.out(x)


__all__ = [
    "DecoderConvBlock",
    "Decoder",
    "EncoderConvBlock",
    "Encoder",
    "ResConv1DBlock",
    "Resnet1D",
    "resnet_dilations",
]
