"""Exact hierarchical generation: windows, labels, the three modes, the CLI, and the sampler.

A tiny random teacher (tiny_vqvae + tiny_top_prior("single") + two tiny upsamplers, 8 kHz,
hops 8/32/128, 32-code windows) is written to a folder once. The central check: windowed
sampling with the KV cache equals a slow reference that recomputes ``prior.logits`` over the
window's prefix for every new code, with the same windows, labels, upper codes and the same
Gumbel draws (``teacher.prior.sampling`` documents their order).
"""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from fastjukebox.cli import main as cli_main
from teacher.config import ConfigError
from teacher.data.labels import Vocab, linear_lyric_window
from teacher.data.text import LyricTokenizer
from teacher.generate.jukebox import Jukebox
from teacher.generate.sampler import (
    NOISE_BLOCK,
    ExactSampler,
    LevelSampler,
    gumbel_noise,
    sample_window,
)
from teacher.generate.windows import Window, plan_windows, window_starts
from teacher.io import load_tensors
from teacher.presets import tiny_top_prior, tiny_upsampler, tiny_vqvae
from teacher.prior.model import Prior
from teacher.vqvae import VQVAE

SR = 8000
ARTISTS = ["Alan Jackson", "Ella Fitzgerald", "Frank Sinatra", "Joe Bonamassa"]
GENRES = ["Country", "Jazz", "Blues Rock", "Pop"]
LYRICS = "I met a traveller from an antique land, who said: two vast and trunkless legs of stone"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights well away from the small init, so logits are O(1) and vary with position."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "ln" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.15 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    VQVAE(tiny_vqvae(SR)).save_pretrained(root / "vqvae")
    vocab = Vocab.build(ARTISTS, GENRES)
    cfgs = {
        "top": tiny_top_prior("single"),
        "middle": tiny_upsampler(1),
        "bottom": tiny_upsampler(0),
    }
    for i, (name, cfg) in enumerate(cfgs.items()):
        _randomise(Prior(cfg), seed=i).save_pretrained(root / name)
        vocab.save(str(root / name))
    return root


@pytest.fixture(scope="module")
def jb(teacher_dir):
    return Jukebox.from_pretrained(teacher_dir)


class Recorder:
    """A LevelSampler wrapping the exact one, recording every window's inputs and output."""

    def __init__(self, inner: LevelSampler):
        self.inner = inner
        self.n_ctx = inner.n_ctx
        self.calls: list[dict] = []

    def sample_window(self, length, prefix, labels, upper, generator=None, progress=None):
        out = self.inner.sample_window(length, prefix, labels, upper, generator, progress)
        self.calls.append(
            dict(
                length=length,
                prefix=prefix.clone(),
                labels=None if labels is None else labels.clone(),
                upper=None if upper is None else upper.clone(),
                out=out.clone(),
            )
        )
        return out


# ---------------------------------------------------------------------------------------------
# windows


def test_window_starts_hand_computed():
    assert window_starts(10, 8, 4) == [0, 2]  # the last window is pulled back to end at 10
    assert window_starts(16, 8, 4) == [0, 4, 8]  # exact multiple: no shift
    assert window_starts(17, 8, 4) == [0, 4, 8, 9]
    assert window_starts(8, 8, 4) == [0]  # exactly one window
    assert window_starts(5, 8, 4) == [0]  # shorter than one window: one partial window
    assert window_starts(48, 32, 16) == [0, 16]
    assert window_starts(64, 32, 32) == [0, 32]
    top = window_starts(94, 32, 4)  # 1.5 s of the tiny teacher's top level
    assert top[:3] == [0, 4, 8] and top[-2:] == [60, 62] and len(top) == 17
    with pytest.raises(ValueError):
        window_starts(10, 8, 9)  # hop > n_ctx would leave gaps

    # the windows that sample: new codes only, and windows inside what exists are skipped
    plan = plan_windows(2, 17, 8, 4, have=10)
    assert plan == [Window(2, 4, 12, 6), Window(2, 8, 16, 4), Window(2, 9, 17, 7)]
    assert sum(w.n_new for w in plan) == 17 - 10
    assert plan_windows(0, 5, 8, 4) == [Window(0, 0, 5, 0)]
    assert [w.n_new for w in plan_windows(0, 17, 8, 4)] == [8, 4, 4, 1]


# ---------------------------------------------------------------------------------------------
# windowed top-level generation


def test_multi_window_top_keeps_codes_and_relabels_each_window(jb):
    rec = Recorder(ExactSampler(jb.priors[2], temperature=0.98))
    out = jb.generate(
        artist="Alan Jackson",
        genre="country",
        lyrics=LYRICS,
        duration_seconds=1.5,
        n_samples=2,
        seed=3,
        levels=("top",),
        progress=False,
        samplers={"top": rec},
    )
    codes = out.codes[2]
    total = 94 * 128
    assert codes.shape == (2, 94) and set(out.codes) == {2} and out.audio[2].shape == (2, 1, total)
    assert out.info["seconds"] == total / SR
    starts = window_starts(94, 32, 4)
    assert [c["length"] for c in rec.calls] == [32] * len(starts)
    cfg = jb.priors[2].cfg
    tok = LyricTokenizer("v3")
    full = tok.encode(LYRICS)
    vocab = jb.vocabs[2]
    for i, (start, call, wl) in enumerate(zip(starts, rec.calls, out.windows[2])):
        kept = call["prefix"].shape[1]
        assert kept == (0 if i == 0 else starts[i - 1] + 32 - start)  # the overlap is kept
        assert torch.equal(call["out"][:, :kept], call["prefix"])
        # what a window drew is what the song keeps: later windows never rewrite it
        assert torch.equal(codes[:, start : start + 32], call["out"])
        # the label: offset in samples, the window's sample_length, the song, names, lyrics
        y = call["labels"]
        assert torch.equal(y[0], y[1])
        assert y[0, :4].tolist() == [
            total,
            start * 128,
            cfg.sample_length,
            vocab.artist_id("alan jackson"),
        ]
        assert y[0, 4:6].tolist() == [vocab.genres["country"], -1]
        want, _ = linear_lyric_window(full, cfg.n_tokens, total, start * 128, 32 * 128)
        assert y[0, 6:].tolist() == want
        assert wl.label == y[0].tolist() and wl.start == start and wl.artist == "alan jackson"
        assert wl.lyrics == tok.decode(want)
    # the lyric window moves through the song
    assert out.windows[2][0].lyrics != out.windows[2][-1].lyrics
    assert out.labels(2).shape == (len(starts), 4 + 2 + 16)


def test_song_shorter_than_one_window_is_one_partial_window(jb):
    rec = Recorder(ExactSampler(jb.priors[2]))
    out = jb.generate(
        artist="ella fitzgerald",
        duration_seconds=0.3,
        seed=0,
        levels=("top", "middle"),
        progress=False,
        samplers={2: rec},
    )
    assert len(rec.calls) == 1 and rec.calls[0]["length"] == 19  # 2400 samples -> 19 codes
    assert out.codes[2].shape == (1, 19) and out.codes[1].shape == (1, 76)
    assert out.audio[1].shape == (1, 1, 19 * 128)
    w = out.windows[2][0]
    assert (w.start, w.end, w.n_new) == (0, 19, 19)
    assert w.label[:3] == [19 * 128, 0, 32 * 128]  # length stays the window's sample_length
    assert 0 not in out.codes and 0 not in out.audio  # stopped early


# ---------------------------------------------------------------------------------------------
# exactness: cached windows == a slow reference with the same draws


def _slow_level(prior, windows, total, upper, ratio, batch, temperature, top_k, gen, kept=None):
    """Reference windowing: recompute ``prior.logits`` over the prefix for every new code."""
    codes = torch.zeros(batch, total, dtype=torch.long)
    if kept is not None:
        codes[:, : kept.shape[1]] = kept
    for w in windows:
        y = torch.tensor(w.label).expand(batch, -1)
        up = None if upper is None else upper[:, w.start // ratio : w.end // ratio]
        win = codes[:, w.start : w.end].clone()
        noise = None
        for i, t in enumerate(range(w.n_kept, w.length)):
            if i % NOISE_BLOCK == 0:
                noise = gumbel_noise((min(NOISE_BLOCK, w.n_new - i), batch, prior.cfg.l_bins), gen)
            with torch.no_grad():
                logits = prior.logits(win[:, : t + 1], labels=y, upper=up)[:, t]
            if top_k == 1:
                win[:, t] = logits.argmax(-1)
            else:
                win[:, t] = (logits / temperature + noise[i % NOISE_BLOCK]).argmax(-1)
        codes[:, w.start : w.end] = win
    return codes


@pytest.mark.parametrize("top_k, temperature", [(1, 1.0), (0, 0.9)])
def test_windowed_sampling_equals_slow_reference(jb, top_k, temperature):
    out = jb.generate(
        artist="frank sinatra",
        genre="jazz",
        lyrics=LYRICS,
        duration_seconds=1.0,
        n_samples=2,
        temperature=temperature,
        top_k=top_k,
        seed=11,
        levels=("top", "middle"),
        progress=False,
        chunk_size=7,  # re-prime each window in several forwards
    )
    assert len(out.windows[2]) == 9 and len(out.windows[1]) == 15  # many window boundaries
    gen = torch.Generator().manual_seed(11)
    top = _slow_level(jb.priors[2], out.windows[2], 62, None, 1, 2, temperature, top_k, gen)
    assert torch.equal(top, out.codes[2])
    mid = _slow_level(jb.priors[1], out.windows[1], 248, top, 4, 2, temperature, top_k, gen)
    assert torch.equal(mid, out.codes[1])
    if top_k == 0:
        assert out.codes[1].unique().numel() > 5  # not degenerate


def test_upsampler_windows_see_the_upper_codes_of_their_span(jb):
    seen = {1: [], 0: []}
    hooks = [
        jb.priors[lv]
        .conditioner_blocks[0]
        .register_forward_pre_hook(lambda mod, args, lv=lv: seen[lv].append(args[0].clone()))
        for lv in (1, 0)
    ]
    try:
        out = jb.generate(artist="joe bonamassa", duration_seconds=0.6, seed=1, progress=False)
    finally:
        for h in hooks:
            h.remove()
    for lv in (1, 0):
        ws = out.windows[lv]
        assert len(seen[lv]) == len(ws) > 1
        for w, upper in zip(ws, seen[lv]):
            assert torch.equal(upper, out.codes[lv + 1][:, w.start // 4 : w.end // 4])
            assert w.label[1] == w.start * jb.hop_lengths[lv]  # offset in samples
        assert ws[-1].end == out.codes[lv].shape[1]


# ---------------------------------------------------------------------------------------------
# the three modes


def test_three_modes_give_audio_of_the_requested_length(jb):
    total = 0.75 * SR  # 6000 samples -> 47 top codes = 6016 samples
    anc = jb.generate(
        artist="alan jackson", lyrics=LYRICS, duration_seconds=0.75, seed=0, progress=False
    )
    n = 47 * 128
    for lv in range(3):
        assert anc.codes[lv].shape == (1, n // jb.hop_lengths[lv])
        assert anc.audio[lv].shape == (1, 1, n)
        assert torch.isfinite(anc.audio[lv]).all()
    assert abs(n - total) < 128

    # continue: the prompt's codes are kept at every level
    prompt = 0.3 * torch.randn(1, 1, 2560)  # 0.32 s -> 2560 samples, already whole top codes
    cont = jb.generate_from_audio(
        prompt, prompt_seconds=0.32, duration_seconds=0.75, n_samples=2, seed=0, progress=False
    )
    with torch.no_grad():
        want = jb.vqvae.encode(prompt)
    for lv in range(3):
        t_prompt = 2560 // jb.hop_lengths[lv]
        assert cont.codes[lv].shape == (2, n // jb.hop_lengths[lv])
        assert torch.equal(cont.codes[lv][:, :t_prompt], want[lv].expand(2, -1))
        assert cont.audio[lv].shape == (2, 1, n)
        assert all(w.end > t_prompt for w in cont.windows[lv])  # nothing inside the prompt
    assert cont.info["prompt_seconds"] == 0.32 and cont.info["mode"] == "continue"

    # upsample: given top codes, the levels below
    up = jb.upsample(anc.codes[2], artist="alan jackson", seed=0, progress=False)
    assert torch.equal(up.codes[2], anc.codes[2]) and set(up.windows) == {1, 0}
    for lv in range(3):
        assert up.audio[lv].shape == (1, 1, n)
    # the same seed and labels draw the same upsampled codes
    again = jb.upsample(anc.codes[2], artist="alan jackson", seed=0, progress=False)
    assert torch.equal(again.codes[0], up.codes[0])


def test_seeds_reproduce_and_default_seed_is_recorded(jb):
    kw = dict(artist="alan jackson", duration_seconds=0.4, levels=("top",), progress=False)
    a, b, c = (jb.generate(seed=s, **kw) for s in (5, 5, 6))
    assert torch.equal(a.codes[2], b.codes[2]) and not torch.equal(a.codes[2], c.codes[2])
    d = jb.generate(**kw)
    assert torch.equal(jb.generate(seed=d.info["seed"], **kw).codes[2], d.codes[2])


# ---------------------------------------------------------------------------------------------
# validation before work


class _Never:
    n_ctx = 32

    def sample_window(self, *a, **k):
        raise AssertionError("sampling started before the inputs were validated")


def test_unknown_names_are_one_error_with_close_matches(jb):
    never = {lv: _Never() for lv in (2, 1, 0)}
    with pytest.raises(ConfigError) as e:
        jb.generate(artist="Alan Jaksen", genre="contry", duration_seconds=1, samplers=never)
    msg = str(e.value)
    assert "'alan jackson'" in msg and "'country'" in msg and "artist" in msg and "genre" in msg
    with pytest.raises(ConfigError, match="no close match"):
        jb.generate(artist="Zzyzx Qwv", duration_seconds=1, samplers=never)


def test_inputs_are_checked_before_sampling(jb):
    never = {lv: _Never() for lv in (2, 1, 0)}
    with pytest.raises(ConfigError, match="complete top level"):
        jb.generate(duration_seconds=1, levels=("middle",), samplers=never)
    with pytest.raises(ConfigError, match="timing"):
        jb.generate(duration_seconds=40, samplers=never)  # the top prior covers < 30 s
    with pytest.raises(ConfigError, match="multiple of the upsampling ratio"):
        jb.generate(duration_seconds=1, hop_fraction={"middle": 0.2}, samplers=never)
    with pytest.raises(ConfigError, match="longer than the prompt"):
        jb.generate_from_audio(torch.zeros(2560), duration_seconds=0.3, samplers=never)
    with pytest.raises(ConfigError, match="unknown level"):
        jb.generate(duration_seconds=1, levels=("treble",), samplers=never)
    with pytest.raises(ConfigError, match="temperature"):
        jb.generate(duration_seconds=1, temperature=(0.9, 0.9), samplers=never)


def test_lyrics_are_cleaned_and_dropped_characters_counted(jb):
    out = jb.generate(
        lyrics="Hello @ world {}|", duration_seconds=0.3, levels=("top",), seed=0, progress=False
    )
    assert out.info["lyrics"] == "Hello  world " and out.info["lyrics_dropped"] == 4
    assert out.info["lyrics_dropped_chars"] == {"@": 1, "{": 1, "}": 1, "|": 1}
    assert out.windows[2][0].lyrics == "Hello  world "


# ---------------------------------------------------------------------------------------------
# the sampler: draws from the right distribution, hands back ordinary tensors


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.6, 0), (1.0, 5)])
def test_first_code_follows_the_tempered_filtered_softmax(jb, temperature, top_k):
    prior = jb.priors[1]
    upper = torch.randint(0, 32, (1, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[SR * 2, 0, prior.cfg.sample_length, 1, 2, -1]])
    with torch.no_grad():
        cond = prior.condition(labels, upper)
        logits = prior.logits(torch.zeros(1, 1, dtype=torch.long), cond=cond)[0, 0] / temperature
    if top_k:
        logits[logits < logits.topk(top_k).values[-1]] = -math.inf
    p = torch.softmax(logits, -1)
    n = 4000
    codes = sample_window(
        prior,
        n,
        cond,
        1,
        temperature=temperature,
        top_k=top_k,
        generator=torch.Generator().manual_seed(0),
    )
    freq = torch.bincount(codes[:, 0], minlength=32).float() / n
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n)
    if top_k:
        assert (freq[p == 0] == 0).all()


def test_sampled_codes_are_ordinary_tensors(jb):
    prior = jb.priors[2]
    with torch.no_grad():
        cond = prior.condition(
            torch.tensor([[SR * 2, 0, prior.cfg.sample_length, 1, 1, -1, *[5] * 16]])
        )
    codes = sample_window(prior, 2, cond, 6, generator=torch.Generator().manual_seed(0))
    assert not codes.is_inference() and codes.shape == (2, 6)
    emb = torch.nn.Embedding(32, 4)
    emb(codes).sum().backward()  # usable as a training input (e.g. distillation targets)
    assert emb.weight.grad is not None
    assert isinstance(ExactSampler(prior), LevelSampler)


# ---------------------------------------------------------------------------------------------
# persistence and the command line


def test_save_writes_wavs_codes_and_labels(jb, tmp_path):
    out = jb.generate(
        artist="alan jackson",
        lyrics=LYRICS,
        duration_seconds=0.3,
        n_samples=2,
        seed=0,
        progress=False,
    )
    paths = Jukebox.save(out, tmp_path / "run")
    names = sorted(p.name for p in paths)
    assert "level0_bottom_1.wav" in names and "level2_top_0.wav" in names
    assert "codes.safetensors" in names and "labels.json" in names
    x, sr = sf.read(tmp_path / "run" / "level0_bottom_0.wav")
    assert sr == SR and x.shape == (19 * 128,)
    meta = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert set(meta["windows"]) == {"top", "middle", "bottom"} and meta["seed"] == 0
    assert meta["windows"]["top"][0]["artist"] == "alan jackson"


def test_cli_sample_end_to_end(teacher_dir, tmp_path, capsys):
    out = tmp_path / "song"
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text(LYRICS, encoding="utf-8")
    rc = cli_main(
        [
            "sample",
            "--mode",
            "exact",
            "--teacher",
            str(teacher_dir),
            "--artist",
            "Alan Jackson",
            "--genre",
            "Country",
            "--lyrics_file",
            str(lyrics),
            "--seconds",
            "0.5",
            "--temperature",
            "0.98,0.99,0.99",
            "--top_k",
            "20",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    for name in ("level0_bottom.wav", "level1_middle.wav", "level2_top.wav"):
        x, sr = sf.read(out / name)
        assert sr == SR and x.shape == (31 * 128,)  # 0.5 s -> 31 top codes
    codes = load_tensors(out / "codes.safetensors")
    assert {k: v.shape for k, v in codes.items()} == {
        "level0": (1, 496),
        "level1": (1, 124),
        "level2": (1, 31),
    }
    meta = json.loads((out / "labels.json").read_text())
    assert meta["temperature"] == {"top": 0.98, "middle": 0.99, "bottom": 0.99}
    assert meta["windows"]["top"][0]["genres"] == ["country"]

    # continue from the bottom-level WAV, top level only
    cont = tmp_path / "cont"
    args = ["sample", "--teacher", str(teacher_dir), "--out", str(cont), "--no_progress"]
    prompt = ["--prompt", str(out / "level0_bottom.wav"), "--prompt_seconds", "0.2"]
    assert cli_main([*args, *prompt, "--seconds", "0.6", "--levels", "top"]) == 0
    c2 = load_tensors(cont / "codes.safetensors")
    assert set(c2) == {"level2"} and c2["level2"].shape == (1, 38)

    # upsample the first run's top codes
    up = tmp_path / "up"
    args = ["sample", "--teacher", str(teacher_dir), "--out", str(up), "--no_progress"]
    assert cli_main([*args, "--codes", str(out / "codes.safetensors"), "--seed", "2"]) == 0
    c3 = load_tensors(up / "codes.safetensors")
    assert torch.equal(c3["level2"], codes["level2"]) and c3["level0"].shape == (1, 496)

    # a user error is one line and exit code 2
    bad = [
        "sample",
        "--teacher",
        str(teacher_dir),
        "--out",
        str(tmp_path / "x"),
        "--artist",
        "Alan Jaxon",
    ]
    assert cli_main(bad) == 2
    captured = capsys.readouterr()
    assert "'alan jackson'" in captured.out + captured.err
    assert not (tmp_path / "x").exists()


def test_from_pretrained_loads_every_part(jb, teacher_dir):
    assert sorted(jb.priors) == [0, 1, 2] and sorted(jb.vocabs) == [0, 1, 2]
    assert jb.sample_rate == SR and jb.hop_lengths == (8, 32, 128)
    assert all(not p.training for p in jb.priors.values())
    with pytest.raises(FileNotFoundError):
        Jukebox.from_pretrained(teacher_dir / "top")
    np.testing.assert_equal(
        jb.vocabs[2].artist_id("ALAN JACKSON"), jb.vocabs[2].artists["alan jackson"]
    )
