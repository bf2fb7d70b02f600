"""The metrics log of a resumed run: cut back to the restored step before new lines go in."""

from __future__ import annotations

import json

from teacher.train.loop import MetricsLog


def _steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_truncate_drops_later_steps_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, enabled=True)
    for step in range(1, 8):
        log.write(step, {"loss": 1.0 / step})
    with open(path, "a") as f:
        f.write('{"step": 8, "lo')  # the kill tore the last line
    log.truncate(5)  # the checkpoint restored step 5
    assert _steps(path) == [1, 2, 3, 4, 5]
    assert path.read_text().endswith("\n")
    log.write(6, {"loss": 0.5})  # the resumed run logs step 6 once
    assert _steps(path) == [1, 2, 3, 4, 5, 6]
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 6, "loss": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temp file left


def test_truncate_leaves_a_clean_log_alone_and_is_a_noop_off_the_main_process(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, enabled=True)
    log.truncate(3)  # no log yet: nothing to do
    assert not path.exists()
    for step in (1, 2, 3):
        log.write(step, {"loss": 0.1})
    before = path.stat().st_mtime_ns, path.read_text()
    log.truncate(3)  # nothing after step 3: the file is not rewritten
    assert (path.stat().st_mtime_ns, path.read_text()) == before
    MetricsLog(path, enabled=False).truncate(0)  # another rank never touches the file
    assert _steps(path) == [1, 2, 3]
    log.truncate(0)  # resumed from scratch: every line goes
    assert path.read_text() == ""
