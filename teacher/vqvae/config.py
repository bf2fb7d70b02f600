"""The VQ-VAE's config (:class:`VQVAEConfig`) and the data statistics its losses are normalised by
(:class:`Bandwidth`). Presets (released, small, tiny) are in :mod:`teacher.presets`."""

from __future__ import annotations

from dataclasses import dataclass, field

from teacher.config import check, check_resnet, check_stft_resolutions
from teacher.levels import hop_length


@dataclass(frozen=True)
class Bandwidth:
    """Data statistics that normalise the VQ-VAE losses (Jukebox ``calculate_bandwidth``).

    ``l2`` is the variance of the samples, ``l1`` their mean absolute value and ``spec`` the
    mean Frobenius norm of an item's STFT magnitude (n_fft 2048, hop 256, window 1536).
    """

    l1: float = 1.0
    l2: float = 1.0
    spec: float = 1.0


@dataclass(frozen=True)
class VQVAEConfig:
    """The Jukebox hierarchical VQ-VAE (paper §3, ``jukebox/vqvae``).

    Level 0 is the bottom (hop 8 in the released model), the last level the top (hop 128).
    Defaults are the released 44.1 kHz model, so weights published by OpenAI load into it.
    """

    sample_rate: int = 44100
    channels: int = 1
    sample_length: int = 393216  # training crop in samples; a multiple of the top hop
    levels: int = 3
    downs_t: tuple[int, ...] = (3, 2, 2)
    strides_t: tuple[int, ...] = (2, 2, 2)
    emb_width: int = 64
    l_bins: int = 2048
    mu: float = 0.99  # EMA decay of the codebook sums and counts
    revival_threshold: float = 1.0  # codes whose EMA count falls below are restarted
    width: int = 32
    depth: int = 4
    m_conv: float = 1.0
    dilation_growth_rate: int = 3
    dilation_cycle: int | None = None
    multipliers: tuple[int, ...] = (2, 1, 1)  # per level: scales width and depth
    reverse_decoder_dilation: bool = True
    zero_out: bool = False
    res_scale: bool = False
    # loss weights (Jukebox hparams "vqvae")
    commit: float = 0.02
    multispectral: float = 1.0
    spectral: float = 0.0
    lmix_l1: float = 0.0
    lmix_l2: float = 1.0
    lmix_linf: float = 0.02
    linf_k: int = 2048
    multispec_n_fft: tuple[int, ...] = (2048, 1024, 512)
    multispec_hop: tuple[int, ...] = (240, 120, 50)
    multispec_win: tuple[int, ...] = (1200, 600, 240)
    bandwidth: Bandwidth = field(default_factory=Bandwidth)

    @property
    def hop_lengths(self) -> tuple[int, ...]:
        """Samples per code at each level (cumulative product of ``stride ** down``)."""
        return tuple(hop_length(self.downs_t, self.strides_t, lv) for lv in range(self.levels))

    def validate(self) -> VQVAEConfig:
        """Raise :class:`ConfigError` naming the first bad field; return ``self``."""
        check(self.levels >= 1, "levels must be >= 1")
        for name in ("downs_t", "strides_t", "multipliers"):
            check(
                len(getattr(self, name)) == self.levels,
                f"{name} must have one entry per level ({self.levels}), got {getattr(self, name)}",
            )
        check(all(d >= 1 for d in self.downs_t), f"downs_t must be >= 1, got {self.downs_t}")
        check(all(s >= 2 for s in self.strides_t), f"strides_t must be >= 2, got {self.strides_t}")
        # kernel 2s with padding s/2 maps T to exactly T/s only for even strides (Jukebox's
        # assert_shape would fail otherwise)
        check(
            all(s % 2 == 0 for s in self.strides_t), f"strides_t must be even, got {self.strides_t}"
        )
        check(self.channels == 1, "Jukebox models are mono: channels must be 1")
        check(self.sample_rate > 0, "sample_rate must be positive")
        top = self.hop_lengths[-1]
        check(
            self.sample_length > 0 and self.sample_length % top == 0,
            f"sample_length ({self.sample_length}) must be a positive multiple of the top hop "
            f"length {top}",
        )
        check(self.emb_width > 0 and self.l_bins > 1, "emb_width > 0 and l_bins > 1 required")
        check(0.0 < self.mu < 1.0, f"mu must be in (0, 1), got {self.mu}")
        check(self.width > 0 and self.depth > 0, "width and depth must be positive")
        check(
            all(m >= 1 for m in self.multipliers),
            f"multipliers must be >= 1, got {self.multipliers}",
        )
        check_resnet(self.width, self.m_conv, self.dilation_growth_rate, self.dilation_cycle)
        check(self.revival_threshold >= 0, "revival_threshold must be >= 0")
        for name in ("commit", "multispectral", "spectral", "lmix_l1", "lmix_l2", "lmix_linf"):
            check(getattr(self, name) >= 0, f"loss weight {name} must be >= 0")
        bw = self.bandwidth
        check(
            bw.l1 > 0 and bw.l2 > 0 and bw.spec > 0,
            f"bandwidth statistics must be positive, got {bw}",
        )
        check_stft_resolutions(
            self.multispec_n_fft, self.multispec_hop, self.multispec_win, "multispectral loss"
        )
        check(self.linf_k > 0, "linf_k must be positive")
        return self
