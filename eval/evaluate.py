"""The evaluation run behind ``fastjukebox eval`` (DESIGN §6): every number of the report.

:func:`evaluate` loads a teacher folder and its students (:class:`distill.pipeline.FastJukebox`),
cuts ``n_clips`` deterministic held-out clips from a data folder and measures:

* **reconstruction**, per VQ-VAE level: the clip encoded and decoded by that level alone —
  SC in dB (``20·log10``, lower is better), multi-resolution STFT distance, log-mel L1, SI-SDR
  and codebook usage/perplexity (:mod:`eval.metrics`); and the top prior's NLL of the real
  top-level codes (bits/token).
* **teacher vs students per upsampling level**, on the SAME ground-truth upper codes (all
  levels above are the clip's true codes, so each level is judged on its own): the teacher
  sampling exactly, the student, and speculative sampling (the student drafting, the teacher
  verifying). Per sampler: teacher NLL in bits/token of the codes it drew (against the teacher's
  NLL of the real codes), the student's closed-form KL and entropy per token, token accuracy
  against the true codes, the level decoded and compared with the ground truth, codebook usage
  and speed (wall seconds inside the sampler, real-time factor, tokens/s, peak memory;
  :mod:`eval.speed`). A **ceiling** (the true codes decoded) and a **floor** (uniformly random
  codes decoded) go through the same audio metrics.
* **modes**: each sampling mode (exact, accelerated, hybrid, speculative) upsamples the clips'
  TRUE TOP codes through every lower level, as a real run would; the bottom level's audio is
  compared with the ground truth and with the teacher's encoder features ("FD-VQ": a Fréchet
  distance on VQ-VAE encoder features, not FAD), against the same ceiling and floor: the
  quality-vs-speed Pareto plot.
* **end to end**: one song sampled from nothing in every mode (top prior autoregressive, then
  the upsamplers of the mode), per-stage wall seconds, the measured speedup and the Amdahl
  bound ``T_total / T_top`` that free upsampling would reach.
* the top prior's **lyric-to-music attention** on one real window (the capture hook of
  :class:`teacher.prior.attention.FactoredAttention`), and a 2-D map (t-SNE, or PCA for fewer
  than 5 points) of its learned **artist and genre embeddings**.

It returns an :class:`~eval.report.EvalResult` (numbers, audio, figure inputs) that
:func:`eval.report.write_report` turns into ``report.html``, ``report.md`` and ``metrics.json``.
Timings are wall clock on whatever device the models sit on; tiny models measure overheads,
not the asymptotic speedup (DESIGN §5).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.pipeline import FAST_MODES, FastJukebox, parse_students, resolve_level_modes
from distill.speculative import DEFAULT_GAMMA, student_sample
from eval import metrics as M
from eval.report import AttentionAlignment, EmbeddingMap, EvalResult, write_report
from eval.speed import (
    StageSpeed,
    StageTimer,
    amdahl_bound,
    amdahl_speedup,
    config_hash,
    machine_info,
)
from teacher.config import ConfigError
from teacher.generate import level_name
from teacher.labels import LabelConfig, Labeller, Vocab
from teacher.prior.attention import AttnKind, FactoredAttention
from teacher.prior.model import Prior
from teacher.text import LyricTokenizer, genre_words, normalize_name

log = logging.getLogger(__name__)

#: hybrid mode's per-level plan when none is given: the bottom level (most of the sequential
#: work, DESIGN §1) by its student, the middle exactly
DEFAULT_HYBRID = "middle=exact,bottom=student"
#: latent frames pooled into one FD-VQ feature vector (at most)
DEFAULT_FD_FRAMES = 16
#: the embedding map keeps at most this many points (exact t-SNE is O(N²) per iteration)
MAX_EMBEDDING_POINTS = 300
#: per-level sampler names and the pipeline mode that runs one level with each
SAMPLER_MODES = {"exact": "exact", "student": "accelerated", "speculative": "speculative"}
#: an SC of exactly the floor marks a near-silent reference (eval.metrics.sc_db)
_SC_FLOOR_DB = -199.0


# ---------------------------------------------------------------------------------------------
# clips


@dataclass(frozen=True)
class Clip:
    """One held-out clip: ``offset`` samples into file ``file`` (``file_index`` in the scan)."""

    file: str
    file_index: int
    offset: int
    file_length: int
    artist: str | None
    genre: tuple[str, ...]
    lyrics: str
    words: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "offset": self.offset,
            "file_length": self.file_length,
            "artist": self.artist,
            "genre": list(self.genre),
        }


def clip_length(jukebox: Any, seconds: float | None) -> int:
    """Clip length in samples: ``seconds`` rounded to whole top-level codes (at least one), or
    one top-prior window (``n_ctx`` top codes) when ``seconds`` is None."""
    hop = jukebox.hop_lengths[-1]
    if seconds is None:
        top = jukebox.priors.get(jukebox.levels - 1)
        n = top.cfg.n_ctx if top is not None else 16
        return n * hop
    if not seconds > 0:
        raise ConfigError(f"seconds must be positive, got {seconds}")
    return max(1, round(seconds * jukebox.sample_rate / hop)) * hop


def load_clips(
    data_dir: str | os.PathLike,
    sample_rate: int,
    length: int,
    n_clips: int,
    seed: int = 0,
    metadata: str | None = None,
) -> tuple[list[Clip], Tensor]:
    """``n_clips`` deterministic mono crops of ``length`` samples: ``(clips, Tensor[N, 1, T])``.

    Files are taken evenly over the sorted scan (cycling when there are fewer files than
    clips); clip ``i``'s offset is uniform inside its file by ``default_rng([seed, i])``, so the
    same folder and seed give the same clips on any machine. Stereo is averaged.
    """
    from teacher.data import AudioDataset, DataConfig, DataError, scan_audio

    if n_clips < 2:
        raise ConfigError(f"n_clips must be >= 2 (Fréchet distances need two), got {n_clips}")
    cfg = DataConfig(
        root=str(data_dir),
        metadata=metadata,
        sample_rate=sample_rate,
        sample_length=length,
        aug_blend=False,
        labels=LabelConfig(),
        cache="none",  # a few crops: seeking beats decoding every file into a cache
        seed=seed,
    )
    scan = scan_audio(cfg)
    if not scan.files:
        raise DataError(
            f"no usable audio of at least {length / sample_rate:.3f} s in {data_dir}: "
            f"{scan.summary()}"
        )
    ds = AudioDataset(cfg, scan=scan)
    n = len(ds.files)
    clips, audio = [], []
    for i in range(n_clips):
        fi = (i * n) // n_clips if n_clips <= n else i % n
        f = ds.files[fi]
        rng = np.random.default_rng([seed, i])
        offset = int(rng.integers(0, f.length - length + 1))
        crop = ds.crop(fi, offset)
        meta = f.meta
        clips.append(
            Clip(
                file=f.rel,
                file_index=fi,
                offset=offset,
                file_length=f.length,
                artist=meta.artist,
                genre=tuple(meta.genre),
                lyrics=meta.lyrics or "",
                words=meta.words,
            )
        )
        audio.append(crop["audio"])
    return clips, torch.stack(audio)


# ---------------------------------------------------------------------------------------------
# labels of real windows


def _lyric_version(n_vocab: int) -> str:
    for version in ("v3", "v2"):
        if LyricTokenizer(version).n_vocab == n_vocab:
            return version
    raise ConfigError(f"lyric n_vocab {n_vocab} matches no tokenizer (79 = v3, 80 = v2)")


class WindowLabels:
    """Label vectors of windows of real clips for one prior, as its training data made them
    (:class:`teacher.labels.Labeller`: timing from the clip's place in its file, the lyric
    window centred on the window's audio).

    Names unknown to the prior's vocabulary map to id 0 (``unknown``), as in training.
    """

    def __init__(self, prior: Prior, vocab: Vocab | None) -> None:
        cfg = prior.cfg
        self.prior = prior
        self.labelled = cfg.labels is not None
        self.hop = cfg.hop_length
        if not self.labelled:
            return
        version = _lyric_version(cfg.lyrics.n_vocab) if cfg.n_tokens else None
        self.vocab = vocab or Vocab(version=version or "v3")
        self.labeller = Labeller(
            LabelConfig(
                max_genres=cfg.labels.max_genres,
                n_tokens=cfg.n_tokens,
                lyric_version=version or self.vocab.version,
            ),
            self.vocab,
        )
        self._lyrics: dict[tuple[str, int], tuple[list[int], np.ndarray | None]] = {}

    def __call__(self, clip: Clip, start: int, length: int) -> np.ndarray | None:
        """``int64[4 + G + n_tokens]`` for the window of ``length`` codes at code ``start`` of
        the clip (None for an unlabelled prior)."""
        if not self.labelled:
            return None
        key = (clip.file, clip.file_index)
        if key not in self._lyrics:
            self._lyrics[key] = self.labeller.encode_lyrics(clip.lyrics, clip.words)
        tokens, times = self._lyrics[key]
        y, _ = self.labeller.label(
            clip.file_length,
            clip.offset + start * self.hop,
            self.prior.cfg.sample_length,
            self.vocab.artist_id(clip.artist),
            self.vocab.genre_ids(list(clip.genre)),
            tokens,
            times,
            self.prior.cfg.sample_rate,
        )
        return y

    def batch(self, clips: Sequence[Clip], start: int, length: int) -> Tensor | None:
        rows = [self(c, start, length) for c in clips]
        if rows[0] is None:
            return None
        device = next(self.prior.parameters()).device
        return torch.as_tensor(np.stack(rows), device=device)


def score_windows(total: int, n_ctx: int, ratio: int = 1) -> list[tuple[int, int]]:
    """Non-overlapping ``[start, end)`` windows of at most ``n_ctx`` codes covering ``total``;
    the last one is pulled back to end at ``total`` (it then overlaps its neighbour). Starts
    stay multiples of ``ratio`` so the upper codes of a window are whole."""
    if total <= n_ctx:
        return [(0, total)]
    step = max(ratio, n_ctx // ratio * ratio)
    out = [(s, s + step) for s in range(0, total - step + 1, step)]
    if out[-1][1] < total:
        s = -(-(total - step) // ratio) * ratio
        out.append((s, total))
    return out


@torch.no_grad()
def windowed_nll_bits(
    prior: Prior,
    codes: Tensor,
    clips: Sequence[Clip],
    labels: WindowLabels,
    upper: Tensor | None = None,
) -> float:
    """Mean teacher NLL in bits/token of ``codes`` ``LongTensor[N, T]`` (any T): one
    teacher-forced pass per non-overlapping window of ``n_ctx`` codes, each with its own label
    and upper codes, averaged over windows and clips (each window starts cold, as in training).
    """
    cfg = prior.cfg
    r = cfg.upsample_ratio if cfg.is_upsampler else 1
    device = next(prior.parameters()).device
    vals = []
    for s, e in score_windows(codes.shape[1], cfg.n_ctx, r):
        up = None if upper is None else upper[:, s // r : -(-e // r)].to(device)
        y = labels.batch(clips, s, e - s)
        vals.append(M.teacher_nll_bits(prior, codes[:, s:e].to(device), y, up))
    return float(torch.stack(vals).mean())


# ---------------------------------------------------------------------------------------------
# metrics helpers


def audio_metrics(ref: Tensor, est: Tensor, sample_rate: int) -> dict[str, float]:
    """Means over clips of SC dB (near-silent references dropped), MR-STFT, log-mel L1 and
    SI-SDR of ``est`` against ``ref`` (``Tensor[N, 1, T]``)."""
    ref, est = ref.float().cpu(), est.float().cpu()
    sc = M.sc_db(ref, est)
    kept = sc[sc > _SC_FLOOR_DB]
    return {
        "sc_db": float(kept.mean()) if kept.numel() else float(sc.mean()),
        "mrstft": float(M.mrstft_distance(ref, est, sample_rate).mean()),
        "mel_l1": float(M.mel_l1(ref, est, sample_rate).mean()),
        "si_sdr": float(M.si_sdr(ref, est).mean()),
    }


def _usage(codes: Tensor, l_bins: int) -> dict[str, float]:
    u = M.codebook_usage(codes, l_bins)
    return {"used": u["used"], "fraction": u["fraction"], "perplexity": u["perplexity"]}


def _speed(
    name: str, seconds: float, codes: int, audio_seconds: float, peaks: list[StageSpeed]
) -> dict[str, Any]:
    mem = [p.peak_mem_bytes for p in peaks if p.peak_mem_bytes is not None]
    wall = max(seconds, 1e-12)
    return StageSpeed(
        wall_s=seconds,
        rtf=audio_seconds / wall,
        tokens_per_s=codes / wall,
        peak_mem_bytes=max(mem) if mem else None,
        mem_source=peaks[0].mem_source if peaks else "none",
        name=name,
    ).to_dict()


def _names_for(fj: FastJukebox, clip: Clip, level: int) -> dict[str, Any]:
    """Artist, genres and lyrics of a clip as names the teacher's vocabulary knows (unknown
    names dropped: ``Jukebox`` refuses them, training mapped them to ``unknown``)."""
    vocab = fj.jukebox.vocabs.get(level)
    if vocab is None:
        return {"artist": None, "genre": None, "lyrics": clip.lyrics}
    artist = clip.artist
    if artist and normalize_name(artist, vocab.version) not in vocab.artists:
        artist = None
    genres = [w for w in genre_words(list(clip.genre), vocab.version) if w in vocab.genres]
    return {"artist": artist, "genre": genres or None, "lyrics": clip.lyrics}


def _fd_frames(t_latent: int, wanted: int) -> int:
    return max(2, min(wanted, t_latent // 2 if t_latent >= 4 else t_latent))


# ---------------------------------------------------------------------------------------------
# attention and embeddings


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
    tok = LyricTokenizer(_lyric_version(cfg.lyrics.n_vocab))
    chars = [tok.decode([t]) or "·" for t in tokens]
    return AttentionAlignment(
        probs=p.T.float().cpu().numpy(),
        chars=chars,
        layer=layer,
        kind="prime" if cfg.single_sequence else "cross",
        heads=f"head {head}" if head is not None else f"mean of {probs.shape[1]} heads",
        lyrics=tok.decode(tokens),
    )


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


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class _Run:
    """What sampling one level (or a mode's chain) over every clip produced."""

    codes: dict[int, Tensor] = field(default_factory=dict)  # level -> [N, T_l]
    audio: dict[int, Tensor] = field(default_factory=dict)  # level -> [N, 1, T]
    seconds: dict[str, float] = field(default_factory=dict)  # level name -> sampler wall s
    n_codes: dict[str, int] = field(default_factory=dict)
    timers: list[StageSpeed] = field(default_factory=list)
    call_s: float = 0.0
    spec: dict[str, dict[str, int]] = field(default_factory=dict)  # speculative counters


def _upsample_all(
    fj: FastJukebox,
    clips: Sequence[Clip],
    given: Mapping[int, Tensor],
    levels: Sequence[int],
    mode: str,
    level_modes: str | None,
    seed: int,
    gamma: int,
) -> _Run:
    """Upsample every clip (one call each, its own names) from the ``given`` true codes."""
    run = _Run()
    device = fj.device
    names = [level_name(lv, fj.levels) for lv in levels]
    per: dict[int, list[Tensor]] = {}
    aud: dict[int, list[Tensor]] = {}
    for i, clip in enumerate(clips):
        with StageTimer(mode, device=device) as timer:
            res = fj.upsample(
                {lv: c[i : i + 1] for lv, c in given.items()},
                **_names_for(fj, clip, min(levels)),
                mode=mode,
                level_modes=level_modes,
                gamma=gamma,
                seed=seed + i,
                levels=names,
                progress=False,
            )
        run.timers.append(timer.result)
        run.call_s += timer.result.wall_s
        for lv in levels:
            per.setdefault(lv, []).append(res.codes[lv])
            aud.setdefault(lv, []).append(res.audio[lv])
        for name, st in res.stats.items():
            run.seconds[name] = run.seconds.get(name, 0.0) + st.seconds
            run.n_codes[name] = run.n_codes.get(name, 0) + st.codes
            if st.speculative is not None:
                acc = run.spec.setdefault(name, {})
                for k, v in st.speculative.to_dict().items():
                    if isinstance(v, int):
                        acc[k] = acc.get(k, 0) + v
    run.codes = {lv: torch.cat(v) for lv, v in per.items()}
    run.audio = {lv: torch.cat(v) for lv, v in aud.items()}
    return run


def _spec_summary(counters: Mapping[str, int]) -> dict[str, Any]:
    ev, passes = counters.get("evaluated", 0), counters.get("teacher_passes", 0)
    return {
        **counters,
        "acceptance_rate": counters.get("accepted", 0) / ev if ev else 0.0,
        "tokens_per_pass": counters.get("positions", 0) / passes if passes else 0.0,
    }


@torch.no_grad()
def student_kl(
    fj: FastJukebox,
    level: int,
    clips: Sequence[Clip],
    upper: Tensor,
    labels: WindowLabels,
    seed: int = 0,
) -> dict[str, float]:
    """The student's closed-form reverse KL to the teacher and its entropy (nats/token, at
    temperature 1) on its own samples: per teacher window of the clips, the student draws the
    window from the TRUE upper codes and the teacher scores the draw in one pass."""
    prior, student = fj.jukebox.priors[level], fj.students[level]
    r = prior.cfg.upsample_ratio
    device = next(prior.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    kls, ents = [], []
    total = upper.shape[1] * r
    for s, e in score_windows(total, prior.cfg.n_ctx, r):
        up = upper[:, s // r : e // r].to(device)
        y = labels.batch(clips, s, e - s)
        cond = student.condition(up, y)[:, : e - s]
        draw = student_sample(student, cond, None, g)
        teacher_logits = prior.logits(draw.codes, y, up)
        kls.append(M.kl_per_token(draw.logits, teacher_logits).mean())
        ents.append(M.entropy_per_token(draw.logits).mean())
    return {
        "kl_per_token": float(torch.stack(kls).mean()),
        "entropy_per_token": float(torch.stack(ents).mean()),
    }


def available_modes(
    fj: FastJukebox, modes: Sequence[str], hybrid: str
) -> tuple[list[str], dict[str, str]]:
    """The modes this teacher and its students can run, and why the others are skipped."""
    run, skipped = [], {}
    for mode in modes:
        if mode not in FAST_MODES:
            raise ConfigError(f"unknown mode {mode!r}; expected some of {FAST_MODES}")
        try:
            fj.plan(mode, hybrid if mode == "hybrid" else None)
        except ConfigError as err:
            skipped[mode] = str(err)
            continue
        run.append(mode)
    return run, skipped


class _Evaluation:
    """The state one evaluation shares between its phases: models, clips, their true codes,
    reconstructions and random codes, the label makers and the audio kept for the report."""

    def __init__(
        self,
        fj: FastJukebox,
        clips: list[Clip],
        audio: Tensor,
        seed: int,
        hybrid: str,
        gamma: int,
        fd_level: int | None,
        fd_frames: int,
    ) -> None:
        self.fj, self.clips, self.seed, self.hybrid, self.gamma = fj, clips, seed, hybrid, gamma
        jb = self.jb = fj.jukebox
        vq = self.vq = jb.vqvae
        self.sr, self.levels, self.top = jb.sample_rate, jb.levels, jb.levels - 1
        self.names = {lv: level_name(lv, self.levels) for lv in range(self.levels)}
        self.upsamplers = [lv for lv in range(self.top - 1, -1, -1) if lv in jb.priors]
        self.bottom = min(self.upsamplers) if self.upsamplers else 0
        self.audio = audio.to(jb.device)
        self.clip_s = audio.shape[-1] / self.sr
        self.l_bins = vq.cfg.l_bins
        g = torch.Generator(device=jb.device).manual_seed(seed)
        with torch.inference_mode():
            self.codes = vq.encode(self.audio)
            self.recon = {lv: vq.decode([c], lv).float() for lv, c in enumerate(self.codes)}
            self.rand = {
                lv: torch.randint(0, self.l_bins, c.shape, generator=g, device=jb.device)
                for lv, c in enumerate(self.codes)
            }
            self.floor = {lv: vq.decode([c], lv).float() for lv, c in self.rand.items()}
        self.labels = {lv: WindowLabels(p, jb.vocabs.get(lv)) for lv, p in jb.priors.items()}
        self.fd_level = self.top if fd_level is None else fd_level
        t_latent = audio.shape[-1] // jb.hop_lengths[self.fd_level]
        self.fd_frames = _fd_frames(t_latent, fd_frames)
        self.kept: dict[str, tuple[int, np.ndarray]] = {}
        self.spectrograms: list[str] = []

    # -- helpers ---------------------------------------------------------------------------

    def keep(self, name: str, x: Tensor, spectrogram: bool = True) -> None:
        """Keep clip 0's (or a song's) audio ``x`` for the players (and the spectrograms)."""
        self.kept[name] = (self.sr, x.reshape(-1).float().cpu().numpy())
        if spectrogram:
            self.spectrograms.append(name)

    def fd(self, x: Tensor) -> float:
        """FD-VQ between the clips and ``x`` (``Tensor[N, 1, T]``)."""
        return M.fd_vq(self.vq, self.audio, x, self.fd_level, frames_per_vector=self.fd_frames)

    def nll(self, level: int, codes: Tensor, upper: Tensor | None = None) -> float:
        if upper is None and level < self.top:
            upper = self.codes[level + 1]
        prior = self.jb.priors[level]
        return windowed_nll_bits(prior, codes, self.clips, self.labels[level], upper)

    def accuracy(self, level: int, codes: Tensor) -> float:
        return float(M.token_accuracy(codes.cpu(), self.codes[level].cpu()).mean())

    def upsample(self, given: Mapping[int, Tensor], levels: Sequence[int], mode: str) -> _Run:
        hybrid = self.hybrid if mode == "hybrid" else None
        return _upsample_all(
            self.fj, self.clips, given, levels, mode, hybrid, self.seed, self.gamma
        )

    # -- phases ------------------------------------------------------------------------------

    def reconstruction(self) -> dict[str, Any]:
        """Per level: the clips through that level alone."""
        out = {}
        for lv in range(self.top, -1, -1):
            out[self.names[lv]] = {
                **audio_metrics(self.audio, self.recon[lv], self.sr),
                "codebook": _usage(self.codes[lv], self.l_bins),
                "codes": int(self.codes[lv].shape[1]),
            }
            self.keep(f"VQ-VAE reconstruction ({self.names[lv]})", self.recon[lv][0], lv == 0)
        return out

    def top_prior(self) -> dict[str, Any]:
        if self.top not in self.jb.priors:
            return {}
        return {"real_codes_nll_bits": self.nll(self.top, self.codes[self.top])}

    def level(self, lv: int) -> dict[str, Any]:
        """Teacher, student and speculative sampling of level ``lv`` on the true upper codes."""
        name = self.names[lv]
        entry: dict[str, Any] = {
            "real_codes_nll_bits": self.nll(lv, self.codes[lv]),
            "ceiling": {
                **audio_metrics(self.audio, self.recon[lv], self.sr),
                "token_accuracy": 1.0,
            },
            "floor": {
                **audio_metrics(self.audio, self.floor[lv], self.sr),
                "token_accuracy": self.accuracy(lv, self.rand[lv]),
                "nll_bits": self.nll(lv, self.rand[lv]),
            },
            "samplers": {},
        }
        given = {k: self.codes[k] for k in range(lv + 1, self.levels)}
        samplers = ["exact"] + (["student", "speculative"] if lv in self.fj.students else [])
        for sampler in samplers:
            log.info("%s level: %s sampling on the true upper codes", name, sampler)
            run = self.upsample(given, [lv], SAMPLER_MODES[sampler])
            gen = run.codes[lv]
            m: dict[str, Any] = {
                "nll_bits": self.nll(lv, gen),
                "token_accuracy": self.accuracy(lv, gen),
                **audio_metrics(self.audio, run.audio[lv], self.sr),
                "codebook": _usage(gen, self.l_bins),
                "speed": _speed(
                    f"{name} {sampler}",
                    run.seconds[name],
                    run.n_codes[name],
                    self.clip_s * len(self.clips),
                    run.timers,
                ),
                "call_s": run.call_s,
            }
            if sampler == "student":
                m.update(
                    student_kl(
                        self.fj, lv, self.clips, self.codes[lv + 1], self.labels[lv], self.seed
                    )
                )
            if sampler == "speculative" and name in run.spec:
                m["speculative"] = _spec_summary(run.spec[name])
            entry["samplers"][sampler] = m
        exact_s = entry["samplers"]["exact"]["speed"]["wall_s"]
        for m in entry["samplers"].values():
            m["speedup"] = exact_s / max(m["speed"]["wall_s"], 1e-12)
        return entry

    def mode(self, mode: str) -> dict[str, Any]:
        """``mode`` upsampling the true top codes through every lower level."""
        log.info("mode %s: upsampling the true top codes", mode)
        run = self.upsample({self.top: self.codes[self.top]}, self.upsamplers, mode)
        plan = resolve_level_modes(mode, self.hybrid if mode == "hybrid" else None, self.levels)
        names = [self.names[lv] for lv in self.upsamplers]
        per_level = {
            self.names[lv]: {
                "nll_bits": self.nll(lv, run.codes[lv], run.codes.get(lv + 1)),
                "token_accuracy": self.accuracy(lv, run.codes[lv]),
                "wall_s": run.seconds.get(self.names[lv], 0.0),
            }
            for lv in self.upsamplers
        }
        out = {
            "level_modes": {self.names[lv]: plan[lv] for lv in self.upsamplers},
            **audio_metrics(self.audio, run.audio[self.bottom], self.sr),
            "fd_vq": self.fd(run.audio[self.bottom]),
            "levels": per_level,
            "speed": _speed(
                f"{mode} upsampling",
                sum(run.seconds.get(n, 0.0) for n in names),
                sum(run.n_codes.get(n, 0) for n in names),
                self.clip_s * len(self.clips),
                run.timers,
            ),
        }
        if run.spec:
            out["speculative"] = {k: _spec_summary(v) for k, v in run.spec.items()}
        self.keep(f"mode: {mode}", run.audio[self.bottom][0])
        return out

    def bounds(self) -> dict[str, Any]:
        """The ceiling (true codes decoded) and floor (random codes decoded) of the level the
        modes are judged at."""
        lv = self.bottom
        self.keep(f"random codes (floor, {self.names[lv]})", self.floor[lv][0])
        return {
            "level": self.names[lv],
            "ceiling": {
                **audio_metrics(self.audio, self.recon[lv], self.sr),
                "fd_vq": self.fd(self.recon[lv]),
            },
            "floor": {
                **audio_metrics(self.audio, self.floor[lv], self.sr),
                "fd_vq": self.fd(self.floor[lv]),
            },
        }

    def end_to_end(self, modes: Sequence[str], song_samples: int) -> dict[str, Any]:
        """One song from nothing per mode (clip 0's artist, genre and lyrics): per-stage
        seconds, speedups and the Amdahl bound of free upsampling."""
        if self.top not in self.jb.priors or not modes:
            return {}
        song_s = song_samples / self.sr
        per_mode: dict[str, Any] = {}
        for mode in modes:
            log.info("mode %s: a %.2f s song from nothing", mode, song_s)
            with StageTimer(mode, device=self.jb.device) as timer:
                res = self.fj.generate(
                    **_names_for(self.fj, self.clips[0], self.top),
                    duration_seconds=song_s,
                    mode=mode,
                    level_modes=self.hybrid if mode == "hybrid" else None,
                    gamma=self.gamma,
                    seed=self.seed,
                    progress=False,
                )
            stages = {n: st.seconds for n, st in res.stats.items()}
            total = sum(stages.values())
            per_mode[mode] = {
                "stages": stages,
                "total_s": total,
                "call_s": timer.result.wall_s,
                "rtf": song_s / max(total, 1e-12),
                "peak_mem_bytes": timer.result.peak_mem_bytes,
            }
            self.keep(f"song: {mode}", res.audio[min(res.audio)][0], spectrogram=False)
        out: dict[str, Any] = {"song_seconds": song_s, "modes": per_mode}
        if "exact" in per_mode:
            base = per_mode["exact"]["stages"]
            distilled = [self.names[lv] for lv in self.upsamplers]
            out["distilled_stages"] = distilled
            out["distilled_share"] = sum(base[n] for n in distilled) / max(
                sum(base.values()), 1e-12
            )
            # Amdahl (DESIGN §1): free upsampling still leaves the top prior
            out["amdahl_bound"] = amdahl_bound(base, distilled)
            for m in per_mode.values():
                m["speedup"] = sum(base.values()) / max(m["total_s"], 1e-12)
                speedups = {n: base[n] / max(m["stages"].get(n, base[n]), 1e-12) for n in distilled}
                m["amdahl_predicted"] = amdahl_speedup(base, speedups)
        return out

    def top_figures(
        self, notes: list[str]
    ) -> tuple[AttentionAlignment | None, EmbeddingMap | None]:
        """The lyric-to-music attention on clip 0's first window and the embedding map."""
        if self.top not in self.jb.priors:
            return None, None
        tp = self.jb.priors[self.top]
        attention = None
        if tp.cfg.lyrics is None:
            notes.append("the top prior has no lyrics: no lyric-to-music attention to show")
        else:
            t = min(self.codes[self.top].shape[1], tp.cfg.n_ctx)
            y = self.labels[self.top].batch(self.clips[:1], 0, t)
            attention = attention_alignment(tp, self.codes[self.top][:1, :t], y)
            if attention is not None and not attention.lyrics.strip():
                notes.append(f"clip 0 ({self.clips[0].file}) has no lyrics in its window")
        embeddings = embedding_map(tp, self.jb.vocabs.get(self.top), seed=self.seed)
        if embeddings is None:
            notes.append("the top prior is unlabelled: no artist/genre embeddings to map")
        return attention, embeddings

    def setup(self, **extra: Any) -> dict[str, Any]:
        fj, names = self.fj, self.names
        n = len(self.clips)
        return {
            **extra,
            "students": {names[lv]: fj.student_dirs.get(lv) for lv in sorted(fj.students)},
            "device": str(self.jb.device),
            "machine": machine_info(self.jb.device),
            "seeds": {
                "clips": self.seed,
                "floor_codes": self.seed,
                "sampling": [self.seed + i for i in range(n)],
            },
            "config_hashes": {
                "vqvae": config_hash(self.vq.cfg),
                **{f"prior_{names[lv]}": config_hash(p.cfg) for lv, p in self.jb.priors.items()},
                **{f"student_{names[lv]}": config_hash(s.cfg) for lv, s in fj.students.items()},
            },
            "sample_rate": self.sr,
            "n_clips": n,
            "clip_seconds": self.clip_s,
            "clips": [c.to_dict() for c in self.clips],
            "hybrid": self.hybrid,
            "gamma": self.gamma,
            "fd_vq": {
                "name": M.FD_VQ_NAME,
                "level": names[self.fd_level],
                "frames_per_vector": self.fd_frames,
            },
            "conventions": {
                "sc_db": "20·log10(SC), lower is better",
                "mrstft": "auraloss multi-resolution STFT (SC + log magnitude), lower is better",
                "rtf": "audio seconds per wall second (higher is faster)",
                "nll_bits": "teacher NLL in bits/token at temperature 1, windows of n_ctx",
                "kl_per_token": "nats/token, the student's reverse KL to the teacher at "
                "temperature 1",
                "timing": "seconds inside each level's sampler (decoding excluded)",
            },
        }


def evaluate(
    teacher_dir: str | os.PathLike,
    students: str | os.PathLike | Mapping[int | str, str | os.PathLike] | None = None,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    n_clips: int = 4,
    seconds: float | None = None,
    seed: int = 0,
    modes: Sequence[str] = FAST_MODES,
    *,
    metadata: str | None = None,
    song_seconds: float | None = None,
    hybrid: str = DEFAULT_HYBRID,
    gamma: int = DEFAULT_GAMMA,
    device: str | torch.device | None = None,
    fd_level: int | None = None,
    fd_frames: int = DEFAULT_FD_FRAMES,
) -> EvalResult:
    """Evaluate a teacher and its students on held-out clips (module docs).

    Args:
        teacher_dir: a teacher folder (``vqvae/``, ``top/``, ``middle/``, ``bottom/``).
        students: level -> student folder, one folder with ``middle/`` and ``bottom/``, or None
            for ``TEACHER/students`` (:meth:`FastJukebox.from_pretrained`). Modes whose
            students are missing are skipped with the reason in ``metrics["setup"]``.
        data_dir: held-out audio (with its metadata for labels and lyrics).
        out_dir: when given, :func:`eval.report.write_report` writes the report there.
        n_clips: clips (at least 2).
        seconds: clip length; default one top-prior window.
        seed: the clip choice, the floor's random codes and every sampler's noise (clip i is
            sampled with seed ``seed + i``).
        modes: sampling modes to compare; those that cannot run here are skipped.
        song_seconds: length of the end-to-end song; default the clip length.
        hybrid: hybrid mode's per-level plan (``"middle=exact,bottom=student"``).
        gamma: speculative drafts per teacher pass.
        device: where the models run (default CPU).
        fd_level: VQ-VAE level whose encoder gives the FD-VQ features (default the top).
        fd_frames: latent frames pooled into one FD-VQ vector (fewer for short clips).
    """
    if data_dir is None:
        raise ConfigError("evaluate needs a data folder of held-out audio (data_dir)")
    if gamma < 1:
        raise ConfigError(f"gamma must be >= 1, got {gamma}")
    fj = FastJukebox.from_pretrained(teacher_dir, students=students, device=device)
    jb = fj.jukebox
    length = clip_length(jb, seconds)
    song = clip_length(jb, song_seconds) if song_seconds is not None else length
    modes_run, skipped = available_modes(fj, modes, hybrid)
    clips, audio = load_clips(data_dir, jb.sample_rate, length, n_clips, seed, metadata)
    log.info(
        "evaluating %d clips of %.2f s from %s; modes %s",
        n_clips,
        length / jb.sample_rate,
        data_dir,
        modes_run,
    )
    ev = _Evaluation(fj, clips, audio, seed, hybrid, gamma, fd_level, fd_frames)
    notes = [f"mode {m} skipped: {why}" for m, why in skipped.items()]
    ev.keep("ground truth", ev.audio[0])
    reconstruction = ev.reconstruction()
    upsampling = {ev.names[lv]: ev.level(lv) for lv in ev.upsamplers}
    modes_out = {m: ev.mode(m) for m in modes_run} if ev.upsamplers else {}
    if "exact" in modes_out:
        base = modes_out["exact"]["speed"]["wall_s"]
        for m in modes_out.values():
            m["speedup"] = base / max(m["speed"]["wall_s"], 1e-12)
    bounds = ev.bounds()
    end_to_end = ev.end_to_end(modes_run, song)
    attention, embeddings = ev.top_figures(notes)
    metrics = {
        "setup": ev.setup(
            teacher_dir=str(teacher_dir),
            data_dir=str(data_dir),
            modes_requested=list(modes),
            modes=modes_run,
            modes_skipped=skipped,
        ),
        "reconstruction": reconstruction,
        "top_prior": ev.top_prior(),
        "upsampling": upsampling,
        "bounds": bounds,
        "modes": modes_out,
        "end_to_end": end_to_end,
        "notes": notes,
    }
    result = EvalResult(
        metrics=metrics,
        audio=ev.kept,
        spectrograms=ev.spectrograms,
        attention=attention,
        embeddings=embeddings,
        notes=notes,
    )
    if out_dir is not None:
        write_report(result, out_dir)
    return result


# ---------------------------------------------------------------------------------------------
# the command


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``fastjukebox eval``."""
    parser.add_argument("--teacher", required=True, help="teacher folder (vqvae/, top/, ...)")
    parser.add_argument(
        "--students",
        nargs="+",
        default=None,
        help="a folder holding middle/ and bottom/, or LEVEL=DIR pairs (default TEACHER/students)",
    )
    parser.add_argument("--data", required=True, help="held-out audio folder (with metadata)")
    parser.add_argument("--metadata", default=None, help="metadata file (default: in --data)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--n_clips", type=int, default=4)
    parser.add_argument(
        "--seconds", type=float, default=None, help="clip length (default one top-prior window)"
    )
    parser.add_argument(
        "--song_seconds", type=float, default=None, help="end-to-end song (default: --seconds)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--modes",
        default=",".join(FAST_MODES),
        help=f"comma-separated modes to compare (default {','.join(FAST_MODES)})",
    )
    parser.add_argument("--hybrid", default=DEFAULT_HYBRID, help="hybrid mode's level modes")
    parser.add_argument("--gamma", type=int, default=DEFAULT_GAMMA, help="speculative drafts")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument(
        "--fd_frames", type=int, default=DEFAULT_FD_FRAMES, help="latent frames per FD-VQ vector"
    )
    return parser


def _students_arg(values: Sequence[str] | None) -> str | dict[str, str] | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    out: dict[str, str] = {}
    for v in values:
        parsed = parse_students(v)
        if isinstance(parsed, str):
            raise ConfigError(f"--students: give one folder or LEVEL=DIR pairs, got {v!r}")
        out.update(parsed)
    return out


def run_eval(args: argparse.Namespace) -> int:
    """Run ``fastjukebox eval``: :func:`evaluate`, then the report; returns the exit code."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    result = evaluate(
        args.teacher,
        _students_arg(args.students),
        args.data,
        args.out,
        n_clips=args.n_clips,
        seconds=args.seconds,
        seed=args.seed,
        modes=modes,
        metadata=args.metadata,
        song_seconds=args.song_seconds,
        hybrid=args.hybrid,
        gamma=args.gamma,
        device=args.device,
        fd_frames=args.fd_frames,
    )
    for kind, path in result.files.items():
        log.info("%s: %s", kind, path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.evaluate``: the same as ``fastjukebox eval``."""
    parser = add_eval_args(
        argparse.ArgumentParser(prog="python -m eval.evaluate", description=__doc__.split("\n")[0])
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "Clip",
    "DEFAULT_HYBRID",
    "WindowLabels",
    "add_eval_args",
    "attention_alignment",
    "audio_metrics",
    "available_modes",
    "clip_length",
    "embedding_map",
    "evaluate",
    "load_clips",
    "lyric_layer",
    "pca_2d",
    "run_eval",
    "score_windows",
    "student_kl",
    "tsne_2d",
    "windowed_nll_bits",
]
