"""Hostile input through every entry point: nothing bad gets in, every failure names its cause.

Generated hostile audio (NaN, Inf, 0 bytes, corrupt, truncated, too short, silent, 6 channels,
an odd rate, a text file, a broken metadata row, a missing file) and damaged model folders of
every kind (VQ-VAE, prior, student, teacher: missing files, bad JSON, another kind of model,
truncated or unreadable weights, missing / unexpected / misshaped tensors), one parametrised
test per entry point. Each checks the message (one line naming the file or folder and the
problem, no traceback), the counts, and that nothing was written, cached, encoded or trained on.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from fastjukebox.cli import main
from student.base import Student
from student.config import tiny_student
from teacher.data.labels import Vocab
from teacher.io import load_tensors, save_tensors
from teacher.presets import tiny_top_prior, tiny_upsampler, tiny_vqvae
from teacher.prior.model import Prior
from teacher.vqvae import VQVAE

SR = 8000
GOOD_SECONDS = 1.5


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    # the decoded-audio cache of commands without --cache_dir goes here, not to ~/.cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    yield
    torch.set_num_threads(n)


class _Records(logging.Handler):
    """Every record of the toolkit's loggers (``setup_logging`` replaces the root handlers, so
    pytest's caplog would miss them)."""

    NAMES = ("teacher", "student", "distill", "eval", "fastjukebox")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]

    def text(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.at(level)]


@pytest.fixture
def logs():
    handler = _Records()
    for name in _Records.NAMES:
        logging.getLogger(name).addHandler(handler)
    yield handler
    for name in _Records.NAMES:
        logging.getLogger(name).removeHandler(handler)


def _one_error(logs: _Records, *patterns: str, debug: bool = False) -> str:
    """The single error line of a failed command; it matches every pattern and carries a
    traceback only with ``--debug``."""
    errors = logs.at(logging.ERROR)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    msg = errors[0].getMessage()
    assert "\n" not in msg and "Traceback" not in msg
    assert (errors[0].exc_info is not None) == debug
    for pattern in patterns:
        assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# hostile audio


def _tone(seconds: float = GOOD_SECONDS, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * 220.0 * t) + 0.1 * np.sin(2 * np.pi * 660.0 * t)
    return np.stack([x] * channels, axis=1).astype(np.float32)


def _write_nan(root: Path) -> None:
    x = _tone()
    x[4000:4100] = np.nan  # 0.5 s in
    sf.write(root / "nan.wav", x, SR, subtype="FLOAT")


def _write_inf(root: Path) -> None:
    x = _tone()
    x[8000, 0] = np.inf
    x[8001, 0] = -np.inf
    sf.write(root / "inf.wav", x, SR, subtype="FLOAT")


def _write_truncated(root: Path) -> None:
    sf.write(root / "truncated.flac", _tone(), SR)
    data = (root / "truncated.flac").read_bytes()
    (root / "truncated.flac").write_bytes(data[: len(data) // 2])


#: name -> (file, writer, skip reason or None for usable, what the warning says)
AUDIO = {
    "nan": ("nan.wav", _write_nan, "non_finite", r"100 NaN samples, the first at 0\.500 s"),
    "inf": ("inf.wav", _write_inf, "non_finite", r"2 Inf samples, the first at 1\.000 s"),
    "zero_bytes": ("zero.wav", lambda r: (r / "zero.wav").write_bytes(b""), "empty", "0 bytes"),
    "corrupt": (
        "corrupt.wav",
        lambda r: (r / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000)),
        "corrupt",
        "Error",
    ),
    "truncated": ("truncated.flac", _write_truncated, "corrupt", "Error"),
    "too_short": (
        "short.wav",
        lambda r: sf.write(r / "short.wav", _tone()[:100], SR),
        "too_short",
        r"0\.01 s <",
    ),
    "silent": (
        "silent.wav",
        lambda r: sf.write(r / "silent.wav", np.zeros(SR), SR),
        "silent",
        "RMS",
    ),
    "six_channels": ("six.wav", lambda r: sf.write(r / "six.wav", _tone(channels=6), SR), None, ""),
    "odd_rate": ("odd.wav", lambda r: sf.write(r / "odd.wav", _tone(sr=11025), 11025), None, ""),
    "text_file": (
        "notes.wav",
        lambda r: (r / "notes.wav").write_text("these are my lyrics, not audio\n"),
        "corrupt",
        "Error",
    ),
}
USABLE = sorted(["good.wav"] + [f for f, _, reason, _ in AUDIO.values() if reason is None])
SKIPPED = {f: reason for f, _, reason, _ in AUDIO.values() if reason is not None}
#: metadata: a broken row (line 2) and a row naming a file that is not there
METADATA = (
    json.dumps({"file": "good.wav", "artist": "Ann", "genre": "folk", "lyrics": "la la"})
    + "\n{broken row\n"
    + json.dumps({"file": "gone.wav", "artist": "Bo"})
    + "\n"
)


def _hostile_folder(root: Path, cases: list[str], metadata: bool = True, good: bool = True) -> Path:
    """A folder with a good tone (``good``), the hostile ``cases`` and (``metadata``) the
    broken metadata."""
    root.mkdir(parents=True)
    if good:
        sf.write(root / "good.wav", _tone(), SR)
    for case in cases:
        AUDIO[case][1](root)
    if metadata:
        (root / "metadata.jsonl").write_text(METADATA)
    return root


def _reason_text(reason: str) -> str:
    return reason.replace("_", " ")


def _skip_summary(files: list[str]) -> str:
    counts: dict[str, int] = {}
    for f in files:
        if f in SKIPPED:
            counts[SKIPPED[f]] = counts.get(SKIPPED[f], 0) + 1
    return ", ".join(f"{_reason_text(r)} {n}" for r, n in sorted(counts.items()))


def _check_skip_warnings(logs: _Records, files: list[str]) -> None:
    """One warning per skipped file, naming it and why; none for usable files."""
    warnings = [m for m in logs.text(logging.WARNING) if m.startswith("skipping")]
    for f in files:
        named = [m for m in warnings if f"skipping {f}:" in m]
        if f in SKIPPED:
            assert len(named) == 1, (f, warnings)
            assert f": {_reason_text(SKIPPED[f])} (" in named[0]
        else:
            assert not named, named


def _cached(folder: Path) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(folder.rglob("*.npy"))] if folder.is_dir() else []


@pytest.mark.parametrize("case", [*AUDIO, "broken_metadata_row", "missing_file"])
def test_data_scan(case, tmp_path, logs):
    """``fastjukebox data scan``: each hostile file is skipped with one warning naming it and
    its reason, counted in the summary, and never cached; metadata problems are counted."""
    root = _hostile_folder(tmp_path / "audio", [case] if case in AUDIO else [])
    args = ["data", "scan", str(root), "--sample_rate", str(SR), "--sample_length", "2048"]
    assert main(args) == 0
    files = ["good.wav"] + ([AUDIO[case][0]] if case in AUDIO else [])
    _check_skip_warnings(logs, files)
    summary = "\n".join(m for m in logs.text(logging.INFO) if m.startswith("audio:"))
    usable = [f for f in files if f not in SKIPPED]
    assert f"audio: {len(usable)} of {len(files)} files usable" in summary
    if case in AUDIO and AUDIO[case][2] is not None:
        assert f"skipped: {_skip_summary(files)}" in summary
        (warning,) = [m for m in logs.text(logging.WARNING) if AUDIO[case][0] in m]
        assert re.search(AUDIO[case][3], warning), warning
    else:
        assert "skipped:" not in summary
    assert ("resampled from another rate: 1" in summary) == (case == "odd_rate")
    assert ("downmixed from >2 channels: 1" in summary) == (case == "six_channels")
    # both metadata problems are in every folder: one bad row, one row without a file
    assert "3 rows, 1 bad, 1 without a usable file" in summary
    meta = [m for m in logs.text(logging.WARNING) if m.startswith("metadata")]
    assert len(meta) == 1 and "metadata.jsonl:2: bad row skipped" in meta[0]
    assert any("name no usable audio file, e.g. gone.wav" in m for m in logs.text(logging.WARNING))
    # the decoded cache holds exactly the usable files, all finite
    cached = _cached(tmp_path / "xdg" / "fastjukebox" / "decoded")
    assert len(cached) == len(usable) and all(np.isfinite(x).all() for x in cached)


def test_data_scan_with_nothing_usable_is_one_error(tmp_path, logs):
    root = _hostile_folder(tmp_path / "audio", ["nan", "inf", "silent"], False, good=False)
    assert main(["data", "scan", str(root), "--sample_rate", str(SR)]) == 2
    _one_error(logs, "no usable audio", r"all 3 \S+ files were skipped \(non finite 2, silent 1\)")
    assert not _cached(tmp_path / "xdg")


def test_a_cached_decode_with_nan_is_never_used(tmp_path, logs):
    """A decoded-cache entry holding NaN (written before NaN was refused) is decoded again."""
    root = _hostile_folder(tmp_path / "audio", [], metadata=False)
    args = ["data", "scan", str(root), "--sample_rate", str(SR), "--sample_length", "2048"]
    assert main(args) == 0
    (path,) = (tmp_path / "xdg").rglob("*.npy")
    decoded = np.load(path)
    np.save(path, np.where(np.arange(decoded.shape[1]) < 10, np.nan, decoded))
    assert main(args) == 0
    (again,) = _cached(tmp_path / "xdg")
    np.testing.assert_array_equal(again, decoded)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    """Every hostile audio case next to one good file, with the broken metadata."""
    return _hostile_folder(tmp_path_factory.mktemp("hostile") / "audio", list(AUDIO))


ALL_FILES = ["good.wav"] + [f for f, *_ in AUDIO.values()]
TRAIN = ["--max_train_steps", "1", "--train_batch_size", "2", "--lr_warmup_steps", "0"]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("data_cache", ["decoded", "none"])
def test_train_vqvae(data_cache, hostile_dir, tmp_path, logs):
    """``fastjukebox train vqvae``: the hostile files are skipped once each (decoded cache and
    seek-per-crop alike), never cached, and the step and the bandwidth are finite."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "vqvae", "--data_dir", str(hostile_dir), "--output_dir", str(out)]
    args += ["--preset", "tiny", "--sample_rate", str(SR), "--cache_dir", str(cache)]
    assert main([*args, "--data_cache", data_cache, *TRAIN]) == 0
    _check_skip_warnings(logs, ALL_FILES)
    assert any(f"skipped: {_skip_summary(ALL_FILES)}" in m for m in logs.text(logging.INFO))
    (record,) = _metrics(out)
    assert record["step"] == 1 and all(np.isfinite(v) for v in record.values())
    bandwidth = json.loads((out / "model" / "config.json").read_text())["bandwidth"]
    assert all(np.isfinite(v) and v > 0 for v in bandwidth.values())
    cached = _cached(cache)
    assert len(cached) == (len(USABLE) if data_cache == "decoded" else 0)
    assert all(np.isfinite(x).all() for x in cached)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A tiny random teacher folder (vqvae/, top/, middle/, bottom/) and students/."""
    root = tmp_path_factory.mktemp("models") / "teacher"
    torch.manual_seed(0)
    vq = VQVAE(tiny_vqvae(SR))
    vq.train()
    vq(0.3 * torch.randn(4, 1, vq.cfg.sample_length))  # codebooks from data
    vq.eval().save_pretrained(root / "vqvae")
    vocab = Vocab.build(["Ann", "Bo"], ["folk", "jazz"])
    cfgs = {
        "top": tiny_top_prior("single"),
        "middle": tiny_upsampler(1),
        "bottom": tiny_upsampler(0),
    }
    priors = {}
    for name, cfg in cfgs.items():
        priors[name] = Prior(cfg).eval()
        priors[name].save_pretrained(root / name)
        vocab.save(str(root / name))
    for level, name in ((1, "middle"), (0, "bottom")):
        Student.from_teacher(priors[name], tiny_student(level)).save_pretrained(
            root / "students" / name
        )
    return root


@pytest.mark.parametrize("codes", ["cache", "on_the_fly"])
def test_train_prior(codes, hostile_dir, models, tmp_path, logs):
    """``fastjukebox train prior``: files with NaN/Inf samples are never encoded into the code
    cache nor cropped on the fly; the step is finite."""
    out, code_cache = tmp_path / "run", tmp_path / "codes"
    args = ["train", "prior", "--level", "middle", "--vqvae", str(models / "vqvae")]
    args += ["--data_dir", str(hostile_dir), "--output_dir", str(out), "--preset", "tiny"]
    args += ["--cache_dir", str(tmp_path / "decoded"), "--code_cache_dir", str(code_cache)]
    assert main([*args, "--codes", codes, *TRAIN]) == 0
    for f in ("nan.wav", "inf.wav"):
        named = [m for m in logs.text(logging.WARNING) if m.startswith(f"skipping {f}: non finite")]
        assert len(named) == 1, logs.text(logging.WARNING)
    (record,) = _metrics(out)
    assert all(np.isfinite(v) for v in record.values())
    summary = json.loads((out / "train_args.json").read_text())["summary"]
    assert summary["files"] == len(USABLE)
    if codes == "cache":
        index = json.loads((code_cache / "index.json").read_text())
        assert sorted(f["rel"] for f in index["files"]) == USABLE
        assert index["skipped"]["non_finite"] == 2
    else:
        assert not code_cache.exists()
    assert all(np.isfinite(x).all() for x in _cached(tmp_path / "decoded"))


# ---------------------------------------------------------------------------------------------
# damaged model folders


def _edit_weights(folder: Path, edit) -> None:
    state = load_tensors(folder / "model.safetensors")
    edit(state)
    save_tensors(state, folder / "model.safetensors")


def _drop(n: int):
    def edit(state: dict) -> None:
        for key in sorted(state)[:n]:
            del state[key]

    return edit


def _misshape(state: dict) -> None:
    key = sorted(k for k, v in state.items() if v.dim() >= 1 and v.shape[0] > 1)[0]
    state[key] = state[key][:1]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


#: damage -> (what it does to a model folder, what the one error line says)
DAMAGE = {
    "missing_folder": (lambda f: shutil.rmtree(f), r"no such \S+ folder"),
    "no_config": (lambda f: (f / "config.json").unlink(), r"no config\.json"),
    "bad_json": (
        lambda f: (f / "config.json").write_text('{"l_bins": 16,\n  oops\n}'),
        r"config\.json: not valid JSON \(line 2, column 3",
    ),
    "other_kind": (
        lambda f: (f / "config.json").write_text('{"_class": "SynthConfig", "n_songs": 3}'),
        r"config\.json holds a SynthConfig, expected a",
    ),
    "no_weights": (
        lambda f: (f / "model.safetensors").unlink(),
        r"holds neither model\.safetensors nor model\.safetensors\.index\.json",
    ),
    "truncated_weights": (
        lambda f: _truncate(f / "model.safetensors"),
        r"model\.safetensors: not a readable safetensors file",
    ),
    "text_weights": (
        lambda f: (f / "model.safetensors").write_text("<html>404 Not Found</html>"),
        r"model\.safetensors: not a readable safetensors file",
    ),
    "missing_tensors": (
        lambda f: _edit_weights(f, _drop(4)),
        r"the weights do not fit this .*: 4 missing: '[^']+', '[^']+', '[^']+' and 1 more",
    ),
    "unexpected_tensor": (
        lambda f: _edit_weights(f, lambda s: s.update({"stray.weight": torch.zeros(2)})),
        r"the weights do not fit this .*: 1 unexpected: 'stray\.weight'",
    ),
    "misshaped_tensor": (
        lambda f: _edit_weights(f, _misshape),
        r"the weights do not fit this .*: 1 misshaped: '\S+ \[1",
    ),
}


def _damaged(models: Path, tmp_path: Path, part: str, damage: str) -> tuple[Path, Path]:
    """A copy of the teacher folder with ``part`` damaged: ``(teacher, damaged folder)``."""
    teacher = tmp_path / "teacher"
    shutil.copytree(models, teacher)
    DAMAGE[damage][0](teacher / part)
    return teacher, teacher / part


def _damage_patterns(folder: Path, damage: str) -> tuple[str, str]:
    name = folder.name if damage != "missing_folder" else folder.parent.name
    return rf"{name}\b", DAMAGE[damage][1]


@pytest.mark.parametrize("case", [*DAMAGE, "nan", "inf", "zero_bytes", "text_file", "missing"])
def test_reconstruct(case, models, tmp_path, logs):
    """``fastjukebox reconstruct``: a damaged VQ-VAE folder or hostile input audio is one line
    naming the folder or file and the problem; no output folder appears."""
    out = tmp_path / "recon"
    audio = _hostile_folder(tmp_path / "audio", [c for c in (case,) if c in AUDIO], metadata=False)
    wav = audio / (AUDIO[case][0] if case in AUDIO else "good.wav")
    vq = models / "vqvae"
    if case in DAMAGE:
        _, vq = _damaged(models, tmp_path, "vqvae", case)
    elif case == "missing":
        wav = audio / "gone.wav"
    assert main(["reconstruct", "--model", str(vq), str(wav), "--out", str(out)]) == 2
    if case in DAMAGE:
        _one_error(logs, *_damage_patterns(vq, case))
    else:
        reason = {"nan": "non finite", "inf": "non finite", "zero_bytes": "empty"}
        _one_error(logs, rf"{wav.name}: {reason.get(case, 'corrupt|unreadable')}")
    assert not out.exists()


def test_debug_shows_the_traceback(models, tmp_path, logs):
    """``--debug`` (before or after the subcommand) adds the traceback to the error line."""
    args = ["--model", str(tmp_path / "none"), "x.wav", "--out", str(tmp_path / "o")]
    assert main(["--debug", "reconstruct", *args]) == 2
    _one_error(logs, r"none: no such VQ-VAE folder", debug=True)
    logs.records.clear()
    assert main(["reconstruct", *args, "--debug"]) == 2
    _one_error(logs, r"none: no such VQ-VAE folder", debug=True)
    logs.records.clear()
    from teacher.train.cli import main as train_main

    data = _hostile_folder(tmp_path / "audio", [], metadata=False)
    train = ["prior", "--level", "top", "--vqvae", str(tmp_path / "none"), "--data_dir", str(data)]
    assert train_main([*train, "--output_dir", str(tmp_path / "run")]) == 2
    _one_error(logs, r"none: no such VQ-VAE folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_train_prior_with_a_damaged_vqvae(damage, models, tmp_path, logs):
    """``fastjukebox train prior --vqvae``: the damaged VQ-VAE fails before any data work."""
    _, vq = _damaged(models, tmp_path, "vqvae", damage)
    data = _hostile_folder(tmp_path / "audio", ["nan"], metadata=False)
    out = tmp_path / "run"
    args = ["train", "prior", "--level", "top", "--vqvae", str(vq), "--data_dir", str(data)]
    args += ["--output_dir", str(out), "--cache_dir", str(tmp_path / "decoded")]
    assert main([*args, "--code_cache_dir", str(tmp_path / "codes"), *TRAIN]) == 2
    _one_error(logs, *_damage_patterns(vq, damage))
    assert not out.exists() and not (tmp_path / "decoded").exists()
    assert not (tmp_path / "codes").exists()


SAMPLE_PARTS = ["vqvae", "top", "students/middle"]
SAMPLE_CASES = [(part, damage) for part in SAMPLE_PARTS for damage in DAMAGE]
#: a teacher folder without a part names the folder and the part
MISSING_PART = {
    "vqvae": r"teacher/vqvae not found: is \S+/teacher a teacher folder\?",
    "top": r"no top prior in the teacher folder \S+/teacher \(no top/ folder\): cannot sample",
    "middle": r"student is labelled: .*no middle prior in the teacher folder \S+/teacher \(no middle/",
    "students/middle": r"no student for the middle level in \S+middle",
}


@pytest.mark.parametrize(
    "part, case",
    [
        *SAMPLE_CASES,
        ("middle", "missing_folder"),
        *[("prompt", c) for c in ("nan", "inf", "zero_bytes", "text_file")],
        ("codes", "text_file"),
    ],
)
def test_sample(part, case, models, tmp_path, logs):
    """``fastjukebox sample``: a damaged teacher part or student, or a hostile prompt, is one
    line naming it and the problem; nothing is sampled or written."""
    out = tmp_path / "song"
    teacher, folder = models, None
    if part not in ("prompt", "codes"):
        teacher, folder = _damaged(models, tmp_path, part, case)
    students = f"middle={teacher / 'students/middle'},bottom={teacher / 'students/bottom'}"
    args = ["sample", "--mode", "accelerated", "--teacher", str(teacher), "--students", students]
    args += ["--artist", "Ann", "--genre", "folk", "--seconds", "0.5", "--out", str(out)]
    if part == "prompt":
        audio = _hostile_folder(tmp_path / "audio", [case], metadata=False, good=False)
        args += ["--prompt", str(audio / AUDIO[case][0])]
    if part == "codes":  # upsample the top-level codes of an earlier run: not safetensors
        (tmp_path / "codes.safetensors").write_text("level2: 1 2 3")
        args += ["--codes", str(tmp_path / "codes.safetensors")]
    assert main([*args, "--no_progress", "--seed", "0"]) == 2
    if part == "prompt":
        reason = (
            "non finite"
            if case in ("nan", "inf")
            else ("empty" if case == "zero_bytes" else "corrupt")
        )
        _one_error(logs, rf"{AUDIO[case][0]}: {reason}")
    elif part == "codes":
        _one_error(logs, r"--codes \S+codes\.safetensors: not a readable safetensors file")
    elif case == "missing_folder" or (part == "students/middle" and case == "no_config"):
        _one_error(logs, MISSING_PART[part])
    else:
        _one_error(logs, *_damage_patterns(folder, case))
    assert not out.exists()


@pytest.mark.parametrize(
    "part, damage",
    [("vqvae", d) for d in ("no_config", "bad_json", "truncated_weights", "missing_tensors")]
    + [("middle", d) for d in ("bad_json", "other_kind", "no_weights", "misshaped_tensor")],
)
def test_distill(part, damage, models, tmp_path, logs):
    """``fastjukebox distill``: a damaged teacher part is one line; no output folder."""
    teacher, folder = _damaged(models, tmp_path, part, damage)
    data = _hostile_folder(tmp_path / "audio", [], metadata=False)
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(teacher), "--level", "middle", "--data_dir", str(data)]
    args += ["--output_dir", str(out), "--code_cache_dir", str(tmp_path / "codes"), *TRAIN]
    assert main(args) == 2
    _one_error(logs, *_damage_patterns(folder, damage))
    assert not out.exists() and not (tmp_path / "codes").exists()


@pytest.mark.parametrize(
    "case", ["bottom/no_weights", "top/other_kind", "students/bottom/unexpected_tensor", "audio"]
)
def test_eval(case, models, tmp_path, logs):
    """``fastjukebox eval``: a damaged teacher or student, or held-out audio with nothing
    usable (NaN, Inf, silent), is one line; no report is written."""
    teacher = models
    audio = _hostile_folder(
        tmp_path / "audio",
        [] if case != "audio" else ["nan", "inf", "silent"],
        good=case != "audio",
    )
    if case != "audio":
        part, damage = case.rsplit("/", 1)
        teacher, folder = _damaged(models, tmp_path, part, damage)
    out = tmp_path / "report"
    args = ["eval", "--teacher", str(teacher), "--data", str(audio), "--out", str(out)]
    assert main(args) == 2
    if case == "audio":
        _one_error(logs, r"no usable audio", r"non finite 2, silent 1")
        _check_skip_warnings(logs, ["nan.wav", "inf.wav", "silent.wav"])
    else:
        _one_error(logs, *_damage_patterns(folder, damage))
    assert not out.exists()


def test_prompt_audio_with_nan_is_refused(models):
    """A prompt given as an array (not a file) with NaN or Inf samples is one clear error."""
    from teacher.config import ConfigError
    from teacher.generate.jukebox import Jukebox

    prompt = _tone(0.5)[:, 0]
    prompt[100] = np.nan
    jb = Jukebox.from_pretrained(models)
    with pytest.raises(ConfigError, match="prompt audio has 1 NaN or Inf samples"):
        jb.generate_from_audio(prompt, duration_seconds=1.0, progress=False)


# ---------------------------------------------------------------------------------------------
# the converter


class _System:
    """A pickle that calls ``os.system`` when loaded unsafely."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _write_checkpoint(path: Path, case: str) -> None:
    payload = {"model": {"w": torch.zeros(2)}, "hps": _System()}
    if case == "system_zip":
        torch.save(payload, path)
    elif case == "system_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif case == "system_pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    elif case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "text_file":
        path.write_text("<html>404 Not Found</html>")
    elif case == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        _truncate(path)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("system_zip", r"refused for safety: its pickle calls posix\.system"),
        ("system_legacy", r"refused for safety: its pickle calls posix\.system"),
        ("system_pickle", r"refused for safety: its pickle calls posix\.system"),
        ("zero_bytes", r"empty file \(0 bytes\)"),
        ("text_file", r"not a PyTorch checkpoint \(unpickling failed: "),
        ("truncated", r"truncated or corrupt checkpoint"),
    ],
)
def test_convert(case, pattern, tmp_path, logs):
    """``fastjukebox convert``: a pickle that calls code names the global and says it was
    refused for safety, never advising ``weights_only=False``; a broken file is one line."""
    src = tmp_path / "openai"
    src.mkdir()
    names = ["vqvae.pth.tar", "prior_level_0.pth.tar", "prior_level_1.pth.tar"]
    for name in [*names, "prior_level_2.pth.tar"]:
        _write_checkpoint(src / name, case)
    out = tmp_path / "teacher"
    assert main(["convert", "--from", "openai", str(src), "--out", str(out)]) == 2
    msg = _one_error(logs, r"\.pth\.tar: " + pattern)
    assert "weights_only" not in msg
    assert not out.exists() and not list(tmp_path.glob(".teacher*"))


# ---------------------------------------------------------------------------------------------
# lyrics


def test_sample_reports_transliterated_and_dropped_lyrics(models, tmp_path, logs):
    """Lyric characters outside the model's alphabet are reported on the console when sampling:
    which were transliterated to what and which were dropped (and in labels.json)."""
    out = tmp_path / "song"
    args = ["sample", "--teacher", str(models), "--artist", "Ann", "--genre", "folk"]
    args += ["--lyrics", "Déjà vu @ straße", "--seconds", "0.3", "--levels", "top"]
    assert main([*args, "--out", str(out), "--no_progress", "--seed", "0"]) == 0
    (warning,) = [m for m in logs.text(logging.WARNING) if m.startswith("lyrics")]
    assert "3 transliterated ('é'→'e'×1, 'à'→'a'×1, 'ß'→'ss'×1)" in warning
    assert "1 dropped ('@'×1)" in warning
    info = json.loads((out / "labels.json").read_text())
    assert info["lyrics_transliterated"] == 3 and info["lyrics_dropped"] == 1
