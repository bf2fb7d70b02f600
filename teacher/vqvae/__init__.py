"""The Jukebox hierarchical VQ-VAE (paper §3): reusable blocks (:mod:`~teacher.vqvae.modules`),
the EMA quantiser (:mod:`~teacher.vqvae.quantizer`), the losses (:mod:`~teacher.vqvae.losses`),
the config (:mod:`~teacher.vqvae.config`) and the model (:mod:`~teacher.vqvae.model`)."""

from teacher.vqvae.config import Bandwidth, VQVAEConfig
from teacher.vqvae.model import VQVAE

__all__ = ["VQVAE", "Bandwidth", "VQVAEConfig"]
