"""The Bach chorales recipe: files, real lyrics, word timings inside the audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("music21")
pytest.importorskip("pretty_midi")

from teacher.data.chorales import (
    ENSEMBLES,
    Syllable,
    chorale_entries,
    fluidsynth_available,
    join_words,
    load_chorale,
    render_chorale,
    write_chorales,
)

SR = 16000


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("chorales")
    summary = write_chorales(out, sample_rate=SR, limit=2, progress=False, renderer="additive")
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return out, summary, rows


def test_entries_are_distinct_files_in_riemenschneider_order() -> None:
    entries = chorale_entries()
    assert len(entries) == len({e.path for e in entries}) >= 340
    assert entries[0].number == 1 and entries[0].path == "bach/bwv269"
    assert entries[0].title == "Aus meines Herzens Grunde"


def test_files_and_metadata_written(written) -> None:
    out, summary, rows = written
    assert summary.n_written == 2 == len(rows) and summary.n_skipped == 0
    assert summary.renderer == "additive"
    for row in rows:
        for key in ("file", "artist", "genre", "lyrics", "words"):
            assert key in row
        assert row["genre"] == "chorale" and row["composer"] == "J.S. Bach"
        assert row["artist"] in {e.artist for e in ENSEMBLES}
        info = sf.info(out / row["file"])
        assert info.samplerate == SR and info.channels == 1
        assert abs(info.frames / SR - row["seconds"]) < 1e-3
        assert (out / row["midi"]).stat().st_size > 0
    assert rows[0]["artist"] != rows[1]["artist"]  # ensembles rotate


def test_real_lyrics_with_monotone_word_timings(written) -> None:
    out, _, rows = written
    first = rows[0]
    # BWV 269, verse 1, including the words sung on the repeat
    assert first["lyrics"].startswith("Aus meines Herzens Grunde\nsag' ich dir Lob und Dank,")
    assert "in dieser Morgenstunde" in first["lyrics"]
    for row in rows:
        assert row["lyrics"].strip()
        words = row["words"]
        assert len(words) >= 10
        starts = np.array([w["start"] for w in words])
        ends = np.array([w["end"] for w in words])
        assert (ends > starts).all() and (starts[1:] >= ends[:-1] - 1e-6).all()
        assert starts[0] >= 0 and ends[-1] <= row["seconds"]
        joined = " ".join(row["lyrics"].split())
        assert all(w["word"] in joined for w in words)
    # 100 qpm default: "Aus" (a quarter) then "mei-nes" (a half and a quarter)
    assert first["words"][0] == {"word": "Aus", "start": 0.0, "end": 0.6}
    assert first["words"][1] == {"word": "meines", "start": 0.6, "end": 2.4}


def test_audio_is_normalised_and_not_silent(written) -> None:
    out, _, rows = written
    for row in rows:
        audio, _ = sf.read(out / row["file"], dtype="float32")
        assert np.isfinite(audio).all() and 0.8 < np.abs(audio).max() <= 0.91
        mid = audio[: int(row["words"][-1]["end"] * SR)]
        assert np.sqrt(np.mean(mid**2)) > 0.02


def test_join_words_by_syllabic() -> None:
    syl = [
        Syllable("Aus", "single", 0.0, 0.6),
        Syllable("mei", "begin", 0.6, 1.8),
        Syllable("nes", "end", 1.8, 2.4, fermata=True),
        Syllable("Eh", "begin", 2.4, 3.0),
        Syllable("ren,", "single", 3.0, 3.6),  # a corpus slip: "single" after "begin"
        Syllable("o", "single", 3.6, 4.2),
    ]
    lyrics, words = join_words(syl)
    assert lyrics == "Aus meines\nEhren, o"
    assert [w["word"] for w in words] == ["Aus", "meines", "Ehren", "o"]
    assert words[1] == {"word": "meines", "start": 0.6, "end": 2.4}


@pytest.mark.parametrize("renderer", ["pretty_midi", "fluidsynth"])
def test_other_renderers(renderer: str) -> None:
    if renderer == "fluidsynth" and not fluidsynth_available():
        pytest.skip("pyfluidsynth / libfluidsynth not installed")
    entry = chorale_entries()[1]
    chorale = load_chorale(entry, ENSEMBLES[0], sing=False, qpm=120.0)
    audio = render_chorale(chorale, ENSEMBLES[0], SR, renderer)
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert len(audio) >= chorale.seconds * SR and np.abs(audio).max() <= 0.91
    assert not chorale.sung and len(chorale.pm.instruments) == 4  # soprano played, not sung
