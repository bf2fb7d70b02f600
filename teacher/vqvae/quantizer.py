"""EMA vector-quantisation bottleneck of the Jukebox VQ-VAE (paper §3.1, ``bottleneck.py``).

One :class:`BottleneckBlock` per level holds a codebook ``k`` (``Tensor[K, D]``). Encoder
outputs snap to their nearest code; the straight-through estimator passes gradients to the
encoder; the encoder is pulled towards its codes by the commit loss; the codebook itself has no
loss term: it follows an exponential moving average of the vectors assigned to each code
(VQ-VAE-2 / van den Oord et al. 2017, App. A.1), and codes that fall out of use are restarted on
random encoder outputs (Jukebox §3.1 "random restarts").

State-dict layout
-----------------
``k`` is OpenAI's only key per level (``bottleneck.level_blocks.<L>.k``). The EMA state that
OpenAI kept in plain attributes is stored here as persistent buffers, so a training run resumes
exactly: ``k_sum`` (``Tensor[K, D]``, EMA of per-code vector sums), ``k_elem`` (``Tensor[K]``,
EMA of per-code counts) and ``initialised`` (bool scalar). Loading a state dict that has ``k``
but none of those three (an OpenAI checkpoint) still works with ``strict=True``: the EMA state
is rebuilt as Jukebox's ``restore_k`` does (``k_sum = k``, ``k_elem = 1``, initialised).

Distributed training: when ``torch.distributed`` is initialised the per-batch sums and counts
are all-reduced and the random restart vectors broadcast from rank 0, so every rank holds the
same codebook without any further synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from teacher.device import has_values
from teacher.vqvae.losses import code_counts, codebook_entropy

EMA_BUFFERS = ("k_sum", "k_elem", "initialised")


@dataclass
class Quantized:
    """Output of one bottleneck level.

    Attributes:
        x: ``Tensor[B, D, T]`` quantised latents with the straight-through gradient (fp32).
        codes: ``LongTensor[B, T]`` code indices.
        commit_loss: scalar ``mean((x_q.detach() - x)**2)``.
        metrics: detached scalars: ``fit`` (mean squared distance to the chosen code),
            ``usage`` (distinct codes used by this batch, over all ranks when training),
            ``entropy`` (nats, of this batch's code histogram), ``dk`` (RMS change of the
            codebook by this step's update, 0 when not updating) and, when updating, ``alive``
            (codes whose EMA count is >= the revival threshold, Jukebox's "usage").
    """

    x: Tensor
    codes: Tensor
    commit_loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


class BottleneckBlock(nn.Module):
    """One level's codebook with EMA updates and random restarts.

    Args:
        l_bins: number of codes K.
        emb_width: code width D.
        mu: EMA decay of the sums and counts.
        threshold: codes whose EMA count falls below it are restarted (``revival_threshold``).
    """

    def __init__(self, l_bins: int, emb_width: int, mu: float, threshold: float = 1.0) -> None:
        super().__init__()
        self.l_bins = l_bins
        self.emb_width = emb_width
        self.mu = mu
        self.threshold = threshold
        self.register_buffer("k", torch.zeros(l_bins, emb_width))
        self.register_buffer("k_sum", torch.zeros(l_bins, emb_width))
        self.register_buffer("k_elem", torch.zeros(l_bins))
        self.register_buffer("initialised", torch.tensor(False))

    # -- codebook state ---------------------------------------------------------------------

    @torch.no_grad()
    def restore_ema(self, num_tokens: int | None = None) -> None:
        """Rebuild the EMA state from ``k`` (Jukebox ``restore_k``) to fine-tune a checkpoint.

        ``k_sum = k`` and ``k_elem = 1``; with ``num_tokens`` (tokens per step over all ranks)
        both are scaled by the expected count per code ``num_tokens / K``, so well-used codes are
        not restarted on the first step just because their count starts at 1.
        """
        scale = 1.0 if num_tokens is None else num_tokens / self.l_bins
        self.k_sum.copy_(self.k * scale)
        self.k_elem.fill_(scale)
        self.initialised.fill_(True)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # An OpenAI checkpoint has ``k`` but no EMA buffers: accept it under strict loading and
        # rebuild the EMA state as Jukebox's restore_k does. A partial EMA state stays an error.
        ema_keys = [prefix + name for name in EMA_BUFFERS]
        openai_style = prefix + "k" in state_dict and not any(k in state_dict for k in ema_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if openai_style:
            for key in ema_keys:
                if key in missing_keys:
                    missing_keys.remove(key)
            self.restore_ema()

    def _tile(self, x: Tensor) -> Tensor:
        """At least K candidate vectors from ``x`` (``Tensor[N, D]``): when N < K, repeat x and
        add small noise (std ``0.01/sqrt(D)``) so repeated restarts are distinct codes."""
        n, d = x.shape
        if n >= self.l_bins:
            return x
        x = x.repeat((self.l_bins + n - 1) // n, 1)
        return x + torch.randn_like(x) * (0.01 / math.sqrt(d))

    def _random_codes(self, x: Tensor) -> Tensor:
        """``Tensor[K, D]`` random rows of ``x``, identical on every rank (rank 0's)."""
        y = self._tile(x)
        rand = y[torch.randperm(y.shape[0], device=y.device)[: self.l_bins]].contiguous()
        if _dist_on():
            dist.broadcast(rand, 0)
        return rand

    @torch.no_grad()
    def init_codebook(self, x: Tensor) -> None:
        """Initialise the codebook from random encoder outputs ``x`` (``Tensor[N, D]``)."""
        rand = self._random_codes(x)
        self.k.copy_(rand)
        self.k_sum.copy_(rand)
        self.k_elem.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def update_codebook(self, x: Tensor, codes: Tensor) -> dict[str, Tensor]:
        """One EMA step from a batch (``x``: ``Tensor[N, D]`` fp32, ``codes``: ``LongTensor[N]``).

        ``k_sum <- mu k_sum + (1-mu) sum_{i: c_i=j} x_i``, ``k_elem <- mu k_elem + (1-mu) n_j``;
        ``k_j = k_sum_j / k_elem_j`` where ``k_elem_j >= threshold``, else a random encoder
        output (random restarts, Jukebox §3.1). Returns detached metrics.
        """
        mu = self.mu
        batch_sum = torch.zeros_like(self.k_sum).index_add_(0, codes, x.to(self.k_sum.dtype))
        batch_elem = code_counts(codes, self.l_bins).to(self.k_elem.dtype)
        rand = self._random_codes(x).to(self.k.dtype)
        if _dist_on():
            dist.all_reduce(batch_sum)
            dist.all_reduce(batch_elem)
        old_k = self.k.clone()
        self.k_sum.mul_(mu).add_(batch_sum, alpha=1.0 - mu)
        self.k_elem.mul_(mu).add_(batch_elem, alpha=1.0 - mu)
        alive = self.k_elem >= self.threshold
        # torch.where, not Jukebox's usage*mean + (1-usage)*rand: a long-dead code's count can
        # underflow to 0 and 0/0 * 0 would poison the codebook with NaN.
        mean = self.k_sum / self.k_elem.clamp_min(1e-30).unsqueeze(1)
        self.k.copy_(torch.where(alive.unsqueeze(1), mean, rand))
        return dict(
            usage=(batch_elem > 0).sum().float(),
            entropy=codebook_entropy(batch_elem),
            alive=alive.sum().float(),
            dk=torch.linalg.vector_norm(self.k - old_k) / math.sqrt(self.k.numel()),
        )

    # -- quantisation -----------------------------------------------------------------------

    def quantise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code of each row of ``x`` (``Tensor[N, D]``) by ``|x|^2 - 2 x.k + |k|^2``.

        Returns ``(codes LongTensor[N], fit)`` where fit is the mean squared distance. The
        expression and its evaluation order match Jukebox, so codes agree bit for bit. Runs in
        fp32 with autocast off: a bf16 matmul would pick wrong codes for close candidates.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            k_t = self.k.float().t()
            distance = (
                torch.sum(x**2, dim=-1, keepdim=True)
                - 2 * torch.matmul(x, k_t)
                + torch.sum(k_t**2, dim=0, keepdim=True)
            )
            min_distance, codes = torch.min(distance, dim=-1)
        return codes, min_distance.mean()

    def dequantise(self, codes: Tensor) -> Tensor:
        """``LongTensor[...]`` -> ``Tensor[..., D]`` code vectors."""
        return F.embedding(codes, self.k)

    def encode(self, x: Tensor) -> Tensor:
        """``Tensor[B, D, T]`` -> ``LongTensor[B, T]``."""
        b = x.shape[0]
        codes, _ = self.quantise(rearrange(x, "b d t -> (b t) d"))
        return rearrange(codes, "(b t) -> b t", b=b)

    def decode(self, codes: Tensor) -> Tensor:
        """``LongTensor[B, T]`` -> ``Tensor[B, D, T]``."""
        return rearrange(self.dequantise(codes), "b t d -> b d t")

    def forward(self, x: Tensor, update: bool = False) -> Quantized:
        """Quantise ``Tensor[B, D, T]``; with ``update`` also take one EMA step afterwards.

        The first updating call initialises the codebook from the batch (Jukebox init_k).
        Distances and codebook arithmetic run in fp32 whatever the input dtype.
        """
        b, d, t = x.shape
        if d != self.emb_width:
            raise ValueError(f"expected {self.emb_width} channels, got {d}")
        flat = rearrange(x, "b d t -> (b t) d").float()
        # a shape-only run (meta/fake tensors) cannot read the flag: it skips the init
        if update and has_values(self.initialised) and not bool(self.initialised):
            self.init_codebook(flat.detach())
        codes, fit = self.quantise(flat)
        x_q = self.dequantise(codes).float()
        if update:
            metrics = self.update_codebook(flat.detach(), codes)
        else:
            with torch.no_grad():
                counts = code_counts(codes, self.l_bins)
                metrics = dict(
                    usage=(counts > 0).sum().float(),
                    entropy=codebook_entropy(counts),
                    dk=torch.zeros((), device=x.device),
                )
        metrics["fit"] = fit.detach()
        commit_loss = torch.mean((x_q.detach() - flat) ** 2)
        # straight-through estimator: forward x_q, backward identity onto the encoder output
        x_st = flat + (x_q - flat).detach()
        return Quantized(
            x=rearrange(x_st, "(b t) d -> b d t", b=b),
            codes=rearrange(codes, "(b t) -> b t", b=b),
            commit_loss=commit_loss,
            metrics=metrics,
        )


class Bottleneck(nn.Module):
    """One :class:`BottleneckBlock` per level in ``level_blocks`` (level 0 = bottom)."""

    def __init__(
        self, l_bins: int, emb_width: int, mu: float, levels: int, threshold: float = 1.0
    ) -> None:
        super().__init__()
        self.levels = levels
        self.level_blocks = nn.ModuleList(
            BottleneckBlock(l_bins, emb_width, mu, threshold) for _ in range(levels)
        )

    def encode(self, xs: list[Tensor], start_level: int = 0) -> list[Tensor]:
        """Latents ``[Tensor[B, D, T_l]]`` of levels ``start_level..`` -> codes ``[LongTensor[B, T_l]]``."""
        blocks = self.level_blocks[start_level : start_level + len(xs)]
        return [block.encode(x) for block, x in zip(blocks, xs)]

    def decode(self, codes: list[Tensor], start_level: int = 0) -> list[Tensor]:
        """Codes of levels ``start_level..`` -> code vectors ``[Tensor[B, D, T_l]]``."""
        blocks = self.level_blocks[start_level : start_level + len(codes)]
        return [block.decode(z) for block, z in zip(blocks, codes)]

    def forward(self, xs: list[Tensor], update: bool | None = None) -> list[Quantized]:
        """Quantise every level; ``update`` defaults to ``self.training``.

        Outside training the quantised latents are detached, as in Jukebox, so an eval-mode
        forward can never move the encoder through the straight-through path.
        """
        if len(xs) != self.levels:
            raise ValueError(f"expected {self.levels} levels of latents, got {len(xs)}")
        update = self.training if update is None else update
        out = []
        for block, x in zip(self.level_blocks, xs):
            q = block(x, update=update)
            if not self.training:
                q.x = q.x.detach()
            out.append(q)
        return out

    @torch.no_grad()
    def restore_ema(self, num_tokens: list[int] | None = None) -> None:
        """Call :meth:`BottleneckBlock.restore_ema` per level (``num_tokens`` per level)."""
        for level, block in enumerate(self.level_blocks):
            block.restore_ema(None if num_tokens is None else num_tokens[level])
