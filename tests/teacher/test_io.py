"""Atomic folders, safetensors round trips and checkpoint discovery."""

import pytest
import torch

from teacher.io import (
    STATE_FILE,
    atomic_dir,
    atomic_write_json,
    latest_checkpoint,
    list_checkpoints,
    load_tensors,
    prune_checkpoints,
    read_json,
    resolve_resume,
    save_tensors,
)


def test_atomic_dir_replaces_target_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"

    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "a.txt").write_text("half-written")
        raise RuntimeError("killed mid-write")
    # the old complete folder is untouched and no temporary folder is left behind
    assert (target / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    with atomic_dir(target) as d:
        (d / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_safetensors_round_trip_handles_shared_storage(tmp_path):
    a = torch.randn(4, 3)
    tensors = {"a": a, "view": a[1:3], "int": torch.arange(5)}
    save_tensors(tensors, tmp_path / "w.safetensors")
    back = load_tensors(tmp_path / "w.safetensors")
    assert set(back) == {"a", "view", "int"}
    for k, v in tensors.items():
        assert torch.equal(back[k], v)


def test_checkpoint_discovery_reads_state_files(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 2, 30):
        d = root / f"whatever-{step}"
        d.mkdir(parents=True)
        atomic_write_json(d / STATE_FILE, {"step": step})
    (root / "incomplete").mkdir()  # no state.json: a checkpoint killed mid-write
    (root / ".checkpoint-40.tmp").mkdir()
    assert [s for s, _ in list_checkpoints(root)] == [2, 10, 30]
    assert latest_checkpoint(root).name == "whatever-30"
    assert resolve_resume("latest", root).name == "whatever-30"
    assert resolve_resume(None, root) is None
    assert resolve_resume("latest", tmp_path / "none") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(root / "incomplete"), root)
    prune_checkpoints(root, keep=2)
    assert [s for s, _ in list_checkpoints(root)] == [10, 30]
    assert read_json(root / "whatever-30" / STATE_FILE) == {"step": 30}
