"""Exact hierarchical generation of whole songs (Jukebox paper §4.3, ``jukebox/sample.py``).

A teacher folder holds the VQ-VAE and one prior per level::

    TEACHER/vqvae/      VQVAE.save_pretrained
    TEACHER/top/        Prior.save_pretrained (+ vocab.json: artist/genre names -> ids)
    TEACHER/middle/     upsampler of level 1
    TEACHER/bottom/     upsampler of level 0

(a ``TEACHER/vocab.json`` serves every prior folder without its own). :class:`Jukebox` samples
the top level, then each upsampler conditioned on the level above, and decodes every level:

* ancestral (:meth:`Jukebox.generate`): from nothing;
* continue (:meth:`Jukebox.generate_from_audio`): the prompt's codes at every level are kept
  and the song is continued (Jukebox ``primed_sample``);
* upsample (:meth:`Jukebox.upsample`): given top-level codes, sample the levels below.

Windowing (reference ``sample_level``/``sample_single_window``/``get_starts``): a level of
``T`` codes is covered by windows of ``n_ctx`` codes starting at
``range(0, T − n_ctx + hop, hop)``, ``hop = hop_fraction · n_ctx`` (0.125 at the top, 0.5 in
the upsamplers), the last one shifted to end exactly at ``T`` (:func:`window_starts`). Each
window keeps the codes already sampled inside it as a prefix (re-primed by a chunked forward
into a fresh cache) and samples only the rest. A level shorter than one window is one partial
window. An upsampler window is conditioned on the upper level's codes over exactly the same
span of audio. The label vector is rebuilt per window: ``offset = start · hop_length``
samples, ``length`` = the window's ``sample_length`` (as in training, so position ``i`` of a
partial window still gets the timing of ``offset + i · hop_length``), ``total_length`` = the
song, and the lyric window centred on the middle of the audio the window covers (by word
timings when given, else linear).

The per-level sampler is swappable: the windowing loop only calls a :class:`LevelSampler`;
:class:`ExactSampler` is the teacher's own autoregressive one (``--mode exact``). Distilled
students plug in the same way (``generate(..., samplers={level: sampler})``).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from teacher.audio import load_audio, write_wav
from teacher.config import ConfigError
from teacher.io import atomic_write_json, save_tensors
from teacher.labels import UNKNOWN, VOCAB_FILE, Vocab, char_times, lyric_window, make_label
from teacher.prior.model import Prior
from teacher.prior.sampling import sample_window
from teacher.text import LyricTokenizer, TextStats, genre_words, normalize_name
from teacher.vqvae import VQVAE

log = logging.getLogger(__name__)

#: folder names of the parts of a teacher, by level of a 3-level VQ-VAE (0 = bottom)
LEVEL_NAMES = ("bottom", "middle", "top")
VQVAE_DIR = "vqvae"
#: sampling temperatures (the Jukebox notebook: 0.98 at the top, 0.99 in the upsamplers)
DEFAULT_TEMPERATURE = {"top": 0.98, "upsampler": 0.99}
#: window hop as a fraction of n_ctx (reference ``hop_fraction``: [0.5, 0.5, 0.125])
DEFAULT_HOP_FRACTION = {"top": 0.125, "upsampler": 0.5}
#: positions per forward when re-priming a window (bounds activation memory at released sizes)
DEFAULT_CHUNK = 1024

PerLevel = float | Mapping[str | int, float] | Sequence[float] | None


# ---------------------------------------------------------------------------------------------
# levels and windows


def level_name(level: int, levels: int) -> str:
    """``"top"``/``"middle"``/``"bottom"`` for a 3-level model, else ``"level{i}"`` (top: ``top``)."""
    if level == levels - 1:
        return "top"
    if levels == len(LEVEL_NAMES):
        return LEVEL_NAMES[level]
    return f"level{level}"


def level_index(level: str | int, levels: int) -> int:
    """A level given by name (``top``/``middle``/``bottom``) or index -> index (0 = bottom)."""
    if isinstance(level, int) or (isinstance(level, str) and level.isdigit()):
        i = int(level)
    else:
        names = {level_name(i, levels): i for i in range(levels)}
        if level not in names:
            raise ConfigError(f"unknown level {level!r}; expected one of {sorted(names)}")
        i = names[level]
    if not 0 <= i < levels:
        raise ConfigError(f"level {i} outside [0, {levels - 1}]")
    return i


def window_starts(total: int, n_ctx: int, hop: int) -> list[int]:
    """Starts of the windows covering ``total`` codes (reference ``get_starts``).

    ``range(0, total − n_ctx + hop, hop)``; the first start whose window reaches the end is
    moved to ``total − n_ctx`` so the last window ends exactly at the song's end. A song shorter
    than one window gives ``[0]`` (one partial window of ``total`` codes).
    """
    if total < 1 or n_ctx < 1 or not 1 <= hop <= n_ctx:
        raise ValueError(f"need total, n_ctx >= 1 and 1 <= hop <= n_ctx, got {total, n_ctx, hop}")
    if total <= n_ctx:
        return [0]
    starts = []
    for start in range(0, total - n_ctx + hop, hop):
        if start + n_ctx >= total:
            start = total - n_ctx
        starts.append(start)
    return starts


@dataclass(frozen=True)
class Window:
    """One window of one level, in codes of that level: ``[start, end)``, of which
    ``[start, start + n_kept)`` were already there (the prefix) and the rest is sampled."""

    level: int
    start: int
    end: int
    n_kept: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def n_new(self) -> int:
        return self.length - self.n_kept


def plan_windows(level: int, total: int, n_ctx: int, hop: int, have: int = 0) -> list[Window]:
    """The windows that sample codes ``have .. total-1`` of a level (those entirely inside
    the ``have`` codes already there are skipped, as the reference does)."""
    out = []
    for start in window_starts(total, n_ctx, hop):
        end = min(start + n_ctx, total)
        if have >= end:
            continue
        if have < start:  # cannot happen with hop <= n_ctx: windows overlap or touch
            raise AssertionError(f"gap before window {start} (have {have})")
        out.append(Window(level, start, end, have - start))
        have = end
    return out


# ---------------------------------------------------------------------------------------------
# the per-level sampler


@runtime_checkable
class LevelSampler(Protocol):
    """What the windowing loop needs from a level's sampler (exact teacher or a student).

    ``n_ctx`` is its window in codes. ``sample_window`` returns ``LongTensor[B, length]`` whose
    first ``prefix.shape[1]`` codes are ``prefix`` (``LongTensor[B, T0]``, T0 may be 0), given
    the window's label vectors ``labels`` (``LongTensor[B, Y]`` or None) and, below the top,
    the upper level's codes over the same span ``upper`` (``LongTensor[B, length / ratio]``).
    ``progress(done, total)`` is called as codes are drawn.
    """

    n_ctx: int

    def sample_window(
        self,
        length: int,
        prefix: Tensor,
        labels: Tensor | None,
        upper: Tensor | None,
        generator: torch.Generator | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor: ...


class ExactSampler:
    """The teacher's autoregressive sampler (:func:`teacher.prior.sampling.sample_window`)."""

    def __init__(
        self,
        prior: Prior,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        chunk_size: int | None = DEFAULT_CHUNK,
    ) -> None:
        self.prior = prior
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        self.chunk_size = chunk_size
        self.n_ctx = prior.cfg.n_ctx

    def sample_window(
        self,
        length: int,
        prefix: Tensor,
        labels: Tensor | None,
        upper: Tensor | None,
        generator: torch.Generator | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """See :class:`LevelSampler`."""
        with torch.no_grad():
            cond = self.prior.condition(labels, upper)
        return sample_window(
            self.prior,
            prefix.shape[0],
            cond,
            length,
            prefix=prefix if prefix.shape[1] else None,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            generator=generator,
            progress=progress,
            chunk_size=self.chunk_size,
        )


#: ``--mode`` -> how a level's sampler is built from its prior (students add theirs later)
SAMPLER_MODES: dict[str, type] = {"exact": ExactSampler}


# ---------------------------------------------------------------------------------------------
# labels


@dataclass
class WindowLabel:
    """The label a window was sampled with, and what it says in words.

    ``label`` is the int64 vector (``[total_length, offset, length, artist, genres…, lyric
    tokens…]``, samples) or None for an unlabelled prior; ``lyric_indices`` the window's
    positions in the cleaned lyrics (-1 = padding); ``lyrics`` the window decoded.
    """

    level: int
    start: int
    end: int
    n_new: int
    label: list[int] | None
    artist: str = UNKNOWN
    genres: list[str] = field(default_factory=list)
    lyrics: str = ""
    lyric_indices: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def n_kept(self) -> int:
        """Codes of the window that were already there (its prefix)."""
        return self.length - self.n_new

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "start": self.start,
            "end": self.end,
            "n_new": self.n_new,
            "label": self.label,
            "artist": self.artist,
            "genres": self.genres,
            "lyrics": self.lyrics,
            "lyric_indices": self.lyric_indices,
        }


class _LevelLabels:
    """Builds the label vectors of one prior's windows for one song."""

    def __init__(
        self,
        prior: Prior,
        vocab: Vocab | None,
        artist_id: int,
        genre_ids: list[int],
        lyrics: str,
        words: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        cfg = prior.cfg
        self.cfg = cfg
        self.prior = prior
        self.vocab = vocab
        self.labelled = cfg.labels is not None
        self.artist_id = artist_id
        self.genre_ids = genre_ids[: cfg.labels.max_genres] if self.labelled else []
        self.tokenizer = None
        self.tokens: list[int] = []
        self.times: np.ndarray | None = None
        if cfg.n_tokens:
            version = _lyric_version(cfg.lyrics.n_vocab)
            self.tokenizer = LyricTokenizer(version)
            text = self.tokenizer.clean(lyrics or "")
            self.tokens = self.tokenizer.encode(text, clean=False)
            if words:
                self.times = char_times(text, words, clean=self.tokenizer.clean)

    def label(self, total_samples: int, window: Window) -> tuple[np.ndarray | None, list[int]]:
        """Label vector ``int64[4 + G + n_tokens]`` of ``window`` and its lyric indices."""
        if not self.labelled:
            return None, []
        cfg = self.cfg
        hop = cfg.hop_length
        offset = window.start * hop
        span = window.length * hop  # the audio this window really covers (centres the lyrics)
        tokens, idx = lyric_window(
            self.tokens, cfg.n_tokens, total_samples, offset, span, self.times, cfg.sample_rate
        )
        y = make_label(
            total_samples,
            offset,
            cfg.sample_length,
            self.artist_id,
            self.genre_ids,
            tokens,
            max_genres=cfg.labels.max_genres,
        )
        return y, idx

    def describe(self, window: Window, y: np.ndarray | None, idx: list[int]) -> WindowLabel:
        out = WindowLabel(
            window.level,
            window.start,
            window.end,
            window.n_new,
            None if y is None else [int(v) for v in y],
        )
        if y is None:
            return out
        if self.vocab is not None:
            out.artist = self.vocab.artist_name(self.artist_id)
            out.genres = [self.vocab.genre_name(g) for g in self.genre_ids]
        if self.tokenizer is not None:
            out.lyrics = self.tokenizer.decode(y[4 + self.cfg.labels.max_genres :])
            out.lyric_indices = [int(i) for i in idx]
        return out


def _lyric_version(n_vocab: int) -> str:
    versions = {LyricTokenizer(v).n_vocab: v for v in ("v3", "v2")}
    if n_vocab not in versions:
        raise ConfigError(f"lyric n_vocab {n_vocab} matches no tokenizer (79 = v3, 80 = v2)")
    return versions[n_vocab]


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class GenerationResult:
    """What :class:`Jukebox` generated.

    Attributes:
        codes: level (0 = bottom) -> ``LongTensor[B, T_level]``, every complete level.
        audio: level -> ``Tensor[B, 1, T]`` decoded by that level's decoder (T samples).
        windows: level -> the :class:`WindowLabel` of every window sampled at that level.
        sample_rate: of the audio.
        info: mode, names, cleaned lyrics, dropped characters, seed, temperatures, seconds...
    """

    codes: dict[int, Tensor]
    audio: dict[int, Tensor]
    windows: dict[int, list[WindowLabel]]
    sample_rate: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return int(self.info.get("levels", len(LEVEL_NAMES)))

    @property
    def n_samples(self) -> int:
        return next(iter(self.codes.values())).shape[0]

    def labels(self, level: int) -> Tensor | None:
        """The label vectors of ``level``'s windows, ``LongTensor[n_windows, Y]`` (None if the
        prior is unlabelled or nothing was sampled there)."""
        rows = [w.label for w in self.windows.get(level, []) if w.label is not None]
        return torch.tensor(rows, dtype=torch.long) if rows else None

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write ``level{L}_{name}.wav`` per level (``level{L}_{name}_{i}.wav`` per sample when
        B > 1), ``codes.safetensors`` (``level{L}``: ``LongTensor[B, T_L]``) and
        ``labels.json`` (the run's settings and every window's label, decoded). Each file is
        written atomically; other files in ``out_dir`` are left alone. Returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        b = self.n_samples
        for level in sorted(self.audio):
            name = f"level{level}_{level_name(level, self.levels)}"
            for i in range(b):
                path = out / (f"{name}.wav" if b == 1 else f"{name}_{i}.wav")
                _atomic(
                    path, lambda tmp, x=self.audio[level][i]: write_wav(tmp, x, self.sample_rate)
                )
                written.append(path)
        codes = {f"level{level}": c for level, c in self.codes.items()}
        path = out / "codes.safetensors"
        _atomic(path, lambda tmp: save_tensors(codes, tmp))
        written.append(path)
        meta = {
            **self.info,
            "sample_rate": self.sample_rate,
            "windows": {
                level_name(level, self.levels): [w.to_dict() for w in ws]
                for level, ws in sorted(self.windows.items(), reverse=True)
            },
        }
        path = out / "labels.json"
        atomic_write_json(path, meta)
        written.append(path)
        return written


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------------------------------
# the pipeline


class Jukebox:
    """A VQ-VAE and its priors, sampled exactly (the HF-style API of jukebox-infer).

    >>> jb = Jukebox.from_pretrained("teacher/")                         # doctest: +SKIP
    >>> out = jb.generate(artist="Alan Jackson", genre="Country", lyrics="...",
    ...                   duration_seconds=20, seed=0)                   # doctest: +SKIP
    >>> out.save("samples/")                                             # doctest: +SKIP

    Args:
        vqvae: the VQ-VAE (eval mode is set).
        priors: level (index or name) -> :class:`Prior`; levels not given cannot be sampled.
        vocabs: level -> :class:`Vocab` mapping names to the ids that prior was trained with;
            ``vocab`` serves the levels without one.
    """

    def __init__(
        self,
        vqvae: VQVAE,
        priors: Mapping[int | str, Prior],
        vocabs: Mapping[int | str, Vocab] | None = None,
        vocab: Vocab | None = None,
    ) -> None:
        self.vqvae = vqvae.eval()
        vq = vqvae.cfg
        self.levels = vq.levels
        self.sample_rate = vq.sample_rate
        self.hop_lengths = vq.hop_lengths
        self.priors: dict[int, Prior] = {}
        for key, prior in priors.items():
            level = level_index(key, self.levels)
            _check_prior(prior, level, vqvae)
            self.priors[level] = prior.eval()
        self.vocabs: dict[int, Vocab] = {}
        for level in self.priors:
            v = None
            if vocabs is not None:
                v = vocabs.get(level, vocabs.get(level_name(level, self.levels)))
            v = v if v is not None else vocab
            if v is not None:
                self.vocabs[level] = v

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, teacher_dir: str | os.PathLike, device: str | torch.device | None = None
    ) -> Jukebox:
        """Load ``teacher_dir/{vqvae,top,middle,bottom}`` (missing prior folders are skipped)."""
        root = Path(teacher_dir)
        device = torch.device(device or "cpu")
        if not (root / VQVAE_DIR).is_dir():
            raise FileNotFoundError(f"{root / VQVAE_DIR} not found: is {root} a teacher folder?")
        vqvae = VQVAE.from_pretrained(root / VQVAE_DIR, device=device)
        priors, vocabs = {}, {}
        for level in range(vqvae.levels):
            folder = root / level_name(level, vqvae.levels)
            if not folder.is_dir():
                continue
            priors[level] = Prior.from_pretrained(folder, device=device)
            if (folder / VOCAB_FILE).is_file():
                vocabs[level] = Vocab.load(str(folder))
        if not priors:
            raise FileNotFoundError(f"no prior folders (top/middle/bottom) in {root}")
        shared = Vocab.load(str(root)) if (root / VOCAB_FILE).is_file() else None
        log.info(
            "loaded teacher %s: VQ-VAE + %s priors",
            root,
            ", ".join(level_name(lv, vqvae.levels) for lv in sorted(priors, reverse=True)),
        )
        return cls(vqvae, priors, vocabs, shared)

    @property
    def device(self) -> torch.device:
        return next(self.vqvae.parameters()).device

    # -- the three modes -------------------------------------------------------------------

    def generate(
        self,
        artist: str | None = None,
        genre: str | Sequence[str] | None = None,
        lyrics: str = "",
        duration_seconds: float = 20.0,
        n_samples: int = 1,
        temperature: PerLevel = None,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        levels: Sequence[str | int] = ("top", "middle", "bottom"),
        progress: bool = True,
        words: Sequence[Mapping[str, Any]] | None = None,
        hop_fraction: PerLevel = None,
        chunk_size: int | None = DEFAULT_CHUNK,
        samplers: Mapping[int | str, LevelSampler] | None = None,
    ) -> GenerationResult:
        """Sample a song from nothing (ancestral mode).

        Args:
            artist, genre: names in the priors' vocabularies (case-insensitive; ``None`` is
                "unknown"); an unknown name is one :class:`ConfigError` with close matches.
            lyrics: the song's lyrics; characters the tokenizer cannot represent are dropped
                (and counted in ``info["lyrics_dropped"]``).
            duration_seconds: rounded to a whole number of top-level codes.
            n_samples: B songs sampled together (one cache of batch B per window).
            temperature: one value, or per level (``{"top": 0.98, "middle": 0.99}``, or a
                sequence top-first); default 0.98 top, 0.99 upsamplers.
            top_k, top_p: filtering (0 = off).
            seed: the random seed (drawn and recorded in ``info`` when None).
            levels: the levels to sample, top first; stop early with ``("top",)``.
            progress: a rich progress bar per level (total = codes to sample).
            words: word timings ``[{"word", "start", "end"}]`` (seconds) for the lyric windows.
            hop_fraction: window hop / n_ctx, one value or per level (0.125 top, 0.5 below).
            chunk_size: positions per forward when re-priming a window.
            samplers: level -> a :class:`LevelSampler` replacing the exact one there.
        """
        total = self._total_samples(duration_seconds)
        return self._run(
            "ancestral",
            {},
            total,
            dict(artist=artist, genre=genre, lyrics=lyrics, words=words),
            n_samples,
            levels,
            temperature,
            top_k,
            top_p,
            seed,
            progress,
            hop_fraction,
            chunk_size,
            samplers,
        )

    def generate_from_audio(
        self,
        prompt_audio: str | os.PathLike | Tensor | np.ndarray,
        prompt_seconds: float | None = None,
        artist: str | None = None,
        genre: str | Sequence[str] | None = None,
        lyrics: str = "",
        duration_seconds: float = 20.0,
        n_samples: int = 1,
        temperature: PerLevel = None,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        levels: Sequence[str | int] = ("top", "middle", "bottom"),
        progress: bool = True,
        words: Sequence[Mapping[str, Any]] | None = None,
        hop_fraction: PerLevel = None,
        chunk_size: int | None = DEFAULT_CHUNK,
        samplers: Mapping[int | str, LevelSampler] | None = None,
    ) -> GenerationResult:
        """Continue a prompt (Jukebox ``primed_sample``).

        ``prompt_audio`` is a file (read mono at the model rate) or audio at the model rate
        (``[T]``, ``[1, T]`` or ``[1, 1, T]``); its first ``prompt_seconds`` (default: all),
        rounded down to whole top-level codes, are encoded at every level, kept, and
        continued to ``duration_seconds``. Other arguments as in :meth:`generate`.
        """
        x = _prompt_tensor(prompt_audio, self.sample_rate)
        hop = self.hop_lengths[-1]
        n = x.shape[-1] if prompt_seconds is None else int(prompt_seconds * self.sample_rate)
        n = min(n, x.shape[-1]) // hop * hop
        if n == 0:
            raise ConfigError(
                f"the prompt is shorter than one top-level code ({hop} samples, "
                f"{hop / self.sample_rate:.4f} s)"
            )
        if prompt_seconds is not None and n != int(prompt_seconds * self.sample_rate):
            log.info(
                "prompt: %.3f s rounded down to %.3f s (whole top-level codes of %d samples)",
                prompt_seconds,
                n / self.sample_rate,
                hop,
            )
        total = self._total_samples(duration_seconds)
        if total <= n:
            raise ConfigError(
                f"duration ({total / self.sample_rate:.3f} s) must be longer than the prompt "
                f"({n / self.sample_rate:.3f} s)"
            )
        with torch.inference_mode():
            codes = self.vqvae.encode(x[..., :n].to(self.device))
        kept = {lv: c.expand(n_samples, -1).clone() for lv, c in enumerate(codes)}
        return self._run(
            "continue",
            kept,
            total,
            dict(artist=artist, genre=genre, lyrics=lyrics, words=words),
            n_samples,
            levels,
            temperature,
            top_k,
            top_p,
            seed,
            progress,
            hop_fraction,
            chunk_size,
            samplers,
            extra={"prompt_seconds": n / self.sample_rate},
        )

    def upsample(
        self,
        codes: Tensor | Mapping[int | str, Tensor],
        artist: str | None = None,
        genre: str | Sequence[str] | None = None,
        lyrics: str = "",
        temperature: PerLevel = None,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int | None = None,
        levels: Sequence[str | int] = ("middle", "bottom"),
        progress: bool = True,
        words: Sequence[Mapping[str, Any]] | None = None,
        hop_fraction: PerLevel = None,
        chunk_size: int | None = DEFAULT_CHUNK,
        samplers: Mapping[int | str, LevelSampler] | None = None,
    ) -> GenerationResult:
        """Sample the lower levels given upper codes (Jukebox ``upsample``).

        ``codes``: the top level's ``LongTensor[B, T_top]`` (or ``[T_top]``), or level ->
        codes for several complete upper levels. The song's length is the codes' length.
        """
        if isinstance(codes, Tensor):
            codes = {self.levels - 1: codes}
        given = {}
        for key, c in codes.items():
            c = torch.as_tensor(c)
            given[level_index(key, self.levels)] = (c[None] if c.dim() == 1 else c).long()
        top_given = max(given)
        total = given[top_given].shape[1] * self.hop_lengths[top_given]
        batch = {c.shape[0] for c in given.values()}
        if len(batch) != 1:
            raise ConfigError(f"the given levels disagree on the batch size: {sorted(batch)}")
        for level, c in given.items():
            if c.shape[1] * self.hop_lengths[level] != total:
                raise ConfigError(
                    f"level {level} has {c.shape[1]} codes, need {total // self.hop_lengths[level]}"
                    " to cover the same audio as the highest level given"
                )
        n = batch.pop()
        return self._run(
            "upsample",
            {lv: c.to(self.device) for lv, c in given.items()},
            total,
            dict(artist=artist, genre=genre, lyrics=lyrics, words=words),
            n,
            levels,
            temperature,
            top_k,
            top_p,
            seed,
            progress,
            hop_fraction,
            chunk_size,
            samplers,
        )

    @staticmethod
    def save(result: GenerationResult, out_dir: str | os.PathLike) -> list[Path]:
        """Write a result's WAVs, codes and labels (:meth:`GenerationResult.save`)."""
        return result.save(out_dir)

    # -- internals -------------------------------------------------------------------------

    def _total_samples(self, seconds: float) -> int:
        """``seconds`` as samples, rounded to whole top-level codes (at least one)."""
        if not seconds > 0:
            raise ConfigError(f"duration_seconds must be positive, got {seconds}")
        hop = self.hop_lengths[-1]
        exact = seconds * self.sample_rate
        n = max(1, round(exact / hop)) * hop
        if abs(n - exact) > 1e-6:
            log.info(
                "duration %.4f s is not a whole number of top-level codes (%d samples each): "
                "using %.4f s (%d codes)",
                seconds,
                hop,
                n / self.sample_rate,
                n // hop,
            )
        return n

    def _per_level(self, value: PerLevel, defaults: Mapping[str, float], what: str) -> dict:
        out = {
            lv: defaults["top" if lv == self.levels - 1 else "upsampler"]
            for lv in range(self.levels)
        }
        if value is None:
            return out
        if isinstance(value, int | float):
            return dict.fromkeys(out, float(value))
        if isinstance(value, Mapping):
            for k, v in value.items():
                out[level_index(k, self.levels)] = float(v)
            return out
        value = list(value)
        if len(value) != self.levels:
            raise ConfigError(f"{what}: give one value or {self.levels} (top first), got {value}")
        return {self.levels - 1 - i: float(v) for i, v in enumerate(value)}

    def _label_makers(
        self, levels: Sequence[int], names: Mapping[str, Any]
    ) -> tuple[dict[int, _LevelLabels], dict[str, Any]]:
        """Map names to ids per level and clean the lyrics; all problems in one error."""
        artist, genre = names["artist"], names["genre"]
        problems: dict[str, list[str]] = {}
        ids: dict[int, tuple[int, list[int]]] = {}
        for level in levels:
            prior = self.priors[level]
            lab = prior.cfg.labels
            if lab is None:
                ids[level] = (0, [])
                continue
            vocab = self.vocabs.get(level)
            wants_names = bool(artist) or bool(genre_words(genre, "v3"))
            if vocab is None:
                if wants_names:
                    raise ConfigError(
                        f"the {level_name(level, self.levels)} prior is labelled but has no "
                        f"{VOCAB_FILE}: cannot map artist/genre names to ids"
                    )
                ids[level] = (0, [0])
                continue
            if vocab.n_artists > lab.artist_bins or vocab.n_genres > lab.genre_bins:
                raise ConfigError(
                    f"the {level_name(level, self.levels)} prior's vocabulary has ids up to "
                    f"{vocab.n_artists - 1}/{vocab.n_genres - 1} (artists/genres) but the model "
                    f"embeds {lab.artist_bins}/{lab.genre_bins}"
                )
            a_id = _artist_id(vocab, artist, problems)
            g_ids = _genre_ids(vocab, genre, problems)
            if len(g_ids) > lab.max_genres:
                log.warning(
                    "%s level takes %d genres: %s -> first %d kept",
                    level_name(level, self.levels),
                    lab.max_genres,
                    genre,
                    lab.max_genres,
                )
            ids[level] = (a_id, g_ids)
        if problems:
            lines = [f"{k}: {'; '.join(v)}" for k, v in problems.items()]
            raise ConfigError("unknown label name(s): " + " | ".join(lines))

        lyrics = names["lyrics"] or ""
        stats = TextStats()
        cleaned = ""
        if any(self.priors[lv].cfg.n_tokens for lv in levels) and lyrics:
            version = next(
                _lyric_version(self.priors[lv].cfg.lyrics.n_vocab)
                for lv in levels
                if self.priors[lv].cfg.n_tokens
            )
            cleaned, stats = LyricTokenizer(version).clean_with_stats(lyrics)
            if stats.dropped:
                log.warning("lyrics: %s", stats.summary())
        makers = {
            lv: _LevelLabels(
                self.priors[lv], self.vocabs.get(lv), *ids[lv], lyrics, names.get("words")
            )
            for lv in levels
        }
        info = {
            "artist": artist,
            "genre": genre,
            "lyrics": cleaned,
            "lyrics_chars": stats.chars,
            "lyrics_dropped": stats.dropped,
            "lyrics_dropped_chars": dict(stats.dropped_chars),
        }
        return makers, info

    def _run(
        self,
        mode: str,
        codes: dict[int, Tensor],
        total: int,
        names: dict[str, Any],
        n_samples: int,
        levels: Sequence[str | int],
        temperature: PerLevel,
        top_k: int,
        top_p: float,
        seed: int | None,
        progress: bool,
        hop_fraction: PerLevel,
        chunk_size: int | None,
        samplers: Mapping[int | str, LevelSampler] | None,
        extra: Mapping[str, Any] | None = None,
    ) -> GenerationResult:
        # ---- validate everything before any work
        if n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
        if top_k < 0 or not 0.0 <= top_p <= 1.0:
            raise ConfigError(f"need top_k >= 0 and 0 <= top_p <= 1, got {top_k}, {top_p}")
        todo = sorted({level_index(lv, self.levels) for lv in levels}, reverse=True)
        if not todo:
            raise ConfigError("no level to sample")
        temps = self._per_level(temperature, DEFAULT_TEMPERATURE, "temperature")
        hops = self._per_level(hop_fraction, DEFAULT_HOP_FRACTION, "hop_fraction")
        if any(t <= 0 for t in temps.values()):
            raise ConfigError(f"temperatures must be positive, got {temps}")
        override = {level_index(k, self.levels): s for k, s in (samplers or {}).items()}
        for level in todo:
            if level not in self.priors and level not in override:
                raise ConfigError(
                    f"no {level_name(level, self.levels)} prior in this teacher: cannot sample "
                    f"level {level}"
                )
            if level < self.levels - 1:
                up = level + 1
                full = up in todo or (
                    up in codes and codes[up].shape[1] * self.hop_lengths[up] == total
                )
                if not full:
                    raise ConfigError(
                        f"sampling the {level_name(level, self.levels)} level needs the complete "
                        f"{level_name(up, self.levels)} level: sample it too or give its codes"
                    )
        labelled = [lv for lv in todo if lv in self.priors]
        makers, label_info = self._label_makers(labelled, names)

        plans: dict[int, list[Window]] = {}
        labels: dict[int, list[tuple[np.ndarray | None, list[int]]]] = {}
        level_samplers: dict[int, LevelSampler] = {}
        for level in todo:
            hop_l = self.hop_lengths[level]
            t_level = total // hop_l
            have = codes[level].shape[1] if level in codes else 0
            sampler = override.get(level) or ExactSampler(
                self.priors[level], temps[level], top_k, top_p, chunk_size
            )
            level_samplers[level] = sampler
            n_ctx = sampler.n_ctx
            hop = int(hops[level] * n_ctx)
            if not 1 <= hop <= n_ctx:
                raise ConfigError(
                    f"hop_fraction {hops[level]} gives a hop of {hop} codes at the "
                    f"{level_name(level, self.levels)} level; need 1..n_ctx={n_ctx}"
                )
            if level < self.levels - 1:
                ratio = self.hop_lengths[level + 1] // hop_l
                if hop % ratio:
                    raise ConfigError(
                        f"the {level_name(level, self.levels)} window hop ({hop} codes) must be a "
                        f"multiple of the upsampling ratio {ratio} so its upper codes are whole"
                    )
            plans[level] = plan_windows(level, t_level, n_ctx, hop, have)
            if level in makers:
                labels[level] = [makers[level].label(total, w) for w in plans[level]]
                self._check_labels(level, labels[level], total)

        seed = _seed(seed)
        info = {
            "mode": mode,
            "levels": self.levels,
            "seconds": total / self.sample_rate,
            "total_samples": total,
            "n_samples": n_samples,
            "seed": seed,
            "temperature": {level_name(lv, self.levels): temps[lv] for lv in todo},
            "top_k": top_k,
            "top_p": top_p,
            "sampled_levels": [level_name(lv, self.levels) for lv in todo],
            **label_info,
            **(extra or {}),
        }
        device = self.device
        generator = torch.Generator(device=device).manual_seed(seed)

        # ---- sample, top first
        windows: dict[int, list[WindowLabel]] = {}
        bar = _Progress(progress)
        with bar:
            for level in todo:
                name = level_name(level, self.levels)
                t_level = total // self.hop_lengths[level]
                buf = torch.zeros(n_samples, t_level, dtype=torch.long, device=device)
                have = 0
                if level in codes:
                    have = codes[level].shape[1]
                    buf[:, :have] = codes[level].to(device)
                upper = codes.get(level + 1)
                plan = plans[level]
                task = bar.add(name, sum(w.n_new for w in plan))
                windows[level] = []
                for i, w in enumerate(plan):
                    y, idx = labels[level][i] if level in labels else (None, [])
                    if level in makers:
                        windows[level].append(makers[level].describe(w, y, idx))
                    lab = None if y is None else torch.as_tensor(y, device=device)
                    lab = None if lab is None else lab.expand(n_samples, -1)
                    up = None
                    if upper is not None:
                        r = self.hop_lengths[level + 1] // self.hop_lengths[level]
                        up = upper[:, w.start // r : w.end // r]
                    bar.describe(task, f"{name} window {i + 1}/{len(plan)}")
                    done0 = bar.completed(task)
                    out = level_samplers[level].sample_window(
                        w.length,
                        buf[:, w.start : w.start + w.n_kept],
                        lab,
                        up,
                        generator=generator,
                        progress=bar.callback(task, done0),
                    )
                    buf[:, w.start + w.n_kept : w.end] = out[:, w.n_kept :]
                    bar.set(task, done0 + w.n_new)
                codes[level] = buf
                log.debug("%s level: %d codes in %d windows", name, t_level, len(plan))

        # ---- decode every complete level
        complete = {
            lv: c
            for lv, c in codes.items()
            if c.shape[1] * self.hop_lengths[lv] == total and c.shape[0] == n_samples
        }
        audio = {}
        with torch.inference_mode():
            for level, c in complete.items():
                audio[level] = self.vqvae.decode([c], start_level=level).float().cpu()
        return GenerationResult(
            codes={lv: c.cpu().clone() for lv, c in complete.items()},
            audio={lv: a.clone() for lv, a in audio.items()},
            windows=windows,
            sample_rate=self.sample_rate,
            info=info,
        )

    def _check_labels(
        self, level: int, labels: list[tuple[np.ndarray | None, list[int]]], total: int
    ) -> None:
        """Raise :class:`ConfigError` now if a window's timing falls outside the prior's
        range (the top prior's timing embeddings only cover ``[min, max)`` durations)."""
        prior = self.priors[level]
        lab = prior.cfg.labels
        if lab is None or not lab.include_timing or not labels:
            return
        meta = torch.as_tensor(np.stack([y for y, _ in labels]))[:, : 4 + lab.max_genres]
        try:
            with torch.no_grad():
                prior.y_emb(meta.to(self.device))
        except ValueError as err:
            raise ConfigError(
                f"a {total / self.sample_rate:.2f} s song is outside what the "
                f"{level_name(level, self.levels)} prior's timing covers (durations "
                f"[{lab.min_duration:g}, {lab.max_duration:g}) s): {err}"
            ) from err


# ---------------------------------------------------------------------------------------------
# helpers


def _check_prior(prior: Prior, level: int, vqvae: VQVAE) -> None:
    cfg, vq = prior.cfg, vqvae.cfg
    where = f"the prior given for level {level}"
    if cfg.level != level:
        raise ConfigError(f"{where} was built for level {cfg.level}")
    if tuple(cfg.downs_t) != tuple(vq.downs_t) or tuple(cfg.strides_t) != tuple(vq.strides_t):
        raise ConfigError(
            f"{where} has geometry downs {cfg.downs_t} strides {cfg.strides_t}; the VQ-VAE "
            f"{vq.downs_t} {vq.strides_t}"
        )
    if cfg.l_bins != vq.l_bins:
        raise ConfigError(f"{where} has {cfg.l_bins} bins, the VQ-VAE {vq.l_bins}")
    if cfg.sample_rate != vq.sample_rate:
        raise ConfigError(f"{where} runs at {cfg.sample_rate} Hz, the VQ-VAE {vq.sample_rate} Hz")


def _close(name: str, names: Sequence[str]) -> str:
    matches = difflib.get_close_matches(name, [n for n in names if n != UNKNOWN], n=5, cutoff=0.5)
    return f"close matches: {', '.join(repr(m) for m in matches)}" if matches else "no close match"


def _artist_id(vocab: Vocab, artist: str | None, problems: dict[str, list[str]]) -> int:
    if not artist:
        return 0
    key = normalize_name(artist, vocab.version)
    if key in vocab.artists:
        return vocab.artists[key]
    msg = f"{artist!r} ({_close(key, list(vocab.artists))})"
    problems.setdefault("artist", [])
    if msg not in problems["artist"]:
        problems["artist"].append(msg)
    return 0


def _genre_ids(
    vocab: Vocab, genre: str | Sequence[str] | None, problems: dict[str, list[str]]
) -> list[int]:
    words = genre_words(genre, vocab.version)
    out = []
    for w in words:
        if w in vocab.genres:
            out.append(vocab.genres[w])
            continue
        msg = f"{w!r} ({_close(w, list(vocab.genres))})"
        problems.setdefault("genre", [])
        if msg not in problems["genre"]:
            problems["genre"].append(msg)
    return out or [0]


def _seed(seed: int | None) -> int:
    if seed is None:
        return random.SystemRandom().randrange(2**63)
    return int(seed)


def _prompt_tensor(prompt: str | os.PathLike | Tensor | np.ndarray, sample_rate: int) -> Tensor:
    """The prompt as ``Tensor[1, 1, T]`` at ``sample_rate``."""
    if isinstance(prompt, str | os.PathLike):
        path = str(prompt)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"prompt audio {path} not found")
        x = torch.as_tensor(load_audio(path, sample_rate, mono=True))
    else:
        x = torch.as_tensor(prompt)
    x = x.float()
    if x.dim() == 1:
        x = x[None]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] != 1 or x.shape[1] != 1:
        raise ConfigError(
            f"prompt audio must be mono [T], [1, T] or [1, 1, T], got {tuple(x.shape)}"
        )
    return x


class _Progress:
    """Rich progress per level (no-op when disabled); per-token updates are cheap calls."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("codes"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
        self._done: dict[int, int] = {}

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def add(self, name: str, total: int) -> int:
        task = self.bar.add_task(name, total=total) if self.bar is not None else len(self._done)
        self._done[task] = 0
        return task

    def describe(self, task: int, text: str) -> None:
        if self.bar is not None:
            self.bar.update(task, description=text)

    def completed(self, task: int) -> int:
        return self._done[task]

    def set(self, task: int, done: int) -> None:
        self._done[task] = done
        if self.bar is not None:
            self.bar.update(task, completed=done)

    def callback(self, task: int, base: int) -> Callable[[int, int], None] | None:
        if self.bar is None:
            return None
        bar = self.bar

        def update(done: int, _total: int) -> None:
            bar.update(task, completed=base + done)

        return update


def load_lyrics(lyrics: str | None, lyrics_file: str | os.PathLike | None) -> str:
    """Lyrics from text or a UTF-8 file (exactly one may be given; neither gives "")."""
    if lyrics is not None and lyrics_file is not None:
        raise ConfigError("give lyrics as text or as a file, not both")
    if lyrics_file is not None:
        path = Path(lyrics_file)
        if not path.is_file():
            raise FileNotFoundError(f"lyrics file {path} not found")
        return path.read_text(encoding="utf-8")
    return lyrics or ""


def read_labels_json(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Read the ``labels.json`` written by :meth:`GenerationResult.save`."""
    with open(Path(out_dir) / "labels.json", encoding="utf-8") as f:
        return json.load(f)


__all__ = [
    "DEFAULT_HOP_FRACTION",
    "DEFAULT_TEMPERATURE",
    "ExactSampler",
    "GenerationResult",
    "Jukebox",
    "LEVEL_NAMES",
    "LevelSampler",
    "SAMPLER_MODES",
    "Window",
    "WindowLabel",
    "level_index",
    "level_name",
    "load_lyrics",
    "plan_windows",
    "read_labels_json",
    "window_starts",
]
