"""Data: audio IO (:mod:`~teacher.data.audio`), folders of songs with metadata
(:mod:`~teacher.data.dataset`), Jukebox label vectors (:mod:`~teacher.data.labels`), the lyric
tokenizer (:mod:`~teacher.data.text`), the code cache priors train on
(:mod:`~teacher.data.codes`) and the built-in offline datasets (:mod:`~teacher.data.synth`,
:mod:`~teacher.data.chorales`)."""
