"""Published-weights conversion: transformers and OpenAI layouts -> teacher folder, no downloads.

A tiny transformers ``JukeboxModel`` (3-level VQ-VAE, a 1b-style lyric top prior with timing,
two upsamplers), every tensor refilled with seeded random values, is saved with
``save_pretrained`` (sharded ``.bin`` + index, the hub's layout) next to tokenizer files, run
through ``fastjukebox convert --from hf`` and compared with the port: codes, decoded audio and
teacher-forced logits. The same weights under OpenAI's names (``torch.save({"model": sd})``
per ``prior_level_*.pth.tar``, one in the legacy format with numpy scalars in ``hps``) and as a
safetensors folder without the tied output heads convert to the same tensors. Then the errors
(truncated, wrong, pickled code, missing/unexpected/misshaped tensors), atomicity, streaming
shards, and tokenizer parity with transformers' ``JukeboxTokenizer``.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import teacher.released.checkpoints as checkpoints
import teacher.released.convert as convert
from fastjukebox.cli import main
from teacher.data.labels import Vocab
from teacher.data.text import V3_CHARS, LyricTokenizer, genre_words
from teacher.io import (
    WEIGHTS_INDEX_FILE,
    load_state_dict_from_folder,
    save_tensors_sharded,
    write_safetensors_streaming,
)
from teacher.presets import ModelConfigs, model_configs, prior_1b_lyrics, upsampler
from teacher.prior.config import load_prior_config
from teacher.prior.model import Prior
from teacher.released.checkpoints import TensorSource
from teacher.released.convert import (
    ConvertError,
    convert_openai,
    convert_transformers,
    infer_model,
    parse_size,
    vocabs_from_transformers,
)
from teacher.released.hf_keys import (
    prior_state_dict_from_transformers,
    vqvae_from_transformers_state_dict,
)
from teacher.vqvae import VQVAE

jukebox = pytest.importorskip("transformers.models.deprecated.jukebox.modeling_jukebox")
jukebox_cfg = pytest.importorskip("transformers.models.deprecated.jukebox.configuration_jukebox")
jukebox_tok = pytest.importorskip("transformers.models.deprecated.jukebox.tokenization_jukebox")

SR = 8000
PARTS = ("vqvae", "bottom", "middle", "top")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# a tiny transformers JukeboxModel

VQ = dict(
    levels=3,
    res_downs_t=[3, 2, 2],
    res_strides_t=[2, 2, 2],
    embed_dim=8,
    nb_discrete_codes=32,
    res_conv_width=8,
    res_conv_depth=2,
    multipliers=[2, 1, 1],
    res_dilation_growth_rate=3,
    sample_length=2048,
)
PRIOR = dict(music_vocab_size=32, mask=True, init_scale=0.7, n_ctx=32, blocks=4)
PRIOR.update(metadata_dims=[5, 6])  # (genres, artists)
TOP = dict(
    PRIOR,
    hidden_size=32,
    num_layers=16,  # the first prime-attention layer of enc_dec_with_lyrics is layer 15
    n_heads=2,
    attention_pattern="enc_dec_with_lyrics",
    nb_relevant_lyric_tokens=16,
    lyric_vocab_size=79,
    is_encoder_decoder=True,
    merged_decoder=False,
)


def _upsampler(middle: bool) -> dict:
    return dict(
        PRIOR,
        hidden_size=32,
        num_layers=3,
        n_heads=1,
        attention_pattern="raw_column_previous_row_attention",
        nb_relevant_lyric_tokens=0,
        is_encoder_decoder=False,
        merged_decoder=False,
        res_conv_width=8,
        res_conv_depth=2,
        res_dilation_growth_rate=3,
        res_dilation_cycle=2,
        conv_res_scale=middle,
    )


# JukeboxModel.set_shared_params copies these onto every prior
SHARED = dict(sampling_rate=SR, timing_dims=16, min_duration=0.25, max_duration=30.0)
SHARED.update(max_nb_genres=2)

ARTISTS = {"unknown": 0, "alan jackson": 1, "björk": 2, "the b-52's": 3, "dr. dre": 4}
ARTISTS.update({"alan_jackson.v2": 1, "bj_rk.v2": 5, "the_b_52_s.v2": 2, "dr_dre.v2": 3})
GENRES = {"unknown": 0, "country rock": 1, "pop": 2, "hip hop": 3}
GENRES.update({"country.v2": 1, "rock.v2": 2, "pop.v2": 3, "hip.v2": 4, "hop.v2": 1})
LYRICS_V3 = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(V3_CHARS)}}


def _fill(hf, seed: int, x: torch.Tensor) -> None:
    """Seeded random values in every tensor (the port leaves some uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in hf.named_parameters():
            if name.startswith("vqvae."):
                if name.endswith("weight"):
                    fan_in = t.shape[1] * t.shape[2] if "upsample_block" not in name else t.shape[0]
                    t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)
                else:
                    t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
        vq = hf.vqvae
        for level, block in enumerate(vq.bottleneck.level_blocks):  # codebooks on the latents
            z = vq.encoders[level](x)[-1].transpose(1, 2).reshape(-1, block.codebook.shape[1])
            block.codebook.copy_(
                z.mean(0) + z.std(0) * torch.randn(block.codebook.shape, generator=g)
            )


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """``(model, folder)``: the tiny port saved as the hub lays it out (sharded ``.bin``)."""
    torch.manual_seed(0)
    cfg = jukebox_cfg.JukeboxConfig(
        vqvae_config=VQ, prior_config_list=[TOP, _upsampler(True), _upsampler(False)], **SHARED
    )
    hf = jukebox.JukeboxModel(cfg).eval()
    x = torch.rand(2, 1, VQ["sample_length"], generator=torch.Generator().manual_seed(1)) - 0.5
    _fill(hf, seed=2, x=x)
    folder = tmp_path_factory.mktemp("hf") / "jukebox-tiny"
    hf.save_pretrained(folder, safe_serialization=False, max_shard_size="100KB")
    for name, table in (("artists", ARTISTS), ("genres", GENRES), ("lyrics", LYRICS_V3)):
        (folder / f"{name}.json").write_text(json.dumps(table, ensure_ascii=False))
    return hf, folder


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory):
    """The teacher folder ``fastjukebox convert --from hf`` writes from :func:`hf_model`."""
    _, folder = hf_model
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    assert main(["convert", "--from", "hf", str(folder), "--out", str(out)]) == 0
    return out


def _tiny_configs(teacher) -> ModelConfigs:
    return ModelConfigs(
        "tiny",
        VQVAE.from_pretrained(teacher / "vqvae").cfg,
        tuple(load_prior_config(str(teacher / p / "config.json")) for p in PARTS[1:]),
    )


def _inputs(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = [[SR * 5, SR, cfg.sample_length, 1, 2, -1], [SR * 10, 0, cfg.sample_length, 3, 1, 4]]
    labels = torch.tensor(rows)
    if cfg.n_tokens:
        lyrics = torch.randint(0, cfg.lyrics.n_vocab, (2, cfg.n_tokens), generator=g)
        labels = torch.cat([labels, lyrics], dim=1)
    codes = torch.randint(0, cfg.l_bins, (2, cfg.n_ctx), generator=g)
    upper = None
    if cfg.is_upsampler:
        upper = torch.randint(0, cfg.l_bins, (2, cfg.n_ctx // cfg.upsample_ratio), generator=g)
    return codes, labels, upper


# ---------------------------------------------------------------------------------------------
# transformers folder -> teacher: numbers against the port


def test_layout_vocab_and_manifest(converted):
    assert sorted(p.name for p in converted.iterdir()) == sorted([*PARTS, "teacher.json"])
    assert not list(converted.parent.glob(".*tmp*"))
    manifest = json.loads((converted / "teacher.json").read_text())
    assert manifest["source"] == "transformers" and manifest["model"] is None
    assert manifest["parts"]["bottom"]["level"] == 0 and manifest["parts"]["top"]["level"] == 2
    top = Vocab.load(str(converted / "top"))
    assert top.version == "v3" and top.artist_id("Björk") == 2 and top.genre_ids("Pop") == [2]
    up = Vocab.load(str(converted / "middle"))  # the upsamplers' ids are the v2 set
    assert up.version == "v2" and up.artist_id("Björk") == 5 and up.genre_ids("hip hop") == [4, 1]
    cfg = load_prior_config(str(converted / "top" / "config.json"))
    assert cfg.labels.t_bins == 16 and cfg.labels.max_genres == 2 and cfg.sample_rate == SR


def test_vqvae_codes_and_audio_match_the_port(hf_model, converted):
    hf, _ = hf_model
    ours = VQVAE.from_pretrained(converted / "vqvae")
    x = torch.rand(2, 1, VQ["sample_length"], generator=torch.Generator().manual_seed(3)) - 0.5
    with torch.no_grad():
        for level in range(3):
            (codes_hf,) = hf.vqvae.encode(x.transpose(1, 2), start_level=level, end_level=level + 1)
            (codes,) = ours.encode(x, start_level=level, end_level=level + 1)
            assert torch.equal(codes, codes_hf) and codes.unique().numel() > 4
            ref = hf.vqvae.decode([codes_hf], start_level=level, end_level=level + 1)
            audio = ours.decode([codes], start_level=level)
            assert ref.abs().max() > 0.1
            torch.testing.assert_close(audio, ref.transpose(1, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hf_level", [0, 1, 2])
def test_prior_logits_match_the_port(hf_model, converted, hf_level):
    hf, _ = hf_model
    part = ("top", "middle", "bottom")[hf_level]
    ours = Prior.from_pretrained(converted / part).eval()
    cfg = ours.cfg
    assert cfg.level == 2 - hf_level
    codes, labels, upper = _inputs(cfg, seed=hf_level)
    port = hf.priors[hf_level]
    with torch.no_grad():
        if cfg.single_sequence:
            _, metrics = port.forward_tokens(codes, [], labels, get_preds=True)
            ref = metrics["preds"]
        else:
            audio_cond, meta_cond, _ = port.get_cond([upper], labels)
            _, ref = port.prior(codes, audio_cond, meta_cond, None, get_preds=True)
        logits = ours.sequence_logits(codes, ours.condition(labels, upper))
    assert logits.shape == ref.shape and ref.abs().max() > 0.5
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# the same weights in OpenAI's layout and as safetensors


def _openai_state_dicts(hf) -> dict[str, dict[str, torch.Tensor]]:
    """file name -> state dict under OpenAI's names (ours), from the port's."""
    sd = hf.state_dict()
    out = {"vqvae.pth.tar": vqvae_from_transformers_state_dict(sd)}
    for hf_level in range(3):
        prefix = f"priors.{hf_level}."
        prior = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        out[f"prior_level_{2 - hf_level}.pth.tar"] = prior_state_dict_from_transformers(prior)
    return out


@pytest.fixture(scope="module")
def openai_dir(hf_model, tmp_path_factory):
    """OpenAI-layout files of the tiny model: zip format, except prior_level_1 (legacy,
    numpy scalars in hps, DDP ``module.`` prefixes)."""
    hf, _ = hf_model
    folder = tmp_path_factory.mktemp("openai")
    for name, sd in _openai_state_dicts(hf).items():
        ckpt = {"model": sd, "hps": {"name": name}, "step": 1}
        legacy = name == "prior_level_1.pth.tar"
        if legacy:
            ckpt["model"] = {f"module.{k}": v for k, v in sd.items()}
            ckpt["hps"] = {"sample_length": np.int64(1 << 20), "lr": np.float64(3e-4)}
        torch.save(ckpt, folder / name, _use_new_zipfile_serialization=not legacy)
    return folder


def _same_tensors(a, b) -> None:
    for part in PARTS:
        sa, sb = load_state_dict_from_folder(a / part), load_state_dict_from_folder(b / part)
        assert set(sa) == set(sb), part
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (part, k)


def test_openai_layout_converts_to_the_same_model(converted, openai_dir, tmp_path):
    out = tmp_path / "from_openai"
    # the legacy file is read lazily (meta-device unpickling, data by file offset)
    assert isinstance(
        TensorSource.open(openai_dir / "prior_level_1.pth.tar"), checkpoints._LegacySource
    )
    files = [openai_dir / n for n in ("prior_level_2.pth.tar", "vqvae.pth.tar")] + [openai_dir]
    with pytest.raises(ConvertError, match="given twice"):
        convert_openai(files, out, model=_tiny_configs(converted))
    ids = tmp_path / "ids"  # Jukebox's name;id lists, versions from the file names
    ids.mkdir()
    (ids / "v3_artist_ids.txt").write_text("Alan Jackson;1\nBjörk;2\n")
    (ids / "v3_genre_ids.txt").write_text("country rock;1\npop;4\n")
    (ids / "v2_artist_ids.txt").write_text("alan_jackson;3\nbj_rk;5\n")
    (ids / "v2_genre_ids.txt").write_text("country;2\nrock;3\n")
    vocab = [(ids / f"{v}_artist_ids.txt", ids / f"{v}_genre_ids.txt") for v in ("v3", "v2")]
    result = convert_openai(
        [openai_dir], out, model=_tiny_configs(converted), vocab_files=vocab, max_shard_bytes=8000
    )
    assert result.model == "tiny" and set(result.parts) == set(PARTS)
    assert len(result.parts["top"].files) > 2 and (out / "top" / WEIGHTS_INDEX_FILE).is_file()
    top, bottom = Vocab.load(str(out / "top")), Vocab.load(str(out / "bottom"))
    assert (top.version, top.artist_id("BJÖRK"), top.genre_ids("Pop")) == ("v3", 2, [4])
    assert (bottom.version, bottom.artist_id("Alan Jackson")) == ("v2", 3)
    assert bottom.genre_ids("Country Rock") == [2, 3]
    assert not (out / "vqvae" / "vocab.json").exists()
    _same_tensors(converted, out)
    assert json.loads((out / "teacher.json").read_text())["source"] == "openai"


def test_safetensors_folder_without_tied_heads(hf_model, converted, tmp_path):
    hf, folder = hf_model
    st = tmp_path / "st"
    st.mkdir()
    for name in ("config.json", "artists.json", "genres.json", "lyrics.json"):
        shutil.copy(folder / name, st / name)
    # transformers refuses to save tied tensors as safetensors: leave the tied heads out
    sd = {k: v for k, v in hf.state_dict().items() if not k.endswith("prior.fc_proj_out.weight")}
    keys = sorted(sd)
    weight_map = {}
    for i, chunk in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k].contiguous() for k in chunk}, st / name)
        weight_map.update({k: name for k in chunk})
    (st / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = tmp_path / "teacher"
    convert_transformers(st, out, dtype=torch.float64)
    a = load_state_dict_from_folder(out / "top")
    b = load_state_dict_from_folder(converted / "top")
    assert a["prior.x_out.weight"].dtype == torch.float64
    for k in b:
        assert torch.equal(a[k], b[k].double()), k


def test_released_model_options_and_version_checks(hf_model, tmp_path, caplog):
    _, folder = hf_model
    # --model with a folder of another architecture: the released shapes do not match
    with pytest.raises(ConvertError, match=r"has shape \[32, 8\].*needs \[2048, 64\]"):
        convert_transformers(folder, tmp_path / "x", model="1b_lyrics")
    assert not (tmp_path / "x").exists()
    # a vocabulary with more ids than the prior has embeddings: the wrong version's list?
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "artists.json").write_text(json.dumps({**ARTISTS, "zz top": 7}))
    with pytest.raises(ConvertError, match="artist ids up to 7.*6 artist"):
        convert_transformers(bad, tmp_path / "x")
    lyrics = dict(LYRICS_V3, a=5)
    (bad / "artists.json").write_text(json.dumps(ARTISTS))
    (bad / "lyrics.json").write_text(json.dumps(lyrics))
    with pytest.raises(
        ConvertError, match="lyrics.json: character 'a' has id 5, our v3 lyric tokenizer gives 27"
    ):
        convert_transformers(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# bad input: one clear error naming the file and the tensor; nothing written


def _copy(openai_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(openai_dir, dst)
    return dst


def _resave(path, edit):
    sd = TensorSource.open(path)
    state = {k: sd.read(k) for k in sd.specs}
    edit(state)
    torch.save({"model": state}, path)


@pytest.mark.parametrize(
    "case, match",
    [
        ("truncated", r"prior_level_2\.pth\.tar: truncated or corrupt"),
        ("truncated_legacy", r"prior_level_1\.pth\.tar: truncated: the data of tensor '"),
        (
            "not_a_checkpoint",
            r"vqvae\.pth\.tar: not a PyTorch checkpoint \(unpickling failed: Unsupported operand",
        ),
        ("pickled_code", r"prior_level_0\.pth\.tar: refused for safety: its pickle calls print"),
        ("missing", r"tensor 'prior\.x_emb\.weight' of the tiny top prior is missing"),
        ("unexpected", r"prior_level_1\.pth\.tar: tensor 'extra\.w' is not a tensor of"),
        ("shape", r"prior_level_0\.pth\.tar: tensor 'prior\.pos_emb\.pos_emb' has shape \[31"),
        ("dtype", r"tensor 'y_emb\.artist_emb\.emb\.weight' has dtype torch\.int64"),
        ("not_a_state_dict", r"vqvae\.pth\.tar: entry 'model' is a list"),
    ],
)
def test_bad_checkpoints(case, match, converted, openai_dir, tmp_path):
    ckpt = _copy(openai_dir, tmp_path)
    if case == "truncated":
        data = (ckpt / "prior_level_2.pth.tar").read_bytes()
        (ckpt / "prior_level_2.pth.tar").write_bytes(data[: len(data) * 2 // 3])
    elif case == "truncated_legacy":
        data = (ckpt / "prior_level_1.pth.tar").read_bytes()
        (ckpt / "prior_level_1.pth.tar").write_bytes(data[:-100])
    elif case == "not_a_checkpoint":
        (ckpt / "vqvae.pth.tar").write_text("<html>404 Not Found</html>")
    elif case == "pickled_code":
        torch.save({"model": {}, "hps": _Exploit()}, ckpt / "prior_level_0.pth.tar")
    elif case == "missing":
        _resave(ckpt / "prior_level_2.pth.tar", lambda s: s.pop("prior.x_emb.weight"))
    elif case == "unexpected":
        _resave(ckpt / "prior_level_1.pth.tar", lambda s: s.update({"extra.w": torch.zeros(1)}))
    elif case == "shape":
        key = "prior.pos_emb.pos_emb"
        _resave(ckpt / "prior_level_0.pth.tar", lambda s: s.update({key: s[key][:31]}))
    elif case == "dtype":
        key = "y_emb.artist_emb.emb.weight"
        _resave(ckpt / "prior_level_2.pth.tar", lambda s: s.update({key: s[key].long()}))
    elif case == "not_a_state_dict":
        torch.save({"model": [1, 2]}, ckpt / "vqvae.pth.tar")
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match=match):
        convert_openai([ckpt], out, model=_tiny_configs(converted))
    assert not out.exists() and not list(tmp_path.glob(".out*"))


class _Exploit:
    def __reduce__(self):
        return (print, ("weights_only must refuse this",))


def test_file_set_and_transformers_folder_errors(openai_dir, hf_model, tmp_path):
    with pytest.raises(ConvertError, match="missing prior_level_1.pth.tar"):
        convert_openai([openai_dir / n for n in ("vqvae.pth.tar", "prior_level_0.pth.tar")], "o")
    odd = tmp_path / "model.ckpt"
    odd.write_bytes(b"")
    with pytest.raises(ConvertError, match="model.ckpt: not an OpenAI Jukebox file name"):
        convert_openai([odd], tmp_path / "o")
    with pytest.raises(ConvertError, match="no config.json"):
        convert_transformers(tmp_path, tmp_path / "o")
    _, folder = hf_model
    bad = tmp_path / "hf"
    shutil.copytree(folder, bad)
    index = json.loads((bad / "pytorch_model.bin.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    torch.save({"priors.0.prior.mystery": torch.zeros(2)}, bad / first)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != first}
    index["weight_map"]["priors.0.prior.mystery"] = first
    (bad / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ConvertError, match=rf"{first}: tensor 'priors.0.prior.mystery'"):
        convert_transformers(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_atomic_output(converted, openai_dir, tmp_path, monkeypatch):
    cfgs = _tiny_configs(converted)
    out = tmp_path / "out"
    real = convert._write_part
    calls = []

    def failing(part, folder, dtype, max_shard_bytes):
        calls.append(part.name)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        return real(part, folder, dtype, max_shard_bytes)

    monkeypatch.setattr(convert, "_write_part", failing)
    with pytest.raises(OSError, match="injected"):
        convert_openai([openai_dir], out, model=cfgs)
    assert calls == ["vqvae", "bottom", "middle"]
    assert not out.exists() and not list(tmp_path.iterdir())
    # an existing teacher is refused, and with overwrite a failure leaves it untouched
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ConvertError, match="exists and is not empty"):
        convert_openai([openai_dir], out, model=cfgs)
    calls.clear()
    with pytest.raises(OSError, match="injected"):
        convert_openai([openai_dir], out, model=cfgs, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_errors_name_the_file_and_tensor(openai_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps log lines at the terminal width
    out = tmp_path / "out"
    assert main(["convert", "--from", "openai", str(openai_dir), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    text = " ".join((captured.err + captured.out).split())
    assert "prior_level_2.pth.tar: its tensors match no released top prior" in text
    assert "Traceback" not in text
    argv = ["convert", "--from", "openai", str(openai_dir), "--out", str(out), "--model", "5b"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    text = " ".join((captured.err + captured.out).split())
    assert "vqvae.pth.tar: tensor 'bottleneck.level_blocks.0.k' has shape [32, 8]" in text
    assert main([*argv[:-2], "--max_shard_size", "lots"]) == 2
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# released shapes, without the memory: zero-stride tensors of the full sizes


def _full_size_checkpoint(path, cfg):
    from teacher.released.convert import expected_tensors

    state = {k: torch.zeros((), dtype=d).expand(s) for k, (s, d) in expected_tensors(cfg).items()}
    torch.save({"model": state}, path)  # stores one element per tensor


def test_released_shapes_infer_the_model_and_catch_a_wrong_one(tmp_path):
    _full_size_checkpoint(tmp_path / "prior_level_2.pth.tar", prior_1b_lyrics())
    src = TensorSource.open(tmp_path / "prior_level_2.pth.tar")
    assert (tmp_path / "prior_level_2.pth.tar").stat().st_size < 5e6
    assert infer_model(src.specs, "f") == "1b_lyrics"
    assert src.specs["prior.x_emb.weight"] == ((2048 + 79, 2048), torch.float32)
    for lv in (0, 1):
        _full_size_checkpoint(tmp_path / f"prior_level_{lv}.pth.tar", upsampler(lv))
    _full_size_checkpoint(tmp_path / "vqvae.pth.tar", model_configs("5b").vqvae)
    with pytest.raises(ConvertError, match=r"pos_emb' has shape \[6528, 2048\].*--model 1b_lyrics"):
        convert_openai([tmp_path], tmp_path / "out", model="5b")
    bad = {**src.specs, "prior.x_emb.weight": ((2048 + 80, 2048), torch.float32)}
    with pytest.raises(ConvertError, match="match no released top prior.*1b_lyrics: f: tensor"):
        infer_model(bad, "f")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# streaming writer and sharded folders


def test_streaming_safetensors_and_shards(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=g),
        "b": torch.randn(7, generator=g).half(),
        "c": torch.randint(0, 9, (2, 2), generator=g),
        "d": torch.tensor(1.5, dtype=torch.bfloat16),
        "e": torch.zeros(0, 4),
        "f": torch.tensor([True, False]),
    }
    specs = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
    read_order = []

    def read(k):
        read_order.append(k)
        return tensors[k]

    write_safetensors_streaming(tmp_path / "one.safetensors", specs, read)
    assert read_order == list(tensors)  # one tensor at a time, in order
    from safetensors.torch import load_file

    back = load_file(tmp_path / "one.safetensors")
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with pytest.raises(ValueError, match="declared"):
        write_safetensors_streaming(
            tmp_path / "x.safetensors", {"a": ((3, 4), torch.float32)}, read
        )

    (tmp_path / "sharded").mkdir()
    files = save_tensors_sharded(tmp_path / "sharded", specs, tensors.__getitem__, 40)
    assert files[-1] == WEIGHTS_INDEX_FILE and len(files) > 3
    back = load_state_dict_from_folder(tmp_path / "sharded")
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    index = json.loads((tmp_path / "sharded" / WEIGHTS_INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
    # a cut-off safetensors input names the tensor that runs past the end
    data = (tmp_path / "one.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(
        ConvertError, match=r"cut.safetensors: truncated: tensor 'c' ends at byte 490 of a 484-byte"
    ):
        TensorSource.open(tmp_path / "cut.safetensors")
    src = TensorSource.open(tmp_path / "one.safetensors")
    assert all(torch.equal(src.read(k), tensors[k]) for k in tensors)
    (tmp_path / "sharded" / files[0]).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_state_dict_from_folder(tmp_path / "sharded")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_state_dict_from_folder(tmp_path)


def test_parse_size():
    assert parse_size("2GiB") == 2 << 30 and parse_size("500MB") == 500_000_000
    assert parse_size("1.5 gb") == 1_500_000_000 and parse_size("123") == 123
    with pytest.raises(ConvertError, match="not a size"):
        parse_size("big")


# ---------------------------------------------------------------------------------------------
# tokenizer parity with transformers' JukeboxTokenizer


@pytest.fixture(scope="module")
def hf_tokenizer_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    for name, table in (("artists", ARTISTS), ("genres", GENRES), ("lyrics", LYRICS_V3)):
        (folder / f"{name}.json").write_text(json.dumps(table, ensure_ascii=False))
    return folder


def _hf_tokenizer(folder, version):
    return jukebox_tok.JukeboxTokenizer(
        str(folder / "artists.json"),
        str(folder / "genres.json"),
        str(folder / "lyrics.json"),
        version=[version],
        n_genres=3,
    )


LYRICS = "Déjà vu! \"Où\" est-il? (Ça va) [naïve]; 'señor' 50:50\\Zürich\tand\nEl Niño..."


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_tokenizer_matches_transformers(hf_tokenizer_files, version):
    vocabs = vocabs_from_transformers(ARTISTS, GENRES)
    vocab = vocabs[version]
    tok = LyricTokenizer(version)
    hf = _hf_tokenizer(hf_tokenizer_files, version)
    genres = ["Pop", "Country Rock", "Hip Hop"] if version == "v3" else ["pop", "hip_hop", "rock"]
    for artist in ("Alan Jackson", "BJÖRK", "The B-52's", "Nobody Known"):
        for genre in genres:
            (ids,) = hf(artist, genre, LYRICS)["input_ids"]
            ids = ids[0].tolist()
            # the port's layout: [0, 0, 0, artist, genres padded with -1 to n_genres, lyrics];
            # total length, offset and window length are filled in, and the lyric window cut,
            # by its model at sampling time, so the tokenizer returns the whole lyrics
            assert ids[:3] == [0, 0, 0]
            assert ids[3] == vocab.artist_id(artist), (artist, version)
            ours = vocab.genre_ids(genre)
            assert ids[4:7] == ours + [-1] * (3 - len(ours)), (genre, version)
            assert ids[7:] == tok.encode(LYRICS)
    assert tok.decode(tok.encode(LYRICS)).startswith('Deja vu! "Ou" est-il? (Ca va) [naive]')


def test_known_tokenizer_differences(hf_tokenizer_files):
    """Where the port departs from Jukebox (which we follow), pinned so a change shows."""
    vocabs = vocabs_from_transformers(ARTISTS, GENRES)
    v3 = _hf_tokenizer(hf_tokenizer_files, "v3")
    v2 = _hf_tokenizer(hf_tokenizer_files, "v2")

    def ids(hf, artist="x", genre="x", lyrics=""):
        return hf(artist, genre, lyrics)["input_ids"][0][0].tolist()

    # v2 names: the port keeps '.', Jukebox maps it to '_'
    assert ids(v2, artist="Dr. Dre")[3] == 0 and vocabs["v2"].artist_id("Dr. Dre") == 3
    # v2 genres: the port splits only on '_', Jukebox on every non-alphanumeric (bag of words)
    assert ids(v2, genre="Country Rock")[4] == 0
    assert genre_words("Country Rock", "v2") == ["country", "rock"]
    assert vocabs["v2"].genre_ids("Country Rock") == [1, 2]
    # lyrics: the port strips accents (NFD) where Jukebox transliterates (unidecode), and keeps
    # '+' as <unk> in v3, where Jukebox's v3 vocabulary drops it
    tok = LyricTokenizer("v3")
    assert ids(v3, lyrics="don’t")[7:] == tok.encode("dont")
    assert tok.encode("don’t") == tok.encode("don't")
    assert ids(v3, lyrics="Straße")[7:] == tok.encode("Strae") != tok.encode("Straße")
    assert ids(v3, lyrics="a+b")[7:] == [tok.vocab["a"], 0, tok.vocab["b"]]
    assert tok.encode("a+b") == tok.encode("ab")
