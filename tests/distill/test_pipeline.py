"""The fast pipeline end to end on a tiny random teacher folder (VQ-VAE + lyric top prior + two
upsamplers, 8 kHz) with random tiny students: every mode gives audio of the requested length
with labels and lyrics, keeps a prompt's codes, upsamples; a student samples a level in K passes
whatever its length; missing students are one clear error; level modes parse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from distill.pipeline import (
    FastGenerationResult,
    FastJukebox,
    StudentSampler,
    parse_level_modes,
    parse_students,
    resolve_level_modes,
)
from distill.speculative import SpeculativeSampler, clear_window_costs, student_sample
from student.base import Student
from student.config import tiny_student
from teacher.config import ConfigError
from teacher.data.labels import Vocab
from teacher.generate.jukebox import Jukebox
from teacher.presets import tiny_top_prior, tiny_upsampler, tiny_vqvae
from teacher.prior.model import Prior
from teacher.vqvae import VQVAE

SR = 8000
ARTISTS = ["Alan Jackson", "Ella Fitzgerald"]
GENRES = ["Country", "Jazz"]
LYRICS = "I met a traveller from an antique land"
K = 3  # tiny_student's stages
TOP = 31  # 0.5 s -> 31 top codes (3968 samples)
N_AUDIO = TOP * 128


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomise(model: torch.nn.Module, seed: int, scale: float = 0.15) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "ln" in name and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """TEACHER/{vqvae,top,middle,bottom} + TEACHER/students/{middle,bottom}."""
    root = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    VQVAE(tiny_vqvae(SR)).save_pretrained(root / "vqvae")
    vocab = Vocab.build(ARTISTS, GENRES)
    cfgs = {
        "top": tiny_top_prior("single"),
        "middle": tiny_upsampler(1),
        "bottom": tiny_upsampler(0),
    }
    priors = {}
    for i, (name, cfg) in enumerate(cfgs.items()):
        priors[name] = _randomise(Prior(cfg), seed=i)
        priors[name].save_pretrained(root / name)
        vocab.save(str(root / name))
    for level, name in ((1, "middle"), (0, "bottom")):
        student = Student.from_teacher(priors[name], tiny_student(level))
        _randomise(student, seed=10 + level, scale=0.3).save_pretrained(root / "students" / name)
    return root


@pytest.fixture(scope="module")
def fj(teacher_dir):
    return FastJukebox.from_pretrained(teacher_dir)


COMMON = dict(artist="Alan Jackson", genre="country", lyrics=LYRICS, progress=False)


# ---------------------------------------------------------------------------------------------
# modes


def test_parse_level_modes():
    assert parse_level_modes("middle=exact,bottom=student") == {
        "middle": "exact",
        "bottom": "student",
    }
    assert parse_level_modes(" 0 = speculative ") == {"bottom": "speculative"}
    for bad, msg in [
        ("middle", "LEVEL=VALUE"),
        ("middle=fast", "unknown mode"),
        ("treble=exact", "unknown level"),
        ("middle=exact,1=student", "twice"),
        (",", "nothing"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_level_modes(bad)
    assert parse_students("out/") == "out/"
    assert parse_students("middle=a,bottom=b") == {"middle": "a", "bottom": "b"}


def test_modes_resolve_per_level():
    assert resolve_level_modes("exact", None) == {2: "exact", 1: "exact", 0: "exact"}
    assert resolve_level_modes("accelerated", None) == {2: "exact", 1: "student", 0: "student"}
    assert resolve_level_modes("speculative", None)[0] == "speculative"
    assert resolve_level_modes("hybrid", "middle=exact,bottom=student") == {
        2: "exact",
        1: "exact",
        0: "student",
    }
    # level_modes overrides any mode's default
    assert resolve_level_modes("accelerated", {"middle": "speculative"})[1] == "speculative"
    with pytest.raises(ConfigError, match="hybrid mode needs"):
        resolve_level_modes("hybrid", None)
    with pytest.raises(ConfigError, match="top level is always"):
        resolve_level_modes("exact", "top=student")
    with pytest.raises(ConfigError, match="unknown mode"):
        resolve_level_modes("turbo", None)


@pytest.mark.parametrize(
    "mode, level_modes, want",
    [
        ("exact", None, ("exact", "exact")),
        ("accelerated", None, ("student", "student")),
        ("hybrid", "middle=exact,bottom=student", ("exact", "student")),
        ("speculative", None, ("speculative", "speculative")),
    ],
)
def test_every_mode_gives_audio_of_the_requested_length(fj, mode, level_modes, want):
    out = fj.generate(
        duration_seconds=0.5, mode=mode, level_modes=level_modes, gamma=3, seed=0, **COMMON
    )
    assert isinstance(out, FastGenerationResult)
    for lv in range(3):
        assert out.codes[lv].shape == (1, N_AUDIO // fj.jukebox.hop_lengths[lv])
        assert out.audio[lv].shape == (1, 1, N_AUDIO)
        assert torch.isfinite(out.audio[lv]).all()
    # labels and lyrics as in exact mode: every teacher window is labelled, lyrics at the top
    assert out.info["lyrics"] and out.windows[2][0].lyrics.strip()
    assert out.windows[2][0].artist == "alan jackson"
    assert out.info["sampling_mode"] == mode
    assert out.info["level_modes"] == {"top": "exact", "middle": want[0], "bottom": want[1]}
    for name, m in zip(("middle", "bottom"), want):
        st = out.stats[name]
        assert (
            st.mode == m
            and st.seconds > 0
            and st.codes == out.codes[("bottom", "middle").index(name)].numel()
        )
        if m == "student":
            assert st.windows == 1 and st.student_passes == K  # the whole level in one call
            assert len(out.windows[("bottom", "middle").index(name)]) == 1
        elif m == "speculative":
            sp = st.speculative
            assert sp.windows == st.windows > 1 and sp.rounds >= sp.teacher_passes > 0
            assert sp.tokens == st.codes and 0 < sp.acceptance_rate < 1
            assert sp.teacher_passes < st.codes  # fewer teacher passes than codes
            assert out.info["gamma"][name] == 3
            assert out.info["draft"][name] in ("incremental", "window")
        else:
            assert st.speculative is None and st.student_passes == 0
    assert out.stats["top"].mode == "exact" and out.stats["top"].windows == 1
    assert json.dumps(out.info["stats"])  # JSON-ready for labels.json


def test_the_draft_is_chosen_per_call_and_recorded(fj):
    top = {2: torch.randint(0, 32, (1, 4))}
    kw = dict(mode="speculative", seed=5, levels=("middle",), progress=False)
    for draft in ("incremental", "window"):
        out = fj.upsample(top, draft=draft, **kw)
        assert out.info["draft"] == {"middle": draft}
        assert out.stats["middle"].speculative.tokens == out.codes[1].numel()
    with pytest.raises(ConfigError, match="draft must be one of"):
        fj.upsample(top, draft="fast", **kw)
    with pytest.raises(ConfigError, match="draft must be one of"):  # checked in every mode
        fj.upsample(top, draft="fast", mode="exact", levels=("middle",), progress=False)


def test_the_draft_precision_is_chosen_per_call_and_recorded(fj):
    """``draft_dtype``: ``keep`` drafts with the loaded fp32 student, a dtype with a cast copy;
    labels.json records it per level; a bad one is refused before anything samples."""
    top = {2: torch.randint(0, 32, (1, 4))}
    kw = dict(mode="speculative", seed=5, levels=("middle",), progress=False, draft="window")
    for given, want in (("keep", "float32"), ("bfloat16", "bfloat16")):
        out = fj.upsample(top, draft_dtype=given, **kw)
        assert out.info["draft_dtype"] == {"middle": want}
        assert out.stats["middle"].speculative.tokens == out.codes[1].numel()
    with pytest.raises(ConfigError, match="draft_dtype must be"):
        fj.upsample(top, draft_dtype="int8", mode="exact", levels=("middle",), progress=False)


def test_gamma_auto_leaves_windows_to_the_teacher_across_calls(fj, tmp_path):
    """``gamma="auto"``'s measurements outlive a call (per process and batch size): once drafting
    was measured slower than the teacher's steps, a later call's windows are exact mode's own
    draws, and labels.json counts them."""
    top = {2: torch.randint(0, 32, (1, 4))}
    kw = dict(seed=5, levels=("middle",), progress=False)
    spec = dict(mode="speculative", gamma="auto", draft="window", **kw)
    clear_window_costs()
    first = fj.upsample(top, **spec)
    sp = first.stats["middle"].speculative
    assert sp.exact_windows == 0 and sp.tokens + sp.exact_codes == first.codes[1].numel()
    costs = SpeculativeSampler(fj.jukebox.priors[1], fj.students[1], "auto", draft="window").costs(
        1
    )
    assert costs.speculative is not None
    costs.speculative = 1e9  # drafting measured slower than any teacher step
    second = fj.upsample(top, **spec)
    sp = second.stats["middle"].speculative
    assert sp.exact_windows == sp.windows >= 1 and sp.tokens == 0
    assert sp.exact_codes == second.codes[1].numel()
    assert torch.equal(second.codes[1], fj.upsample(top, mode="exact", **kw).codes[1])
    second.save(tmp_path)
    meta = json.loads((tmp_path / "labels.json").read_text())
    assert meta["gamma"] == {"middle": "auto"}
    assert meta["stats"]["middle"]["speculative"]["exact_windows"] == sp.windows


def test_exact_mode_is_the_teachers_own_sampling(fj):
    kw = dict(duration_seconds=0.25, n_samples=2, seed=4, temperature=0.9, **COMMON)
    ours = fj.generate(mode="exact", **kw)
    ref = fj.jukebox.generate(**kw)
    assert all(torch.equal(ours.codes[lv], ref.codes[lv]) for lv in range(3))


@pytest.mark.parametrize("mode", ["accelerated", "speculative", "hybrid"])
def test_continue_mode_keeps_the_prompt_codes(fj, mode):
    prompt = 0.3 * torch.randn(1, 1, 1280, generator=torch.Generator().manual_seed(0))
    out = fj.generate_from_audio(
        prompt,
        duration_seconds=0.5,
        n_samples=2,
        mode=mode,
        level_modes="middle=student,bottom=speculative" if mode == "hybrid" else None,
        seed=1,
        **COMMON,
    )
    with torch.no_grad():
        want = fj.jukebox.vqvae.encode(prompt)
    for lv in range(3):
        n_prompt = 1280 // fj.jukebox.hop_lengths[lv]
        assert out.codes[lv].shape == (2, N_AUDIO // fj.jukebox.hop_lengths[lv])
        assert torch.equal(out.codes[lv][:, :n_prompt], want[lv].expand(2, -1))
        assert out.audio[lv].shape == (2, 1, N_AUDIO)
    assert out.info["mode"] == "continue" and out.info["prompt_seconds"] == 0.16
    # the rows were sampled independently after the prompt
    assert not torch.equal(out.codes[0][0], out.codes[0][1])


def test_upsample_and_seeds(fj, tmp_path):
    top = torch.randint(32, (1, TOP), generator=torch.Generator().manual_seed(0))
    a = fj.upsample(top, mode="accelerated", seed=5, artist="ella fitzgerald", progress=False)
    b = fj.upsample(top, mode="accelerated", seed=5, artist="ella fitzgerald", progress=False)
    assert torch.equal(a.codes[2], top) and set(a.windows) == {1, 0}
    assert torch.equal(a.codes[0], b.codes[0])  # a seed reproduces student sampling
    assert a.audio[0].shape == (1, 1, N_AUDIO)
    c = fj.upsample(top, mode="speculative", seed=5, levels=("middle",), progress=False)
    d = fj.upsample(top, mode="speculative", seed=5, levels=("middle",), progress=False)
    assert torch.equal(c.codes[1], d.codes[1]) and 0 not in c.codes
    assert set(c.stats) == {"middle"}
    paths = c.save(tmp_path)
    meta = json.loads((tmp_path / "labels.json").read_text())
    assert meta["sampling_mode"] == "speculative"
    assert meta["stats"]["middle"]["speculative"]["teacher_passes"] > 0
    assert any(p.name.endswith(".wav") for p in paths)


# ---------------------------------------------------------------------------------------------
# students


def test_a_student_samples_a_level_in_K_passes_whatever_its_length(fj):
    student = fj.students[0]
    calls = []
    hooks = [s.register_forward_hook(lambda *a: calls.append(1)) for s in student.stages]
    try:
        for length in (32, 1024):  # 8 and 256 upper codes
            calls.clear()
            upper = torch.randint(32, (1, length // 4), generator=torch.Generator().manual_seed(1))
            labels = torch.tensor([[8000, 0, 256, 1, 1, -1]])
            sampler = StudentSampler(student)
            out = sampler.sample_window(length, torch.zeros(1, 0, dtype=torch.long), labels, upper)
            assert out.shape == (1, length) and len(calls) == K == sampler.passes
        # chunked for memory: K passes per chunk
        calls.clear()
        sampler = StudentSampler(student, chunk_size=256)
        prefix = torch.randint(32, (1, 100))
        out = sampler.sample_window(1024, prefix, labels, upper)
        assert torch.equal(out[:, :100], prefix) and len(calls) == K * 4 == sampler.passes
    finally:
        for h in hooks:
            h.remove()
    # end to end: a twice longer song still costs K passes per student level
    for seconds in (0.25, 0.5):
        out = fj.generate(duration_seconds=seconds, mode="accelerated", seed=0, **COMMON)
        assert out.stats["bottom"].student_passes == K and out.stats["middle"].student_passes == K


def test_the_student_prefix_is_forced_at_every_stage(fj):
    student = fj.students[1]
    g = torch.Generator().manual_seed(0)
    upper = torch.randint(32, (2, 16), generator=g)
    labels = torch.tensor([[8000, 0, 256, 1, 1, -1]]).expand(2, -1)
    prefix = torch.randint(32, (2, 20), generator=g)
    out = StudentSampler(student).sample_window(
        64, prefix, labels, upper, torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        cond = student.condition(upper, labels)
        want = student_sample(student, cond, prefix, torch.Generator().manual_seed(3)).codes
    assert torch.equal(out, want) and torch.equal(out[:, :20], prefix)
    # the prefix matters: stage 1 onwards read it
    other = StudentSampler(student).sample_window(
        64, (prefix + 1) % 32, labels, upper, torch.Generator().manual_seed(3)
    )
    assert not torch.equal(other[:, 20:], out[:, 20:])


def test_an_unlabelled_student_ignores_the_teachers_labels(fj):
    prior = fj.jukebox.priors[0]
    student = _randomise(Student.from_teacher(prior, tiny_student(0, labels=False)), 3, 0.3)
    labels = torch.tensor([[8000, 0, 256, 1, 1, -1]])  # built for the labelled teacher
    upper = torch.randint(32, (1, 8))
    empty = torch.zeros(1, 0, dtype=torch.long)
    assert StudentSampler(student).sample_window(32, empty, labels, upper).shape == (1, 32)
    sp = SpeculativeSampler(prior, student, gamma=2)
    assert sp.sample_window(32, empty, labels, upper).shape == (1, 32)


def test_missing_students_are_one_clear_error(teacher_dir, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    fj = FastJukebox.from_pretrained(teacher_dir, students=empty)
    assert fj.students == {}
    with pytest.raises(ConfigError) as err:
        fj.generate(duration_seconds=0.25, mode="accelerated", **COMMON)
    msg = str(err.value)
    assert "middle" in msg and "bottom" in msg and str(empty / "bottom") in msg
    with pytest.raises(ConfigError, match=r"level\(s\) bottom"):
        fj.generate(duration_seconds=0.25, mode="hybrid", level_modes="bottom=student", **COMMON)
    # levels not sampled need no student; exact mode needs none
    fj.generate(duration_seconds=0.25, mode="accelerated", levels=("top",), **COMMON)
    fj.generate(duration_seconds=0.25, mode="exact", levels=("top", "middle"), **COMMON)
    with pytest.raises(FileNotFoundError, match="no student for the middle level"):
        FastJukebox.from_pretrained(teacher_dir, students={"middle": empty})
    with pytest.raises(FileNotFoundError, match="students folder"):
        FastJukebox.from_pretrained(teacher_dir, students=tmp_path / "absent")


def test_students_load_from_distill_exports_and_per_level_folders(teacher_dir, tmp_path):
    # distill.train writes OUTPUT_DIR/student; a students folder may hold such output folders
    for name in ("middle", "bottom"):
        shutil.copytree(teacher_dir / "students" / name, tmp_path / "runs" / name / "student")
    fj = FastJukebox.from_pretrained(teacher_dir, students=tmp_path / "runs")
    assert set(fj.students) == {0, 1}
    one = FastJukebox.from_pretrained(
        teacher_dir, students={"bottom": tmp_path / "runs" / "bottom"}
    )
    assert set(one.students) == {0}
    out = one.generate(
        duration_seconds=0.25, mode="hybrid", level_modes="bottom=student", seed=0, **COMMON
    )
    assert out.stats["bottom"].mode == "student" and out.stats["middle"].mode == "exact"
    # a student must replace the level it is given for
    jb = Jukebox.from_pretrained(teacher_dir)
    with pytest.raises(ConfigError, match="distilled for level 0"):
        FastJukebox(jb, {"middle": fj.students[0]})


def test_students_sample_long_levels_in_memory_bounded_chunks(teacher_dir, monkeypatch):
    """Without a chunk size a student draws at most what fits the memory budget per call
    (3 · B · chunk · l_bins fp32 values): a tiny budget gives several calls and the same
    kind of output as an explicit chunk size of that many codes."""
    import distill.pipeline as pipeline

    assert pipeline.auto_chunk(1, 2048, 4, budget=256 << 20) == 10920
    assert pipeline.auto_chunk(16, 2048, 4, budget=256 << 20) == 680
    assert pipeline.auto_chunk(64, 2048, 4, budget=1) == 4  # at least one upper code
    fj = FastJukebox.from_pretrained(teacher_dir, device="cpu")
    student = fj.students[0]
    cfg = student.cfg
    upper = torch.randint(0, cfg.l_bins, (1, 64))
    labels = torch.tensor([[8000, 0, 256, 1, 1, -1]])
    empty = torch.zeros(1, 0, dtype=torch.long)
    monkeypatch.setattr(pipeline, "STUDENT_MEMORY_BYTES", 3 * 4 * cfg.l_bins * 40)  # 40 codes
    auto = StudentSampler(student)
    g = torch.Generator().manual_seed(0)
    out = auto.sample_window(256, empty, labels, upper, generator=g)
    assert out.shape == (1, 256) and auto.passes == cfg.n_stages * 7  # ceil(256 / 40) chunks
    explicit = StudentSampler(student, chunk_size=40)
    g = torch.Generator().manual_seed(0)
    again = explicit.sample_window(256, empty, labels, upper, generator=g)
    assert torch.equal(out, again)
