"""Config validation and (de)serialisation."""

import dataclasses

import pytest

from teacher.config import ConfigError, load_config, save_config
from teacher.presets import jukebox_vqvae, tiny_vqvae
from teacher.train.loop import TrainConfig, lr_lambda
from teacher.vqvae.config import Bandwidth, VQVAEConfig


def test_released_vqvae_hops():
    cfg = jukebox_vqvae().validate()
    assert cfg.hop_lengths == (8, 32, 128)
    assert cfg.sample_rate == 44100 and cfg.l_bins == 2048 and cfg.multipliers == (2, 1, 1)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sample_length": 1000}, "multiple of the top hop"),
        ({"multipliers": (1, 1)}, "one entry per level"),
        ({"mu": 1.0}, "mu must be in"),
        ({"channels": 2}, "mono"),
        ({"strides_t": (2, 1, 2)}, "strides_t"),
    ],
)
def test_vqvae_config_validation(change, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(tiny_vqvae(), **change).validate()


def test_config_json_round_trip(tmp_path):
    cfg = dataclasses.replace(tiny_vqvae(), bandwidth=Bandwidth(l1=0.1, l2=0.02, spec=3.5))
    save_config(cfg, tmp_path / "config.json")
    back = load_config(VQVAEConfig, tmp_path / "config.json")
    assert back == cfg
    assert isinstance(back.downs_t, tuple) and isinstance(back.bandwidth, Bandwidth)


def test_config_rejects_unknown_fields_and_wrong_class(tmp_path):
    (tmp_path / "c.json").write_text('{"_class": "VQVAEConfig", "nope": 1}')
    with pytest.raises(ConfigError, match="unknown VQVAEConfig fields"):
        load_config(VQVAEConfig, tmp_path / "c.json")
    (tmp_path / "d.json").write_text('{"_class": "PriorConfig"}')
    with pytest.raises(ConfigError, match="holds a PriorConfig"):
        load_config(VQVAEConfig, tmp_path / "d.json")


def test_train_config_validation_and_schedule():
    with pytest.raises(ConfigError, match="train_batch_size"):
        TrainConfig(output_dir="x", train_batch_size=0).validate()
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig(output_dir="x", mixed_precision="fp8").validate()
    cfg = TrainConfig(output_dir="x", lr_warmup_steps=4, lr_scheduler="linear", max_train_steps=14)
    f = lr_lambda(cfg)
    assert [round(f(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0)
    cos = lr_lambda(dataclasses.replace(cfg, lr_scheduler="cosine"))
    assert cos(9) == pytest.approx(0.5) and cos(4) == pytest.approx(1.0)
