"""Gradient checkpointing (same gradients, less memory) and the meta-device memory of a training
step (:mod:`teacher.train.memory`), checked against torch's CPU allocator profiler."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from teacher.config import ConfigError
from teacher.presets import (
    prior_preset,
    small_vqvae,
    tiny_top_prior,
    tiny_upsampler,
    tiny_vqvae,
    upsampler,
)
from teacher.prior.model import Prior
from teacher.train.cli import build_parser, run, train_config_from_args
from teacher.train.loop import TrainConfig, checkpointable_modules, enable_gradient_checkpointing
from teacher.train.memory import (
    SavedTensorMeter,
    prior_inputs,
    prior_step_memory,
    shape_only,
    vqvae_step_memory,
)
from teacher.vqvae import VQVAE

PRIORS = {
    "1b-style top (prime attention)": lambda: tiny_top_prior("single"),
    "5b_lyrics-style top (lyric encoder, cross attention)": lambda: tiny_top_prior("encoder"),
    "upsampler": lambda: tiny_upsampler(1),
}


def _batch(cfg, batch: int = 2, seed: int = 0) -> dict:
    x = prior_inputs(cfg, batch)
    g = torch.Generator().manual_seed(seed)
    x["codes"] = torch.randint(0, cfg.l_bins, x["codes"].shape, generator=g)
    if x["upper"] is not None:
        x["upper"] = torch.randint(0, cfg.l_bins, x["upper"].shape, generator=g)
    return x


def _grads(model: Prior, x: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x["codes"], labels=x["labels"], upper=x["upper"]).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _forward_bytes(model: Prior, x: dict) -> int:
    """Net bytes the CPU allocator holds after a training forward pass (what autograd keeps
    for the backward pass plus the outputs), from torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x["codes"], labels=x["labels"], upper=x["upper"])
    del out
    return sum(e.self_cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("name", list(PRIORS))
def test_checkpointing_same_gradients(name):
    """Every parameter's gradient is the same with and without recomputing the blocks (the
    lyric encoder's blocks are checkpointed too)."""
    cfg = PRIORS[name]()
    torch.manual_seed(0)
    model = Prior(cfg).train()
    x = _batch(cfg)
    plain = _grads(model, x)
    n = enable_gradient_checkpointing(model, "prior")
    assert n == (2 if cfg.lyrics is not None and cfg.lyrics.style == "encoder" else 1)
    assert all(m.gradient_checkpointing for m in checkpointable_modules(model))
    ckpt = _grads(model, x)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)


def test_checkpointing_lowers_memory_and_the_meter_is_exact():
    """On real CPU tensors the allocator holds far less after a checkpointed forward pass; the
    meta-device count of :func:`prior_step_memory` equals what the allocator holds without
    checkpointing, and bounds it with (kept inputs + one recomputed block)."""
    cfg = prior_preset("small", 1, small_vqvae(16000))  # width 128, depth 6, n_ctx 512
    batch = 2
    torch.manual_seed(0)
    model = Prior(cfg).train()
    x = _batch(cfg, batch)
    plain = _forward_bytes(model, x)
    enable_gradient_checkpointing(model, "prior")
    ckpt = _forward_bytes(model, x)
    assert ckpt < 0.4 * plain, (plain, ckpt)

    mem = prior_step_memory(cfg, batch)
    assert mem.activations == pytest.approx(plain, rel=0.01)
    assert ckpt <= mem.activations_ckpt < 0.5 * mem.activations
    # the same count on real tensors (SavedTensorMeter is not specific to fake tensors)
    model = Prior(cfg).train()
    with SavedTensorMeter([*model.parameters(), *model.buffers()]) as meter:
        model(x["codes"], labels=x["labels"], upper=x["upper"])
    assert meter.total == mem.activations


def test_step_memory_states_and_bf16():
    """Weights, gradients and Adam's two moments are 4, 4 and 8 bytes per fp32 parameter;
    bf16 autocast keeps fewer activation bytes; the VQ-VAE has no blocks to checkpoint."""
    cfg = tiny_top_prior("single")
    with torch.device("meta"):
        n = sum(p.numel() for p in Prior(cfg).parameters())
    f32 = prior_step_memory(cfg, 2, "fp32")
    b16 = prior_step_memory(cfg, 2, "bf16")
    assert f32.params == n and f32.weights == 4 * n
    assert (f32.grads, f32.optimizer) == (4 * n, 8 * n)
    assert f32.total == f32.states + f32.activations and f32.total_ckpt < f32.total
    assert b16.activations < f32.activations
    vq = vqvae_step_memory(tiny_vqvae(8000), 2)
    assert vq.activations > 0 and vq.activations_ckpt is None and vq.total_ckpt is None


def test_released_upsampler_is_measured_without_allocating():
    """The released upsampler (981M parameters, 3.66 GiB of fp32 weights) on the meta device:
    exact parameter count, checkpointing keeps under a fifth of the activations, and the
    process allocates no real memory for it (the fake tensors have no data)."""
    import psutil

    before = psutil.Process().memory_info().rss
    mem = prior_step_memory(upsampler(0), 1, "fp32")
    grown = psutil.Process().memory_info().rss - before
    assert mem.params == 981_298_176 and mem.weights == 4 * mem.params
    assert mem.activations > 20 * 2**30 and mem.activations_ckpt < mem.activations / 5
    assert grown < 500 * 2**20, grown


def test_shape_only_tensors_have_no_data():
    from torch._subclasses.fake_tensor import DataDependentOutputException

    with shape_only():
        t = torch.zeros(1 << 20, 1 << 20)  # 4 TiB if it were real
        assert t.shape == (1 << 20, 1 << 20)
        with pytest.raises(DataDependentOutputException):
            bool((t > 0).any())


def test_gradient_checkpointing_flag(tmp_path):
    """--gradient_checkpointing is a run flag (TrainConfig, saved with the run config); the
    VQ-VAE has no transformer blocks: one clear error before any work."""
    parser = build_parser()
    base = ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    args = parser.parse_args(["prior", "--level", "top", "--vqvae", str(tmp_path), *base])
    assert train_config_from_args(args).gradient_checkpointing is False
    args = parser.parse_args(
        ["prior", "--level", "top", "--vqvae", str(tmp_path), *base, "--gradient_checkpointing"]
    )
    assert train_config_from_args(args).gradient_checkpointing is True
    args = parser.parse_args(["vqvae", *base, "--gradient_checkpointing"])
    with pytest.raises(ConfigError, match="VQ-VAE has no transformer blocks"):
        run(args)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="no transformer blocks"):
        enable_gradient_checkpointing(VQVAE(tiny_vqvae(8000)), "vqvae")
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        TrainConfig(output_dir="x", gradient_checkpointing="yes").validate()
