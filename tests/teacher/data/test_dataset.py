"""Scanning folders, metadata, crops, labels and bandwidth of the teacher's audio dataset."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from teacher.config import ConfigError
from teacher.data.dataset import (
    AudioDataset,
    DataConfig,
    DataError,
    compute_bandwidth,
    load_metadata,
    scan_audio,
)
from teacher.data.labels import LabelConfig

SR = 16000
CROP = 4096


def _tone(sr: int, seconds: float, channels: int = 1, freq: float = 220.0, amp: float = 0.5):
    t = np.arange(int(sr * seconds)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def _cfg(root, **kw) -> DataConfig:
    kw.setdefault("cache", "none")
    kw.setdefault("cache_dir", str(root) + "_cache")
    return DataConfig(root=str(root), sample_rate=SR, sample_length=CROP, **kw)


@pytest.fixture
def folder(tmp_path):
    """Three good files (one in a subfolder, upper-case extension) and metadata."""
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", _tone(SR, 1.0, 2), SR)
    sf.write(root / "sub" / "b.FLAC", _tone(SR, 2.0, 1, freq=330), SR)
    sf.write(root / "c.ogg", _tone(SR, 1.5, 1, freq=500), SR)
    return root


@pytest.fixture(params=["none", "decoded"])
def cache(request):
    return request.param


def test_crops_shape_rate_and_labels(folder, cache):
    cfg = _cfg(folder, cache=cache, labels=LabelConfig(max_genres=3, n_tokens=8))
    ds = AudioDataset(cfg)
    assert [f.rel for f in ds.files] == ["a.wav", "c.ogg", "sub/b.FLAC"]
    assert len(ds) == (16000 + 24000 + 32000) // CROP
    item = ds[3]
    assert item["audio"].shape == (1, CROP) and item["audio"].dtype == torch.float32
    y = item["labels"]
    assert y.shape == (4 + 3 + 8,) and y.dtype == torch.int64
    f = ds.files[item["file_index"]]
    assert y[:3].tolist() == [f.length, item["offset"], CROP]
    assert y[3].item() == 0 and y[4:7].tolist() == [0, -1, -1]  # no metadata: unknown
    assert y[7:].tolist() == [0] * 8  # no lyrics: padding
    assert 0 <= item["offset"] <= f.length - CROP
    # deterministic crop equals the source samples (same rate: no resampling)
    c = ds.crop(2, 1000)
    src, _ = sf.read(folder / "sub" / "b.FLAC", dtype="float32")
    np.testing.assert_allclose(c["audio"][0].numpy(), src[1000 : 1000 + CROP], atol=1e-6)
    with pytest.raises(ValueError, match="offset"):
        ds.crop(0, 16000)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_crops_reproducible_from_seed_and_epoch(folder):
    a, b = AudioDataset(_cfg(folder, seed=3)), AudioDataset(_cfg(folder, seed=3))
    other = AudioDataset(_cfg(folder, seed=4))
    picks = [(a[i]["file_index"], a[i]["offset"]) for i in range(len(a))]
    assert picks == [(b[i]["file_index"], b[i]["offset"]) for i in range(len(b))]
    assert torch.equal(a[5]["audio"], b[5]["audio"])
    assert picks != [(other[i]["file_index"], other[i]["offset"]) for i in range(len(a))]
    a.set_epoch(1)
    assert picks != [(a[i]["file_index"], a[i]["offset"]) for i in range(len(a))]
    assert a.item(5, 0)["offset"] == b[5]["offset"]


def test_sampling_proportional_to_length(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    sf.write(root / "short.wav", _tone(SR, 1.0), SR)
    sf.write(root / "long.wav", _tone(SR, 3.0), SR)
    ds = AudioDataset(_cfg(root))
    counts = np.zeros(2)
    for e in range(20):
        for i in range(len(ds)):
            counts[ds.item(i, e)["file_index"]] += 1
    share = counts / counts.sum()  # files sorted: long, short
    assert share[0] == pytest.approx(0.75, abs=0.05)


def test_stereo_blend_bounds(tmp_path):
    root = tmp_path / "st"
    root.mkdir()
    t = np.arange(SR * 2) / SR
    s = np.sin(2 * np.pi * 200 * t)
    sf.write(root / "lr.wav", np.stack([0.6 * s, -0.6 * s], 1), SR, subtype="FLOAT")
    ref = (0.6 * s).astype(np.float32)
    ds = AudioDataset(_cfg(root, aug_blend=True))
    weights = []
    for e in range(8):
        it = ds.item(0, e)
        x = it["audio"][0].numpy()
        r = ref[it["offset"] : it["offset"] + CROP]
        w = (float(x @ r / (r @ r)) + 1) / 2  # mono = w L + (1 - w) R = (2w - 1) L
        np.testing.assert_allclose(x, (2 * w - 1) * r, atol=1e-5)
        weights.append(w)
    assert all(0.0 <= w <= 1.0 for w in weights) and np.std(weights) > 0.05
    fixed = AudioDataset(_cfg(root, aug_blend=False))[0]["audio"][0].numpy()
    assert np.abs(fixed).max() < 1e-6  # 0.5 L + 0.5 R = 0


def test_metadata_jsonl(folder, caplog):
    rows = [
        {
            "file": "a.wav",
            "artist": "Beyoncé",
            "genre": ["Pop", "R&B"],
            "lyrics": "Déjà vu!",
            "year": 2006,
            "words": [{"word": "Deja", "start": 0.1, "end": 0.4}],
        },
        {"file": "sub/b.FLAC", "artist": "Bach", "genre": "Chorale", "lyrics": "Ach Gott"},
        {"file": "missing.wav", "artist": "Nobody"},
        {"artist": "no file"},
        {"file": "c.ogg", "genre": 5},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", ""]
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING):
        scan = scan_audio(_cfg(folder, labels=LabelConfig(n_tokens=4)))
    assert scan.bad_rows == 3 and scan.unmatched_rows == 1 and scan.no_metadata == 1
    assert sum("bad row" in r.message for r in caplog.records) == 3
    a = next(f for f in scan.files if f.rel == "a.wav")
    assert a.meta.artist == "Beyoncé" and a.meta.genre == ("Pop", "R&B")
    assert a.meta.info == {"year": 2006} and a.meta.words[0]["end"] == 0.4
    assert scan.vocab.artists == {"unknown": 0, "bach": 1, "beyoncé": 2}
    assert scan.vocab.genres == {"unknown": 0, "chorale": 1, "pop": 2, "r&b": 3}
    assert scan.text.mapped == 2  # é, à of "Déjà"
    assert "2 bad" not in scan.summary() and "3 bad" in scan.summary()
    ds = AudioDataset(_cfg(folder, labels=LabelConfig(n_tokens=4)), scan)
    y = ds.crop(0, 0)["labels"].tolist()
    assert y[3] == 2 and y[4:6] == [2, 3]
    assert ds.labeller.tokenizer.decode(y[-4:]) == "Deja"  # timed window at 0.128 s


def test_metadata_csv(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    sf.write(root / "x.wav", _tone(SR, 1.0), SR)
    sf.write(root / "y.wav", _tone(SR, 1.0), SR)
    words = json.dumps([{"word": "la", "start": 0, "end": 1}])
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "artist", "genre", "lyrics", "words", "mood"])
        w.writerow(["x.wav", "Abba", "Pop|Disco", "line one\nline two", words, "happy"])
        w.writerow(["y.wav", "", "", "", "", ""])
        w.writerow(["z.wav", "too", "many", "cells", "here", "x", "y"])
        w.writerow(["q.wav", "a", "b", "c", "[not json", "m"])
    meta = load_metadata(str(root / "metadata.csv"), str(root))
    assert meta.bad_rows == 2
    x = meta.rows["x.wav"]
    assert x.artist == "Abba" and x.genre == ("Pop", "Disco")
    assert x.lyrics == "line one\nline two" and x.words == ({"word": "la", "start": 0, "end": 1},)
    assert x.info == {"mood": "happy"}
    y = meta.rows["y.wav"]
    assert (y.artist, y.genre, y.lyrics, y.words, y.info) == (None, (), "", None, {})
    scan = scan_audio(_cfg(root, metadata=str(root / "metadata.csv")))
    assert scan.vocab.genres == {"unknown": 0, "disco": 1, "pop": 2}
    bad = root / "bad.csv"
    bad.write_text("path,artist\nx.wav,a\n")
    with pytest.raises(DataError, match="'file' column"):
        load_metadata(str(bad), str(root))


def test_bad_files_skipped_and_counted(tmp_path, cache, caplog):
    root = tmp_path / "bad"
    root.mkdir()
    sf.write(root / "good.wav", _tone(SR, 1.0), SR)
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "empty.flac").write_bytes(b"")
    sf.write(root / "noframes.wav", np.zeros((0, 1)), SR)
    sf.write(root / "silent.wav", np.zeros(SR), SR)
    sf.write(root / "short.wav", _tone(SR, 0.1), SR)
    sf.write(root / "three.wav", _tone(SR, 1.0, 3), SR)
    sf.write(root / "odd.wav", _tone(11025, 1.0), 11025)
    (root / "notes.txt").write_text("not audio")
    with caplog.at_level(logging.WARNING, logger="teacher.data.dataset"):
        scan = scan_audio(_cfg(root, cache=cache))
    assert scan.found == 8
    assert dict(scan.skipped) == {"corrupt": 1, "empty": 2, "silent": 1, "too_short": 1}
    skips = [r for r in caplog.records if r.message.startswith("skipping")]
    assert len(skips) == 5  # one warning per bad file
    assert [f.rel for f in scan.files] == ["good.wav", "odd.wav", "three.wav"]
    assert (scan.resampled, scan.downmixed) == (1, 1)
    odd = scan.files[1]
    assert odd.sample_rate == 11025 and odd.length == SR
    summary = scan.summary()
    assert "3 of 8 files usable" in summary and "too short 1" in summary
    ds = AudioDataset(_cfg(root, cache=cache), scan)
    three = ds.crop(2, 0)["audio"][0].numpy()  # channels 1/3, 2/3, 3/3 of a tone -> mean 2/3
    np.testing.assert_allclose(three, _tone(SR, 1.0)[:CROP, 0] * 2 / 3, atol=1e-4)
    resampled = ds.crop(1, 0)["audio"][0].numpy()
    np.testing.assert_allclose(resampled[100:-100], _tone(SR, 1.0)[100 : CROP - 100, 0], atol=2e-3)


def test_no_usable_audio_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no audio files"):
        scan_audio(_cfg(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    sf.write(bad / "silent.wav", np.zeros(SR), SR)
    (bad / "x.mp3").write_bytes(b"")
    with pytest.raises(DataError, match=r"all 2 .* skipped \(empty 1, silent 1\)"):
        AudioDataset(_cfg(bad))
    with pytest.raises(DataError, match="does not exist"):
        scan_audio(_cfg(tmp_path / "nope"))


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="cache"):
        _cfg(tmp_path, cache="ram").validate()
    with pytest.raises(ConfigError, match="shorter than one crop"):
        _cfg(tmp_path, min_duration_s=0.1).validate()
    assert _cfg(tmp_path, min_duration_s=2.0).min_length == 2 * SR
    assert DataConfig(root="x").cache == "decoded"


def test_decoded_cache_reused(folder):
    cfg = _cfg(folder, cache="decoded")
    scan = scan_audio(cfg)
    paths = [f.cache_path for f in scan.files]
    assert all(
        p and np.load(p, mmap_mode="r").shape[1] == f.length for p, f in zip(paths, scan.files)
    )
    again = scan_audio(cfg)  # reads the cache instead of decoding
    assert [f.cache_path for f in again.files] == paths
    assert [f.rms for f in again.files] == pytest.approx([f.rms for f in scan.files])
    a, b = AudioDataset(cfg, scan)[2], AudioDataset(_cfg(folder, cache="none"))[2]
    assert a["offset"] == b["offset"]
    torch.testing.assert_close(a["audio"], b["audio"], atol=1e-6, rtol=0)


def test_bandwidth_of_a_sine(tmp_path):
    root = tmp_path / "bw"
    root.mkdir()
    amp = 0.5
    sf.write(root / "s.wav", _tone(SR, 3.0, freq=250.0, amp=amp), SR, subtype="FLOAT")
    ds = AudioDataset(_cfg(root, aug_blend=False))
    bw = compute_bandwidth(ds, n_items=6)
    assert bw.l2 == pytest.approx(amp**2 / 2, rel=0.01)
    assert bw.l1 == pytest.approx(2 * amp / math.pi, rel=0.01)
    # Parseval: per frame, one-sided sum |X_k|^2 ≈ (n_fft / 2) Σ x²w² = 1024 (A²/2) (3/8 · 1536)
    frames = 1 + CROP // 256
    assert bw.spec == pytest.approx(math.sqrt(frames * 1024 * amp**2 / 2 * 576), rel=0.02)
