"""Seconds per optimiser step of every run of the demo recipe, measured on this machine.

``fastjukebox demo --from_scratch --minutes M`` sizes its runs from these (a plan from
constants measured once on another machine overran by 45%): each run's model is built from the
recipe's configs with random weights and trained for a few steps on random batches of the real
shapes (the same loss step as the trainers), timed after one warm-up step. About 20 s for the
demo recipe on 2 cores; the result is stored in ``OUT/demo.json`` so a resumed demo keeps its
plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eval.demo.recipe import FAMILIES, RUNS, UPSAMPLERS, Recipe

#: timed steps per run (after one warm-up step)
STEPS = 3


def _time_steps(model: torch.nn.Module, loss: Callable[[], Tensor], steps: int, lr: float) -> float:
    """Mean wall seconds of an Adam step on ``loss()`` (forward, backward, clip, step)."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    one()  # warm-up: allocations, first-call dispatch
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def _labels(cfg: Any, batch: int, total: int) -> Tensor | None:
    """Valid label vectors ``LongTensor[B, 4 + G + n_tokens]`` for a prior config: a song of
    ``total`` samples, the first window, artist and genre 1, lyric tokens 1."""
    from teacher.data.labels import make_label

    if cfg.labels is None:
        return None
    y = make_label(total, 0, cfg.sample_length, 1, [1], [1] * cfg.n_tokens, cfg.labels.max_genres)
    return torch.as_tensor(y)[None].expand(batch, -1).clone()


def measure_step_seconds(
    recipe: Recipe,
    vq_cfg: Any,
    prior_cfgs: dict[str, Any],
    student_cfg: Callable[[str, str, Any], Any],
    song_samples: int,
    steps: int = STEPS,
) -> dict[str, float]:
    """Seconds per optimiser step of every run of :data:`RUNS` at the recipe's batch size.

    Args:
        vq_cfg: the VQ-VAE config the recipe trains.
        prior_cfgs: ``top``/``middle``/``bottom`` -> prior config (artist/genre bins set).
        student_cfg: ``(family, level name, prior config) -> StudentConfig``.
        song_samples: a song's length in samples (the top prior's timing labels).
    """
    from distill.step import distill_step
    from distill.teacher import Teacher
    from student import CategoricalIAF, GaussianIAF
    from teacher.prior.model import Prior
    from teacher.vqvae.model import VQVAE

    torch.manual_seed(0)
    b, out = recipe.batch, {}
    vqvae = VQVAE(vq_cfg)
    audio = 0.1 * torch.randn(b, 1, vq_cfg.sample_length)
    out["vqvae"] = _time_steps(vqvae, lambda: vqvae(audio).loss, steps, 1e-4)
    vqvae.eval().requires_grad_(False)
    priors = {}
    for name, cfg in prior_cfgs.items():
        prior = priors[name] = Prior(cfg)
        codes = torch.randint(0, cfg.l_bins, (b, cfg.n_ctx))
        upper = (
            torch.randint(0, cfg.l_bins, (b, cfg.n_ctx // cfg.upsample_ratio))
            if cfg.is_upsampler
            else None
        )
        labels = _labels(cfg, b, song_samples)

        def loss(
            prior: Any = prior, codes: Tensor = codes, labels: Any = labels, upper: Any = upper
        ) -> Tensor:
            return prior(codes, labels=labels, upper=upper).loss

        out[name] = _time_steps(prior, loss, steps, 1e-4)
    weights = {"kl": 1.0, "kl_intermediate": 0.1, "mrstft": 1.0, "ce": 1.0}
    gen = torch.Generator().manual_seed(0)
    for fam in FAMILIES:
        for name in UPSAMPLERS:
            prior = priors[name].eval().requires_grad_(False)
            cfg = student_cfg(fam, name, prior.cfg)
            if fam == "gaussian":
                student = GaussianIAF.from_teacher(
                    prior, cfg, codebook=vqvae.codebook(prior.cfg.level)
                )
            else:
                student = CategoricalIAF.from_teacher(prior, cfg)
            n = recipe.distill_n_ctx or prior.cfg.n_ctx
            batch = {
                "codes": torch.randint(0, prior.cfg.l_bins, (b, n)),
                "upper": torch.randint(0, prior.cfg.l_bins, (b, n // prior.cfg.upsample_ratio)),
                "labels": _labels(prior.cfg, b, song_samples),
            }
            teacher = Teacher(prior, vqvae, None, Path("."), Path("."), Path("."), "", "")

            def loss(student: Any = student, batch: Any = batch, teacher: Any = teacher) -> Tensor:
                return distill_step(student, teacher, batch, student.cfg.loss, weights, gen).loss

            out[f"{fam}/{name}"] = _time_steps(student, loss, steps, 1e-4)
    assert set(out) == set(RUNS)
    return {k: v for k, v in out.items() if math.isfinite(v)}


__all__ = ["STEPS", "measure_step_seconds"]
