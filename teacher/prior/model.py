"""The assembled Jukebox prior (paper §4, ``jukebox/prior/prior.py`` + ``autoregressive.py``).

A :class:`Prior` models the codes of one level, ``p(z_t | z_<t, labels, upper codes, lyrics)``,
with a decoder-only transformer (:mod:`teacher.prior.transformer`) and the conditioning of
:mod:`teacher.prior.conditioners`. Its module tree is OpenAI's, so the keys of a released
``prior_level_*.pth.tar`` state dict are our parameter names:

    prior.x_emb.weight, prior.pos_emb.pos_emb, prior.start_token (unlabelled priors only),
    prior.transformer._attn_mods.<i>.*, prior.x_out.weight (= x_emb.weight unless merged_decoder)
    y_emb.*                              LabelConditioner (labelled priors)
    conditioner_blocks.0.*               UpsamplerConditioner (below the top level)
    prime_prior.*, prime_state_proj.{w,b}, prime_state_ln.*, prime_x_out.weight
                                         the lyric encoder (encoder-style lyrics)

Input of the transformer (Jukebox ``ConditionalAutoregressive2D.forward``): the token
embeddings shifted right by one, position 0 holding the start token (the label embedding, or a
learned one when unlabelled), plus the position embedding and the per-position conditioning
``x_cond`` (timing at the top, the upsampled upper codes in an upsampler). Unless
``merged_decoder``, ``x_cond`` is added again after the transformer and the output projection
shares the input embedding. Losses are in bits per token (cross-entropy / ln 2).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from teacher.config import ConfigError
from teacher.device import has_values
from teacher.io import atomic_dir, load_model_weights, read_model_config, save_tensors
from teacher.prior.attention import Conv1D, LayerNorm
from teacher.prior.conditioners import LabelConditioner, UpsamplerConditioner
from teacher.prior.config import PriorConfig, save_prior_config
from teacher.prior.transformer import Transformer, TransformerConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LN2 = math.log(2.0)


@dataclass
class Conditioning:
    """Everything a prior conditions on, computed once by :meth:`Prior.condition`.

    Reused by teacher-forced scoring (:meth:`Prior.logits`) and sampling
    (:func:`teacher.generate.sampler.sample_window`). ``S`` is the transformer's sequence
    (``n_tokens + T`` for single-style lyrics, ``T`` otherwise).

    Attributes:
        start: ``Tensor[B, 1, D]`` label start embedding, or ``None`` for the learned start token.
        x_cond: ``Tensor[B, S_c, D]`` per-position conditioning with ``S_c >= S``, or ``None``.
        encoder_kv: ``Tensor[B, n_tokens, D]`` lyric encoder states for the cross-attention
            layers (encoder style), or ``None``.
        lyrics: ``LongTensor[B, n_tokens]`` the lyric window (both lyric styles), or ``None``.
        batch_size: B.
    """

    start: Tensor | None = None
    x_cond: Tensor | None = None
    encoder_kv: Tensor | None = None
    lyrics: Tensor | None = None
    batch_size: int = 1

    def expand(self, n: int) -> Conditioning:
        """The same conditioning for ``n`` samples (B must be 1 or ``n``)."""
        if self.batch_size == n:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand a conditioning of batch {self.batch_size} to {n}")

        def ex(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.expand(n, *t.shape[1:])

        return Conditioning(
            ex(self.start), ex(self.x_cond), ex(self.encoder_kv), ex(self.lyrics), n
        )


@dataclass
class PriorOutput:
    """Result of :meth:`Prior.forward`.

    Attributes:
        loss: scalar ``sum(weights[k] * terms[k])`` in bits per token.
        terms: ``"prior"`` bits/token of the music codes and, with lyrics, ``"lyrics"`` bits per
            lyric character (Jukebox ``gen_loss``/``prime_loss``); they carry gradients.
        weights: Jukebox's weighting: ``T / (n + T)`` and ``loss_fraction · n / (n + T)``.
        metrics: detached scalars: ``bits_per_token``, ``accuracy`` (argmax = target over music
            codes) and with lyrics ``lyric_bits``.
    """

    loss: Tensor
    terms: dict[str, Tensor]
    weights: dict[str, float]
    metrics: dict[str, Tensor] = field(default_factory=dict)


class PositionEmbedding(nn.Module):
    """A learned table ``pos_emb`` of ``n_ctx × D`` (std ``0.01 · init_scale``)."""

    def __init__(self, n_ctx: int, width: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.pos_emb = nn.Parameter(torch.empty(n_ctx, width))
        nn.init.normal_(self.pos_emb, std=0.01 * init_scale)

    def forward(self) -> Tensor:
        """-> Tensor[n_ctx, D]."""
        return self.pos_emb


class ConditionalAutoregressive(nn.Module):
    """Token embedding, positions, transformer and output head (Jukebox
    ``ConditionalAutoregressive2D``).

    Args:
        cfg: the transformer.
        vocab: tokens V.
        learned_start: keep a learned ``start_token`` (priors without labels, the lyric encoder).
        only_encode: no output head (the lyric encoder returns its states).
        merged_decoder: untie ``x_out`` from ``x_emb`` and do not re-add ``x_cond`` at the output.
        emb_dropout: dropout of the token and of the position embeddings.
    """

    def __init__(
        self,
        cfg: TransformerConfig,
        vocab: int,
        learned_start: bool,
        only_encode: bool = False,
        merged_decoder: bool = False,
        emb_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        width = cfg.width
        self.x_emb = nn.Embedding(vocab, width)
        nn.init.normal_(self.x_emb.weight, std=0.02 * cfg.init_scale)
        self.x_emb_dropout = nn.Dropout(emb_dropout)
        if learned_start:
            self.start_token = nn.Parameter(torch.empty(1, width))
            nn.init.normal_(self.start_token, std=0.01 * cfg.init_scale)
        else:
            self.start_token = None
        self.pos_emb = PositionEmbedding(cfg.n_ctx, width, cfg.init_scale)
        self.pos_emb_dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(cfg)
        self.add_cond_after_transformer = not merged_decoder
        self.only_encode = only_encode
        if not only_encode:
            self.x_out = nn.Linear(width, vocab, bias=False)
            self.tie_weights()

    def tie_weights(self) -> None:
        """Share ``x_out``'s weight with ``x_emb`` (Jukebox ``share_x_emb_x_out``) unless the
        decoder is merged; called again after loading with ``assign=True`` replaced them."""
        if not self.only_encode and self.add_cond_after_transformer:
            self.x_out.weight = self.x_emb.weight

    def start_embedding(self, start: Tensor | None, batch_size: int) -> Tensor:
        """The input at position 0: ``start`` ``[B, 1, D]`` or the learned token -> [B, 1, D]."""
        if start is not None:
            return start
        if self.start_token is None:
            raise ValueError("a labelled prior needs the label start embedding")
        return self.start_token.view(1, 1, -1).expand(batch_size, 1, -1)

    def embed(self, tokens: Tensor, start: Tensor | None, x_cond: Tensor | None) -> Tensor:
        """Transformer input for teacher forcing: ``LongTensor[B, S]`` -> ``Tensor[B, S, D]``.

        Position t holds ``x_emb(tokens[t-1])`` (position 0 the start embedding), then
        ``+ pos_emb[t] + x_cond[t]`` (Jukebox's ``roll(x_emb(z), 1)``).
        """
        b, s = tokens.shape
        first = self.start_embedding(start, b).to(self.x_emb.weight.dtype)
        x = torch.cat([first, self.x_emb(tokens[:, : s - 1])], dim=1)
        x = self.x_emb_dropout(x) + self.pos_emb_dropout(self.pos_emb()[:s])
        if x_cond is not None:
            x = x + x_cond[:, :s]
        return x

    def hidden(
        self,
        tokens: Tensor,
        start: Tensor | None = None,
        x_cond: Tensor | None = None,
        encoder_kv: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced output states ``Tensor[B, S, D]`` (before the output head)."""
        x = self.transformer(self.embed(tokens, start, x_cond), encoder_kv=encoder_kv)
        if self.add_cond_after_transformer and x_cond is not None:
            x = x + x_cond[:, : tokens.shape[1]]
        return x

    def head(self, h: Tensor) -> Tensor:
        """Output states ``Tensor[B, S, D]`` -> logits ``Tensor[B, S, V]`` in fp32."""
        return F.linear(h.float(), self.x_out.weight.float())


class Prior(nn.Module):
    """A Jukebox prior built from a :class:`PriorConfig` (kept as ``self.cfg``).

    Inputs: ``codes`` ``LongTensor[B, T]`` (``T <= n_ctx``) of this level; ``labels``
    ``LongTensor[B, 4 + G + n_tokens]`` in the layout of :mod:`teacher.data.labels` (labelled priors;
    the lyric window at the end for lyric priors); ``upper`` ``LongTensor[B, T_up]`` codes of the
    level above over the same span, ``T_up · ratio >= T`` (upsamplers).
    """

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        tr = cfg.transformer
        if cfg.is_upsampler:
            up = cfg.level + 1
            self.conditioner_blocks = nn.ModuleList(
                [
                    UpsamplerConditioner(
                        cfg.conditioner,
                        cfg.l_bins,
                        tr.width,
                        cfg.downs_t[up],
                        cfg.strides_t[up],
                        tr.init_scale,
                    )
                ]
            )
        if cfg.labels is not None:
            self.y_emb = LabelConditioner(
                cfg.labels, tr.width, cfg.n_ctx, cfg.sample_rate, tr.init_scale
            )
        lyr = cfg.lyrics
        if lyr is not None and lyr.style == "encoder":
            enc = lyr.encoder
            self.prime_prior = ConditionalAutoregressive(
                enc, lyr.n_vocab, learned_start=True, only_encode=True, emb_dropout=lyr.emb_dropout
            )
            self.prime_state_proj = Conv1D(enc.width, tr.width, init_scale=enc.init_scale)
            self.prime_state_ln = LayerNorm(tr.width)
            self.prime_x_out = nn.Linear(tr.width, lyr.n_vocab, bias=False)
            nn.init.normal_(self.prime_x_out.weight, std=0.02 * tr.init_scale)
        # the single-sequence style always has a label start token (Jukebox y_cond=True there)
        self.prior = ConditionalAutoregressive(
            tr,
            cfg.vocab_size,
            learned_start=cfg.labels is None,
            merged_decoder=cfg.merged_decoder,
            emb_dropout=cfg.emb_dropout,
        )

    # ----------------------------------------------------------------------------------------
    # conditioning

    def condition(self, labels: Tensor | None = None, upper: Tensor | None = None) -> Conditioning:
        """Precompute the conditioning of a batch (differentiable; reuse it across calls).

        Args:
            labels: ``LongTensor[B, cfg.label_size]`` (labelled priors only).
            upper: ``LongTensor[B, T_up]`` upper-level codes (upsamplers only).
        """
        cfg = self.cfg
        batch = _batch_size(labels, upper)
        start = x_cond = encoder_kv = lyrics = None
        if cfg.labels is not None:
            if labels is None:
                raise ValueError("this prior is labelled: pass labels")
            if labels.dim() != 2 or labels.shape[1] != cfg.label_size:
                raise ValueError(
                    f"expected labels of shape (B, {cfg.label_size}) = 4 + max_genres "
                    f"{cfg.labels.max_genres} + n_tokens {cfg.n_tokens}, got {tuple(labels.shape)}"
                )
            meta = labels[:, : 4 + cfg.labels.max_genres]
            start, x_cond = self.y_emb(meta)
            if cfg.n_tokens:
                lyrics = labels[:, 4 + cfg.labels.max_genres :]
                if has_values(lyrics) and not bool(
                    ((lyrics >= 0) & (lyrics < cfg.lyrics.n_vocab)).all()
                ):
                    raise ValueError(f"lyric tokens must be in [0, {cfg.lyrics.n_vocab})")
        elif labels is not None:
            raise ValueError("this prior is unlabelled: labels must be None")
        if cfg.is_upsampler:
            if upper is None:
                raise ValueError(f"the level-{cfg.level} upsampler needs the upper codes")
            x_cond = self.conditioner_blocks[0](upper)
        elif upper is not None:
            raise ValueError("the top prior takes no upper codes")
        if cfg.single_sequence and x_cond is not None:
            # the lyric positions get no per-position conditioning (Jukebox prior_preprocess)
            x_cond = F.pad(x_cond, (0, 0, cfg.n_tokens, 0))
        elif cfg.lyrics is not None and cfg.lyrics.style == "encoder":
            encoder_kv = self.encode_lyrics(lyrics)
        return Conditioning(start, x_cond, encoder_kv, lyrics, batch)

    def grow_label_bins(self, artist_bins: int, genre_bins: int) -> None:
        """Give new artist/genre ids rows (fine-tuning on names the vocabulary lacks): the
        tables ``y_emb.artist_emb.emb.weight`` ``[artist_bins_old, D]`` and
        ``y_emb.bow_genre_emb.emb.weight`` ``[genre_bins_old, D]`` grow to ``artist_bins``/
        ``genre_bins`` rows, the old rows bit-identical, the new ones copies of row 0 (unknown;
        :meth:`LabelConditioner.grow`), and ``self.cfg.labels`` records the new bins, so
        :meth:`save_pretrained` writes a folder that reloads. Build the optimiser afterwards."""
        if self.cfg.labels is None:
            raise ConfigError("this prior is unlabelled: it has no artist/genre tables to grow")
        self.y_emb.grow(artist_bins, genre_bins)
        self.cfg = dataclasses.replace(self.cfg, labels=self.y_emb.cfg).validate()

    def encode_lyrics(self, lyrics: Tensor) -> Tensor:
        """Encoder style: lyric tokens ``LongTensor[B, n]`` -> states ``Tensor[B, n, D]``
        (causal lyric transformer, projection to the prior's width, LayerNorm)."""
        acts = self.prime_prior.hidden(lyrics)
        return self.prime_state_ln(self.prime_state_proj(acts))

    # ----------------------------------------------------------------------------------------
    # teacher forcing

    def sequence(self, codes: Tensor, cond: Conditioning) -> Tensor:
        """The transformer's token sequence ``LongTensor[B, S]``: ``[lyrics | codes + n_vocab]``
        for single-style lyrics, else ``codes``."""
        if not self.cfg.single_sequence:
            return codes
        return torch.cat([cond.lyrics, codes + self.cfg.vocab_offset], dim=1)

    def sequence_logits(self, codes: Tensor, cond: Conditioning) -> Tensor:
        """Logits of every position of the transformer's sequence, whole vocabulary:
        ``Tensor[B, S, V_all]`` fp32 (what the reference's ``get_preds`` returns)."""
        self._check_codes(codes)
        cond = cond.expand(codes.shape[0])
        tokens = self.sequence(codes, cond)
        if cond.x_cond is not None and cond.x_cond.shape[1] < tokens.shape[1]:
            raise ValueError(
                f"the conditioning covers {cond.x_cond.shape[1]} positions, the sequence has "
                f"{tokens.shape[1]} (are the upper codes shorter than the window?)"
            )
        h = self.prior.hidden(tokens, cond.start, cond.x_cond, cond.encoder_kv)
        return self.prior.head(h)

    def logits(
        self,
        codes: Tensor,
        labels: Tensor | None = None,
        upper: Tensor | None = None,
        cond: Conditioning | None = None,
    ) -> Tensor:
        """Teacher-forced logits of every music position in one pass: ``Tensor[B, T, l_bins]``
        fp32; row t is ``log p(z_t | z_<t, ·)`` up to a constant.

        For single-style lyrics these are the music positions' logits restricted to the music
        vocabulary (the distribution :func:`~teacher.generate.sampler.sample_window` draws from).
        """
        if cond is None:
            cond = self.condition(labels, upper)
        full = self.sequence_logits(codes, cond)
        if not self.cfg.single_sequence:
            return full
        return full[:, self.cfg.n_tokens :, self.cfg.vocab_offset :]

    def forward(
        self,
        codes: Tensor,
        labels: Tensor | None = None,
        upper: Tensor | None = None,
        cond: Conditioning | None = None,
    ) -> PriorOutput:
        """Training loss in bits per token (Jukebox ``z_forward``); see :class:`PriorOutput`."""
        cfg = self.cfg
        if cond is None:
            cond = self.condition(labels, upper)
        full = self.sequence_logits(codes, cond)
        n = cfg.n_tokens
        t = codes.shape[1]
        if cfg.single_sequence:
            # reference: both terms over the joint vocabulary (get_sep_loss)
            music = full[:, n:]
            targets = codes + cfg.vocab_offset
            lyric_bits = _bits(full[:, :n], cond.lyrics)
        else:
            music, targets = full, codes
            lyric_bits = None
            if cfg.lyrics is not None:
                lyric_logits = F.linear(cond.encoder_kv.float(), self.prime_x_out.weight.float())
                lyric_bits = _bits(lyric_logits, cond.lyrics)
        music_bits = _bits(music, targets)
        terms = {"prior": music_bits}
        weights = {"prior": 1.0}
        if lyric_bits is not None:
            terms["lyrics"] = lyric_bits
            weights = {"prior": t / (n + t), "lyrics": cfg.lyrics.loss_fraction * n / (n + t)}
        loss = sum(weights[k] * terms[k] for k in terms)
        with torch.no_grad():
            metrics = {
                "bits_per_token": music_bits.detach(),
                "accuracy": (music.argmax(-1) == targets).float().mean(),
            }
            if lyric_bits is not None:
                metrics["lyric_bits"] = lyric_bits.detach()
        return PriorOutput(loss, terms, weights, metrics)

    def _check_codes(self, codes: Tensor) -> None:
        if codes.dim() != 2:
            raise ValueError(f"expected codes of shape (B, T), got {tuple(codes.shape)}")
        if codes.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"{codes.shape[1]} codes exceed the window n_ctx={self.cfg.n_ctx}")
        if codes.shape[1] < 1:
            raise ValueError("need at least one code")

    # ----------------------------------------------------------------------------------------
    # persistence

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into folder ``path`` (atomically)."""
        with atomic_dir(path) as tmp:
            save_prior_config(self.cfg, str(tmp / CONFIG_FILE))
            save_tensors(self.state_dict(), tmp / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Prior:
        """Rebuild a prior saved by :meth:`save_pretrained` (strict key check), its floating
        tensors cast to ``dtype`` (default fp32) whatever dtypes the folder stores."""
        path = Path(path)
        cfg = read_model_config(path, PriorConfig, "prior")
        # build on the meta device and adopt the loaded tensors: a 5B prior is neither
        # randomly initialised first (minutes) nor held twice in memory
        with torch.device("meta"):
            model = cls(cfg)
        load_model_weights(model, path, "prior", device=device, assign=True)  # 1 file or shards
        for module in model.modules():
            if isinstance(module, ConditionalAutoregressive):
                module.tie_weights()
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"{path}: tensors not restored from the checkpoint: {left[:5]}")
        # weights stored in half precision (or mixed) are cast to one dtype
        return model.to(device=device, dtype=dtype or torch.float32)


def _bits(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in bits of ``Tensor[B, S, V]`` logits against ``LongTensor[B, S]``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)) / LN2


def _batch_size(*tensors: Tensor | None) -> int:
    sizes = {t.shape[0] for t in tensors if t is not None}
    if len(sizes) > 1:
        raise ValueError(f"labels and upper codes disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else 1


__all__ = [
    "ConditionalAutoregressive",
    "Conditioning",
    "PositionEmbedding",
    "Prior",
    "PriorOutput",
]
