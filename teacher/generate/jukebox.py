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

Windowing (reference ``sample_level``/``sample_single_window``/``get_starts``;
:mod:`teacher.generate.windows`): each level is covered by overlapping windows of ``n_ctx``
codes; each window keeps the codes already sampled inside it as a prefix (re-primed by a
chunked forward into a fresh cache) and samples only the rest. A level shorter than one window
is one partial window. An upsampler window is conditioned on the upper level's codes over
exactly the same span of audio. The label vector is rebuilt per window
(:mod:`teacher.generate.labels`): as in training, position ``i`` of a partial window still gets
the timing of ``offset + i · hop_length``.

The per-level sampler is swappable: the windowing loop only calls a
:class:`~teacher.generate.sampler.LevelSampler`; :class:`~teacher.generate.sampler.ExactSampler`
is the teacher's own autoregressive one (``--mode exact``). Distilled students plug in the same
way (``generate(..., samplers={level: sampler})``; :mod:`distill.pipeline`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from teacher.config import ConfigError
from teacher.console import progress_bar
from teacher.data.audio import load_audio
from teacher.data.labels import VOCAB_FILE, Vocab
from teacher.device import resolve_device, resolve_dtype
from teacher.generate.labels import WindowLabel, check_timing, resolve_names
from teacher.generate.result import GenerationResult
from teacher.generate.sampler import ExactSampler, LevelSampler
from teacher.generate.windows import (
    DEFAULT_CHUNK,
    DEFAULT_HOP_FRACTION,
    DEFAULT_TEMPERATURE,
    PerLevel,
    Window,
    per_level,
    plan_windows,
)
from teacher.io import ModelFolderError
from teacher.levels import level_index, level_name
from teacher.prior.config import check_against_vqvae
from teacher.prior.model import Prior
from teacher.vqvae import VQVAE

log = logging.getLogger(__name__)

VQVAE_DIR = "vqvae"


@dataclass(frozen=True)
class _Options:
    """The sampling settings every entry point of :class:`Jukebox` shares (see ``generate``)."""

    n_samples: int
    temperature: PerLevel
    top_k: int
    top_p: float
    seed: int | None
    levels: Sequence[str | int]
    progress: bool
    hop_fraction: PerLevel
    chunk_size: int | None


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

    ``root`` is the teacher folder it was loaded from (:meth:`from_pretrained`; else None).
    """

    root: Path | None = None

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
            check_against_vqvae(prior.cfg, vqvae.cfg, level)
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
        cls,
        teacher_dir: str | os.PathLike,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
    ) -> Jukebox:
        """Load ``teacher_dir/{vqvae,top,middle,bottom}`` (missing prior folders are skipped)
        on ``device`` (``"auto"``: CUDA when present, else the CPU), the priors in ``dtype``
        (``"float32"`` by default, ``"bfloat16"``, ``"float16"``; the VQ-VAE stays fp32).

        A damaged part is one :class:`~teacher.io.ModelFolderError` naming its folder; parts
        that do not belong together (levels, geometry) one naming the teacher folder.
        """
        root = Path(teacher_dir)
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        if not (root / VQVAE_DIR).is_dir():
            raise FileNotFoundError(f"{root / VQVAE_DIR} not found: is {root} a teacher folder?")
        vqvae = VQVAE.from_pretrained(root / VQVAE_DIR, device=device)
        priors, vocabs = {}, {}
        for level in range(vqvae.levels):
            folder = root / level_name(level, vqvae.levels)
            if not folder.is_dir():
                continue
            priors[level] = Prior.from_pretrained(folder, device=device, dtype=dtype)
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
        try:
            jukebox = cls(vqvae, priors, vocabs, shared)
        except ConfigError as err:
            raise ModelFolderError(f"{root}: the parts do not belong together: {err}") from None
        jukebox.root = root
        return jukebox

    def missing_prior(self, level: int) -> str:
        """Where the prior of ``level`` was looked for, for the error that it is missing."""
        name = level_name(level, self.levels)
        if self.root is None:
            return f"no {name} prior in this teacher"
        return f"no {name} prior in the teacher folder {self.root} (no {name}/ folder)"

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
        song = {"artist": artist, "genre": genre, "lyrics": lyrics, "words": words}
        opts = _Options(
            n_samples, temperature, top_k, top_p, seed, levels, progress, hop_fraction, chunk_size
        )
        total = self._total_samples(duration_seconds)
        return self._run("ancestral", {}, total, song, opts, samplers)

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
        song = {"artist": artist, "genre": genre, "lyrics": lyrics, "words": words}
        opts = _Options(
            n_samples, temperature, top_k, top_p, seed, levels, progress, hop_fraction, chunk_size
        )
        extra = {"prompt_seconds": n / self.sample_rate}
        return self._run("continue", kept, total, song, opts, samplers, extra)

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
        song = {"artist": artist, "genre": genre, "lyrics": lyrics, "words": words}
        opts = _Options(
            batch.pop(), temperature, top_k, top_p, seed, levels, progress, hop_fraction, chunk_size
        )
        given = {lv: c.to(self.device) for lv, c in given.items()}
        return self._run("upsample", given, total, song, opts, samplers)

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

    def _run(
        self,
        mode: str,
        codes: dict[int, Tensor],
        total: int,
        names: dict[str, Any],
        opts: _Options,
        samplers: Mapping[int | str, LevelSampler] | None,
        extra: Mapping[str, Any] | None = None,
    ) -> GenerationResult:
        """Sample ``opts.levels`` of a song of ``total`` samples (``codes``: the levels or
        prefixes already there), top first, window by window; decode every complete level."""
        n_samples, top_k, top_p, seed = opts.n_samples, opts.top_k, opts.top_p, opts.seed
        # ---- validate everything before any work
        if n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {n_samples}")
        if top_k < 0 or not 0.0 <= top_p <= 1.0:
            raise ConfigError(f"need top_k >= 0 and 0 <= top_p <= 1, got {top_k}, {top_p}")
        todo = sorted({level_index(lv, self.levels) for lv in opts.levels}, reverse=True)
        if not todo:
            raise ConfigError("no level to sample")
        temps = per_level(opts.temperature, self.levels, DEFAULT_TEMPERATURE, "temperature")
        hops = per_level(opts.hop_fraction, self.levels, DEFAULT_HOP_FRACTION, "hop_fraction")
        if any(t <= 0 for t in temps.values()):
            raise ConfigError(f"temperatures must be positive, got {temps}")
        override = {level_index(k, self.levels): s for k, s in (samplers or {}).items()}
        for level in todo:
            if level not in self.priors and level not in override:
                raise ConfigError(f"{self.missing_prior(level)}: cannot sample level {level}")
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
        makers, label_info = resolve_names(self.priors, self.vocabs, labelled, names, self.levels)

        plans: dict[int, list[Window]] = {}
        labels: dict[int, list[tuple[np.ndarray | None, list[int]]]] = {}
        level_samplers: dict[int, LevelSampler] = {}
        for level in todo:
            hop_l = self.hop_lengths[level]
            t_level = total // hop_l
            have = codes[level].shape[1] if level in codes else 0
            sampler = override.get(level) or ExactSampler(
                self.priors[level], temps[level], top_k, top_p, opts.chunk_size
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
                check_timing(self.priors[level], labels[level], total, self.levels)

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
        bar = _Progress(opts.progress)
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


# ---------------------------------------------------------------------------------------------
# helpers


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
    if not bool(torch.isfinite(x).all()):  # a file's NaN/Inf are refused by load_audio
        raise ConfigError(f"prompt audio has {int((~torch.isfinite(x)).sum())} NaN or Inf samples")
    return x


class _Progress:
    """Rich progress per level (no-op when disabled); per-token updates are cheap calls."""

    def __init__(self, enabled: bool) -> None:
        self.bar = progress_bar(unit="codes") if enabled else None
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


__all__ = ["Jukebox"]
