"""The whole teacher through the console script: built-in data -> VQ-VAE -> 3 priors -> song.

A tiny teacher trained for a few steps on the built-in dataset samples a multi-window song with
artist, genre and lyrics labels, and every level's audio has the requested length.
"""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile as sf
from safetensors.torch import load_file

from fastjukebox.cli import main

SR = 8000


@pytest.mark.slow
def test_tiny_teacher_trained_on_synth_samples_a_song_through_the_cli(tmp_path):
    data, runs, teacher = tmp_path / "data", tmp_path / "runs", tmp_path / "teacher"
    common = ["--max_train_steps", "6", "--checkpointing_steps", "6", "--train_batch_size", "2"]
    common += ["--cache_dir", str(tmp_path / "cache")]
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--n_songs",
                "6",
                "--seconds",
                "3",
                "--sample_rate",
                str(SR),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "vqvae",
                "--data_dir",
                str(data),
                "--output_dir",
                str(runs / "vq"),
                "--preset",
                "tiny",
                "--sample_rate",
                str(SR),
                *common,
            ]
        )
        == 0
    )
    shutil.copytree(runs / "vq" / "model", teacher / "vqvae")
    for level in ("top", "middle", "bottom"):
        lyrics = ["--n_tokens", "16"] if level == "top" else []
        assert (
            main(
                [
                    "train",
                    "prior",
                    "--level",
                    level,
                    "--vqvae",
                    str(teacher / "vqvae"),
                    "--data_dir",
                    str(data),
                    "--output_dir",
                    str(runs / level),
                    "--preset",
                    "tiny",
                    *lyrics,
                    *common,
                ]
            )
            == 0
        )
        shutil.copytree(runs / level / "model", teacher / level)

    meta = json.loads((data / "metadata.jsonl").read_text().splitlines()[0])
    out = tmp_path / "song"
    seconds = 1.5
    assert (
        main(
            [
                "sample",
                "--mode",
                "exact",
                "--teacher",
                str(teacher),
                "--artist",
                meta["artist"],
                "--genre",
                meta["genre"],
                "--lyrics",
                "la la are loose",
                "--seconds",
                str(seconds),
                "--out",
                str(out),
                "--seed",
                "0",
                "--no_progress",
            ]
        )
        == 0
    )
    n = round(seconds * SR / 128) * 128  # the sampler rounds to whole top-level codes
    for name in ("level0_bottom", "level1_middle", "level2_top"):
        audio, sr = sf.read(out / f"{name}.wav")
        assert sr == SR and len(audio) == n
    codes = load_file(str(out / "codes.safetensors"))
    assert {v.shape[-1] for v in codes.values()} == {n // 8, n // 32, n // 128}
    labels = json.loads((out / "labels.json").read_text())
    assert labels["artist"] == meta["artist"] and labels["lyrics"] == "la la are loose"
    windows = labels["windows"]["top"]
    assert len(windows) > 1  # a multi-window song
    offsets = [w["label"][1] for w in windows]  # [total_length, offset, length, artist, ...]
    assert offsets == [w["start"] * 128 for w in windows] and offsets[0] == 0
    assert all(w["label"][0] == n for w in windows)
    assert all(w["artist"] == meta["artist"].lower() for w in windows)
    assert any(w["lyrics"].strip() for w in windows)  # the lyric window travels with the song
    # distil tiny students for both upsamplers, then every fast mode through the CLI
    for level in ("middle", "bottom"):
        assert (
            main(
                [
                    "distill",
                    "--teacher",
                    str(teacher),
                    "--level",
                    level,
                    "--student",
                    "categorical",
                    "--preset",
                    "tiny",
                    "--data_dir",
                    str(data),
                    "--output_dir",
                    str(teacher / "students" / level),
                    *common,
                ]
            )
            == 0
        )
    for mode, extra in (
        ("accelerated", []),
        ("hybrid", ["--level_modes", "middle=exact,bottom=student"]),
        ("speculative", ["--gamma", "3"]),
    ):
        out = tmp_path / mode
        args = ["sample", "--mode", mode, "--teacher", str(teacher), "--artist", meta["artist"]]
        args += ["--genre", meta["genre"], "--lyrics", "la la", "--seconds", "1"]
        args += ["--out", str(out), "--seed", "1", "--no_progress", *extra]
        assert main(args) == 0, mode
        n = round(SR / 128) * 128
        for name in ("level0_bottom", "level1_middle", "level2_top"):
            audio, _ = sf.read(out / f"{name}.wav")
            assert len(audio) == n, (mode, name)
        stats = json.loads((out / "labels.json").read_text())["stats"]
        assert stats, mode
