"""Jukebox autoregressive priors (paper §4, ``jukebox/prior``, ``jukebox/transformer``).

``attention`` holds the factorized attention kinds and their preallocated cache layouts,
``transformer`` the pre-LN block stack with OpenAI's checkpoint names and the ``KVCache``;
the assembled prior (embeddings, conditioning, loss, sampling) is built on top of them.
"""
