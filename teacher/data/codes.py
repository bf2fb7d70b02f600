"""The code cache: every training file encoded ONCE by the frozen VQ-VAE, then served as windows.

A prior is trained on the VQ-VAE's codes, not on audio. There are two ways to get them:

* ``"cache"`` (the default): :func:`build_code_cache` encodes every usable file once, at all
  levels, and stores the codes; :class:`CodeDataset` then slices random windows out of
  memory-mapped arrays. ``benchmarks/bench_codes.py`` (CPU, one thread, demo sizes: small
  VQ-VAE at 22.05 kHz, small priors with 512-code windows, batch 4) measured a training step
  1.6x (top), 1.8x (middle) and 1.25x (bottom) faster than on the fly, and a window 300-1700x
  faster to fetch; building the cache ran at ~10x real time, so it pays for itself after
  ~100-550 steps of ONE level's run, and all three levels (and later runs) share it.
* ``"on_the_fly"``: :class:`teacher.data.AudioDataset` crops of ``n_ctx · hop`` samples are
  encoded by the VQ-VAE inside every training step (what Jukebox did). It keeps the random
  stereo blend augmentation, at the price of one VQ-VAE encoder pass per step. Its codes near
  a crop's edges see zero padding where the cache's see the real neighbouring audio, so the
  two modes give slightly different codes there (the cache's are the whole-file ones).

Cache folder (written into a temporary sibling, then renamed: :func:`teacher.io.atomic_dir`)::

    CACHE/
      index.json        fingerprint, levels, hops, per file: length in samples, tokens and
                        start offset per level, metadata (artist, genre, lyrics, words)
      codes_l{L}.npy    all files' level-L codes concatenated, int16 (int32 when l_bins
                        > 32767); memory-mapped when read
      vocab.json        artist/genre names -> ids (teacher.data.labels.Vocab)

Chunking: a file is encoded in chunks of ``chunk`` samples (a multiple of the top hop), each
extended on both sides by ``context`` samples of real audio (:func:`encoder_context`: the
farthest any code's convolution cone reaches, rounded up to the level's hop) that are encoded
and thrown away. The chunks OVERLAP, so every kept code is computed from exactly the inputs it
sees when the whole file is encoded at once, and at the file's ends the convolutions zero-pad
just as a whole-file encoding does: the encoder outputs equal whole-file ``VQVAE.encode``'s up
to float rounding (~1e-7; the convolution kernels block differently for different lengths), so
the codes are equal except where two codebook entries are equidistant to within that rounding
(the tests check both). Files are cut to a multiple of the top hop (the last partial top-level
token is dropped). Stereo is mixed 0.5/0.5 (Jukebox's ``audio_preprocess`` without the random
blend). The per-level overlap costs ``2·context / chunk`` extra encoding (the released VQ-VAE:
context ~0.24 s at the top level, ~1 s at the bottom; chunks default to ~6 s).

Rebuilding with the same VQ-VAE weights and the same audio/metadata files (sizes and mtimes) is
a no-op: the fingerprint in ``index.json`` matches and the existing cache is opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from teacher.config import ConfigError
from teacher.data.labels import LabelConfig, Labeller, Vocab
from teacher.data.strata import StratifiedWindows
from teacher.data.text import LyricTokenizer, TextStats
from teacher.io import (
    atomic_dir,
    atomic_write_json,
    model_fingerprint,
    read_json,
    read_model_config,
)
from teacher.vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)

CODES_MODES = ("cache", "on_the_fly")
#: the faster way on CPU (benchmarks/bench_codes.py): encode once, then slice windows
DEFAULT_CODES_MODE = "cache"
INDEX_FILE = "index.json"
FORMAT_VERSION = 1
#: default chunk: 2**18 samples (~6 s at 44.1 kHz), grown to 4x the context when that is larger
DEFAULT_CHUNK = 1 << 18


# ---------------------------------------------------------------------------------------------
# fingerprints


def data_fingerprint(data_cfg: Any) -> str:
    """SHA-256 (hex, 16 chars) of what decides the cache's content on the data side.

    The rate, file selection settings and lyric version, and the path, size and mtime of every
    audio file and of the metadata file. Cheap: nothing is decoded.
    """
    from teacher.data.dataset import find_audio_files, find_metadata

    root = os.path.abspath(data_cfg.root)
    if not os.path.isdir(root):
        from teacher.data.dataset import DataError

        raise DataError(f"audio folder {data_cfg.root!r} does not exist or is not a folder")
    meta = data_cfg.metadata or find_metadata(root)
    items: list[Any] = [
        data_cfg.sample_rate,
        data_cfg.silence_threshold,
        data_cfg.min_duration_s,
        sorted(e.lower() for e in data_cfg.extensions),
        data_cfg.labels.lyric_version,
    ]
    for path in find_audio_files(root, data_cfg.extensions) + ([meta] if meta else []):
        st = os.stat(path)
        items.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def cache_fingerprint(vqvae_dir: str | os.PathLike, data_cfg: Any) -> str:
    """Fingerprint of a code cache: format version + VQ-VAE + data (16 hex chars)."""
    key = f"{FORMAT_VERSION}|{model_fingerprint(vqvae_dir)}|{data_fingerprint(data_cfg)}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def default_code_cache_dir(data_cfg: Any, fingerprint: str) -> str:
    """``<cache_dir>/codes/<fingerprint>`` or ``$XDG_CACHE_HOME/fastjukebox/codes/<fingerprint>``."""
    if data_cfg.cache_dir:
        return os.path.join(data_cfg.cache_dir, "codes", fingerprint)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastjukebox", "codes", fingerprint)


# ---------------------------------------------------------------------------------------------
# chunked encoding


def encoder_context(encoder: nn.Module, hop: int) -> int:
    """Samples of real audio a chunk needs on each side so its codes are exact.

    Walks the encoder's ``Conv1d`` layers in forward order. Output ``t`` of a layer (kernel
    ``k``, dilation ``d``, padding ``p``, stride ``s``) reads inputs ``t·s − p .. t·s − p +
    (k − 1)·d``, so code ``j`` of the whole stack reads samples ``j·hop − L .. j·hop + R`` with
    ``L = Σ p·J`` and ``R = Σ ((k − 1)·d − p)·J``, ``J`` the product of the strides before the
    layer. Residual branches only add identity paths. Keeping codes ``[s, e)`` of a window
    that starts ``L`` before ``s`` and ends ``R − hop + 1`` after ``e`` therefore reproduces
    whole-file encoding; the result is rounded up to a multiple of ``hop`` (code alignment).
    """
    left = right = 0
    jump = 1
    for m in encoder.modules():
        if isinstance(m, nn.Conv1d):
            k, d, p, s = m.kernel_size[0], m.dilation[0], m.padding[0], m.stride[0]
            left += p * jump
            right += ((k - 1) * d - p) * jump
            jump *= s
    need = max(left, right - hop + 1, 0)
    return math.ceil(need / hop) * hop


@dataclass(frozen=True)
class _Window:
    """One chunk to encode: samples ``[start, end)`` of a file, keep codes ``[keep0, keep1)``."""

    file: int
    start: int
    end: int
    keep0: int  # first kept code, relative to the window
    keep1: int
    out0: int  # where the kept codes go in the file's codes


def plan_windows(length: int, hop: int, chunk: int, context: int, file: int = 0) -> list[_Window]:
    """Chunks of a file of ``length`` samples (a multiple of ``hop``) at a level of ``hop``.

    ``chunk`` is a multiple of the top hop, ``context`` of ``hop``. Each window covers
    ``[s − context, s + chunk + context)`` clipped to the file; only the codes of
    ``[s, s + chunk)`` are kept.
    """
    out = []
    for s in range(0, length, chunk):
        e = min(s + chunk, length)
        a, b = max(0, s - context), min(length, e + context)
        out.append(_Window(file, a, b, (s - a) // hop, (e - a) // hop, s // hop))
    return out


@torch.no_grad()
def encode_chunked(
    vqvae: Any,
    audios: list[np.ndarray],
    level: int,
    chunk: int,
    context: int | None = None,
    batch_size: int = 8,
    on_window: Any = None,
) -> list[np.ndarray]:
    """Level-``level`` codes of mono signals ``audios`` (float32 ``[T_i]``, T_i a multiple of
    the top hop), encoded in overlapping chunks: -> int64 ``[T_i / hop_level]`` each.

    Windows of the same length (all inner chunks) are batched ``batch_size`` at a time.
    ``context=None`` uses :func:`encoder_context`, which makes the encoder outputs equal those
    of whole-file ``vqvae.encode`` (see the module docstring).
    """
    cfg = vqvae.cfg
    hop, top = cfg.hop_lengths[level], cfg.hop_lengths[-1]
    if chunk <= 0 or chunk % top:
        raise ValueError(f"chunk {chunk} must be a positive multiple of the top hop {top}")
    if context is None:
        context = encoder_context(vqvae.encoders[level], hop)
    if context < 0 or context % hop:
        raise ValueError(f"context {context} must be a non-negative multiple of the hop {hop}")
    windows = []
    for i, x in enumerate(audios):
        if len(x) % top:
            raise ValueError(f"signal {i} has {len(x)} samples, not a multiple of {top}")
        windows += plan_windows(len(x), hop, chunk, context, file=i)
    out = [np.zeros(len(x) // hop, dtype=np.int64) for x in audios]
    by_len: dict[int, list[_Window]] = defaultdict(list)
    for w in windows:
        by_len[w.end - w.start].append(w)
    device = next(vqvae.parameters()).device
    block = vqvae.bottleneck.level_blocks[level]
    for group in by_len.values():
        for b in range(0, len(group), batch_size):
            batch = group[b : b + batch_size]
            x = np.stack([audios[w.file][w.start : w.end] for w in batch])
            x = torch.from_numpy(x).to(device)[:, None]  # [B, 1, T]
            codes = block.encode(vqvae.encode_latents(x, level)).cpu().numpy()  # [B, T/hop]
            for w, c in zip(batch, codes):
                out[w.file][w.out0 : w.out0 + w.keep1 - w.keep0] = c[w.keep0 : w.keep1]
            if on_window is not None:
                on_window(len(batch))
    return out


# ---------------------------------------------------------------------------------------------
# the cache


@dataclass(frozen=True)
class CodeFile:
    """One encoded file of a :class:`CodeCache`.

    ``length``: the file's length in samples at the model rate (Jukebox's ``total_length``);
    ``encoded``: samples encoded (``length`` cut to a multiple of the top hop); ``tokens`` and
    ``starts``: per level, the file's number of codes and where they begin in ``codes_l{L}.npy``.
    """

    rel: str
    length: int
    encoded: int
    tokens: tuple[int, ...]
    starts: tuple[int, ...]
    artist: str | None = None
    genre: tuple[str, ...] = ()
    lyrics: str = ""
    words: tuple[dict[str, Any], ...] | None = None
    has_metadata: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["words"] = list(self.words) if self.words is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeFile:
        words = d.get("words")
        return cls(
            rel=d["rel"],
            length=int(d["length"]),
            encoded=int(d["encoded"]),
            tokens=tuple(int(t) for t in d["tokens"]),
            starts=tuple(int(s) for s in d["starts"]),
            artist=d.get("artist"),
            genre=tuple(d.get("genre") or ()),
            lyrics=d.get("lyrics") or "",
            words=tuple(words) if words is not None else None,
            has_metadata=bool(d.get("has_metadata", False)),
        )


class CodeCache:
    """A code cache folder opened for reading (see the module docstring for the layout).

    ``codes(i, level)`` is a read-only memory-mapped ``int16|int32 [T_level]`` view, so
    DataLoader workers and several ranks share the page cache instead of copies.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not (self.root / INDEX_FILE).is_file():
            raise FileNotFoundError(f"{self.root} is not a code cache (no {INDEX_FILE})")
        self.index: dict[str, Any] = read_json(self.root / INDEX_FILE)
        if self.index.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{self.root}: code cache format {self.index.get('format')}, "
                f"expected {FORMAT_VERSION}; rebuild it"
            )
        self.files = [CodeFile.from_dict(f) for f in self.index["files"]]
        self.vocab = Vocab.load(str(self.root))
        self._arrays: list[np.ndarray] | None = None

    @property
    def fingerprint(self) -> str:
        return self.index["fingerprint"]

    @property
    def levels(self) -> int:
        return int(self.index["levels"])

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        return tuple(int(h) for h in self.index["hop_lengths"])

    @property
    def sample_rate(self) -> int:
        return int(self.index["sample_rate"])

    @property
    def l_bins(self) -> int:
        return int(self.index["l_bins"])

    @property
    def text_stats(self) -> TextStats:
        """What cleaning the lyrics changed (counted when the cache was built)."""
        t = self.index.get("text", {})
        return TextStats(
            chars=t.get("chars", 0),
            mapped=t.get("mapped", 0),
            kept=t.get("kept", 0),
            dropped=t.get("dropped", 0),
            dropped_chars=Counter(t.get("dropped_chars", {})),
            mapped_chars=Counter(t.get("mapped_chars", {})),
        )

    def _level_arrays(self) -> list[np.ndarray]:
        # opened lazily, so a dataset pickled into DataLoader workers maps its own views
        if self._arrays is None:
            self._arrays = [
                np.load(self.root / f"codes_l{lv}.npy", mmap_mode="r") for lv in range(self.levels)
            ]
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def codes(
        self, file_index: int, level: int, start: int = 0, end: int | None = None
    ) -> np.ndarray:
        """Codes ``[start, end)`` of file ``file_index`` at ``level`` (memory-mapped view)."""
        f = self.files[file_index]
        n = f.tokens[level]
        end = n if end is None else end
        if not 0 <= start <= end <= n:
            raise IndexError(f"codes [{start}, {end}) outside [0, {n}] of {f.rel} level {level}")
        base = f.starts[level]
        return self._level_arrays()[level][base + start : base + end]

    def summary(self) -> str:
        """One line: files, duration, tokens per level."""
        secs = sum(f.length for f in self.files) / self.sample_rate
        toks = ", ".join(
            f"l{lv} {sum(f.tokens[lv] for f in self.files)}" for lv in range(self.levels)
        )
        return f"code cache {self.root}: {len(self.files)} files, {secs:.1f} s; tokens {toks}"


def _read_mono(f: Any, sample_rate: int) -> np.ndarray:
    """The whole file as mono float32 ``[T]``: 0.5/0.5 stereo mix, >2 channels averaged."""
    from teacher.data.audio import load_audio

    if f.cache_path and os.path.isfile(f.cache_path):
        x = np.load(f.cache_path, mmap_mode="r")
    else:
        x = load_audio(f.path, sample_rate)
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).mean(axis=0))


def _cache_data_cfg(data_cfg: Any, top_hop: int) -> Any:
    """The data config the cache is built with: one cache serves every level and window size,
    so a file is usable when it holds one top-level token (windows check their own length)."""
    return dataclasses.replace(data_cfg, sample_length=top_hop, aug_blend=False)


def build_code_cache(
    vqvae_dir: str | os.PathLike,
    data_cfg: Any,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    chunk: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> CodeCache:
    """Encode every usable file of ``data_cfg`` once with the frozen VQ-VAE at ``vqvae_dir``.

    Scans the audio (:func:`teacher.data.scan_audio`), reads each file whole, encodes all
    levels in overlapping chunks of ``chunk`` samples (default :data:`DEFAULT_CHUNK`, at least
    4x the encoder context; a multiple of the top hop), ``batch_size`` chunks at a time under
    ``no_grad``, and writes the cache folder atomically. ``out_dir=None`` picks
    :func:`default_code_cache_dir`. When ``out_dir`` already holds a cache with the same
    fingerprint (VQ-VAE weights + audio/metadata file stats), nothing is done.
    Returns the opened :class:`CodeCache`.
    """
    from teacher.data.dataset import scan_audio
    from teacher.vqvae import VQVAE

    vq_cfg = read_model_config(vqvae_dir, VQVAEConfig, "VQ-VAE")
    data_cfg = data_cfg.validate()
    if data_cfg.sample_rate != vq_cfg.sample_rate:
        raise ConfigError(
            f"data sample_rate {data_cfg.sample_rate} != VQ-VAE sample_rate {vq_cfg.sample_rate}"
        )
    top = vq_cfg.hop_lengths[-1]
    data_cfg = _cache_data_cfg(data_cfg, top)
    fp = cache_fingerprint(vqvae_dir, data_cfg)
    out = Path(out_dir) if out_dir is not None else Path(default_code_cache_dir(data_cfg, fp))
    if (out / INDEX_FILE).is_file():
        try:
            existing = CodeCache(out)
            if existing.fingerprint == fp:
                log.info("code cache %s is up to date (fingerprint %s)", out, fp)
                return existing
            log.info(
                "code cache %s is stale (fingerprint %s, now %s); rebuilding",
                out,
                existing.fingerprint,
                fp,
            )
        except (ValueError, KeyError, OSError) as err:
            log.warning("code cache %s unreadable (%s); rebuilding", out, err)

    t0 = time.perf_counter()
    vqvae = VQVAE.from_pretrained(vqvae_dir, device=device).eval()  # damaged: fails before the scan
    scan = scan_audio(data_cfg)  # files with NaN/Inf samples (or otherwise unusable) are skipped
    vqvae.requires_grad_(False)
    if chunk is None:
        ctx = max(encoder_context(e, h) for e, h in zip(vqvae.encoders, vq_cfg.hop_lengths))
        chunk = max(DEFAULT_CHUNK, 4 * ctx)
    chunk = max(top, math.ceil(chunk / top) * top)
    hops, levels = vq_cfg.hop_lengths, vq_cfg.levels
    dtype = np.int16 if vq_cfg.l_bins <= np.iinfo(np.int16).max else np.int32

    # files are read and encoded in groups of about ``group`` samples: windows of equal
    # length batch across files, and memory stays bounded by the group, not the dataset
    group = chunk * batch_size * 4
    n_windows = levels * sum(math.ceil((f.length // top * top) / chunk) for f in scan.files)
    per_level: list[list[np.ndarray]] = [[] for _ in range(levels)]
    encoded: list[int] = []
    with atomic_dir(out) as tmp, _progress(progress) as bar:
        task = bar.add_task("encoding codes", total=n_windows)

        def flush(audios: list[np.ndarray]) -> None:
            for level in range(levels):
                codes = encode_chunked(
                    vqvae,
                    audios,
                    level,
                    chunk,
                    batch_size=batch_size,
                    on_window=lambda n: bar.update(task, advance=n),
                )
                per_level[level] += [c.astype(dtype) for c in codes]
            audios.clear()

        pending: list[np.ndarray] = []
        for f in scan.files:
            x = _read_mono(f, data_cfg.sample_rate)
            pending.append(x[: len(x) // top * top])
            encoded.append(len(pending[-1]))
            if sum(len(a) for a in pending) >= group:
                flush(pending)
        flush(pending)
        files: list[CodeFile] = []
        for level in range(levels):
            flat = np.concatenate(per_level[level]) if per_level[level] else np.zeros(0, dtype)
            np.save(tmp / f"codes_l{level}.npy", flat)
        starts = [np.concatenate([[0], np.cumsum([len(c) for c in pl])]) for pl in per_level]
        for i, f in enumerate(scan.files):
            files.append(
                CodeFile(
                    rel=f.rel,
                    length=int(f.length),
                    encoded=encoded[i],
                    tokens=tuple(len(per_level[lv][i]) for lv in range(levels)),
                    starts=tuple(int(starts[lv][i]) for lv in range(levels)),
                    artist=f.meta.artist,
                    genre=tuple(f.meta.genre),
                    lyrics=f.meta.lyrics,
                    words=f.meta.words,
                    has_metadata=f.has_metadata,
                )
            )
        scan.vocab.save(str(tmp / "vocab.json"))
        text = scan.text
        atomic_write_json(
            tmp / INDEX_FILE,
            {
                "format": FORMAT_VERSION,
                "fingerprint": fp,
                "vqvae_dir": str(Path(vqvae_dir).resolve()),
                "vqvae_fingerprint": model_fingerprint(vqvae_dir),
                "data_root": scan.root,
                "sample_rate": data_cfg.sample_rate,
                "levels": levels,
                "hop_lengths": list(hops),
                "l_bins": vq_cfg.l_bins,
                "dtype": np.dtype(dtype).name,
                "chunk": chunk,
                "skipped": dict(scan.skipped),
                "no_metadata": scan.no_metadata,
                "text": {
                    "chars": text.chars,
                    "mapped": text.mapped,
                    "kept": text.kept,
                    "dropped": text.dropped,
                    "dropped_chars": dict(text.dropped_chars),
                    "mapped_chars": dict(text.mapped_chars),
                },
                "files": [f.to_dict() for f in files],
                "created": time.time(),
            },
        )
    cache = CodeCache(out)
    log.info("%s (built in %.1f s)", cache.summary(), time.perf_counter() - t0)
    return cache


class _NoProgress:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())


# ---------------------------------------------------------------------------------------------
# windows for the prior


class CodeDataset(StratifiedWindows, Dataset):
    """Random windows of ``n_ctx`` codes at ``level`` of a :class:`CodeCache`, with labels.

    Item ``i`` -> ``dict(codes=LongTensor[n_ctx], labels=LongTensor[label_cfg.size],
    file_index, offset (tokens at level), index)`` plus, below the top level,
    ``upper=LongTensor[n_ctx · hop_level / hop_{level+1}]``: the level above over the same span
    (the upsampler's conditioning, Jukebox ``Prior.get_z_conds``).

    Sampling is :class:`teacher.data.AudioDataset`'s, shared through
    :class:`~teacher.data.strata.StratifiedWindows`: one epoch has ``usable tokens // n_ctx``
    items; the concatenated token timeline of the usable files is cut into that many strata
    and item ``i`` centres its window on a uniform point of stratum
    ``i`` (drawn by ``numpy.random.default_rng([seed, epoch, i])``, so any rank or worker gets
    the same window), shifted inside the file and down to a multiple of
    ``hop_{level+1} / hop_level`` so the upper window is whole. Files shorter than the window
    are left out (one warning); none long enough is a :class:`ConfigError`.

    The label vector is Jukebox's for that window: ``total_length`` (the file, samples),
    ``offset = token offset · hop`` and ``length = n_ctx · hop`` (samples), artist, genres
    and the lyric window centred on the window's middle (by word timings when the metadata has
    them; :class:`teacher.data.labels.Labeller`). Lyric characters outside the vocabulary are
    transliterated or dropped as the released tokenizer does; :attr:`text_stats` counts them.
    Files without a metadata row get artist/genre id 0 (one warning with the count).
    ``vocab`` (default: the cache's) maps names to ids, e.g. the vocabulary a resumed run saved.
    """

    def __init__(
        self,
        cache: CodeCache,
        level: int,
        n_ctx: int,
        label_cfg: LabelConfig | None = None,
        seed: int = 0,
        vocab: Vocab | None = None,
    ) -> None:
        self.cache, self.level, self.n_ctx, self.seed = cache, int(level), int(n_ctx), int(seed)
        self.vocab = vocab if vocab is not None else cache.vocab
        self.label_cfg = (label_cfg or LabelConfig(lyric_version=self.vocab.version)).validate()
        hops = cache.hop_lengths
        if not 0 <= level < cache.levels:
            raise ConfigError(f"level {level} outside [0, {cache.levels - 1}]")
        if n_ctx < 1:
            raise ConfigError(f"n_ctx must be >= 1, got {n_ctx}")
        self.hop = hops[level]
        self.has_upper = level < cache.levels - 1
        self.align = hops[level + 1] // self.hop if self.has_upper else 1
        if n_ctx % self.align:
            raise ConfigError(
                f"n_ctx {n_ctx} at level {level} must be a multiple of {self.align} "
                f"(hop {hops[level + 1]} / {self.hop}) so the upper level's window is whole"
            )
        self.window_samples = n_ctx * self.hop
        keep = [i for i, f in enumerate(cache.files) if f.tokens[level] >= n_ctx]
        if not keep:
            longest = max(f.encoded for f in cache.files)
            raise ConfigError(
                f"n_ctx {n_ctx} at level {level} is {self.window_samples} samples "
                f"({self.window_samples / cache.sample_rate:.2f} s), longer than every file "
                f"(longest {longest} samples, {longest / cache.sample_rate:.2f} s); "
                "lower --n_ctx or add longer audio"
            )
        if len(keep) < len(cache.files):
            log.warning(
                "%d of %d files are shorter than the level-%d window of %d samples (%.2f s) "
                "and are left out",
                len(cache.files) - len(keep),
                len(cache.files),
                level,
                self.window_samples,
                self.window_samples / cache.sample_rate,
            )
        self.file_ids = keep
        self.epoch = 0
        self._lengths = np.array([cache.files[i].tokens[level] for i in keep], dtype=np.int64)
        self._ends = np.cumsum(self._lengths)

        vocab, lab = self.vocab, self.label_cfg
        self.labeller = Labeller(lab, vocab)
        missing = sum(not cache.files[i].has_metadata for i in keep)
        self.no_metadata = missing
        if missing:
            log.warning(
                "%d of %d files have no metadata row: artist and genre id 0 (unknown), no lyrics",
                missing,
                len(keep),
            )
        files = [cache.files[i] for i in keep]
        self._artist = [vocab.artist_id(f.artist) for f in files]
        self._genres = [vocab.genre_ids(list(f.genre))[: lab.max_genres] for f in files]
        self._set_lyrics([(f.lyrics, f.words) for f in files])
        tok = LyricTokenizer(lab.lyric_version)
        for f in files:
            tok.clean_with_stats(f.lyrics)  # counts, whether or not lyrics are used
        self.text_stats = tok.stats

    def __len__(self) -> int:
        return max(1, int(self._ends[-1]) // self.n_ctx)

    def locate(self, index: int, u: float) -> tuple[int, int]:
        """``(position in file_ids, token offset)`` of item ``index`` for the draw ``u``."""
        k, offset = self._centred_window(index, u, self.n_ctx)
        return k, offset // self.align * self.align  # whole upper-level tokens

    def _item_at(self, k: int, offset: int, rng: np.random.Generator) -> dict[str, Any]:
        return self.window(k, offset)

    def window(self, k: int, offset: int) -> dict[str, Any]:
        """The window at token ``offset`` of the ``k``-th usable file (see the class doc)."""
        fi = self.file_ids[k]
        f = self.cache.files[fi]
        codes = self.cache.codes(fi, self.level, offset, offset + self.n_ctx)
        y, _ = self._label(
            k, f.length, offset * self.hop, self.window_samples, self.cache.sample_rate
        )
        out: dict[str, Any] = {
            "codes": torch.from_numpy(np.asarray(codes, dtype=np.int64)),
            "labels": torch.from_numpy(y),
            "file_index": fi,
            "offset": offset,
        }
        if self.has_upper:
            a = offset // self.align
            up = self.cache.codes(fi, self.level + 1, a, a + self.n_ctx // self.align)
            out["upper"] = torch.from_numpy(np.asarray(up, dtype=np.int64))
        return out
