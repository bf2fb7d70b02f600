"""The code cache: encode once, exact chunking, no-op rebuilds, aligned windows and labels."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from teacher.config import ConfigError
from teacher.data.audio import load_audio
from teacher.data.codes import (
    CodeCache,
    CodeDataset,
    build_code_cache,
    encode_chunked,
    encoder_context,
    plan_windows,
)
from teacher.data.dataset import DataConfig
from teacher.data.labels import LabelConfig, Labeller, timed_lyric_window
from teacher.presets import tiny_vqvae
from teacher.vqvae import VQVAE

SR = 8000
TOP = 128
LYRICS = "Héllo wörld, ça va? Hello #world\nsing along"  # é ö ç transliterated, # dropped
WORDS = [
    {"word": "Héllo", "start": 0.2, "end": 0.5},
    {"word": "wörld", "start": 0.6, "end": 0.9},
    {"word": "ça", "start": 1.2, "end": 1.3},
    {"word": "va", "start": 1.3, "end": 1.5},
    {"word": "Hello", "start": 1.8, "end": 2.1},
    {"word": "world", "start": 2.2, "end": 2.4},
    {"word": "sing", "start": 2.6, "end": 2.7},
    {"word": "along", "start": 2.7, "end": 2.9},
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _signal(seconds: float, f0: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    x = 0.4 * np.sin(2 * np.pi * f0 * t * (1 + 0.2 * t)) + 0.05 * rng.standard_normal(len(t))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory) -> Path:
    """A random tiny VQ-VAE with spread-out codebooks.

    Initialising them from encoder outputs of noise packs every code within ~1e-2 of the
    others, so float rounding decides many nearest codes; random codes at the latents' scale
    are as well separated as a trained codebook's.
    """
    torch.manual_seed(0)
    model = VQVAE(tiny_vqvae(SR))
    model.train()
    model(0.3 * torch.randn(4, 1, model.cfg.sample_length))
    with torch.no_grad():
        for level in range(3):
            lat = model.encode_latents(0.3 * torch.randn(2, 1, 4096), level)
            k = model.codebook(level)
            k.copy_(lat.mean() + lat.std() * torch.randn_like(k))
    d = tmp_path_factory.mktemp("vqvae") / "vq"
    model.eval().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """long.wav (3.0 s, lyrics with word timings), stereo.wav (1.5 s), short.wav (0.3 s,
    no metadata row)."""
    d = tmp_path_factory.mktemp("audio")
    sf.write(d / "long.wav", _signal(3.0, 220, 0), SR)
    stereo = np.stack([_signal(1.5, 330, 1), _signal(1.5, 440, 2)], axis=1)
    sf.write(d / "stereo.wav", stereo, SR)
    sf.write(d / "short.wav", _signal(0.3, 550, 3), SR)
    rows = [
        {"file": "long.wav", "artist": "Ann", "genre": "folk", "lyrics": LYRICS, "words": WORDS},
        {"file": "stereo.wav", "artist": "Bo", "genre": ["jazz", "pop"], "lyrics": "la la"},
    ]
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _data_cfg(data_dir: Path) -> DataConfig:
    return DataConfig(root=str(data_dir), sample_rate=SR, cache_dir=str(data_dir) + "_decoded")


@pytest.fixture(scope="module")
def cache(vqvae_dir, data_dir, tmp_path_factory) -> CodeCache:
    out = tmp_path_factory.mktemp("codes") / "cache"
    return build_code_cache(vqvae_dir, _data_cfg(data_dir), out, progress=False)


def _mono(path: Path) -> np.ndarray:
    x = load_audio(str(path), SR).mean(axis=0)  # the cache's 0.5/0.5 stereo mix
    return np.ascontiguousarray(x[: len(x) // TOP * TOP], dtype=np.float32)


def test_cache_equals_whole_file_encode(cache, vqvae_dir, data_dir):
    """Every file is shorter than the default chunk: one window each, codes bit-equal."""
    model = VQVAE.from_pretrained(vqvae_dir)
    assert [f.rel for f in cache.files] == ["long.wav", "short.wav", "stereo.wav"]
    assert cache.levels == 3 and cache.hop_lengths == (8, 32, 128)
    for i, f in enumerate(cache.files):
        x = _mono(data_dir / f.rel)
        assert f.encoded == len(x) and f.length == len(load_audio(str(data_dir / f.rel), SR)[0])
        whole = model.encode(torch.from_numpy(x)[None, None])
        for level in range(3):
            got = np.asarray(cache.codes(i, level))
            assert got.dtype == np.int16
            assert f.tokens[level] == len(x) // cache.hop_lengths[level]
            np.testing.assert_array_equal(got, whole[level][0].numpy())
    assert cache.vocab.artist_id("ann") > 0 and cache.vocab.genre_ids(["pop"])[0] > 0
    index = json.loads((cache.root / "index.json").read_text())
    assert index["files"][0]["words"][0] == WORDS[0]
    assert not index["files"][1]["has_metadata"]


def test_chunked_encoding_equals_whole_file_away_from_ties(vqvae_dir, data_dir):
    """Overlapping chunks (context = encoder_context) reproduce whole-file encoding: latents to
    float rounding, codes exactly except where two codes are equidistant within rounding."""
    model = VQVAE.from_pretrained(vqvae_dir)
    x = _mono(data_dir / "long.wav")
    chunk = 8 * TOP  # 23 chunks over 3 s
    codes = [encode_chunked(model, [x], level, chunk, batch_size=5)[0] for level in range(3)]
    xt = torch.from_numpy(x)[None, None]
    for level in range(3):
        hop = model.cfg.hop_lengths[level]
        ctx = encoder_context(model.encoders[level], hop)
        assert ctx > 0 and ctx % hop == 0
        with torch.no_grad():
            whole = model.encode_latents(xt, level)[0]
            for w in plan_windows(len(x), hop, chunk, ctx):
                part = model.encode_latents(xt[..., w.start : w.end], level)[0]
                kept = part[:, w.keep0 : w.keep1]
                ref = whole[:, w.out0 : w.out0 + w.keep1 - w.keep0]
                torch.testing.assert_close(kept, ref, atol=1e-5, rtol=0)
            # without the overlap the seams differ far beyond rounding
            seams = plan_windows(len(x), hop, chunk, 0)
            part = model.encode_latents(xt[..., seams[1].start : seams[1].end], level)[0]
            assert (
                part - whole[:, seams[1].out0 : seams[1].out0 + part.shape[1]]
            ).abs().max() > 1e-3
        lat = whole.T  # [T, D]
        k = model.codebook(level)
        dist = (lat**2).sum(1, keepdim=True) - 2 * lat @ k.T + (k**2).sum(1)
        ref_codes = dist.argmin(1).numpy()
        top2 = dist.topk(2, largest=False).values
        tie = (top2[:, 1] - top2[:, 0]).numpy() < 1e-5
        differ = codes[level] != ref_codes
        assert not (differ & ~tie).any(), f"level {level}: codes differ away from ties"
        assert differ.mean() < 0.01


def test_chunked_cache_build_matches_one_window_build(cache, vqvae_dir, data_dir, tmp_path):
    """Building with small chunks (seams, windows batched across files) gives the same cache."""
    small = build_code_cache(
        vqvae_dir, _data_cfg(data_dir), tmp_path / "c", progress=False, chunk=8 * TOP, batch_size=3
    )
    assert small.index["chunk"] == 8 * TOP and cache.index["chunk"] >= 1 << 18
    for i in range(len(cache.files)):
        for level in range(3):
            a, b = np.asarray(small.codes(i, level)), np.asarray(cache.codes(i, level))
            assert a.shape == b.shape and (a != b).mean() <= 0.005  # only float-rounding ties


def test_rebuild_is_a_noop_until_the_data_changes(vqvae_dir, data_dir, tmp_path, caplog):
    extra = tmp_path / "audio"
    extra.mkdir()
    for name in ("long.wav", "short.wav"):
        (extra / name).write_bytes((data_dir / name).read_bytes())
    cfg = DataConfig(root=str(extra), sample_rate=SR, cache_dir=str(tmp_path / "decoded"))
    out = tmp_path / "codes"
    first = build_code_cache(vqvae_dir, cfg, out, progress=False)
    stamp = (out / "index.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="teacher.data.codes"):
        again = build_code_cache(vqvae_dir, cfg, out, progress=False)
    assert again.fingerprint == first.fingerprint
    assert (out / "index.json").stat().st_mtime_ns == stamp
    assert "up to date" in caplog.text
    # a changed file (size/mtime) or new weights give a new fingerprint and a rebuild
    sf.write(extra / "short.wav", _signal(0.5, 660, 9), SR)
    changed = build_code_cache(vqvae_dir, cfg, out, progress=False)
    assert changed.fingerprint != first.fingerprint
    assert changed.files[1].encoded == 0.5 * SR // TOP * TOP
    # nothing half-written is left beside the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "codes", "decoded"]


def test_code_dataset_windows_align_across_levels(cache):
    n_ctx = 64
    ds = CodeDataset(cache, level=1, n_ctx=n_ctx, label_cfg=LabelConfig(max_genres=2), seed=3)
    hop, ratio = 32, 4
    assert ds.file_ids == [0, 1, 2]  # the window is 2048 samples: short.wav (2304) fits
    assert len(ds) == sum(cache.files[i].tokens[1] for i in ds.file_ids) // n_ctx
    for index in range(len(ds)):
        item = ds[index]
        fi, off = item["file_index"], item["offset"]
        assert off % ratio == 0 and 0 <= off <= cache.files[fi].tokens[1] - n_ctx
        np.testing.assert_array_equal(item["codes"], cache.codes(fi, 1, off, off + n_ctx))
        up = cache.codes(fi, 2, off // ratio, (off + n_ctx) // ratio)
        np.testing.assert_array_equal(item["upper"], up)
        assert item["upper"].shape == (n_ctx // ratio,) and item["codes"].dtype == torch.int64
        y = item["labels"].tolist()
        assert y[:3] == [cache.files[fi].length, off * hop, n_ctx * hop]  # samples
        assert y[3] == cache.vocab.artist_id(cache.files[fi].artist)
    # deterministic in (seed, epoch, index), and each epoch draws new windows
    again = CodeDataset(cache, level=1, n_ctx=n_ctx, label_cfg=LabelConfig(max_genres=2), seed=3)
    assert all(ds.item(i, 5)["offset"] == again.item(i, 5)["offset"] for i in range(len(ds)))
    offsets = {e: [ds.item(i, e)["offset"] for i in range(len(ds))] for e in range(3)}
    assert offsets[0] != offsets[1] != offsets[2]
    top = CodeDataset(cache, level=2, n_ctx=8)
    assert "upper" not in top[0] and top[0]["codes"].shape == (8,)


def test_code_dataset_bad_windows_are_clear_errors(cache, caplog):
    with pytest.raises(ConfigError, match="longer than every file"):
        CodeDataset(cache, level=2, n_ctx=200)  # 200 · 128 samples > 3 s
    with pytest.raises(ConfigError, match="multiple of 4"):
        CodeDataset(cache, level=0, n_ctx=30)
    with pytest.raises(ConfigError, match="level"):
        CodeDataset(cache, level=3, n_ctx=8)
    with caplog.at_level(logging.WARNING, logger="teacher.data.codes"):
        ds = CodeDataset(cache, level=2, n_ctx=16)  # 2048 samples: short.wav (2304) fits
        assert len(ds.file_ids) == 3
        CodeDataset(cache, level=2, n_ctx=20)  # 2560 samples: short.wav is left out
    assert caplog.text.count("shorter than the level-2 window") == 1


def test_labels_lyric_window_by_timings_and_bad_input(cache, caplog):
    lab = LabelConfig(max_genres=2, n_tokens=12)
    with caplog.at_level(logging.WARNING, logger="teacher.data.codes"):
        ds = CodeDataset(cache, level=2, n_ctx=8, label_cfg=lab)
    # the file without a metadata row: artist/genre 0, one summarising warning
    assert caplog.text.count("have no metadata row") == 1 and ds.no_metadata == 1
    short = ds.file_ids.index(1)
    y = ds.window(short, 0)["labels"].tolist()
    assert y[3:6] == [0, 0, -1] and y[6:] == [0] * 12
    # out-of-vocabulary characters: transliterated (é ö ç) or dropped (#), and counted
    assert ds.text_stats.mapped == 3 and ds.text_stats.dropped == 1
    assert ds.text_stats.dropped_chars["#"] == 1
    # long.wav: window centred by word timings, offsets in samples
    k = ds.file_ids.index(0)
    labeller = Labeller(lab, cache.vocab)
    tokens, times = labeller.encode_lyrics(LYRICS, WORDS)
    assert times is not None
    for offset in (0, 30, 80, 121, 179):
        item = ds.window(k, offset)
        start, length = offset * TOP, 8 * TOP
        center = (start + length / 2) / SR
        want, _ = timed_lyric_window(tokens, times, 12, center)
        assert item["labels"][:3].tolist() == [int(3.0 * SR), start, length]
        assert item["labels"][6:].tolist() == want
    # centre (121 · 128 + 512) / 8000 = 2.0 s falls inside the second "Hello" (1.8-2.1 s, its
    # chars timed 1.83, 1.89, 1.95, 2.01, ...): the window's middle is its second "l" and it
    # starts 6 chars before; a linear alignment would centre on char 2/3 · 40 ≈ 26 instead
    text = labeller.tokenizer.decode(ds.window(k, 121)["labels"][6:].tolist())
    assert text == "a? Hello wor"


def test_cache_opens_in_workers_without_open_maps(cache):
    import pickle

    ds = CodeDataset(cache, level=0, n_ctx=32)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.cache._arrays is None
    np.testing.assert_array_equal(clone[0]["codes"], ds[0]["codes"])
    assert os.path.isfile(cache.root / "codes_l0.npy")
