"""Distillation of the parallel students from the teacher upsamplers (DESIGN.md §5).

:mod:`distill.losses` holds the loss terms (reverse KL per token, intermediate-stage KL, the
Gaussian IAF's Monte-Carlo option, MR-STFT and power losses, warm-up cross-entropy) and their
named-weight combination.
"""
