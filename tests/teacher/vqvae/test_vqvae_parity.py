"""Parity with transformers' port of the Jukebox VQ-VAE on random weights.

Every parameter and codebook of a transformers ``JukeboxVQVAE`` is filled with seeded random
values, its state dict mapped by ``teacher.released.hf_keys``, and codes and decoded audio compared level
by level. Only ``encode``/``decode`` are compared: the port's ``forward`` pairs level L's
latents with the codebook of level ``levels-1-L``.
"""

import pytest
import torch

from teacher.released.hf_keys import (
    vqvae_config_from_transformers,
    vqvae_from_transformers_state_dict,
)
from teacher.vqvae import VQVAE

jukebox = pytest.importorskip("transformers.models.deprecated.jukebox.modeling_jukebox")
jukebox_cfg = pytest.importorskip("transformers.models.deprecated.jukebox.configuration_jukebox")


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and unlike two it does not slow
    down many-fold when a neighbouring process keeps the other core busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CONFIGS = {
    # the released topology, scaled down: 3 levels, hops 8/32/128, bottom level x2
    "three_levels": dict(
        levels=3,
        res_downs_t=[3, 2, 2],
        res_strides_t=[2, 2, 2],
        embed_dim=8,
        nb_discrete_codes=32,
        res_conv_width=8,
        res_conv_depth=2,
        multipliers=[2, 1, 1],
        res_dilation_growth_rate=3,
        sample_length=2048,
    ),
    # other strides, a dilation cycle, res_scale, a wider residual branch, top level x2
    "two_levels": dict(
        levels=2,
        res_downs_t=[2, 1],
        res_strides_t=[2, 4],
        embed_dim=6,
        nb_discrete_codes=24,
        res_conv_width=6,
        res_conv_depth=3,
        multipliers=[1, 2],
        res_dilation_growth_rate=2,
        res_dilation_cycle=2,
        res_convolution_multiplier=2,
        conv_res_scale=True,
        sample_length=1024,
    ),
    "one_level": dict(
        levels=1,
        res_downs_t=[2],
        res_strides_t=[2],
        embed_dim=4,
        nb_discrete_codes=8,
        res_conv_width=5,
        res_conv_depth=1,
        multipliers=[3],
        res_dilation_growth_rate=3,
        sample_length=256,
    ),
}


def _random_hf_vqvae(kwargs: dict, x: torch.Tensor, seed: int):
    """A transformers JukeboxVQVAE with every tensor set from a seeded generator."""
    torch.manual_seed(seed)
    hf_cfg = jukebox_cfg.JukeboxVQVAEConfig(**kwargs)
    hf = jukebox.JukeboxVQVAE(hf_cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in hf.state_dict().items():
            if name.endswith("codebook"):
                continue
            if name.endswith("weight"):
                fan_in = t.shape[1] * t.shape[2] if "upsample_block" not in name else t.shape[0]
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
        # random codebooks on the scale of each level's latents, so many codes are in use
        for level, block in enumerate(hf.bottleneck.level_blocks):
            z = hf.encoders[level](x)[-1].transpose(1, 2).reshape(-1, hf_cfg.embed_dim)
            k = z.mean(0) + z.std(0) * torch.randn(block.codebook.shape, generator=g)
            block.codebook.copy_(k)
    return hf, hf_cfg


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_codes_and_audio_match_transformers(name):
    kwargs = CONFIGS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, kwargs["sample_length"], generator=g) * 1.6 - 0.8  # Tensor[B, 1, T]
    hf, hf_cfg = _random_hf_vqvae(kwargs, x, seed=len(name))

    cfg = vqvae_config_from_transformers(hf_cfg)
    assert cfg.levels == kwargs["levels"] and cfg.multipliers == tuple(kwargs["multipliers"])
    ours = VQVAE(cfg).eval()
    ours.load_state_dict(vqvae_from_transformers_state_dict(hf.state_dict()), strict=True)

    with torch.no_grad():
        x_hf = x.transpose(1, 2)  # the port takes Tensor[B, T, 1]
        all_ours = ours.encode(x)
        all_hf = hf.encode(x_hf)
        for level in range(cfg.levels):
            (codes_hf,) = hf.encode(x_hf, start_level=level, end_level=level + 1)
            (codes,) = ours.encode(x, start_level=level, end_level=level + 1)
            assert codes.shape == (3, kwargs["sample_length"] // cfg.hop_lengths[level])
            assert torch.equal(codes, codes_hf), f"level {level}"
            assert torch.equal(all_ours[level], all_hf[level])
            assert codes.unique().numel() >= min(4, codes.numel())  # a non-trivial test

            audio_hf = hf.decode([codes_hf], start_level=level, end_level=level + 1)
            audio = ours.decode([codes], start_level=level)
            assert audio.shape == x.shape
            torch.testing.assert_close(audio, audio_hf.transpose(1, 2), atol=1e-5, rtol=0)

            # every code of the codebook, not only those the encoder picked
            rand = torch.randint(0, cfg.l_bins, codes.shape, generator=g)
            torch.testing.assert_close(
                ours.decode([rand], start_level=level),
                hf.decode([rand], start_level=level, end_level=level + 1).transpose(1, 2),
                atol=1e-5,
                rtol=0,
            )


def test_config_conversion_of_the_released_model():
    cfg = vqvae_config_from_transformers(jukebox_cfg.JukeboxVQVAEConfig())
    assert cfg.hop_lengths == (8, 32, 128) and cfg.l_bins == 2048 and cfg.emb_width == 64
    assert cfg.width == 32 and cfg.depth == 4 and cfg.multipliers == (2, 1, 1)
    assert cfg.dilation_growth_rate == 3 and cfg.dilation_cycle is None
    assert cfg.sample_rate == 44100 and cfg.commit == 0.02


def test_state_dict_mapping_rejects_unknown_keys():
    with pytest.raises(KeyError, match="unexpected"):
        vqvae_from_transformers_state_dict({"encoders.0.level_blocks.0.mystery.weight": None})
    # a whole JukeboxModel state dict: only the vqvae.* keys are taken
    sd = vqvae_from_transformers_state_dict(
        {
            "vqvae.decoders.0.out.weight": 1,
            "priors.0.x": 2,
            "vqvae.bottleneck.level_blocks.1.codebook": 3,
        }
    )
    assert sd == {"decoders.0.out.weight": 1, "bottleneck.level_blocks.1.k": 3}
