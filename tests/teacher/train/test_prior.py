"""The prior trainer end to end: CLI, code cache, checkpoints, exact resume, two processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from teacher.config import ConfigError
from teacher.data.labels import Vocab
from teacher.io import STATE_FILE, model_fingerprint, read_json
from teacher.levels import level_index
from teacher.presets import prior_preset, tiny_vqvae
from teacher.train.cli import build_parser, run
from teacher.vqvae import VQVAE
from tests.launch import subprocess_env, two_cpu_processes

SR = 8000


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A random tiny VQ-VAE (codebooks initialised from its encoder) and four tone files:
    three with metadata (one with out-of-vocabulary lyric characters), one without a row."""
    base = tmp_path_factory.mktemp("prior")
    torch.manual_seed(0)
    vq = VQVAE(tiny_vqvae(SR))
    vq.train()
    vq(0.3 * torch.randn(4, 1, vq.cfg.sample_length))
    vq.eval().save_pretrained(base / "vqvae")
    data = base / "audio"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, secs in enumerate((1.5, 2.0, 1.2, 1.0)):
        t = np.arange(int(secs * SR)) / SR
        f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 4))
        sf.write(data / f"tone{i}.wav", (0.4 * x / np.abs(x).max()).astype(np.float32), SR)
    rows = [
        {"file": "tone0.wav", "artist": "Ann", "genre": "folk", "lyrics": "Ça ira ~ ça ira"},
        {"file": "tone1.wav", "artist": "Bo", "genre": "jazz", "lyrics": "la la la la"},
        {"file": "tone2.wav", "artist": "Ann", "genre": "pop", "lyrics": "oh oh"},
    ]
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"base": base, "vqvae": base / "vqvae", "data": data}


def _args(s: dict[str, Path], out: Path, level: str, *extra: str) -> list[str]:
    return [
        "prior",
        "--level",
        level,
        "--vqvae",
        str(s["vqvae"]),
        "--data_dir",
        str(s["data"]),
        "--preset",
        "tiny",
        "--output_dir",
        str(out),
        "--cache_dir",
        str(s["base"] / "decoded"),
        "--code_cache_dir",
        str(s["base"] / "codes"),
        "--train_batch_size",
        "2",
        "--lr_warmup_steps",
        "0",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        *extra,
    ]


def _run(args: list[str], module: str = "teacher.train") -> str:
    cmd = [sys.executable, "-m", module, *args]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    return " ".join((res.stdout + res.stderr).split())


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _state(out: Path, step: int) -> dict:
    return read_json(out / "checkpoints" / f"checkpoint-{step}" / STATE_FILE)


def test_top_prior_trains_exports_and_resumes_exactly(setup, tmp_path):
    from teacher.prior.model import Prior

    out = tmp_path / "top"
    log = _run(_args(setup, out, "top", "--max_train_steps", "4", "--checkpointing_steps", "2"))
    assert _steps(out) == [1, 2, 3, 4]
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "prior", "lyrics", "bits_per_token", "accuracy", "lr"):
        assert np.isfinite(rec[key]), key
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    # the exported folder: the prior, its vocabulary and the VQ-VAE it belongs to
    model_dir = out / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "vqvae.json"} <= names
    prior = Prior.from_pretrained(model_dir)
    vocab = Vocab.load(str(model_dir))
    assert prior.cfg.level == 2 and prior.cfg.n_tokens == 16 and prior.cfg.labels.include_timing
    # 1b-style lyrics score both terms over the joint vocabulary: 79 chars + 32 codes
    assert prior.cfg.vocab_size == 111 and rec["prior"] < np.log2(111) + 0.5
    assert (prior.cfg.labels.artist_bins, prior.cfg.labels.genre_bins) == (3, 4)  # + unknown
    assert vocab.artist_id("ann") == 1 and vocab.genre_ids(["pop"]) == [3]
    link = read_json(model_dir / "vqvae.json")
    assert link["fingerprint"] == model_fingerprint(setup["vqvae"]) and link["codes"] == "cache"
    # bad input: one summarising warning; lyric characters transliterated / dropped, counted
    assert log.count("have no metadata row") == 1
    summary = read_json(out / "train_args.json")["summary"]
    assert summary["no_metadata"] == 1 and summary["files"] == 4
    assert summary["lyric_transliterated"] == 2 and summary["lyric_dropped"] == 1
    assert summary["lyric_dropped_chars"] == {"~": 1}
    # the code cache was built by this run and is reused by the next one
    assert "code cache" in log and (setup["base"] / "codes" / "index.json").is_file()

    # resume from checkpoint-2 in a fresh folder: the step count continues, and the weights
    # at step 4 equal the unbroken run's (model, optimiser, scheduler and data order restored)
    again = tmp_path / "again"
    shutil.copytree(out / "checkpoints" / "checkpoint-2", again / "checkpoints" / "checkpoint-2")
    log = _run(
        _args(
            setup,
            again,
            "top",
            "--max_train_steps",
            "4",
            "--checkpointing_steps",
            "2",
            "--resume_from_checkpoint",
            "latest",
        )
    )
    assert "up to date" in log and "resumed from" in log
    assert _steps(again) == [3, 4]
    assert _state(again, 4)["weight_digests"] == _state(out, 4)["weight_digests"]
    assert _state(out, 4)["world_size"] == 1

    # resuming on the codes of a different VQ-VAE is refused before any work
    other = tmp_path / "other_vqvae"
    VQVAE(tiny_vqvae(SR)).save_pretrained(other)
    args = build_parser().parse_args(
        _args(setup, again, "top", "--max_train_steps", "6", "--resume_from_checkpoint", "latest")
    )
    args.vqvae = str(other)
    with pytest.raises(ConfigError, match="another VQ-VAE"):
        run(args)


def test_upsampler_on_the_fly_through_the_console_script(setup, tmp_path):
    from teacher.prior.config import load_prior_config

    out = tmp_path / "middle"
    args = _args(setup, out, "middle", "--codes", "on_the_fly", "--max_train_steps", "2")
    _run(["train", *args], module="fastjukebox")
    assert _steps(out) == [1, 2]
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "lyrics" not in rec and np.isfinite(rec["prior"])
    cfg = load_prior_config(str(out / "model" / "config.json"))
    assert cfg.level == 1 and cfg.conditioner is not None and cfg.n_tokens == 0
    assert cfg.labels is not None and not cfg.labels.include_timing  # artist/genre only
    link = read_json(out / "model" / "vqvae.json")
    assert link["codes"] == "on_the_fly" and link["level"] == 1 and link["hop_length"] == 32


def test_bad_settings_fail_before_any_work(setup, tmp_path):
    parser = build_parser()
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="longer than every audio file"):
        run(parser.parse_args(_args(setup, out, "top", "--n_ctx", "512")))  # 8.2 s window
    with pytest.raises(ConfigError, match="n_ctx=30"):  # tiny: 4 attention blocks
        run(parser.parse_args(_args(setup, out, "bottom", "--n_ctx", "30")))
    with pytest.raises(ConfigError, match="top prior only"):
        run(parser.parse_args(_args(setup, out, "middle", "--n_tokens", "8")))
    with pytest.raises(ConfigError, match="--codes"):
        args = parser.parse_args(_args(setup, out, "top"))
        args.codes = "sometimes"
        run(args)
    assert not out.exists()


def test_level_names_and_presets():
    vq = tiny_vqvae(SR)
    assert [level_index(n, 3) for n in ("top", "middle", "bottom", "1")] == [2, 1, 0, 1]
    with pytest.raises(ConfigError):
        level_index("middle", 2)
    with pytest.raises(ConfigError):
        level_index("upper", 3)
    top = prior_preset("tiny", 2, vq)
    assert top.lyrics.style == "single" and top.lyrics.n_vocab == 79 and top.n_tokens == 16
    assert prior_preset("tiny", 2, vq, n_tokens=0).lyrics is None
    assert prior_preset("tiny", 2, vq, n_ctx=64, n_tokens=8).transformer.n_ctx == 72
    v2 = prior_preset("tiny", 2, vq, lyric_version="v2")
    assert v2.lyrics.n_vocab == 80
    small = prior_preset("small", 2, vq, n_tokens=32)
    assert small.transformer.depth == 16 and small.transformer.prime_len == 32
    up = prior_preset("small", 0, vq)
    assert up.is_upsampler and up.l_bins == vq.l_bins and up.sample_rate == SR
    assert not up.labels.include_timing


@pytest.mark.slow
def test_two_processes_keep_identical_weights(setup, tmp_path):
    out = tmp_path / "ddp"
    args = _args(setup, out, "bottom", "--max_train_steps", "3", "--checkpointing_steps", "3")
    # a cache folder of its own: rank 0 builds it while rank 1 waits, then opens it
    i = args.index("--code_cache_dir")
    args[i + 1] = str(tmp_path / "codes")
    cmd, env = two_cpu_processes("teacher.train", args)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    state = _state(out, 3)
    assert state["world_size"] == 2
    digests = state["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    names = {p.name for p in (out / "checkpoints" / "checkpoint-3").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= names
    assert _steps(out) == [1, 2, 3]
