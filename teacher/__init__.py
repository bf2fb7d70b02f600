"""The teacher: the complete autoregressive Jukebox, one sub-package per concern.

* :mod:`teacher.data` — audio IO, datasets and metadata, labels and lyrics, the code cache, the
  built-in datasets (synth songs, Bach chorales);
* :mod:`teacher.vqvae` — the 3-level VQ-VAE (blocks, quantiser, losses, model);
* :mod:`teacher.prior` — the priors (attention kinds, transformer, conditioners, model);
* :mod:`teacher.generate` — exact generation: the KV-cached sampler, windows, ``Jukebox``;
* :mod:`teacher.train` — the one training loop and the VQ-VAE and prior trainers;
* :mod:`teacher.released` — the published weights: converters and GPU memory tables;
* :mod:`teacher.presets` — every model preset; :mod:`teacher.levels` — level names;
  :mod:`teacher.config`, :mod:`teacher.io`, :mod:`teacher.console` — configs, safe IO, logging.
"""
