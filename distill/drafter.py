"""The categorical student's final stage as an incremental draft model (fast WaveNet generation).

The final stage of a :class:`~student.categorical.CategoricalIAF` is causal in its input
tokens: position t reads the tokens before t only, so as an autoregressive model it gives
``q(x_t | x_<t) = softmax(stage(x_<t)[t] / τ)`` — the draft distribution of speculative
sampling (DESIGN §10). Running the whole stage over its receptive field for every draft costs a
full pass per token; :class:`IncrementalStage` runs it one position at a time instead
(Paine et al. 2016, "Fast Wavenet Generation Algorithm"), one column of the stack per position:

* a dilated layer of kernel k at dilation d computes, at position t,
  ``gate_t = W_c·c_t + b + Σ_j W_j · x_{t − (k−1−j)·d}``; instead of keeping its past inputs and
  reading them back, each layer pushes the past taps' products forward as soon as ``x_t`` is
  known: ``ahead_j[t + (k−1−j)·d] = W_j · x_t`` (``ahead_0`` also holds ``W_c·c + b``, the
  conditioning projected once per window). A step then costs per layer one product to push,
  one to gate, the gate's nonlinearity and one product for the skip and residual outputs;
* the input embedding and the input projection are one table (``V + 1`` rows: the codes and
  the shifted-in zero of position 0), the skip scale is folded into the skip weights;
* rewinding a rejected suffix is moving a pointer: a step at position t reads ``ahead[t]``,
  written by positions before t only, and every position from the rewind target on is stepped
  again (overwriting what a rejected draft pushed) before anything past it is read.

Rows may stand at different positions (a ``LongTensor[B]`` of positions per step; the shared
int position is the cheaper path). ``forward`` over a whole window gives the same logits as the
stage's parallel pass, and :meth:`IncrementalStage.prime` fills the buffers over a known prefix
in one batched pass (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from student.categorical import CategoricalIAF


def step_parameters(student: CategoricalIAF, stage: int | None = None) -> int:
    """Weights one :meth:`IncrementalStage.step` reads: every dilated layer's taps, residual and
    skip products and the output layers of the stage (default the final one); its conditioning
    projection is made once per window and its input is one row of a table."""
    k = student.n_passes - 1 if stage is None else stage
    stack = student.stage_net(k).net
    mods = [m for layer in stack.layers for m in (layer.conv, layer.res, layer.skip) if m]
    return sum(p.numel() for m in [*mods, stack.out] for p in m.parameters())


class IncrementalStage:
    """One stage of a categorical student, stepped position by position (module docs).

    Args:
        student: the categorical student; ``stage`` its stage to run (default the final one).
        batch_size: B.
        length: positions of the window.
        spare: positions a step may run past the window's end (their results discarded).
    """

    def __init__(
        self,
        student: CategoricalIAF,
        batch_size: int,
        length: int,
        stage: int | None = None,
        spare: int = 64,
    ) -> None:
        if student.family != "categorical":
            raise ValueError(f"an incremental stage needs a categorical student, got {student}")
        k = student.n_passes - 1 if stage is None else stage
        if k == 0:
            raise ValueError("stage 0 reads no tokens: it is not an autoregressive model")
        net = student.stage_net(k)
        stack = net.net
        cfg = stack.cfg
        w = stack.layers[0].conv.weight
        self.device, self.dtype = w.device, w.dtype
        self.batch_size, self.length = int(batch_size), int(length)
        self.kernel = kernel = cfg.kernel_size
        self.width = width = cfg.width
        self.size = self.length + spare + (kernel - 1) * max(cfg.dilations)
        n = len(stack.layers)
        scale = math.sqrt(1.0 / n)
        with torch.no_grad():
            # input table: row v = W_in · emb(v) + b_in; row V = b_in (position 0's zero input)
            table = F.linear(net.emb.weight, stack.inp.weight[:, :, 0], stack.inp.bias)
            self.table = torch.cat([table, stack.inp.bias[None]]).detach()
            self.zero = self.table.shape[0] - 1
            self.layers = []
            skip_b = 0.0
            for layer, d in zip(stack.layers, cfg.dilations):
                taps = layer.conv.weight  # (2W, W, k): tap j reads position t − (k−1−j)·d
                skip_w = layer.skip.weight[:, :, 0].t() * scale
                skip_b = skip_b + layer.skip.bias * scale
                res = layer.res
                self.layers.append(
                    {
                        "d": d,
                        "taps": [taps[:, :, j].t().contiguous() for j in range(kernel)],
                        "cond_w": layer.cond.weight[:, :, 0].t(),  # (C, 2W)
                        "cond_b": layer.cond.bias + layer.conv.bias,
                        "skip_w": skip_w.contiguous(),
                        "res_w": None if res is None else res.weight[:, :, 0].t().contiguous(),
                        "res_b": None if res is None else res.bias * math.sqrt(0.5),
                        # the conditioning's projection, by position: (S, B, 2W)
                        "cproj": torch.zeros(
                            self.size,
                            self.batch_size,
                            2 * width,
                            dtype=self.dtype,
                            device=self.device,
                        ),
                        # pushed products of the past taps, by position: (S, B, 2W) each
                        "ahead": [
                            torch.zeros(
                                self.size,
                                self.batch_size,
                                2 * width,
                                dtype=self.dtype,
                                device=self.device,
                            )
                            for _ in range(kernel - 1)
                        ],
                    }
                )
            self.skip_b = skip_b.detach()
            out = stack.out  # ReLU, 1x1, ReLU, 1x1 (the last in fp32)
            self.out1_w, self.out1_b = out[1].weight[:, :, 0].t(), out[1].bias
            self.out2_w, self.out2_b = out[3].weight[:, :, 0].float().t(), out[3].bias.float()
        self._rows = torch.arange(self.batch_size, device=self.device)
        self.steps = 0

    def begin(self, cond: Tensor) -> None:
        """Start a window: every layer's conditioning projection ``cond (B, T, C) @ W_c + b``,
        once (positions past ``T`` get zero conditioning); the pushes are cleared."""
        b, t = cond.shape[:2]
        cond = cond.to(self.dtype)
        for layer in self.layers:
            cproj = layer["cproj"]
            cproj[:t] = (
                torch.addmm(layer["cond_b"], cond.reshape(b * t, -1), layer["cond_w"])
                .view(b, t, -1)
                .transpose(0, 1)
            )
            cproj[t:] = layer["cond_b"]
            layer["ahead"][0].copy_(cproj)  # positions no push reaches (t < (k−1)·d)
            for other in layer["ahead"][1:]:
                other.zero_()

    def _input(self, tokens: Tensor | None) -> Tensor:
        if tokens is None:
            return self.table[self.zero].expand(self.batch_size, -1)
        return self.table[tokens.masked_fill(tokens < 0, self.zero)]

    def step(self, positions: Tensor | int, tokens: Tensor | None) -> Tensor:
        """Logits ``Tensor[B, V]`` fp32 of the stage at ``positions`` (``LongTensor[B]``, or one
        int for every row) whose input is ``tokens`` (``LongTensor[B]``, the codes at
        ``positions − 1``; a negative code, or ``None`` for every row, at position 0: the
        shifted-in zero)."""
        x = self._input(tokens)
        k = self.kernel
        skips = self.skip_b
        for layer in self.layers:
            ahead, taps, d = layer["ahead"], layer["taps"], layer["d"]
            if isinstance(positions, int):
                gate = torch.addmm(ahead[0][positions], x, taps[-1])
                for j in range(1, k - 1):
                    gate += ahead[j][positions]
                for j in range(k - 1):  # push: position t + (k−1−j)·d reads x_t through tap j
                    at = positions + (k - 1 - j) * d
                    if j == 0:  # written, not added: a rewound position is pushed again
                        torch.addmm(layer["cproj"][at], x, taps[0], out=ahead[0][at])
                    else:
                        torch.mm(x, taps[j], out=ahead[j][at])
            else:
                gate = torch.addmm(ahead[0][positions, self._rows], x, taps[-1])
                for j in range(1, k - 1):
                    gate += ahead[j][positions, self._rows]
                for j in range(k - 1):
                    at = positions + (k - 1 - j) * d
                    if j == 0:
                        push = torch.addmm(layer["cproj"][at, self._rows], x, taps[0])
                    else:
                        push = x @ taps[j]
                    ahead[j][at, self._rows] = push
            z = torch.tanh(gate[:, : self.width]) * torch.sigmoid(gate[:, self.width :])
            skips = torch.addmm(skips, z, layer["skip_w"])
            if layer["res_w"] is not None:
                x = torch.addmm(layer["res_b"], z, layer["res_w"], alpha=math.sqrt(0.5)).add_(
                    x, alpha=math.sqrt(0.5)
                )
        h = torch.relu(torch.addmm(self.out1_b, torch.relu(skips), self.out1_w))
        self.steps += 1
        return torch.addmm(self.out2_b, h.float(), self.out2_w)

    def prime(self, codes: Tensor) -> None:
        """Push every layer's taps over positions ``0 … n−1`` at once (a window's known prefix
        ``codes (B, n)``: position t reads ``codes[:, t−1]``): a few batched products per layer
        instead of n steps; called right after :meth:`begin`; the next :meth:`step` may be at
        any position ``<= n``."""
        b, n = codes.shape
        if n == 0:
            return
        k = self.kernel
        tokens = torch.cat([codes.new_full((b, 1), -1), codes[:, :-1]], dim=1)
        x = self._input(tokens.reshape(-1)).view(b, n, -1).transpose(0, 1)  # (n, B, W)
        for layer in self.layers:
            ahead, taps, d = layer["ahead"], layer["taps"], layer["d"]
            gate = ahead[0][:n] + x @ taps[-1]
            for j in range(1, k - 1):
                gate = gate + ahead[j][:n]
            # the prefix's pushes to the positions after it (gate above read the state of begin)
            for j in range(k - 1):
                off = (k - 1 - j) * d
                if j == 0:
                    ahead[0][off : off + n] = layer["cproj"][off : off + n] + x @ taps[0]
                else:
                    ahead[j][off : off + n] = x @ taps[j]
            # a gate at t < n reads pushes from t − off >= 0 only: add the prefix's own
            for j in range(k - 1):
                off = (k - 1 - j) * d
                if off < n:
                    gate[off:] = gate[off:] + x[: n - off] @ taps[j]
            z = torch.tanh(gate[..., : self.width]) * torch.sigmoid(gate[..., self.width :])
            if layer["res_w"] is not None:
                x = (x + z @ layer["res_w"] + layer["res_b"] / math.sqrt(0.5)) * math.sqrt(0.5)

    def forward(self, tokens: Tensor) -> Tensor:
        """The stage over positions ``0 … T−1`` step by step, input ``tokens (B, T)`` the
        previous stage's (or accepted) tokens: ``Tensor[B, T, V]`` (equals the parallel pass)."""
        out = []
        for t in range(tokens.shape[1]):
            out.append(self.step(t, tokens[:, t - 1] if t else None))
        return torch.stack(out, dim=1)


__all__ = ["IncrementalStage", "step_parameters"]
