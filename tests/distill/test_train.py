"""The distillation trainer end to end on a tiny TRAINED teacher: the reverse KL and the MR-STFT
loss fall, checkpoints resume exactly, two processes keep identical weights, bad settings fail
before any work."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.config import DEFAULT_WEIGHTS, DistillConfig, student_config_from_preset
from distill.step import decode_codes, decode_straight_through, distill_step, step_generator
from distill.teacher import load_teacher
from distill.train import build_parser, run
from teacher.config import ConfigError
from teacher.io import STATE_FILE, model_fingerprint, read_json
from teacher.train.loop import EMA
from tests.launch import subprocess_env, two_cpu_processes

SR = 8000
WEIGHTS = "model.safetensors"


def _run(args: list[str], module: str = "distill.train", env: dict | None = None) -> str:
    cmd = [sys.executable, "-m", module, *args]
    res = subprocess.run(
        cmd, env=env or subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return " ".join((res.stdout + res.stderr).split())


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _state(out: Path, step: int) -> dict:
    return read_json(out / "checkpoints" / f"checkpoint-{step}" / STATE_FILE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Synth songs at 8 kHz, a tiny VQ-VAE trained 150 steps and a tiny middle upsampler
    trained 300 steps on its codes (~25 s), laid out as a teacher folder."""
    from teacher.data.synth import ARTISTS, GENRES, SynthConfig, write_synth_dataset

    base = tmp_path_factory.mktemp("distill")
    data = base / "data"
    synth = SynthConfig(
        n_songs=4,
        seconds=4.0,
        sample_rate=SR,
        seed=0,
        artists=tuple(ARTISTS)[:2],
        genres=tuple(GENRES)[:2],
    )
    write_synth_dataset(data, synth, progress=False)
    common = [
        "--data_dir",
        str(data),
        "--preset",
        "tiny",
        "--cache_dir",
        str(base / "decoded"),
        "--learning_rate",
        "3e-3",
        "--lr_warmup_steps",
        "0",
        "--checkpointing_steps",
        "1000",
        "--logging_steps",
        "50",
    ]
    _run(
        ["vqvae", *common, "--output_dir", str(base / "vq"), "--max_train_steps", "150"]
        + ["--train_batch_size", "4"],
        module="teacher.train",
    )
    _run(
        ["prior", "--level", "middle", "--vqvae", str(base / "vq" / "model"), *common]
        + ["--output_dir", str(base / "mid"), "--max_train_steps", "300"]
        + ["--train_batch_size", "8", "--code_cache_dir", str(base / "codes")],
        module="teacher.train",
    )
    teacher = base / "teacher"
    shutil.copytree(base / "vq" / "model", teacher / "vqvae")
    shutil.copytree(base / "mid" / "model", teacher / "middle")
    return {"base": base, "data": data, "teacher": teacher, "codes": base / "codes"}


def _args(s: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--teacher",
        str(s["teacher"]),
        "--level",
        "middle",
        "--data_dir",
        str(s["data"]),
        "--preset",
        "tiny",
        "--output_dir",
        str(out),
        "--cache_dir",
        str(s["base"] / "decoded"),
        "--code_cache_dir",
        str(s["codes"]),
        "--train_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--lr_warmup_steps",
        "0",
        "--logging_steps",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def categorical(setup) -> Path:
    """150 steps of the categorical student (K=3), checkpoints at 75 and 150 (~10 s)."""
    out = setup["base"] / "categorical"
    extra = ("--max_train_steps", "150", "--checkpointing_steps", "75", "--validation_steps", "75")
    _run(_args(setup, out, *extra))
    return out


# ---------------------------------------------------------------------------------------------


def test_categorical_distillation_lowers_kl_and_mrstft(setup, categorical):
    from student.base import load_student

    recs = _records(categorical)
    assert [r["step"] for r in recs] == list(range(1, 151))
    first, last = recs[:3], recs[-10:]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    # the main quality signal: the estimated reverse KL per token, at both temperatures
    for key in ("kl_per_token", "kl_per_token_t1"):
        assert mean(last, key) < 0.5 * mean(first, key), (key, mean(first, key), mean(last, key))
    # the decoded student audio moves towards the decoded truth of the same windows
    assert mean(last, "mrstft") < 0.9 * mean(first, "mrstft")
    assert mean(last, "teacher_nll_bits") < mean(first, "teacher_nll_bits")
    # a uniform student (log 32 nats) at the start, a sharper one at the end
    assert first[0]["student_entropy"] == pytest.approx(math.log(32), abs=0.05)
    assert mean(last, "student_entropy") < math.log(32) - 0.3
    for r in recs:
        assert r["kl_per_token"] == r["kl"]  # the categorical KL term is the closed form
        assert r["loss"] == pytest.approx(
            r["kl"] + 0.1 * r["kl_intermediate"] + r["mrstft"], rel=1e-5
        )
        assert all(math.isfinite(v) for v in r.values())
        assert {"accuracy", "kl_stage0", "kl_stage2", "ce_weight"} <= set(r)
    assert {"val_kl_per_token", "val_mrstft"} <= set(recs[74]) and "val_mrstft" not in recs[73]

    # the export: EMA weights, config, the teacher it imitates, the teacher's vocabulary
    student_dir = categorical / "student"
    names = {p.name for p in student_dir.iterdir()}
    assert {"config.json", "model.safetensors", "teacher.json", "vocab.json"} <= names
    link = read_json(student_dir / "teacher.json")
    assert link["fingerprint"] == model_fingerprint(setup["teacher"] / "middle")
    assert link["vqvae_fingerprint"] == model_fingerprint(setup["teacher"] / "vqvae")
    assert link["level"] == 1 and link["level_name"] == "middle"
    assert link["teacher_temperature"] == 0.99
    student = load_student(student_dir)
    assert student.cfg.family == "categorical" and student.cfg.n_stages == 3
    assert student.cfg.loss.kl_intermediate == 0.1 and student.cfg.loss.teacher_temperature == 0.99
    live = load_student(student_dir)  # rebuilt, then the live (non-EMA) weights loaded
    from teacher.io import load_tensors

    live.load_state_dict(load_tensors(categorical / "checkpoints/checkpoint-150/model.safetensors"))
    assert _state(categorical, 150)["ema_digests"] != _state(categorical, 150)["weight_digests"]
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(student.state_dict().values(), live.state_dict().values())
    )
    assert diff > 0  # the EMA is what is exported
    codes = student.sample(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long))
    assert codes.shape == (2, 32) and 0 <= int(codes.min()) and int(codes.max()) < 32
    # validation samples: decoded EMA student and truth, one window each
    for step in (75, 150):
        for name in ("0_student.wav", "1_true.wav"):
            x, sr = sf.read(categorical / "validation" / f"step-{step}" / name)
            assert sr == SR and len(x) == 32 * 32
    args = read_json(categorical / "train_args.json")
    assert args["distill"]["weights"] == DEFAULT_WEIGHTS and args["teacher"]["level"] == 1


def test_resume_continues_and_matches_an_unbroken_run(setup, categorical, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(
        categorical / "checkpoints" / "checkpoint-75", again / "checkpoints" / "checkpoint-75"
    )
    extra = ("--max_train_steps", "150", "--checkpointing_steps", "75", "--validation_steps", "75")
    log = _run(_args(setup, again, *extra, "--resume_from_checkpoint", "latest"))
    assert "resumed from" in log and "up to date" in log  # the code cache is reused
    assert [r["step"] for r in _records(again)] == list(range(76, 151))
    mine, ref = _state(again, 150), _state(categorical, 150)
    # student, EMA, optimiser, scheduler, data order and noise restored: the same weights
    assert mine["weight_digests"] == ref["weight_digests"]
    assert mine["ema_digests"] == ref["ema_digests"]
    assert mine["world_size"] == 1

    # resuming against another teacher is refused before any work
    other = tmp_path / "other_teacher"
    shutil.copytree(setup["teacher"], other)
    from teacher.prior.model import Prior

    prior = Prior.from_pretrained(other / "middle")
    with torch.no_grad():
        prior.prior.x_emb.weight.add_(0.01)
    prior.save_pretrained(other / "middle")
    shutil.copy(setup["teacher"] / "middle" / "vqvae.json", other / "middle" / "vqvae.json")
    shutil.copy(setup["teacher"] / "middle" / "vocab.json", other / "middle" / "vocab.json")
    args = build_parser().parse_args(
        _args(setup, again, "--max_train_steps", "160", "--resume_from_checkpoint", "latest")
    )
    args.teacher = str(other)
    with pytest.raises(ConfigError, match="another teacher"):
        run(args)


def test_init_from_fine_tunes_a_distilled_student(setup, categorical, tmp_path):
    from safetensors.torch import load_file

    from teacher.io import ModelFolderError

    init = categorical / "student"  # --init_from takes the run's folder or its export
    args = _args(setup, tmp_path / "x")
    del args[args.index("--preset") : args.index("--preset") + 2]  # the folder's architecture
    # at a vanishing learning rate the run exports the folder's weights (a fresh EMA of them),
    # and its first step scores them: the KL of a trained student, not of a fresh one
    out = tmp_path / "ft"
    extra = ["--init_from", str(categorical), "--max_train_steps", "2", "--tv_weight", "1"]
    _run([*_swap_out(args, out), *extra, "--mrstft_weight", "0", "--learning_rate", "1e-12"])
    mine, theirs = load_file(out / "student" / "model.safetensors"), load_file(init / WEIGHTS)
    assert mine.keys() == theirs.keys()
    assert all(torch.allclose(mine[k], theirs[k], rtol=0, atol=1e-8) for k in mine)
    saved = read_json(out / "train_args.json")
    assert saved["init_from"]["fingerprint"] == model_fingerprint(init)
    assert saved["distill"]["weights"]["tv"] == 1.0 and saved["distill"]["weights"]["mrstft"] == 0
    first = _records(out)[0]
    assert first["kl"] < 0.5 * _records(categorical)[0]["kl"]
    assert first["draft_acceptance"] == pytest.approx(1.0 - first["tv"])

    parser = build_parser()
    # the dry run plans the folder's architecture (the tiny preset's K = 3, not small's 4)
    plan = run(parser.parse_args([*_swap_out(args, tmp_path / "plan"), "--dry_run"] + extra[:2]))
    n_params = sum(v.numel() for v in theirs.values())
    assert read_json(plan)["student_params"] == n_params
    bad = tmp_path / "bad"
    for extra, match in (
        (["--init_from", str(init), "--preset", "tiny"], "exclude each other"),
        (["--init_from", str(init), "--num_stages", "2"], "conflicts with --init_from"),
        (["--init_from", str(tmp_path / "nowhere")], "no such student folder"),
        (["--init_from", str(setup["teacher"] / "middle")], "student"),
        (["--init_from", str(init), "--student", "gaussian"], "categorical student"),
    ):
        with pytest.raises(ConfigError, match=match):
            run(parser.parse_args([*_swap_out(args, bad), *extra]))
    assert not bad.exists()
    # a folder whose weights are damaged: one error naming it, before any step
    broken = tmp_path / "broken"
    shutil.copytree(init, broken)
    (broken / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ModelFolderError, match=str(broken)):
        run(parser.parse_args([*_swap_out(args, bad), "--init_from", str(broken)]))
    assert not (bad / "checkpoints").exists()


def _swap_out(args: list[str], out: Path) -> list[str]:
    """``args`` with ``--output_dir`` set to ``out``."""
    args = list(args)
    args[args.index("--output_dir") + 1] = str(out)
    return args


def test_gaussian_students_and_the_optional_terms(setup, tmp_path):
    # the calibrated reverse KL, through the diffusers flag name of the teacher
    out = tmp_path / "gauss"
    args = _args(setup, out, "--student", "gaussian", "--max_train_steps", "4")
    args[args.index("--teacher")] = "--pretrained_teacher_model"
    _run(args)
    for r in _records(out):
        assert all(math.isfinite(v) for v in r.values())
        assert r["kl"] == r["kl_per_token"]
    assert read_json(out / "student" / "config.json")["family"] == "gaussian"

    # Monte-Carlo KL, power loss and a CE warm-up on teacher samples, via the console script
    out = tmp_path / "gauss_mc"
    extra = [
        "--student",
        "gaussian",
        "--gaussian_loss",
        "mc",
        "--power_weight",
        "0.1",
        "--ce_weight",
        "1",
        "--ce_warmup_steps",
        "2",
        "--ce_target",
        "teacher",
        "--max_train_steps",
        "4",
    ]
    _run(["distill", *_args(setup, out, *extra)], module="fastjukebox")
    recs = _records(out)
    assert [r["ce_weight"] for r in recs] == [1.0, 0.5, 0.0, 0.0]
    assert "ce" in recs[0] and "ce" not in recs[-1]
    for r in recs:
        assert all(math.isfinite(v) for v in r.values())
        assert {"power", "mc_kl", "mc_cross_entropy", "mc_entropy"} <= set(r)
        assert r["kl"] == r["mc_kl"]  # the trained KL term is the Monte-Carlo one
        assert r["mc_kl"] == pytest.approx(r["mc_cross_entropy"] - r["mc_entropy"], rel=1e-4)


def test_step_gradients_reach_the_student_only(setup):
    from student import CategoricalIAF
    from teacher.data.codes import CodeCache, CodeDataset
    from teacher.data.labels import LabelConfig

    teacher = load_teacher(setup["teacher"], 1)
    dcfg = DistillConfig(level=1, preset="tiny", weights={"power": 0.1})
    cfg = student_config_from_preset(dcfg, teacher.prior.cfg, teacher.vqvae.cfg)
    torch.manual_seed(0)
    student = CategoricalIAF.from_teacher(teacher.prior, cfg)
    labels = LabelConfig(max_genres=teacher.prior.cfg.labels.max_genres)
    ds = CodeDataset(CodeCache(setup["codes"]), 1, 32, labels, vocab=teacher.vocab)
    batch = torch.utils.data.default_collate([ds.item(i, 0) for i in range(3)])
    gen = step_generator(torch.device("cpu"), 0, 0, 1, 0)
    out = distill_step(student, teacher, batch, cfg.loss, dcfg.loss_weights(), gen)
    out.loss.backward()
    assert set(out.terms) == {"kl", "kl_intermediate", "mrstft", "power"}
    assert all(p.grad is None for p in teacher.prior.parameters())
    assert all(p.grad is None for p in teacher.vqvae.parameters())
    assert student.stages[-1].net.out[-1].weight.grad.abs().sum() > 0
    assert student.stages[0].net.out[-1].weight.grad.abs().sum() > 0  # via kl_intermediate
    # one teacher pass at temperature 1 gives the T=1 estimate: equal at teacher_temperature 1
    cfg1 = student_config_from_preset(
        DistillConfig(level=1, preset="tiny", teacher_temperature=1.0),
        teacher.prior.cfg,
        teacher.vqvae.cfg,
    )
    gen = step_generator(torch.device("cpu"), 0, 0, 1, 0)
    out1 = distill_step(student, teacher, batch, cfg1.loss, {"kl": 1.0}, gen)
    assert torch.equal(out1.codes, out.codes)  # same noise, same tokens
    assert float(out1.metrics["kl_per_token"]) == pytest.approx(
        float(out1.metrics["kl_per_token_t1"]), rel=1e-5
    )
    # the total variation term (weighted only when asked) and the drafts' expected acceptance
    assert "tv" not in out1.terms
    gen = step_generator(torch.device("cpu"), 0, 0, 1, 0)
    tv = distill_step(student, teacher, batch, cfg1.loss, {"tv": 1.0}, gen)
    assert set(tv.terms) == {"kl", "kl_intermediate", "tv"} and torch.equal(tv.codes, out.codes)
    assert float(tv.loss) == pytest.approx(float(tv.terms["tv"]))
    assert float(tv.metrics["draft_acceptance"]) == pytest.approx(1.0 - float(tv.terms["tv"]))
    assert 0.0 < float(tv.terms["tv"]) < 1.0
    # the straight-through decode is exact in the forward pass: truth vs truth is 0 apart
    soft = torch.nn.functional.one_hot(batch["codes"], 32).float().requires_grad_(True)
    a = decode_straight_through(teacher.vqvae, soft, 1)
    b = decode_codes(teacher.vqvae, batch["codes"], 1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ema_and_step_noise():
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin, decay=0.999)
    before = ema.model.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    d = ema.current_decay()
    assert d == pytest.approx(1 / 10)  # diffusers' warm-up: min(decay, (1 + n) / (10 + n))
    ema.update(lin)
    torch.testing.assert_close(ema.model.weight, d * before + (1 - d) * lin.weight)
    assert not ema.model.weight.requires_grad
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999
    g = step_generator(torch.device("cpu"), 0, 1, 2, 0)
    same = step_generator(torch.device("cpu"), 0, 1, 2, 0)
    other_rank = step_generator(torch.device("cpu"), 0, 1, 2, 1)
    x = torch.rand(4, generator=g)
    assert torch.equal(x, torch.rand(4, generator=same))
    assert not torch.equal(x, torch.rand(4, generator=other_rank))


def test_bad_settings_fail_before_any_work(setup, tmp_path):
    parser = build_parser()
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match=str(setup["teacher"] / "bottom")):
        run(parser.parse_args(_args(setup, out, "--max_train_steps", "1") + ["--level", "bottom"]))
    with pytest.raises(ConfigError, match="upsampler"):
        run(parser.parse_args(_args(setup, out) + ["--level", "top"]))
    with pytest.raises(ConfigError, match="teacher VQ-VAE folder"):
        args = parser.parse_args(_args(setup, out))
        args.teacher = str(tmp_path / "nowhere")
        run(args)
    with pytest.raises(ConfigError, match="exceeds the teacher's window"):
        run(parser.parse_args(_args(setup, out, "--n_ctx", "64")))
    with pytest.raises(ConfigError, match="multiple of the upsampling ratio"):
        run(parser.parse_args(_args(setup, out, "--n_ctx", "30")))
    with pytest.raises(ConfigError, match="ce_warmup_steps"):
        run(parser.parse_args(_args(setup, out, "--ce_weight", "1")))
    assert not out.exists()

    # the console script: one line, exit code 2, no traceback
    from fastjukebox.cli import main

    code = main(["distill", *_args(setup, out), "--level", "bottom"])
    assert code == 2 and not out.exists()

    for bad in (
        dict(weights={"kll": 1.0}),
        dict(weights={"kl": -1.0}),
        dict(weights={"kl": 0.0, "kl_intermediate": 0.0, "mrstft": 0.0}),
        dict(weights={"tv": -0.5}),
        dict(family="diffusion"),
        dict(preset="huge"),
        dict(n_stages=0),
        dict(teacher_temperature=0.0),
        dict(ema_decay=1.0),
        dict(gaussian_loss="reinforce"),
        dict(ce_target="nature"),
        dict(validation_steps=-1),
    ):
        with pytest.raises(ConfigError):
            DistillConfig(**bad).validate()
    weights = DistillConfig(weights={"power": 0.5}).loss_weights()
    assert weights == {**DEFAULT_WEIGHTS, "power": 0.5}
    # the total variation alone is a distillation objective (a draft model's)
    only_tv = {"kl": 0.0, "kl_intermediate": 0.0, "mrstft": 0.0, "tv": 1.0}
    assert DistillConfig(weights=only_tv).validate().loss_weights()["tv"] == 1.0


@pytest.mark.slow
def test_two_processes_keep_identical_weights(setup, tmp_path):
    out = tmp_path / "ddp"
    args = _args(setup, out, "--max_train_steps", "3", "--checkpointing_steps", "3")
    args[args.index("--train_batch_size") + 1] = "4"
    cmd, env = two_cpu_processes("distill.train", args)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    state = _state(out, 3)
    assert state["world_size"] == 2
    assert len(state["weight_digests"]) == 2
    assert state["weight_digests"][0] == state["weight_digests"][1]
    assert state["ema_digests"][0] == state["ema_digests"][1]
    names = {p.name for p in (out / "checkpoints" / "checkpoint-3").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "student"} <= names
    assert [r["step"] for r in _records(out)] == [1, 2, 3]
