"""Configuration of a Jukebox prior (paper §4, ``jukebox/prior/prior.py``) and its presets.

One frozen :class:`PriorConfig` per prior, with nested sub-configs where Jukebox's flat ``hps``
used name prefixes (``cond_*`` → :class:`UpsamplerConditionerConfig`, ``prime_*`` →
:class:`LyricsConfig`, ``y_bins``/``t_bins`` → :class:`LabelConditionerConfig`). The transformer
core has its own :class:`~teacher.prior.transformer.TransformerConfig`.

Levels count from the bottom as in :class:`~teacher.config.VQVAEConfig`: level 0 is the bottom
upsampler (hop 8 in the released model), ``levels - 1`` the top prior. A prior at a level below
the top is an *upsampler*: it is conditioned on the codes of the level above through an
:class:`UpsamplerConditionerConfig` block. Only the top prior gets the timing signal (Jukebox
adds it where there is no upper-level conditioning).

Lyrics come in the two released styles:

* ``"single"`` (1b_lyrics, Jukebox ``single_enc_dec``): one transformer over the sequence
  ``[lyric chars | music codes]``; music codes are shifted by ``n_vocab`` in a joint vocabulary;
  "prime" attention layers (kind 7) let music queries read the lyrics. The transformer's
  ``n_ctx`` is ``n_tokens + n_ctx`` and its ``prime_len`` is ``n_tokens``.
* ``"encoder"`` (5b_lyrics): a separate causal lyrics transformer whose states, projected to the
  prior's width and layer-normalised, feed cross-attention layers (kind 6). The prior's
  transformer has ``encoder_dims = n_tokens``.

The lyric loss is weighted as Jukebox does: ``loss = f · L_lyrics · n_tokens / (n_tokens + T) +
L_music · T / (n_tokens + T)`` with ``f = loss_fraction`` (``prime_loss_fraction`` = 0.4 in the
released lyric models).
"""

from __future__ import annotations

from dataclasses import dataclass

from teacher.config import ConfigError, check, check_resnet, load_config, save_config
from teacher.levels import hop_length
from teacher.prior.transformer import TransformerConfig
from teacher.vqvae.config import VQVAEConfig

LYRIC_STYLES = ("single", "encoder")


@dataclass(frozen=True)
class LabelConditionerConfig:
    """Artist, genre and (top level only) timing conditioning (Jukebox ``LabelConditioner``).

    ``artist_bins``/``genre_bins`` are the rows of the two embeddings (Jukebox ``y_bins`` =
    ``(genre_bins, artist_bins)``: (120, 4111) for the v2 models, (604, 7898) for v3).
    ``max_genres`` is ``max_bow_genre_size``: genre slots in the label vector, padded with -1.
    Timing: ``t_bins`` bins per range embedding over total length ``[min, max)·sr``, absolute
    position ``[0, max)·sr`` and relative position ``[0, 1)``; durations in seconds.
    """

    artist_bins: int = 4111
    genre_bins: int = 120
    max_genres: int = 5
    include_timing: bool = True
    t_bins: int = 128
    min_duration: float = 0.0
    max_duration: float = 600.0

    def validate(self) -> LabelConditionerConfig:
        """Raise :class:`ConfigError` on a bad field; return ``self``."""
        check(self.artist_bins >= 1, f"artist_bins must be >= 1, got {self.artist_bins}")
        check(self.genre_bins >= 1, f"genre_bins must be >= 1, got {self.genre_bins}")
        check(self.max_genres >= 1, f"max_genres must be >= 1, got {self.max_genres}")
        check(self.t_bins >= 1, f"t_bins must be >= 1, got {self.t_bins}")
        check(
            0.0 <= self.min_duration < self.max_duration,
            f"need 0 <= min_duration < max_duration, got {self.min_duration}, {self.max_duration}",
        )
        return self


@dataclass(frozen=True)
class UpsamplerConditionerConfig:
    """The upper-level code conditioner of an upsampler (Jukebox ``Conditioner``, ``cond_*``).

    Upper codes are embedded at the prior's width, run through a decoder-style block (a dilated
    residual stack of ``depth`` units of this ``width`` before each of the ``down_t`` transposed
    convolutions of the upper level) and layer-normalised. Dilations are
    ``dilation_growth_rate ** (d % dilation_cycle)``, not reversed. Released: width 1024, depth
    16, growth 3, cycle 8; ``res_scale`` only in the middle upsampler.
    """

    width: int = 1024
    depth: int = 16
    m_conv: float = 1.0
    dilation_growth_rate: int = 3
    dilation_cycle: int | None = 8
    zero_out: bool = False
    res_scale: bool = False

    def validate(self) -> UpsamplerConditionerConfig:
        """Raise :class:`ConfigError` on a bad field; return ``self``."""
        check(self.width >= 1 and self.depth >= 1, "conditioner width and depth must be >= 1")
        check_resnet(
            self.width, self.m_conv, self.dilation_growth_rate, self.dilation_cycle, "conditioner "
        )
        return self


@dataclass(frozen=True)
class LyricsConfig:
    """Lyrics conditioning of a top prior (see the module docstring for the two styles).

    ``n_tokens`` lyric characters per window (384 for 1b_lyrics, 512 for 5b_lyrics); ``n_vocab``
    the character vocabulary with ``<unk>`` (79 for v3, 80 for v2, see ``teacher/data/text.py``).
    ``loss_fraction`` weights the lyric term (Jukebox ``prime_loss_fraction``, HF
    ``encoder_loss_fraction``). ``encoder`` is the lyrics transformer of the encoder style
    (Jukebox ``prime_*``: 5b_lyrics width 1280, depth 18, heads 4, attn_order 2, blocks 32,
    init_scale 0.7); its ``n_ctx`` must be ``n_tokens``. ``alignment_layer``/``alignment_head``
    name the attention head that aligns lyrics to music in a released model (metadata only).
    """

    style: str = "single"
    n_tokens: int = 384
    n_vocab: int = 79
    loss_fraction: float = 0.4
    encoder: TransformerConfig | None = None
    emb_dropout: float = 0.0  # the lyric encoder's embedding dropout (Jukebox prime_emb_dropout)
    alignment_layer: int | None = None
    alignment_head: int | None = None

    def validate(self) -> LyricsConfig:
        """Raise :class:`ConfigError` on a bad field; return ``self``."""
        check(
            self.style in LYRIC_STYLES,
            f"lyrics style must be one of {LYRIC_STYLES}, got {self.style!r}",
        )
        check(self.n_tokens >= 1, f"lyrics n_tokens must be >= 1, got {self.n_tokens}")
        check(self.n_vocab >= 2, f"lyrics n_vocab must be >= 2, got {self.n_vocab}")
        check(self.loss_fraction >= 0, f"loss_fraction must be >= 0, got {self.loss_fraction}")
        check(0.0 <= self.emb_dropout < 1.0, "lyrics emb_dropout must be in [0, 1)")
        if self.style == "encoder":
            check(self.encoder is not None, "encoder-style lyrics need an encoder config")
            self.encoder.validate()
            check(
                self.encoder.n_ctx == self.n_tokens,
                f"the lyric encoder's n_ctx ({self.encoder.n_ctx}) must equal n_tokens "
                f"({self.n_tokens})",
            )
            check(
                self.encoder.encoder_dims is None,
                "the lyric encoder cannot itself cross-attend (encoder.encoder_dims must be None)",
            )
        else:
            check(self.encoder is None, "single-style lyrics have no separate encoder")
        return self


@dataclass(frozen=True)
class PriorConfig:
    """One Jukebox prior: the transformer and all its conditioning.

    Attributes:
        level: 0 = bottom … ``len(downs_t) - 1`` = top.
        n_ctx: music codes per window (released: 8192 top 5b and upsamplers, 6144 1b_lyrics).
        transformer: the decoder transformer; its ``n_ctx`` is ``n_ctx`` (+ ``n_tokens`` for
            single-style lyrics).
        l_bins: music vocabulary (the VQ-VAE codebook size).
        downs_t, strides_t, sample_rate: the VQ-VAE geometry (hop lengths, the upsampler's
            ratio, the label's sample units).
        labels: artist/genre (+ timing) conditioning, or ``None`` for an unlabelled prior
            (a learned start token then starts the sequence).
        conditioner: the upper-level code conditioner; required exactly below the top level.
        lyrics: lyrics conditioning (top prior), or ``None``.
        merged_decoder: Jukebox ``merged_decoder``: output projection untied from the input
            embedding, and the per-position conditioning not re-added after the transformer.
        emb_dropout: dropout on the token and position embeddings.
    """

    level: int
    n_ctx: int
    transformer: TransformerConfig
    l_bins: int = 2048
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    sample_rate: int = 44100
    labels: LabelConditionerConfig | None = None
    conditioner: UpsamplerConditionerConfig | None = None
    lyrics: LyricsConfig | None = None
    merged_decoder: bool = False
    emb_dropout: float = 0.0

    # ----------------------------------------------------------------------------------------
    # derived geometry

    @property
    def levels(self) -> int:
        return len(self.downs_t)

    @property
    def is_upsampler(self) -> bool:
        """True below the top level (conditioned on the codes of the level above)."""
        return self.level < self.levels - 1

    @property
    def hop_length(self) -> int:
        """Audio samples per code at this level (Jukebox ``raw_to_tokens``)."""
        return hop_length(self.downs_t, self.strides_t, self.level)

    @property
    def sample_length(self) -> int:
        """Audio samples covered by one window of ``n_ctx`` codes."""
        return self.n_ctx * self.hop_length

    @property
    def upsample_ratio(self) -> int:
        """Codes of this level per code of the level above (``stride ** down`` one level up)."""
        if not self.is_upsampler:
            raise ConfigError("the top prior has no upper level")
        return self.strides_t[self.level + 1] ** self.downs_t[self.level + 1]

    @property
    def n_tokens(self) -> int:
        """Lyric characters per window (0 without lyrics)."""
        return self.lyrics.n_tokens if self.lyrics is not None else 0

    @property
    def single_sequence(self) -> bool:
        """True for 1b-style lyrics: ``[lyrics | music]`` in one sequence."""
        return self.lyrics is not None and self.lyrics.style == "single"

    @property
    def vocab_offset(self) -> int:
        """Shift of the music codes in the transformer's vocabulary (``n_vocab`` or 0)."""
        return self.lyrics.n_vocab if self.single_sequence else 0

    @property
    def vocab_size(self) -> int:
        """Rows of the transformer's embedding: ``l_bins`` (+ ``n_vocab`` for single style)."""
        return self.l_bins + self.vocab_offset

    @property
    def seq_len(self) -> int:
        """Positions of the transformer: ``n_ctx`` (+ ``n_tokens`` for single style)."""
        return self.n_ctx + (self.n_tokens if self.single_sequence else 0)

    @property
    def label_size(self) -> int:
        """Length of a label vector: ``4 + max_genres + n_tokens`` (0 when unlabelled)."""
        if self.labels is None:
            return 0
        return 4 + self.labels.max_genres + self.n_tokens

    # ----------------------------------------------------------------------------------------

    def validate(self) -> PriorConfig:
        """Raise :class:`ConfigError` naming the first bad field; return ``self``."""
        check(len(self.downs_t) >= 1, "downs_t must not be empty")
        check(
            len(self.strides_t) == len(self.downs_t),
            f"strides_t {self.strides_t} and downs_t {self.downs_t} must have the same length",
        )
        check(all(d >= 1 for d in self.downs_t), f"downs_t must be >= 1, got {self.downs_t}")
        check(all(s >= 2 for s in self.strides_t), f"strides_t must be >= 2, got {self.strides_t}")
        check(
            0 <= self.level < self.levels,
            f"level must be in [0, {self.levels}), got {self.level}",
        )
        check(self.sample_rate > 0, "sample_rate must be positive")
        check(self.l_bins >= 2, f"l_bins must be >= 2, got {self.l_bins}")
        check(self.n_ctx >= 1, f"n_ctx must be >= 1, got {self.n_ctx}")
        check(0.0 <= self.emb_dropout < 1.0, "emb_dropout must be in [0, 1)")
        tr = self.transformer
        tr.validate()

        if self.is_upsampler:
            check(
                self.conditioner is not None,
                f"level {self.level} is below the top ({self.levels - 1}): an upsampler needs a "
                "conditioner config",
            )
            self.conditioner.validate()
            check(
                self.n_ctx % self.upsample_ratio == 0,
                f"n_ctx ({self.n_ctx}) must be a multiple of the upsampling ratio "
                f"{self.upsample_ratio}",
            )
        else:
            check(self.conditioner is None, "the top prior has no upper-level conditioner")

        if self.labels is not None:
            self.labels.validate()
            check(
                not (self.labels.include_timing and self.is_upsampler),
                "timing conditioning is for the top prior only (Jukebox adds it where there is "
                "no upper-level conditioner): set labels.include_timing=False",
            )

        if self.lyrics is not None:
            self.lyrics.validate()
            check(
                self.labels is not None,
                "lyrics need labels: the lyric window travels at the end of the label vector",
            )
        n = self.n_tokens
        if self.single_sequence:
            check(
                tr.n_ctx == self.n_ctx + n,
                f"single-style lyrics: transformer.n_ctx ({tr.n_ctx}) must be n_ctx + n_tokens "
                f"({self.n_ctx} + {n})",
            )
            check(
                tr.prime_len == n,
                f"single-style lyrics: transformer.prime_len ({tr.prime_len}) must equal "
                f"n_tokens ({n})",
            )
            check(tr.encoder_dims is None, "single-style lyrics have no cross-attention")
        else:
            check(
                tr.n_ctx == self.n_ctx,
                f"transformer.n_ctx ({tr.n_ctx}) must equal n_ctx ({self.n_ctx})",
            )
            check(tr.prime_len is None, "prime attention needs single-style lyrics")
            if self.lyrics is not None:  # encoder style
                check(
                    tr.encoder_dims == n,
                    f"encoder-style lyrics: transformer.encoder_dims ({tr.encoder_dims}) must "
                    f"equal n_tokens ({n})",
                )
            else:
                check(tr.encoder_dims is None, "cross-attention needs encoder-style lyrics")
        return self


# ---------------------------------------------------------------------------------------------
# (de)serialisation


def check_against_vqvae(cfg: PriorConfig, vq: VQVAEConfig, level: int | None = None) -> None:
    """Raise :class:`ConfigError` unless the prior ``cfg`` models codes of the VQ-VAE ``vq``
    (its config): same hops, codebook size and sample rate,
    and, when ``level`` is given, built for that level."""
    where = "the prior" if level is None else f"the prior given for level {level}"
    if level is not None and cfg.level != level:
        raise ConfigError(f"{where} was built for level {cfg.level}")
    if tuple(cfg.downs_t) != tuple(vq.downs_t) or tuple(cfg.strides_t) != tuple(vq.strides_t):
        raise ConfigError(
            f"{where} has geometry downs_t={cfg.downs_t} strides_t={cfg.strides_t}; the VQ-VAE "
            f"downs_t={vq.downs_t} strides_t={vq.strides_t}"
        )
    if cfg.l_bins != vq.l_bins:
        raise ConfigError(f"{where} has {cfg.l_bins} bins, the VQ-VAE {vq.l_bins}")
    if cfg.sample_rate != vq.sample_rate:
        raise ConfigError(f"{where} runs at {cfg.sample_rate} Hz, the VQ-VAE {vq.sample_rate} Hz")


def save_prior_config(cfg: PriorConfig, path: str) -> None:
    """Write ``cfg`` as tagged JSON (nested configs included)."""
    save_config(cfg, path)


def load_prior_config(path: str) -> PriorConfig:
    """Read a :class:`PriorConfig` written by :func:`save_prior_config` and validate it."""
    return load_config(PriorConfig, path).validate()


__all__ = [
    "check_against_vqvae",
    "LYRIC_STYLES",
    "LabelConditionerConfig",
    "LyricsConfig",
    "PriorConfig",
    "UpsamplerConditionerConfig",
    "load_prior_config",
    "save_prior_config",
]
