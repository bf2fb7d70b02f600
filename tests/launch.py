"""What the tests that start the trainers as subprocesses share: the environment they run in
and the accelerate launch line of two CPU processes (DESIGN §7: ``--cpu --num_processes 2``
quietly starts one, so it is ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

#: the repository root (on PYTHONPATH of every subprocess)
ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment for a trainer subprocess: the repository importable, one
    OpenMP thread, wide rich log lines, no CUDA device; ``extra`` on top."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["COLUMNS"] = "200"  # rich wraps log lines at the terminal width
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


def two_cpu_processes(
    module: str, args: Sequence[str], config_file: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``python -m module *args`` as two CPU processes
    under ``accelerate launch`` (``config_file``: an accelerate config such as
    ``configs/fsdp.yaml`` instead of ``--multi_gpu``)."""
    how = ["--multi_gpu"] if config_file is None else ["--config_file", str(config_file)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, *args]
    return cmd, subprocess_env(ACCELERATE_USE_CPU="1")
