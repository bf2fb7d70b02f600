"""Parity with transformers' port of the Jukebox priors (``JukeboxPrior``) on random weights.

Three tiny priors, one per released conditioning style: a labelled top prior with timing and
1b-style lyrics (one ``[lyrics | music]`` sequence, ``enc_dec_with_lyrics`` = attn_order 12,
whose first prime layer is layer 15), a 5b-style top prior whose lyric encoder feeds
cross-attention (``large_separated_enc_dec_w_lyrics`` = attn_order 10, first cross layer 18)
and a labelled upsampler (``raw_column_previous_row_attention`` = attn_order 2). Every
parameter is refilled with seeded random values (the port leaves some uninitialised), the
state dict converted by ``teacher.released.hf_keys`` and the teacher-forced logits of every position
compared, as well as the losses. The port's alignment output is not compared (it is buggy).
"""

import pytest
import torch

from teacher.prior.model import Prior
from teacher.released.hf_keys import (
    prior_config_from_transformers,
    prior_from_transformers_state_dict,
    prior_state_dict_from_transformers,
)

jukebox = pytest.importorskip("transformers.models.deprecated.jukebox.modeling_jukebox")
jukebox_cfg = pytest.importorskip("transformers.models.deprecated.jukebox.configuration_jukebox")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SR = 8000
COMMON = dict(
    music_vocab_size=32,
    sampling_rate=SR,
    timing_dims=16,
    min_duration=0.25,
    max_duration=30.0,
    metadata_dims=[5, 6],  # (genres, artists)
    max_nb_genres=2,
    mask=True,  # the port's default is bidirectional; Jukebox priors are causal
    res_downs_t=[3, 2, 2],
    res_strides_t=[2, 2, 2],
    init_scale=0.7,
    n_ctx=32,
    blocks=4,
)

CONFIGS = {
    "top_timing_single_lyrics": dict(
        level=0,
        hidden_size=32,
        num_layers=16,
        n_heads=2,
        attention_pattern="enc_dec_with_lyrics",
        nb_relevant_lyric_tokens=16,
        lyric_vocab_size=79,
        is_encoder_decoder=True,
        merged_decoder=False,
        encoder_loss_fraction=0.4,
    ),
    "top_timing_lyric_encoder": dict(
        level=0,
        hidden_size=32,
        num_layers=19,
        n_heads=2,
        attention_pattern="large_separated_enc_dec_w_lyrics",
        nb_relevant_lyric_tokens=16,
        lyric_vocab_size=80,
        is_encoder_decoder=False,
        merged_decoder=True,
        encoder_loss_fraction=0.4,
        encoder_config=dict(
            hidden_size=24,
            num_layers=3,
            n_heads=2,
            attention_pattern="raw_column_previous_row_attention",
            blocks=4,
            mask=True,
            n_ctx=16,
            nb_relevant_lyric_tokens=16,
            init_scale=0.7,
        ),
    ),
    "upsampler": dict(
        level=1,
        hidden_size=32,
        num_layers=4,
        n_heads=1,
        attention_pattern="raw_column_previous_row_attention",
        nb_relevant_lyric_tokens=0,
        is_encoder_decoder=False,
        merged_decoder=False,
        res_conv_width=8,
        res_conv_depth=3,
        res_dilation_growth_rate=3,
        res_dilation_cycle=2,
        conv_res_scale=True,
    ),
}


def _hf_prior(name: str, seed: int = 0):
    hf_cfg = jukebox_cfg.JukeboxPriorConfig(**COMMON, **CONFIGS[name])
    torch.manual_seed(seed)
    hf = jukebox.JukeboxPrior(hf_cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if "norm" in pname and pname.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return hf, hf_cfg


def _inputs(cfg, batch: int = 2, seed: int = 0, offsets=(SR, 0), totals=(SR * 5, SR * 10)):
    g = torch.Generator().manual_seed(seed)
    rows = [
        [totals[b], offsets[b], cfg.sample_length, (1 + 2 * b) % 6, *([2, -1], [1, 4])[b % 2]]
        for b in range(batch)
    ]
    labels = torch.tensor(rows)
    if cfg.n_tokens:
        lyrics = torch.randint(0, cfg.lyrics.n_vocab, (batch, cfg.n_tokens), generator=g)
        labels = torch.cat([labels, lyrics], dim=1)
    codes = torch.randint(0, cfg.l_bins, (batch, cfg.n_ctx), generator=g)
    upper = None
    if cfg.is_upsampler:
        upper = torch.randint(0, cfg.l_bins, (batch, cfg.n_ctx // cfg.upsample_ratio), generator=g)
    return codes, labels, upper


def _hf_logits_and_loss(hf, name, codes, labels, upper):
    """Teacher-forced logits and loss of the port (``forward_tokens`` with ``get_preds``).

    ``forward_tokens`` itself fails for the two separate-encoder cases (it ``.view``s a
    non-contiguous lyric slice, and calls the encoder loss on ``None`` without lyrics), so
    those run its steps one by one, exactly as it would.
    """
    conds = [upper] if upper is not None else []
    if name == "top_timing_single_lyrics":
        loss, metrics = hf.forward_tokens(codes, conds, labels, get_preds=True)
        return metrics["preds"], loss
    audio_cond, meta_cond, lyrics = hf.get_cond(conds, labels)
    states = hf.get_encoder_states(lyrics)
    music_loss, preds = hf.prior(codes, audio_cond, meta_cond, states, get_preds=True)
    if states is None:
        return preds, music_loss
    lyric_loss = hf.get_encoder_loss(states, lyrics.contiguous())
    n, t = hf.nb_relevant_lyric_tokens, hf.next_token_prediction_loss_dims
    loss = (hf.encoder_loss_fraction * lyric_loss * n + music_loss * t) / (n + t)
    return preds, loss


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_loss_match_transformers(name):
    hf, hf_cfg = _hf_prior(name)
    cfg, state = prior_from_transformers_state_dict(hf.state_dict(), hf_cfg)
    ours = Prior(cfg).eval()
    ours.load_state_dict(state, strict=True)
    codes, labels, upper = _inputs(cfg)
    with torch.no_grad():
        ref, ref_loss = _hf_logits_and_loss(hf, name, codes, labels, upper)
        cond = ours.condition(labels, upper)
        full = ours.sequence_logits(codes, cond)
        out = ours(codes, labels, upper)
        music = ours.logits(codes, cond=cond)
    assert full.shape == ref.shape
    assert ref.abs().max() > 0.5  # the comparison is not between near-zero numbers
    torch.testing.assert_close(full, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-5)
    if cfg.single_sequence:
        torch.testing.assert_close(
            music, ref[:, cfg.n_tokens :, cfg.vocab_offset :], rtol=0, atol=1e-5
        )
    else:
        torch.testing.assert_close(music, ref, rtol=0, atol=1e-5)


def test_converted_config():
    _, hf_cfg = _hf_prior("top_timing_single_lyrics")
    cfg = prior_config_from_transformers(hf_cfg)
    assert cfg.level == 2 and not cfg.is_upsampler
    assert cfg.transformer.attn_order == 12 and cfg.transformer.n_ctx == 48
    assert cfg.transformer.prime_len == 16 and cfg.lyrics.style == "single"
    assert cfg.labels.include_timing and cfg.labels.artist_bins == 6 and cfg.labels.genre_bins == 5
    assert cfg.lyrics.n_vocab == 79 and cfg.lyrics.loss_fraction == 0.4
    _, hf_cfg = _hf_prior("top_timing_lyric_encoder")
    cfg = prior_config_from_transformers(hf_cfg)
    assert cfg.transformer.attn_order == 10 and cfg.transformer.encoder_dims == 16
    assert cfg.lyrics.style == "encoder" and cfg.lyrics.encoder.width == 24 and cfg.merged_decoder
    _, hf_cfg = _hf_prior("upsampler")
    cfg = prior_config_from_transformers(hf_cfg)
    assert cfg.level == 1 and cfg.upsample_ratio == 4 and not cfg.labels.include_timing
    assert cfg.conditioner.res_scale and cfg.conditioner.dilation_cycle == 2


def test_timing_bins_match_at_the_range_edges():
    """Offsets whose window runs past the song's end (relative position clamped at 1), a
    window ending at max_duration, and totals at both ends of the total-length range."""
    name = "top_timing_single_lyrics"
    hf, hf_cfg = _hf_prior(name, seed=3)
    cfg, state = prior_from_transformers_state_dict(hf.state_dict(), hf_cfg)
    ours = Prior(cfg).eval()
    ours.load_state_dict(state)
    max_len = int(30.0 * SR)
    cases = [
        ((int(0.25 * SR), SR), (int(0.25 * SR) - 100, 0)),  # minimum total, past the end
        ((max_len - 1, max_len - 1), (max_len - cfg.sample_length, 77)),  # ends at the maximum
    ]
    for totals, offsets in cases:
        codes, labels, upper = _inputs(cfg, offsets=offsets, totals=totals)
        with torch.no_grad():
            ref, _ = _hf_logits_and_loss(hf, name, codes, labels, upper)
            full = ours.sequence_logits(codes, ours.condition(labels, upper))
        torch.testing.assert_close(full, ref, rtol=0, atol=1e-5)


def test_whole_model_state_dict_and_conversion_errors():
    hf, hf_cfg = _hf_prior("upsampler")
    sd = {f"priors.1.{k}": v for k, v in hf.state_dict().items()}
    sd["priors.0.prior.pos_emb.pos_emb"] = torch.zeros(1)  # another level's key: ignored
    sd["vqvae.decoders.0.out.weight"] = torch.zeros(1)
    cfg, state = prior_from_transformers_state_dict(sd, hf_cfg)
    assert set(state) == set(Prior(cfg).state_dict())
    with pytest.raises(KeyError, match="unexpected"):
        prior_state_dict_from_transformers({"prior.something_new": torch.zeros(1)})
    bidirectional = jukebox_cfg.JukeboxPriorConfig(
        **{**COMMON, "mask": False}, **CONFIGS["upsampler"]
    )
    with pytest.raises(ValueError, match="causal"):
        prior_config_from_transformers(bidirectional)
    asymmetric = jukebox_cfg.JukeboxPriorConfig(
        **{**COMMON, "res_downs_t": [3, 1, 2]}, **CONFIGS["upsampler"]
    )
    with pytest.raises(ValueError, match="disagree"):
        prior_config_from_transformers(asymmetric)
