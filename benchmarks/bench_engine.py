"""The decoding engine's step: against the weight-read floor, today's sampler and the 2020 code.

One run, three tables (and a GOALS table):

1. Released shapes (CUDA by default; on a CPU only with ``--released``): the upsampler
   (``upsampler(0)``: 981M parameters, width 1920, depth 72; the middle one has the same
   transformer), the 1b_lyrics top and the 5b_lyrics top, random weights (normal, std 0.02)
   built directly on the device in the target dtype. ``DecodingEngine.sample_step()`` (a CUDA
   graph replay on CUDA) timed over ``--steps`` steps after 8 warm-up steps, synchronised, at
   batch 1 and 16, bf16 and fp32. Next to it: the bytes of weights one step reads (the
   transformer and the engine's fp32 copy of the head), the device copy bandwidth measured in
   the same run (a 2 GiB tensor copy on CUDA, 256 MiB on a CPU; read + write bytes counted), the
   floor = weight bytes / bandwidth, step / floor, the peak memory (CUDA
   ``max_memory_allocated``; on a CPU the peak RSS growth over the process before the model was
   built), and the projected wall time of one minute of 44.1 kHz audio: exact mode = 20,672 top
   + 82,688 middle + 330,750 bottom steps at batch 1 (the upsampler's ms/step for middle and
   bottom); accelerated mode = the top prior's steps only (the students' K parallel passes per
   window are not counted). A model whose weights and caches do not fit in free memory is
   skipped and listed; on a CPU only the upsampler in bf16 is tried (training jobs share the
   RAM: the 5b_lyrics top needs 10.5 GiB in bf16, 21 GiB in fp32), with at most 4 steps.
2. Demo shapes on a CPU (always): the bench config of ``bench_sampling.py`` (width 128, depth 4,
   2 heads, n_ctx 256, 2048 bins; dense and attn_order 2, built by its ``build``), the demo's
   middle upsampler (``prior_preset("small", 1, small_vqvae(16000), 2048)``: width 128,
   depth 6, n_ctx 2048) and top prior (``prior_preset("small", 2, ..., n_tokens=64)``:
   width 256, depth 16, 64 lyric + 512 music positions, prime attention). ms/step of
   (a) the engine, eager (the CPU default: views at the host position), (b) the engine, static
   (``static=True``: everything indexed by the device position, what the CUDA graph runs),
   (c) today's sampler: the lean eager step through the transformer's incremental API
   (``x_emb(prev) + pos_emb[p] + x_cond[p]``, ``core.transformer(x, encoder_kv, cache=)``,
   ``+ x_cond[p]``, the fp32 head as one ``addmm`` with the Gumbel noise, argmax) and (d)
   transformers 4.57.6's port of the 2020 code (``JukeboxConditionalAutoregressive``: its
   per-token loop copied from ``primed_sample``: ``get_emb``, the layer stack with ``sample=True``
   and its ``torch.cat`` cache, the head, ``filter_logits``, ``Categorical.sample``) and (e) the
   step's matrix products alone (every layer's four and the head, the prior's weights: the
   arithmetic no eager step avoids). Every
   method first primes the same random tokens up to the middle of the window (untimed), so the
   N timed steps sit where position-dependent costs (the port's growing cache, dense layers)
   are at their window average. Rounds of a-b-c-d-e are interleaved so machine load hits them
   equally; medians are reported, with the ratios to (c) and (d).
3. GOALS: MET / NOT MET / NOT RUN with the number.

    python benchmarks/bench_engine.py [--device auto|cpu|cuda] [--released] [--steps 64]
        [--rounds 9] [--threads 1] [--out_md FILE]

Measured here: CPU only -- there was no GPU in this session, so every GPU goal is NOT RUN and
no released shape was timed on CUDA. 2 vCPU Xeon, quiet (a paused training job: this run only),
1 thread, torch 2.13.0+cpu, transformers 4.57.6; ``--released`` run, 71 s in all::

    released, CPU (eager engine, 4 steps), copy bandwidth 13.7 GB/s (256 MiB, 1 thread):
    model      dtype   B  ms/step  weights read/step  floor ms  step/floor  B16/B1  peak RSS growth
    upsampler  bf16    1      295           1.50 GiB       118       2.50x       -         2.46 GiB
    upsampler  bf16   16      309           1.50 GiB       118       2.63x   1.05x         8.99 GiB
    skipped on the CPU: upsampler fp32 (3.66 GiB), 1b_lyrics top bf16/fp32 (1.76/3.51 GiB),
    5b_lyrics top bf16/fp32 (10.51/21.01 GiB); the upsamplers alone would take > 33 h per
    minute of audio here.

    demo shapes, ms/step, median of 9 interleaved rounds of 64 steps from mid-window:
    shape                    B  (a) eager  (b) static  (c) today  (d) 2020  (e) products  (c)/(a)  (d)/(a)  (a)/(e)
    bench config, dense      1      0.244       0.343      0.372     0.860         0.062    1.52x    3.52x    3.93x
    bench config, dense      4      0.339       0.490      0.460     1.174         0.087    1.36x    3.47x    3.88x
    bench config, order 2    1      0.228       0.452      0.356     0.852         0.063    1.56x    3.74x    3.63x
    bench config, order 2    4      0.305       0.548      0.427     1.111         0.086    1.40x    3.64x    3.56x
    demo middle (2048)       1      0.281       0.554      0.458     1.133         0.062    1.63x    4.02x    4.51x
    demo middle (2048)       4      0.344       0.715      0.522     1.540         0.079    1.52x    4.48x    4.36x
    demo top (64 + 512)      1      1.157       1.790      1.600     3.085         0.623    1.38x    2.67x    1.86x
    demo top (64 + 512)      4      1.388       2.172      1.861     4.054         0.697    1.34x    2.92x    1.99x

    GOALS: GPU floor (5b_lyrics 1.5x, upsampler 3x), batch 16 within 1.5x, one minute under
    12 min on an H200: NOT RUN (no GPU); CPU engine >= today's step: MET (1.34x worst);
    CPU engine >= 3.4x the 2020 port at the bench config: MET (3.47x worst, 3.47-3.74x).

The eager step is overhead-bound: its matrix products (e) are a quarter of it at the bench
config. What got it from 2.4-2.7x to 3.5-3.7x the port (the products unchanged): each layer's
tensors read once into a plain record instead of ~16 ``Module.__getattr__`` lookups per layer
and step (the largest part), the MLP's quick-GELU as one ``silu`` with its slope folded into
the products' ``alpha``/``beta``, views of the cache made once, the ATen ops called without
their Python wrappers. (c) "today" is the lean step through the transformer's incremental API,
which shares the MLP change (it was 0.379 ms at the bench config before, 0.37 now).

On a CPU the static path (b) is 1.4-2.1x slower than the eager one (a): it attends over the
whole fixed buffers and indexes by the device position, which only pays off inside a CUDA graph.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.bench_sampling import _port_dense_fixed, port_modules  # noqa: E402
from benchmarks.bench_sampling import build as build_bench_pair  # noqa: E402
from benchmarks.bench_sampling import labels as bench_labels  # noqa: E402
from benchmarks.tables import Table  # noqa: E402
from teacher.data.labels import make_label  # noqa: E402
from teacher.generate.engine import NOISE_BLOCK, DecodingEngine  # noqa: E402
from teacher.generate.sampler import gumbel_noise  # noqa: E402
from teacher.presets import (  # noqa: E402
    prior_1b_lyrics,
    prior_5b_lyrics,
    prior_preset,
    small_vqvae,
    upsampler,
)
from teacher.prior.config import PriorConfig  # noqa: E402
from teacher.prior.model import Conditioning, Prior  # noqa: E402
from teacher.released.hf_keys import HF_ATTENTION_PATTERNS  # noqa: E402

GiB = 1 << 30
#: steps per minute of 44.1 kHz audio (hops 128 / 32 / 8)
TOP_STEPS, MIDDLE_STEPS, BOTTOM_STEPS = 20_672, 82_688, 330_750
WARMUP = 8  # released shapes: untimed steps first (the CUDA graph is captured in the first)
CPU_RELEASED_STEPS = 4  # a bf16 step of the 981M upsampler on a CPU takes seconds

GOAL_FLOOR_TOP = 1.5  # 5b_lyrics top, bf16, batch 1: step / floor
GOAL_FLOOR_UPSAMPLER = 3.0
GOAL_BATCH = 1.5  # batch 16 step / batch 1 step
GOAL_MINUTES = 12.0  # one minute of audio, exact mode, one H200
GOAL_TODAY = 1.0  # today's step / the engine's step, demo shapes
GOAL_PORT = 3.4  # the 2020 port's step / the engine's step, bench config

RELEASED: dict[str, Callable[[], PriorConfig]] = {
    "upsampler": functools.partial(upsampler, 0),
    "1b_lyrics top": prior_1b_lyrics,
    "5b_lyrics top": prior_5b_lyrics,
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
BATCHES = (1, 16)
DEMO_BATCHES = (1, 4)
METHODS = (
    "(a) engine eager",
    "(b) engine static",
    "(c) today",
    "(d) 2020 port",
    "(e) products only",
)


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# device helpers


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def copy_bandwidth(dev: torch.device) -> tuple[float, int]:
    """Device copy bandwidth in GB/s (read + write bytes per second) of a large tensor copy,
    and the bytes copied per copy."""
    n = 2 * GiB if dev.type == "cuda" else 256 << 20
    reps = 10 if dev.type == "cuda" else 3
    src = torch.ones(n, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    _sync(dev)
    dt = time.perf_counter() - t0
    del src, dst
    return 2 * n * reps / dt / 1e9, n


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _init_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random finite weights in place: normal std 0.02; 1-D ``weight``s (layer norms) 1, other
    1-D parameters (biases) 0."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 0.02)


def _labels(cfg: PriorConfig, batch: int, seconds: float = 60.0) -> Tensor | None:
    """Valid label vectors ``LongTensor[B, label_size]``: a song of ``seconds``, the first
    window, artist 0, genre 0, lyric tokens 1."""
    if cfg.labels is None:
        return None
    total = int(seconds * cfg.sample_rate)
    y = make_label(total, 0, cfg.sample_length, 0, [0], [1] * cfg.n_tokens, cfg.labels.max_genres)
    return torch.as_tensor(y)[None].expand(batch, -1).clone()


def _condition(prior: Prior, batch: int, dev: torch.device) -> Conditioning:
    cfg = prior.cfg
    y = _labels(cfg, batch)
    upper = None
    if cfg.is_upsampler:
        g = torch.Generator().manual_seed(1)
        upper = torch.randint(0, cfg.l_bins, (batch, cfg.n_ctx // cfg.upsample_ratio), generator=g)
        upper = upper.to(dev)
    with torch.inference_mode():
        return prior.condition(None if y is None else y.to(dev), upper)


# ---------------------------------------------------------------------------------------------
# 1. released shapes


@dataclass
class ReleasedRow:
    model: str
    dtype: str
    batch: int
    ms: float | None = None
    step_bytes: int = 0
    model_bytes: int = 0
    peak: int | None = None
    skipped: str = ""


def build_released(cfg: PriorConfig, dev: torch.device, dtype: torch.dtype) -> Prior:
    """The prior on ``dev`` in ``dtype`` with random weights, never materialised elsewhere:
    built on the meta device, cast there, then given storage on ``dev`` and initialised."""
    with torch.device("meta"):
        prior = Prior(cfg)
    prior = prior.to(dtype).to_empty(device=dev)
    prior.prior.tie_weights()  # to_empty makes new parameters: tie the head to the embedding again
    _init_(prior)
    return prior.eval().requires_grad_(False)


def _step_bytes(prior: Prior) -> int:
    """Bytes of weights one step reads: the transformer's parameters and the engine's fp32
    music-row head (the embedding row and position row are negligible)."""
    core = prior.prior
    tr = sum(p.numel() * p.element_size() for p in core.transformer.parameters())
    return tr + prior.cfg.l_bins * core.transformer.cfg.width * 4


def _need_bytes(cfg: PriorConfig, dtype: torch.dtype, batch: int) -> tuple[int, int]:
    """(weight bytes, weights + engine buffers at ``batch``) estimated on the meta device."""
    with torch.device("meta"):
        prior = Prior(cfg).to(dtype)
    size = torch.tensor([], dtype=dtype).element_size()
    weights = sum(p.numel() for p in prior.parameters()) * size
    tr = prior.prior.transformer
    kv = tr.new_cache(batch, device="meta", dtype=dtype).nbytes()
    adds = 2 * tr.cfg.n_ctx * batch * tr.cfg.width * size
    return weights, weights + kv + adds


def time_engine(engine: DecodingEngine, n: int, warmup: int) -> float:
    """ms per ``sample_step()`` over ``n`` steps after ``warmup`` untimed ones (the noise is
    refreshed every :data:`NOISE_BLOCK` steps, as the sampler does)."""
    dev = engine.device
    noise = gumbel_noise((NOISE_BLOCK, engine.batch_size, engine.l_bins), device=dev)
    with torch.inference_mode():
        for i in range(warmup):
            if i % NOISE_BLOCK == 0:
                engine.set_noise(noise, 1.0)
            engine.sample_step()
        engine.set_noise(noise, 1.0)
        _sync(dev)
        t0 = time.perf_counter()
        for i in range(n):
            if i and i % NOISE_BLOCK == 0:
                engine.set_noise(noise, 1.0)
            engine.sample_step()
        _sync(dev)
        return 1e3 * (time.perf_counter() - t0) / n


def measure_released(
    dev: torch.device, steps: int, console: Console
) -> tuple[list[ReleasedRow], list[str]]:
    rows: list[ReleasedRow] = []
    skipped: list[str] = []
    cpu = dev.type == "cpu"
    for name, make in RELEASED.items():
        cfg = make()
        for dname, dtype in DTYPES.items():
            if cpu and (name != "upsampler" or dname != "bf16"):
                w, _ = _need_bytes(cfg, dtype, 1)
                skipped.append(
                    f"{name} {dname} ({_gib(w)} of weights): on a CPU only the upsampler in bf16 "
                    "is tried"
                )
                continue
            free = torch.cuda.mem_get_info(dev)[0] if not cpu else _mem_available()
            weights, need1 = _need_bytes(cfg, dtype, 1)
            if need1 > 0.85 * free:
                skipped.append(f"{name} {dname}: needs {_gib(need1)} at batch 1, {_gib(free)} free")
                continue
            console.print(f"[dim]building {name} {dname} on {dev} ...[/dim]")
            base = _proc_status("VmRSS") if cpu else 0
            if not cpu:
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            prior = build_released(cfg, dev, dtype)
            cond = _condition(prior, 1, dev)
            forced = cond.lyrics if cfg.single_sequence else None  # the lyric window, primed
            console.print(f"[dim]  built and conditioned in {time.perf_counter() - t0:.1f} s[/dim]")
            step_b = _step_bytes(prior)
            for b in BATCHES:
                row = ReleasedRow(name, dname, b, step_bytes=step_b, model_bytes=weights)
                rows.append(row)
                free = torch.cuda.mem_get_info(dev)[0] if not cpu else _mem_available()
                _, need = _need_bytes(cfg, dtype, b)
                if need - weights > 0.85 * free:
                    row.skipped = f"needs {_gib(need - weights)} more, {_gib(free)} free"
                    skipped.append(f"{name} {dname} B={b}: {row.skipped}")
                    continue
                if cpu:
                    _reset_peak_rss()
                else:
                    torch.cuda.reset_peak_memory_stats(dev)
                engine = None
                try:
                    engine = DecodingEngine(prior, b)
                    with torch.inference_mode():
                        engine.begin(cond, None if forced is None else forced.expand(b, -1))
                    n = min(steps, CPU_RELEASED_STEPS) if cpu else steps
                    row.ms = time_engine(engine, n, 1 if cpu else WARMUP)
                    if cpu:
                        row.peak = max(0, _proc_status("VmHWM") - base)
                    else:
                        row.peak = torch.cuda.max_memory_allocated(dev)
                    console.print(f"[dim]  B={b}: {row.ms:.3f} ms/step[/dim]")
                except torch.cuda.OutOfMemoryError:
                    row.skipped = "out of memory"
                    skipped.append(f"{name} {dname} B={b}: out of memory")
                del engine
                gc.collect()
                if not cpu:
                    torch.cuda.empty_cache()
            del prior, cond, forced
            gc.collect()
            if not cpu:
                torch.cuda.empty_cache()
    return rows, skipped


def released_tables(
    rows: list[ReleasedRow], bw: float, bw_bytes: int, dev: torch.device, skipped: list[str]
) -> list[Table]:
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    t = Table(
        f"Released shapes on {where}: DecodingEngine.sample_step() vs the weight-read floor",
        [
            "model",
            "dtype",
            "B",
            "ms/step",
            "codes/s",
            "model weights",
            "weights read/step",
            "floor ms",
            "step/floor",
            "B16/B1",
            "peak memory",
        ],
        note=(
            f"copy bandwidth {bw:.1f} GB/s (a {bw_bytes / GiB:.2f} GiB tensor copy, read + write "
            "bytes), floor = weights read per step / bandwidth; "
            + (
                "CUDA graph replay, peak = max_memory_allocated (model + engine + step)"
                if dev.type == "cuda"
                else f"eager engine, {CPU_RELEASED_STEPS} steps; peak = RSS growth"
            )
            + "; random weights (speed only)."
            + ("" if not skipped else " Skipped: " + "; ".join(skipped) + ".")
        ),
    )
    ms1 = {(r.model, r.dtype): r.ms for r in rows if r.batch == 1}
    for r in rows:
        floor = 1e3 * r.step_bytes / (bw * 1e9)
        base = ms1.get((r.model, r.dtype))
        t.add(
            r.model,
            r.dtype,
            r.batch,
            r.ms if r.ms is not None else (r.skipped or "-"),
            None if r.ms is None else 1e3 * r.batch / r.ms,
            _gib(r.model_bytes),
            _gib(r.step_bytes),
            floor,
            None if r.ms is None else f"{r.ms / floor:.2f}x",
            None if (r.ms is None or r.batch == 1 or not base) else f"{r.ms / base:.2f}x",
            _gib(r.peak),
        )
    return [t, projection_table(rows, where)]


def _ms(rows: list[ReleasedRow], model: str, dtype: str, batch: int = 1) -> float | None:
    for r in rows:
        if (r.model, r.dtype, r.batch) == (model, dtype, batch):
            return r.ms
    return None


def projection(rows: list[ReleasedRow], top: str, dtype: str) -> tuple[float | None, ...]:
    """(exact s, accelerated s, upsampler part s) for one minute of 44.1 kHz audio."""
    top_ms, up_ms = _ms(rows, top, dtype), _ms(rows, "upsampler", dtype)
    up = None if up_ms is None else (MIDDLE_STEPS + BOTTOM_STEPS) * up_ms / 1e3
    acc = None if top_ms is None else TOP_STEPS * top_ms / 1e3
    exact = None if up is None or acc is None else up + acc
    return exact, acc, up


def projection_table(rows: list[ReleasedRow], where: str) -> Table:
    t = Table(
        f"One minute of 44.1 kHz audio at batch 1 on {where} (projection from the ms/step above)",
        ["top prior", "dtype", "top ms/step", "upsampler ms/step", "exact mode", "accelerated"],
        note=(
            f"exact = {TOP_STEPS:,} top + {MIDDLE_STEPS:,} middle + {BOTTOM_STEPS:,} bottom steps "
            "(the upsampler's ms/step for both upsamplers); accelerated = the top prior's steps "
            "only: the students' K parallel passes per window are assumed negligible and not "
            "counted. Decoding the VQ-VAE is not counted either."
        ),
    )
    for dname in DTYPES:
        up_ms = _ms(rows, "upsampler", dname)
        tops = [top for top in ("1b_lyrics top", "5b_lyrics top") if _ms(rows, top, dname)]
        for top in tops:
            exact, acc, up = projection(rows, top, dname)
            t.add(top, dname, _ms(rows, top, dname), up_ms, _minutes(exact), _minutes(acc))
        if not tops and up_ms is not None:  # no top prior measured: the upsamplers' share
            _, _, up = projection(rows, "upsampler", dname)
            t.add("(none measured)", dname, None, up_ms, f"> {_minutes(up)} (upsamplers)", None)
    return t


# ---------------------------------------------------------------------------------------------
# 2. demo shapes on a CPU: (a) engine eager, (b) engine static, (c) today's step, (d) the port


def port_core(cfg: PriorConfig) -> Any:
    """transformers' ``JukeboxConditionalAutoregressive`` (the 2020 code's prior core) at the
    shapes of ``cfg``, random weights."""
    jc, jm = port_modules()
    tr = cfg.transformer
    pattern = {v: k for k, v in HF_ATTENTION_PATTERNS.items()}[tr.attn_order]
    hcfg = jc.JukeboxPriorConfig(
        hidden_size=tr.width,
        num_layers=tr.depth,
        n_heads=tr.heads,
        n_ctx=tr.n_ctx,
        blocks=tr.blocks,
        spread=tr.spread,
        attention_pattern=pattern,
        attention_multiplier=tr.m_attn,
        mlp_multiplier=tr.m_mlp,
        attn_res_scale=tr.res_scale,
        mask=True,
        music_vocab_size=cfg.l_bins,
        lyric_vocab_size=cfg.lyrics.n_vocab if cfg.lyrics is not None else 0,
        nb_relevant_lyric_tokens=cfg.n_tokens if cfg.single_sequence else 0,
        merged_decoder=cfg.merged_decoder,
        is_encoder_decoder=cfg.single_sequence,
    )
    with _port_dense_fixed():
        core = jm.JukeboxConditionalAutoregressive(
            hcfg,
            n_ctx=tr.n_ctx,
            embed_dim=cfg.vocab_size,
            audio_conditioning=True,
            metadata_conditioning=True,
        )
    _init_(core)
    return core.eval()


@dataclass
class DemoShape:
    name: str
    prior: Prior
    port: Any  # JukeboxConditionalAutoregressive
    labels: Callable[[int], Tensor | None]
    bench: bool  # the bench config (the 3.4x goal) rather than a demo shape


def demo_shapes() -> list[DemoShape]:
    shapes = []
    for order in (0, 2):
        hf, ours = build_bench_pair(order)
        kind = "dense" if order == 0 else "attn_order 2"
        shapes.append(DemoShape(f"bench config, {kind}", ours.eval(), hf.prior, bench_labels, True))
    vq = small_vqvae(16000)
    for name, level, n_ctx, n_tokens in (
        ("demo middle", 1, 2048, None),
        ("demo top (64 lyric chars)", 2, None, 64),
    ):
        cfg = prior_preset("small", level, vq, n_ctx, n_tokens)
        torch.manual_seed(0)
        prior = Prior(cfg).eval().requires_grad_(False)
        shapes.append(
            DemoShape(name, prior, port_core(cfg), functools.partial(_labels, cfg), False)
        )
    return shapes


class Method:
    """One way to step: ``prepare()`` (untimed: state primed to position P) then ``run()``
    (timed: N steps), then ``finish()`` (untimed)."""

    def prepare(self) -> None: ...

    def run(self) -> None: ...

    def finish(self) -> None: ...


class EngineMethod(Method):
    def __init__(
        self, prior: Prior, cond: Conditioning, tokens: Tensor, p0: int, n: int, static: bool
    ) -> None:
        b = tokens.shape[0]
        self.engine = DecodingEngine(prior, b, cuda_graph=False, static=static)
        self.cond, self.forced, self.n = cond, tokens[:, :p0], n
        self.noise = gumbel_noise((NOISE_BLOCK, b, prior.cfg.l_bins))

    def prepare(self) -> None:
        self.engine.begin(self.cond, self.forced)

    def run(self) -> None:
        engine, noise = self.engine, self.noise
        for i in range(self.n):
            if i % NOISE_BLOCK == 0:
                engine.set_noise(noise, 1.0)
            engine.sample_step()


class TodayMethod(Method):
    """Today's sampler: the lean eager step through the transformer's incremental API."""

    def __init__(self, prior: Prior, cond: Conditioning, tokens: Tensor, p0: int, n: int):
        b = tokens.shape[0]
        self.core = core = prior.prior
        self.cfg = prior.cfg
        self.cond, self.tokens, self.p0, self.n = cond, tokens, p0, n
        self.noise = gumbel_noise((NOISE_BLOCK, b, prior.cfg.l_bins))
        dtype = core.x_emb.weight.dtype
        self.x_cond = None if cond.x_cond is None else cond.x_cond.to(dtype)
        self.pos = core.pos_emb()
        shift = prior.cfg.vocab_offset
        self.head_t = core.x_out.weight[shift:].float().t().contiguous()  # once per window
        self.cache = core.transformer.new_cache(b)

    def prepare(self) -> None:
        core, cond, p0 = self.core, self.cond, self.p0
        self.cache.reset()
        x = core.embed(self.tokens[:, :p0], cond.start, self.x_cond)
        core.transformer(x, cond.encoder_kv, cache=self.cache)
        self.prev = self.tokens[:, p0 - 1]

    def run(self) -> None:
        core, cache, xc, pos, noise = self.core, self.cache, self.x_cond, self.pos, self.noise
        tr, enc, head_t = core.transformer, self.cond.encoder_kv, self.head_t
        after = core.add_cond_after_transformer and xc is not None
        shift = self.cfg.vocab_offset
        prev = self.prev
        for i in range(self.n):
            p = self.p0 + i
            x = core.x_emb(prev) + pos[p]
            if xc is not None:
                x = x + xc[:, p]
            h = tr(x[:, None], enc, cache=cache)[:, 0]
            if after:
                h = h + xc[:, p]
            z = torch.addmm(noise[i % NOISE_BLOCK], h.float(), head_t)
            prev = z.argmax(-1) + shift


class ProductsMethod(Method):
    """The step's matrix products alone, nothing else: every layer's four (attention input
    and output projections, the MLP's two) and the head, with the prior's weights on ``B``
    rows -- what any eager step must at least spend, whatever its overhead."""

    def __init__(self, prior: Prior, b: int, n: int) -> None:
        core, self.n = prior.prior, n
        g = torch.Generator().manual_seed(3)
        self.mats = []
        for block in core.transformer._attn_mods:
            for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                x = torch.randn(b, lin.w.shape[0], generator=g).to(lin.w.dtype)
                self.mats.append((lin.b, x, lin.w))
        head_t = core.x_out.weight[prior.cfg.vocab_offset :].float().t().contiguous()
        self.head = (torch.randn(b, head_t.shape[0], generator=g), head_t)

    def run(self) -> None:
        for _ in range(self.n):
            for bias, x, w in self.mats:
                torch.addmm(bias, x, w)
            torch.mm(*self.head)


class PortMethod(Method):
    """transformers' port of the 2020 code: ``primed_sample``'s priming and per-token loop."""

    def __init__(self, core: Any, cond: Conditioning, tokens: Tensor, p0: int, n: int):
        from transformers.models.deprecated.jukebox import modeling_jukebox as jm

        self.jm = jm
        b = tokens.shape[0]
        self.core, self.tokens, self.p0, self.n = core, tokens, p0, n
        s, d = core.n_ctx, core.width
        xc = cond.x_cond
        self.audio = (
            torch.zeros(b, 1, d) if xc is None else xc[:, :s].float().expand(b, s, d).contiguous()
        )
        self.meta = cond.start.float().expand(b, 1, d).contiguous()

    def prepare(self) -> None:
        core, b = self.core, self.tokens.shape[0]
        xs, token = [], None
        for t in range(self.p0):
            x, _ = core.get_emb(t, b, token, self.audio, self.meta)
            token = self.tokens[:, t : t + 1]
            xs.append(x)
        core.transformer(torch.cat(xs, dim=1), last_encoder_hidden_states=None, sample=True)
        self.token = token

    def run(self) -> None:
        core, jm, b = self.core, self.jm, self.tokens.shape[0]
        tokens = self.token
        for sample_t in range(self.p0, self.p0 + self.n):
            hidden_states, cond = core.get_emb(sample_t, b, tokens, self.audio, self.meta)
            hidden_states = core.transformer(
                hidden_states, last_encoder_hidden_states=None, sample=True
            )
            if core.add_cond_after_transformer:
                hidden_states = hidden_states + cond
            hidden_states = core.fc_proj_out(hidden_states)
            hidden_states = hidden_states / 1.0
            hidden_states = jm.filter_logits(hidden_states, top_k=0, top_p=0.0)
            tokens = torch.distributions.Categorical(logits=hidden_states).sample()

    def finish(self) -> None:
        self.core.transformer.del_cache()


@dataclass
class DemoRow:
    shape: str
    batch: int
    p0: int
    bench: bool
    ms: dict[str, float]


def _window_tokens(cfg: PriorConfig, b: int, total: int) -> Tensor:
    """Random input tokens of the transformer's sequence (joint vocabulary)."""
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, cfg.l_bins, (b, total), generator=g) + cfg.vocab_offset
    if cfg.single_sequence:
        n = cfg.n_tokens
        codes[:, :n] = torch.randint(0, cfg.lyrics.n_vocab, (b, n), generator=g)
    return codes


def measure_demo(shape: DemoShape, b: int, steps: int, rounds: int) -> DemoRow:
    prior, cfg = shape.prior, shape.prior.cfg
    total = cfg.transformer.n_ctx
    n = min(steps, total - 1)
    p0 = max(1, (total - n) // 2)
    y = shape.labels(b)
    with torch.inference_mode():
        upper = None
        if cfg.is_upsampler:
            g = torch.Generator().manual_seed(1)
            upper = torch.randint(0, cfg.l_bins, (b, cfg.n_ctx // cfg.upsample_ratio), generator=g)
        cond = prior.condition(y, upper).expand(b)
        tokens = _window_tokens(cfg, b, total)
        methods: dict[str, Method] = {
            METHODS[0]: EngineMethod(prior, cond, tokens, p0, n, static=False),
            METHODS[1]: EngineMethod(prior, cond, tokens, p0, n, static=True),
            METHODS[2]: TodayMethod(prior, cond, tokens, p0, n),
            METHODS[3]: PortMethod(shape.port, cond, tokens, p0, n),
            METHODS[4]: ProductsMethod(prior, b, n),
        }
        times: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(rounds + 1):  # round 0 warms up
            for name, m in methods.items():
                m.prepare()
                t0 = time.perf_counter()
                m.run()
                dt = time.perf_counter() - t0
                m.finish()
                if r:
                    times[name].append(1e3 * dt / n)
    return DemoRow(
        shape.name, b, p0, shape.bench, {k: statistics.median(v) for k, v in times.items()}
    )


def demo_table(rows: list[DemoRow], steps: int, rounds: int, threads: int) -> Table:
    t = Table(
        f"Demo shapes on a CPU ({threads} thread{'s' if threads > 1 else ''}, torch "
        f"{torch.__version__}): ms per step, median of {rounds} interleaved rounds",
        [
            "shape",
            "B",
            "from pos",
            "(a) eager",
            "(b) static",
            "(c) today",
            "(d) 2020 port",
            "(e) products only",
            "(c)/(a)",
            "(c)/(b)",
            "(d)/(a)",
            "(d)/(b)",
            "(a)/(e)",
            "(d)/(e)",
            "target",
        ],
        note=(
            f"{steps} steps per measurement (fewer where the window is shorter), starting at "
            "the middle of the window after priming the same random tokens (untimed); rounds "
            "of a-b-c-d-e interleaved; ratios > 1 = the engine is faster. (e): the step's "
            "matrix products alone (4 per layer + the head), a floor no eager step goes under; "
            "(d)/(e) bounds what any step could gain over the port. Targets: the engine no "
            f"slower than today's step at the demo shapes ((c)/(a) >= {GOAL_TODAY:g}), >= "
            f"{GOAL_PORT:g}x the 2020 port at the bench config ((d)/(a))."
        ),
    )
    for r in rows:
        a, b_, c, d, e = (r.ms[k] for k in METHODS)
        target = f"(d)/(a) >= {GOAL_PORT:g}" if r.bench else f"(c)/(a) >= {GOAL_TODAY:g}"
        t.add(
            r.shape,
            r.batch,
            r.p0,
            f"{a:.3f}",
            f"{b_:.3f}",
            f"{c:.3f}",
            f"{d:.3f}",
            f"{e:.3f}",
            f"{c / a:.2f}x",
            f"{c / b_:.2f}x",
            f"{d / a:.2f}x",
            f"{d / b_:.2f}x",
            f"{a / e:.2f}x",
            f"{d / e:.2f}x",
            target,
        )
    return t


# ---------------------------------------------------------------------------------------------
# 3. goals


def goals_table(
    released: list[ReleasedRow], dev: torch.device, bw: float, demo: list[DemoRow]
) -> Table:
    t = Table("GOALS", ["goal", "measured", "status"])
    gpu = dev.type == "cuda"
    where = "" if gpu else " (CPU, for information)"

    def floor_ratio(model: str) -> float | None:
        for r in released:
            if (r.model, r.dtype, r.batch) == (model, "bf16", 1) and r.ms is not None:
                return r.ms / (1e3 * r.step_bytes / (bw * 1e9))
        return None

    def status(ok: bool | None, run: bool) -> str:
        if not run or ok is None:
            return "NOT RUN"
        return "MET" if ok else "NOT MET"

    for model, limit in (("5b_lyrics top", GOAL_FLOOR_TOP), ("upsampler", GOAL_FLOOR_UPSAMPLER)):
        x = floor_ratio(model)
        t.add(
            f"GPU bf16 B=1: {model} step within {limit:g}x of the weight-read floor",
            "-" if x is None else f"{x:.2f}x{where}",
            status(None if x is None else x <= limit, gpu),
        )
    ratios = []
    for r in released:
        base = _ms(released, r.model, r.dtype, 1)
        if r.batch == 16 and r.dtype == "bf16" and r.ms is not None and base:
            ratios.append((r.ms / base, r.model))
    worst = max(ratios) if ratios else None
    t.add(
        f"GPU bf16: batch 16 step within {GOAL_BATCH:g}x of batch 1's (every released model)",
        "-" if worst is None else f"{worst[0]:.2f}x ({worst[1]}, the worst){where}",
        status(None if worst is None else worst[0] <= GOAL_BATCH, gpu),
    )
    exact, _, up = projection(released, "5b_lyrics top", "bf16")
    exact1b, _, _ = projection(released, "1b_lyrics top", "bf16")
    name = torch.cuda.get_device_name(dev) if gpu else "CPU"
    if exact is not None:
        shown = f"{exact / 60:.1f} min with the 5b_lyrics top"
        if exact1b is not None:
            shown += f", {exact1b / 60:.1f} min with the 1b_lyrics top"
        shown += f" ({name})"
    elif up is not None:
        shown = f"> {_minutes(up)} (upsamplers alone){where}"
    else:
        shown = "-"
    h200 = gpu and "H200" in name
    t.add(
        f"one minute of 44.1 kHz audio in exact mode under {GOAL_MINUTES:g} min on one H200 "
        "(projection, bf16, batch 1)",
        shown,
        status(None if exact is None else exact / 60 < GOAL_MINUTES, h200),
    )
    demo_ratios = [(r.ms[METHODS[2]] / r.ms[METHODS[0]], r) for r in demo if not r.bench]
    bench_ratios = [(r.ms[METHODS[3]] / r.ms[METHODS[0]], r) for r in demo if r.bench]
    if demo_ratios:
        x, r = min(demo_ratios, key=lambda v: v[0])
        t.add(
            "CPU demo shapes: the engine's step no slower than today's lean step",
            f"{x:.2f}x ({r.shape}, B={r.batch}, the worst)",
            status(x >= GOAL_TODAY, True),
        )
    if bench_ratios:
        x, r = min(bench_ratios, key=lambda v: v[0])
        t.add(
            f"CPU bench config: the engine >= {GOAL_PORT:g}x faster per token than the 2020 port",
            f"{x:.2f}x ({r.shape}, B={r.batch}, the worst)",
            status(x >= GOAL_PORT, True),
        )
    return t


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--released", action="store_true", help="released shapes on a CPU too")
    p.add_argument("--steps", type=int, default=64, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (demo shapes)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out_md", default=None, help="also write the tables as markdown here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=160)
    if args.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    t_start = time.perf_counter()
    tables: list[Table] = []
    released: list[ReleasedRow] = []
    bw = float("nan")
    if dev.type == "cuda" or args.released:
        bw, bw_bytes = copy_bandwidth(dev)
        console.print(f"[dim]{dev} copy bandwidth: {bw:.1f} GB/s[/dim]")
        released, skipped = measure_released(dev, args.steps, console)
        tables += released_tables(released, bw, bw_bytes, dev, skipped)
    else:
        console.print(
            "[dim]released shapes: not run (no CUDA; --released runs them on a CPU)[/dim]"
        )
    demo: list[DemoRow] = []
    for shape in demo_shapes():
        for b in DEMO_BATCHES:
            console.print(f"[dim]{shape.name}, B={b} ...[/dim]")
            demo.append(measure_demo(shape, b, args.steps, args.rounds))
    tables.append(demo_table(demo, args.steps, args.rounds, args.threads))
    tables.append(goals_table(released, dev, bw, demo))
    for t in tables:
        console.print(t.rich())
    console.print(f"[dim]total {time.perf_counter() - t_start:.0f} s[/dim]")
    if args.out_md:
        Path(args.out_md).write_text("\n".join(t.markdown() for t in tables))
        console.print(f"tables written to {args.out_md}")


if __name__ == "__main__":
    main()
