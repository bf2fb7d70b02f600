"""Every teacher model preset, in one place: plain functions that return configs.

* the VQ-VAE: :func:`jukebox_vqvae` (the released 44.1 kHz model), :func:`small_vqvae` (the
  demo's, CPU-trainable), :func:`tiny_vqvae` (tests) — :data:`VQVAE_PRESETS`;
* priors to train: ``tiny``/``small`` top priors and upsamplers, and :func:`prior_preset`, which
  builds the prior of one level of a VQ-VAE from a preset name (what ``train prior`` runs);
* the released Jukebox priors with OpenAI's exact hyperparameters (:func:`upsampler`,
  :func:`prior_5b`, :func:`prior_5b_lyrics`, :func:`prior_1b_lyrics`; :data:`MODELS`,
  :func:`model_configs`), whose module trees have the tensor names and shapes of OpenAI's
  ``*.pth.tar`` (``jukebox/hparams.py`` + ``make_models.py``), so :mod:`teacher.released.convert`
  can check a checkpoint tensor by tensor before writing anything.

Levels count from the bottom, as everywhere in this package: level 0 is the bottom upsampler
(OpenAI's ``prior_level_0.pth.tar``, hop 8), level 2 the top prior (``prior_level_2.pth.tar``,
hop 128). transformers' port counts from the top instead.

Label vocabularies differ per released model (``jukebox/sample.py``): the upsamplers and the
5b/5b_lyrics top priors use the ``v2`` artist/genre/lyric sets (``y_bins = (120 genres, 4111
artists)``, ``t_bins`` 128, 5 genre slots, 80 lyric symbols); the 1b_lyrics top prior uses ``v3``
(``(604, 7898)``, ``t_bins`` 64, 1 genre slot, 79 lyric symbols). GPU memory per released model:
:mod:`teacher.released.memory` (``python -m teacher.presets`` prints its table).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from teacher.config import ConfigError
from teacher.prior.config import (
    LabelConditionerConfig,
    LyricsConfig,
    PriorConfig,
    UpsamplerConditionerConfig,
)
from teacher.prior.transformer import TransformerConfig
from teacher.vqvae.config import VQVAEConfig

__all__ = [
    "MODELS",
    "PRIOR_PRESETS",
    "VQVAE_PRESETS",
    "ModelConfigs",
    "jukebox_vqvae",
    "label_version",
    "model_configs",
    "prior_1b_lyrics",
    "prior_5b",
    "prior_5b_lyrics",
    "prior_preset",
    "small_top_prior",
    "small_upsampler",
    "small_vqvae",
    "tiny_top_prior",
    "tiny_upsampler",
    "tiny_vqvae",
    "upsampler",
    "with_window",
]

# ---------------------------------------------------------------------------------------------
# the VQ-VAE


def jukebox_vqvae() -> VQVAEConfig:
    """The released 44.1 kHz VQ-VAE (hops 8/32/128, 2048 bins, width 32, depth 4, ×(2,1,1))."""
    return VQVAEConfig()


def small_vqvae(sample_rate: int = 22050) -> VQVAEConfig:
    """A CPU-trainable VQ-VAE with the released topology (hops 8/32/128), for the demo."""
    return VQVAEConfig(
        sample_rate=sample_rate,
        sample_length=128 * 128,
        l_bins=256,
        width=32,
        depth=3,
        multipliers=(1, 1, 1),
        linf_k=512,
    )


def tiny_vqvae(sample_rate: int = 8000) -> VQVAEConfig:
    """A seconds-to-train VQ-VAE for tests: hops 8/32/128 at width 8."""
    return VQVAEConfig(
        sample_rate=sample_rate,
        sample_length=128 * 16,
        l_bins=32,
        emb_width=16,
        width=8,
        depth=2,
        multipliers=(2, 1, 1),
        linf_k=64,
        multispec_n_fft=(256, 128, 64),
        multispec_hop=(32, 16, 8),
        multispec_win=(128, 64, 32),
    )


VQVAE_PRESETS = {"jukebox": jukebox_vqvae, "small": small_vqvae, "tiny": tiny_vqvae}


# ---------------------------------------------------------------------------------------------
# priors to train (tests and the demo)


# 8/32/128 as in teacher.config.small_vqvae / tiny_vqvae).


def tiny_top_prior(lyrics: str | None = "single", timing: bool = True) -> PriorConfig:
    """A seconds-to-run labelled top prior for tests (tiny_vqvae geometry, 8 kHz, 32 bins).

    ``lyrics="single"``: 1b-style, attn_order 12 at depth 16 (prime layer at 15);
    ``"encoder"``: 5b-style, attn_order 10 at depth 19 (cross-attention at 18) with a 2-layer
    lyric encoder; ``None``: no lyrics, attn_order 2 at depth 3.
    """
    n_ctx, n_tokens, width = 32, 16, 32
    lyr: LyricsConfig | None = None
    if lyrics == "single":
        tr = TransformerConfig(
            width=width,
            depth=16,
            heads=2,
            n_ctx=n_ctx + n_tokens,
            attn_order=12,
            blocks=4,
            prime_len=n_tokens,
        )
        lyr = LyricsConfig(style="single", n_tokens=n_tokens, n_vocab=79)
    elif lyrics == "encoder":
        tr = TransformerConfig(
            width=width,
            depth=19,
            heads=2,
            n_ctx=n_ctx,
            attn_order=10,
            blocks=4,
            encoder_dims=n_tokens,
        )
        enc = TransformerConfig(width=24, depth=2, heads=2, n_ctx=n_tokens, attn_order=2, blocks=4)
        lyr = LyricsConfig(style="encoder", n_tokens=n_tokens, n_vocab=80, encoder=enc)
    elif lyrics is None:
        tr = TransformerConfig(width=width, depth=3, heads=2, n_ctx=n_ctx, attn_order=2, blocks=4)
    else:
        raise ConfigError(f"lyrics must be 'single', 'encoder' or None, got {lyrics!r}")
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=tr,
        l_bins=32,
        sample_rate=8000,
        labels=LabelConditionerConfig(
            artist_bins=6,
            genre_bins=5,
            max_genres=2,
            include_timing=timing,
            t_bins=16,
            min_duration=0.25,
            max_duration=30.0,
        ),
        lyrics=lyr,
    ).validate()


def tiny_upsampler(level: int = 1, labels: bool = True) -> PriorConfig:
    """A seconds-to-run upsampler for tests: attn_order 2, depth 3, conditioner width 8."""
    n_ctx = 32
    return PriorConfig(
        level=level,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=32, depth=3, heads=1, n_ctx=n_ctx, attn_order=2, blocks=4
        ),
        l_bins=32,
        sample_rate=8000,
        labels=LabelConditionerConfig(
            artist_bins=6, genre_bins=5, max_genres=2, include_timing=False
        )
        if labels
        else None,
        conditioner=UpsamplerConditionerConfig(
            width=8, depth=2, dilation_growth_rate=3, dilation_cycle=2, res_scale=level == 1
        ),
    ).validate()


def small_top_prior(
    n_artists: int = 1,
    n_genres: int = 1,
    max_genres: int = 1,
    sample_rate: int = 22050,
    n_tokens: int = 0,
    n_vocab: int = 79,
) -> PriorConfig:
    """The demo's top prior (small_vqvae: 256 bins, hop 128): width 256, depth 8, 512 codes,
    labelled with timing.

    ``n_artists``/``n_genres`` are the label vocabulary sizes (``Vocab.n_artists``/``n_genres``).
    ``n_tokens > 0`` adds encoder-style lyrics (a 2-layer width-128 lyric encoder) with
    cross-attention every 4th layer (attn_order 6, the reference's ``[1, 2, 3, 6]`` cycle): at
    depth 8 neither released lyric pattern has a lyric layer (attn_order 12's first prime layer
    is layer 15, attn_order 10's first cross-attention layer 18). ``n_vocab``: 79 for v3
    lyrics, 80 for v2.
    """
    n_ctx = 512
    lyrics = None
    attn_order, encoder_dims = 2, None
    if n_tokens:
        enc = TransformerConfig(
            width=128, depth=2, heads=2, n_ctx=n_tokens, attn_order=0, init_scale=0.7
        )
        lyrics = LyricsConfig(style="encoder", n_tokens=n_tokens, n_vocab=n_vocab, encoder=enc)
        attn_order, encoder_dims = 6, n_tokens
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=256,
            depth=8,
            heads=2,
            n_ctx=n_ctx,
            attn_order=attn_order,
            blocks=16,
            init_scale=0.7,
            encoder_dims=encoder_dims,
        ),
        l_bins=256,
        sample_rate=sample_rate,
        labels=LabelConditionerConfig(
            artist_bins=n_artists,
            genre_bins=n_genres,
            max_genres=max_genres,
            include_timing=True,
            t_bins=64,
            min_duration=0.0,
            max_duration=600.0,
        ),
        lyrics=lyrics,
    ).validate()


def small_upsampler(
    level: int,
    n_artists: int = 1,
    n_genres: int = 1,
    max_genres: int = 1,
    sample_rate: int = 22050,
) -> PriorConfig:
    """The demo's upsamplers (small_vqvae geometry): width 128, depth 6, 512 codes per window,
    conditioner width 64, depth 4 (growth 3, cycle 4)."""
    n_ctx = 512
    return PriorConfig(
        level=level,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=128, depth=6, heads=1, n_ctx=n_ctx, attn_order=2, blocks=16, init_scale=0.7
        ),
        l_bins=256,
        sample_rate=sample_rate,
        labels=LabelConditionerConfig(
            artist_bins=n_artists,
            genre_bins=n_genres,
            max_genres=max_genres,
            include_timing=False,
        ),
        conditioner=UpsamplerConditionerConfig(
            width=64, depth=4, dilation_growth_rate=3, dilation_cycle=4, res_scale=level == 1
        ),
    ).validate()


PRIOR_PRESETS = ("tiny", "small")


def prior_preset(
    preset: str,
    level: int,
    vq_cfg: VQVAEConfig,
    n_ctx: int | None = None,
    n_tokens: int | None = None,
    lyric_version: str = "v3",
) -> PriorConfig:
    """A :class:`~teacher.prior.config.PriorConfig` for ``level`` of the VQ-VAE ``vq_cfg``.

    The level decides the conditioning, as in the released models: the top prior gets
    artist/genre labels, timing and (when ``n_tokens > 0``) single-sequence lyrics
    (1b_lyrics style); an upsampler conditions on the level above plus artist/genre labels,
    no timing (Jukebox ``upsamplers`` hparams: ``y_bins`` but ``include_time_signal`` only
    without an upper conditioner). ``n_ctx``/``n_tokens`` override the preset's window and
    lyric window (``None`` keeps them; tiny top: 16 chars, small top: none). The VQ-VAE fixes
    the codebook size, hops and sample rate; the artist/genre bins are set from the data's
    vocabulary by :func:`train_prior`.
    """
    from teacher.data.labels import LabelConfig

    if preset not in PRIOR_PRESETS:
        raise ConfigError(f"--preset must be one of {PRIOR_PRESETS}, got {preset!r}")
    top = level == vq_cfg.levels - 1
    sr = vq_cfg.sample_rate
    if top:
        if preset == "tiny":
            want_lyrics = n_tokens is None or n_tokens > 0
            cfg = tiny_top_prior(lyrics="single" if want_lyrics else None)
        else:
            cfg = small_top_prior(sample_rate=sr)
            if n_tokens:
                # the small top has depth 8; 1b_lyrics' attn_order 12 puts its prime layer at
                # d % 16 == 15, so lyrics need depth 16 (two dense-free groups of 8)
                tr = dataclasses.replace(cfg.transformer, depth=16, attn_order=12, prime_len=0)
                cfg = dataclasses.replace(
                    cfg, transformer=tr, lyrics=LyricsConfig(style="single", n_tokens=1)
                )
    else:
        make = tiny_upsampler if preset == "tiny" else small_upsampler
        cfg = make(level=level) if preset == "tiny" else make(level, sample_rate=sr)
    cfg = dataclasses.replace(
        cfg,
        level=level,
        l_bins=vq_cfg.l_bins,
        downs_t=tuple(vq_cfg.downs_t),
        strides_t=tuple(vq_cfg.strides_t),
        sample_rate=sr,
    )
    if cfg.lyrics is not None:
        n_vocab = LabelConfig(lyric_version=lyric_version).n_vocab
        n = cfg.lyrics.n_tokens if n_tokens is None else n_tokens
        if n == 0:
            raise ConfigError("this preset's lyric layers need --n_tokens > 0")
        cfg = dataclasses.replace(
            cfg, lyrics=dataclasses.replace(cfg.lyrics, n_tokens=n, n_vocab=n_vocab)
        )
    elif n_tokens and not top:
        raise ConfigError("lyrics (--n_tokens > 0) condition the top prior only")
    return with_window(cfg, n_ctx if n_ctx is not None else cfg.n_ctx)


def with_window(cfg: PriorConfig, n_ctx: int) -> PriorConfig:
    """``cfg`` with ``n_ctx`` music codes per window; the transformer (and, for single-style
    lyrics, its prime length) follow."""
    n = cfg.n_tokens
    tr = cfg.transformer
    if cfg.single_sequence:
        tr = dataclasses.replace(tr, n_ctx=n_ctx + n, prime_len=n)
    else:
        tr = dataclasses.replace(tr, n_ctx=n_ctx)
        if cfg.lyrics is not None:  # encoder style
            enc = dataclasses.replace(cfg.lyrics.encoder, n_ctx=n)
            cfg = dataclasses.replace(cfg, lyrics=dataclasses.replace(cfg.lyrics, encoder=enc))
            tr = dataclasses.replace(tr, encoder_dims=n)
    return dataclasses.replace(cfg, n_ctx=n_ctx, transformer=tr).validate()


# ---------------------------------------------------------------------------------------------
# the released priors

_N_CTX_UPSAMPLER = 8192
_N_CTX_5B = 8192
_N_CTX_1B = 6144


def _released_labels(
    version: str, include_timing: bool, min_duration: float = 0.0
) -> LabelConditionerConfig:
    """hparams ``labels`` (v2: y_bins (120, 4111), t_bins 128, max_bow_genre_size 5) or
    ``labels_v3`` (v3: y_bins (604, 7898), t_bins 64, max_bow_genre_size 1)."""
    genres, artists, max_genres, t_bins = (
        (120, 4111, 5, 128) if version == "v2" else (604, 7898, 1, 64)
    )
    return LabelConditionerConfig(
        artist_bins=artists,
        genre_bins=genres,
        max_genres=max_genres,
        include_timing=include_timing,
        t_bins=t_bins,
        min_duration=min_duration,
        max_duration=600.0,
    )


def upsampler(level: int) -> PriorConfig:
    """OpenAI's ``upsampler_level_{0,1}`` (``prior_level_{0,1}.pth.tar``): level 0 = bottom
    (hop 8), 1 = middle (hop 32); shared by all three released models.

    Width 1920, depth 72, 1 head, attn_order 2, blocks 128, init_scale 0.4, n_ctx 8192;
    conditioner width 1024, depth 16, growth 3, cycle 8 (``cond_res_scale`` only at level 1);
    v2 labels without timing (the upper codes carry the position).
    """
    if level not in (0, 1):
        raise ConfigError(f"released upsamplers are levels 0 (bottom) and 1 (middle), got {level}")
    n_ctx = _N_CTX_UPSAMPLER
    return PriorConfig(
        level=level,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=1920, depth=72, heads=1, n_ctx=n_ctx, attn_order=2, blocks=128, init_scale=0.4
        ),
        # upsamplers never set min/max_duration (hparams default None): unused without timing
        labels=_released_labels("v2", include_timing=False),
        conditioner=UpsamplerConditionerConfig(
            width=1024,
            depth=16,
            m_conv=1.0,
            dilation_growth_rate=3,
            dilation_cycle=8,
            res_scale=level == 1,
        ),
    ).validate()


def prior_5b() -> PriorConfig:
    """OpenAI's ``prior_5b`` (``5b/prior_level_2.pth.tar``): no lyrics, v2 labels with timing.

    Width 4800, depth 72, 8 heads, attn_order 2, blocks 128, init_scale 0.1, n_ctx 8192,
    durations [60, 600) s, ``merged_decoder`` (untied output head). Released with fp16 weights.
    """
    n_ctx = _N_CTX_5B
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=4800, depth=72, heads=8, n_ctx=n_ctx, attn_order=2, blocks=128, init_scale=0.1
        ),
        labels=_released_labels("v2", include_timing=True, min_duration=60.0),
        merged_decoder=True,
    ).validate()


def prior_5b_lyrics() -> PriorConfig:
    """OpenAI's ``prior_5b_lyrics`` (``5b_lyrics/prior_level_2.pth.tar``): a separate lyric
    encoder feeding cross-attention every 10th layer (attn_order 10), v2 labels and lyrics.

    Width 4800, depth 79, 8 heads, blocks 128, init_scale 0.1, n_ctx 8192, durations
    [23.8, 600) s, ``merged_decoder``; 512 lyric tokens of 80 symbols; lyric encoder width 1280,
    depth 18, 4 heads, attn_order 2, blocks 32, init_scale 0.7; ``prime_loss_fraction`` 0.4;
    alignment head 2 of layer 68.
    """
    n_ctx, n_tokens = _N_CTX_5B, 512
    encoder = TransformerConfig(
        width=1280, depth=18, heads=4, n_ctx=n_tokens, attn_order=2, blocks=32, init_scale=0.7
    )
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=4800,
            depth=79,
            heads=8,
            n_ctx=n_ctx,
            attn_order=10,
            blocks=128,
            init_scale=0.1,
            encoder_dims=n_tokens,
        ),
        labels=_released_labels("v2", include_timing=True, min_duration=23.8),
        lyrics=LyricsConfig(
            style="encoder",
            n_tokens=n_tokens,
            n_vocab=80,
            loss_fraction=0.4,
            encoder=encoder,
            alignment_layer=68,
            alignment_head=2,
        ),
        merged_decoder=True,
    ).validate()


def prior_1b_lyrics() -> PriorConfig:
    """OpenAI's ``prior_1b_lyrics`` (``1b_lyrics/prior_level_2.pth.tar``): one sequence
    ``[384 lyric chars | 6144 codes]`` (``single_enc_dec``) with prime attention, v3 labels.

    Width 2048, depth 72, 2 heads, attn_order 12, blocks 64, init_scale 0.2, durations
    [17.84, 600) s, tied output head (``merged_decoder`` False); 79 lyric symbols;
    ``prime_loss_fraction`` 0.4; alignment head 0 of layer 63. The transformer's window is
    6144 + 384 = 6528 positions (block_ctx 102).
    """
    n_ctx, n_tokens = _N_CTX_1B, 384
    return PriorConfig(
        level=2,
        n_ctx=n_ctx,
        transformer=TransformerConfig(
            width=2048,
            depth=72,
            heads=2,
            n_ctx=n_ctx + n_tokens,
            attn_order=12,
            blocks=64,
            init_scale=0.2,
            prime_len=n_tokens,
        ),
        labels=_released_labels("v3", include_timing=True, min_duration=17.84),
        lyrics=LyricsConfig(
            style="single",
            n_tokens=n_tokens,
            n_vocab=79,
            loss_fraction=0.4,
            alignment_layer=63,
            alignment_head=0,
        ),
    ).validate()


#: ``make_models.MODELS``: (VQ-VAE, bottom upsampler, middle upsampler, top prior) builders
MODELS: dict[str, tuple[Callable[[], VQVAEConfig | PriorConfig], ...]] = {
    "5b": (jukebox_vqvae, partial(upsampler, 0), partial(upsampler, 1), prior_5b),
    "5b_lyrics": (jukebox_vqvae, partial(upsampler, 0), partial(upsampler, 1), prior_5b_lyrics),
    "1b_lyrics": (jukebox_vqvae, partial(upsampler, 0), partial(upsampler, 1), prior_1b_lyrics),
}


@dataclass(frozen=True)
class ModelConfigs:
    """All configs of one released model.

    Attributes:
        name: a key of :data:`MODELS`.
        vqvae: the VQ-VAE.
        priors: per level, bottom first (``priors[2]`` is the top prior).
    """

    name: str
    vqvae: VQVAEConfig
    priors: tuple[PriorConfig, ...]

    @property
    def top(self) -> PriorConfig:
        return self.priors[-1]

    def vocab_version(self, level: int) -> str:
        """The artist/genre/lyric set of the prior at ``level`` (``"v2"`` or ``"v3"``)."""
        return label_version(self.priors[level])


def model_configs(name: str) -> ModelConfigs:
    """The configs of a released model: ``"1b_lyrics"``, ``"5b"`` or ``"5b_lyrics"``."""
    if name not in MODELS:
        raise ConfigError(f"unknown Jukebox model {name!r}; expected one of {sorted(MODELS)}")
    vqvae, *priors = (make() for make in MODELS[name])
    return ModelConfigs(name, vqvae.validate(), tuple(priors))


def label_version(cfg: PriorConfig) -> str:
    """``"v3"`` for a prior trained on the v3 sets (79 lyric symbols or 7898 artists), else
    ``"v2"`` (the released upsamplers and 5b/5b_lyrics top priors)."""
    if cfg.lyrics is not None:
        return "v3" if cfg.lyrics.n_vocab == 79 else "v2"
    if cfg.labels is not None and cfg.labels.artist_bins == 7898:
        return "v3"
    return "v2"


if __name__ == "__main__":  # python -m teacher.presets: the README's memory table
    from teacher.released.memory import main

    main()
