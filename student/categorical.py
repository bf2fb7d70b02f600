"""The categorical ("Gumbel-max") IAF student (DESIGN §5).

K stages, each a gated causal dilated conv stack (WaveNet) conditioned on the upsampled upper
codes. Stage 0 reads only the conditioning; stage k ≥ 1 reads the embedding of stage k−1's
tokens shifted right by one. Every stage emits logits ``l_k [B, T, V]`` whose position t depends
on positions ``< t`` only, and tokens by Gumbel-max::

    tokens_k = argmax(l_k / temperature + g)        # the SAME g at every stage

Sharing g is what makes the stack work: each stage refines the same sample, so the stack is a
learned Jacobi iteration of the teacher's sequential sampler (exact after T stages with a perfect
model). With fresh noise per stage the prototype never beat a factorized student (DESIGN §5:
K=4 KL 0.73 with fresh noise vs 0.33 with shared noise). Given the noise before t,
``q_t = softmax(l_{K-1}[t])`` is the exact distribution of the final token t, which makes the
per-token reverse KL to the teacher closed form (:func:`distill.losses.reverse_kl`).

No gradient crosses an argmax: stage k learns from its own logits only, which is why the
intermediate stages get their own KL term (weight 0.1, DESIGN §5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from student.base import Student, StudentSample, gumbel_noise, straight_through_onehot
from student.config import StudentConfig
from student.layers import CausalStack, shift_right


class CategoricalStage(nn.Module):
    """One stage: ``(prev_tokens LongTensor[B, T] | None, cond Tensor[B, T, C])`` ->
    logits ``Tensor[B, T, V]`` fp32, position t reading ``prev_tokens`` at ``< t`` only.

    ``token_input=False`` (stage 0) has no token embedding at all (so no unused parameters
    under DDP); it sees the conditioning only — DESIGN §5 found Gaussian noise fed to stage 0
    went unused, the entropy comes from the Gumbel noise.
    """

    def __init__(self, cfg: StudentConfig, token_input: bool) -> None:
        super().__init__()
        width = cfg.stage.width
        self.emb = nn.Embedding(cfg.l_bins, width) if token_input else None
        self.net = CausalStack(width if token_input else 0, cfg.cond_width, cfg.l_bins, cfg.stage)

    def forward(self, prev_tokens: Tensor | None, cond: Tensor) -> Tensor:
        if self.emb is None:
            return self.net(None, cond).float()
        if prev_tokens is None:
            raise ValueError("stages after the first read the previous stage's tokens")
        x = shift_right(self.emb(prev_tokens))  # position t sees tokens < t only
        return self.net(x, cond).float()


class CategoricalIAF(Student):
    """Gumbel-max IAF student (see the module docstring). ``stages`` holds K networks, or two
    with ``cfg.share_stages`` (stage 0 and one network applied at stages 1..K−1)."""

    family = "categorical"

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__(cfg)
        k = cfg.n_stages
        n_nets = min(k, 2) if cfg.share_stages else k
        self.stages = nn.ModuleList(CategoricalStage(cfg, token_input=i > 0) for i in range(n_nets))

    def stage_net(self, stage: int) -> CategoricalStage:
        """The network that runs at ``stage`` (shared ones repeat)."""
        if not 0 <= stage < self.cfg.n_stages:
            raise IndexError(f"stage {stage} out of range [0, {self.cfg.n_stages})")
        return self.stages[min(stage, len(self.stages) - 1)]

    draw_noise = staticmethod(gumbel_noise)

    @property
    def noise_dim(self) -> int:
        """V: one Gumbel draw per code and position."""
        return self.cfg.l_bins

    def stage_logits(self, stage: int, prev_tokens: Tensor | None, cond: Tensor) -> Tensor:
        """Logits ``Tensor[B, T, V]`` fp32 of ``stage`` given the previous stage's tokens
        ``LongTensor[B, T]`` (shifted right inside; ignored at stage 0) and ``cond [B, T, C]``.

        Speculative drafting re-runs the final stage on an accepted prefix with this; the
        draft distribution at sampling temperature τ is ``softmax(logits / τ)``."""
        if stage == 0:
            prev_tokens = None
        return self.stage_net(stage)(prev_tokens, cond)

    @staticmethod
    def select(logits: Tensor, noise: Tensor, temperature: float = 1.0) -> Tensor:
        """Gumbel-max: ``argmax(logits / temperature + g)`` -> ``LongTensor[B, T]``.

        All stages go through here with the same ``noise`` (a hook point for tests)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        return (logits.detach().float() / temperature + noise).argmax(dim=-1)

    def run_passes(
        self, cond: Tensor, noise: Tensor, tau: float, temperature: float
    ) -> StudentSample:
        """All K stages on ``cond Tensor[B, T, C]`` with the Gumbel ``noise Tensor[B, T, V]``
        shared by every stage; ``soft`` is the straight-through Gumbel-softmax at ``tau`` and
        the tokens are drawn at ``temperature`` (:meth:`Student.forward`)."""
        tokens: Tensor | None = None
        logits, all_tokens = [], []
        for k in range(self.cfg.n_stages):
            lk = self.stage_logits(k, tokens, cond)
            tokens = self.select(lk, noise, temperature)  # SAME g at every stage (DESIGN §5)
            logits.append(lk)
            all_tokens.append(tokens)
        soft = None
        if torch.is_grad_enabled():
            # straight-through Gumbel-softmax with the noise that picked the tokens
            soft = straight_through_onehot(tokens, logits[-1] / temperature + noise, tau)
        return StudentSample(
            codes=tokens, logits=logits, soft=soft, extras={"tokens": torch.stack(all_tokens)}
        )


__all__ = ["CategoricalIAF", "CategoricalStage"]
