"""Whole teachers from the published Jukebox weights (``fastjukebox convert``).

:func:`convert_openai` reads OpenAI's ``vqvae.pth.tar`` + ``prior_level_{0,1,2}.pth.tar``
(configs from :mod:`teacher.presets`), :func:`convert_transformers` a transformers
``JukeboxModel`` folder (keys and configs mapped by :mod:`teacher.released.hf_keys`); both
check every tensor against the config before writing, stream the weights into sharded
safetensors (the files are read by :mod:`teacher.released.checkpoints`, see its memory notes)
and write the teacher folder atomically. Errors are :class:`ConvertError`, naming the file and
the tensor. Also here: the vocabularies (artist/genre ids) written beside the priors and
:func:`parse_size` for ``--max_shard_size``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from teacher.data.labels import UNKNOWN, VOCAB_FILE, Vocab
from teacher.data.text import LyricTokenizer
from teacher.io import WEIGHTS_FILE, atomic_dir, atomic_write_json, read_json, save_tensors_sharded
from teacher.levels import LEVEL_NAMES
from teacher.presets import MODELS, ModelConfigs, label_version, model_configs
from teacher.prior.config import PriorConfig, save_prior_config
from teacher.released.checkpoints import ConvertError, TensorSource
from teacher.released.hf_keys import (
    prior_key,
    transformers_configs,
    vqvae_from_transformers_state_dict,
)
from teacher.vqvae.config import VQVAEConfig

log = logging.getLogger(__name__)

#: default largest output file (memory does not depend on it: files are written streaming)
DEFAULT_MAX_SHARD_BYTES = 2 << 30
#: the teacher folder layout: part -> sub-folder (our level 0 = bottom)
TEACHER_PARTS = ("vqvae", "bottom", "middle", "top")
PART_LEVELS = {"bottom": 0, "middle": 1, "top": 2}
#: OpenAI's file names (``jukebox/hparams.py`` restore_*); prior_level_0 is the BOTTOM upsampler
OPENAI_FILES = {
    "vqvae.pth.tar": "vqvae",
    "prior_level_0.pth.tar": "bottom",
    "prior_level_1.pth.tar": "middle",
    "prior_level_2.pth.tar": "top",
}
MANIFEST_FILE = "teacher.json"


# ---------------------------------------------------------------------------------------------
# a conversion plan: per part, our tensor names -> (source, source name); checked, then written


@dataclass
class _Part:
    name: str  # a TEACHER_PARTS entry
    cfg: VQVAEConfig | PriorConfig
    tensors: dict[str, tuple[TensorSource, str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class PartSummary:
    """One written part: its folder, number of tensors, bytes and files."""

    folder: Path
    tensors: int
    bytes: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_openai` / :func:`convert_transformers` wrote.

    Attributes:
        out: the teacher folder (``vqvae/``, ``bottom/``, ``middle/``, ``top/``, ``teacher.json``).
        model: the released model it matches (a :data:`teacher.presets.MODELS` key) or ``None``.
        source: ``"openai"`` or ``"transformers"``.
        parts: per part, a :class:`PartSummary`.
        seconds: wall time.
    """

    out: Path
    model: str | None
    source: str
    parts: dict[str, PartSummary]
    seconds: float


def expected_tensors(
    cfg: VQVAEConfig | PriorConfig,
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of the checkpoint tensors of ``cfg``'s model (built on the meta
    device, so a 5B prior costs nothing). The VQ-VAE's EMA buffers are not expected."""
    from teacher.prior.model import Prior
    from teacher.vqvae import VQVAE

    with torch.device("meta"):
        if isinstance(cfg, VQVAEConfig):
            state = VQVAE(cfg).jukebox_state_dict()
        else:
            state = Prior(cfg).state_dict()
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def _problems(part: _Part, what: str) -> list[str]:
    """Everything wrong with ``part``'s tensors against its config, as messages naming the
    file and tensor (empty when it converts). Fills a tied output head that a format left out
    (transformers cannot save tied tensors as safetensors)."""
    expected = expected_tensors(part.cfg)
    tensors = part.tensors
    if isinstance(part.cfg, PriorConfig) and not part.cfg.merged_decoder:
        tied, emb = "prior.x_out.weight", "prior.x_emb.weight"
        if tied not in tensors and emb in tensors:
            tensors[tied] = tensors[emb]
    where = ", ".join(str(f) for f in part.files) or part.name

    def name(key: str) -> str:
        src, src_key = tensors[key]
        alias = "" if src_key == key else f" (ours {key!r})"
        return f"{src.path}: tensor {src_key!r}{alias}"

    # a shape mismatch says most about a wrong architecture, so it comes first
    out = []
    for key in sorted(set(expected) & set(tensors)):
        (shape, dtype), (src, src_key) = expected[key], tensors[key]
        got_shape, got_dtype = src.specs[src_key]
        if tuple(got_shape) != tuple(shape):
            out.append(f"{name(key)} has shape {list(got_shape)}, the {what} needs {list(shape)}")
        elif dtype.is_floating_point != got_dtype.is_floating_point:
            out.append(f"{name(key)} has dtype {got_dtype}, the {what} needs a {dtype}")
    for key in sorted(set(expected) - set(tensors)):
        out.append(f"{where}: tensor {key!r} of the {what} is missing")
    for key in sorted(set(tensors) - set(expected)):
        out.append(f"{name(key)} is not a tensor of the {what}")
    return out


def _raise_first(problems: list[str], hint: str = "") -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ConvertError(problems[0] + more + hint)


def _part_label(part: str, model: str | None) -> str:
    kind = "VQ-VAE" if part == "vqvae" else f"{part} prior"
    return f"{model} {kind}" if model else kind


# ---------------------------------------------------------------------------------------------
# vocabularies


def _vocab_version_of_file(path: str | os.PathLike) -> str | None:
    m = re.match(r"^(v[23])_", Path(path).name)
    return m.group(1) if m else None


def vocabs_from_id_lists(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], default_version: str
) -> dict[str, Vocab]:
    """Jukebox's ``name;id`` lists (``jukebox/data/ids/v{2,3}_{artist,genre}_ids.txt``) by
    version: a pair's version comes from its file names (``v2_``/``v3_``), else
    ``default_version``."""
    out: dict[str, Vocab] = {}
    for artists, genres in pairs:
        version = _vocab_version_of_file(artists) or _vocab_version_of_file(genres)
        version = version or default_version
        if version in out:
            raise ConvertError(f"two {version} vocabularies given ({artists}, {genres})")
        try:
            out[version] = Vocab.from_id_lists(str(artists), str(genres), version)
        except (OSError, ValueError) as err:
            raise ConvertError(f"cannot read the vocabulary {artists}, {genres}: {err}") from err
    return out


def vocabs_from_transformers(
    artists: Mapping[str, int], genres: Mapping[str, int]
) -> dict[str, Vocab]:
    """``artists.json``/``genres.json`` of transformers' ``JukeboxTokenizer`` by version.

    One file holds both sets: v2 names carry a ``.v2`` suffix (normalised as Jukebox's v2,
    ``alan_jackson.v2``), v3 names are lower case (``alan jackson``). A set is returned only
    when the files have names of it.
    """
    out: dict[str, Vocab] = {}
    for version in ("v2", "v3"):

        def pick(table: Mapping[str, int], version: str = version) -> dict[str, int]:
            if version == "v2":
                return {k[: -len(".v2")]: int(v) for k, v in table.items() if k.endswith(".v2")}
            return {k: int(v) for k, v in table.items() if not k.endswith(".v2")}

        a, g = pick(artists), pick(genres)
        if any(k != UNKNOWN for k in a) or any(k != UNKNOWN for k in g):
            out[version] = Vocab(version, {UNKNOWN: 0, **a}, {UNKNOWN: 0, **g})
    return out


def _check_vocab_fits(vocab: Vocab, cfg: PriorConfig, part: str, source: str) -> None:
    labels = cfg.labels
    if labels is None:
        return
    if vocab.n_artists > labels.artist_bins or vocab.n_genres > labels.genre_bins:
        raise ConvertError(
            f"{source}: the {vocab.version} vocabulary has artist ids up to "
            f"{vocab.n_artists - 1} and genre ids up to {vocab.n_genres - 1}, but the {part} "
            f"prior has {labels.artist_bins} artist and {labels.genre_bins} genre embeddings "
            "(a list of the other version?)"
        )


def _check_lyrics_json(path: Path, version: str) -> None:
    """transformers' ``lyrics.json`` (character -> id) must agree with our tokenizer."""
    table = read_json(path)
    tok = LyricTokenizer(version)
    if len(table) != tok.n_vocab:
        log.info(
            "%s has %d symbols, not %s's %d: not checked", path, len(table), version, tok.n_vocab
        )
        return
    theirs = {c: int(i) for c, i in table.items() if int(i) != 0}
    for char, idx in tok.vocab.items():
        if theirs.get(char) != idx:
            raise ConvertError(
                f"{path}: character {char!r} has id {theirs.get(char)}, our {version} lyric "
                f"tokenizer gives {idx}"
            )


# ---------------------------------------------------------------------------------------------
# configs


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, dict):
            out.update(_flat_dict(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _flat_dict(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat_dict(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_differences(ours: Any, released: Any) -> list[str]:
    """Fields where two configs of the same class differ: ``"name: a != b"``."""
    a, b = _flat(ours), _flat(released)
    return [
        f"{k}: {a.get(k)!r} != {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def infer_model(top_specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]], file: str) -> str:
    """The released model whose top prior has exactly these tensors (name -> shape, dtype)."""

    reasons = []
    for name in MODELS:
        src = TensorSource(Path(file), dict(top_specs))
        part = _Part("top", model_configs(name).top, {k: (src, k) for k in top_specs})
        problems = _problems(part, _part_label("top", name))
        if not problems:
            return name
        reasons.append(f"{name}: {problems[0]}")
    raise ConvertError(
        f"{file}: its tensors match no released top prior; pass --model. " + "; ".join(reasons)
    )


# ---------------------------------------------------------------------------------------------
# writing


def _write_part(
    part: _Part, folder: Path, dtype: torch.dtype | None, max_shard_bytes: int
) -> PartSummary:
    def out_dtype(src_dtype: torch.dtype) -> torch.dtype:
        return dtype if dtype is not None and src_dtype.is_floating_point else src_dtype

    def read(key: str) -> Tensor:
        src, src_key = part.tensors[key]
        t = src.read(src_key)
        return t.to(out_dtype(t.dtype))

    specs = {}
    for key in sorted(part.tensors):
        src, src_key = part.tensors[key]
        shape, src_dtype = src.specs[src_key]
        specs[key] = (tuple(shape), out_dtype(src_dtype))
    if isinstance(part.cfg, VQVAEConfig):
        from teacher.vqvae import VQVAE

        # small (~6 MB): load it for real so the EMA state is rebuilt from the codebooks
        model = VQVAE(part.cfg)
        model.load_jukebox_state_dict({k: read(k) for k in part.tensors})
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(folder)
        files: tuple[str, ...] = (WEIGHTS_FILE,)
    else:
        with atomic_dir(folder) as tmp:
            save_prior_config(part.cfg, str(tmp / "config.json"))
            files = tuple(save_tensors_sharded(tmp, specs, read, max_shard_bytes))
    for src in {id(s): s for s, _ in part.tensors.values()}.values():
        src.close()
    nbytes = sum(math.prod(shape) * dt.itemsize for shape, dt in specs.values())
    return PartSummary(folder, len(specs), int(nbytes), files)


def _write_teacher(
    out: Path,
    parts: list[_Part],
    *,
    model: str | None,
    source: str,
    inputs: list[str],
    vocabs: dict[str, Vocab],
    dtype: torch.dtype | None,
    max_shard_bytes: int,
    overwrite: bool,
    start: float,
) -> ConvertResult:
    """Write every part into a temporary sibling of ``out`` and rename it into place."""

    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ConvertError(f"{out} exists and is not empty: choose another --out or --overwrite")
    summaries: dict[str, PartSummary] = {}
    with atomic_dir(out) as tmp:
        for part in parts:
            log.info("writing %s (%d tensors)", part.name, len(part.tensors))
            summary = _write_part(part, tmp / part.name, dtype, max_shard_bytes)
            summaries[part.name] = dataclasses.replace(summary, folder=out / part.name)
            if isinstance(part.cfg, PriorConfig) and part.cfg.labels is not None:
                vocab = vocabs.get(label_version(part.cfg))
                if vocab is not None:
                    vocab.save(str(tmp / part.name / VOCAB_FILE))
        manifest = {
            "format": 1,
            "source": source,
            "model": model,
            "inputs": inputs,
            "dtype": "keep" if dtype is None else str(dtype).removeprefix("torch."),
            "parts": {p: {"folder": p, "level": PART_LEVELS.get(p)} for p in summaries},
        }
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    result = ConvertResult(out, model, source, summaries, time.perf_counter() - start)
    total = sum(s.bytes for s in summaries.values())
    log.info("wrote %s: %.2f GB in %.1f s", out, total / 1e9, result.seconds)
    return result


# ---------------------------------------------------------------------------------------------
# entry points


def _openai_files(paths: Sequence[str | os.PathLike]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in map(Path, paths):
        candidates = [p / n for n in OPENAI_FILES if (p / n).is_file()] if p.is_dir() else [p]
        if p.is_dir() and not candidates:
            raise ConvertError(f"{p}: holds none of {', '.join(OPENAI_FILES)}")
        for c in candidates:
            part = OPENAI_FILES.get(c.name)
            if part is None:
                raise ConvertError(
                    f"{c}: not an OpenAI Jukebox file name (expected {', '.join(OPENAI_FILES)}; "
                    "prior_level_0 is the bottom upsampler, prior_level_2 the top prior)"
                )
            if part in found:
                raise ConvertError(f"{c}: {c.name} given twice ({found[part]})")
            found[part] = c
    missing = [n for n, part in OPENAI_FILES.items() if part not in found]
    if missing:
        raise ConvertError(f"a teacher needs all four files; missing {', '.join(missing)}")
    return found


def convert_openai(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: str | ModelConfigs | None = None,
    vocab_files: Sequence[tuple[str | os.PathLike, str | os.PathLike]] = (),
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert OpenAI's released checkpoints into a teacher folder.

    Args:
        paths: ``vqvae.pth.tar`` and ``prior_level_{0,1,2}.pth.tar`` (files, or folders holding
            them; the 5b upsamplers/VQ-VAE serve all three models). Their state dict is under
            ``"model"``; they are read with ``weights_only=True`` (no code runs).
        out: the teacher folder to create: ``vqvae/``, ``bottom/``, ``middle/``, ``top/`` (each
            ``config.json`` + safetensors, priors sharded by ``max_shard_bytes``; priors with
            labels also get ``vocab.json`` when a vocabulary of their version is given) and
            ``teacher.json``.
        model: ``"1b_lyrics"``, ``"5b"`` or ``"5b_lyrics"``; ``None`` infers it from the top
            prior's tensor shapes; a :class:`~teacher.presets.ModelConfigs` gives the configs
            directly (other architectures, tests).
        vocab_files: ``(artist_ids, genre_ids)`` pairs of Jukebox's ``name;id`` lists; the
            version comes from a ``v2_``/``v3_`` file name prefix, else the top prior's.
        dtype: cast floating tensors (``None`` keeps the checkpoint's: OpenAI's 5b priors are
            partly fp16).
        overwrite: replace an existing non-empty ``out``.

    Every tensor is checked (names, shapes) against the preset before anything is written; a
    bad file raises :class:`ConvertError` naming the file and tensor. ``out`` appears complete
    or not at all.
    """

    start = time.perf_counter()
    out = Path(out)
    files = _openai_files(paths)
    sources = {part: TensorSource.open(path) for part, path in files.items()}
    try:
        if model is None:
            model = infer_model(sources["top"].specs, str(files["top"]))
            log.info("%s: the released %s top prior", files["top"], model)
        cfgs = model if isinstance(model, ModelConfigs) else model_configs(model)
        model = cfgs.name
        by_part = {"vqvae": cfgs.vqvae, **{p: cfgs.priors[lv] for p, lv in PART_LEVELS.items()}}
        parts = []
        for name in TEACHER_PARTS:
            src = sources[name]
            part = _Part(name, by_part[name], {k: (src, k) for k in src.specs}, [files[name]])
            problems = _problems(part, _part_label(name, model))
            hint = ""
            if problems and name == "top":
                try:
                    other = infer_model(src.specs, str(files[name]))
                    hint = f" (the file is the released {other} top prior: --model {other})"
                except ConvertError:
                    pass
            _raise_first(problems, hint)
            parts.append(part)
        vocabs = vocabs_from_id_lists(vocab_files, label_version(cfgs.top))
        _check_vocabs(vocabs, cfgs.priors, ", ".join(str(p) for pair in vocab_files for p in pair))
        if not vocabs:
            log.warning("no --vocab given: the priors get no vocab.json (artist/genre names)")
        return _write_teacher(
            out,
            parts,
            model=model,
            source="openai",
            inputs=[str(files[p]) for p in TEACHER_PARTS],
            vocabs=vocabs,
            dtype=dtype,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
            start=start,
        )
    finally:
        for src in sources.values():
            src.close()


def _check_vocabs(vocabs: dict[str, Vocab], priors: Sequence[PriorConfig], source: str) -> None:

    for cfg in priors:
        vocab = vocabs.get(label_version(cfg))
        if vocab is not None:
            _check_vocab_fits(vocab, cfg, LEVEL_NAMES[cfg.level], source)


def _transformers_sources(folder: Path) -> dict[str, TensorSource]:
    """transformers' weight files of ``folder`` -> key -> the source holding it."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map: dict[str, str] = read_json(index)["weight_map"]
            opened: dict[str, TensorSource] = {}
            out: dict[str, TensorSource] = {}
            for key, file in weight_map.items():
                if file not in opened:
                    opened[file] = TensorSource.open(folder / file)
                if key not in opened[file].specs:
                    raise ConvertError(
                        f"{folder / file}: tensor {key!r} listed in {index} is missing"
                    )
                out[key] = opened[file]
            return out
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            src = TensorSource.open(folder / single)
            return {k: src for k in src.specs}
    raise ConvertError(
        f"{folder}: no weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])"
    )


def _split_transformers_keys(
    keys: Mapping[str, TensorSource],
) -> dict[str, dict[str, tuple[TensorSource, str]]]:
    """transformers keys -> per part our (OpenAI) names -> (source, transformers key)."""
    per_part: dict[str, dict[str, str]] = {p: {} for p in TEACHER_PARTS}
    hf_part = {0: "top", 1: "middle", 2: "bottom"}  # the port counts priors from the top
    for key in keys:
        if key.startswith("vqvae."):
            per_part["vqvae"][key[len("vqvae.") :]] = key
            continue
        m = re.match(r"^priors\.(\d+)\.(.+)$", key)
        if m is None or int(m.group(1)) not in hf_part:
            raise ConvertError(f"{keys[key].path}: tensor {key!r} is not part of a Jukebox teacher")
        per_part[hf_part[int(m.group(1))]][m.group(2)] = key
    out: dict[str, dict[str, tuple[TensorSource, str]]] = {}
    for part, table in per_part.items():
        mapped: dict[str, tuple[TensorSource, str]] = {}
        if part == "vqvae":
            try:
                names = vqvae_from_transformers_state_dict(table)
            except KeyError:  # name the culprit: every key but proj_out maps on its own
                for short, key in table.items():
                    try:
                        vqvae_from_transformers_state_dict({short: key})
                    except KeyError as err:
                        raise ConvertError(
                            f"{keys[key].path}: tensor {key!r}: {err.args[0]}"
                        ) from err
                raise
        else:
            names = {}
            for short, key in table.items():
                try:
                    names[prior_key(short)] = key
                except KeyError as err:
                    raise ConvertError(f"{keys[key].path}: tensor {key!r}: {err.args[0]}") from err
        for ours, key in names.items():
            mapped[ours] = (keys[key], key)
        out[part] = mapped
    return out


def convert_transformers(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    model: str | ModelConfigs | None = None,
    vocab_files: Sequence[tuple[str | os.PathLike, str | os.PathLike]] = (),
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert a transformers ``JukeboxModel`` folder (``openai/jukebox-1b-lyrics`` layout)
    into a teacher folder (see :func:`convert_openai` for ``out`` and the other arguments).

    The folder holds ``config.json``, the weights (``pytorch_model*.bin`` and/or
    ``*.safetensors``, one file or shards with an index json) and, optionally, the tokenizer
    files ``artists.json``/``genres.json`` (one table for v2 and v3, see
    :func:`vocabs_from_transformers`) and ``lyrics.json`` (checked against our tokenizer).
    The configs come from ``config.json`` as the port builds the model; with ``model`` the
    released hyperparameters are used instead and every difference is logged (the port's
    ``JukeboxModel`` shares e.g. the duration range across priors).
    """

    start = time.perf_counter()
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a folder (a transformers model is a folder)")
    vqvae_cfg, prior_cfgs = transformers_configs(folder)
    if model is not None:
        released = model if isinstance(model, ModelConfigs) else model_configs(model)
        model = released.name
        for ours, rel, what in (
            (vqvae_cfg, released.vqvae, "vqvae"),
            *((p, r, LEVEL_NAMES[p.level]) for p, r in zip(prior_cfgs, released.priors)),
        ):
            diffs = config_differences(ours, rel)
            if diffs:
                shown = "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
                log.warning(
                    "%s: the %s config differs from the released %s in %d fields (the released "
                    "values are used): %s",
                    folder,
                    what,
                    model,
                    len(diffs),
                    shown,
                )
        vqvae_cfg, prior_cfgs = released.vqvae, list(released.priors)
    sources = _transformers_sources(folder)
    try:
        tables = _split_transformers_keys(sources)
        by_part = {"vqvae": vqvae_cfg, **{p: prior_cfgs[lv] for p, lv in PART_LEVELS.items()}}
        parts = []
        for name in TEACHER_PARTS:
            part = _Part(name, by_part[name], tables[name], [folder])
            _raise_first(_problems(part, _part_label(name, model)))
            parts.append(part)
        vocabs: dict[str, Vocab] = {}
        if (folder / "artists.json").is_file() and (folder / "genres.json").is_file():
            vocabs = vocabs_from_transformers(
                read_json(folder / "artists.json"), read_json(folder / "genres.json")
            )
            _check_vocabs(vocabs, prior_cfgs, f"{folder}/artists.json, genres.json")
        if vocab_files:  # --vocab replaces the tokenizer's tables of the same version
            given = vocabs_from_id_lists(vocab_files, _top_version(prior_cfgs))
            _check_vocabs(given, prior_cfgs, ", ".join(str(p) for v in vocab_files for p in v))
            vocabs.update(given)
        if (folder / "lyrics.json").is_file() and prior_cfgs[-1].lyrics is not None:
            _check_lyrics_json(folder / "lyrics.json", _top_version(prior_cfgs))
        return _write_teacher(
            out,
            parts,
            model=model,
            source="transformers",
            inputs=[str(folder)],
            vocabs=vocabs,
            dtype=dtype,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
            start=start,
        )
    finally:
        for src in {id(s): s for s in sources.values()}.values():
            src.close()


def _top_version(priors: Sequence[PriorConfig]) -> str:

    return label_version(priors[-1])


def parse_size(text: str) -> int:
    """Bytes of ``"500MB"``, ``"2GB"``, ``"1GiB"`` or a plain number (:class:`ConvertError`
    otherwise)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", text, flags=re.IGNORECASE)
    if m is None:
        raise ConvertError(f"not a size: {text!r} (e.g. 500MB, 2GB)")
    unit = (m.group(2) or "").upper().rstrip("B")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    scale.update({"KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40})
    if unit not in scale:
        raise ConvertError(f"not a size: {text!r} (e.g. 500MB, 2GB)")
    return int(float(m.group(1)) * scale[unit])
