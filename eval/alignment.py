"""The top prior's lyric-to-music attention on one real window (:mod:`eval.evaluate`).

:func:`lyric_layer` picks the layer that reads the lyrics; :func:`attention_alignment` captures
its softmax in one teacher-forced pass (the capture hook of
:class:`teacher.prior.attention.FactoredAttention`) as an :class:`~eval.results.AttentionAlignment`
that :func:`eval.figures.attention_figure` draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eval.results import AttentionAlignment
from teacher.data.text import LyricTokenizer, lyric_version
from teacher.prior.attention import AttnKind, FactoredAttention
from teacher.prior.model import Prior


def lyric_layer(prior: Prior) -> int | None:
    """The top prior's lyric-reading layer: ``cfg.lyrics.alignment_layer`` when set, else the
    last PRIME (single-sequence lyrics) or CROSS (lyric encoder) layer; None without lyrics."""
    cfg = prior.cfg
    if cfg.lyrics is None:
        return None
    if cfg.lyrics.alignment_layer is not None:
        return cfg.lyrics.alignment_layer
    want = AttnKind.PRIME if cfg.single_sequence else AttnKind.CROSS
    layers = [i for i, k in enumerate(cfg.transformer.kinds) if k == want]
    return layers[-1] if layers else None


def _attention_module(prior: Prior, layer: int) -> FactoredAttention:
    return prior.prior.transformer._attn_mods[layer].attn


@torch.no_grad()
def attention_alignment(
    prior: Prior, codes: Tensor, labels: Tensor, layer: int | None = None
) -> AttentionAlignment | None:
    """Lyric-to-music attention of one window: ``probs[n_tokens, T]``, the lyric layer's
    softmax from music position t to lyric character c, averaged over heads (or the config's
    ``alignment_head``). ``codes`` ``LongTensor[1, T]``, ``labels`` ``LongTensor[1, Y]``.

    Captured from ONE teacher-forced pass through the attention hook (``capture``), which
    takes the manual softmax path for that layer only. Returns None without lyrics.
    """
    cfg = prior.cfg
    layer = lyric_layer(prior) if layer is None else layer
    if layer is None:
        return None
    attn = _attention_module(prior, layer)
    n = cfg.n_tokens
    attn.capture = True
    try:
        prior.logits(codes, labels)
        probs = attn.last_probs
    finally:
        attn.capture = False
        attn.last_probs = None
    if probs is None:
        raise RuntimeError(f"layer {layer} computed no attention probabilities")
    if cfg.single_sequence:
        probs = probs[:, :, n:, :n]  # music queries after the lyrics, lyric keys only
    head = cfg.lyrics.alignment_head
    p = probs[0, head] if head is not None else probs[0].mean(0)  # [T, n]
    tokens = [int(t) for t in labels[0, 4 + cfg.labels.max_genres :]]
    tok = LyricTokenizer(lyric_version(cfg.lyrics.n_vocab))
    chars = [tok.decode([t]) or "·" for t in tokens]
    return AttentionAlignment(
        probs=p.T.float().cpu().numpy(),
        chars=chars,
        layer=layer,
        kind="prime" if cfg.single_sequence else "cross",
        heads=f"head {head}" if head is not None else f"mean of {probs.shape[1]} heads",
        lyrics=tok.decode(tokens),
    )


__all__ = ["attention_alignment", "lyric_layer"]
