"""The released Jukebox presets: exact hyperparameters, parameter counts, memory table.

Parameter counts are checked three ways, all on the meta device (no memory used): our
models built from the presets, a closed-form count written here from the released hparams
(``jukebox/hparams.py``; the formulae follow the reference modules' shapes), and transformers'
``JukeboxPrior`` built from the same hyperparameters in its own vocabulary.
"""

import pytest
import torch

from teacher.config import ConfigError
from teacher.levels import LEVEL_NAMES
from teacher.presets import (
    MODELS,
    jukebox_vqvae,
    label_version,
    model_configs,
    prior_1b_lyrics,
    prior_5b,
    prior_5b_lyrics,
    upsampler,
)
from teacher.released.memory import format_memory_table, memory_table, parameter_count

# ---------------------------------------------------------------------------------------------
# closed-form counts from the released hparams


def _block(d: int, cross: bool = False) -> int:
    """One transformer block of width d (m_attn 0.25, m_mlp 1.0; reference ``ResAttnBlock``)."""
    s = d // 4
    attn = (d * s + s) + (d * 2 * s + 2 * s) if cross else d * 3 * s + 3 * s  # c_attn (+c_enc_kv)
    attn += s * d + d  # c_proj
    mlp = (d * d + d) + (d * d + d)  # c_fc, c_proj
    return attn + mlp + 4 * d  # + ln_0, ln_1


def _labels(d: int, genres: int, artists: int, t_bins: int = 0) -> int:
    return (genres + artists + 3 * t_bins) * d  # bow_genre_emb, artist_emb, 3 range embeddings


def _conditioner(d: int, width: int = 1024, depth: int = 16, down: int = 2) -> int:
    """``Conditioner``: x_emb (2048 bins), DecoderConvBock(d, d, down, stride 2), LayerNorm."""
    n = 2048 * d  # x_emb
    n += 3 * d * width + width  # Conv1d(d, width, 3)
    for i in range(down):
        n += depth * ((3 * width * width + width) + (width * width + width))  # ResConv1DBlocks
        out = d if i == down - 1 else width
        n += width * out * 4 + out  # ConvTranspose1d(width, out, 4, 2, 1)
    return n + 2 * d


def _released_counts() -> dict[str, int]:
    up = 1920
    upsampler_n = (
        72 * _block(up) + 2048 * up + 8192 * up + _labels(up, 120, 4111) + _conditioner(up)
    )  # tied x_out
    d = 2048  # 1b_lyrics: one sequence of 384 + 6144, vocabulary 79 + 2048, tied x_out
    one_b = 72 * _block(d) + (2048 + 79) * d + (6144 + 384) * d + _labels(d, 604, 7898, 64)
    d = 4800  # 5b: merged_decoder -> separate x_out
    five_b = 72 * _block(d) + 2 * 2048 * d + 8192 * d + _labels(d, 120, 4111, 128)
    e = 1280  # 5b_lyrics: 79 layers, cross-attention at 18, 28, ..., 78; lyric encoder 1280 x 18
    cross = {i for i in range(79) if i >= 9 and (i - 9) % 10 == 9}
    five_b_lyrics = sum(_block(d, i in cross) for i in range(79))
    five_b_lyrics += 2 * 2048 * d + 8192 * d + _labels(d, 120, 4111, 128)
    five_b_lyrics += 18 * _block(e) + 80 * e + 512 * e + e  # encoder x_emb, pos_emb, start_token
    five_b_lyrics += (e * d + d) + 2 * d + d * 80  # prime_state_proj, prime_state_ln, prime_x_out
    return {"upsampler": upsampler_n, "1b_lyrics": one_b, "5b": five_b, "5b_lyrics": five_b_lyrics}


def test_parameter_counts_match_the_released_hparams():
    ref = _released_counts()
    assert parameter_count(upsampler(0)) == parameter_count(upsampler(1)) == ref["upsampler"]
    assert parameter_count(prior_1b_lyrics()) == ref["1b_lyrics"]
    assert parameter_count(prior_5b()) == ref["5b"]
    assert parameter_count(prior_5b_lyrics()) == ref["5b_lyrics"]
    # the paper's round numbers: ~1B upsamplers and 1b_lyrics, ~5B top priors
    assert 0.9e9 < ref["upsampler"] < 1.1e9 and 0.9e9 < ref["1b_lyrics"] < 1.1e9
    assert 4.9e9 < ref["5b"] < 5.2e9 and 5.5e9 < ref["5b_lyrics"] < 5.8e9


def test_vqvae_parameter_count():
    # encoder and decoder per level: width 32 (x2 at the bottom), depth 4 (x2), emb 64
    def res(w: int, depth: int) -> int:
        return depth * ((3 * w * w + w) + (w * w + w))

    total = 0
    for level, (down, mult) in enumerate(zip((3, 2, 2), (2, 1, 1))):
        w, depth = 32 * mult, 4 * mult
        for lv in range(level + 1):  # encoder L chains the down blocks of levels 0..L
            dn = (3, 2, 2)[lv]
            c_in = 1 if lv == 0 else 64
            enc = (c_in * w * 4 + w) + (dn - 1) * (w * w * 4 + w) + dn * res(w, depth)
            total += enc + (w * 64 * 3 + 64)  # + proj to emb
            dec = (64 * w * 3 + w) + dn * res(w, depth) + (dn - 1) * (w * w * 4 + w)
            total += dec + (w * 64 * 4 + 64)  # last transposed conv to emb width
        total += 64 * 1 * 3 + 1  # decoder output conv
        del down
    assert parameter_count(jukebox_vqvae()) == total


jukebox = pytest.importorskip("transformers.models.deprecated.jukebox.modeling_jukebox")
jukebox_cfg = pytest.importorskip("transformers.models.deprecated.jukebox.configuration_jukebox")

_HF_COMMON = dict(mask=True, music_vocab_size=2048, n_ctx=8192, blocks=128)
HF_RELEASED = {
    "upsampler": dict(
        _HF_COMMON,
        level=1,
        hidden_size=1920,
        num_layers=72,
        n_heads=1,
        attention_pattern="raw_column_previous_row_attention",
        nb_relevant_lyric_tokens=0,
        is_encoder_decoder=False,
        merged_decoder=False,
        metadata_dims=[120, 4111],
        res_conv_width=1024,
        res_conv_depth=16,
        res_dilation_growth_rate=3,
        res_dilation_cycle=8,
        conv_res_scale=True,
    ),
    "1b_lyrics": dict(
        _HF_COMMON,
        level=0,
        hidden_size=2048,
        num_layers=72,
        n_heads=2,
        attention_pattern="enc_dec_with_lyrics",
        blocks=64,
        n_ctx=6144,
        nb_relevant_lyric_tokens=384,
        lyric_vocab_size=79,
        is_encoder_decoder=True,
        merged_decoder=False,
        metadata_dims=[604, 7898],
        timing_dims=64,
    ),
    "5b": dict(
        _HF_COMMON,
        level=0,
        hidden_size=4800,
        num_layers=72,
        n_heads=8,
        attention_pattern="raw_column_previous_row_attention",
        nb_relevant_lyric_tokens=0,
        is_encoder_decoder=False,
        merged_decoder=True,
        metadata_dims=[120, 4111],
        timing_dims=128,
    ),
    "5b_lyrics": dict(
        _HF_COMMON,
        level=0,
        hidden_size=4800,
        num_layers=79,
        n_heads=8,
        attention_pattern="large_separated_enc_dec_w_lyrics",
        nb_relevant_lyric_tokens=512,
        lyric_vocab_size=80,
        is_encoder_decoder=False,
        merged_decoder=True,
        metadata_dims=[120, 4111],
        timing_dims=128,
        encoder_config=dict(
            hidden_size=1280,
            num_layers=18,
            n_heads=4,
            attention_pattern="raw_column_previous_row_attention",
            blocks=32,
            n_ctx=512,
            mask=True,
            init_scale=0.7,
        ),
    ),
}


@pytest.mark.parametrize("name", HF_RELEASED)
def test_parameter_counts_match_transformers_on_meta(name):
    with torch.device("meta"):
        hf = jukebox.JukeboxPrior(jukebox_cfg.JukeboxPriorConfig(**HF_RELEASED[name]))
    n = sum(p.numel() for p in hf.parameters())
    ours = {"upsampler": upsampler(1), "1b_lyrics": prior_1b_lyrics(), "5b": prior_5b()}
    ours["5b_lyrics"] = prior_5b_lyrics()
    assert n == parameter_count(ours[name])


# ---------------------------------------------------------------------------------------------
# hyperparameters


def test_exact_released_hyperparameters():
    one = prior_1b_lyrics()
    tr = one.transformer
    assert (tr.width, tr.depth, tr.heads, tr.attn_order, tr.blocks) == (2048, 72, 2, 12, 64)
    assert (one.n_ctx, tr.n_ctx, tr.prime_len, tr.init_scale) == (6144, 6528, 384, 0.2)
    assert one.lyrics.style == "single" and one.lyrics.n_vocab == 79 and one.n_tokens == 384
    assert (one.lyrics.alignment_layer, one.lyrics.alignment_head) == (63, 0)
    lab = one.labels
    assert (lab.genre_bins, lab.artist_bins, lab.t_bins, lab.max_genres) == (604, 7898, 64, 1)
    assert (lab.min_duration, lab.max_duration, lab.include_timing) == (17.84, 600.0, True)
    assert not one.merged_decoder and one.lyrics.loss_fraction == 0.4

    five = prior_5b()
    tr = five.transformer
    assert (tr.width, tr.depth, tr.heads, tr.attn_order, tr.blocks) == (4800, 72, 8, 2, 128)
    assert (five.n_ctx, tr.init_scale, five.merged_decoder, five.lyrics) == (8192, 0.1, True, None)
    lab = five.labels
    assert (lab.genre_bins, lab.artist_bins, lab.t_bins, lab.max_genres) == (120, 4111, 128, 5)
    assert (lab.min_duration, lab.max_duration) == (60.0, 600.0)

    fl = prior_5b_lyrics()
    tr, enc = fl.transformer, fl.lyrics.encoder
    assert (tr.width, tr.depth, tr.heads, tr.attn_order, tr.encoder_dims) == (4800, 79, 8, 10, 512)
    assert (enc.width, enc.depth, enc.heads, enc.attn_order, enc.blocks) == (1280, 18, 4, 2, 32)
    assert enc.init_scale == 0.7 and fl.lyrics.n_vocab == 80 and fl.labels.min_duration == 23.8
    assert (fl.lyrics.alignment_layer, fl.lyrics.alignment_head) == (68, 2)

    for level in (0, 1):
        up = upsampler(level)
        tr, c = up.transformer, up.conditioner
        assert up.level == level and up.is_upsampler and up.n_ctx == 8192
        assert (tr.width, tr.depth, tr.heads, tr.attn_order, tr.blocks) == (1920, 72, 1, 2, 128)
        assert tr.init_scale == 0.4 and not up.merged_decoder
        assert (c.width, c.depth, c.dilation_growth_rate, c.dilation_cycle) == (1024, 16, 3, 8)
        assert c.res_scale == (level == 1)  # cond_res_scale: middle upsampler only
        assert not up.labels.include_timing and up.labels.artist_bins == 4111
        assert up.hop_length == (8, 32)[level] and up.upsample_ratio == 4
    with pytest.raises(ConfigError, match="levels 0"):
        upsampler(2)


def test_models_and_label_versions():
    assert set(MODELS) == {"1b_lyrics", "5b", "5b_lyrics"}
    for name in MODELS:
        cfgs = model_configs(name)
        assert [p.level for p in cfgs.priors] == [0, 1, 2] and cfgs.top is cfgs.priors[2]
        assert cfgs.vqvae == jukebox_vqvae()
        assert cfgs.priors[0] == upsampler(0) and cfgs.priors[1] == upsampler(1)
        assert cfgs.vocab_version(0) == cfgs.vocab_version(1) == "v2"
    assert label_version(prior_1b_lyrics()) == "v3"
    assert label_version(prior_5b()) == label_version(prior_5b_lyrics()) == "v2"
    assert dict(enumerate(LEVEL_NAMES)) == {0: "bottom", 1: "middle", 2: "top"}
    with pytest.raises(ConfigError, match="unknown Jukebox model"):
        model_configs("10b")


def test_memory_table():
    rows = {r.part: r for r in memory_table("5b_lyrics")}
    assert list(rows) == ["vqvae", "bottom", "middle", "top"]
    top = rows["top"]
    assert top.params == parameter_count(prior_5b_lyrics())
    assert top.weights_fp32 == 2 * top.weights_fp16 == 4 * top.params
    # full-window cache: 2 (k, v) x layers x n_ctx x n_state x 2 bytes, + the lyric encoder
    assert top.kv_full_fp16 == 2 * 79 * 8192 * 1200 * 2 + 2 * 18 * 512 * 320 * 2
    assert 0 < top.kv_fp16 < top.kv_full_fp16  # row and previous-row layers keep one block
    up = rows["middle"]
    # upsampler: 24 layers of each kind; row 64, prev-row 128, column 8192 positions of 480
    assert up.kv_fp16 == 2 * 24 * (64 + 128 + 8192) * 480 * 2
    table = format_memory_table()
    assert table.count("top prior") == 3 and table.count("(shared)") == 3
