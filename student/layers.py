"""Building blocks of the parallel students: causal shift, gated causal dilated conv stacks and
the affine autoregressive flow layer.

Causality contract (what makes a stack a valid IAF stage): every block here maps an input
sequence whose position t already holds information from positions ``< t`` only (the caller
shifts it with :func:`shift_right`) to an output whose position t reads input positions ``<= t``
only. So a stage's output at t depends on the previous stage's tokens (and the noise) at
positions ``< t`` only, and all positions are computed in one parallel pass (Parallel WaveNet,
van den Oord et al. 2018; ClariNet, Ping et al. 2019).

Shapes: sequences are channels-last ``Tensor[B, T, C]`` at the module edges (as the teacher's
conditioning is), channels-first ``[B, C, T]`` inside the convolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from student.base import autocast_off
from student.config import StageConfig


def shift_right(x: Tensor, fill: Tensor | float = 0.0) -> Tensor:
    """Shift ``Tensor[B, T, ...]`` right by one position along T: position t holds ``x[t-1]``,
    position 0 holds ``fill`` (a scalar, or a tensor broadcastable to ``x[:, :1]``).

    This is the step that turns "depends on positions <= t" into "depends on positions < t"
    (WaveNet's causal shift; Jukebox's ``roll(x_emb(z), 1)``).
    """
    if x.shape[1] == 0:
        return x
    first = torch.zeros_like(x[:, :1]) + fill
    return torch.cat([first, x[:, :-1]], dim=1)


class CausalConv1d(nn.Conv1d):
    """A 1-D convolution padded on the left only, so output t reads inputs ``t - (k-1)·d … t``.

    ``Tensor[B, C_in, T]`` -> ``Tensor[B, C_out, T]`` for any T.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class GatedLayer(nn.Module):
    """One WaveNet layer: ``z = tanh(a) · σ(b)`` with ``[a, b] = conv_dilated(x) + W_c · c``.

    The conditioning ``c`` is added in every layer (WaveNet's local conditioning); ``z`` feeds a
    1×1 residual projection (``x + res(z)``, scaled by ``√½`` to keep the variance flat over
    depth, as in the Parallel WaveNet/DeepVoice code) and a 1×1 skip projection.
    """

    def __init__(
        self,
        width: int,
        skip_width: int,
        cond_width: int,
        kernel_size: int,
        dilation: int,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv = CausalConv1d(width, 2 * width, kernel_size, dilation)
        self.cond = nn.Conv1d(cond_width, 2 * width, 1)
        # the last layer of a stack feeds only the skip path: a residual projection there would
        # be a parameter without gradient (and DDP would need find_unused_parameters)
        self.res = nn.Conv1d(width, width, 1) if residual else None
        self.skip = nn.Conv1d(width, skip_width, 1)

    def forward(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``x Tensor[B, W, T]``, ``c Tensor[B, C, T]`` -> ``(x' [B, W, T], skip [B, S, T])``."""
        a, b = (self.conv(x) + self.cond(c)).chunk(2, dim=1)
        z = torch.tanh(a) * torch.sigmoid(b)
        if self.res is None:
            return x, self.skip(z)
        return (x + self.res(z)) * math.sqrt(0.5), self.skip(z)


class CausalStack(nn.Module):
    """A stack of :class:`GatedLayer` with skip connections and a 2-layer 1×1 output head
    whose last projection runs in fp32 (the output is fp32 even under autocast).

    ``x Tensor[B, T, C_in]`` (already shifted: position t holds information from < t) and
    ``cond Tensor[B, T, C]`` -> ``Tensor[B, T, C_out]`` whose position t reads ``x`` at positions
    ``<= t`` only. ``zero_out`` zero-initialises the last projection, so the stack starts by
    emitting exactly 0 (an identity flow, Glow's zero init).
    """

    def __init__(
        self,
        in_channels: int,
        cond_width: int,
        out_channels: int,
        cfg: StageConfig,
        zero_out: bool = False,
    ) -> None:
        super().__init__()
        skip = cfg.skip_width or cfg.width
        self.cfg = cfg
        self.inp = nn.Conv1d(in_channels, cfg.width, 1) if in_channels else None
        self.width = cfg.width
        n = len(cfg.dilations)
        self.layers = nn.ModuleList(
            GatedLayer(cfg.width, skip, cond_width, cfg.kernel_size, d, residual=i < n - 1)
            for i, d in enumerate(cfg.dilations)
        )
        self.out = nn.Sequential(
            nn.ReLU(), nn.Conv1d(skip, skip, 1), nn.ReLU(), nn.Conv1d(skip, out_channels, 1)
        )
        if zero_out:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor | None, cond: Tensor) -> Tensor:
        """``x Tensor[B, T, C_in] | None`` (None: no sequence input, the stack reads only the
        conditioning), ``cond Tensor[B, T, C]`` -> ``Tensor[B, T, C_out]``.

        Without autograd (and without autocast) it runs :meth:`infer`: the same function as
        time-major products, several times faster on a CPU than the convolutions."""
        if not torch.is_grad_enabled() and not _autocasting(cond):
            return self.infer(x, cond)
        c = rearrange(cond, "b t c -> b c t")
        if x is None:
            h = c.new_zeros(c.shape[0], self.width, c.shape[2])
        else:
            h = self.inp(rearrange(x, "b t c -> b c t"))
        skips = 0.0
        for layer in self.layers:
            h, s = layer(h, c)
            skips = skips + s
        h = self.out[:-1](skips * math.sqrt(1.0 / len(self.layers)))
        last = self.out[-1]
        with autocast_off():  # the output projection (logits, shift/log-scale) in fp32
            out = F.conv1d(h.float(), last.weight.float(), last.bias.float())
        return rearrange(out, "b c t -> b t c")

    def infer(self, x: Tensor | None, cond: Tensor) -> Tensor:
        """:meth:`forward` for inference, ``Tensor[B, T, C_in] | None`` and ``Tensor[B, T, C]``
        -> ``Tensor[B, T, C_out]``: every convolution as matrix products over time-major rows
        ``[T·B, C]`` (a 1×1 convolution is one product; a dilated one is one product per tap,
        its tap at ``t − s`` a row slice of a left-padded buffer — no copy per layer), the
        residual and skip projections as one product, the residual stream updated in place.
        Equal to the convolutions up to rounding (tested); no autograd graph."""
        b, t, _ = cond.shape
        width, kernel, layers = self.width, self.cfg.kernel_size, self.layers
        pad = (kernel - 1) * max(self.cfg.dilations)
        c = cond.transpose(0, 1).reshape(t * b, cond.shape[-1])  # time-major: row t·B + b
        hbuf = c.new_zeros(pad + t, b, width)  # the residual stream, ``pad`` zeros first
        h = hbuf[pad:].view(t * b, width)
        if x is not None:
            rows = x.to(c.dtype).transpose(0, 1).reshape(t * b, x.shape[-1])
            torch.addmm(self.inp.bias, rows, self.inp.weight[:, :, 0].t(), out=h)
        skips: Tensor | None = None
        for layer in layers:
            conv, d = layer.conv, layer.conv.dilation[0]
            gate = torch.addmm(layer.cond.bias + conv.bias, c, layer.cond.weight[:, :, 0].t())
            for j in range(kernel):  # tap j reads the input (kernel − 1 − j)·d positions back
                s = (kernel - 1 - j) * d
                gate.addmm_(
                    hbuf[pad - s : pad - s + t].view(t * b, width), conv.weight[:, :, j].t()
                )
            a, g = gate.chunk(2, dim=1)
            z = torch.tanh(a.contiguous()).mul_(torch.sigmoid(g))  # tanh of a strided half: slow
            if layer.res is None:
                skip = torch.addmm(layer.skip.bias, z, layer.skip.weight[:, :, 0].t())
            else:
                w = torch.cat([layer.res.weight[:, :, 0], layer.skip.weight[:, :, 0]])
                both = torch.addmm(torch.cat([layer.res.bias, layer.skip.bias]), z, w.t())
                h.add_(both[:, :width]).mul_(math.sqrt(0.5))
                skip = both[:, width:]
            skips = skip if skips is None else skips.add_(skip)
        hidden = self.out[1]
        y = torch.relu_(skips.mul_(math.sqrt(1.0 / len(layers))))
        y = torch.relu_(torch.addmm(hidden.bias, y, hidden.weight[:, :, 0].t()))
        last = self.out[-1]
        out = torch.addmm(last.bias.float(), y.float(), last.weight[:, :, 0].float().t())
        return out.view(t, b, out.shape[-1]).transpose(0, 1).contiguous()


def _autocasting(x: Tensor) -> bool:
    """Whether autocast is on for ``x``'s device type (the convolutions then run as it casts)."""
    return torch.is_autocast_enabled(x.device.type)


class AffineARFlow(nn.Module):
    """One affine autoregressive flow ``v' = μ(v_<t) + σ(v_<t) · v_t`` (IAF, Kingma et al.
    2016; the Parallel WaveNet/ClariNet student flow) in a D-dimensional code space.

    A :class:`CausalStack` reads ``shift_right(v)`` and the conditioning and emits the shift μ
    and the log-scale ``log σ``, clamped to ``[log_sigma_min, log_sigma_max]`` (ClariNet clamps
    at −7 so the log-determinant stays finite). The last projection is zero-initialised: the
    flow starts as the identity. The Jacobian ``∂v'/∂v`` is triangular with diagonal σ, so
    ``log|det| = Σ log σ``.
    """

    def __init__(
        self,
        dim: int,
        cond_width: int,
        cfg: StageConfig,
        log_sigma_min: float = -7.0,
        log_sigma_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.log_sigma_min, self.log_sigma_max = log_sigma_min, log_sigma_max
        self.net = CausalStack(dim, cond_width, 2 * dim, cfg, zero_out=True)

    def shift_scale(self, v: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``v Tensor[B, T, D]`` -> ``(μ [B, T, D], log σ [B, T, D])``, both reading ``v_<t``."""
        # v is fp32 (the flow's algebra); the stack runs in the conditioning's dtype
        mu, log_sigma = self.net(shift_right(v).to(cond.dtype), cond).float().chunk(2, dim=-1)
        return mu, log_sigma.clamp(self.log_sigma_min, self.log_sigma_max)

    def forward(self, v: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``v Tensor[B, T, D]`` -> ``(v' [B, T, D], μ, log σ)``."""
        mu, log_sigma = self.shift_scale(v, cond)
        return mu + torch.exp(log_sigma) * v, mu, log_sigma


__all__ = ["AffineARFlow", "CausalConv1d", "CausalStack", "GatedLayer", "shift_right"]
