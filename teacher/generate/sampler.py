"""Sampling one window of a Jukebox prior (paper §4.3), on the prior's decoding engine.

:func:`sample_window` is Jukebox's ``primed_sample`` for one window of at most ``n_ctx`` codes:
the forced part (the lyric window for single-style lyric priors, then any prefix of codes) is
primed by the engine's multi-query step, in chunks; the remaining codes are drawn one static
step at a time (:class:`~teacher.generate.engine.DecodingEngine`: a fixed sequence of kernels,
a CUDA graph on CUDA). Draws are Gumbel-max on noise drawn in blocks of :data:`NOISE_BLOCK`
steps: ``argmax(logits / τ + g) = argmax(logits + τ·g)`` with ``g = -log(-log U)`` is an exact
draw from ``softmax(logits / τ)`` (Gumbel 1954; the trick ``torch.multinomial`` itself uses, but
with one vectorised draw per 64 steps). Nothing syncs with the host inside a step.

Random draws, for anyone reproducing a run: per call, the noise of steps ``[i, i + 64)`` is
one ``torch.rand((min(64, n_new - i), B, l_bins), generator=generator)``, step ``i + j``
using row ``j``; ``U = 0`` gives ``g = -inf`` (that code is skipped, probability 2^-24).

:func:`filter_logits` is the reference's top-k / nucleus filter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from teacher.generate.engine import NOISE_BLOCK, engine_for
from teacher.generate.windows import DEFAULT_CHUNK
from teacher.prior.model import Conditioning, Prior

log = logging.getLogger(__name__)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Top-k and/or nucleus filtering of ``Tensor[..., V]`` logits (``-inf`` where removed).

    Reference semantics (``jukebox/transformer/ops.py``): top-k keeps every logit ``>=`` the
    k-th largest (ties at the threshold survive); top-p keeps the smallest prefix of the sorted
    distribution whose probability reaches ``top_p``, i.e. a token is removed when the
    cumulative probability *before* it already exceeds ``top_p`` — the most likely token always
    stays. Returns a new tensor.
    """
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 <= top_p <= 1, got {top_k}, {top_p}")
    logits = logits.clone()
    top_k = min(top_k, logits.shape[-1])
    if top_k > 0:
        threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p > 0.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits.float(), dim=-1), dim=-1)
        remove = cumulative > top_p
        # shift right: keep the first token that crosses the threshold (and always the top one)
        remove = torch.cat([torch.zeros_like(remove[..., :1]), remove[..., :-1]], dim=-1)
        remove = torch.zeros_like(remove).scatter(-1, order, remove)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


StepHook = Callable[[int, Tensor], None]


def gumbel_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, ``U ~ Uniform[0, 1)``, fp32 ``Tensor[shape]``.

    ``argmax(logits + g)`` over the last axis is then a draw from ``softmax(logits)``.
    """
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return u.log_().neg_().log_().neg_()


def sample_window(
    prior: Prior,
    n_samples: int,
    cond: Conditioning,
    length: int,
    prefix: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk_size: int | None = None,
    on_logits: StepHook | None = None,
) -> Tensor:
    """Draw ``LongTensor[B, length]`` codes of one window, ``B = n_samples``.

    Args:
        prior: an eval-mode :class:`Prior` (dropout would break the cache's equivalence).
        n_samples: B.
        cond: from ``prior.condition(labels, upper)``, batch 1 or B; its per-position
            conditioning must cover ``length`` positions.
        length: codes in the window, ``<= n_ctx``.
        prefix: ``LongTensor[B, T0]`` codes to continue (``T0 < length``); returned unchanged.
        temperature: logits are divided by it (Jukebox samples at 0.98-0.99).
        top_k, top_p: :func:`filter_logits` after the temperature.
        generator: the random source of the draws (on the model's device); see the module
            docs for the draw order.
        progress: called as ``progress(done, total)`` after each sampled code.
        chunk_size: positions per forward while priming the forced part (None: one forward).
        on_logits: test/inspection hook, called as ``on_logits(t, logits)`` with the fp32
            ``Tensor[B, l_bins]`` logits of code t before temperature and filtering; they equal
            row t of ``prior.logits`` of the returned codes.

    For single-style lyric priors the lyric window is the forced start of the sequence and the
    draws are restricted to the music vocabulary (the reference draws from the joint vocabulary
    and maps a drawn lyric token to code 0; a trained model puts ~no mass there).

    The result is an ordinary tensor (it may feed a training step), although the sampling
    itself runs under ``torch.inference_mode``.
    """
    cfg = prior.cfg
    if prior.training:
        raise RuntimeError("call prior.eval() before sampling: dropout breaks the KV cache")
    if not 1 <= length <= cfg.n_ctx:
        raise ValueError(f"length must be in [1, n_ctx={cfg.n_ctx}], got {length}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 <= top_p <= 1, got {top_k}, {top_p}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cond = cond.expand(n_samples)
    if prefix is not None:
        if prefix.dim() != 2 or prefix.shape[0] != n_samples:
            raise ValueError(f"prefix must be (n_samples, T0), got {tuple(prefix.shape)}")
        if prefix.shape[1] >= length:
            raise ValueError(f"prefix ({prefix.shape[1]} codes) must be shorter than {length}")
        if prefix.numel() and not bool(((prefix >= 0) & (prefix < cfg.l_bins)).all()):
            raise ValueError(f"prefix codes must be in [0, {cfg.l_bins})")
    n_lyr = cfg.n_tokens if cfg.single_sequence else 0
    x_cond = cond.x_cond
    if x_cond is not None and x_cond.shape[1] < n_lyr + length:
        raise ValueError(
            f"the conditioning covers {x_cond.shape[1]} positions, need {n_lyr + length}"
        )
    with torch.inference_mode():
        music = _sample(
            prior,
            n_samples,
            cond,
            length,
            prefix,
            temperature,
            top_k,
            top_p,
            generator,
            progress,
            chunk_size,
            on_logits,
        )
    # a normal tensor again (inference tensors cannot be saved for backward)
    return music.t().clone()


def _sample(
    prior: Prior,
    n: int,
    cond: Conditioning,
    length: int,
    prefix: Tensor | None,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    progress: Callable[[int, int], None] | None,
    chunk_size: int | None,
    on_logits: StepHook | None,
) -> Tensor:
    """The body of :func:`sample_window` on the prior's decoding engine -> music codes
    ``LongTensor[length, B]``."""
    cfg = prior.cfg
    engine = engine_for(prior, n)
    device = engine.device
    music = torch.zeros(length, n, dtype=torch.long, device=device)
    n_prefix = 0 if prefix is None else prefix.shape[1]
    forced = []
    if cfg.single_sequence:
        forced.append(cond.lyrics.to(device).expand(n, -1))
    if n_prefix:
        music[:n_prefix] = prefix.to(device).t()
        forced.append(prefix.to(device) + cfg.vocab_offset)
    engine.begin(cond, torch.cat(forced, dim=1) if forced else None, chunk_size)
    n_new = length - n_prefix
    filtering = (0 < top_k < cfg.l_bins) or top_p > 0.0
    plain = not filtering and on_logits is None  # the whole step on the engine (a CUDA graph)
    noise = None
    for i in range(n_new):
        j = i % NOISE_BLOCK
        if j == 0:
            noise = gumbel_noise((min(NOISE_BLOCK, n_new - i), n, cfg.l_bins), generator, device)
            if plain:
                engine.set_noise(noise, temperature)
        t = n_prefix + i
        if plain:
            music[t].copy_(engine.sample_step())
        else:
            z = engine.step()
            if on_logits is not None:
                on_logits(t, z)
            if temperature != 1.0:
                z = z / temperature
            if filtering:
                z = filter_logits(z, top_k, top_p)
            torch.argmax(z + noise[j], dim=-1, out=music[t])
            engine.set_token(music[t])
        if progress is not None:
            progress(i + 1, n_new)
    return music


# ---------------------------------------------------------------------------------------------
# a level's sampler, as the song loop sees it


ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class WindowInputs:
    """One window a level sampler draws: ``length`` codes whose first ``prefix.shape[1]`` are
    ``prefix`` (``LongTensor[B, T0]``, T0 may be 0), the window's label vectors ``labels``
    (``LongTensor[B, Y]`` or None) and, below the top, the upper level's codes over the same
    span ``upper`` (``LongTensor[B, length / ratio]``)."""

    length: int
    prefix: Tensor
    labels: Tensor | None
    upper: Tensor | None


@runtime_checkable
class LevelSampler(Protocol):
    """What the windowing loop needs from a level's sampler (exact teacher or a student).

    ``n_ctx`` is its window in codes. ``sample_window`` returns ``LongTensor[B, length]`` whose
    first ``prefix.shape[1]`` codes are ``prefix`` (see :class:`WindowInputs`);
    ``progress(done, total)`` is called as codes are drawn. Samplers that subclass this class
    implement :meth:`draw` (the window as one :class:`WindowInputs`); any object with
    ``n_ctx`` and ``sample_window`` works too.
    """

    n_ctx: int

    def sample_window(
        self,
        length: int,
        prefix: Tensor,
        labels: Tensor | None,
        upper: Tensor | None,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> Tensor:
        """Draw one window (class docs)."""
        return self.draw(WindowInputs(length, prefix, labels, upper), generator, progress)

    def draw(
        self, w: WindowInputs, generator: torch.Generator | None, progress: ProgressFn | None
    ) -> Tensor:
        """``LongTensor[B, w.length]``: the window ``w`` with its prefix kept."""
        raise NotImplementedError


class ExactSampler(LevelSampler):
    """The teacher's autoregressive sampler (:func:`sample_window`): ``--mode exact``.
    ``on_logits``: :func:`sample_window`'s inspection hook, for every window drawn."""

    def __init__(
        self,
        prior: Prior,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        chunk_size: int | None = DEFAULT_CHUNK,
        on_logits: StepHook | None = None,
    ) -> None:
        self.prior = prior
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.chunk_size = chunk_size
        self.on_logits = on_logits
        self.n_ctx = prior.cfg.n_ctx

    def draw(
        self, w: WindowInputs, generator: torch.Generator | None, progress: ProgressFn | None
    ) -> Tensor:
        """See :class:`LevelSampler`."""
        with torch.no_grad():
            cond = self.prior.condition(w.labels, w.upper)
        return sample_window(
            self.prior,
            w.prefix.shape[0],
            cond,
            w.length,
            prefix=w.prefix if w.prefix.shape[1] else None,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            generator=generator,
            progress=progress,
            chunk_size=self.chunk_size,
            on_logits=self.on_logits,
        )


__all__ = [
    "NOISE_BLOCK",
    "ExactSampler",
    "LevelSampler",
    "ProgressFn",
    "StepHook",
    "WindowInputs",
    "filter_logits",
    "gumbel_noise",
    "sample_window",
]
