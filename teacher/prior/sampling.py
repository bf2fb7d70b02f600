"""Sampling one window of a Jukebox prior with a preallocated KV cache (paper §4.3).

:func:`sample_window` is Jukebox's ``primed_sample`` for one window of at most ``n_ctx`` codes:
the forced part (the lyric window for single-style lyric priors, then any prefix of codes) is
run through the transformer in chunks, one forward per chunk into the cache; the remaining
codes are drawn one step at a time. Each step embeds one token and reads only the cache. The
per-step inputs (position embedding + per-position conditioning) are added up once before the
loop, tokens are written into a preallocated buffer (no ``torch.cat`` per step), and nothing
syncs with the host (no ``.item()``).

:func:`filter_logits` is the reference's top-k / nucleus filter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

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


@torch.no_grad()
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
        generator: the random source of the draws.
        progress: called as ``progress(done, total)`` after each sampled code.
        chunk_size: positions per forward while priming the forced part (None: one forward).
        on_logits: test/inspection hook, called as ``on_logits(t, logits)`` with the fp32
            ``Tensor[B, l_bins]`` logits of code t before temperature and filtering; they equal
            row t of ``prior.logits`` of the returned codes.

    For single-style lyric priors the lyric window is the forced start of the sequence and the
    draws are restricted to the music vocabulary (the reference draws from the joint vocabulary
    and maps a drawn lyric token to code 0; a trained model puts ~no mass there).
    """
    cfg = prior.cfg
    core = prior.prior
    if prior.training:
        raise RuntimeError("call prior.eval() before sampling: dropout breaks the KV cache")
    if not 1 <= length <= cfg.n_ctx:
        raise ValueError(f"length must be in [1, n_ctx={cfg.n_ctx}], got {length}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    cond = cond.expand(n_samples)
    n_lyr = cfg.n_tokens if cfg.single_sequence else 0
    shift = cfg.vocab_offset
    total = n_lyr + length  # transformer positions to fill

    weight = core.x_emb.weight
    device, dtype = weight.device, weight.dtype
    # the sequence in the transformer's vocabulary; its forced part is written up front
    seq = torch.zeros(n_samples, total, dtype=torch.long, device=device)
    n_forced = n_lyr
    if n_lyr:
        seq[:, :n_lyr] = cond.lyrics
    if prefix is not None:
        if prefix.dim() != 2 or prefix.shape[0] != n_samples:
            raise ValueError(f"prefix must be (n_samples, T0), got {tuple(prefix.shape)}")
        if prefix.shape[1] >= length:
            raise ValueError(f"prefix ({prefix.shape[1]} codes) must be shorter than {length}")
        if prefix.numel() and not bool(((prefix >= 0) & (prefix < cfg.l_bins)).all()):
            raise ValueError(f"prefix codes must be in [0, {cfg.l_bins})")
        seq[:, n_lyr : n_lyr + prefix.shape[1]] = prefix.to(device) + shift
        n_forced += prefix.shape[1]

    # per-position additive inputs, once: pos_emb (+ x_cond); x_cond again after the stack
    x_cond = None if cond.x_cond is None else cond.x_cond[:, :total].to(dtype)
    if x_cond is not None and x_cond.shape[1] < total:
        raise ValueError(f"the conditioning covers {x_cond.shape[1]} positions, need {total}")
    add = core.pos_emb()[:total].unsqueeze(0)
    add = add + x_cond if x_cond is not None else add.expand(n_samples, -1, -1)
    out_cond = x_cond if core.add_cond_after_transformer else None
    start = core.start_embedding(cond.start, n_samples).to(dtype)
    encoder_kv = cond.encoder_kv
    head = core.x_out.weight[shift:].float()  # music rows only

    cache = core.transformer.new_cache(n_samples, device=device, dtype=dtype)

    # 1) prime: positions 0 .. n_forced-1 (inputs: start, forced tokens 0 .. n_forced-2)
    chunk = chunk_size or max(n_forced, 1)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for lo in range(0, n_forced, chunk):
        hi = min(lo + chunk, n_forced)
        x = _inputs(core, seq, start, lo, hi) + add[:, lo:hi]
        core.transformer(x, encoder_kv=encoder_kv, cache=cache)

    # 2) draw positions n_forced .. total-1, one step each
    n_new = total - n_forced
    for p in range(n_forced, total):
        tok_in = start if p == 0 else core.x_emb(seq[:, p - 1 : p])
        h = core.transformer(tok_in + add[:, p : p + 1], encoder_kv=encoder_kv, cache=cache)
        if out_cond is not None:
            h = h + out_cond[:, p : p + 1]
        logits = F.linear(h[:, 0].float(), head)  # (B, l_bins) fp32
        if on_logits is not None:
            on_logits(p - n_lyr, logits)
        if temperature != 1.0:
            logits = logits / temperature
        if top_k or top_p:
            logits = filter_logits(logits, top_k, top_p)
        probs = torch.softmax(logits, dim=-1)
        seq[:, p] = torch.multinomial(probs, 1, generator=generator)[:, 0] + shift
        if progress is not None:
            progress(p - n_forced + 1, n_new)
    return seq[:, n_lyr:] - shift


def _inputs(core, seq: Tensor, start: Tensor, lo: int, hi: int) -> Tensor:
    """Token inputs of positions ``lo .. hi-1``: the start embedding at 0, else the embedding
    of the previous token -> Tensor[B, hi - lo, D]."""
    if lo == 0:
        return torch.cat([start, core.x_emb(seq[:, : hi - 1])], dim=1)
    return core.x_emb(seq[:, lo - 1 : hi - 1])


__all__ = ["StepHook", "filter_logits", "sample_window"]
