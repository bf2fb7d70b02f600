"""Stage timing, memory, Amdahl's law on hand cases, and report headers."""

import dataclasses
import hashlib
import json
import math
import time

import pytest
import torch

from eval import speed
from teacher.presets import tiny_vqvae


def test_measure_sleep():
    s = speed.measure(lambda: time.sleep(0.05), tokens=200, audio_seconds=0.5, name="nap")
    assert s.wall_s >= 0.05 and s.wall_s < 1.0
    assert s.tokens_per_s == pytest.approx(200 / s.wall_s)
    assert s.rtf == pytest.approx(0.5 / s.wall_s)  # audio seconds per wall second
    assert s.name == "nap" and s.mem_source == "cpu_rss_delta"
    assert s.peak_mem_bytes is not None and s.peak_mem_bytes >= 0
    assert speed.measure(lambda: None).tokens_per_s is None
    assert set(s.to_dict()) == {
        "wall_s",
        "rtf",
        "tokens_per_s",
        "peak_mem_bytes",
        "mem_source",
        "name",
    }


def test_measure_repeats_take_the_median():
    naps = iter([0.0, 0.09, 0.03, 0.01])  # first is the warm-up; median of the rest is 0.03
    s = speed.measure(lambda: time.sleep(next(naps)), warmup=1, repeats=3)
    assert 0.03 <= s.wall_s < 0.08
    with pytest.raises(ValueError, match="repeats"):
        speed.measure(lambda: None, repeats=0)


def test_cpu_peak_memory_sees_a_transient_allocation():
    size = 64 * 2**20

    def fn():
        x = torch.ones(size // 4)  # 64 MiB, touched, held for many sampling intervals
        time.sleep(0.1)
        return float(x[-1])

    s = speed.measure(fn)
    if s.peak_mem_bytes is None:
        pytest.skip("no /proc/self/status here")
    assert s.peak_mem_bytes >= 0.8 * size
    # the stage released it: a quiet stage afterwards adds (almost) nothing
    assert speed.measure(lambda: time.sleep(0.01)).peak_mem_bytes < 0.5 * size


def test_stage_timer_fills_tokens_inside():
    with speed.StageTimer("top", audio_seconds=2.0) as st:
        time.sleep(0.02)
        st.tokens = 64
    r = st.result
    assert r.wall_s >= 0.02 and r.tokens_per_s == pytest.approx(64 / r.wall_s)
    assert r.rtf == pytest.approx(2.0 / r.wall_s) and r.name == "top"


def test_amdahl_hand_cases():
    times = {"top": 1.0, "middle": 4.0, "bottom": 5.0}
    # middle and bottom 10x faster: 10 / (1 + 0.4 + 0.5)
    assert speed.amdahl_speedup(times, {"middle": 10, "bottom": 10}) == pytest.approx(10 / 1.9)
    assert speed.amdahl_speedup(times, {"middle": 10, "bottom": 10}) == pytest.approx(
        5.263, abs=1e-3
    )
    assert speed.amdahl_bound(times, {"middle", "bottom"}) == pytest.approx(10.0)
    assert speed.amdahl_speedup(times, {}) == pytest.approx(1.0)
    assert speed.amdahl_speedup(times, {"top": 2.0}) == pytest.approx(10 / 9.5)
    # a slowdown is a speedup below 1
    assert speed.amdahl_speedup(times, {"bottom": 0.5}) == pytest.approx(10 / 15)
    assert speed.amdahl_bound(times, set()) == pytest.approx(1.0)
    assert math.isinf(speed.amdahl_bound(times, times))
    # the bound is the limit of ever faster students
    assert speed.amdahl_speedup(times, {"middle": 1e9, "bottom": 1e9}) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="unknown stages"):
        speed.amdahl_speedup(times, {"lyrics": 2.0})
    with pytest.raises(ValueError, match="positive"):
        speed.amdahl_speedup(times, {"top": 0.0})
    with pytest.raises(ValueError, match="no time"):
        speed.amdahl_bound({"top": 0.0}, set())


def test_machine_info():
    info = speed.machine_info()
    assert info["cpu_count"] >= 1 and info["cpu_usable"] >= 1
    assert info["torch_version"] == torch.__version__
    assert info["versions"]["torch"] is not None and info["device"] == "cpu"
    assert isinstance(info["device_name"], str) and info["device_name"]
    json.dumps(info)  # goes straight into a report


@dataclasses.dataclass(frozen=True)
class _Cfg:
    a: int = 1
    b: tuple[int, ...] = (2, 3)


def test_config_hash():
    expected = hashlib.sha256(b'{"_class":"_Cfg","a":1,"b":[2,3]}').hexdigest()
    assert speed.config_hash(_Cfg()) == expected
    assert speed.config_hash(tiny_vqvae()) == speed.config_hash(tiny_vqvae())
    assert speed.config_hash(tiny_vqvae()) != speed.config_hash(tiny_vqvae(sample_rate=16000))
    assert speed.config_hash({"x": 1, "y": 2}) == speed.config_hash({"y": 2, "x": 1})
    with pytest.raises(TypeError):
        speed.config_hash(_Cfg)
