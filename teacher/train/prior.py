"""Training one Jukebox prior (``train prior``): top prior or upsampler, on a frozen VQ-VAE's codes.

Codes come from the code cache by default (``--codes cache``; :mod:`teacher.data.codes`), which
``benchmarks/bench_codes.py`` measured faster than encoding every crop on the fly. The loop is
:func:`teacher.train.loop.run_training`. The exported ``OUTPUT_DIR/model/`` holds the prior
(``config.json`` + ``model.safetensors``), ``vocab.json`` (artist/genre names -> ids) and
``vqvae.json`` (path and fingerprint of the VQ-VAE whose codes it models).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from teacher.config import ConfigError, config_to_dict, read_json_object
from teacher.io import atomic_write_json, model_fingerprint, read_json, resolve_resume
from teacher.levels import level_name
from teacher.train.loop import Job, StepOutput, TrainConfig, make_accelerator, run_training

log = logging.getLogger(__name__)

#: the file in a prior's model folder naming the VQ-VAE whose codes it models
VQVAE_LINK_FILE = "vqvae.json"


@dataclass(frozen=True)
class InitPrior:
    """A prior model folder a run starts from (``--init_from``: fine-tuning), checked by
    :func:`read_init_prior`.

    Attributes:
        folder: the model folder (``config.json`` + safetensors, maybe ``vocab.json`` and
            ``vqvae.json``): a converted released teacher's ``top/``, ``middle/`` or ``bottom/``,
            or one of our runs' ``model/``.
        cfg: its config: the architecture of the run.
        version: ``"v2"`` or ``"v3"``: the lyric tokenizer and the artist/genre normalisation of
            the model (from its lyric vocabulary, else its ``vocab.json``, else
            :func:`teacher.presets.label_version`).
        vocab: its ``vocab.json``, ``None`` when it has none (a teacher converted without
            ``--vocab``: every name of the data is then new).
    """

    folder: Path
    cfg: Any
    version: str
    vocab: Any


def _codes_vqvae(folder: Path) -> tuple[str, str] | None:
    """``(path, fingerprint)`` of the VQ-VAE whose codes the prior in ``folder`` models: its
    ``vqvae.json``, else the ``vqvae/`` beside it in a teacher folder (a converted released
    teacher has no ``vqvae.json``); ``None`` when neither says."""
    from teacher.io import ModelFolderError

    link = folder / VQVAE_LINK_FILE
    if link.is_file():
        data = read_json_object(link, ModelFolderError)
        if isinstance(data.get("fingerprint"), str):
            return str(data.get("path")), data["fingerprint"]
        return None
    sibling = folder.parent / "vqvae"
    if (sibling / "config.json").is_file():
        return str(sibling), model_fingerprint(sibling)
    return None


def read_init_prior(
    folder: str | os.PathLike, level: int, vqvae_dir: str | os.PathLike, vq_cfg: Any
) -> InitPrior:
    """Check the prior model folder ``folder`` can start a level-``level`` run on the codes of
    the VQ-VAE at ``vqvae_dir`` (config ``vq_cfg``) and read its config, version and vocabulary.

    Each problem is one error naming the folder or file: no folder, a damaged or foreign
    ``config.json`` (:class:`~teacher.io.ModelFolderError`); a prior of another level; a prior
    of another VQ-VAE geometry, or one whose ``vqvae.json`` (or sibling ``vqvae/`` in a teacher
    folder) names another VQ-VAE than ``vqvae_dir`` (both named); a ``vocab.json`` that is
    malformed, of the other version than the prior's lyrics, or with ids beyond the embedding
    tables (:class:`ConfigError`). The weights are read later, by :func:`train_prior`.
    """
    from teacher.data.labels import VOCAB_FILE, Vocab
    from teacher.data.text import lyric_version
    from teacher.io import ModelFolderError, read_model_config
    from teacher.presets import label_version
    from teacher.prior.config import PriorConfig, check_against_vqvae

    folder = Path(folder)
    cfg = read_model_config(folder, PriorConfig, "prior")
    levels = len(vq_cfg.downs_t)
    if cfg.level != level:
        raise ConfigError(
            f"--init_from {folder} holds the {level_name(cfg.level, cfg.levels)} prior (level "
            f"{cfg.level}); this run trains the {level_name(level, levels)} prior (level {level})"
        )
    try:
        check_against_vqvae(cfg, vq_cfg)
    except ConfigError as err:
        raise ConfigError(
            f"--init_from {folder} does not fit the VQ-VAE {vqvae_dir}: {err}"
        ) from None
    linked = _codes_vqvae(folder)
    if linked is None:
        log.warning(
            "%s does not say which VQ-VAE made its codes (no %s, no teacher vqvae/ beside it): "
            "cannot check it belongs to %s",
            folder,
            VQVAE_LINK_FILE,
            vqvae_dir,
        )
    elif linked[1] != model_fingerprint(vqvae_dir):
        raise ConfigError(
            f"--init_from {folder} models the codes of the VQ-VAE {linked[0]} (fingerprint "
            f"{linked[1]}), not of --vqvae {vqvae_dir} (fingerprint "
            f"{model_fingerprint(vqvae_dir)}): train on the VQ-VAE that made its codes"
        )
    vocab_file = folder / VOCAB_FILE
    vocab = Vocab.load(str(vocab_file)) if vocab_file.is_file() else None
    if cfg.lyrics is not None:
        try:
            version = lyric_version(cfg.lyrics.n_vocab)
        except ConfigError as err:
            raise ModelFolderError(f"{folder / 'config.json'}: {err}") from None
        if vocab is not None and vocab.version != version:
            raise ConfigError(
                f"{vocab_file} is a {vocab.version} vocabulary but the prior in {folder} reads "
                f"{version} lyrics ({cfg.lyrics.n_vocab} symbols): the vocabulary of another model?"
            )
    else:
        version = vocab.version if vocab is not None else label_version(cfg)
    if vocab is not None and cfg.labels is not None:
        vocab.check_rows(cfg.labels.artist_bins, cfg.labels.genre_bins, str(vocab_file))
    if vocab is None and cfg.labels is not None:
        log.warning(
            "%s has no %s: its artist/genre names are unknown, so every name of your data gets "
            "a new id",
            folder,
            VOCAB_FILE,
        )
    return InitPrior(folder, cfg, version, vocab)


def _fit_labels(cfg: Any, vocab: Any) -> Any:
    """``cfg`` with artist/genre bins from the data's vocabulary (Jukebox ``y_bins``)."""
    if cfg.labels is None:
        return cfg
    labels = dataclasses.replace(cfg.labels, artist_bins=vocab.n_artists, genre_bins=vocab.n_genres)
    return dataclasses.replace(cfg, labels=labels).validate()


def longest_file(data_cfg: Any) -> int:
    """Length in samples (model rate) of the longest readable audio file; headers only."""
    from teacher.data.audio import AudioError, probe, resampled_length
    from teacher.data.dataset import DataError, find_audio_files

    root = os.path.abspath(data_cfg.root)
    if not os.path.isdir(root):
        raise DataError(f"audio folder {data_cfg.root!r} does not exist or is not a folder")
    longest = 0
    for path in find_audio_files(root, data_cfg.extensions):
        try:
            info = probe(path)
        except (AudioError, OSError):
            continue  # the scan skips it with a warning
        longest = max(
            longest, resampled_length(info.frames, info.sample_rate, data_cfg.sample_rate)
        )
    return longest


def window_data(
    data_cfg: Any,
    sample_rate: int,
    level: int,
    n_ctx: int,
    hop_length: int,
    label_cfg: Any,
    hint: str = "lower --n_ctx",
) -> Any:
    """``data_cfg`` for windows of ``n_ctx`` codes of ``level`` (``n_ctx · hop_length`` samples
    at ``sample_rate``, labels by ``label_cfg``); a :class:`ConfigError` ending in ``hint``
    when the window is longer than every audio file (headers only: nothing is decoded)."""
    window = n_ctx * hop_length
    data_cfg = dataclasses.replace(
        data_cfg, sample_rate=sample_rate, sample_length=window, labels=label_cfg
    ).validate()
    longest = longest_file(data_cfg)
    if longest < window:
        raise ConfigError(
            f"the level-{level} window n_ctx·hop = {n_ctx}·{hop_length} = {window} "
            f"samples ({window / sample_rate:.2f} s) is longer than every audio file "
            f"(longest {longest / sample_rate:.2f} s): {hint}"
        )
    return data_cfg


def _check_timing(cfg: Any, lengths: Sequence[int]) -> None:
    """Every file's length must be inside the top prior's timing range (Jukebox filters its
    data by ``min_duration``/``max_duration`` for the same reason)."""
    lab = cfg.labels
    if lab is None or not lab.include_timing or not lengths:
        return
    lo, hi = lab.min_duration * cfg.sample_rate, lab.max_duration * cfg.sample_rate
    bad = [n for n in lengths if not lo <= n < hi]
    if bad:
        raise ConfigError(
            f"{len(bad)} files are outside the timing range [{lab.min_duration}, "
            f"{lab.max_duration}) s of the prior's labels (e.g. {bad[0] / cfg.sample_rate:.2f} s)"
        )


class _TiedOutputFilter(logging.Filter):
    """Drop accelerate's warning that the tied output head (``prior.x_out.weight``, the same
    tensor as ``prior.x_emb.weight`` unless ``merged_decoder``) was left out of a safetensors
    checkpoint: it is restored through the tie on load (the resume test checks the weights)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("Removed shared tensor" in msg and "{'prior.x_out.weight'}" in msg)


def _quiet_tied_weight_warning() -> None:
    target = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedOutputFilter) for f in target.filters):
        target.addFilter(_TiedOutputFilter())


def train_prior(
    prior_cfg: Any,
    vqvae_dir: str | os.PathLike,
    data_cfg: Any,
    cfg: TrainConfig,
    codes_mode: str = "cache",
    code_cache_dir: str | os.PathLike | None = None,
    init_from: str | os.PathLike | InitPrior | None = None,
) -> Path:
    """Train one Jukebox prior on the codes of the frozen VQ-VAE at ``vqvae_dir``.

    ``codes_mode``: ``"cache"`` (the default, the faster one on CPU: ``benchmarks/
    bench_codes.py``) encodes every file once into a code cache (:func:`teacher.data.codes.
    build_code_cache`; the main process builds it first, the other ranks then open it) and
    trains on :class:`teacher.data.codes.CodeDataset` windows; ``"on_the_fly"`` crops
    ``n_ctx · hop`` samples with :class:`teacher.data.dataset.AudioDataset` and encodes them
    inside every step. Artist/genre bins are set from the data's vocabulary on a fresh run; a
    resumed run takes the config and the vocabulary from its checkpoint. The progress bar shows
    the loss terms in bits per token. Returns the exported model folder.

    ``init_from`` (fine-tuning): start from the weights of this prior model folder (checked by
    :func:`read_init_prior`, or the :class:`InitPrior` it returned for ``vqvae_dir``;
    ``prior_cfg`` must be its config: ``read_init_prior(...).cfg``).
    Lyrics and names are read with the model's tokenizer version; artists and genres of the data
    that its ``vocab.json`` lacks get new ids after its embedding rows (:meth:`Vocab.grow`,
    :meth:`Prior.grow_label_bins`: old rows bit-identical, new rows copies of the unknown row),
    reported on the console and in ``OUTPUT_DIR/vocab_added.json``; the exported ``vocab.json``
    and config carry them. A resumed run continues from its checkpoint and does not read
    ``init_from`` again.
    """
    from accelerate.utils import set_seed

    from teacher.data.codes import CODES_MODES, CodeDataset, build_code_cache
    from teacher.data.dataset import AudioDataset, scan_audio
    from teacher.data.labels import VOCAB_ADDED_FILE, LabelConfig, Vocab
    from teacher.prior.config import check_against_vqvae, load_prior_config
    from teacher.prior.model import Prior
    from teacher.vqvae import VQVAE

    # -- everything that can be wrong is checked before any work -----------------------------
    cfg.validate()
    prior_cfg.validate()
    data_cfg.validate()
    if codes_mode not in CODES_MODES:
        raise ConfigError(f"--codes must be one of {CODES_MODES}, got {codes_mode!r}")
    vq_path = Path(vqvae_dir)
    # the whole VQ-VAE (config and weights): a damaged folder fails before any data work
    vqvae = VQVAE.from_pretrained(vq_path).eval().requires_grad_(False)
    vq_cfg = vqvae.cfg
    init = None
    if init_from is not None:
        init = init_from
        if not isinstance(init, InitPrior):
            init = read_init_prior(init_from, prior_cfg.level, vq_path, vq_cfg)
        if prior_cfg != init.cfg:
            raise ConfigError(
                f"the prior config given is not the one of --init_from {init.folder}: "
                "fine-tuning keeps the folder's architecture (pass read_init_prior(...).cfg)"
            )
        if data_cfg.labels.lyric_version != init.version:
            log.info(
                "lyrics and names are read as %s, the version of %s", init.version, init.folder
            )
        data_cfg = dataclasses.replace(
            data_cfg, labels=dataclasses.replace(data_cfg.labels, lyric_version=init.version)
        )
    out_dir = Path(cfg.output_dir)
    resume = resolve_resume(cfg.resume_from_checkpoint, out_dir / "checkpoints")
    model = None  # the prior to train; built from prior_cfg unless init_from gives it
    if init is not None:
        if resume is not None:
            log.info("resuming from %s: --init_from %s is not read again", resume, init.folder)
        else:  # safetensors only; damaged weights fail here, before any data work
            model = Prior.from_pretrained(init.folder)
    if resume is not None:
        prior_cfg = load_prior_config(str(resume / "model" / "config.json"))
        link = resume / "model" / VQVAE_LINK_FILE
        if link.is_file() and read_json(link)["fingerprint"] != model_fingerprint(vq_path):
            raise ConfigError(
                f"{resume} was trained on the codes of another VQ-VAE "
                f"({read_json(link)['path']}); --vqvae {vq_path} has different weights"
            )
    check_against_vqvae(prior_cfg, vq_cfg)
    level, n_ctx = prior_cfg.level, prior_cfg.n_ctx
    window = prior_cfg.sample_length  # n_ctx · hop samples
    label_cfg = LabelConfig(
        max_genres=prior_cfg.labels.max_genres if prior_cfg.labels is not None else 1,
        n_tokens=prior_cfg.n_tokens,
        lyric_version=data_cfg.labels.lyric_version,
    ).validate()
    if prior_cfg.lyrics is not None and prior_cfg.lyrics.n_vocab != label_cfg.n_vocab:
        raise ConfigError(
            f"lyrics n_vocab {prior_cfg.lyrics.n_vocab} != {label_cfg.n_vocab} of lyric "
            f"version {label_cfg.lyric_version}"
        )
    hint = "lower --n_ctx"
    if init is not None:
        hint = f"the prior of --init_from {init.folder} needs longer files"
    data_cfg = window_data(
        data_cfg, vq_cfg.sample_rate, level, n_ctx, prior_cfg.hop_length, label_cfg, hint
    )

    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    set_seed(cfg.seed, device_specific=False)
    _quiet_tied_weight_warning()

    # -- data: the main process builds the code cache (or scans) first, the others reuse it --
    vocab_saved = Vocab.load(str(resume / "model")) if resume is not None else None
    with accelerator.main_process_first():
        if codes_mode == "cache":
            cache = build_code_cache(vq_path, data_cfg, code_cache_dir, progress=main)
        else:
            scan = scan_audio(data_cfg)  # raises DataError when nothing is usable
    data_vocab = cache.vocab if codes_mode == "cache" else scan.vocab
    growth = None  # what init_from's vocabulary gained
    if vocab_saved is not None:
        vocab = vocab_saved
    elif init is not None and prior_cfg.labels is not None:
        lab = prior_cfg.labels
        base = init.vocab or Vocab(version=init.version)
        vocab, growth = base.grow(data_vocab, lab.artist_bins, lab.genre_bins)
        model.grow_label_bins(growth.artist_rows[1], growth.genre_rows[1])
        prior_cfg = model.cfg
    elif init is not None:
        vocab = init.vocab or data_vocab
    else:
        vocab = data_vocab
    if codes_mode == "cache":
        dataset = CodeDataset(cache, level, n_ctx, label_cfg, seed=data_cfg.seed, vocab=vocab)
        lengths = [cache.files[i].length for i in dataset.file_ids]
        text, no_meta, n_files = dataset.text_stats, dataset.no_metadata, len(lengths)
        source = f"code cache {cache.root}"
    else:
        dataset = AudioDataset(data_cfg, scan=scan, vocab=vocab)
        lengths = [f.length for f in scan.files]
        text, no_meta, n_files = scan.text, scan.no_metadata, len(lengths)
        source = f"on the fly from {scan.root}"
        if no_meta:
            log.warning(
                "%d of %d files have no metadata row: artist and genre id 0 (unknown), no lyrics",
                no_meta,
                n_files,
            )
        vqvae = vqvae.to(accelerator.device)
    if resume is None and init is None:
        prior_cfg = _fit_labels(prior_cfg, vocab)
    _check_timing(prior_cfg, lengths)
    summary = {
        "codes": codes_mode,
        "source": source,
        "level": level,
        "n_ctx": n_ctx,
        "window_samples": window,
        "files": n_files,
        "items_per_epoch": len(dataset),
        "no_metadata": no_meta,
        "artists": len(vocab.artists) - 1,
        "genres": len(vocab.genres) - 1,
        "lyric_chars": text.chars,
        "lyric_transliterated": text.mapped,
        "lyric_dropped": text.dropped,
        "lyric_dropped_chars": dict(text.dropped_chars.most_common(20)),
    }
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "prior level %d (n_ctx %d = %.2f s), codes %s: %d files, %d windows/epoch; "
            "%d without metadata; %s",
            level,
            n_ctx,
            window / data_cfg.sample_rate,
            source,
            n_files,
            len(dataset),
            no_meta,
            text.summary(),
        )
        if growth is not None:
            log.info("%s: %s", init.folder, growth.summary())
            atomic_write_json(
                out_dir / VOCAB_ADDED_FILE, {"init_from": str(init.folder), **growth.to_dict()}
            )
        atomic_write_json(
            out_dir / "train_args.json",
            {
                "train": config_to_dict(cfg),
                "data": config_to_dict(data_cfg),
                "model": config_to_dict(prior_cfg),
                "vqvae": str(vq_path.resolve()),
                "init_from": str(init.folder.resolve()) if init is not None else None,
                "codes": codes_mode,
                "code_cache_dir": str(cache.root) if codes_mode == "cache" else None,
                "summary": summary,
            },
        )

    # -- model and loss step; the loop is teacher.train.loop ----------------------------------
    vq_link = {
        "path": str(vq_path.resolve()),
        "fingerprint": model_fingerprint(vq_path),
        "level": level,
        "hop_length": prior_cfg.hop_length,
        "codes": codes_mode,
    }

    def export(prior: Any, folder: Path) -> None:
        prior.save_pretrained(folder)
        vocab.save(str(folder / "vocab.json"))
        atomic_write_json(folder / VQVAE_LINK_FILE, vq_link)

    def batch_inputs(batch: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(codes [B, T], labels [B, L] | None, upper [B, T_up] | None) of a batch."""
        labels = batch["labels"] if prior_cfg.labels is not None else None
        if codes_mode == "cache":
            return batch["codes"], labels, batch.get("upper")
        top = min(level + 2, vq_cfg.levels)
        with torch.no_grad():
            zs = vqvae.encode(batch["audio"], start_level=level, end_level=top)
        return zs[0], labels, zs[1] if prior_cfg.is_upsampler else None

    term_names: list[str] = []  # the loss terms of this prior (shown by the progress bar)

    def step(model: Any, batch: dict[str, Any], pos: Any) -> StepOutput:
        codes, labels, upper = batch_inputs(batch)
        out = model(codes, labels=labels, upper=upper)
        term_names[:] = list(out.terms)
        return StepOutput(out.loss, {**out.terms, **out.metrics})

    def describe(r: Mapping[str, float]) -> str:
        terms = " ".join(f"{k} {r[k]:.3f}" for k in term_names)
        return f"loss {r['loss']:.3f} bits/token ({terms}) acc {r['accuracy']:.3f}"

    job = Job(
        name=f"prior {level_name(level, vq_cfg.levels)}",
        project="prior",
        model=model if model is not None else Prior(prior_cfg),
        dataset=dataset,
        step=step,
        export=export,
        describe=describe,
        tracker_config={"lr": cfg.learning_rate, "level": level},
    )
    return run_training(accelerator, cfg, job, resume)


__all__ = [
    "VQVAE_LINK_FILE",
    "InitPrior",
    "longest_file",
    "read_init_prior",
    "train_prior",
    "window_data",
]
