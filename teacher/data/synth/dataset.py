"""A built-in, generated music dataset: deterministic from a seed, seconds to make, no downloads.

This module holds the dataset's config (:class:`SynthConfig`), a song end to end
(:func:`render_song`: compose, render, metadata) and the writing of a dataset folder
(:func:`write_synth_dataset`, ``python -m teacher.data.synth OUT_DIR --n-songs 20``). See
:mod:`teacher.data.synth` for what the songs are.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from teacher.config import ConfigError, save_config
from teacher.data.synth.compose import Song, compose_song
from teacher.data.synth.render import mix, render_stems
from teacher.data.synth.styles import ARTISTS, GENRES

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# config and summary


@dataclass(frozen=True)
class SynthConfig:
    """What :func:`write_synth_dataset` makes. Song ``i`` depends only on ``(seed, i)`` and the
    fields other than ``n_songs``."""

    n_songs: int = 20
    seconds: float = 10.0
    sample_rate: int = 22050
    seed: int = 0
    artists: tuple[str, ...] = tuple(ARTISTS)
    genres: tuple[str, ...] = tuple(GENRES)
    peak: float = 0.9  # peak amplitude after normalisation
    subtype: str = "PCM_16"  # soundfile subtype of the wav files

    def __post_init__(self) -> None:
        if self.n_songs < 0:
            raise ConfigError(f"n_songs must be >= 0, got {self.n_songs}")
        if self.seconds < 2.0:
            raise ConfigError(f"seconds must be >= 2 (room for a phrase), got {self.seconds}")
        if self.sample_rate < 4000:
            raise ConfigError(f"sample_rate must be >= 4000, got {self.sample_rate}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 < self.peak < 1.0:
            raise ConfigError(f"peak must be in (0, 1), got {self.peak}")
        for kind, names, known in (
            ("artist", self.artists, ARTISTS),
            ("genre", self.genres, GENRES),
        ):
            if not names:
                raise ConfigError(f"at least one {kind} is needed")
            bad = [n for n in names if n not in known]
            if bad:
                raise ConfigError(f"unknown {kind}s {bad}; known: {sorted(known)}")


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synth_dataset` wrote."""

    out_dir: str
    metadata: str
    n_songs: int
    audio_seconds: float
    wall_seconds: float
    artists: tuple[str, ...]
    genres: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# one song


def song_metadata(song: Song, file: str, sample_rate: int) -> dict[str, Any]:
    """The ``metadata.jsonl`` row of a song."""
    return {
        "file": file,
        "artist": song.artist,
        "genre": song.genre,
        "lyrics": song.lyrics,
        "words": song.words(),
        "title": song.title,
        "seed": song.seed,
        "index": song.index,
        "seconds": song.seconds,
        "sample_rate": sample_rate,
        "tempo": song.tempo,
        "meter": song.meter,
        "key": song.key,
        "form": song.form,
        "dynamics": song.dynamics,
        "chords": [[t, c] for t, c in song.chords],
        "melody": [[round(n.start, 4), round(n.end, 4), n.pitch] for n in song.melody],
    }


def render_song(
    cfg: SynthConfig, index: int, artist: str | None = None, genre: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Compose and render song ``index``: ``(audio float32[T] in [-peak, peak], metadata)``.

    ``T = round(cfg.seconds * cfg.sample_rate)``. ``artist``/``genre`` override the dataset's
    assignment (used by tests to compare timbres and styles on otherwise equal songs). The
    metadata's ``file`` is the path :func:`write_synth_dataset` gives the song.
    """
    song = compose_song(cfg, index, artist, genre)
    audio = mix(render_stems(song, cfg.sample_rate), cfg.sample_rate, cfg.peak)
    return audio, song_metadata(song, song_file(index), cfg.sample_rate)


def song_file(index: int) -> str:
    """Relative path of song ``index`` inside a dataset folder."""
    return f"audio/synth_{index:05d}.wav"


# ---------------------------------------------------------------------------------------------
# writing a dataset


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def progress_bar(enabled: bool):
    """A rich progress bar (disabled: no output)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def write_synth_dataset(
    out_dir: str | os.PathLike, cfg: SynthConfig | None = None, progress: bool = True
) -> SynthSummary:
    """Render ``cfg.n_songs`` songs to ``out_dir/audio/*.wav`` and ``out_dir/metadata.jsonl``.

    The config is saved beside them as ``synth_config.json`` (rebuild it with
    ``teacher.config.load_config(SynthConfig, path)``).

    Deterministic: the same config writes the same files, replacing earlier ones; stale
    ``synth_*.wav`` files from a bigger earlier run are removed.
    """
    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("synth songs", total=cfg.n_songs)
        for i in range(cfg.n_songs):
            audio, meta = render_song(cfg, i)
            sf.write(out / meta["file"], audio, cfg.sample_rate, subtype=cfg.subtype)
            rows.append(meta)
            bar.advance(task)
    keep = {out / r["file"] for r in rows}
    for stale in (out / "audio").glob("synth_*.wav"):
        if stale not in keep:
            stale.unlink()
    write_jsonl(out / "metadata.jsonl", rows)
    save_config(cfg, str(out / "synth_config.json"))
    wall = time.perf_counter() - t0
    summary = SynthSummary(
        out_dir=str(out),
        metadata=str(out / "metadata.jsonl"),
        n_songs=cfg.n_songs,
        audio_seconds=cfg.n_songs * cfg.seconds,
        wall_seconds=wall,
        artists=tuple(sorted({r["artist"] for r in rows})),
        genres=tuple(sorted({r["genre"] for r in rows})),
    )
    logger.info(
        "wrote %d synth songs (%.0f s of audio) to %s in %.1f s",
        cfg.n_songs,
        summary.audio_seconds,
        out,
        wall,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m teacher.data.synth OUT_DIR [--n-songs N] [--seconds S] [--sample-rate SR]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    defaults = SynthConfig()
    p.add_argument("--n-songs", type=int, default=defaults.n_songs)
    p.add_argument("--seconds", type=float, default=defaults.seconds)
    p.add_argument("--sample-rate", type=int, default=defaults.sample_rate)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SynthConfig(
        n_songs=args.n_songs, seconds=args.seconds, sample_rate=args.sample_rate, seed=args.seed
    )
    summary = write_synth_dataset(args.out_dir, cfg)
    logger.info("%s", json.dumps(asdict(summary)))
