"""``distill --dry_run``: the teacher and the student at the teacher's shapes on the meta device,
one step's shapes checked, the memory plan printed; at released shapes without allocating."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.config import DistillConfig, student_config_from_preset
from distill.dry_run import DRY_RUN_FILE, plan_distillation
from distill.losses import mrstft_loss
from distill.step import distill_step, step_generator
from distill.teacher import Teacher
from distill.train import build_parser, main, run
from student import CategoricalIAF
from teacher.config import ConfigError, save_config
from teacher.presets import jukebox_vqvae, tiny_top_prior, tiny_upsampler, tiny_vqvae, upsampler
from teacher.prior.config import save_prior_config
from teacher.prior.model import Prior
from teacher.train.memory import SavedTensorMeter
from teacher.vqvae import VQVAE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A teacher folder with a random tiny VQ-VAE and middle upsampler (weights and configs)."""
    root = tmp_path_factory.mktemp("dry") / "teacher"
    torch.manual_seed(0)
    VQVAE(tiny_vqvae(8000)).save_pretrained(root / "vqvae")
    Prior(tiny_upsampler(1)).save_pretrained(root / "middle")
    return root


def _args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--teacher",
        str(teacher),
        "--level",
        "middle",
        "--preset",
        "tiny",
        "--data_dir",
        str(out / "no_data_needed"),
        "--output_dir",
        str(out),
        "--train_batch_size",
        "3",
        *extra,
    ]


def test_dry_run_tiny(teacher_dir, tmp_path, capsys):
    out = tmp_path / "plan"
    assert main(_args(teacher_dir, out, "--dry_run")) == 0
    printed = capsys.readouterr().out
    assert "distillation dry run" in printed and "| total |" in printed
    plan = json.loads((out / DRY_RUN_FILE).read_text())
    t, v = plan["n_ctx"], 32
    assert (plan["batch"], plan["level"], plan["family"]) == (3, 1, "categorical")
    shapes = plan["shapes"]
    assert shapes["student codes"] == [3, t] and shapes["teacher logits"] == [3, t, v]
    assert shapes["student logits stage 0"] == [3, t, v]
    assert shapes["decoded audio"] == [3, 1, t * 32]  # middle hop 32
    assert shapes["loss term kl"] == [] and shapes["loss term mrstft"] == []
    # the plan's parameters and bytes are the real student's and teacher's
    dcfg = DistillConfig(level=1, preset="tiny")
    scfg = student_config_from_preset(dcfg, tiny_upsampler(1), tiny_vqvae(8000))
    n = sum(p.numel() for p in CategoricalIAF(scfg).parameters())
    teacher_bytes = sum(
        t.numel() * t.element_size()
        for m in (Prior(tiny_upsampler(1)), VQVAE(tiny_vqvae(8000)))
        for t in [*m.parameters(), *m.buffers()]
    )
    step = plan["step"]
    assert plan["student_params"] == n and step["weights"] == 4 * n
    assert (step["grads"], step["optimizer"], plan["ema"]) == (4 * n, 8 * n, 4 * n)
    assert step["frozen_weights"] == teacher_bytes and step["activations"] > 0
    assert (
        plan["memory_bytes"]["total"]
        == sum(step[k] for k in ("weights", "grads", "optimizer", "frozen_weights", "activations"))
        + plan["ema"]
    )
    # nothing was trained or exported
    assert sorted(p.name for p in out.iterdir()) == [DRY_RUN_FILE]
    # the MR-STFT module cache holds no fake tensors afterwards: a real loss still works
    a = torch.randn(1, 1, 512)
    assert torch.isfinite(mrstft_loss(a, a.flip(-1), (128, 64), (32, 16), (128, 64)))


def test_dry_run_activations_equal_a_real_step(teacher_dir):
    """The meta-device count of the step's activations equals the bytes the same step keeps
    for its backward pass on real tensors (to a few bytes of STFT window storage)."""
    pc, vc = tiny_upsampler(1), tiny_vqvae(8000)
    dcfg = DistillConfig(level=1, preset="tiny")
    scfg = student_config_from_preset(dcfg, pc, vc)
    plan = plan_distillation(pc, vc, scfg, dcfg, batch=2)
    torch.manual_seed(0)
    prior = Prior.from_pretrained(teacher_dir / "middle").eval().requires_grad_(False)
    vqvae = VQVAE.from_pretrained(teacher_dir / "vqvae").eval().requires_grad_(False)
    student = CategoricalIAF(scfg).train()
    teacher = Teacher.in_memory(prior, vqvae)
    t = pc.n_ctx
    g = torch.Generator().manual_seed(0)
    data = {
        "codes": torch.randint(0, pc.l_bins, (2, t), generator=g),
        "upper": torch.randint(0, pc.l_bins, (2, t // pc.upsample_ratio), generator=g),
        "labels": torch.zeros(2, pc.label_size, dtype=torch.long),
    }
    frozen = [*student.parameters(), *prior.parameters(), *vqvae.parameters(), *vqvae.buffers()]
    with SavedTensorMeter(frozen) as meter:
        out = distill_step(
            student,
            teacher,
            data,
            scfg.loss,
            dcfg.loss_weights(),
            step_generator(torch.device("cpu"), 0, 0, 0, 0),
        )
    out.loss.backward()
    # equal to a few bytes: a real periodic Hann window (the MR-STFT's) keeps one more sample
    # in its storage than the fake one
    assert abs(meter.total - plan.step.activations) <= 64, (meter.total, plan.step.activations)


def test_dry_run_released_upsampler_allocates_nothing(tmp_path):
    """A teacher folder holding only the released configs (981M-parameter bottom upsampler,
    the 44.1 kHz VQ-VAE; no weights): the dry run builds and steps everything at released
    shapes while the process stays far below the 3.66 GiB the teacher's fp32 weights alone
    would take."""
    teacher = tmp_path / "released"
    (teacher / "vqvae").mkdir(parents=True)
    (teacher / "bottom").mkdir()
    save_config(jukebox_vqvae(), str(teacher / "vqvae" / "config.json"))
    save_prior_config(upsampler(0), str(teacher / "bottom" / "config.json"))
    out = tmp_path / "plan"
    code = (
        "import resource, sys; from distill.train import main; "
        "rc = main(sys.argv[1:]); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    args = _args(teacher, out, "--dry_run", "--teacher_dtype", "bfloat16")
    args[args.index("middle")] = "bottom"
    args[args.index("tiny")] = "small"
    args[args.index("3")] = "1"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    maxrss_kib = int(res.stdout.split("MAXRSS")[-1].split()[0])
    plan = json.loads((out / DRY_RUN_FILE).read_text())
    assert plan["teacher_params"] == 981_298_176 and plan["n_ctx"] == 8192
    assert plan["shapes"]["teacher logits"] == [1, 8192, 2048]
    assert plan["shapes"]["decoded audio"] == [1, 1, 8192 * 8]
    assert plan["memory_bytes"]["total"] > 6 * 2**30
    assert maxrss_kib * 1024 < 1.5 * 2**30, maxrss_kib


def test_dry_run_bad_input(teacher_dir, tmp_path):
    parser = build_parser()
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match="has no effect on distillation"):
        run(parser.parse_args(_args(teacher_dir, out, "--dry_run", "--gradient_checkpointing")))
    with pytest.raises(ConfigError, match="has no effect on distillation"):
        run(parser.parse_args(_args(teacher_dir, out, "--gradient_checkpointing")))
    with pytest.raises(ConfigError, match="exceeds the teacher's window"):
        run(parser.parse_args(_args(teacher_dir, out, "--dry_run", "--n_ctx", "4096")))
    with pytest.raises(ConfigError, match="upsampler level"):
        args = _args(teacher_dir, out, "--dry_run")
        args[args.index("middle")] = "top"
        run(parser.parse_args(args))
    # a top prior in the middle folder: named as the wrong level
    wrong = tmp_path / "wrong"
    VQVAE(tiny_vqvae(8000)).save_pretrained(wrong / "vqvae")
    (wrong / "middle").mkdir()
    save_prior_config(tiny_top_prior(), str(wrong / "middle" / "config.json"))
    with pytest.raises(ConfigError, match="level-2 prior"):
        run(parser.parse_args(_args(wrong, out, "--dry_run")))
    assert not out.exists()
