"""The Gaussian IAF student: the classical ClariNet/Parallel-WaveNet baseline (DESIGN §5).

Noise ``u ~ N(0, I) [B, T, D]`` goes through K affine autoregressive flows
``v ← μ_k(v_<t) + σ_k(v_<t) · v`` in a D-dimensional code-embedding space of unit-norm code
vectors ``e_k`` (:class:`~student.config.GaussianConfig`: the VQ-VAE codebook of the level, the
teacher's output-head rows, or a learned table). The flows compose into one affine map per
position (Parallel WaveNet §2.3 / ClariNet §3.2)::

    σ_tot ← σ_k · σ_tot,   μ_tot ← μ_k + σ_k · μ_tot,   v = μ_tot + σ_tot · u

with μ_tot, σ_tot at t functions of ``u_<t`` only, so ``log|det ∂v/∂u| = Σ log σ_tot``. Tokens
are the nearest code: ``argmax_k v_t · e_k``.

Snapping is not differentiable. The closed-form stand-in (DESIGN §5's "least bad variant") reads
the snap as an argmax under Gaussian noise, ``v·e_k = μ·e_k + n_k`` with
``std(n_k) = sqrt(Σ_d σ_d² e_kd²)``, and matches it with a Gumbel-max of the same variance
(a Gumbel of scale β has std ``β π/√6``)::

    calibrated logits_k = (μ_tot · e_k) / ((√6/π) · sqrt(Σ_d σ_tot,d² e_k,d²))

so the categorical reverse KL applies to them. The prototype found this baseline reaches a low
teacher NLL with a KL bound of 0.98 vs the categorical student's 0.33 (too sharp); it is built
to be compared against, not tuned.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student.base import (
    Student,
    StudentSample,
    autocast_off,
    normal_noise,
    straight_through_onehot,
)
from student.config import StudentConfig
from student.layers import AffineARFlow

log = logging.getLogger(__name__)

# a Gumbel of scale β has std β·π/√6; matching a Gaussian std s gives β = s·√6/π
GUMBEL_SCALE = math.sqrt(6.0) / math.pi


class GaussianIAF(Student):
    """Affine-IAF student in a unit-norm code space (see the module docstring).

    ``code_table`` is ``[V, D]``: a buffer for the ``vqvae``/``teacher_head`` spaces (saved
    with the weights), a parameter for ``learned``; :meth:`codes_unit` normalises its rows.
    """

    family = "gaussian"

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__(cfg)
        g = cfg.gaussian
        table = F.normalize(torch.randn(cfg.l_bins, g.code_dim), dim=-1)
        if g.code_space == "learned":
            self.code_table = nn.Parameter(table)
        else:
            # random unit vectors until set_codebook / from_teacher installs the real ones
            self.register_buffer("code_table", table)
        self.flows = nn.ModuleList(
            AffineARFlow(g.code_dim, cfg.cond_width, cfg.stage, g.log_sigma_min, g.log_sigma_max)
            for _ in range(cfg.n_stages)
        )

    @classmethod
    def from_teacher(cls, prior, cfg: StudentConfig, codebook: Tensor | None = None) -> GaussianIAF:
        """As :meth:`Student.from_teacher`; also installs the code space: ``codebook``
        ``Tensor[V, D]`` (the VQ-VAE's ``codebook(level)``) for ``code_space="vqvae"``, the
        teacher's output-head rows for ``"teacher_head"``."""
        model = super().from_teacher(prior, cfg)
        space = cfg.gaussian.code_space
        if space == "teacher_head":
            model.set_codebook(prior.prior.x_out.weight[-cfg.l_bins :])
        elif codebook is not None:
            model.set_codebook(codebook)
        elif space == "vqvae":
            log.warning("no VQ-VAE codebook given: the code space stays random unit vectors")
        return model

    @torch.no_grad()
    def set_codebook(self, codebook: Tensor) -> None:
        """Install ``Tensor[V, D]`` code vectors (normalised to unit norm here)."""
        if tuple(codebook.shape) != tuple(self.code_table.shape):
            raise ValueError(
                f"expected a codebook of shape {tuple(self.code_table.shape)}, "
                f"got {tuple(codebook.shape)}"
            )
        self.code_table.copy_(F.normalize(codebook.detach().float(), dim=-1))

    def codes_unit(self) -> Tensor:
        """The unit-norm code vectors ``Tensor[V, D]`` fp32."""
        return F.normalize(self.code_table.float(), dim=-1)

    draw_noise = staticmethod(normal_noise)

    @property
    def noise_dim(self) -> int:
        """D: the code space's dimension."""
        return self.cfg.gaussian.code_dim

    def snap(self, v: Tensor) -> Tensor:
        """Nearest unit-norm code by dot product: ``Tensor[B, T, D]`` -> ``LongTensor[B, T]``."""
        with autocast_off():  # a bf16 dot product could pick a farther code
            return (v.float() @ self.codes_unit().T).argmax(dim=-1)

    def calibrated_logits(self, mu: Tensor, log_sigma: Tensor) -> Tensor:
        """``(μ·e_k) / ((√6/π) sqrt(Σ_d σ_d² e_kd²))``: ``[B, T, D]`` × 2 -> ``Tensor[B, T, V]``
        fp32 (DESIGN §5's Gumbel-matched soft assignment of the snap)."""
        with autocast_off():
            e = self.codes_unit()
            return (mu.float() @ e.T) / self.calibration_scale(log_sigma)

    def calibration_scale(self, log_sigma: Tensor) -> Tensor:
        """``β_k = (√6/π) sqrt(Σ_d σ_d² e_kd²)``: ``[B, T, D]`` -> ``Tensor[B, T, V]`` fp32, the
        Gumbel scale whose std matches that of the Gaussian noise on ``v·e_k``."""
        with autocast_off():
            e = self.codes_unit()
            var = torch.exp(2.0 * log_sigma.float()) @ (e * e).T
            return GUMBEL_SCALE * var.clamp_min(1e-12).sqrt()

    def stage_logits(self, stage: int, prev_tokens: Tensor | None, cond: Tensor) -> Tensor:
        """Not defined for this family: its flows read continuous vectors ``v`` (not tokens) and
        the calibrated logits need the noise. Use :meth:`forward` (its ``logits``) instead."""
        raise NotImplementedError(
            "the Gaussian IAF's flows read continuous pre-snap vectors, not tokens; run "
            "forward(noise=...) for its calibrated logits"
        )

    def flow(self, u: Tensor, cond: Tensor) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """Run the K flows on ``u Tensor[B, T, D]``.

        Returns ``(v, logits per flow, μ_tot, log σ_tot)``, every tensor fp32 ``[B, T, ·]``.
        """
        v = u
        mu_tot = torch.zeros_like(u)
        log_sigma_tot = torch.zeros_like(u)
        logits = []
        for flow in self.flows:
            v, mu, log_sigma = flow(v, cond)
            mu_tot = mu + torch.exp(log_sigma) * mu_tot
            log_sigma_tot = log_sigma_tot + log_sigma
            logits.append(self.calibrated_logits(mu_tot, log_sigma_tot))
        return v, logits, mu_tot, log_sigma_tot

    def run_passes(
        self, cond: Tensor, noise: Tensor, tau: float, temperature: float
    ) -> StudentSample:
        """K flows in K parallel passes on ``cond Tensor[B, T, C]`` and the normal ``noise
        Tensor[B, T, D]``; ``temperature`` scales the noise (the usual flow temperature).
        ``soft`` is straight-through with the gradient of ``softmax(v·e_k / (β_k τ))``, ``β_k``
        the calibration scale: the Gaussian counterpart of the categorical student's
        ``softmax((l + g)/τ)`` (the noisy logits whose argmax is, up to β_k varying over k, the
        snap)."""
        u = noise * temperature
        v, logits, mu, log_sigma = self.flow(u, cond)
        codes = self.snap(v)
        soft = None
        if torch.is_grad_enabled():
            with autocast_off():
                noisy = (v @ self.codes_unit().T) / self.calibration_scale(log_sigma)
            soft = straight_through_onehot(codes, noisy, tau)
        extras = {
            "u": u,
            "v": v,
            "mu": mu,
            "log_sigma": log_sigma,
            "log_det": log_sigma.sum(dim=-1),
        }
        return StudentSample(codes=codes, logits=logits, soft=soft, extras=extras)


__all__ = ["GUMBEL_SCALE", "GaussianIAF"]
