"""A 2-D map of the top prior's learned artist and genre embeddings (:mod:`eval.evaluate`).

:func:`embedding_map` lays the prior's label embedding rows out in 2-D, by :func:`tsne_2d`
(exact t-SNE, numpy only) for 5 or more points and :func:`pca_2d` below that, as an
:class:`~eval.results.EmbeddingMap` that :func:`eval.figures.embedding_figure` draws.
"""

from __future__ import annotations

import math

import numpy as np

from eval.results import EmbeddingMap
from teacher.data.labels import Vocab
from teacher.prior.model import Prior

#: the embedding map keeps at most this many points (exact t-SNE is O(N²) per iteration)
MAX_EMBEDDING_POINTS = 300


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of ``x [N, D]`` -> ``[N, 2]`` (zeros where the data
    has fewer dimensions of variance)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    out = np.zeros((len(x), 2))
    k = min(2, len(s))
    out[:, :k] = u[:, :k] * s[:k]
    return out


def _conditional_probs(d2: np.ndarray, perplexity: float, tol: float = 1e-5) -> np.ndarray:
    """Row-wise Gaussian affinities ``p_{j|i}`` whose entropy is ``log(perplexity)``, by a
    binary search on each row's precision (van der Maaten & Hinton 2008, §2)."""
    n = len(d2)
    p = np.zeros((n, n))
    target = math.log(perplexity)
    for i in range(n):
        d = np.delete(d2[i], i)
        d = d - d.min()  # shift: the normalised row is unchanged, exp never underflows to 0
        lo, hi, beta = 0.0, np.inf, 1.0
        for _ in range(64):
            w = np.exp(-d * beta)
            s = w.sum()
            h = math.log(s) + beta * float((d * w).sum()) / s
            if abs(h - target) < tol:
                break
            if h > target:  # too flat: sharpen
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    return p


def tsne_2d(
    x: np.ndarray,
    perplexity: float = 30.0,
    n_iter: int = 750,
    seed: int = 0,
    learning_rate: float | None = None,
) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of ``x [N, D]`` -> ``[N, 2]``, numpy only.

    Symmetrised affinities at ``perplexity`` (capped at ``(N − 1) / 3``), a Student-t kernel in
    2-D, gradient descent with momentum 0.5 → 0.8, early exaggeration ×12 for the first 250
    iterations (or a third of them) and per-coordinate gains, as in the paper's reference
    implementation. O(N²) memory and time per iteration: meant for a few hundred points.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}; use pca_2d")
    perplexity = min(perplexity, (n - 1) / 3.0)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    d2 = d2 / max(float(np.median(d2[d2 > 0])) if (d2 > 0).any() else 1.0, 1e-12)
    p = _conditional_probs(d2, perplexity)
    p = (p + p.T) / (2 * n)
    p = np.maximum(p, 1e-12)
    rng = np.random.default_rng(seed)
    y = 1e-4 * rng.standard_normal((n, 2))
    update = np.zeros_like(y)
    gains = np.ones_like(y)
    lr = learning_rate or max(n / 12.0 / 4.0, 10.0)  # the "auto" rate of Belkina et al. 2019
    exaggerate = min(250, n_iter // 3)
    for it in range(n_iter):
        pe = p * 12.0 if it < exaggerate else p
        sy = (y * y).sum(1)
        num = 1.0 / (1.0 + sy[:, None] + sy[None, :] - 2 * y @ y.T)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        w = (pe - q) * num
        grad = 4.0 * ((np.diag(w.sum(1)) - w) @ y)
        gains = np.where(np.sign(grad) != np.sign(update), gains + 0.2, gains * 0.8)
        gains = np.maximum(gains, 0.01)
        momentum = 0.5 if it < exaggerate else 0.8
        update = momentum * update - lr * gains * grad
        y = y + update
        y = y - y.mean(0)
    return y


def embedding_map(
    prior: Prior, vocab: Vocab | None, max_points: int = MAX_EMBEDDING_POINTS, seed: int = 0
) -> EmbeddingMap | None:
    """A 2-D map of the prior's artist and genre embedding rows (``y_emb``), labelled by the
    vocabulary's names. Artists and genres live in one space (the start token is the artist
    row plus the genre rows), so they are mapped together. Only ids that have a name are
    shown (all rows when there is no vocabulary), at most ``max_points`` (artists first, in id
    order, up to 2/3 of them). t-SNE for 5 or more points, else PCA. None when unlabelled."""
    if prior.cfg.labels is None:
        return None
    lab = prior.cfg.labels
    art = prior.y_emb.artist_emb.emb.weight.detach().float().cpu().numpy()
    gen = prior.y_emb.bow_genre_emb.emb.weight.detach().float().cpu().numpy()
    if vocab is not None:
        a_ids = sorted({i for i in vocab.artists.values() if i < lab.artist_bins})
        g_ids = sorted({i for i in vocab.genres.values() if i < lab.genre_bins})
        a_names = [vocab.artist_name(i) for i in a_ids]
        g_names = [vocab.genre_name(i) for i in g_ids]
    else:
        a_ids, g_ids = list(range(lab.artist_bins)), list(range(lab.genre_bins))
        a_names = [f"artist {i}" for i in a_ids]
        g_names = [f"genre {i}" for i in g_ids]
    n_a = min(len(a_ids), max(max_points - len(g_ids), (2 * max_points) // 3))
    n_g = min(len(g_ids), max_points - n_a)
    vectors = np.concatenate([art[a_ids[:n_a]], gen[g_ids[:n_g]]])
    names = a_names[:n_a] + g_names[:n_g]
    groups = ["artist"] * n_a + ["genre"] * n_g
    if len(vectors) >= 5:
        xy = tsne_2d(vectors, seed=seed)
        method = f"t-SNE (perplexity {min(30.0, (len(vectors) - 1) / 3):.3g})"
    else:
        xy = pca_2d(vectors)
        method = "PCA"
    return EmbeddingMap(xy=xy, names=names, groups=groups, method=method)


__all__ = ["MAX_EMBEDDING_POINTS", "embedding_map", "pca_2d", "tsne_2d"]
