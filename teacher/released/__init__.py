"""The published Jukebox weights: converters from OpenAI's and transformers' checkpoints into
teacher folders (:mod:`~teacher.released.convert`) and what the released models need on a GPU
(:mod:`~teacher.released.memory`). Their configs are in :mod:`teacher.presets`."""
