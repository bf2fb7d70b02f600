"""The VQ-VAE trainer end to end: CLI, checkpoints, kill + resume, two processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from teacher.io import STATE_FILE, latest_checkpoint, load_tensors, read_json
from tests.launch import subprocess_env, two_cpu_processes

SR = 8000


@pytest.fixture(scope="module")
def tone_dir(tmp_path_factory) -> Path:
    """A few seconds of pitched tones with harmonics, as wav files."""
    d = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * SR)) / SR
    for i in range(4):
        f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))
        x = 0.5 * x / np.abs(x).max() * np.minimum(1.0, t * 8)
        sf.write(d / f"tone{i}.wav", x.astype(np.float32), SR)
    return d


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "teacher.train",
        "vqvae",
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--preset",
        "tiny",
        "--sample_rate",
        str(SR),
        "--train_batch_size",
        "2",
        "--lr_warmup_steps",
        "0",
        "--logging_steps",
        "1",
        "--cache_dir",
        str(data) + "_cache",
        *extra,
    ]


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def _steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_train_export_and_bad_config(tone_dir, tmp_path):
    out = tmp_path / "run"
    # bf16 autocast works on CPU too; the quantiser and STFT losses stay in fp32
    _run(
        _train_cmd(
            tone_dir,
            out,
            "--max_train_steps",
            "3",
            "--checkpointing_steps",
            "2",
            "--mixed_precision",
            "bf16",
        )
    )
    assert _steps(out) == [1, 2, 3]
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "commit", "sc_l0", "sc_l2", "usage_l0"):
        assert np.isfinite(rec[key]), key
    assert (out / "model" / "config.json").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    vocab = json.loads((out / "model" / "vocab.json").read_text())  # saved with the model
    assert vocab["version"] == "v3"
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["bandwidth"]["l2"] > 0 and cfg["bandwidth"]["spec"] > 0  # measured on the data
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-3"]
    # a bad value is one clear error before any work
    res = subprocess.run(
        _train_cmd(tone_dir, tmp_path / "bad", "--sample_length", "1000"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "multiple of the top hop" in " ".join((res.stdout + res.stderr).split())
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_checkpoint(tone_dir, tmp_path):
    out = tmp_path / "run"
    cmd = _train_cmd(tone_dir, out, "--max_train_steps", "10000", "--checkpointing_steps", "2")
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 180
        while latest_checkpoint(out / "checkpoints") is None:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint written in time"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = latest_checkpoint(out / "checkpoints")
    step = read_json(ckpt / STATE_FILE)["step"]
    saved = load_tensors(ckpt / "model" / "model.safetensors")
    # no half-written checkpoint is mistaken for a complete one
    for child in (out / "checkpoints").iterdir():
        if not child.name.startswith("."):
            assert (child / STATE_FILE).is_file()

    # resuming with nothing left to do restores exactly the checkpoint's weights
    same = tmp_path / "same"
    shutil.copytree(out, same)
    # the export below must come from the restored state (the kill may also have come between
    # the first checkpoint's rename and the first refresh of OUTPUT_DIR/model: none then)
    shutil.rmtree(same / "model", ignore_errors=True)
    _run(
        _train_cmd(
            tone_dir,
            same,
            "--max_train_steps",
            str(step),
            "--resume_from_checkpoint",
            "latest",
        )
    )
    restored = load_tensors(same / "model" / "model.safetensors")
    assert restored.keys() == saved.keys()
    for k in saved:
        assert torch.equal(restored[k], saved[k]), k

    # and resuming for two more steps continues the step count from the checkpoint; the metrics
    # log is first cut back to the checkpoint (the steps logged after it, before the kill, are
    # trained again and must not appear twice)
    before = [s for s in _steps(out) if s <= step]
    _run(
        _train_cmd(
            tone_dir,
            out,
            "--max_train_steps",
            str(step + 2),
            "--checkpointing_steps",
            "2",
            "--resume_from_checkpoint",
            "latest",
        )
    )
    assert _steps(out) == before + [step + 1, step + 2]
    assert read_json(latest_checkpoint(out / "checkpoints") / STATE_FILE)["step"] == step + 2


@pytest.mark.slow
def test_two_processes_keep_identical_codebooks(tone_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = _train_cmd(tone_dir, out, "--max_train_steps", "4", "--checkpointing_steps", "4")
    launch, env = two_cpu_processes(cmd[2], cmd[3:])
    res = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    state = read_json(out / "checkpoints" / "checkpoint-4" / STATE_FILE)
    assert state["world_size"] == 2
    digests = state["codebook_digests"]
    assert len(digests) == 2 and len(digests[0]) == 3
    assert digests[0] == digests[1]
    # both ranks wrote their RNG state into the same checkpoint
    names = {p.name for p in (out / "checkpoints" / "checkpoint-4").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= names


@pytest.mark.slow
def test_resumed_run_takes_the_same_steps_as_an_unbroken_one(tone_dir, tmp_path):
    """Crops, shuffles, codebook restarts and optimiser state all resume exactly."""
    unbroken, split = tmp_path / "unbroken", tmp_path / "split"
    _run(_train_cmd(tone_dir, unbroken, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    _run(_train_cmd(tone_dir, split, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    _run(
        _train_cmd(
            tone_dir,
            split,
            "--max_train_steps",
            "4",
            "--checkpointing_steps",
            "2",
            "--resume_from_checkpoint",
            "latest",
        )
    )
    a = load_tensors(unbroken / "model" / "model.safetensors")
    b = load_tensors(split / "model" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
