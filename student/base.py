"""What both student families share: the :class:`Student` API, conditioning copied from the
teacher, noise, straight-through codes and save/load.

A student replaces the upsampler prior of one level (DESIGN §5): given the codes of the level
above (and the labels), it samples every code of a window in a fixed number ``K`` of parallel
network passes, whatever the window length T. Its distribution over codes is autoregressive
given the noise (an inverse autoregressive flow): position t depends on the noise at ``<= t``
and, through the network, only on positions ``< t`` of the earlier stages. That is what makes
``q_t = softmax(logits[-1][:, t])`` the exact conditional of ``codes[:, t]`` given the noise
before t, and the per-token reverse KL to the teacher closed form.

Conditioning (:meth:`Student.condition`): the teacher's :class:`UpsamplerConditioner` (copied
at init by :meth:`Student.from_teacher`) maps the upper codes to one vector per position; with
labels, the teacher's artist/genre embedding (its start token) is added at every position,
since a convolutional student has no start position to put it in.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student.config import StudentConfig, save_student_config
from teacher.io import (
    ModelFolderError,
    atomic_dir,
    load_model_weights,
    read_model_config,
    save_tensors,
)
from teacher.prior.conditioners import LabelConditioner, UpsamplerConditioner

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class StudentSample:
    """One differentiable run of a student (:meth:`Student.forward`).

    Attributes:
        codes: ``LongTensor[B, T]`` the final stage's tokens (the sample).
        logits: per stage ``Tensor[B, T, V]`` fp32, ``logits[-1]`` the final stage's. For the
            categorical student ``softmax(logits[-1][:, t])`` is the exact conditional of
            ``codes[:, t]`` given the noise at ``< t`` (at temperature 1); for the Gaussian one
            these are the calibrated soft-assignment logits of each flow (DESIGN §5).
        soft: ``Tensor[B, T, V]`` straight-through one-hot of ``codes`` (forward value: exactly
            one-hot; gradient: that of a softmax relaxation), for the spectral loss; ``None``
            when run under ``no_grad``.
        extras: family-specific tensors. Categorical: ``tokens LongTensor[K, B, T]`` every
            stage's tokens. Gaussian: ``u`` the noise, ``v`` the pre-snap vectors, ``mu`` and
            ``log_sigma`` the accumulated affine map ``[B, T, D]``, ``log_det [B, T]``.
    """

    codes: Tensor
    logits: list[Tensor]
    soft: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Disable autocast on CPU and CUDA: logits, softmax, KL and STFT stay in fp32."""
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def gumbel_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, fp32, with U kept inside (0, 1)."""
    u = _uniform(shape, generator, device)
    tiny = torch.finfo(torch.float32).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))


def normal_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard normal noise, fp32."""
    gen_device = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return x.to(device) if device is not None else x


def _uniform(shape, generator, device) -> Tensor:
    # draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move
    gen_device = generator.device if generator is not None else device
    x = torch.rand(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return x.to(device) if device is not None else x


def straight_through_onehot(tokens: Tensor, relaxed_logits: Tensor, tau: float = 1.0) -> Tensor:
    """``tokens LongTensor[B, T]``, ``relaxed_logits Tensor[B, T, V]`` -> ``Tensor[B, T, V]``
    equal to ``one_hot(tokens)`` in the forward pass with the gradient of
    ``softmax(relaxed_logits / tau)`` (straight-through Gumbel-softmax, Jang et al. 2017)."""
    with autocast_off():
        soft = torch.softmax(relaxed_logits.float() / tau, dim=-1)
    hard = F.one_hot(tokens, relaxed_logits.shape[-1]).to(soft.dtype)
    # (soft - soft.detach()) is exactly 0 in the forward pass, so the value is exactly one-hot
    return hard + (soft - soft.detach())


class Student(nn.Module):
    """Base class of :class:`~student.categorical.CategoricalIAF` and
    :class:`~student.gaussian.GaussianIAF`; :meth:`from_pretrained` on it rebuilds either.

    Inputs: ``upper LongTensor[B, T_up]`` codes of the level above, ``labels
    LongTensor[B, >= 4 + max_genres]`` in the layout of :mod:`teacher.data.labels` (labelled students
    only; lyric tokens at the end are ignored). Windows have ``T = T_up · upsample_ratio``
    positions, any length.
    """

    family: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Student]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            Student._registry[cls.family] = cls

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        if self.family and cfg.family != self.family:
            raise ValueError(
                f"{type(self).__name__} needs family={self.family!r}, got {cfg.family}"
            )
        up = cfg.level + 1
        self.conditioner = UpsamplerConditioner(
            cfg.conditioner,
            cfg.l_bins,
            cfg.cond_width,
            cfg.downs_t[up],
            cfg.strides_t[up],
            cfg.init_scale,
        )
        self.y_emb = (
            LabelConditioner(cfg.labels, cfg.cond_width, 1, cfg.sample_rate, cfg.init_scale)
            if cfg.labels is not None
            else None
        )

    # ----------------------------------------------------------------------------------------

    @property
    def n_passes(self) -> int:
        """K: network passes per sample, whatever the length (the conditioner aside)."""
        return self.cfg.n_stages

    @property
    def vocab_size(self) -> int:
        return self.cfg.l_bins

    @classmethod
    def from_teacher(cls, prior, cfg: StudentConfig, **kwargs) -> Student:
        """A fresh student whose conditioner (and label embeddings) are copies of the teacher
        ``prior``'s (a :class:`~teacher.prior.model.Prior` of the same level), on its device.

        Copying the conditioner is the only warm start the teacher offers a convolutional
        student: it already maps upper codes to features the teacher's logits depend on.
        """
        if cls is Student:  # pick the family from the config
            return Student._registry[cfg.family].from_teacher(prior, cfg, **kwargs)
        if kwargs:
            raise TypeError(f"unexpected arguments for {cls.__name__}: {sorted(kwargs)}")
        cfg.check_teacher(prior.cfg)
        model = cls(cfg)
        model.conditioner.load_state_dict(prior.conditioner_blocks[0].state_dict())
        if model.y_emb is not None:
            model.y_emb.load_state_dict(prior.y_emb.state_dict())
        ref = next(prior.parameters())
        log.info(
            "%s for level %d initialised from the teacher's conditioner%s",
            cls.__name__,
            cfg.level,
            " and label embeddings" if model.y_emb is not None else "",
        )
        return model.to(device=ref.device)

    def condition(self, upper: Tensor, labels: Tensor | None = None) -> Tensor:
        """``upper LongTensor[B, T_up]`` (+ labels) -> conditioning ``Tensor[B, T, C]`` with
        ``T = T_up · upsample_ratio``, ``C = cfg.cond_width``. Differentiable; reuse it."""
        cond = self.conditioner(upper)
        if self.y_emb is not None:
            if labels is None:
                raise ValueError("this student is labelled: pass labels")
            n = self.cfg.label_size
            if labels.dim() != 2 or labels.shape[1] < n or labels.shape[0] != upper.shape[0]:
                raise ValueError(
                    f"expected labels of shape ({upper.shape[0]}, >= {n}), "
                    f"got {tuple(labels.shape)}"
                )
            start, _ = self.y_emb(labels[:, :n])
            cond = cond + start  # [B, 1, C] broadcast over positions
        elif labels is not None:
            raise ValueError("this student is unlabelled: labels must be None")
        return cond

    def _cond(self, upper: Tensor | None, labels: Tensor | None, cond: Tensor | None) -> Tensor:
        if cond is not None:
            return cond
        if upper is None:
            raise ValueError("pass the upper codes or a precomputed cond")
        return self.condition(upper, labels)

    # ----------------------------------------------------------------------------------------
    # the family API: a family sets ``draw_noise`` and ``noise_dim`` and implements the passes
    # (:meth:`run_passes`); conditioning, noise and the public signatures live here once

    #: ``(shape, generator, device) -> Tensor`` fp32: the family's noise (Gumbel or normal)
    draw_noise: ClassVar[Callable[..., Tensor]]

    @property
    def noise_dim(self) -> int:
        """Last dimension of the noise: V (categorical Gumbel) or D (Gaussian code space)."""
        raise NotImplementedError

    def make_noise(
        self,
        batch: int,
        length: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Noise of one window ``Tensor[B, T, noise_dim]`` fp32: categorical Gumbel
        ``[B, T, V]`` (one draw per position, shared by all stages); Gaussian ``N(0, I)
        [B, T, D]``."""
        return self.draw_noise((batch, length, self.noise_dim), generator, device)

    def forward(
        self,
        upper: Tensor | None,
        labels: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        tau: float = 1.0,
        cond: Tensor | None = None,
        temperature: float = 1.0,
    ) -> StudentSample:
        """One sample in K parallel passes (differentiable through the logits).

        Args:
            upper: ``LongTensor[B, T_up]`` upper codes (or ``None`` with ``cond``).
            labels: ``LongTensor[B, >= 4 + G]`` for labelled students.
            noise: ``Tensor[B, T, noise_dim]`` (:meth:`make_noise`; drawn with ``generator``
                when ``None``): Gumbel ``[B, T, V]`` or normal ``[B, T, D]``.
            tau: temperature of the straight-through Gumbel-softmax in ``soft``.
            cond: precomputed :meth:`condition` output ``Tensor[B, T, C]``.
            temperature: sampling temperature (categorical: of the tokens, the logits are
                returned unscaled; Gaussian: it scales the noise).
        """
        cond = self._cond(upper, labels, cond)
        return self.run_passes(cond, self._noise_for(noise, generator, cond), tau, temperature)

    def run_passes(
        self, cond: Tensor, noise: Tensor, tau: float, temperature: float
    ) -> StudentSample:
        """The family's K passes on ``cond Tensor[B, T, C]`` and ``noise Tensor[B, T,
        noise_dim]`` fp32 (both on one device): what :meth:`forward` returns."""
        raise NotImplementedError

    def sample(
        self,
        upper: Tensor | None,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        noise: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """Codes ``LongTensor[B, T]`` in exactly :attr:`n_passes` network passes, any T."""
        with torch.no_grad():
            return self.forward(
                upper, labels, noise=noise, generator=generator, cond=cond, temperature=temperature
            ).codes

    def stage_logits(self, stage: int, prev_tokens: Tensor | None, cond: Tensor) -> Tensor:
        raise NotImplementedError

    def _noise_for(
        self, noise: Tensor | None, generator: torch.Generator | None, cond: Tensor
    ) -> Tensor:
        b, t = cond.shape[:2]
        if noise is None:
            return self.make_noise(b, t, generator=generator, device=cond.device)
        if tuple(noise.shape) != (b, t, self.noise_dim):
            raise ValueError(
                f"expected noise of shape {(b, t, self.noise_dim)}, got {tuple(noise.shape)}"
            )
        return noise.to(device=cond.device, dtype=torch.float32)

    # ----------------------------------------------------------------------------------------
    # persistence

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into folder ``path`` (atomically)."""
        with atomic_dir(path) as tmp:
            save_student_config(self.cfg, str(tmp / CONFIG_FILE))
            save_tensors(self.state_dict(), tmp / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Student:
        """Rebuild a student saved by :meth:`save_pretrained` (strict key check), in ``dtype``
        (default fp32). Called on :class:`Student` it picks the family from the config."""
        path = Path(path)
        cfg = read_model_config(path, StudentConfig, "student")
        target = Student._registry[cfg.family] if cls is Student else cls
        if target.family != cfg.family:
            raise ModelFolderError(
                f"{path} holds a {cfg.family} student, not a {target.family} one"
            )
        model = target(cfg)
        load_model_weights(model, path, f"{cfg.family} student", device=device or "cpu")
        return model.to(device=device or "cpu", dtype=dtype or torch.float32)


def load_student(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Student:
    """Load a student folder of either family."""
    # importing the subclasses registers them
    import student.categorical  # noqa: F401
    import student.gaussian  # noqa: F401

    return Student.from_pretrained(path, device=device, dtype=dtype)


__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "Student",
    "StudentSample",
    "autocast_off",
    "gumbel_noise",
    "load_student",
    "normal_noise",
    "straight_through_onehot",
]
