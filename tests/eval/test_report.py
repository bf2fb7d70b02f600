"""The evaluation report on tiny models: ``evaluate`` + ``write_report`` end to end.

A tiny teacher (tiny_vqvae whose bottom level is fitted for a few seconds so true codes beat
random ones, random tiny_top_prior("single") and upsamplers) and untrained tiny categorical
students are written to folders; a tiny synth dataset at 8 kHz is the held-out data. One
evaluation with all four modes is shared by the checks: the files exist, report.html parses
with balanced tags and no URL, every <audio> holds a decodable WAV and every <img> a PNG,
metrics.json numbers are finite and where they should be, report.md shows the same headline
numbers. Also: the attention capture hook, t-SNE/PCA, and the command line.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from eval.alignment import attention_alignment, lyric_layer
from eval.clips import score_windows
from eval.embeddings import pca_2d, tsne_2d
from eval.evaluate import add_eval_args, evaluate, run_eval
from eval.tables import fmt
from student.base import Student
from student.config import tiny_student
from teacher.config import ConfigError
from teacher.data.labels import Vocab
from teacher.data.synth import SynthConfig, write_synth_dataset
from teacher.presets import tiny_top_prior, tiny_upsampler, tiny_vqvae
from teacher.prior.attention import AttnKind
from teacher.prior.model import Prior
from teacher.vqvae import VQVAE, losses

SR = 8000
MODES = ("exact", "accelerated", "hybrid", "speculative")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _fit_bottom_level(vq: VQVAE, clips: list[np.ndarray], steps: int = 150) -> VQVAE:
    """Init every codebook from data, then fit the bottom encoder/decoder briefly (~3 s): enough
    for the true codes to decode clearly better than random codes (ceiling above floor)."""
    rng = np.random.default_rng(0)

    def batch(n: int, length: int) -> torch.Tensor:
        rows = []
        for i in range(n):
            c = clips[i % len(clips)]
            o = int(rng.integers(0, len(c) - length))
            rows.append(c[o : o + length])
        return torch.from_numpy(np.stack(rows))[:, None]

    vq.train()
    with torch.no_grad():
        vq(batch(4, vq.cfg.sample_length))  # Jukebox init_k at every level
    block = vq.bottleneck.level_blocks[0]
    opt = torch.optim.Adam([*vq.encoders[0].parameters(), *vq.decoders[0].parameters()], 3e-3)
    for _ in range(steps):
        x = batch(4, 1024)
        q = block(vq.encoders[0](x), update=True)
        y = vq.decoders[0](q.x)
        spec = losses.multispectral_loss(x, y, (256, 128, 64), (32, 16, 8), (128, 64, 32))
        loss = 10 * (y - x).pow(2).mean() + spec.mean() + q.commit_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vq.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    data, teacher, students = root / "data", root / "teacher", root / "students"
    write_synth_dataset(data, SynthConfig(n_songs=3, seconds=2.0, sample_rate=SR), progress=False)
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    clips = [sf.read(data / r["file"], dtype="float32")[0] for r in rows]
    torch.manual_seed(0)
    _fit_bottom_level(VQVAE(tiny_vqvae(SR)), clips).save_pretrained(teacher / "vqvae")
    vocab = Vocab.build([r["artist"] for r in rows], [r["genre"] for r in rows])
    cfgs = {
        "top": tiny_top_prior("single"),
        "middle": tiny_upsampler(1),
        "bottom": tiny_upsampler(0),
    }
    for name, cfg in cfgs.items():
        Prior(cfg).eval().save_pretrained(teacher / name)
        vocab.save(str(teacher / name))
    for level, name in ((1, "middle"), (0, "bottom")):
        prior = Prior.from_pretrained(teacher / name)
        Student.from_teacher(prior, tiny_student(level)).save_pretrained(students / name)
    return {"root": root, "data": data, "teacher": teacher, "students": students}


@pytest.fixture(scope="module")
def report(folders) -> dict:
    out = folders["root"] / "report"
    result = evaluate(folders["teacher"], folders["students"], folders["data"], out, n_clips=2)
    return {
        "result": result,
        "out": out,
        "html": (out / "report.html").read_text(encoding="utf-8"),
        "md": (out / "report.md").read_text(encoding="utf-8"),
        "json": json.loads((out / "metrics.json").read_text()),
    }


class _Page(HTMLParser):
    """Checks tag balance and collects <audio>, <img> and every src/href."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.audio: list[dict] = []
        self.img: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "audio":
            self.audio.append(a)
        if tag == "img":
            self.img.append(a)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def _numbers(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(x, int | float) and not isinstance(x, bool):
        yield path, x


# ---------------------------------------------------------------------------------------------
# the report


def test_report_files_exist(report):
    out = report["out"]
    for name in ("report.html", "report.md", "metrics.json"):
        assert (out / name).stat().st_size > 0
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert figures == {"timing", "pareto", "spectrograms", "attention", "embeddings"}
    wavs = sorted((out / "audio").glob("*.wav"))
    assert len(wavs) == len(report["result"].audio) >= 1 + 3 + 4 + 1 + 4
    assert report["result"].files["html"] == out / "report.html"


def test_html_parses_balanced_and_offline(report):
    page = report["html"]
    p = _parse(page)
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert "http://" not in page and "https://" not in page
    for link in p.links:
        assert link.startswith(("data:", "#")), link[:40]
    # every section of the issue is on the page
    for anchor in ("setup", "timing", "reconstruction", "students", "modes", "spectrograms",
                   "audio", "attention", "embeddings"):  # fmt: skip
        assert f"id='{anchor}'" in page


def test_every_audio_element_holds_a_wav(report):
    p = _parse(report["html"])
    assert len(p.audio) == len(report["result"].audio)
    prefix = "data:audio/wav;base64,"
    for a in p.audio:
        assert "controls" in a and a["src"].startswith(prefix)
        data = base64.b64decode(a["src"][len(prefix) :], validate=True)
        x, sr = sf.read(io.BytesIO(data))
        assert sr == SR and len(x) > 0 and np.isfinite(x).all()
    names = list(report["result"].audio)
    assert names[0] == "ground truth"
    assert "VQ-VAE reconstruction (bottom)" in names
    assert all(f"mode: {m}" in names and f"song: {m}" in names for m in MODES)


def test_every_image_is_a_png(report):
    from matplotlib.image import imread

    p = _parse(report["html"])
    assert len(p.img) == 5
    prefix = "data:image/png;base64,"
    for img in p.img:
        data = base64.b64decode(img["src"][len(prefix) :], validate=True)
        assert img["src"].startswith(prefix) and data.startswith(PNG_MAGIC) and img["alt"]
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100


def test_metrics_are_finite_and_where_they_should_be(report):
    m = report["json"]
    numbers = list(_numbers(m))
    assert numbers and all(math.isfinite(v) for _, v in numbers), [
        p for p, v in numbers if not math.isfinite(v)
    ]
    setup = m["setup"]
    assert setup["modes"] == list(MODES) and not setup["modes_skipped"]
    assert setup["machine"]["versions"]["torch"] and setup["seeds"]["clips"] == 0
    hashes = setup["config_hashes"]
    assert set(hashes) == {"vqvae", "prior_top", "prior_middle", "prior_bottom",
                           "student_middle", "student_bottom"}  # fmt: skip
    assert all(len(h) == 64 for h in hashes.values())
    assert "VQ-VAE encoder features" in setup["fd_vq"]["name"]
    assert set(setup["drafts"]) == {"middle", "bottom"}  # what auto chose, per level
    assert set(setup["drafts"].values()) <= {"incremental", "window"}

    # reconstruction: every level, codebook statistics in range
    for level in ("top", "middle", "bottom"):
        r = m["reconstruction"][level]
        assert 1 <= r["codebook"]["used"] <= 32 and 0 < r["codebook"]["fraction"] <= 1
        assert 1 <= r["codebook"]["perplexity"] <= r["codebook"]["used"] + 1e-6
    nll = m["top_prior"]["real_codes_nll_bits"]
    assert 0 < nll < 2 * math.log2(32)

    # ceiling (true codes decoded) beats floor (random codes decoded) at the bottom level
    ceiling, floor = m["bounds"]["ceiling"], m["bounds"]["floor"]
    assert m["bounds"]["level"] == "bottom"
    assert ceiling["sc_db"] < floor["sc_db"] - 1.0
    assert ceiling["mrstft"] < floor["mrstft"]
    assert ceiling["fd_vq"] >= 0 and floor["fd_vq"] >= 0

    # teacher vs students per upsampling level
    for level in ("middle", "bottom"):
        entry = m["upsampling"][level]
        assert set(entry["samplers"]) == {"exact", "student", "speculative"}
        assert entry["ceiling"]["token_accuracy"] == 1.0 and entry["real_codes_nll_bits"] > 0
        for s in entry["samplers"].values():
            assert 0 <= s["token_accuracy"] <= 1 and s["nll_bits"] > 0
            assert s["speed"]["wall_s"] > 0 and s["speed"]["tokens_per_s"] > 0
            assert s["speedup"] > 0 and s["speed"]["rtf"] > 0
        student = entry["samplers"]["student"]
        assert student["kl_per_token"] >= -1e-6
        assert 0 < student["entropy_per_token"] <= math.log(32) + 1e-5
        spec = entry["samplers"]["speculative"]["speculative"]
        assert 0 <= spec["acceptance_rate"] <= 1 and spec["tokens_per_pass"] >= 1
        assert entry["samplers"]["exact"]["speedup"] == 1.0

    # the four modes from the true top codes, and end to end
    assert set(m["modes"]) == set(MODES)
    assert m["modes"]["hybrid"]["level_modes"] == {"middle": "exact", "bottom": "student"}
    assert m["modes"]["speculative"]["level_modes"] == {"middle": "speculative",
                                                        "bottom": "speculative"}  # fmt: skip
    for mode in m["modes"].values():
        assert mode["speedup"] > 0 and mode["fd_vq"] >= 0
    e2e = m["end_to_end"]
    assert set(e2e["modes"]) == set(MODES) and e2e["amdahl_bound"] > 1
    assert 0 < e2e["distilled_share"] < 1
    for mode in e2e["modes"].values():
        assert set(mode["stages"]) == {"top", "middle", "bottom"} and mode["speedup"] > 0
    assert e2e["modes"]["exact"]["speedup"] == 1.0

    # figures' inputs: the alignment of a real window and the embedding map
    assert m["attention"]["kind"] == "prime" and m["attention"]["shape"] == [16, 32]
    groups = {p["group"] for p in m["embeddings"]["points"]}
    assert groups == {"artist", "genre"} and m["embeddings"]["method"].startswith("t-SNE")


def test_markdown_and_html_show_the_headline_numbers(report):
    headline = report["json"]["headline"]
    assert "Amdahl bound (free upsampling)" in headline
    assert all(f"{m}: upsampling speedup" in headline for m in MODES)
    for key, value in headline.items():
        assert f"| {key} | {fmt(value)} |" in report["md"]
        assert f"<td>{html.escape(key)}</td><td>{fmt(value)}</td>" in report["html"]
    # the same tables: the bottom level's reconstruction row reads the same in both
    r = report["json"]["reconstruction"]["bottom"]
    row = f"| bottom | {fmt(r['sc_db'])} | {fmt(r['mrstft'])} | {fmt(r['mel_l1'])} |"
    assert row in report["md"]
    assert "![quality vs speed Pareto plot](figures/pareto.png)" in report["md"]
    drafts = ", ".join(f"{k} {v}" for k, v in report["json"]["setup"]["drafts"].items())
    assert drafts.count(" ") == 3 and f"| speculative drafts | {drafts} |" in report["md"]


def test_a_bare_result_still_writes_a_valid_report(tmp_path):
    """No students, no modes, no top prior: the sections left say so; metrics.json comes last."""
    from eval.report import write_report
    from eval.results import EvalResult

    x = 0.1 * np.sin(np.arange(2048) / 5.0).astype(np.float32)
    result = EvalResult(
        metrics={"setup": {"n_clips": 2}, "notes": ["nothing else ran"]},
        audio={"ground truth": (SR, x)},
        spectrograms=["ground truth"],
        notes=["a note"],
    )
    files = write_report(result, tmp_path)
    page = files["html"].read_text()
    p = _parse(page)
    assert not p.errors and not p.stack and len(p.audio) == 1 and len(p.img) == 1
    assert "no lyrics" in page and "nothing else ran" in page and "a note" in page
    mtimes = {k: files[k].stat().st_mtime_ns for k in ("html", "md", "json")}
    assert mtimes["json"] >= max(mtimes["html"], mtimes["md"])
    assert json.loads(files["json"].read_text())["headline"] == {}


# ---------------------------------------------------------------------------------------------
# pieces


@pytest.mark.parametrize("style", ["single", "encoder"])
def test_attention_capture_returns_probabilities_over_keys(style):
    torch.manual_seed(0)
    prior = Prior(tiny_top_prior(style)).eval()
    layer = lyric_layer(prior)
    kind = prior.cfg.transformer.kinds[layer]
    assert kind == (AttnKind.PRIME if style == "single" else AttnKind.CROSS)
    attn = prior.prior.transformer._attn_mods[layer].attn
    cfg = prior.cfg
    codes = torch.randint(0, cfg.l_bins, (2, cfg.n_ctx))
    labels = torch.tensor(
        [[2 * 8000, 0, cfg.sample_length, 1, 1, -1] + [5] * cfg.n_tokens] * 2, dtype=torch.long
    )
    plain = prior.logits(codes, labels)
    attn.capture = True
    try:
        captured = prior.logits(codes, labels)
        probs = attn.last_probs
    finally:
        attn.capture = False
    # the manual softmax path gives the same logits as SDPA
    torch.testing.assert_close(captured, plain, atol=1e-4, rtol=1e-4)
    n = cfg.n_tokens
    if style == "single":
        assert probs.shape == (2, 2, n + cfg.n_ctx, attn.prime_keys)  # (B, H, S, P)
        # lyric queries are causal: query 0 sees key 0 only
        assert torch.all(probs[:, :, 0, 1:] == 0)
    else:
        assert probs.shape == (2, 2, cfg.n_ctx, n)  # (B, H, T, T_enc)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert (probs >= 0).all()

    # the alignment reads the music rows of the lyric keys and leaves the hook off
    al = attention_alignment(prior, codes[:1], labels[:1])
    assert al.probs.shape == (n, cfg.n_ctx) and not attn.capture and attn.last_probs is None
    assert np.all(al.probs >= 0) and len(al.chars) == n and len(set(al.chars)) == 1


def test_alignment_is_none_without_lyrics():
    prior = Prior(tiny_top_prior(None)).eval()
    assert lyric_layer(prior) is None
    assert attention_alignment(prior, torch.zeros(1, 8, dtype=torch.long), None) is None


def test_tsne_separates_clusters_and_pca_handles_few_points():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, (10, 8))
    b = rng.normal(3, 0.1, (10, 8))
    y = tsne_2d(np.concatenate([a, b]), n_iter=300)
    assert y.shape == (20, 2) and np.isfinite(y).all()
    within = max(np.ptp(y[:10], axis=0).max(), np.ptp(y[10:], axis=0).max())
    between = np.linalg.norm(y[:10].mean(0) - y[10:].mean(0))
    assert between > within
    np.testing.assert_array_equal(tsne_2d(np.concatenate([a, b]), n_iter=300), y)  # seeded
    p = pca_2d(np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]))
    assert p.shape == (3, 2) and np.allclose(np.abs(p[:, 0]), [1, 0, 1]) and np.allclose(p[:, 1], 0)
    with pytest.raises(ValueError, match="at least 5"):
        tsne_2d(a[:4])


def test_score_windows_cover_the_codes():
    assert score_windows(20, 32, 4) == [(0, 20)]
    assert score_windows(64, 32, 4) == [(0, 32), (32, 64)]
    assert score_windows(72, 32, 4) == [(0, 32), (32, 64), (40, 72)]


def test_command_line_skips_modes_without_students(folders, tmp_path):
    """Without students only exact runs; the skipped mode is named with its reason."""
    import argparse

    out = tmp_path / "cli"
    parser = add_eval_args(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--teacher", str(folders["teacher"]), "--data", str(folders["data"]), "--out",
         str(out), "--n_clips", "2", "--seconds", "0.25", "--modes", "exact,accelerated"]
    )  # fmt: skip
    assert run_eval(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["setup"]["modes"] == ["exact"]
    assert "accelerated" in m["setup"]["modes_skipped"]
    assert "student" in m["setup"]["modes_skipped"]["accelerated"]
    assert set(m["upsampling"]["bottom"]["samplers"]) == {"exact"}
    assert "mode accelerated skipped" in (out / "report.md").read_text()
    assert _parse((out / "report.html").read_text()).audio

    with pytest.raises(ConfigError, match="unknown mode"):
        evaluate(folders["teacher"], None, folders["data"], modes=("fast",))
    with pytest.raises(ConfigError, match="n_clips"):
        evaluate(folders["teacher"], None, folders["data"], n_clips=1)
