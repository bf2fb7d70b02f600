"""Fine-tuning a converted teacher (``--init_from``): a synthetic checkpoint in OpenAI's layout
(``torch.save({"model": state_dict})`` per ``vqvae.pth.tar`` / ``prior_level_{0,1,2}.pth.tar``
with Jukebox's ``name;id`` vocabulary lists) is converted by ``convert_openai`` and fine-tuned on
synth songs by a new artist and a new genre: the loss falls, the new names get new ids and
rows (old rows bit-identical), the new artist samples, resume continues from the checkpoint, the
converted teacher distils; then the VQ-VAE and every bad input (one error each)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from teacher.config import ConfigError
from teacher.data.labels import VOCAB_ADDED_FILE, Vocab
from teacher.io import STATE_FILE, ModelFolderError, model_fingerprint, read_json
from teacher.presets import ModelConfigs, tiny_top_prior, tiny_upsampler, tiny_vqvae
from teacher.prior.model import Prior
from teacher.released.convert import convert_openai
from teacher.train.cli import build_parser, main, prior_configs_from_args, run
from teacher.vqvae import VQVAE

SR = 8000
ARTIST_ROWS = "y_emb.artist_emb.emb.weight"
GENRE_ROWS = "y_emb.bow_genre_emb.emb.weight"
# the "released" vocabularies: ids 1-4 (artist row 5 has no name, as in Jukebox's lists)
V3_ARTISTS = {"moss choir": 1, "aster vale": 2, "cobalt strings": 3, "ember brass": 4}
V3_GENRES = {"lullaby": 1, "ballad": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A converted teacher folder (``vqvae/``, ``bottom/``, ``middle/``, ``top/``) from random
    tiny models saved in OpenAI's layout with v3 (top: 1b-style lyrics) and v2 (upsamplers)
    vocabulary lists."""
    base = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    vq = VQVAE(tiny_vqvae(SR))
    vq.train()
    vq(0.3 * torch.randn(4, 1, vq.cfg.sample_length))  # codebooks from data
    priors = (tiny_upsampler(0), tiny_upsampler(1), tiny_top_prior("single"))
    ckpt = base / "openai"
    ckpt.mkdir()
    torch.save({"model": vq.jukebox_state_dict()}, ckpt / "vqvae.pth.tar")
    for level, cfg in enumerate(priors):
        torch.save({"model": Prior(cfg).state_dict()}, ckpt / f"prior_level_{level}.pth.tar")
    lists = []
    for version in ("v3", "v2"):
        a = {k if version == "v3" else k.replace(" ", "_"): i for k, i in V3_ARTISTS.items()}
        for kind, table in (("artist", a), ("genre", V3_GENRES)):
            path = base / f"{version}_{kind}_ids.txt"
            path.write_text("".join(f"{n};{i}\n" for n, i in table.items()))
        lists.append((base / f"{version}_artist_ids.txt", base / f"{version}_genre_ids.txt"))
    cfgs = ModelConfigs("tiny", vq.cfg, priors)
    out = base / "teacher"
    convert_openai([ckpt], out, model=cfgs, vocab_files=lists)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four 3 s synth songs: one artist and one genre of the released vocabulary (Moss Choir,
    lullaby) and one of each it lacks (Pixel Kid, march)."""
    from teacher.data.synth import SynthConfig, write_synth_dataset

    out = tmp_path_factory.mktemp("songs") / "data"
    cfg = SynthConfig(
        n_songs=4,
        seconds=3.0,
        sample_rate=SR,
        seed=0,
        artists=("Moss Choir", "Pixel Kid"),
        genres=("lullaby", "march"),
    )
    write_synth_dataset(out, cfg, progress=False)
    return out


def _prior_args(released: Path, data: Path, out: Path, *extra: str, level: str = "top") -> list:
    cache = out.parent / "caches"
    return [
        "prior",
        "--level",
        level,
        "--vqvae",
        str(released / "vqvae"),
        "--init_from",
        str(released / level),
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
        "--cache_dir",
        str(cache / "decoded"),
        "--code_cache_dir",
        str(cache / "codes"),
        "--train_batch_size",
        "4",
        "--lr_warmup_steps",
        "0",
        "--learning_rate",
        "3e-3",
        "--logging_steps",
        "1",
        *extra,
    ]


def _train(args: list[str]) -> Path:
    return run(build_parser().parse_args(args))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _rows(folder: Path, key: str) -> torch.Tensor:
    return Prior.from_pretrained(folder).state_dict()[key]


@pytest.fixture(scope="module")
def finetuned(released, data, tmp_path_factory) -> Path:
    """The top prior of ``released`` fine-tuned 16 steps on ``data``, checkpoints at 8 and 16."""
    out = tmp_path_factory.mktemp("finetune") / "top"
    extra = ("--max_train_steps", "16", "--checkpointing_steps", "8")
    _train(_prior_args(released, data, out, *extra))
    return out


# ---------------------------------------------------------------------------------------------


def test_new_names_get_new_ids_and_old_rows_stay(released, finetuned, caplog):
    model = finetuned / "model"
    # the loss falls from the converted weights
    recs = _records(finetuned)
    assert [r["step"] for r in recs] == list(range(1, 17))
    first = np.mean([r["loss"] for r in recs[:3]])
    last = np.mean([r["loss"] for r in recs[-3:]])
    assert last < first - 0.5, (first, last)

    # the architecture is the converted folder's; only the label tables grew by one row each
    old = Prior.from_pretrained(released / "top").cfg
    new = Prior.from_pretrained(model).cfg
    assert (new.labels.artist_bins, new.labels.genre_bins) == (7, 6)
    assert new.transformer == old.transformer and new.lyrics == old.lyrics
    assert new.n_ctx == old.n_ctx and new.labels.t_bins == old.labels.t_bins

    # vocab.json: every released id kept, the new names appended after the tables
    vocab = Vocab.load(str(model))
    assert vocab.version == "v3"
    assert {k: vocab.artists[k] for k in V3_ARTISTS} == V3_ARTISTS
    assert vocab.artist_id("Pixel Kid") == 6 and vocab.genre_ids("march") == [5]
    assert vocab.genre_ids("lullaby") == [1]
    added = read_json(finetuned / VOCAB_ADDED_FILE)
    assert added["artists"] == {"pixel kid": 6} and added["genres"] == {"march": 5}
    assert added["artist_rows"] == [6, 7] and added["genre_rows"] == [5, 6]
    assert read_json(finetuned / "train_args.json")["init_from"] == str(
        (released / "top").resolve()
    )

    # rows of names not in the data are bit-identical; the new rows were trained
    before_a, after_a = _rows(released / "top", ARTIST_ROWS), _rows(model, ARTIST_ROWS)
    before_g, after_g = _rows(released / "top", GENRE_ROWS), _rows(model, GENRE_ROWS)
    assert torch.equal(after_a[2:6], before_a[2:6])  # aster vale .. the unnamed row 5
    assert torch.equal(after_g[2:5], before_g[2:5])  # ballad and the unnamed rows
    assert not torch.equal(after_a[1], before_a[1])  # moss choir is in the data
    assert not torch.equal(after_a[6], before_a[0])  # started as "unknown", then trained
    # the exported folder records the VQ-VAE it was fine-tuned on
    link = read_json(model / "vqvae.json")
    assert link["fingerprint"] == model_fingerprint(released / "vqvae")


def test_the_new_artist_samples(released, finetuned):
    from teacher.generate import Jukebox

    vqvae = VQVAE.from_pretrained(released / "vqvae")
    model = finetuned / "model"
    jb = Jukebox(vqvae, {"top": Prior.from_pretrained(model)}, {"top": Vocab.load(str(model))})
    song = dict(artist="Pixel Kid", genre="march", lyrics="la la la", duration_seconds=1.0)
    result = jb.generate(**song, levels=("top",), progress=False, seed=0)
    window = result.windows[2][0]
    assert window.label[3] == 6 and window.label[4] == 5
    assert window.artist == "pixel kid" and window.genres == ["march"]
    assert result.codes[2].shape[0] == 1 and bool((result.codes[2] < 32).all())
    # the converted teacher itself does not know the name
    old = Jukebox(
        vqvae,
        {"top": Prior.from_pretrained(released / "top")},
        {"top": Vocab.load(str(released / "top"))},
    )
    with pytest.raises(ConfigError, match="pixel kid|Pixel Kid"):
        old.generate(**song, levels=("top",), progress=False, seed=0)


def test_resume_continues_from_the_checkpoint(released, data, finetuned, tmp_path, caplog):
    again = tmp_path / "again"
    ckpt = finetuned / "checkpoints" / "checkpoint-8"
    shutil.copytree(ckpt, again / "checkpoints" / "checkpoint-8")
    extra = ("--max_train_steps", "16", "--checkpointing_steps", "8")
    caplog.set_level(logging.INFO)
    _train(_prior_args(released, data, again, *extra, "--resume_from_checkpoint", "latest"))
    assert "is not read again" in caplog.text
    assert [r["step"] for r in _records(again)] == list(range(9, 17))

    def digests(out: Path) -> list:
        return read_json(out / "checkpoints" / "checkpoint-16" / STATE_FILE)["weight_digests"]

    # the same weights as the unbroken run: restored from checkpoint-8, not from --init_from
    assert digests(again) == digests(finetuned)
    assert Vocab.load(str(again / "model")).artist_id("Pixel Kid") == 6


def test_growth_is_reported_on_the_console(released, data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="teacher.train.prior")
    out = tmp_path / "middle"
    extra = ("--max_train_steps", "1", "--codes", "on_the_fly")
    _train(_prior_args(released, data, out, *extra, level="middle"))
    lines = [r.getMessage() for r in caplog.records if "vocabulary grown" in r.getMessage()]
    assert len(lines) == 1
    # the upsamplers read v2 names (bags of genre words): the data's names as v2
    assert "'pixel_kid' -> 6" in lines[0] and "'march' -> 5" in lines[0]
    assert "6 -> 7 rows" in lines[0] and str(released / "middle") in lines[0]
    vocab = Vocab.load(str(out / "model"))
    assert vocab.version == "v2" and vocab.artist_id("Moss Choir") == 1


def test_a_converted_teacher_distils(released, data, tmp_path):
    """``distill`` reads a converted teacher folder as it is (no vqvae.json: a warning)."""
    from distill.train import build_parser as distill_parser
    from distill.train import run as distill_run

    out = tmp_path / "student"
    args = ["--teacher", str(released), "--level", "middle", "--data_dir", str(data)]
    args += ["--preset", "tiny", "--output_dir", str(out), "--max_train_steps", "2"]
    args += ["--train_batch_size", "2", "--lr_warmup_steps", "0", "--logging_steps", "1"]
    args += ["--cache_dir", str(tmp_path / "decoded")]
    distill_run(distill_parser().parse_args(args))
    assert [r["step"] for r in _records(out)] == [1, 2]
    assert Vocab.load(str(out / "student")).version == "v2"


# ---------------------------------------------------------------------------------------------
# the pieces: vocabulary growth and embedding growth


def test_vocab_grow_appends_after_the_tables():
    base = Vocab("v3", {"unknown": 0, "ann": 1, "annie": 1, "bo": 3}, {"unknown": 0, "folk": 1})
    data = Vocab.build(["Bo", "Cy", "Ann", "Al"], ["jazz", "folk"])
    grown, growth = base.grow(data, artist_rows=5, genre_rows=4)
    # new names after the table rows, in the data's (sorted) order; old ids untouched
    assert growth.artists == {"al": 5, "cy": 6} and growth.genres == {"jazz": 4}
    assert (growth.artist_rows, growth.genre_rows) == ((5, 7), (4, 5))
    assert grown.artists == {**base.artists, "al": 5, "cy": 6} and grown.n_artists == 7
    assert grown.artist_id("Annie") == 1 and grown.genre_ids(["jazz", "folk"]) == [4, 1]
    assert "bo" in base.artists and "al" not in base.artists  # base is unchanged
    assert "2 new artists ('al' -> 5, 'cy' -> 6), 5 -> 7 rows" in growth.summary()
    assert grown.grow(data, 7, 5)[1].summary().startswith("vocabulary unchanged")
    with pytest.raises(ConfigError, match="cannot add v2 names to a v3 vocabulary"):
        base.grow(Vocab.build(["x"], [], version="v2"), 5, 4)
    with pytest.raises(ConfigError, match="artist ids up to 3 .* embeds 3 artists"):
        base.grow(data, artist_rows=3, genre_rows=4)


def test_prior_label_tables_grow_and_reload(tmp_path):
    torch.manual_seed(0)
    prior = Prior(tiny_upsampler(1))
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    prior.grow_label_bins(9, 5)  # 6 -> 9 artists, genres unchanged
    after = prior.state_dict()
    assert prior.cfg.labels.artist_bins == 9 and prior.cfg.labels.genre_bins == 5
    assert torch.equal(after[ARTIST_ROWS][:6], before[ARTIST_ROWS])
    assert torch.equal(after[ARTIST_ROWS][6:], before[ARTIST_ROWS][0].expand(3, -1))
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != ARTIST_ROWS)
    assert prior.y_emb.artist_emb.emb.weight.requires_grad
    prior.save_pretrained(tmp_path / "grown")
    again = Prior.from_pretrained(tmp_path / "grown")
    assert torch.equal(again.state_dict()[ARTIST_ROWS], after[ARTIST_ROWS])
    with pytest.raises(ValueError, match="cannot shrink"):
        prior.grow_label_bins(8, 5)
    with pytest.raises(ConfigError, match="unlabelled"):
        Prior(tiny_upsampler(1, labels=False)).grow_label_bins(9, 5)


# ---------------------------------------------------------------------------------------------
# the VQ-VAE


def test_vqvae_finetunes_from_the_converted_one(released, data, tmp_path):
    out = tmp_path / "vq"
    args = ["vqvae", "--init_from", str(released / "vqvae"), "--data_dir", str(data)]
    args += ["--output_dir", str(out), "--cache_dir", str(tmp_path / "decoded")]
    args += ["--max_train_steps", "2", "--train_batch_size", "2", "--lr_warmup_steps", "0"]
    _train([*args, "--learning_rate", "1e-6", "--sample_length", "4096"])
    init = VQVAE.from_pretrained(released / "vqvae")
    tuned = VQVAE.from_pretrained(out / "model")
    # the architecture is the folder's; the crop and the bandwidth are this run's
    assert tuned.cfg.sample_length == 4096 and tuned.cfg.bandwidth != init.cfg.bandwidth
    keep = dict(sample_length=init.cfg.sample_length, bandwidth=init.cfg.bandwidth)
    assert dataclasses.replace(tuned.cfg, **keep) == init.cfg
    # the weights started from the folder's (two steps at lr 1e-6 move them by ~1e-6)
    a, b = init.state_dict(), tuned.state_dict()
    convs = [k for k in a if k.endswith(".weight")]
    assert max(float((a[k] - b[k]).abs().max()) for k in convs) < 1e-4
    fresh = VQVAE(init.cfg).state_dict()
    assert max(float((a[k] - fresh[k]).abs().max()) for k in convs) > 1e-2

    parser = build_parser()
    with pytest.raises(ConfigError, match="--preset tiny and --init_from .* exclude each other"):
        run(parser.parse_args([*args, "--preset", "tiny"]))
    with pytest.raises(ConfigError, match="--l_bins 64 conflicts with --init_from .* l_bins 32"):
        run(parser.parse_args([*args, "--l_bins", "64"]))
    with pytest.raises(ModelFolderError, match="holds a PriorConfig, expected a VQ-VAE"):
        run(parser.parse_args([*args, "--init_from", str(released / "top")]))
    with pytest.raises(ModelFolderError, match="nowhere: no such VQ-VAE folder"):
        run(parser.parse_args([*args, "--init_from", str(tmp_path / "nowhere")]))


# ---------------------------------------------------------------------------------------------
# bad input: one error each, naming the folder or file, before any data work


def _copy(released: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "teacher"
    shutil.copytree(released, dst)
    return dst


def test_wrong_level_and_wrong_vqvae(released, data, tmp_path):
    parser = build_parser()
    out = tmp_path / "out"
    args = _prior_args(released, data, out, "--max_train_steps", "1")
    wrong_level = [*args, "--level", "middle"]  # --init_from stays the top prior
    with pytest.raises(ConfigError, match=r"top/? holds the top prior \(level 2\); this run "):
        run(parser.parse_args(wrong_level))
    # another VQ-VAE than the one beside the converted prior: both named
    other = tmp_path / "other_vqvae"
    torch.manual_seed(1)
    VQVAE(tiny_vqvae(SR)).save_pretrained(other)
    bad = parser.parse_args(args)
    bad.vqvae = str(other)
    with pytest.raises(ConfigError) as err:
        run(bad)
    text = str(err.value)
    assert f"models the codes of the VQ-VAE {released / 'vqvae'}" in text
    assert f"not of --vqvae {other}" in text
    assert not out.exists()  # nothing was written


def test_vqvae_json_names_the_vqvae(released, data, finetuned, tmp_path):
    """A run's model folder says in vqvae.json which VQ-VAE made its codes."""
    other = tmp_path / "other_vqvae"
    torch.manual_seed(2)
    VQVAE(tiny_vqvae(SR)).save_pretrained(other)
    args = _prior_args(released, data, tmp_path / "out", "--max_train_steps", "1")
    parsed = build_parser().parse_args(args)
    parsed.init_from, parsed.vqvae = str(finetuned / "model"), str(other)
    linked = re.escape(str((released / "vqvae").resolve()))
    with pytest.raises(ConfigError, match=f"models the codes of the VQ-VAE {linked}"):
        run(parsed)


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("missing", ModelFolderError, "nowhere: no such prior folder"),
        ("bad_config", ModelFolderError, r"top/config.json: not valid JSON \(line 1"),
        ("truncated", ModelFolderError, r"top.*(truncated|not a readable safetensors|unreadable)"),
        ("vocab_rows", ConfigError, r"top/vocab.json does not match the model's embedding"),
        ("vocab_version", ConfigError, r"top/vocab.json is a v2 vocabulary but the prior"),
        ("vocab_json", ConfigError, r"top/vocab.json: not valid JSON"),
    ],
)
def test_damaged_folders_are_one_error(case, error, match, released, data, tmp_path):
    teacher = _copy(released, tmp_path)
    top = teacher / "top"
    if case == "missing":
        top = teacher / "nowhere"
    elif case == "bad_config":
        (top / "config.json").write_text("{")
    elif case == "truncated":
        for shard in top.glob("*.safetensors"):
            shard.write_bytes(shard.read_bytes()[:100])
    elif case == "vocab_rows":
        vocab = Vocab.load(str(top))
        vocab.artists["extra"] = 50  # beyond the 6 artist rows
        vocab.save(str(top / "vocab.json"))
    elif case == "vocab_version":
        vocab = Vocab.load(str(top))
        Vocab("v2", vocab.artists, vocab.genres).save(str(top / "vocab.json"))
    elif case == "vocab_json":
        (top / "vocab.json").write_text('{"artists": ')
    out = tmp_path / "out"
    args = _prior_args(teacher, data, out, "--max_train_steps", "1")
    args[args.index("--init_from") + 1] = str(top)
    with pytest.raises(error, match=match):
        run(build_parser().parse_args(args))
    assert not out.exists()  # nothing was written


def test_conflicting_flags_and_the_exit_status(released, data, tmp_path, capsys):
    parser = build_parser()
    args = _prior_args(released, data, tmp_path / "out", "--max_train_steps", "1")
    with pytest.raises(ConfigError, match="--preset small and --init_from .* exclude each other"):
        run(parser.parse_args([*args, "--preset", "small"]))
    with pytest.raises(ConfigError, match="--n_ctx 64 conflicts with --init_from .* n_ctx 32"):
        run(parser.parse_args([*args, "--n_ctx", "64"]))
    with pytest.raises(ConfigError, match="--lyric_version v2 conflicts .* lyric_version v3"):
        run(parser.parse_args([*args, "--lyric_version", "v2"]))
    # flags that agree with the folder are accepted; the config is the folder's
    agreeing = parser.parse_args([*args, "--lyric_version", "v3", "--n_ctx", "32"])
    kwargs = prior_configs_from_args(agreeing)
    assert kwargs["prior_cfg"] == kwargs["init_from"].cfg
    assert kwargs["data_cfg"].labels.lyric_version == "v3"
    # through the command line: exit status 2 and one line naming the folder
    assert main([*args, "--init_from", str(tmp_path / "nowhere")]) == 2
