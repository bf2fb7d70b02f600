"""The teacher's audio dataset: scan a folder, read metadata, serve labelled mono crops.

``scan_audio`` walks a folder once: it probes every audio file, skips the unusable ones with
one warning each (counted by reason), reads the metadata and builds the artist/genre
vocabulary. ``AudioDataset`` serves random crops of the usable files with their Jukebox label
vectors; ``compute_bandwidth`` measures the loss-normalising statistics.

Metadata (``metadata.jsonl`` or ``metadata.csv`` in the folder, or an explicit path) has one
row per file:

* ``file``: path relative to the audio folder (or absolute);
* ``artist``: str; ``genre``: str or list of str (CSV: ``|``-separated);
* ``lyrics``: str; ``words`` (optional): ``[{"word", "start", "end"}]`` in seconds (CSV: a
  JSON string);
* any other field is kept in the file's ``info``.

Files without a row load with unknown artist/genre and no lyrics.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from teacher.config import ConfigError
from teacher.data.audio import (
    AUDIO_EXTENSIONS,
    AudioError,
    AudioInfo,
    iter_blocks,
    load_audio,
    probe,
    read_crop_samples,
)
from teacher.data.labels import LabelConfig, Labeller, Vocab
from teacher.data.strata import StratifiedWindows
from teacher.data.text import LyricTokenizer, TextStats
from teacher.vqvae.config import Bandwidth

log = logging.getLogger(__name__)

CACHE_MODES = ("none", "decoded")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SKIP_REASONS = ("unreadable", "corrupt", "empty", "non_finite", "silent", "too_short")


class DataError(ValueError):
    """The data cannot be used for training (e.g. no usable audio); raised before training."""


@dataclass(frozen=True)
class DataConfig:
    """Where the audio is and how crops are cut.

    ``sample_length`` is the crop in samples at ``sample_rate`` (the model rate).
    ``aug_blend``: stereo becomes mono by a random blend ``w·L + (1 − w)·R``, ``w ~ U[0, 1)``
    (Jukebox ``audio_preprocess``); off, ``w = 0.5``. Files with more than two channels are
    averaged. ``min_duration_s`` (``None``: one crop) skips shorter files; files whose RMS
    is below ``silence_threshold`` are skipped as silent.

    ``cache="decoded"`` (the default) decodes each file once at ``sample_rate`` into a ``.npy``
    under ``cache_dir`` and memory-maps crops from it. ``benchmarks/bench_data.py`` measured
    it 4-8x (WAV) and 6-38x (FLAC) faster per item than ``cache="none"`` (seek, read only the
    frames a crop needs, soxr; no disk), and 100-800x faster than decoding the whole file per
    item, on 44.1 kHz stereo read at 22.05 kHz with crops of 0.74-12 s, one thread. The cache
    costs ``4 · channels · sample_rate`` bytes per second of audio (~10 MB/min at 22.05 kHz
    stereo) and one decode of every file at scan time; use ``"none"`` when disk is short.
    ``cache_dir=None`` uses ``$XDG_CACHE_HOME/fastjukebox/decoded`` (``~/.cache/...``); cache
    files are keyed by path, size, mtime and rate, so a changed file is decoded again.

    ``seed`` fixes the crops: item ``i`` of epoch ``e`` is the same crop on any machine.
    """

    root: str
    metadata: str | None = None
    sample_rate: int = 22050
    sample_length: int = 16384
    aug_blend: bool = True
    labels: LabelConfig = field(default_factory=LabelConfig)
    min_duration_s: float | None = None
    silence_threshold: float = 1e-4
    cache: str = "decoded"
    cache_dir: str | None = None
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS
    seed: int = 0

    @property
    def crop_seconds(self) -> float:
        return self.sample_length / self.sample_rate

    @property
    def min_length(self) -> int:
        """Shortest usable file, in samples at ``sample_rate`` (at least one crop)."""
        if self.min_duration_s is None:
            return self.sample_length
        return max(self.sample_length, math.ceil(self.min_duration_s * self.sample_rate))

    def resolved_cache_dir(self) -> str:
        """``cache_dir`` or the default under ``$XDG_CACHE_HOME`` (``~/.cache``)."""
        if self.cache_dir:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "fastjukebox", "decoded")

    def validate(self) -> DataConfig:
        """Raise :class:`~teacher.config.ConfigError` on a bad field; return ``self``."""
        if self.sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.sample_length <= 0:
            raise ConfigError(f"sample_length must be positive, got {self.sample_length}")
        if self.min_duration_s is not None and self.min_duration_s < self.crop_seconds - 1e-9:
            raise ConfigError(
                f"min_duration_s={self.min_duration_s} is shorter than one crop "
                f"({self.sample_length} samples = {self.crop_seconds:.3f} s)"
            )
        if self.silence_threshold < 0:
            raise ConfigError(f"silence_threshold must be >= 0, got {self.silence_threshold}")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if not self.extensions:
            raise ConfigError("extensions must not be empty")
        self.labels.validate()
        return self


# ---------------------------------------------------------------------------------------------
# metadata


@dataclass(frozen=True)
class TrackMeta:
    """One metadata row. ``words``: ``({"word", "start", "end"}, ...)`` or ``None``."""

    artist: str | None = None
    genre: tuple[str, ...] = ()
    lyrics: str = ""
    words: tuple[dict[str, Any], ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Metadata:
    """Rows of a metadata file keyed by normalised relative path; ``bad_rows`` were skipped."""

    path: str | None = None
    rows: dict[str, TrackMeta] = field(default_factory=dict)
    bad_rows: int = 0


class _BadRow(ValueError):
    pass


def _norm_key(file: str, root: str) -> str:
    """Relative path with ``/`` separators (absolute paths under ``root`` made relative)."""
    if os.path.isabs(file):
        rel = os.path.relpath(file, root)
        file = file if rel.startswith("..") else rel
    return os.path.normpath(file).replace(os.sep, "/")


def _opt_str(row: Mapping[str, Any], key: str) -> str | None:
    v = row.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise _BadRow(f"'{key}' must be a string, got {type(v).__name__}")
    return v


def _parse_genre(v: Any, csv_row: bool) -> tuple[str, ...]:
    if v is None or v == "":
        return ()
    if isinstance(v, str):
        parts = v.split("|") if csv_row else [v]
    elif isinstance(v, list) and all(isinstance(g, str) for g in v):
        parts = v
    else:
        raise _BadRow(f"'genre' must be a string or a list of strings, got {v!r}")
    return tuple(g.strip() for g in parts if g.strip())


def _parse_words(v: Any) -> tuple[dict[str, Any], ...] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise _BadRow(f"'words' is not valid JSON: {e}") from e
    if not isinstance(v, list):
        raise _BadRow("'words' must be a list of {word, start, end}")
    words = []
    for i, w in enumerate(v):
        if not isinstance(w, dict) or not isinstance(w.get("word"), str):
            raise _BadRow(f"words[{i}] must be an object with a string 'word'")
        try:
            start, end = float(w["start"]), float(w["end"])
        except (KeyError, TypeError, ValueError) as e:
            raise _BadRow(f"words[{i}] needs numeric 'start' and 'end'") from e
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise _BadRow(f"words[{i}] has bad times start={start}, end={end}")
        words.append({"word": w["word"], "start": start, "end": end})
    return tuple(words)


def _parse_row(row: Any, root: str, csv_row: bool) -> tuple[str, TrackMeta]:
    if not isinstance(row, dict):
        raise _BadRow(f"expected an object, got {type(row).__name__}")
    if None in row:  # csv.DictReader puts surplus cells under the key None
        raise _BadRow("more cells than header columns")
    file = _opt_str(row, "file")
    if not file:
        raise _BadRow("missing 'file'")
    lyrics = _opt_str(row, "lyrics") or ""
    known = {"file", "artist", "genre", "lyrics", "words"}
    meta = TrackMeta(
        artist=_opt_str(row, "artist"),
        genre=_parse_genre(row.get("genre"), csv_row),
        lyrics=lyrics,
        words=_parse_words(row.get("words")),
        # an empty CSV cell is a missing field, as an absent key is in JSONL
        info={k: v for k, v in row.items() if k not in known and not (csv_row and v in ("", None))},
    )
    return _norm_key(file, root), meta


def find_metadata(root: str) -> str | None:
    """``metadata.jsonl`` or else ``metadata.csv`` in ``root``, if present."""
    found = [os.path.join(root, n) for n in METADATA_FILES if os.path.isfile(os.path.join(root, n))]
    if len(found) > 1:
        log.warning("both %s exist; using %s", " and ".join(found), found[0])
    return found[0] if found else None


def load_metadata(path: str, root: str) -> Metadata:
    """Parse a ``.jsonl`` (or ``.json`` lines) or ``.csv`` metadata file; ``root`` resolves paths.

    Each bad row is skipped with one warning (file and line) and counted in ``bad_rows``; a
    later duplicate row for the same file is a bad row too.
    """
    meta = Metadata(path=path)
    is_csv = path.lower().endswith(".csv")

    def add(row: Any, where: str) -> None:
        try:
            key, track = _parse_row(row, root, is_csv)
            if key in meta.rows:
                raise _BadRow(f"duplicate row for {key!r} (the first one is kept)")
        except _BadRow as e:
            log.warning("metadata %s: bad row skipped: %s", where, e)
            meta.bad_rows += 1
            return
        meta.rows[key] = track

    try:
        if is_csv:
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or "file" not in reader.fieldnames:
                    raise DataError(f"{path}: the CSV header has no 'file' column")
                for row in reader:
                    add(row, f"{path}:{reader.line_num}")
        else:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        log.warning(
                            "metadata %s:%d: bad row skipped: invalid JSON (%s)", path, n, e
                        )
                        meta.bad_rows += 1
                        continue
                    add(row, f"{path}:{n}")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read metadata {path}: {e}") from e
    return meta


# ---------------------------------------------------------------------------------------------
# scanning


@dataclass(frozen=True)
class FileEntry:
    """A usable audio file. ``length`` is in samples at the model rate; ``rms`` of the file."""

    path: str
    rel: str
    sample_rate: int
    channels: int
    frames: int
    length: int
    rms: float
    meta: TrackMeta = field(default_factory=TrackMeta)
    has_metadata: bool = False
    cache_path: str | None = None

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    @property
    def audio_info(self) -> AudioInfo:
        return AudioInfo(self.sample_rate, self.channels, self.frames, self.duration)


@dataclass
class ScanResult:
    """What :func:`scan_audio` found: usable files, skip reasons, vocabulary and counts."""

    root: str
    sample_rate: int
    files: list[FileEntry]
    skipped: Counter[str]
    vocab: Vocab
    found: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    resampled: int = 0
    downmixed: int = 0
    metadata_path: str | None = None
    metadata_rows: int = 0
    bad_rows: int = 0
    unmatched_rows: int = 0
    no_metadata: int = 0
    text: TextStats = field(default_factory=TextStats)

    @property
    def total_length(self) -> int:
        """Samples of usable audio at the model rate."""
        return sum(f.length for f in self.files)

    def summary(self) -> str:
        """A few lines for the run summary: files, hours, skips, metadata, lyrics."""
        secs = self.total_length / self.sample_rate
        lines = [
            f"audio: {len(self.files)} of {self.found} files usable in {self.root} "
            f"({_hms(secs)} at {self.sample_rate} Hz)"
        ]
        if self.skipped:
            lines.append("skipped: " + _reasons(self.skipped))
        if self.resampled or self.downmixed:
            lines.append(
                f"resampled from another rate: {self.resampled}; "
                f"downmixed from >2 channels: {self.downmixed}"
            )
        if self.metadata_path:
            lines.append(
                f"metadata {self.metadata_path}: {self.metadata_rows} rows, "
                f"{self.bad_rows} bad, {self.unmatched_rows} without a usable file; "
                f"{self.no_metadata} files without metadata"
            )
        else:
            lines.append("metadata: none (artist/genre unknown, no lyrics)")
        lines.append(
            f"vocab ({self.vocab.version}): {len(self.vocab.artists) - 1} artists, "
            f"{len(self.vocab.genres) - 1} genres; {self.text.summary()}"
        )
        return "\n".join(lines)


def _hms(secs: float) -> str:
    if secs < 60:
        return f"{secs:.1f} s"
    if secs < 3600:
        return f"{secs / 60:.1f} min"
    return f"{int(secs // 3600)} h {int(secs % 3600 // 60):02d} min"


def _reasons(c: Counter[str]) -> str:
    return ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in sorted(c.items()))


def find_audio_files(root: str, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[str]:
    """Audio files under ``root`` (recursive, extensions case-insensitive), sorted.

    Hidden folders (``.name``) are not entered.
    """
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    out, seen = [], set()
    for d, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        out.extend(os.path.join(d, f) for f in files if f.lower().endswith(exts))
    return sorted(out, key=lambda p: os.path.relpath(p, root))


def _cache_path(cfg: DataConfig, path: str) -> str:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{cfg.sample_rate}"
    name = hashlib.sha1(key.encode()).hexdigest()[:20]
    return os.path.join(cfg.resolved_cache_dir(), name[:2], name + ".npy")


def _stream_rms(path: str) -> tuple[AudioInfo, float, int]:
    """Native-rate RMS over all channels, decoding block by block; also the frames decoded."""
    info, blocks = iter_blocks(path)
    ss, n = 0.0, 0
    for b in blocks:
        ss += float(np.square(b, dtype=np.float64).sum())
        n += b.shape[1]
    if n != info.frames:  # a truncated file, or a header that guessed (MP3): trust the decode
        log.debug("%s: header says %d frames, decoded %d", path, info.frames, n)
        info = dataclasses.replace(info, frames=n, duration=n / info.sample_rate)
    return info, math.sqrt(ss / max(1, n * info.channels)), n


def _decode_to_cache(cfg: DataConfig, path: str, cache: str) -> tuple[AudioInfo, float, int]:
    """Decode at the model rate (>2 channels averaged) into ``cache`` unless silent/empty.

    Returns ``(info, rms, length)``; the RMS is at the model rate. A cache file already there
    (same path, size, mtime, rate) is reused without decoding.
    """
    info = probe(path)
    if os.path.exists(cache):
        try:
            x = np.load(cache, mmap_mode="r")
            ss = sum(
                float(np.square(x[:, i : i + (1 << 20)], dtype=np.float64).sum())
                for i in range(0, x.shape[1], 1 << 20)
            )
            if math.isfinite(ss):
                return info, math.sqrt(ss / max(1, x.size)), int(x.shape[1])
            # written by an older version that cached NaN/Inf audio: decode (and refuse) again
            del x
            os.unlink(cache)
        except (OSError, ValueError) as e:
            log.warning("cache file %s unreadable (%s); decoding %s again", cache, e, path)
    x = load_audio(path, cfg.sample_rate)
    if x.shape[0] > 2:
        x = x.mean(axis=0, keepdims=True)
    rms = math.sqrt(float(np.square(x, dtype=np.float64).mean())) if x.size else 0.0
    if x.shape[1] and rms >= cfg.silence_threshold and x.shape[1] >= cfg.min_length:
        tmp = None
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache), suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(x, dtype=np.float32))
            os.replace(tmp, cache)  # atomic: concurrent ranks/workers never see half a file
        except OSError as e:
            raise DataError(
                f"cannot write the decoded cache {cache}: {e}. Set DataConfig.cache_dir to a "
                "writable folder with space, or use cache='none'"
            ) from e
        finally:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
    return info, rms, int(x.shape[1])


def scan_audio(cfg: DataConfig) -> ScanResult:
    """Find, check and describe the audio under ``cfg.root``.

    Every file with one of ``cfg.extensions`` is probed and decoded once (streamed RMS with
    ``cache="none"``; decoded into the cache with ``cache="decoded"``). Unusable files are
    skipped with one warning each and counted by reason: ``unreadable``, ``corrupt``,
    ``empty`` (no samples), ``non_finite`` (NaN or Inf samples; never cached), ``silent``
    (RMS < ``silence_threshold``), ``too_short`` (less than ``cfg.min_length`` samples at the
    model rate). Other sample rates are resampled and more than two channels averaged;
    neither is skipped. Raises :class:`DataError` when the folder is missing or nothing is
    usable, listing the skip reasons.

    With several processes, scan on the main process first (e.g. inside accelerate's
    ``main_process_first()``) so the others find the decoded cache instead of decoding too;
    cache files are written atomically, so concurrent scans are safe, only slower.
    """
    cfg.validate()
    root = os.path.abspath(cfg.root)
    if not os.path.isdir(root):
        raise DataError(f"audio folder {cfg.root!r} does not exist or is not a folder")
    meta_path = cfg.metadata or find_metadata(root)
    if cfg.metadata and not os.path.isfile(cfg.metadata):
        raise DataError(f"metadata file {cfg.metadata!r} does not exist")
    metadata = load_metadata(meta_path, root) if meta_path else Metadata()

    paths = find_audio_files(root, cfg.extensions)
    files: list[FileEntry] = []
    skipped: Counter[str] = Counter()
    skipped_files: list[tuple[str, str]] = []
    resampled = downmixed = 0

    def skip(rel: str, reason: str, detail: str) -> None:
        log.warning("skipping %s: %s (%s)", rel, reason.replace("_", " "), detail)
        skipped[reason] += 1
        skipped_files.append((rel, reason))

    for path in paths:
        rel = _norm_key(os.path.relpath(path, root), root)
        cache = None
        try:
            if cfg.cache == "decoded":
                cache = _cache_path(cfg, path)
                info, rms, length = _decode_to_cache(cfg, path, cache)
            else:
                info, rms, frames = _stream_rms(path)
                length = info.length_at(cfg.sample_rate) if frames else 0
        except AudioError as e:
            skip(rel, e.reason, e.detail or "cannot decode")
            continue
        except OSError as e:
            skip(rel, "unreadable", str(e))
            continue
        if length == 0:
            skip(rel, "empty", "no samples")
            continue
        if rms < cfg.silence_threshold:
            skip(rel, "silent", f"RMS {rms:.2e} < {cfg.silence_threshold:.0e}")
            continue
        if length < cfg.min_length:
            skip(
                rel,
                "too_short",
                f"{length / cfg.sample_rate:.2f} s < {cfg.min_length / cfg.sample_rate:.2f} s",
            )
            continue
        if info.sample_rate != cfg.sample_rate:
            resampled += 1
        if info.channels > 2:
            downmixed += 1
            log.info("%s: %d channels, averaged to mono", rel, info.channels)
        track = metadata.rows.get(rel)
        files.append(
            FileEntry(
                path=path,
                rel=rel,
                sample_rate=info.sample_rate,
                channels=info.channels,
                frames=info.frames,
                length=length,
                rms=rms,
                meta=track or TrackMeta(),
                has_metadata=track is not None,
                cache_path=cache,
            )
        )

    used = {f.rel for f in files}
    unmatched = [k for k in metadata.rows if k not in used]
    if unmatched:
        log.warning(
            "%d metadata rows name no usable audio file, e.g. %s",
            len(unmatched),
            ", ".join(unmatched[:3]),
        )
    version = cfg.labels.lyric_version
    vocab = Vocab.build(
        (f.meta.artist for f in files), (list(f.meta.genre) for f in files), version
    )
    tok = LyricTokenizer(version)
    for f in files:
        tok.clean(f.meta.lyrics)
    result = ScanResult(
        root=root,
        sample_rate=cfg.sample_rate,
        files=files,
        skipped=skipped,
        vocab=vocab,
        found=len(paths),
        skipped_files=skipped_files,
        resampled=resampled,
        downmixed=downmixed,
        metadata_path=meta_path,
        metadata_rows=len(metadata.rows) + metadata.bad_rows,
        bad_rows=metadata.bad_rows,
        unmatched_rows=len(unmatched),
        no_metadata=sum(not f.has_metadata for f in files),
        text=tok.stats,
    )
    if not files:
        exts = "/".join(cfg.extensions)
        if not paths:
            raise DataError(f"no audio files ({exts}) found under {root}")
        raise DataError(
            f"no usable audio under {root}: all {len(paths)} {exts} files were skipped "
            f"({_reasons(skipped)}); min length {cfg.min_length / cfg.sample_rate:.2f} s, "
            f"silence threshold RMS {cfg.silence_threshold:g}"
        )
    log.info("%s", result.summary())
    return result


# ---------------------------------------------------------------------------------------------
# dataset


class AudioDataset(StratifiedWindows, Dataset):
    """Labelled mono crops of the scanned files.

    Item ``i`` → ``dict(audio=float32 Tensor[1, sample_length], labels=int64
    Tensor[4 + max_genres + n_tokens], index=i, file_index=int, offset=int)``.

    Sampling: one epoch has ``total_length // sample_length`` items (one pass over the audio,
    as in Jukebox). The concatenated timeline of all files is cut into that many equal strata;
    item ``i`` draws its crop's *middle* uniformly inside stratum ``i``, and the crop is
    shifted to lie inside the file holding that middle. So each file is picked with
    probability proportional to its length, an epoch covers the data evenly (stratified, like
    Jukebox's ``item * sample_length`` plus a random shift), and the DataLoader's shuffle
    decides the order. The draw uses ``numpy.random.default_rng([seed, epoch, i])``:
    reproducible on any worker or rank; call :meth:`set_epoch` each epoch (with persistent
    workers, before the epoch's iterator is created). The sampling is
    :class:`~teacher.data.strata.StratifiedWindows`', shared with the code windows.
    """

    def __init__(
        self, cfg: DataConfig, scan: ScanResult | None = None, vocab: Vocab | None = None
    ) -> None:
        self.cfg = cfg.validate()
        self.scan = scan if scan is not None else scan_audio(cfg)
        if not self.scan.files:
            raise DataError(f"no usable audio files in {cfg.root}")
        self.files = self.scan.files
        self.vocab = vocab if vocab is not None else self.scan.vocab
        self.labeller = Labeller(cfg.labels, self.vocab)
        self.epoch = 0
        lab = cfg.labels
        self._artist = [self.vocab.artist_id(f.meta.artist) for f in self.files]
        self._genres: list[list[int]] = []
        for f in self.files:
            ids = self.vocab.genre_ids(list(f.meta.genre))
            if len(ids) > lab.max_genres:
                log.warning(
                    "%s: %d genre ids, keeping the first max_genres=%d",
                    f.rel,
                    len(ids),
                    lab.max_genres,
                )
                ids = ids[: lab.max_genres]
            self._genres.append(ids)
        self._set_lyrics([(f.meta.lyrics, f.meta.words) for f in self.files])
        self._lengths = np.array([f.length for f in self.files], dtype=np.int64)
        self._ends = np.cumsum(self._lengths)

    @property
    def total_length(self) -> int:
        return int(self._ends[-1])

    def __len__(self) -> int:
        return max(1, self.total_length // self.cfg.sample_length)

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def locate(self, index: int, u: float) -> tuple[int, int]:
        """``(file_index, offset)`` of item ``index`` for the uniform draw ``u ∈ [0, 1)``."""
        return self._centred_window(index, u, self.cfg.sample_length)

    def _item_at(self, k: int, offset: int, rng: np.random.Generator) -> dict[str, Any]:
        blend = float(rng.random()) if self.cfg.aug_blend else 0.5
        return self._crop(k, offset, blend)

    def crop(self, file_index: int, offset: int) -> dict[str, Any]:
        """Deterministic crop at ``offset`` samples of file ``file_index`` (blend 0.5).

        For evaluation; the same keys as an item, with ``index = -1``.
        """
        if not 0 <= file_index < len(self.files):
            raise IndexError(f"file_index {file_index} out of range for {len(self.files)} files")
        if not 0 <= offset <= self._lengths[file_index] - self.cfg.sample_length:
            raise ValueError(
                f"offset {offset} outside [0, {self._lengths[file_index] - self.cfg.sample_length}]"
                f" for {self.files[file_index].rel}"
            )
        out = self._crop(file_index, offset, 0.5)
        out["index"] = -1
        return out

    def read(self, file_index: int, offset: int) -> np.ndarray:
        """Raw crop float32 ``[C, sample_length]`` (C ≤ 2 with the decoded cache)."""
        f, length = self.files[file_index], self.cfg.sample_length
        if self.cfg.cache == "decoded" and f.cache_path:
            x = np.load(f.cache_path, mmap_mode="r")
            return np.array(x[:, offset : offset + length], dtype=np.float32)
        return read_crop_samples(f.path, offset, length, self.cfg.sample_rate, info=f.audio_info)

    def _crop(self, fi: int, offset: int, blend: float) -> dict[str, Any]:
        x = self.read(fi, offset)
        if x.shape[0] == 2:  # Jukebox audio_preprocess: mix·L + (1 − mix)·R
            mono = blend * x[0] + (1.0 - blend) * x[1]
        else:
            mono = x.mean(axis=0)
        y, _ = self._label(
            fi, self.files[fi].length, offset, self.cfg.sample_length, self.cfg.sample_rate
        )
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))[None],
            "labels": torch.from_numpy(y),
            "file_index": fi,
            "offset": offset,
        }

    def lyric_indices(self, file_index: int, offset: int) -> list[int]:
        """Positions in the file's full lyric tokens of a crop's window (-1 = padding)."""
        f, length = self.files[file_index], self.cfg.sample_length
        return self._label(file_index, f.length, offset, length, self.cfg.sample_rate)[1]


# ---------------------------------------------------------------------------------------------
# bandwidth


def compute_bandwidth(dataset: AudioDataset, n_items: int = 64) -> Bandwidth:
    """Jukebox's ``calculate_bandwidth`` over ``n_items`` crops of ``dataset``.

    ``l2`` = variance of all samples, ``l1`` = mean ``|x|``, ``spec`` = mean over items of
    ``‖|STFT(x)|‖_F`` (n_fft 2048, hop 256, Hann window 1536, centred, reflect padding),
    accumulated in float64. Items are spread evenly over the epoch-0 indices; beyond one epoch
    the next epochs' crops are used, so the result is deterministic.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    n = len(dataset)
    step = max(1, n // n_items)
    window = torch.hann_window(1536, dtype=torch.float64)
    total = total_sq = l1 = spec = 0.0
    count = 0
    for k in range(n_items):
        j = k * step
        x = dataset.item(j % n, j // n)["audio"].reshape(-1).to(torch.float64)
        total += float(x.sum())
        total_sq += float((x * x).sum())
        l1 += float(x.abs().sum())
        count += x.numel()
        s = torch.stft(
            x,
            n_fft=2048,
            hop_length=256,
            win_length=1536,
            window=window,
            center=True,
            pad_mode="reflect" if x.numel() > 1024 else "constant",
            return_complex=True,
        )
        spec += float(torch.linalg.norm(s.abs()))
    mean = total / count
    bw = Bandwidth(l1=l1 / count, l2=total_sq / count - mean**2, spec=spec / n_items)
    log.info("bandwidth over %d items: %s", n_items, bw)
    return bw
