"""Training the teacher: one loop (:mod:`~teacher.train.loop`, shared with distillation) and the
trainers that supply its model, batches and loss step — the VQ-VAE
(:mod:`~teacher.train.vqvae`) and the priors (:mod:`~teacher.train.prior`); the command line is
:mod:`~teacher.train.cli` (``python -m teacher.train`` / ``accelerate launch -m teacher.train``).
"""

from teacher.train.loop import TrainConfig, run_training
from teacher.train.prior import train_prior
from teacher.train.vqvae import train_vqvae

__all__ = ["TrainConfig", "run_training", "train_prior", "train_vqvae"]
