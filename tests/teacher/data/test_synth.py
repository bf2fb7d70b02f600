"""The generated dataset: determinism, shapes, metadata, audible vowels, timbres, tempi, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from teacher.config import ConfigError
from teacher.data.synth import (
    ARTISTS,
    GENRES,
    LEXICON,
    VOWELS,
    SungNote,
    SynthConfig,
    assign_labels,
    band_energy,
    compose_song,
    formant_response,
    render_song,
    render_stems,
    sing,
    spectral_centroid,
    syllable_phonetics,
    word_vowel,
    write_synth_dataset,
)

SR = 22050
REQUIRED = {"file": str, "artist": str, "genre": str, "lyrics": str, "words": list}


@pytest.fixture(scope="module")
def cfg() -> SynthConfig:
    return SynthConfig(n_songs=4, seconds=5.0, sample_rate=SR, seed=3)


def test_song_shape_range_and_dtype(cfg: SynthConfig) -> None:
    audio, meta = render_song(cfg, 0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == round(cfg.seconds * SR)
    assert np.isfinite(audio).all()
    assert 0.85 <= np.abs(audio).max() <= cfg.peak + 1e-6
    assert meta["sample_rate"] == SR and meta["seconds"] == cfg.seconds


def test_deterministic_for_a_seed_and_different_for_another(cfg: SynthConfig) -> None:
    a1, m1 = render_song(cfg, 1)
    a2, m2 = render_song(cfg, 1)
    assert np.array_equal(a1, a2) and a1.tobytes() == a2.tobytes()
    assert json.dumps(m1) == json.dumps(m2)
    b, mb = render_song(SynthConfig(n_songs=4, seconds=5.0, sample_rate=SR, seed=4), 1)
    assert not np.array_equal(a1, b)
    assert mb["words"] != m1["words"] or mb["tempo"] != m1["tempo"]


def test_song_does_not_depend_on_n_songs(cfg: SynthConfig) -> None:
    a, _ = render_song(cfg, 2)
    b, _ = render_song(SynthConfig(n_songs=50, seconds=5.0, sample_rate=SR, seed=3), 2)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("sample_rate", [8000, 16000, 44100])
def test_other_sample_rates(sample_rate: int) -> None:
    audio, meta = render_song(SynthConfig(seconds=3.0, sample_rate=sample_rate), 3)
    assert len(audio) == 3 * sample_rate and np.isfinite(audio).all()
    assert np.abs(audio).max() <= 0.9 + 1e-6
    assert meta["sample_rate"] == sample_rate


def test_metadata_fields(cfg: SynthConfig) -> None:
    _, meta = render_song(cfg, 0)
    for key, typ in REQUIRED.items():
        assert isinstance(meta[key], typ), key
    assert meta["artist"] in ARTISTS and meta["genre"] in GENRES
    assert meta["file"] == "audio/synth_00000.wav"
    for key in ("key", "tempo", "meter", "seed", "title", "chords", "melody"):
        assert key in meta
    assert all(set(w) == {"word", "start", "end"} for w in meta["words"])
    json.dumps(meta)  # JSON-serialisable


@pytest.mark.parametrize("index", range(8))
def test_words_one_per_melody_note_monotone_and_inside(cfg: SynthConfig, index: int) -> None:
    song = compose_song(cfg, index)
    _, meta = render_song(cfg, index)
    words = meta["words"]
    assert len(words) == len(song.melody) > 0
    assert [w["word"] for w in words] == meta["lyrics"].split()
    starts = np.array([w["start"] for w in words])
    ends = np.array([w["end"] for w in words])
    assert (ends > starts).all()
    assert (starts[1:] >= ends[:-1]).all()  # monotone, no overlap
    assert starts[0] >= 0 and ends[-1] <= cfg.seconds
    assert [m[0] for m in meta["melody"]] == list(starts)
    lexicon = {w.text for w in LEXICON}
    assert {w["word"] for w in words} <= lexicon


def test_labels_cover_every_pair() -> None:
    cfg = SynthConfig()
    pairs = {assign_labels(cfg, i) for i in range(len(ARTISTS) * len(GENRES))}
    assert len(pairs) == len(ARTISTS) * len(GENRES)
    # not coprime: 4 artists x 2 genres still covers all 8 pairs in 8 songs
    cfg = SynthConfig(artists=tuple(ARTISTS)[:4], genres=tuple(GENRES)[:2])
    assert len({assign_labels(cfg, i) for i in range(8)}) == 8


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        SynthConfig(seconds=1.0)
    with pytest.raises(ConfigError):
        SynthConfig(artists=("Nobody",))
    with pytest.raises(ConfigError):
        SynthConfig(peak=1.5)
    with pytest.raises(ConfigError):
        SynthConfig(seed=-1)


def test_phonetics() -> None:
    assert syllable_phonetics("Herz") == ("e", "h")
    assert syllable_phonetics("Schmer") == ("e", "sch")
    assert syllable_phonetics("Aus") == ("a", "")
    assert syllable_phonetics("lieb") == ("i", "l")
    assert syllable_phonetics("Glü") == ("i", "g")
    assert word_vowel("moon") == "u" and word_vowel("see") == "i"
    assert {w.vowel for w in LEXICON} == set(VOWELS)


# --- the lyrics are audible: vowels shape the spectrum by their formants -------------------


def _f2_over_f1(x: np.ndarray, scale: float = 1.0) -> float:
    """Energy near i's F2/F3 (1.8-3.2 kHz) over energy near a's F1/F2 (0.5-1.3 kHz)."""
    return band_energy(x, SR, 1800 * scale, 3200 * scale) / band_energy(
        x, SR, 500 * scale, 1300 * scale
    )


def test_formant_response_follows_the_vowel() -> None:
    f = np.array([730.0, 2290.0])
    a, i = formant_response(f, "a"), formant_response(f, "i")
    assert a[0] > 3 * i[0]  # "a" has F1 at 730 Hz
    assert i[1] > 3 * a[1]  # "i" has F2 at 2290 Hz


@pytest.mark.parametrize("pitch", [55.0, 62.0, 69.0])
def test_sung_vowels_differ_in_formant_bands(pitch: float) -> None:
    singer = ARTISTS["Cobalt Strings"].singer
    out = {}
    for v in VOWELS:
        note = SungNote(0.0, 0.8, pitch, 0.9, v, v, "")
        out[v] = sing([note], SR, SR, singer, seed=0)[: int(0.8 * SR)]
    s = singer.formant_scale
    assert _f2_over_f1(out["i"], s) > 5 * _f2_over_f1(out["a"], s)
    assert _f2_over_f1(out["e"], s) > 2 * _f2_over_f1(out["o"], s)
    lo = {v: band_energy(out[v], SR, 550 * s, 1000 * s) for v in VOWELS}
    assert lo["a"] > 2 * lo["i"]


def test_song_vowels_are_audible_in_the_vocal_stem() -> None:
    """Collect every "a" word and every "i" word of a few songs from the vocal stem."""
    cfg = SynthConfig(seconds=8.0, sample_rate=SR)
    ratio = {"a": [], "i": []}
    for index in range(4):
        song = compose_song(cfg, index, artist="Cobalt Strings")
        vocals = render_stems(song, SR)["vocals"]
        for n in song.melody:
            v = word_vowel(n.text)
            if v in ratio and n.end - n.start > 0.15:
                seg = vocals[int((n.start + 0.08) * SR) : int(n.end * SR)]  # skip the consonant
                ratio[v].append(_f2_over_f1(seg, ARTISTS["Cobalt Strings"].singer.formant_scale))
    assert len(ratio["a"]) >= 3 and len(ratio["i"]) >= 3
    assert np.median(ratio["i"]) > 5 * np.median(ratio["a"])
    assert min(ratio["i"]) > max(ratio["a"])  # every "i" is brighter than every "a"


# --- artists are timbres, genres are styles ------------------------------------------------


def test_artists_differ_in_timbre() -> None:
    """Same compositions, each artist: the pitched stems' spectral centroids separate."""
    cfg = SynthConfig(seconds=5.0, sample_rate=SR)
    centroid = {}
    for artist in ARTISTS:
        values = []
        for genre in GENRES:
            st = render_stems(compose_song(cfg, 0, artist, genre), SR)
            values.append(spectral_centroid(st["vocals"] + st["chords"] + st["bass"], SR))
        centroid[artist] = float(np.mean(values))
    ordered = sorted(centroid.values())
    steps = np.array(ordered[1:]) / np.array(ordered[:-1])
    assert steps.min() > 1.04, centroid  # every pair at least 4% apart
    assert min(centroid, key=centroid.get) == "Moss Choir"  # organ + dark bass voice
    assert max(centroid, key=centroid.get) == "Pixel Kid"  # pulse waves + buzzy voice


def _onset_envelope(x: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Spectral flux: the summed rise of log-magnitude STFT bins, frame to frame (hop 256)."""
    x = x.astype(np.float64)
    n = (len(x) - n_fft) // hop
    frames = x[np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]] * np.hanning(n_fft)
    mag = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)))
    env = np.maximum(np.diff(mag, axis=0), 0.0).sum(1)
    return env - env.mean()


def _autocorr(env: np.ndarray, lag: float) -> float:
    lo, frac = int(lag), lag - int(lag)

    def at(k: int) -> float:
        return float(np.dot(env[:-k], env[k:]) / (len(env) - k))

    return (1 - frac) * at(lo) + frac * at(lo + 1)


def test_genres_differ_in_tempo_and_the_audio_has_that_beat() -> None:
    cfg = SynthConfig(seconds=8.0, sample_rate=SR)
    ranges = [GENRES[g].tempo for g in ("lullaby", "ballad", "march", "dance")]
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # disjoint, increasing
    for genre, spec in GENRES.items():
        for index in range(2):
            audio, meta = render_song(cfg, index, genre=genre)
            assert spec.tempo[0] <= meta["tempo"] <= spec.tempo[1]
            env = _onset_envelope(audio)
            beat = 60.0 / meta["tempo"] * SR / 256
            on = _autocorr(env, beat)
            off = max(_autocorr(env, 0.75 * beat), _autocorr(env, 1.25 * beat))
            assert on > 0 and on > 2 * off, genre  # periodic at the beat, not off the grid


def test_genres_differ_in_meter_and_density() -> None:
    cfg = SynthConfig(seconds=8.0, sample_rate=SR)
    rate = {}
    for genre in GENRES:
        notes = [len(compose_song(cfg, i, genre=genre).melody) for i in range(3)]
        rate[genre] = np.mean(notes) / cfg.seconds
    assert rate["lullaby"] < rate["march"] < rate["dance"]
    assert GENRES["lullaby"].meter == 3 and GENRES["march"].meter == 4


# --- writing a dataset ---------------------------------------------------------------------


def test_write_synth_dataset(tmp_path) -> None:
    cfg = SynthConfig(n_songs=3, seconds=3.0, sample_rate=16000, seed=7)
    summary = write_synth_dataset(tmp_path, cfg, progress=False)
    assert summary.n_songs == 3 and math.isclose(summary.audio_seconds, 9.0)
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for i, row in enumerate(rows):
        audio, sr = sf.read(tmp_path / row["file"], dtype="float32")
        assert sr == 16000 and len(audio) == 3 * 16000
        expected, meta = render_song(cfg, i)
        assert meta == row
        assert np.abs(audio - expected).max() < 2.0 / 2**15  # PCM_16 rounding
    first = (tmp_path / rows[0]["file"]).read_bytes()
    # rewriting is deterministic and a smaller run removes the stale files
    write_synth_dataset(
        tmp_path, SynthConfig(n_songs=2, seconds=3.0, sample_rate=16000, seed=7), False
    )
    assert (tmp_path / rows[0]["file"]).read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == [
        "synth_00000.wav",
        "synth_00001.wav",
    ]
    assert len((tmp_path / "metadata.jsonl").read_text().splitlines()) == 2
