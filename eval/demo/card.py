"""What the shipped demo models measure: the numbers of their model card and the targets the
test on the shipped models holds them to (issue 14), measured one way for both.

:func:`measure` renders held-out synth songs (the training recipe's synth config under the
held-out seed, never trained on), crops ``n_clips`` clips and measures, with the musicality
measures of :mod:`eval.musicality` (pyin pitch agreement with each clip's own ground truth,
voiced fraction) and the MR-STFT distance to the ground truth:

* ``vqvae_top``: the VQ-VAE's top-level reconstruction (the top codes carry the melody);
* per upsampling mode (``exact``, ``accelerated``, ``speculative``): the clips' TRUE top codes
  upsampled to the bottom level at the default temperatures and decoded;
* ``ceiling`` / ``floor``: the true bottom codes decoded / random bottom codes decoded;
* ``songs``: songs generated from nothing (top prior, exact) with the held-out songs' labels,
  their voiced fraction against the held-out ground truth's;
* ``kl``: each student's reverse KL to the teacher per token (nats, temperature 1) on its own
  samples given the true upper codes (:func:`eval.runner.student_kl`).

:func:`check_targets` turns the numbers into the targets' verdicts (:data:`TARGETS`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.musicality import musicality, pitch_track

#: the targets of the shipped models (issue 14): name -> what it means
TARGETS = {
    "vqvae_top_pitch": "VQ-VAE top-level reconstruction: pitch agreement >= 0.6",
    "exact_pitch": "exact upsampling of the true top codes: pitch agreement >= 0.5",
    "exact_mrstft_gap": "exact upsampling: bottom MR-STFT closes >= half the floor->ceiling gap",
    "songs_voiced": "songs from nothing (exact): voiced fraction >= half the ground truth's",
    "accelerated_pitch": "accelerated: pitch agreement within 0.1 of exact's",
    "student_kl_middle": "middle student's KL < 0.2 nats/token",
    "student_kl_bottom": "bottom student's KL < 0.2 nats/token",
    "accelerated_mrstft": "accelerated: MR-STFT within 1.1x of exact's",
}


def _clips(synth: Any, n_clips: int, seconds: float, seed: int, work: Path) -> tuple[list, Any]:
    from eval.clips import load_clips
    from eval.demo.recipe import HELDOUT_SEED_OFFSET
    from teacher.data.synth.dataset import write_synth_dataset

    held = dataclasses.replace(synth, n_songs=n_clips, seed=synth.seed + HELDOUT_SEED_OFFSET)
    write_synth_dataset(work, held, progress=False)
    length = int(seconds * synth.sample_rate) // 128 * 128
    return load_clips(work, synth.sample_rate, length, n_clips, seed=seed)


def _mrstft(ref: torch.Tensor, est: torch.Tensor, sr: int) -> float:
    from eval.metrics import mrstft_distance

    n = min(ref.shape[-1], est.shape[-1])
    return float(mrstft_distance(ref[..., :n].reshape(1, -1), est[..., :n].reshape(1, -1), sr)[0])


def measure(
    teacher_dir: str | Path,
    students_dir: str | Path,
    synth: Any,
    n_clips: int = 3,
    seconds: float = 4.0,
    n_songs: int = 2,
    modes: Sequence[str] = ("exact", "accelerated", "speculative"),
    seed: int = 0,
) -> dict[str, Any]:
    """The shipped models' numbers (module docs) on ``n_clips`` held-out clips of ``seconds``
    and ``n_songs`` songs from nothing, on the CPU: a JSON-able dict with per-clip rows and
    means (``"mean"``)."""
    from distill.pipeline import FastJukebox
    from eval.clips import WindowLabels
    from eval.runner import student_kl

    fj = FastJukebox.from_pretrained(teacher_dir, students=Path(students_dir), device="cpu")
    jb = fj.jukebox
    vq, sr = jb.vqvae, jb.sample_rate
    top = jb.levels - 1
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fj_card_") as work:
        clips, audio = _clips(synth, n_clips, seconds, seed, Path(work))
    with torch.inference_mode():
        codes = vq.encode(audio)
    g = torch.Generator().manual_seed(seed)
    for i, clip in enumerate(clips):
        y = audio[i, 0]
        ref_np = y.numpy()
        track = pitch_track(ref_np, sr)
        row: dict[str, float] = {"gt_voiced": float(track[1].mean())}

        def score(name: str, est: torch.Tensor, row=row, y=y, ref=ref_np, track=track) -> None:
            m = musicality(est.reshape(-1).numpy(), sr, reference=ref, reference_track=track)
            row[f"{name}_pitch"] = m.pitch_agreement
            row[f"{name}_voiced"] = m.voiced
            row[f"{name}_mrstft"] = _mrstft(y, est.reshape(-1), sr)

        with torch.inference_mode():
            score("vqvae_top", vq.decode([codes[top][i : i + 1]], start_level=top))
            score("ceiling", vq.decode([codes[0][i : i + 1]], start_level=0))
            rand = torch.randint(0, vq.cfg.l_bins, codes[0][i : i + 1].shape, generator=g)
            score("floor", vq.decode([rand], start_level=0))
        names = {"artist": clip.artist, "genre": list(clip.genre) or None}
        for mode in modes:
            out = fj.upsample(
                {top: codes[top][i : i + 1]},
                **names,
                lyrics=clip.lyrics,
                words=clip.words,
                mode=mode,
                seed=seed + i,
                progress=False,
            )
            score(mode, out.audio[0])
        rows.append(row)
    songs = []
    for j in range(n_songs):
        clip = clips[j % len(clips)]
        out = fj.generate(
            artist=clip.artist,
            genre=list(clip.genre) or None,
            lyrics=clip.lyrics,
            duration_seconds=seconds,
            mode="exact",
            seed=seed + 100 + j,
            progress=False,
        )
        songs.append(float(pitch_track(out.audio[0].reshape(-1).numpy(), sr)[1].mean()))
    kl = {}
    for lv in sorted(fj.students):
        prior = jb.priors[lv]
        labels = WindowLabels(prior, jb.vocabs.get(lv))
        kl[lv] = student_kl(fj, lv, clips, codes[lv + 1], labels, seed=seed)["kl_per_token"]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    mean["songs_voiced"] = float(np.mean(songs))
    for lv, v in kl.items():
        mean[f"kl_{lv}"] = v
    return {
        "clips": n_clips,
        "seconds": seconds,
        "songs": songs,
        "rows": rows,
        "kl": {str(k): v for k, v in kl.items()},
        "mean": mean,
    }


def check_targets(numbers: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    """``numbers`` (:func:`measure`) -> target name -> (met, the measured value in words)."""
    m = numbers["mean"]
    gap = m["floor_mrstft"] - m["ceiling_mrstft"]
    closed = (m["floor_mrstft"] - m["exact_mrstft"]) / gap if gap > 0 else float("nan")
    out = {
        "vqvae_top_pitch": (m["vqvae_top_pitch"] >= 0.6, f"{m['vqvae_top_pitch']:.2f}"),
        "exact_pitch": (m["exact_pitch"] >= 0.5, f"{m['exact_pitch']:.2f}"),
        "exact_mrstft_gap": (closed >= 0.5, f"{closed:.2f} of the gap"),
        "songs_voiced": (
            m["songs_voiced"] >= 0.5 * m["gt_voiced"],
            f"{m['songs_voiced']:.2f} vs ground truth {m['gt_voiced']:.2f}",
        ),
        **{
            f"student_kl_{name}": (
                m.get(f"kl_{lv}", float("inf")) < 0.2,
                f"{m.get(f'kl_{lv}'):.3f}",
            )
            for name, lv in (("middle", 1), ("bottom", 0))
            if f"kl_{lv}" in m
        },
    }
    if "accelerated_pitch" in m:
        diff = abs(m["accelerated_pitch"] - m["exact_pitch"])
        ratio = m["accelerated_mrstft"] / m["exact_mrstft"]
        out["accelerated_pitch"] = (diff <= 0.1, f"{m['accelerated_pitch']:.2f} ({diff:.2f} off)")
        out["accelerated_mrstft"] = (ratio <= 1.1, f"{ratio:.2f}x")
    return out


__all__ = ["TARGETS", "check_targets", "measure"]
