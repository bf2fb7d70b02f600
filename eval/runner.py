"""The phases of one evaluation (:func:`eval.evaluate.evaluate`): the numbers of the report.

:class:`Evaluation` holds what the phases share (models, clips, their true, reconstructed and
random codes, label makers, the audio kept for the report) and runs each phase: per-level
reconstruction, the top prior's NLL of real codes, teacher vs student vs speculative sampling of
each upsampling level on the true upper codes (:func:`student_kl` for the student's KL), every
mode upsampling the true top codes, the ceiling and floor, end to end from nothing, and the top
prior's attention and embedding figures' inputs. :func:`audio_metrics` is the audio comparison
every phase uses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.pipeline import FastJukebox, resolve_level_modes
from distill.speculative import SpeculativeStats, choose_draft, default_gamma, student_sample
from eval import metrics as M
from eval.alignment import attention_alignment
from eval.clips import Clip, WindowLabels, score_windows, windowed_nll_bits
from eval.embeddings import embedding_map
from eval.musicality import mean_musicality, musicality, pitch_track
from eval.results import AttentionAlignment, EmbeddingMap
from eval.speed import (
    StageSpeed,
    StageTimer,
    amdahl_bound,
    amdahl_speedup,
    config_hash,
    machine_info,
)
from teacher.data.text import genre_words, normalize_name
from teacher.levels import level_name

log = logging.getLogger(__name__)

#: per-level sampler names and the pipeline mode that runs one level with each
SAMPLER_MODES = {"exact": "exact", "student": "accelerated", "speculative": "speculative"}
#: an SC of exactly the floor marks a near-silent reference (eval.metrics.sc_db)
_SC_FLOOR_DB = -199.0


# ---------------------------------------------------------------------------------------------
# metrics helpers


def audio_metrics(ref: Tensor, est: Tensor, sample_rate: int) -> dict[str, float]:
    """Means over clips of SC dB (near-silent references dropped), MR-STFT, log-mel L1 and
    SI-SDR of ``est`` against ``ref`` (``Tensor[N, 1, T]``)."""
    ref, est = ref.float().cpu(), est.float().cpu()
    sc = M.sc_db(ref, est)
    kept = sc[sc > _SC_FLOOR_DB]
    return {
        "sc_db": float(kept.mean()) if kept.numel() else float(sc.mean()),
        "mrstft": float(M.mrstft_distance(ref, est, sample_rate).mean()),
        "mel_l1": float(M.mel_l1(ref, est, sample_rate).mean()),
        "si_sdr": float(M.si_sdr(ref, est).mean()),
    }


def _usage(codes: Tensor, l_bins: int) -> dict[str, float]:
    u = M.codebook_usage(codes, l_bins)
    return {"used": u["used"], "fraction": u["fraction"], "perplexity": u["perplexity"]}


def _speed(
    name: str, seconds: float, codes: int, audio_seconds: float, peaks: list[StageSpeed]
) -> dict[str, Any]:
    mem = [p.peak_mem_bytes for p in peaks if p.peak_mem_bytes is not None]
    wall = max(seconds, 1e-12)
    return StageSpeed(
        wall_s=seconds,
        rtf=audio_seconds / wall,
        tokens_per_s=codes / wall,
        peak_mem_bytes=max(mem) if mem else None,
        mem_source=peaks[0].mem_source if peaks else "none",
        name=name,
    ).to_dict()


def _names_for(fj: FastJukebox, clip: Clip, level: int) -> dict[str, Any]:
    """Artist, genres and lyrics of a clip as names the teacher's vocabulary knows (unknown
    names dropped: ``Jukebox`` refuses them, training mapped them to ``unknown``)."""
    vocab = fj.jukebox.vocabs.get(level)
    if vocab is None:
        return {"artist": None, "genre": None, "lyrics": clip.lyrics}
    artist = clip.artist
    if artist and normalize_name(artist, vocab.version) not in vocab.artists:
        artist = None
    genres = [w for w in genre_words(list(clip.genre), vocab.version) if w in vocab.genres]
    return {"artist": artist, "genre": genres or None, "lyrics": clip.lyrics}


def _fd_frames(t_latent: int, wanted: int) -> int:
    return max(2, min(wanted, t_latent // 2 if t_latent >= 4 else t_latent))


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class _Run:
    """What sampling one level (or a mode's chain) over every clip produced."""

    codes: dict[int, Tensor] = field(default_factory=dict)  # level -> [N, T_l]
    audio: dict[int, Tensor] = field(default_factory=dict)  # level -> [N, 1, T]
    seconds: dict[str, float] = field(default_factory=dict)  # level name -> sampler wall s
    n_codes: dict[str, int] = field(default_factory=dict)
    timers: list[StageSpeed] = field(default_factory=list)
    call_s: float = 0.0
    spec: dict[str, SpeculativeStats] = field(default_factory=dict)  # speculative counters


def _upsample_all(
    fj: FastJukebox,
    clips: Sequence[Clip],
    given: Mapping[int, Tensor],
    levels: Sequence[int],
    mode: str,
    level_modes: str | None,
    seed: int,
    gamma: int | str | None,
) -> _Run:
    """Upsample every clip (one call each, its own names) from the ``given`` true codes."""
    run = _Run()
    device = fj.device
    names = [level_name(lv, fj.levels) for lv in levels]
    per: dict[int, list[Tensor]] = {}
    aud: dict[int, list[Tensor]] = {}
    for i, clip in enumerate(clips):
        with StageTimer(mode, device=device) as timer:
            res = fj.upsample(
                {lv: c[i : i + 1] for lv, c in given.items()},
                **_names_for(fj, clip, min(levels)),
                mode=mode,
                level_modes=level_modes,
                gamma=gamma,
                seed=seed + i,
                levels=names,
                progress=False,
            )
        run.timers.append(timer.result)
        run.call_s += timer.result.wall_s
        for lv in levels:
            per.setdefault(lv, []).append(res.codes[lv])
            aud.setdefault(lv, []).append(res.audio[lv])
        for name, st in res.stats.items():
            run.seconds[name] = run.seconds.get(name, 0.0) + st.seconds
            run.n_codes[name] = run.n_codes.get(name, 0) + st.codes
            if st.speculative is not None:
                run.spec[name] = run.spec.get(name, SpeculativeStats()) + st.speculative
    run.codes = {lv: torch.cat(v) for lv, v in per.items()}
    run.audio = {lv: torch.cat(v) for lv, v in aud.items()}
    return run


@torch.no_grad()
def student_kl(
    fj: FastJukebox,
    level: int,
    clips: Sequence[Clip],
    upper: Tensor,
    labels: WindowLabels,
    seed: int = 0,
) -> dict[str, float]:
    """The student's closed-form reverse KL to the teacher and its entropy (nats/token, at
    temperature 1) on its own samples: per teacher window of the clips, the student draws the
    window from the TRUE upper codes and the teacher scores the draw in one pass."""
    prior, student = fj.jukebox.priors[level], fj.students[level]
    r = prior.cfg.upsample_ratio
    device = next(prior.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    kls, ents = [], []
    total = upper.shape[1] * r
    for s, e in score_windows(total, prior.cfg.n_ctx, r):
        up = upper[:, s // r : e // r].to(device)
        y = labels.batch(clips, s, e - s)
        cond = student.condition(up, y)[:, : e - s]
        draw = student_sample(student, cond, None, g)
        teacher_logits = prior.logits(draw.codes, y, up)
        kls.append(M.kl_per_token(draw.logits, teacher_logits).mean())
        ents.append(M.entropy_per_token(draw.logits).mean())
    return {
        "kl_per_token": float(torch.stack(kls).mean()),
        "entropy_per_token": float(torch.stack(ents).mean()),
    }


class Evaluation:
    """The state one evaluation shares between its phases: models, clips, their true codes,
    reconstructions and random codes, the label makers and the audio kept for the report."""

    def __init__(
        self,
        fj: FastJukebox,
        clips: list[Clip],
        audio: Tensor,
        seed: int,
        hybrid: str,
        gamma: int | str | None,
        fd_level: int | None,
        fd_frames: int,
    ) -> None:
        self.fj, self.clips, self.seed, self.hybrid, self.gamma = fj, clips, seed, hybrid, gamma
        jb = self.jb = fj.jukebox
        vq = self.vq = jb.vqvae
        self.sr, self.levels, self.top = jb.sample_rate, jb.levels, jb.levels - 1
        self.names = {lv: level_name(lv, self.levels) for lv in range(self.levels)}
        self.upsamplers = [lv for lv in range(self.top - 1, -1, -1) if lv in jb.priors]
        self.bottom = min(self.upsamplers) if self.upsamplers else 0
        self.audio = audio.to(jb.device)
        self.clip_s = audio.shape[-1] / self.sr
        self.l_bins = vq.cfg.l_bins
        g = torch.Generator(device=jb.device).manual_seed(seed)
        with torch.inference_mode():
            self.codes = vq.encode(self.audio)
            self.recon = {lv: vq.decode([c], lv).float() for lv, c in enumerate(self.codes)}
            self.rand = {
                lv: torch.randint(0, self.l_bins, c.shape, generator=g, device=jb.device)
                for lv, c in enumerate(self.codes)
            }
            self.floor = {lv: vq.decode([c], lv).float() for lv, c in self.rand.items()}
        self.labels = {lv: WindowLabels(p, jb.vocabs.get(lv)) for lv, p in jb.priors.items()}
        self.fd_level = self.top if fd_level is None else fd_level
        t_latent = audio.shape[-1] // jb.hop_lengths[self.fd_level]
        self.fd_frames = _fd_frames(t_latent, fd_frames)
        self.kept: dict[str, tuple[int, np.ndarray]] = {}
        self.spectrograms: list[str] = []
        # the ground truth's pitch tracks, computed once: every musicality is measured against
        self.ref_audio = [a.reshape(-1).float().cpu().numpy() for a in audio]
        self.ref_tracks = [pitch_track(a, self.sr) for a in self.ref_audio]

    # -- helpers ---------------------------------------------------------------------------

    def keep(self, name: str, x: Tensor, spectrogram: bool = True) -> None:
        """Keep clip 0's (or a song's) audio ``x`` for the players (and the spectrograms)."""
        self.kept[name] = (self.sr, x.reshape(-1).float().cpu().numpy())
        if spectrogram:
            self.spectrograms.append(name)

    def music(self, x: Tensor) -> dict[str, float]:
        """Mean musicality (:mod:`eval.musicality`) of ``x`` (``Tensor[N, 1, T]``, one row per
        clip) against the clips."""
        rows = [
            musicality(est, self.sr, ref, track)
            for est, ref, track in zip(
                x.reshape(x.shape[0], -1).float().cpu().numpy(), self.ref_audio, self.ref_tracks
            )
        ]
        return mean_musicality(rows)

    def compare(self, x: Tensor) -> dict[str, float]:
        """The audio metrics and the musicality of ``x`` (``Tensor[N, 1, T]``) against the
        clips."""
        return {**audio_metrics(self.audio, x, self.sr), **self.music(x)}

    def ground_truth(self) -> dict[str, float]:
        """The clips' own musicality (pitch agreement and chroma similarity are 1 by
        definition): what every row is measured against."""
        return mean_musicality([musicality(a, self.sr) for a in self.ref_audio]) | {
            "pitch_agreement": 1.0,
            "chroma_similarity": 1.0,
        }

    def fd(self, x: Tensor) -> float:
        """FD-VQ between the clips and ``x`` (``Tensor[N, 1, T]``)."""
        return M.fd_vq(self.vq, self.audio, x, self.fd_level, frames_per_vector=self.fd_frames)

    def nll(self, level: int, codes: Tensor, upper: Tensor | None = None) -> float:
        if upper is None and level < self.top:
            upper = self.codes[level + 1]
        prior = self.jb.priors[level]
        return windowed_nll_bits(prior, codes, self.clips, self.labels[level], upper)

    def accuracy(self, level: int, codes: Tensor) -> float:
        return float(M.token_accuracy(codes.cpu(), self.codes[level].cpu()).mean())

    def upsample(self, given: Mapping[int, Tensor], levels: Sequence[int], mode: str) -> _Run:
        hybrid = self.hybrid if mode == "hybrid" else None
        return _upsample_all(
            self.fj, self.clips, given, levels, mode, hybrid, self.seed, self.gamma
        )

    # -- phases ------------------------------------------------------------------------------

    def reconstruction(self) -> dict[str, Any]:
        """Per level: the clips through that level alone."""
        out = {}
        for lv in range(self.top, -1, -1):
            out[self.names[lv]] = {
                **self.compare(self.recon[lv]),
                "codebook": _usage(self.codes[lv], self.l_bins),
                "codes": int(self.codes[lv].shape[1]),
            }
            self.keep(f"VQ-VAE reconstruction ({self.names[lv]})", self.recon[lv][0], lv == 0)
        return out

    def top_prior(self) -> dict[str, Any]:
        if self.top not in self.jb.priors:
            return {}
        return {"real_codes_nll_bits": self.nll(self.top, self.codes[self.top])}

    def level(self, lv: int) -> dict[str, Any]:
        """Teacher, student and speculative sampling of level ``lv`` on the true upper codes."""
        name = self.names[lv]
        entry: dict[str, Any] = {
            "real_codes_nll_bits": self.nll(lv, self.codes[lv]),
            "ceiling": {
                **self.compare(self.recon[lv]),
                "token_accuracy": 1.0,
            },
            "floor": {
                **self.compare(self.floor[lv]),
                "token_accuracy": self.accuracy(lv, self.rand[lv]),
                "nll_bits": self.nll(lv, self.rand[lv]),
            },
            "samplers": {},
        }
        given = {k: self.codes[k] for k in range(lv + 1, self.levels)}
        samplers = ["exact"] + (["student", "speculative"] if lv in self.fj.students else [])
        for sampler in samplers:
            log.info("%s level: %s sampling on the true upper codes", name, sampler)
            run = self.upsample(given, [lv], SAMPLER_MODES[sampler])
            gen = run.codes[lv]
            m: dict[str, Any] = {
                "nll_bits": self.nll(lv, gen),
                "token_accuracy": self.accuracy(lv, gen),
                **self.compare(run.audio[lv]),
                "codebook": _usage(gen, self.l_bins),
                "speed": _speed(
                    f"{name} {sampler}",
                    run.seconds[name],
                    run.n_codes[name],
                    self.clip_s * len(self.clips),
                    run.timers,
                ),
                "call_s": run.call_s,
            }
            if sampler == "student":
                m.update(
                    student_kl(
                        self.fj, lv, self.clips, self.codes[lv + 1], self.labels[lv], self.seed
                    )
                )
            if sampler == "speculative" and name in run.spec:
                m["speculative"] = run.spec[name].to_dict()
            entry["samplers"][sampler] = m
        exact_s = entry["samplers"]["exact"]["speed"]["wall_s"]
        for m in entry["samplers"].values():
            m["speedup"] = exact_s / max(m["speed"]["wall_s"], 1e-12)
        return entry

    def mode(self, mode: str) -> dict[str, Any]:
        """``mode`` upsampling the true top codes through every lower level."""
        log.info("mode %s: upsampling the true top codes", mode)
        run = self.upsample({self.top: self.codes[self.top]}, self.upsamplers, mode)
        plan = resolve_level_modes(mode, self.hybrid if mode == "hybrid" else None, self.levels)
        names = [self.names[lv] for lv in self.upsamplers]
        per_level = {
            self.names[lv]: {
                "nll_bits": self.nll(lv, run.codes[lv], run.codes.get(lv + 1)),
                "token_accuracy": self.accuracy(lv, run.codes[lv]),
                "wall_s": run.seconds.get(self.names[lv], 0.0),
            }
            for lv in self.upsamplers
        }
        out = {
            "level_modes": {self.names[lv]: plan[lv] for lv in self.upsamplers},
            **self.compare(run.audio[self.bottom]),
            "fd_vq": self.fd(run.audio[self.bottom]),
            "levels": per_level,
            "speed": _speed(
                f"{mode} upsampling",
                sum(run.seconds.get(n, 0.0) for n in names),
                sum(run.n_codes.get(n, 0) for n in names),
                self.clip_s * len(self.clips),
                run.timers,
            ),
        }
        if run.spec:
            out["speculative"] = {k: v.to_dict() for k, v in run.spec.items()}
        self.keep(f"mode: {mode}", run.audio[self.bottom][0])
        return out

    def bounds(self) -> dict[str, Any]:
        """The ceiling (true codes decoded) and floor (random codes decoded) of the level the
        modes are judged at."""
        lv = self.bottom
        self.keep(f"random codes (floor, {self.names[lv]})", self.floor[lv][0])
        return {
            "level": self.names[lv],
            "ground_truth": self.ground_truth(),
            "ceiling": {
                **self.compare(self.recon[lv]),
                "fd_vq": self.fd(self.recon[lv]),
            },
            "floor": {
                **self.compare(self.floor[lv]),
                "fd_vq": self.fd(self.floor[lv]),
            },
        }

    def end_to_end(self, modes: Sequence[str], song_samples: int) -> dict[str, Any]:
        """One song from nothing per mode (clip 0's artist, genre and lyrics): per-stage
        seconds, speedups and the Amdahl bound of free upsampling."""
        if self.top not in self.jb.priors or not modes:
            return {}
        song_s = song_samples / self.sr
        per_mode: dict[str, Any] = {}
        for mode in modes:
            log.info("mode %s: a %.2f s song from nothing", mode, song_s)
            with StageTimer(mode, device=self.jb.device) as timer:
                res = self.fj.generate(
                    **_names_for(self.fj, self.clips[0], self.top),
                    duration_seconds=song_s,
                    mode=mode,
                    level_modes=self.hybrid if mode == "hybrid" else None,
                    gamma=self.gamma,
                    seed=self.seed,
                    progress=False,
                )
            stages = {n: st.seconds for n, st in res.stats.items()}
            total = sum(stages.values())
            song = res.audio[min(res.audio)][0].reshape(-1).float().cpu().numpy()
            per_mode[mode] = {
                # no reference for a song from nothing: voiced fraction and flatness only
                "musicality": {
                    k: v
                    for k, v in musicality(song, self.sr).to_dict().items()
                    if k in ("voiced", "flatness")
                },
                "stages": stages,
                "total_s": total,
                "call_s": timer.result.wall_s,
                "rtf": song_s / max(total, 1e-12),
                "peak_mem_bytes": timer.result.peak_mem_bytes,
            }
            self.keep(f"song: {mode}", res.audio[min(res.audio)][0], spectrogram=False)
        out: dict[str, Any] = {"song_seconds": song_s, "modes": per_mode}
        if "exact" in per_mode:
            base = per_mode["exact"]["stages"]
            distilled = [self.names[lv] for lv in self.upsamplers]
            out["distilled_stages"] = distilled
            out["distilled_share"] = sum(base[n] for n in distilled) / max(
                sum(base.values()), 1e-12
            )
            # Amdahl (DESIGN §1): free upsampling still leaves the top prior
            out["amdahl_bound"] = amdahl_bound(base, distilled)
            for m in per_mode.values():
                m["speedup"] = sum(base.values()) / max(m["total_s"], 1e-12)
                speedups = {n: base[n] / max(m["stages"].get(n, base[n]), 1e-12) for n in distilled}
                m["amdahl_predicted"] = amdahl_speedup(base, speedups)
        return out

    def top_figures(
        self, notes: list[str]
    ) -> tuple[AttentionAlignment | None, EmbeddingMap | None]:
        """The lyric-to-music attention on clip 0's first window and the embedding map."""
        if self.top not in self.jb.priors:
            return None, None
        tp = self.jb.priors[self.top]
        attention = None
        if tp.cfg.lyrics is None:
            notes.append("the top prior has no lyrics: no lyric-to-music attention to show")
        else:
            t = min(self.codes[self.top].shape[1], tp.cfg.n_ctx)
            y = self.labels[self.top].batch(self.clips[:1], 0, t)
            attention = attention_alignment(tp, self.codes[self.top][:1, :t], y)
            if attention is not None and not attention.lyrics.strip():
                notes.append(f"clip 0 ({self.clips[0].file}) has no lyrics in its window")
        embeddings = embedding_map(tp, self.jb.vocabs.get(self.top), seed=self.seed)
        if embeddings is None:
            notes.append("the top prior is unlabelled: no artist/genre embeddings to map")
        return attention, embeddings

    def setup(self, **extra: Any) -> dict[str, Any]:
        fj, names = self.fj, self.names
        n = len(self.clips)
        drafts = {
            names[lv]: choose_draft(self.jb.priors[lv], st)
            for lv, st in sorted(fj.students.items())
            if lv in self.jb.priors
        }
        return {
            **extra,
            "students": {names[lv]: fj.student_dirs.get(lv) for lv in sorted(fj.students)},
            "device": str(self.jb.device),
            "machine": machine_info(self.jb.device),
            "seeds": {
                "clips": self.seed,
                "floor_codes": self.seed,
                "sampling": [self.seed + i for i in range(n)],
            },
            "config_hashes": {
                "vqvae": config_hash(self.vq.cfg),
                **{f"prior_{names[lv]}": config_hash(p.cfg) for lv, p in self.jb.priors.items()},
                **{f"student_{names[lv]}": config_hash(s.cfg) for lv, s in fj.students.items()},
            },
            "sample_rate": self.sr,
            "n_clips": n,
            "clip_seconds": self.clip_s,
            "clips": [c.to_dict() for c in self.clips],
            "hybrid": self.hybrid,
            # what speculative levels draft with (draft="auto", distill.speculative.choose_draft)
            # and their γ (given, or the draft's default)
            "drafts": drafts,
            "gamma": {
                k: default_gamma(d) if self.gamma is None else self.gamma for k, d in drafts.items()
            },
            "fd_vq": {
                "name": M.FD_VQ_NAME,
                "level": names[self.fd_level],
                "frames_per_vector": self.fd_frames,
            },
            "conventions": {
                "sc_db": "20·log10(SC), lower is better",
                "mrstft": "auraloss multi-resolution STFT (SC + log magnitude), lower is better",
                "rtf": "audio seconds per wall second (higher is faster)",
                "nll_bits": "teacher NLL in bits/token at temperature 1, windows of n_ctx",
                "kl_per_token": "nats/token, the student's reverse KL to the teacher at "
                "temperature 1",
                "timing": "seconds inside each level's sampler (decoding excluded)",
            },
        }


__all__ = ["SAMPLER_MODES", "Evaluation", "audio_metrics", "student_kl"]
