"""Distillation of the parallel students from the teacher upsamplers (DESIGN.md §5).

:mod:`distill.losses` holds the loss terms (reverse KL per token, intermediate-stage KL, the
Gaussian IAF's Monte-Carlo option, MR-STFT and power losses, warm-up cross-entropy) and their
named-weight combination; :mod:`distill.train` the distillation trainer
(``accelerate launch -m distill.train``); :mod:`distill.pipeline` samples a teacher with optional
students in exact, accelerated, hybrid or speculative mode, the last in
:mod:`distill.speculative`.
"""
