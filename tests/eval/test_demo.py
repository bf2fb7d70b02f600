"""The one-command demo (eval.demo): the smoke preset end to end, re-running, data errors.

The end-to-end run trains tiny models for two steps each (~12 s on 2 idle cores, the whole file
~15 s) and is shared by the two tests that need it through a module fixture; the error paths
and the budget plan are fast.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file

from eval.demo import (
    DEMO,
    DEMO_FILE,
    RUNS,
    SAMPLE_MODES,
    SMOKE,
    STAGES,
    DemoConfig,
    DemoError,
    plan_steps,
    planned_seconds,
    run_demo,
)
from eval.demo import main as demo_main
from teacher.config import ConfigError
from teacher.data.dataset import DataError


def _mtimes(root: Path) -> dict[str, int]:
    """mtime of every file under ``root`` except the demo's own record."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and p.name != DEMO_FILE
    }


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    return run_demo(
        DemoConfig(out=str(out), preset="smoke", seed=0, from_scratch=True), progress=False
    )


def test_smoke_demo_runs_every_stage_and_its_products_load(smoke):
    from student import load_student
    from teacher.generate.jukebox import Jukebox

    out = smoke.out
    assert [s.name for s in smoke.stages] == list(STAGES)
    assert set(smoke.statuses.values()) == {"ran"}, smoke.statuses
    assert smoke.steps == dict.fromkeys(RUNS, SMOKE.fixed_steps)

    # the data, the teacher (every prior trained on this VQ-VAE) and the four students
    assert len(list((out / "data" / "audio").glob("*.wav"))) == SMOKE.n_songs
    assert len(list((out / "heldout" / "audio").glob("*.wav"))) == SMOKE.heldout_songs
    jb = Jukebox.from_pretrained(smoke.teacher_dir)
    assert sorted(jb.priors) == [0, 1, 2]
    for family in ("categorical", "gaussian"):
        for level, name in ((1, "middle"), (0, "bottom")):
            student = load_student(smoke.students_dir / family / name)
            assert (student.cfg.family, student.cfg.level) == (family, level)
            link = json.loads((smoke.students_dir / family / name / "teacher.json").read_text())
            assert link["level"] == level

    # one song in every mode, of the requested length at every level
    sr, seconds = SMOKE.sample_rate, SMOKE.sample_seconds
    n = round(seconds * sr / 128) * 128  # whole top-level codes
    top_codes = None
    for mode in SAMPLE_MODES:
        folder = smoke.samples[mode]
        for wav in ("level0_bottom.wav", "level1_middle.wav"):
            audio, rate = sf.read(folder / wav)
            assert rate == sr and len(audio) == n, (mode, wav)
        codes = load_file(str(folder / "codes.safetensors"))
        assert codes["level0"].shape[-1] == n // 8 and codes["level1"].shape[-1] == n // 32
        # the modes upsample the SAME top-level codes
        if top_codes is None:
            top_codes = codes["level2"]
        assert codes["level2"].equal(top_codes)
        labels = json.loads((folder / "labels.json").read_text())
        assert labels["sampling_mode"] == mode
    hybrid = json.loads((smoke.samples["hybrid"] / "labels.json").read_text())
    assert hybrid["level_modes"] == {"middle": "exact", "bottom": "student"}

    assert smoke.report_dir is not None and (smoke.report_dir / "report.html").is_file()
    record = json.loads((out / DEMO_FILE).read_text())
    assert {k: v["status"] for k, v in record["stages"].items()} == smoke.statuses


def test_rerun_skips_finished_stages_and_resumes_an_interrupted_one(smoke):
    out = smoke.out
    before = _mtimes(out)
    again = run_demo(
        DemoConfig(out=str(out), preset="smoke", seed=0, from_scratch=True), progress=False
    )
    assert set(again.statuses.values()) == {"skipped"}, again.statuses
    assert _mtimes(out) == before  # nothing was rewritten
    assert again.seconds < smoke.seconds

    # a stage killed after its last checkpoint but before publishing: its product is missing,
    # the run folder holds the checkpoint; the re-run resumes there and trains nothing new
    weights = (out / "teacher" / "bottom" / "model.safetensors").read_bytes()
    ckpts = sorted((out / "runs" / "bottom" / "checkpoints").iterdir())
    shutil.rmtree(out / "teacher" / "bottom")
    shutil.rmtree(out / "samples" / "speculative")
    third = run_demo(
        DemoConfig(out=str(out), preset="smoke", seed=0, from_scratch=True), progress=False
    )
    assert third.statuses["bottom"] == "resumed"
    assert third.statuses["samples"] == "resumed"
    assert (out / "teacher" / "bottom" / "model.safetensors").read_bytes() == weights
    assert sorted((out / "runs" / "bottom" / "checkpoints").iterdir()) == ckpts
    # same weights, same fingerprint: the students distilled from them are still current
    assert third.statuses["students"] == "skipped"
    assert (third.samples["speculative"] / "labels.json").is_file()


def test_missing_data_folder_is_one_clear_error(tmp_path):
    import torch

    out = tmp_path / "out"
    threads = torch.get_num_threads()
    cfg = DemoConfig(
        out=str(out), data=str(tmp_path / "nope"), preset="smoke", threads=1, from_scratch=True
    )
    with pytest.raises(DataError, match="no such folder"):
        run_demo(cfg, progress=False)
    assert not out.exists()
    assert torch.get_num_threads() == threads  # --threads is restored, even on an error
    # the command line reports it as one error line and exit code 2
    argv = [
        "--out",
        str(out),
        "--data",
        str(tmp_path / "nope"),
        "--preset",
        "smoke",
        "--from_scratch",
    ]
    assert demo_main([*argv, "--no_progress"]) == 2


@pytest.mark.parametrize("content", ["empty", "too_short", "not_audio"])
def test_data_folder_without_usable_audio_is_one_clear_error(tmp_path, content):
    data = tmp_path / "mine"
    data.mkdir()
    if content == "too_short":  # shorter than one top-prior window (0.51 s at 8 kHz)
        sf.write(data / "a.wav", 0.1 * np.sin(np.arange(800) / 5.0), SMOKE.sample_rate)
    elif content == "not_audio":
        (data / "b.wav").write_text("not a wav file")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no usable audio"):
        cfg = DemoConfig(out=str(out), data=str(data), preset="smoke", from_scratch=True)
        run_demo(cfg, progress=False)
    assert not (out / "teacher").exists() and not (out / "runs").exists()


def test_data_folder_with_files_beyond_the_timing_range_is_refused(tmp_path):
    data = tmp_path / "mine"
    data.mkdir()
    sr = SMOKE.sample_rate
    t = np.arange(31 * sr) / sr  # the tiny top prior's timing labels end at 30 s
    sf.write(data / "long.wav", 0.1 * np.sin(2 * np.pi * 220 * t), sr)
    with pytest.raises(ConfigError, match="timing range"):
        cfg = DemoConfig(out=str(tmp_path / "o"), data=str(data), preset="smoke", from_scratch=True)
        run_demo(cfg, False)


def test_a_folder_of_another_recipe_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    recipe = {"preset": "demo", "seed": 0, "data": None, "from_scratch": True}
    (out / DEMO_FILE).write_text(json.dumps({"recipe": recipe, "stages": {}}))
    with pytest.raises(DemoError, match="preset 'demo'"):
        run_demo(DemoConfig(out=str(out), preset="smoke", from_scratch=True), progress=False)


@pytest.mark.parametrize(
    "kw", [{"preset": "huge"}, {"minutes": 0.0}, {"minutes": math.inf}, {"seed": -1}]
)
def test_bad_config_is_refused(kw):
    with pytest.raises(ConfigError):
        DemoConfig(**kw).validate()


def test_the_budget_splits_into_steps_that_fit_it():
    for minutes in (5.0, 15.0, 60.0):
        steps = plan_steps(minutes, DEMO)
        assert set(steps) == set(RUNS) and all(n >= DEMO.min_steps for n in steps.values())
        est = sum(planned_seconds(steps, DEMO).values())
        if minutes >= 15:  # the default fits with the safety margin to spare
            assert est <= DEMO.safety * minutes * 60 + 1
    small, big = plan_steps(15.0, DEMO), plan_steps(60.0, DEMO)
    assert all(big[r] > small[r] for r in RUNS)
    # the categorical students get more of the budget than the Gaussian baseline
    assert small["categorical/middle"] > small["gaussian/middle"]
    # a budget below the fixed costs still plans the minimum (with a warning)
    assert plan_steps(0.5, DEMO) == dict.fromkeys(RUNS, DEMO.min_steps)
    assert plan_steps(1.0, SMOKE) == plan_steps(99.0, SMOKE) == dict.fromkeys(RUNS, 2)
    assert abs(sum(DEMO.fractions.values()) - 1.0) < 1e-9


# ---------------------------------------------------------------------------------------------
# the default run: shipped models (here the smoke run's, exported as a shipped folder)


@pytest.fixture(scope="module")
def shipped(smoke, tmp_path_factory):
    from eval.demo.pretrained import export_pretrained
    from teacher.config import load_config
    from teacher.data.synth import SynthConfig

    synth = load_config(SynthConfig, str(smoke.data_dir / "synth_config.json"))
    root = tmp_path_factory.mktemp("shipped") / "pretrained"
    return export_pretrained(smoke.teacher_dir, smoke.students_dir, root, synth, {"test": 1})


def test_default_demo_samples_and_reports_the_shipped_models_and_trains_nothing(shipped, tmp_path):
    import torch

    from eval.demo import PRETRAINED_STAGES
    from teacher.io import load_tensors, model_fingerprint, save_tensors

    # the shipped weights are fp16 and load back as the fp32 models they came from, rounded
    for part in ("vqvae", "top", "middle", "bottom"):
        state = load_tensors(shipped / "teacher" / part / "model.safetensors")
        assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    # only the students the default run uses are shipped (the Gaussian baselines are not)
    assert sorted(p.name for p in (shipped / "students").iterdir()) == ["categorical"]
    out = tmp_path / "out"
    res = run_demo(DemoConfig(out=str(out), preset="smoke"), progress=False, pretrained_dir=shipped)
    assert [s.name for s in res.stages] == list(PRETRAINED_STAGES)
    assert set(res.statuses.values()) == {"ran"}, res.statuses
    assert res.steps == {} and not (out / "runs").exists() and not (out / "data").exists()
    for part in ("vqvae", "top", "middle", "bottom"):  # the teacher folder is the shipped one
        assert model_fingerprint(out / "teacher" / part) == model_fingerprint(
            shipped / "teacher" / part
        )
    for mode in SAMPLE_MODES:
        labels = json.loads((out / "samples" / mode / "labels.json").read_text())
        assert labels["sampling_mode"] == mode
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["modes"]) == set(SMOKE.report_modes)
    for row in (*metrics["modes"].values(), metrics["bounds"]["ceiling"]):
        assert 0.0 <= row["voiced"] <= 1.0 and 0.0 <= row["flatness"] <= 1.0
    assert metrics["bounds"]["ground_truth"]["pitch_agreement"] == 1.0
    # a second run skips every stage
    again = run_demo(
        DemoConfig(out=str(out), preset="smoke"), progress=False, pretrained_dir=shipped
    )
    assert set(again.statuses.values()) == {"skipped"}, again.statuses
    # other shipped students (a new release): copied again, samples and report made again
    newer = tmp_path / "newer"
    shutil.copytree(shipped, newer)
    weights = newer / "students" / "categorical" / "bottom" / "model.safetensors"
    state = load_tensors(weights)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-2
    save_tensors(state, weights)
    third = run_demo(DemoConfig(out=str(out), preset="smoke"), progress=False, pretrained_dir=newer)
    assert third.statuses["models"] == third.statuses["samples"] == "ran", third.statuses
    assert model_fingerprint(out / "students" / "categorical" / "bottom") == model_fingerprint(
        newer / "students" / "categorical" / "bottom"
    )


def test_shipped_links_name_the_shipped_fp16_models(shipped):
    """The exported priors' vqvae.json and students' teacher.json name the shipped (cast)
    folders, relative to the root, by their fingerprints: a shipped prior can be fine-tuned on
    the shipped VQ-VAE (--init_from checks that link)."""
    from teacher.io import model_fingerprint

    vq_fp = model_fingerprint(shipped / "teacher" / "vqvae")
    for part in ("top", "middle", "bottom"):
        link = json.loads((shipped / "teacher" / part / "vqvae.json").read_text())
        assert link["path"] == "teacher/vqvae" and link["fingerprint"] == vq_fp
    for level in ("middle", "bottom"):
        link = json.loads(
            (shipped / "students" / "categorical" / level / "teacher.json").read_text()
        )
        assert link["prior"] == f"teacher/{level}" and link["vqvae_fingerprint"] == vq_fp
        assert link["fingerprint"] == model_fingerprint(shipped / "teacher" / level)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "student", "recipe"])
def test_damaged_shipped_models_are_one_error_suggesting_from_scratch(shipped, tmp_path, damage):
    from eval.demo.pretrained import PretrainedError

    broken = tmp_path / "pretrained"
    shutil.copytree(shipped, broken)
    weights = broken / "teacher" / "middle" / "model.safetensors"
    if damage == "student":
        (broken / "students" / "categorical" / "bottom" / "config.json").unlink()
    elif damage == "deleted":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (broken / "recipe.json").write_text("{not json")
    out = tmp_path / "out"
    with pytest.raises(PretrainedError) as err:
        run_demo(DemoConfig(out=str(out), preset="smoke"), progress=False, pretrained_dir=broken)
    msg = str(err.value)
    assert "--from_scratch" in msg and str(broken) in msg and "\n" not in msg
    named = {"recipe": "recipe.json", "student": "students/categorical/bottom"}
    assert named.get(damage, "teacher/middle") in msg
    assert not out.exists()  # nothing written, nothing trained


def test_data_needs_from_scratch():
    with pytest.raises(ConfigError, match="--from_scratch"):
        DemoConfig(data="mine").validate()
