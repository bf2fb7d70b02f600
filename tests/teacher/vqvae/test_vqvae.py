"""The assembled VQ-VAE: OpenAI key layout, shapes, gradients, losses, state, save/load."""

import dataclasses
import math

import pytest
import torch

from teacher.config import ConfigError
from teacher.presets import jukebox_vqvae, tiny_vqvae
from teacher.vqvae import VQVAE
from teacher.vqvae.config import Bandwidth, VQVAEConfig
from teacher.vqvae.model import VQVAEOutput


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and unlike two it does not slow
    down many-fold when a neighbouring process keeps the other core busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _audio(cfg: VQVAEConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A few sines plus a little noise: Tensor[B, 1, sample_length] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(cfg.sample_length) / cfg.sample_rate
    freqs = torch.rand(batch, 3, 1, generator=g) * 1500 + 100
    x = (0.25 * torch.sin(2 * math.pi * freqs * t)).sum(1, keepdim=True)
    return (x + 0.02 * torch.randn(batch, 1, cfg.sample_length, generator=g)).clamp(-1, 1)


def _tiny(**change) -> VQVAEConfig:
    return dataclasses.replace(tiny_vqvae(), **change)


def jukebox_key_shapes(cfg: VQVAEConfig) -> dict[str, tuple[int, ...]]:
    """OpenAI's VQ-VAE state-dict keys and shapes, written out from Jukebox's module tree
    (encdec.py / resnet.py / bottleneck.py) independently of teacher.vqvae.modules."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        shapes[f"{name}.weight"] = (c_out, c_in, k)
        shapes[f"{name}.bias"] = (c_out,)

    def resnet(name: str, width: int, depth: int) -> None:
        hidden = int(cfg.m_conv * width)
        for d in range(depth):  # ResConv1DBlock.model = Sequential(ReLU, conv3, ReLU, conv1)
            conv(f"{name}.model.{d}.model.1", hidden, width, 3)
            conv(f"{name}.model.{d}.model.3", width, hidden, 1)

    e = cfg.emb_width
    for level in range(cfg.levels):
        w, depth = cfg.width * cfg.multipliers[level], cfg.depth * cfg.multipliers[level]
        for b in range(level + 1):
            down, k = cfg.downs_t[b], 2 * cfg.strides_t[b]
            enc = f"encoders.{level}.level_blocks.{b}.model"
            for i in range(down):  # Sequential(Conv1d, Resnet1D) per down step
                conv(f"{enc}.{i}.0", w, (cfg.channels if b == 0 else e) if i == 0 else w, k)
                resnet(f"{enc}.{i}.1", w, depth)
            conv(f"{enc}.{down}", e, w, 3)
            dec = f"decoders.{level}.level_blocks.{b}.model"
            conv(f"{dec}.0", w, e, 3)
            for i in range(down):  # Sequential(Resnet1D, ConvTranspose1d); weight is (in, out, k)
                resnet(f"{dec}.{i + 1}.0", w, depth)
                c_out = e if i == down - 1 else w
                shapes[f"{dec}.{i + 1}.1.weight"] = (w, c_out, k)
                shapes[f"{dec}.{i + 1}.1.bias"] = (c_out,)
        conv(f"decoders.{level}.out", cfg.channels, e, 3)
        shapes[f"bottleneck.level_blocks.{level}.k"] = (cfg.l_bins, e)
    return shapes


def test_released_model_has_openai_keys_and_shapes():
    cfg = jukebox_vqvae()
    model = VQVAE(cfg)
    ours = {k: tuple(v.shape) for k, v in model.jukebox_state_dict().items()}
    expected = jukebox_key_shapes(cfg)
    assert set(ours) == set(expected)
    assert ours == expected
    for key, shape in {
        "encoders.0.level_blocks.0.model.0.0.weight": (64, 1, 4),
        "encoders.0.level_blocks.0.model.0.1.model.0.model.1.weight": (64, 64, 3),
        "encoders.0.level_blocks.0.model.0.1.model.7.model.3.weight": (64, 64, 1),
        "encoders.0.level_blocks.0.model.3.weight": (64, 64, 3),
        "encoders.2.level_blocks.2.model.1.1.model.3.model.3.bias": (32,),
        "decoders.0.level_blocks.0.model.0.weight": (64, 64, 3),
        "decoders.0.level_blocks.0.model.3.1.weight": (64, 64, 4),
        "decoders.1.level_blocks.1.model.2.0.model.3.model.1.weight": (32, 32, 3),
        "decoders.2.out.weight": (1, 64, 3),
        "bottleneck.level_blocks.2.k": (2048, 64),
    }.items():
        assert ours[key] == shape, key
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(math.prod(s) for k, s in expected.items() if not k.endswith(".k"))
    assert n_params == 1_485_763  # also what transformers' JukeboxVQVAE default config has
    # our extra EMA buffers, and nothing else
    extra = set(model.state_dict()) - set(expected)
    assert extra == {
        f"bottleneck.level_blocks.{lv}.{n}"
        for lv in range(3)
        for n in ("k_sum", "k_elem", "initialised")
    }


def test_dilations_res_scale_and_zero_out():
    cfg = _tiny(depth=4, dilation_cycle=3, res_scale=True, zero_out=True, multipliers=(2, 1, 1))
    model = VQVAE(cfg)
    enc_stack = model.encoders[0].level_blocks[0].model[0][1]
    dec_stack = model.decoders[0].level_blocks[0].model[1][0]
    enc_dil = [u.model[1].dilation[0] for u in enc_stack.model]
    dec_dil = [u.model[1].dilation[0] for u in dec_stack.model]
    assert enc_dil == [1, 3, 9, 1, 3, 9, 1, 3]  # depth 4 * multiplier 2, 3 ** (d % 3)
    assert dec_dil == enc_dil[::-1]  # reverse_decoder_dilation
    assert all(u.res_scale == pytest.approx(1 / math.sqrt(8)) for u in enc_stack.model)
    assert all(torch.all(u.model[3].weight == 0) for u in enc_stack.model)
    # level 1 is not multiplied: width 8, depth 4, still cycled
    stack1 = model.encoders[1].level_blocks[1].model[0][1]
    assert [u.model[1].dilation[0] for u in stack1.model] == [1, 3, 9, 1]
    assert stack1.model[0].model[1].in_channels == 8
    plain = VQVAE(_tiny(reverse_decoder_dilation=False))
    stack = plain.decoders[0].level_blocks[0].model[1][0]
    assert [u.model[1].dilation[0] for u in stack.model] == [1, 3, 9, 27]


@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_per_level(batch):
    cfg = tiny_vqvae()
    model = VQVAE(cfg).eval()
    x = _audio(cfg, batch)
    codes = model.encode(x)
    assert cfg.hop_lengths == (8, 32, 128)
    assert [tuple(c.shape) for c in codes] == [
        (batch, cfg.sample_length // h) for h in (8, 32, 128)
    ]
    assert all(c.dtype == torch.long and c.min() >= 0 and c.max() < cfg.l_bins for c in codes)
    for level in range(3):
        (only,) = model.encode(x, start_level=level, end_level=level + 1)
        assert torch.equal(only, codes[level])
        assert model.decode(codes[level:], start_level=level).shape == x.shape
    # a level range of the encoder, and decode ignores the codes of higher levels
    assert len(model.encode(x, start_level=1)) == 2
    assert torch.equal(model.decode(codes[1:2], start_level=1), model.decode(codes[1:], 1))
    out = model(x)
    assert isinstance(out, VQVAEOutput)
    assert [r.shape for r in out.recons] == [x.shape] * 3
    assert [tuple(c.shape) for c in out.codes] == [tuple(c.shape) for c in codes]


def test_bad_inputs_raise():
    cfg = tiny_vqvae()
    model = VQVAE(cfg)
    with pytest.raises(ValueError, match="multiple"):
        model.encode(torch.zeros(1, 1, 100))
    with pytest.raises(ValueError, match=r"Tensor\[B, 1, T\]"):
        model.encode(torch.zeros(1, 100 * 128))
    with pytest.raises(ValueError, match="level range"):
        model.encode(torch.zeros(1, 1, 128), start_level=2, end_level=1)
    # a bottom-level-only encode needs a multiple of 8, not of 128
    assert model.encode(torch.zeros(1, 1, 80), end_level=1)[0].shape == (1, 10)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"multipliers": (1, 0, 1)}, "multipliers"),
        ({"dilation_cycle": 0}, "dilation_cycle"),
        ({"strides_t": (2, 3, 2)}, "even"),
        ({"bandwidth": Bandwidth(l2=0.0)}, "bandwidth"),
        ({"commit": -1.0}, "commit"),
        ({"multispec_win": (512, 64, 32)}, "win <= n_fft"),
    ],
)
def test_config_validation_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        VQVAE(_tiny(**change))


def test_straight_through_gradient_reaches_encoders():
    cfg = tiny_vqvae()
    model = VQVAE(cfg).train()
    out = model(_audio(cfg))
    # the reconstruction term alone (no commit loss) must reach the encoder: straight-through
    out.terms["recons_l0"].backward(retain_graph=True)
    grads = [p.grad for p in model.encoders[0].parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in model.encoders[1].parameters())  # levels are separate
    model.zero_grad()
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_loss_is_weighted_sum_and_bandwidth_normalised():
    cfg = _tiny(spectral=0.5, commit=0.3, multispectral=2.0)
    model = VQVAE(cfg).train()
    x = _audio(cfg)
    model(x)  # initialise the codebooks
    model.eval()
    out = model(x)
    assert set(out.terms) == {
        *(f"{t}_l{lv}" for t in ("recons", "multispectral", "spectral") for lv in range(3)),
        "commit",
    }
    expected = sum(out.weights[k] * out.terms[k] for k in out.terms)
    torch.testing.assert_close(out.loss, expected)
    assert out.weights["commit"] == 0.3 and out.weights["spectral_l2"] == 0.5
    assert out.weights["multispectral_l0"] == 2.0
    for lv in range(3):
        for m in ("sc", "sc_db", "usage", "entropy", "fit", "commit"):
            assert f"{m}_l{lv}" in out.metrics
        assert out.metrics[f"sc_db_l{lv}"].item() == pytest.approx(
            20 * math.log10(out.metrics[f"sc_l{lv}"].item()), rel=1e-5
        )
    torch.testing.assert_close(
        out.terms["commit"], sum(out.metrics[f"commit_l{lv}"] for lv in range(3))
    )
    # same weights, doubled bandwidths: every normalised term halves
    cfg2 = dataclasses.replace(cfg, bandwidth=Bandwidth(l1=2.0, l2=2.0, spec=2.0))
    model2 = VQVAE(cfg2).eval()
    model2.load_state_dict(model.state_dict())
    out2 = model2(x)
    for name in out.terms:
        factor = 1.0 if name == "commit" else 0.5
        torch.testing.assert_close(out2.terms[name], out.terms[name] * factor)
    assert "spectral_l0" not in VQVAE(_tiny()).loss_weights  # weight 0: not computed


def test_train_mode_updates_codebooks_eval_mode_does_not():
    cfg = tiny_vqvae()
    model = VQVAE(cfg)
    x = _audio(cfg)
    model.eval()
    model(x)
    assert not any(bool(b.initialised) for b in model.bottleneck.level_blocks)
    model.train()
    out = model(x)
    assert all(bool(b.initialised) for b in model.bottleneck.level_blocks)
    assert "alive_l0" in out.metrics and "dk_l0" in out.metrics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    model(x)
    model.encode(x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_save_load_round_trip_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(tiny_vqvae(), bandwidth=Bandwidth(l1=0.2, l2=0.05, spec=30.0))
    torch.manual_seed(0)
    model = VQVAE(cfg).train()
    x = _audio(cfg)
    model(x)
    model.save_pretrained(tmp_path / "vqvae")
    assert sorted(p.name for p in (tmp_path / "vqvae").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    back = VQVAE.from_pretrained(tmp_path / "vqvae")
    assert back.cfg == cfg and not back.training
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    model.eval()
    codes = model.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(codes, back.encode(x)))
    assert torch.equal(model.decode(codes), back.decode(codes))
    # one more training step from both copies: identical EMA state (restarts use the same RNG)
    model.train()
    back.train()
    torch.manual_seed(1)
    model(x)
    torch.manual_seed(1)
    back(x)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    # saving over an existing folder replaces it
    back.save_pretrained(tmp_path / "vqvae")
    assert torch.equal(VQVAE.from_pretrained(tmp_path / "vqvae").codebook(0), back.codebook(0))


def test_openai_state_dict_loads_strictly_and_restores_ema():
    cfg = tiny_vqvae()
    torch.manual_seed(0)
    source = VQVAE(cfg).train()
    source(_audio(cfg))
    openai_sd = source.jukebox_state_dict()  # no EMA buffers, like vqvae.pth.tar
    plain = VQVAE(cfg)
    plain.load_state_dict(openai_sd, strict=True)
    for lv, block in enumerate(plain.bottleneck.level_blocks):
        assert torch.equal(block.k, source.codebook(lv))
        assert torch.equal(block.k_sum, block.k) and torch.all(block.k_elem == 1)
        assert bool(block.initialised)
    # the checkpoint layout: {"model": {"module.<key>": ...}} plus Jukebox's restore_k scaling
    wrapped = {"model": {f"module.{k}": v for k, v in openai_sd.items()}, "step": 3}
    scaled = VQVAE(cfg)
    tokens = scaled.tokens_per_step()
    assert tokens == [cfg.sample_length // h for h in (8, 32, 128)]
    scaled.load_jukebox_state_dict(wrapped, num_tokens=tokens)
    block = scaled.bottleneck.level_blocks[0]
    expected = tokens[0] / cfg.l_bins
    torch.testing.assert_close(block.k_elem, torch.full_like(block.k_elem, expected))
    torch.testing.assert_close(block.k_sum, block.k * expected)
    x = _audio(cfg, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(scaled.encode(x), source.encode(x)))
    with pytest.raises(RuntimeError, match="Missing key"):
        VQVAE(cfg).load_state_dict(
            {k: v for k, v in openai_sd.items() if "decoders.0" not in k}, strict=True
        )


def test_a_few_adam_steps_lower_the_loss():
    cfg = tiny_vqvae()
    torch.manual_seed(0)
    model = VQVAE(cfg).train()
    x = _audio(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(out.loss.item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < 0.9 * sum(history[:3]) / 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_trains_under_autocast():
    cfg = tiny_vqvae()
    torch.manual_seed(0)
    model = VQVAE(cfg).train()
    x = _audio(cfg)
    model(x)
    model.eval()
    codes = model.encode(x)
    gpu = VQVAE(cfg).eval().to("cuda")
    gpu.load_state_dict(model.state_dict())
    codes_gpu = gpu.encode(x.cuda())
    # cuDNN may use TF32 convolutions: nearly every code agrees, and decoding is close
    for a, b in zip(codes, codes_gpu):
        assert (a == b.cpu()).float().mean().item() > 0.95
    torch.testing.assert_close(
        gpu.decode([c.cuda() for c in codes]).cpu(), model.decode(codes), atol=2e-3, rtol=1e-2
    )
    gpu.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(x.cuda())
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    assert gpu.codebook(0).dtype == torch.float32 and gpu.codebook(0).is_cuda
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters())
