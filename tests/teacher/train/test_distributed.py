"""Two processes launched with the repository's accelerate config (``configs/fsdp.yaml``) train a
prior with gradient checkpointing and resume exactly.

On this CPU-only machine accelerate never shards: it runs an FSDP config as DDP over gloo
(``MULTI_CPU``; its FSDP branch exists only for GPUs and other accelerators, and
``torch.distributed.fsdp`` behind accelerate is not reachable on CPUs), and the trainer says so
in a warning. So this is a **DDP** test of the launch line, the checkpoint/resume path and the
gradient checkpointing flag with two processes; FSDP itself needs a GPU machine.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from teacher.io import read_json
from tests.launch import ROOT, two_cpu_processes
from tests.teacher.train.test_prior import _args, _state, _steps, setup  # noqa: F401


def _launch(args: list[str]) -> str:
    cmd, env = two_cpu_processes("teacher.train", args, ROOT / "configs" / "fsdp.yaml")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return " ".join((res.stdout + res.stderr).split())


def _losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.mark.slow
def test_two_processes_with_the_fsdp_config_train_and_resume(setup, tmp_path):  # noqa: F811
    """4 steps unbroken vs 2 steps + resume from checkpoint-2 in a fresh folder: the resumed run
    logs steps 3 and 4 with the unbroken run's losses and ends on its weights."""
    out = tmp_path / "unbroken"
    extra = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--gradient_checkpointing"]
    args = _args(setup, out, "bottom", *extra)
    i = args.index("--code_cache_dir")
    args[i + 1] = str(tmp_path / "codes")  # rank 0 builds it while rank 1 waits
    log = _launch(args)
    assert "asks for FSDP but accelerate runs MULTI_CPU" in log
    assert "gradient checkpointing on in 1 transformer" in log
    assert read_json(out / "train_args.json")["train"]["gradient_checkpointing"] is True
    assert _steps(out) == [1, 2, 3, 4]
    state = _state(out, 4)
    assert state["world_size"] == 2
    assert len(state["weight_digests"]) == 2 and len(set(state["weight_digests"])) == 1

    again = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "checkpoint-2", again / "checkpoints" / "checkpoint-2")
    i = args.index("--output_dir")
    args[i + 1] = str(again)
    log = _launch([*args, "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log
    assert _steps(again) == [3, 4]
    unbroken, resumed = _losses(out), _losses(again)
    assert resumed == {3: unbroken[3], 4: unbroken[4]}
    assert _state(again, 4)["weight_digests"] == state["weight_digests"]


def test_load_full_state_fills_the_export_copy():
    """Sharded runs export from a CPU copy filled with the gathered state dict: tied aliases
    may be missing from it (the prior's head is its embedding), anything else is an error."""
    from teacher.presets import tiny_top_prior
    from teacher.prior.model import Prior
    from teacher.train.loop import load_full_state, weights_digest

    torch.manual_seed(0)
    live, copy = Prior(tiny_top_prior("single")), Prior(tiny_top_prior("single"))
    state = {k: v for k, v in live.state_dict().items() if k != "prior.x_out.weight"}
    assert weights_digest(copy) != weights_digest(live)
    load_full_state(copy, state)
    assert weights_digest(copy) == weights_digest(live)
    assert copy.prior.x_out.weight is copy.prior.x_emb.weight  # still tied
    with pytest.raises(RuntimeError, match="missing"):
        load_full_state(copy, {k: v for k, v in state.items() if "y_emb" not in k})
    with pytest.raises(RuntimeError, match="unexpected"):
        load_full_state(copy, {**state, "stray.weight": torch.zeros(1)})


def test_launcher_settings_the_run_does_not_follow_are_named(tmp_path, monkeypatch, caplog):
    """A config asking for bf16 while --mixed_precision says no, or for FSDP where accelerate
    does not shard (a CPU): one warning each."""
    from accelerate.state import AcceleratorState

    from teacher.train.loop import TrainConfig, is_sharded, make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    try:
        with caplog.at_level(logging.WARNING, logger="teacher.train.loop"):
            acc = make_accelerator(TrainConfig(output_dir=str(tmp_path)))
        assert not is_sharded(acc)
    finally:  # accelerate's state is a process-wide singleton
        AcceleratorState._reset_state(reset_partial_state=True)
    text = caplog.text
    assert "asks for mixed precision bf16" in text and "the run flag is used" in text
    assert "asks for FSDP but accelerate runs NO" in text


def test_the_launcher_configs():
    """configs/*.yaml load with accelerate's own reader and name what the README says: FSDP2
    full sharding with one unit per transformer block (the project's class), full state dicts,
    bf16; DeepSpeed ZeRO-2 and ZeRO-3 (16-bit weights gathered for exports)."""
    from accelerate.commands.config.config_args import load_config_from_file

    import teacher.prior.transformer as tr

    fsdp = load_config_from_file(str(ROOT / "configs" / "fsdp.yaml"))
    assert (fsdp.distributed_type, fsdp.mixed_precision) == ("FSDP", "bf16")
    f = fsdp.fsdp_config
    assert f["fsdp_version"] == 2 and f["fsdp_reshard_after_forward"] is True
    assert f["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    block = getattr(tr, f["fsdp_transformer_layer_cls_to_wrap"])
    assert issubclass(block, torch.nn.Module) and block is tr.ResAttnBlock
    assert f["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert f["fsdp_activation_checkpointing"] is False  # --gradient_checkpointing does it
    for stage in (2, 3):
        ds = load_config_from_file(str(ROOT / "configs" / f"deepspeed_zero{stage}.yaml"))
        assert (ds.distributed_type, ds.mixed_precision) == ("DEEPSPEED", "bf16")
        assert ds.deepspeed_config["zero_stage"] == stage
        assert "gradient_clipping" not in ds.deepspeed_config  # --max_grad_norm reaches it
        assert ds.deepspeed_config.get("zero3_save_16bit_model", False) is (stage == 3)
