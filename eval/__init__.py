"""Evaluation of fastjukebox: offline metrics and speed measurements (DESIGN §6).

* :mod:`eval.metrics` — audio (spectral convergence in dB, multi-resolution STFT, mel L1,
  SI-SDR), codes and distributions (teacher NLL in bits/token, the student's KL and entropy per
  token, codebook usage and perplexity, token accuracy) and a Fréchet distance on the teacher
  VQ-VAE's encoder features (FD-VQ; no download, not FAD).
* :mod:`eval.speed` — per-stage wall time, real-time factor, tokens/s and peak memory; the
  Amdahl speedup and its bound; machine and config-hash headers for reports.

The package is named ``eval``: import it as ``import eval.metrics`` (modules inside never use
the builtin ``eval``).
"""
