"""The console script: data synth -> reconstruct, and clear errors for bad input."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fastjukebox.cli import main
from teacher.presets import tiny_vqvae
from teacher.vqvae import VQVAE


def test_synth_then_reconstruct_every_level(tmp_path):
    data = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--n_songs",
                "2",
                "--seconds",
                "2",
                "--sample_rate",
                "8000",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["lyrics"] and r["words"] for r in rows)

    torch.manual_seed(0)
    model = VQVAE(tiny_vqvae(sample_rate=8000))
    model.train()
    model(torch.randn(2, 1, 2048) * 0.1)  # initialise the codebooks from data
    model.save_pretrained(tmp_path / "vq")
    wav = data / rows[0]["file"]
    out = tmp_path / "recon"
    assert main(["reconstruct", "--model", str(tmp_path / "vq"), str(wav), "--out", str(out)]) == 0
    x, sr = sf.read(wav)
    n = len(x) // 128 * 128
    for level, hop in enumerate((8, 32, 128)):
        y, sr_y = sf.read(out / f"{wav.stem}_level{level}_hop{hop}.wav")
        assert sr_y == 8000 and len(y) == n
        assert np.isfinite(y).all()


def test_synth_artists_and_genres_choose_the_songs_and_unknown_names_are_refused(tmp_path, capsys):
    data = tmp_path / "data"
    args = ["data", "synth", "--out", str(data), "--n_songs", "4", "--seconds", "2"]
    args += ["--sample_rate", "8000", "--artists", "Moss Choir, Aster Vale", "--genres", "lullaby"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    assert {r["artist"] for r in rows} == {"Moss Choir", "Aster Vale"}
    assert {r["genre"] for r in rows} == {"lullaby"}
    bad = ["data", "synth", "--out", str(tmp_path / "x"), "--artists", "Nobody"]
    assert main(bad) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "unknown artists ['Nobody']" in text and not (tmp_path / "x").exists()


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.wav").write_bytes(b"RIFF not really audio")
    assert main(["data", "scan", str(empty)]) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "no usable audio" in text and "corrupt 1" in text
    assert "Traceback" not in text
    assert (
        main(
            [
                "reconstruct",
                "--model",
                str(tmp_path / "missing"),
                "x.wav",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_a_bad_draft_is_refused_before_any_model_loads(tmp_path, capsys):
    argv = ["sample", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--mode", "speculative", "--draft", "parallel"])
    assert exit_.value.code == 2
    text = " ".join(capsys.readouterr().err.split())
    assert "--draft" in text and "incremental" in text and "window" in text


@pytest.mark.parametrize("gamma", ["0", "2.5", "fast", "65"])
def test_a_bad_gamma_is_refused_before_any_model_loads(tmp_path, capsys, gamma):
    argv = ["sample", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--gamma", gamma]) == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "gamma must be 1 … 64 drafts or 'auto'" in text and "missing" not in text


def test_a_bad_draft_dtype_is_refused_before_any_model_loads(tmp_path, capsys):
    argv = ["sample", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as err:  # argparse's choices
        main([*argv, "--draft_dtype", "int8"])
    assert err.value.code == 2
    text = capsys.readouterr().err
    assert "--draft_dtype" in text and "invalid choice" in text
