"""The assembled prior: config validation, conditioners, OpenAI key names, causality through
the whole model, loss weighting, partial windows, save/load and a few training steps."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from teacher.config import ConfigError
from teacher.presets import small_top_prior, small_upsampler, tiny_top_prior, tiny_upsampler
from teacher.prior.conditioners import LabelConditioner, RangeEmbedding
from teacher.prior.config import (
    LabelConditionerConfig,
    LyricsConfig,
    PriorConfig,
    UpsamplerConditionerConfig,
)
from teacher.prior.model import Prior
from teacher.prior.transformer import TransformerConfig


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


STYLES = {
    "top_single": lambda: tiny_top_prior("single"),
    "top_encoder": lambda: tiny_top_prior("encoder"),
    "top_plain": lambda: tiny_top_prior(None),
    "upsampler": lambda: tiny_upsampler(1),
    "upsampler_unlabelled": lambda: tiny_upsampler(0, labels=False),
}


def make_inputs(cfg: PriorConfig, batch: int = 2, seed: int = 0):
    """Random codes, labels (timing inside the configured ranges) and upper codes."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.l_bins, (batch, cfg.n_ctx), generator=g)
    labels = upper = None
    if cfg.labels is not None:
        lab = cfg.labels
        sr = cfg.sample_rate
        rows = []
        for b in range(batch):
            total = int(
                sr
                * (lab.min_duration + (b + 1) * 0.3 * (lab.max_duration - lab.min_duration) / batch)
            )
            offset = (b * 997) % max(total - 1, 1)
            genres = [1 + b % (lab.genre_bins - 1)] + [-1] * (lab.max_genres - 1)
            rows.append([total, offset, cfg.sample_length, b % lab.artist_bins, *genres])
        labels = torch.tensor(rows)
        if cfg.n_tokens:
            lyr = torch.randint(0, cfg.lyrics.n_vocab, (batch, cfg.n_tokens), generator=g)
            labels = torch.cat([labels, lyr], dim=1)
    if cfg.is_upsampler:
        upper = torch.randint(0, cfg.l_bins, (batch, cfg.n_ctx // cfg.upsample_ratio), generator=g)
    return codes, labels, upper


# ---------------------------------------------------------------------------------------------
# config


def test_presets_validate():
    for make in (
        *STYLES.values(),
        small_top_prior,
        lambda: small_top_prior(n_tokens=64),
        lambda: small_upsampler(0),
        lambda: small_upsampler(1),
    ):
        cfg = make()
        assert cfg.validate() is cfg
    top = tiny_top_prior("single")
    assert top.seq_len == top.n_ctx + top.n_tokens
    assert top.vocab_size == top.l_bins + top.lyrics.n_vocab
    assert top.label_size == 4 + top.labels.max_genres + top.n_tokens
    assert top.hop_length == 128 and top.sample_length == 128 * top.n_ctx
    up = tiny_upsampler(1)
    assert up.hop_length == 32 and up.upsample_ratio == 4
    assert tiny_upsampler(0).hop_length == 8


def _replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: _replace(tiny_top_prior(None), level=3), "level must be"),
        (lambda: _replace(tiny_top_prior(None), n_ctx=31), "transformer.n_ctx"),
        (lambda: _replace(tiny_upsampler(), conditioner=None), "needs a conditioner"),
        (
            lambda: _replace(tiny_top_prior(None), conditioner=UpsamplerConditionerConfig()),
            "top prior has no upper-level conditioner",
        ),
        (
            lambda: _replace(tiny_upsampler(), labels=LabelConditionerConfig(include_timing=True)),
            "timing conditioning is for the top prior only",
        ),
        (
            lambda: _replace(tiny_top_prior("single"), labels=None),
            "lyrics need labels",
        ),
        (
            lambda: _replace(
                tiny_top_prior("single"),
                transformer=_replace(tiny_top_prior("single").transformer, prime_len=8),
            ),
            "prime_len",
        ),
        (
            lambda: _replace(
                tiny_top_prior("encoder"),
                lyrics=_replace(tiny_top_prior("encoder").lyrics, n_tokens=8),
            ),
            "n_ctx",
        ),
        (lambda: _replace(tiny_top_prior("single"), lyrics=LyricsConfig(style="both")), "style"),
        (
            lambda: _replace(
                tiny_top_prior(None), labels=LabelConditionerConfig(min_duration=5, max_duration=5)
            ),
            "min_duration",
        ),
        (lambda: _replace(tiny_top_prior(None), l_bins=1), "l_bins"),
        (
            lambda: _replace(
                tiny_upsampler(),
                n_ctx=30,
                transformer=_replace(tiny_upsampler().transformer, n_ctx=30, blocks=5),
            ),
            "multiple of the upsampling ratio",
        ),
        (lambda: _replace(tiny_top_prior(None), strides_t=(2, 2)), "same length"),
    ],
)
def test_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make().validate()


def test_prior_validates_its_config():
    bad = _replace(tiny_top_prior(None), emb_dropout=1.0)
    with pytest.raises(ConfigError, match="emb_dropout"):
        Prior(bad)


# ---------------------------------------------------------------------------------------------
# conditioners


def test_range_embedding_bins_and_clamp():
    emb = RangeEmbedding(4, 10, (0.0, 1.0), 3, clamp=True)
    start = torch.tensor([[0.0], [0.5]])
    end = torch.tensor([[1.0], [1.7]])  # the second end is clamped to 1.0
    bins = emb.bin_index(start, end)
    # positions start + (end - start) * i / 4, binned by floor(10 * v)
    assert bins.tolist() == [[0, 2, 5, 7], [5, 6, 7, 8]]
    total = RangeEmbedding(1, 8, (100.0, 900.0), 3)
    assert total.bin_index(torch.tensor([[100.0], [899.0], [500.0]])).view(-1).tolist() == [0, 7, 4]
    with pytest.raises(ValueError, match="timing bin"):
        total.bin_index(torch.tensor([[900.0]]))  # the range is open on the right
    with pytest.raises(ValueError, match="timing bin"):
        total.bin_index(torch.tensor([[50.0]]))
    assert emb(start, end).shape == (2, 4, 3)


def test_label_conditioner_masks_empty_genres_and_sums_timing():
    lab = LabelConditionerConfig(
        artist_bins=4, genre_bins=5, max_genres=3, t_bins=8, min_duration=1.0, max_duration=9.0
    )
    cond = LabelConditioner(lab, width=6, n_time=5, sample_rate=10)
    y = torch.tensor([[50, 10, 20, 2, 1, 3, -1], [80, 0, 40, 0, 4, -1, -1]])
    start, timing = cond(y)
    a, g = cond.artist_emb.emb.weight, cond.bow_genre_emb.emb.weight
    torch.testing.assert_close(start[0, 0], a[2] + g[1] + g[3])
    torch.testing.assert_close(start[1, 0], a[0] + g[4])
    # timing = total-length bin + absolute-position bins + relative-position bins
    t_idx = cond.total_length_emb.bin_index(torch.tensor([[50.0]]))
    assert t_idx.item() == math.floor(8 * (50 - 10) / (90 - 10))
    abs_idx = cond.absolute_pos_emb.bin_index(torch.tensor([[10.0]]), torch.tensor([[30.0]]))
    rel_idx = cond.relative_pos_emb.bin_index(torch.tensor([[0.2]]), torch.tensor([[0.6]]))
    expected = (
        cond.total_length_emb.emb.weight[t_idx[0, 0]]
        + cond.absolute_pos_emb.emb.weight[abs_idx[0]]
        + cond.relative_pos_emb.emb.weight[rel_idx[0]]
    )
    torch.testing.assert_close(timing[0], expected)
    assert timing.shape == (2, 5, 6)
    with pytest.raises(ValueError, match="label id"):
        cond(torch.tensor([[50, 10, 20, 4, 1, -1, -1]]))  # artist id out of range
    with pytest.raises(ValueError, match="shape"):
        cond(y[:, :6])


def test_upsampler_conditioner_shape_and_errors():
    cfg = tiny_upsampler(1)
    prior = Prior(cfg)
    _, _, upper = make_inputs(cfg)
    x = prior.conditioner_blocks[0](upper)
    assert x.shape == (2, cfg.n_ctx, cfg.transformer.width)
    # LayerNorm output: zero mean, unit variance per position before the affine (init 1, 0)
    torch.testing.assert_close(x.mean(-1), torch.zeros(2, cfg.n_ctx), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="upper-level code"):
        prior.conditioner_blocks[0](upper + cfg.l_bins)


# ---------------------------------------------------------------------------------------------
# names


def _openai_keys(cfg: PriorConfig) -> set[str]:
    """The keys of an OpenAI checkpoint for ``cfg``, derived from jukebox/prior/*.py by hand."""
    keys: set[str] = set()

    def transformer(prefix: str, tr: TransformerConfig, cross_layers: set[int]):
        for i in range(tr.depth):
            p = f"{prefix}.transformer._attn_mods.{i}"
            convs = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
            if i in cross_layers:
                convs.append("attn.c_enc_kv")
            keys.update(f"{p}.{c}.{wb}" for c in convs for wb in "wb")
            keys.update(f"{p}.{ln}.{wb}" for ln in ("ln_0", "ln_1") for wb in ("weight", "bias"))

    if cfg.is_upsampler:
        c = "conditioner_blocks.0"
        keys.update({f"{c}.x_emb.weight", f"{c}.ln.weight", f"{c}.ln.bias"})
        keys.update({f"{c}.cond.model.0.weight", f"{c}.cond.model.0.bias"})
        for i in range(cfg.downs_t[cfg.level + 1]):
            for d in range(cfg.conditioner.depth):
                for conv in ("1", "3"):
                    for wb in ("weight", "bias"):
                        keys.add(f"{c}.cond.model.{i + 1}.0.blocks.{d}.model.{conv}.{wb}")
            keys.update({f"{c}.cond.model.{i + 1}.1.weight", f"{c}.cond.model.{i + 1}.1.bias"})
    if cfg.labels is not None:
        keys.update({"y_emb.bow_genre_emb.emb.weight", "y_emb.artist_emb.emb.weight"})
        if cfg.labels.include_timing:
            keys.update(
                f"y_emb.{n}_emb.emb.weight"
                for n in ("total_length", "absolute_pos", "relative_pos")
            )
    else:
        keys.add("prior.start_token")
    keys.update({"prior.x_emb.weight", "prior.pos_emb.pos_emb", "prior.x_out.weight"})
    cross = set()
    if cfg.lyrics is not None and cfg.lyrics.style == "encoder":
        cross = {i for i in range(cfg.transformer.depth) if i >= 9 and (i - 9) % 10 == 9}
        keys.update(
            {
                "prime_prior.x_emb.weight",
                "prime_prior.pos_emb.pos_emb",
                "prime_prior.start_token",
                "prime_state_proj.w",
                "prime_state_proj.b",
                "prime_state_ln.weight",
                "prime_state_ln.bias",
                "prime_x_out.weight",
            }
        )
        transformer("prime_prior", cfg.lyrics.encoder, set())
    transformer("prior", cfg.transformer, cross)
    return keys


@pytest.mark.parametrize("style", STYLES)
def test_state_dict_keys_are_openai_checkpoint_keys(style):
    cfg = STYLES[style]()
    prior = Prior(cfg)
    assert set(prior.state_dict()) == _openai_keys(cfg)
    emb = prior.prior.x_emb.weight
    assert emb.shape == (cfg.vocab_size, cfg.transformer.width)
    assert prior.prior.pos_emb.pos_emb.shape == (cfg.seq_len, cfg.transformer.width)
    tied = prior.prior.x_out.weight is emb
    assert tied == (not cfg.merged_decoder)


def test_merged_decoder_unties_the_output():
    cfg = _replace(tiny_top_prior(None), merged_decoder=True)
    prior = Prior(cfg)
    assert prior.prior.x_out.weight is not prior.prior.x_emb.weight
    assert not prior.prior.add_cond_after_transformer


# ---------------------------------------------------------------------------------------------
# behaviour


@pytest.mark.parametrize("style", STYLES)
def test_logits_are_causal_through_the_whole_model(style):
    cfg = STYLES[style]()
    torch.manual_seed(0)
    prior = Prior(cfg).eval()
    codes, labels, upper = make_inputs(cfg)
    cond = prior.condition(labels, upper)
    with torch.no_grad():
        base = prior.logits(codes, cond=cond)
        assert base.shape == (2, cfg.n_ctx, cfg.l_bins) and base.dtype == torch.float32
        for t in (0, 5, cfg.n_ctx // 2 + 1, cfg.n_ctx - 1):
            changed = codes.clone()
            changed[:, t:] = (changed[:, t:] + 1 + torch.arange(cfg.n_ctx - t)) % cfg.l_bins
            out = prior.logits(changed, cond=cond)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)
            if t + 1 < cfg.n_ctx:
                assert (out[:, t + 1 :] - base[:, t + 1 :]).abs().max() > 1e-4


@pytest.mark.parametrize("style", ["top_single", "top_encoder", "upsampler"])
def test_partial_window_equals_the_prefix_of_a_full_window(style):
    cfg = STYLES[style]()
    prior = Prior(cfg).eval()
    codes, labels, upper = make_inputs(cfg)
    with torch.no_grad():
        full = prior.logits(codes, labels, upper)
        part = prior.logits(codes[:, :13], labels, upper)
    torch.testing.assert_close(part, full[:, :13], rtol=0, atol=1e-5)


def test_conditioning_changes_the_logits():
    cfg = tiny_top_prior("single")
    torch.manual_seed(0)
    prior = Prior(cfg).eval()
    codes, labels, _ = make_inputs(cfg)
    with torch.no_grad():
        base = prior.logits(codes, labels)
        for col in (0, 1, 3, 4, labels.shape[1] - 1):  # total length, offset, artist, genre, lyric
            other = labels.clone()
            other[:, col] = {0: labels[:, 0] * 2, 1: labels[:, 1] + 4000}.get(
                col, (labels[:, col] + 1) % 5
            )
            assert (prior.logits(codes, other) - base).abs().max() > 1e-5, col


def test_loss_terms_weights_and_single_sequence_logits():
    cfg = tiny_top_prior("single")
    prior = Prior(cfg).eval()
    codes, labels, _ = make_inputs(cfg)
    with torch.no_grad():
        out = prior(codes, labels)
        cond = prior.condition(labels)
        full = prior.sequence_logits(codes, cond)
    n, t, v = cfg.n_tokens, cfg.n_ctx, cfg.vocab_size
    assert full.shape == (2, n + t, v)
    lyric_bits = F.cross_entropy(full[:, :n].reshape(-1, v), labels[:, -n:].reshape(-1)) / math.log(
        2
    )
    music_bits = F.cross_entropy(full[:, n:].reshape(-1, v), (codes + 79).reshape(-1)) / math.log(2)
    torch.testing.assert_close(out.terms["lyrics"], lyric_bits)
    torch.testing.assert_close(out.terms["prior"], music_bits)
    assert out.weights == pytest.approx({"prior": t / (n + t), "lyrics": 0.4 * n / (n + t)})
    torch.testing.assert_close(out.loss, sum(out.weights[k] * out.terms[k] for k in out.terms))
    # logits() = the music positions over the music vocabulary
    torch.testing.assert_close(prior.logits(codes, cond=cond), full[:, n:, 79:])
    assert set(out.metrics) == {"bits_per_token", "accuracy", "lyric_bits"}


def test_unlabelled_prior_uses_the_learned_start_token():
    cfg = tiny_upsampler(0, labels=False)
    prior = Prior(cfg).eval()
    codes, labels, upper = make_inputs(cfg)
    assert labels is None
    with torch.no_grad():
        base = prior.logits(codes, upper=upper)
        prior.prior.start_token.add_(1.0)
        moved = prior.logits(codes, upper=upper)
    assert (moved[:, 0] - base[:, 0]).abs().max() > 1e-4


def test_input_errors():
    prior = Prior(tiny_top_prior("single"))
    codes, labels, _ = make_inputs(prior.cfg)
    with pytest.raises(ValueError, match="labelled"):
        prior.logits(codes)
    with pytest.raises(ValueError, match="shape"):
        prior.logits(codes, labels[:, :-1])
    bad = labels.clone()
    bad[0, -1] = 79
    with pytest.raises(ValueError, match="lyric tokens"):
        prior.logits(codes, bad)
    with pytest.raises(ValueError, match="upper codes"):
        prior.logits(codes, labels, upper=codes)
    with pytest.raises(ValueError, match="exceed"):
        prior.logits(torch.cat([codes, codes], 1), labels)
    up = Prior(tiny_upsampler())
    _, up_labels, upper = make_inputs(up.cfg)
    with pytest.raises(ValueError, match="upper codes"):
        up.logits(codes, up_labels)
    with pytest.raises(ValueError, match="covers"):
        up.logits(codes, up_labels, upper[:, :4])


def test_save_load_round_trip(tmp_path):
    cfg = tiny_top_prior("encoder")
    torch.manual_seed(0)
    prior = Prior(cfg).eval()
    codes, labels, _ = make_inputs(cfg)
    prior.save_pretrained(tmp_path / "prior")
    assert sorted(p.name for p in (tmp_path / "prior").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = Prior.from_pretrained(tmp_path / "prior").eval()
    assert loaded.cfg == cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(codes, labels), prior.logits(codes, labels))
    tied = Prior.from_pretrained(tmp_path / "prior")
    assert tied.prior.x_out.weight is tied.prior.x_emb.weight


def test_a_few_adam_steps_lower_the_bits_per_token():
    cfg = tiny_upsampler(1)
    torch.manual_seed(0)
    prior = Prior(cfg).train()
    codes, labels, upper = make_inputs(cfg, batch=4)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    first = None
    for _ in range(12):
        out = prior(codes, labels, upper)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = out.loss.item() if first is None else first
    with torch.no_grad():
        last = prior(codes, labels, upper).loss.item()
    assert first == pytest.approx(math.log2(cfg.l_bins), abs=0.2)  # ~uniform at init
    assert last < first - 0.5


def test_lyric_encoder_and_single_style_train():
    for style in ("single", "encoder"):
        cfg = tiny_top_prior(style)
        torch.manual_seed(0)
        prior = Prior(cfg).train()
        codes, labels, _ = make_inputs(cfg)
        out = prior(codes, labels)
        out.loss.backward()
        grads = {n: p.grad for n, p in prior.named_parameters()}
        assert grads["prior.x_emb.weight"].abs().sum() > 0
        if style == "encoder":
            assert grads["prime_prior.x_emb.weight"].abs().sum() > 0
            assert grads["prime_x_out.weight"].abs().sum() > 0
        assert grads["y_emb.total_length_emb.emb.weight"].abs().sum() > 0


def test_from_pretrained_builds_on_meta_and_keeps_the_tied_head(tmp_path):
    import torch

    from teacher.presets import tiny_top_prior
    from teacher.prior.model import Prior

    torch.manual_seed(0)
    prior = Prior(tiny_top_prior(lyrics="single")).eval()
    prior.save_pretrained(tmp_path / "p")
    back = Prior.from_pretrained(tmp_path / "p")
    ar = back.prior
    assert ar.x_out.weight is ar.x_emb.weight  # still one parameter, as in training
    assert not any(t.is_meta for t in back.state_dict().values())
    codes = torch.randint(0, prior.cfg.l_bins, (2, prior.cfg.n_ctx))
    cfg = prior.cfg
    labels = torch.zeros(2, cfg.label_size, dtype=torch.long)
    labels[:, 0] = int(cfg.labels.max_duration * cfg.sample_rate) - 1
    labels[:, 2] = cfg.sample_length
    labels[:, 4:5] = 1
    assert torch.equal(prior.logits(codes, labels), back.logits(codes, labels))
