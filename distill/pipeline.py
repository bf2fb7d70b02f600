"""The fast sampling pipeline: one object, a teacher and its students, four modes.

:class:`FastJukebox` wraps a :class:`teacher.generate.Jukebox` (the VQ-VAE and the priors) and
the distilled students of its upsampling levels, and samples with a per-level choice of
sampler handed to the teacher's own windowing loop (``Jukebox.generate(..., samplers=)``), so
windows, labels, lyrics, prompts and decoding are exactly those of exact mode:

============  ================================================================================
mode          per level
============  ================================================================================
exact         every level autoregressive (the teacher's :class:`~teacher.generate.ExactSampler`)
accelerated   top autoregressive; middle and bottom by their students (:class:`StudentSampler`)
hybrid        chosen per level: ``level_modes="middle=exact,bottom=student"``
speculative   top autoregressive; middle and bottom drafted by the students and verified by the
              teacher (:class:`~distill.speculative.SpeculativeSampler`): exactly the teacher's
              distribution, fewer sequential teacher passes
============  ================================================================================

A level's mode is ``exact``, ``student`` or ``speculative``; ``level_modes`` overrides the
mode's default for the levels it names (the top level is always exact: students replace
upsamplers only). A mode that needs students that are not there is ONE :class:`ConfigError`
naming every such level and the folder it looked in.

Students are loaded from folders written by ``Student.save_pretrained`` or exported by
``distill.train`` (``OUTPUT_DIR/student``): ``students={"middle": DIR, "bottom": DIR}`` or one
``STUDENTS`` folder holding ``middle/`` and ``bottom/`` (either a student folder or a distill
output folder with ``student/`` inside); by default ``TEACHER/students``.

A convolutional student has no window limit: :class:`StudentSampler` samples a whole level in
ONE call of K passes (its ``n_ctx`` is unbounded, so the windowing loop gives it one window).
Results carry per-level wall time and the speculative counters (:class:`LevelStats`).
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.config import EXPORT_DIR, student_folder
from distill.speculative import (
    SpeculativeSampler,
    SpeculativeStats,
    parse_draft,
    parse_draft_dtype,
    parse_gamma,
    receptive_field,
    student_labels,
    student_sample,
)
from student.base import CONFIG_FILE, Student, load_student
from teacher.config import ConfigError
from teacher.device import resolve_dtype
from teacher.generate.jukebox import Jukebox
from teacher.generate.result import GenerationResult
from teacher.generate.sampler import ExactSampler, LevelSampler, ProgressFn, WindowInputs
from teacher.generate.windows import DEFAULT_CHUNK, DEFAULT_TEMPERATURE, PerLevel, per_level
from teacher.levels import level_index, level_name

log = logging.getLogger(__name__)

#: ``--mode`` values
FAST_MODES = ("exact", "accelerated", "hybrid", "speculative")
#: per-level samplers
LEVEL_MODES = ("exact", "student", "speculative")
#: default students folder inside a teacher folder
STUDENTS_DIR = "students"
#: the folder ``distill.train`` exports its student to, inside its output folder
#: memory a student's chunk may hold in noise, logits and relaxed codes (auto_chunk)
STUDENT_MEMORY_BYTES = 256 << 20


def auto_chunk(batch: int, l_bins: int, ratio: int, budget: int | None = None) -> int:
    """New codes per student call so that ``3 · batch · chunk · l_bins`` fp32 values fit in
    ``budget`` bytes (default :data:`STUDENT_MEMORY_BYTES`), a multiple of the upsampling
    ``ratio`` (at least one ratio)."""
    budget = STUDENT_MEMORY_BYTES if budget is None else budget
    per_code = 3 * 4 * batch * l_bins
    return max(ratio, budget // per_code // ratio * ratio)


#: a student's window: unbounded (the windowing loop then gives it the whole level). A power
#: of two, so any hop fraction 2^-k gives a hop that is a multiple of the upsampling ratio.
WHOLE_SONG = 1 << 40

# ---------------------------------------------------------------------------------------------
# parsing


def _parse_pairs(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(
                f"{what}: expected LEVEL=VALUE pairs separated by commas, got {item!r}"
            )
        if key in out:
            raise ConfigError(f"{what}: level {key!r} given twice")
        out[key] = value
    if not out:
        raise ConfigError(f"{what}: nothing given in {text!r}")
    return out


def parse_level_modes(text: str, levels: int = 3) -> dict[str, str]:
    """``"middle=exact,bottom=student"`` -> ``{"middle": "exact", "bottom": "student"}``.

    Levels by name (top/middle/bottom) or index; modes from :data:`LEVEL_MODES`. Raises
    :class:`ConfigError` on a malformed pair, an unknown level or mode, or a repeated level.
    """
    pairs = _parse_pairs(text, "level modes")
    out: dict[str, str] = {}
    for key, mode in pairs.items():
        name = level_name(level_index(key, levels), levels)
        if name in out:
            raise ConfigError(f"level modes: level {name!r} given twice")
        if mode not in LEVEL_MODES:
            raise ConfigError(
                f"level modes: unknown mode {mode!r} for {name}; expected one of {LEVEL_MODES}"
            )
        out[name] = mode
    return out


def parse_students(text: str) -> str | dict[str, str]:
    """``--students`` as given on a command line: one folder (``STUDENTS`` with ``middle/``,
    ``bottom/``) or ``middle=DIR,bottom=DIR``."""
    return _parse_pairs(text, "students") if "=" in text else text


def resolve_level_modes(
    mode: str,
    level_modes: str | Mapping[str | int, str] | None,
    levels: int = 3,
) -> dict[int, str]:
    """The sampler of every level (index -> one of :data:`LEVEL_MODES`) for ``mode``.

    ``exact``: all exact; ``accelerated``: upsamplers ``student``; ``speculative``: upsamplers
    ``speculative``; ``hybrid``: exact unless ``level_modes`` says otherwise (it must be given).
    ``level_modes`` (a string for :func:`parse_level_modes` or a mapping) overrides any mode's
    default at the levels it names. The top level must be exact.
    """
    if mode not in FAST_MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of {FAST_MODES}")
    default = {"exact": "exact", "hybrid": "exact", "accelerated": "student"}.get(
        mode, "speculative"
    )
    top = levels - 1
    plan = {lv: ("exact" if lv == top else default) for lv in range(levels)}
    if isinstance(level_modes, str):
        level_modes = parse_level_modes(level_modes, levels)
    if mode == "hybrid" and not level_modes:
        raise ConfigError(
            'hybrid mode needs the per-level modes, e.g. level_modes="middle=exact,bottom=student"'
        )
    for key, m in (level_modes or {}).items():
        if m not in LEVEL_MODES:
            raise ConfigError(f"unknown level mode {m!r}; expected one of {LEVEL_MODES}")
        plan[level_index(key, levels)] = m
    if plan[top] != "exact":
        raise ConfigError(
            f"the top level is always sampled exactly (students replace upsamplers), not "
            f"{plan[top]!r}"
        )
    return plan


# ---------------------------------------------------------------------------------------------
# the student as a level sampler


class StudentSampler(LevelSampler):
    """A :class:`teacher.generate.LevelSampler` drawing a level with a parallel student.

    The whole window in K network passes (:func:`distill.speculative.student_sample`). A prefix
    (continue mode, or a window's kept codes) is forced at its positions at EVERY stage, so only
    new positions are sampled and they condition on the real codes.

    Args:
        student: the level's student (eval mode is set).
        temperature: its sampling temperature (1.0: the distribution it was distilled to match,
            the teacher at its distillation temperature).
        chunk_size: new positions are drawn in chunks of this many (a multiple of the
            upsampling ratio), for memory; None sizes them so that one chunk's noise, logits and
            relaxed codes (``3 · B · chunk · l_bins`` fp32 values) stay under
            :data:`STUDENT_MEMORY_BYTES` (a whole window when it fits: one call of K passes;
            a 60 s bottom level of the released model would otherwise hold ~2.7 GB per stage
            and tensor). Overlap
            policy: a chunk continues the codes before it like a prompt — the last
            ``receptive_field`` codes (all a stage reads) are forced as its prefix, so chunking
            costs K passes per chunk and nothing else; its conditioning is computed from the
            upper codes over the chunk plus ``cond_margin`` upper codes on each side, so the
            conditioner's (non-causal) convolutions see past the chunk's edges.
        cond_margin: see ``chunk_size``.
        n_ctx: the window handed to the windowing loop; default unbounded (one window a level).

    ``passes`` counts network passes and ``calls`` windows.
    """

    def __init__(
        self,
        student: Student,
        temperature: float = 1.0,
        chunk_size: int | None = None,
        cond_margin: int = 16,
        n_ctx: int | None = None,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"the student temperature must be positive, got {temperature}")
        ratio = student.cfg.upsample_ratio
        if chunk_size is not None and (chunk_size < 1 or chunk_size % ratio):
            raise ConfigError(
                f"chunk_size must be a positive multiple of the upsampling ratio {ratio}, "
                f"got {chunk_size}"
            )
        if n_ctx is not None and (n_ctx < ratio or n_ctx % ratio):
            raise ConfigError(f"n_ctx must be a positive multiple of {ratio}, got {n_ctx}")
        self.student = student.eval()
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.cond_margin = int(cond_margin)
        self.ratio = ratio
        self.n_ctx = n_ctx or WHOLE_SONG
        self.passes = 0
        self.calls = 0

    def draw(
        self, w: WindowInputs, generator: torch.Generator | None, progress: ProgressFn | None
    ) -> Tensor:
        """See :class:`~teacher.generate.sampler.LevelSampler`; ``upper`` ``LongTensor[B, >=
        length / r]``."""
        length, prefix, labels, upper = w.length, w.prefix, w.labels, w.upper
        if upper is None:
            raise ValueError("a student needs the upper level's codes")
        b, t0 = prefix.shape
        if not 0 <= t0 < length or upper.shape[0] != b:
            raise ValueError(
                f"need a prefix (B, T0 < {length}) and upper codes of batch B, got "
                f"{tuple(prefix.shape)}, {tuple(upper.shape)}"
            )
        if upper.shape[1] * self.ratio < length:
            raise ValueError(f"{upper.shape[1]} upper codes cover less than {length} positions")
        student = self.student
        device = next(student.parameters()).device
        prefix, upper = prefix.to(device), upper.to(device)
        labels = student_labels(student, labels)
        labels = None if labels is None else labels.to(device)
        chunk = self.chunk_size or auto_chunk(b, student.cfg.l_bins, self.ratio)
        with torch.inference_mode():
            if length - t0 <= chunk:
                cond = student.condition(upper, labels)[:, :length]
                draw = student_sample(student, cond, prefix, generator, self.temperature)
                self.passes += draw.passes
                out = draw.codes
            else:
                out = self._chunked(length, prefix, labels, upper, generator, progress, chunk)
        self.calls += 1
        if progress is not None:
            progress(length - t0, length - t0)
        return out.clone()  # a normal tensor again

    def _chunked(self, length, prefix, labels, upper, generator, progress, chunk) -> Tensor:
        student, r, m = self.student, self.ratio, self.cond_margin
        b, t0 = prefix.shape
        codes = torch.zeros(b, length, dtype=torch.long, device=prefix.device)
        codes[:, :t0] = prefix
        rf = receptive_field(student)
        for a in range(t0, length, chunk):
            e = min(a + chunk, length)
            s0 = max(0, a - rf) // r * r  # context start, on an upper-code boundary
            u0, u1 = max(0, s0 // r - m), min(upper.shape[1], -(-e // r) + m)
            cond = student.condition(upper[:, u0:u1], labels)[:, s0 - u0 * r : e - u0 * r]
            draw = student_sample(student, cond, codes[:, s0:a], generator, self.temperature)
            self.passes += draw.passes
            codes[:, a:e] = draw.codes[:, a - s0 :]
            if progress is not None:
                progress(e - t0, length - t0)
        return codes


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class LevelStats:
    """What sampling one level cost.

    Attributes:
        level: its name (top/middle/bottom).
        mode: ``exact``, ``student`` or ``speculative``.
        seconds: wall time inside the level's sampler (all windows; decoding excluded).
        windows: sampler calls.
        codes: codes drawn, all rows (prefixes excluded).
        student_passes: the student's network passes (student and speculative modes).
        speculative: the speculative counters (acceptance rate, tokens per teacher pass...).
    """

    level: str
    mode: str
    seconds: float = 0.0
    windows: int = 0
    codes: int = 0
    student_passes: int = 0
    speculative: SpeculativeStats | None = None

    @property
    def codes_per_second(self) -> float:
        return self.codes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "level": self.level,
            "mode": self.mode,
            "seconds": self.seconds,
            "windows": self.windows,
            "codes": self.codes,
            "codes_per_second": self.codes_per_second,
            "student_passes": self.student_passes,
        }
        if self.speculative is not None:
            out["speculative"] = self.speculative.to_dict()
        return out


@dataclass
class FastGenerationResult(GenerationResult):
    """A :class:`~teacher.generate.GenerationResult` with ``stats``: level name ->
    :class:`LevelStats` (also in ``info["stats"]``, so ``save`` writes it to labels.json)."""

    stats: dict[str, LevelStats] = field(default_factory=dict)


class _Timed(LevelSampler):
    """Wraps a level's sampler: wall time, windows and codes into a :class:`LevelStats`."""

    def __init__(self, inner: LevelSampler, stats: LevelStats) -> None:
        self.inner = inner
        self.stats = stats
        self.n_ctx = inner.n_ctx

    def draw(
        self, w: WindowInputs, generator: torch.Generator | None, progress: ProgressFn | None
    ) -> Tensor:
        t = time.perf_counter()
        length, prefix = w.length, w.prefix
        out = self.inner.sample_window(w.length, w.prefix, w.labels, w.upper, generator, progress)
        if out.is_cuda:  # kernels are asynchronous: time them, not their launch
            torch.cuda.synchronize(out.device)
        st = self.stats
        st.seconds += time.perf_counter() - t
        st.windows += 1
        st.codes += prefix.shape[0] * (length - prefix.shape[1])
        if isinstance(self.inner, StudentSampler):
            st.student_passes = self.inner.passes
        elif isinstance(self.inner, SpeculativeSampler):
            st.speculative = self.inner.stats
            st.student_passes = self.inner.stats.proposal_passes
        return out


# ---------------------------------------------------------------------------------------------
# the pipeline


class FastJukebox:
    """A teacher and its students, sampled in any mode (module docs).

    >>> fj = FastJukebox.from_pretrained("teacher/", students="students/")   # doctest: +SKIP
    >>> out = fj.generate(artist="Alan Jackson", genre="Country", duration_seconds=20,
    ...                   mode="accelerated", seed=0)                         # doctest: +SKIP
    >>> out.stats["bottom"].seconds, out.save("samples/")                      # doctest: +SKIP

    Args:
        jukebox: the teacher (VQ-VAE + priors).
        students: level (name or index) -> :class:`~student.base.Student`.
        student_dirs: level -> the folder a missing student was expected in (error messages).
    """

    def __init__(
        self,
        jukebox: Jukebox,
        students: Mapping[int | str, Student] | None = None,
        student_dirs: Mapping[int | str, str | os.PathLike] | None = None,
    ) -> None:
        self.jukebox = jukebox
        self.levels = jukebox.levels
        self.students: dict[int, Student] = {}
        for key, student in (students or {}).items():
            level = level_index(key, self.levels)
            if student.cfg.level != level:
                raise ConfigError(
                    f"the student given for the {self._name(level)} level was distilled for "
                    f"level {student.cfg.level}"
                )
            if student.cfg.l_bins != jukebox.vqvae.cfg.l_bins:
                raise ConfigError(
                    f"the {self._name(level)} student has {student.cfg.l_bins} bins, the "
                    f"VQ-VAE {jukebox.vqvae.cfg.l_bins}"
                )
            if level in jukebox.priors:
                student.cfg.check_teacher(jukebox.priors[level].cfg)
            self.students[level] = student.eval()
        self.student_dirs = {
            level_index(k, self.levels): str(v) for k, v in (student_dirs or {}).items()
        }

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        teacher_dir: str | os.PathLike,
        students: str | os.PathLike | Mapping[int | str, str | os.PathLike] | None = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
    ) -> FastJukebox:
        """Load a teacher folder (:meth:`Jukebox.from_pretrained`, on ``device`` in ``dtype``)
        and its students (in the same dtype).

        ``students``: level -> folder, or one folder with a subfolder per upsampling level
        (``middle/``, ``bottom/``), or None for ``teacher_dir/students``. A level's folder is a
        student folder (``config.json`` + ``model.safetensors``) or a ``distill.train`` output
        folder (its ``student/`` export is used). Folders given per level must exist; levels
        of a students folder without a subfolder are just not loaded (a mode that needs them
        then names the folder it looked for).
        """
        jukebox = Jukebox.from_pretrained(teacher_dir, device=device, dtype=dtype)
        levels = jukebox.levels
        upsamplers = [lv for lv in range(levels - 1)]
        expected: dict[int, Path] = {}
        if students is None or isinstance(students, str | os.PathLike):
            root = Path(teacher_dir) / STUDENTS_DIR if students is None else Path(students)
            if students is not None and not root.is_dir():
                raise FileNotFoundError(f"students folder {root} not found")
            for lv in upsamplers:
                expected[lv] = root / level_name(lv, levels)
            required: set[int] = set()
        else:
            for key, folder in students.items():
                expected[level_index(key, levels)] = Path(folder)
            required = set(expected)
        loaded: dict[int, Student] = {}
        for lv, folder in expected.items():
            found = student_folder(folder)
            if found is None:
                if lv in required:
                    raise FileNotFoundError(
                        f"no student for the {level_name(lv, levels)} level in {folder} "
                        f"(expected {CONFIG_FILE} there or in {folder / EXPORT_DIR})"
                    )
                continue
            loaded[lv] = load_student(found, device=jukebox.device, dtype=resolve_dtype(dtype))
            log.info("loaded the %s student from %s", level_name(lv, levels), found)
        return cls(jukebox, loaded, {lv: str(p) for lv, p in expected.items()})

    @property
    def device(self) -> torch.device:
        return self.jukebox.device

    @property
    def sample_rate(self) -> int:
        return self.jukebox.sample_rate

    def _name(self, level: int) -> str:
        return level_name(level, self.levels)

    # -- planning --------------------------------------------------------------------------

    def plan(
        self,
        mode: str,
        level_modes: str | Mapping[str | int, str] | None = None,
        levels: Sequence[str | int] = ("top", "middle", "bottom"),
    ) -> dict[int, str]:
        """The sampler of every level that will be sampled (index -> level mode), checked:
        one :class:`ConfigError` naming every level whose student (or teacher prior) is
        missing."""
        plan = resolve_level_modes(mode, level_modes, self.levels)
        todo = sorted({level_index(lv, self.levels) for lv in levels}, reverse=True)
        plan = {lv: plan[lv] for lv in todo}
        missing = []
        for lv, m in plan.items():
            if m == "exact" or lv in self.students:
                continue
            where = self.student_dirs.get(lv)
            hint = f"expected a student folder at {where}" if where else "none was given"
            missing.append(f"{self._name(lv)} ({hint})")
        if missing:
            raise ConfigError(
                f"mode {mode!r} needs a distilled student for the level(s) "
                f"{', '.join(missing)}; train one with `fastjukebox distill` and pass it with "
                "students=... (CLI --students)"
            )
        for lv, m in plan.items():
            if m == "speculative" and lv not in self.jukebox.priors:
                raise ConfigError(
                    f"speculative sampling of the {self._name(lv)} level needs the teacher's "
                    f"{self._name(lv)} prior: {self.jukebox.missing_prior(lv)}"
                )
            if (
                m == "student"
                and lv not in self.jukebox.priors
                and self.students[lv].cfg.labels is not None
            ):
                raise ConfigError(
                    f"the {self._name(lv)} student is labelled: its label vectors are built from "
                    f"the teacher's {self._name(lv)} prior: {self.jukebox.missing_prior(lv)}"
                )
        return plan

    def samplers(
        self,
        plan: Mapping[int, str],
        temperature: PerLevel = None,
        top_k: int = 0,
        top_p: float = 0.0,
        gamma: int | str | None = None,
        student_temperature: PerLevel = 1.0,
        chunk_size: int | None = DEFAULT_CHUNK,
        student_chunk_size: int | None = None,
        draft: str = "auto",
        draft_dtype: str | torch.dtype | None = "auto",
    ) -> dict[int, _Timed]:
        """A timed :class:`LevelSampler` per planned level (:meth:`plan`)."""
        temps = per_level(temperature, self.levels, DEFAULT_TEMPERATURE)
        s_temps = per_level(student_temperature, self.levels, None)
        out = {}
        for lv, m in plan.items():
            stats = LevelStats(self._name(lv), m)
            if m == "exact":
                if lv not in self.jukebox.priors:
                    continue  # the teacher's loop raises its own clear error
                inner: LevelSampler = ExactSampler(
                    self.jukebox.priors[lv], temps[lv], top_k, top_p, chunk_size
                )
            elif m == "student":
                inner = StudentSampler(
                    self.students[lv], s_temps[lv], chunk_size=student_chunk_size
                )
            else:
                inner = SpeculativeSampler(
                    self.jukebox.priors[lv],
                    self.students[lv],
                    gamma=gamma,
                    temperature=temps[lv],
                    top_k=top_k,
                    top_p=top_p,
                    student_temperature=s_temps[lv],
                    chunk_size=chunk_size,
                    draft=draft,
                    draft_dtype=draft_dtype,
                )
            out[lv] = _Timed(inner, stats)
        return out

    # -- the three entry points: the teacher's, with a sampler per level --------------------

    def generate(self, *args: Any, **kwargs: Any) -> FastGenerationResult:
        """Sample a song from nothing in ``mode`` (module docs): the arguments of
        :meth:`Jukebox.generate` plus the mode's (:meth:`_sample`)."""
        return self._sample(self.jukebox.generate, args, kwargs)

    def generate_from_audio(self, *args: Any, **kwargs: Any) -> FastGenerationResult:
        """Continue a prompt (:meth:`Jukebox.generate_from_audio`) in ``mode``: the prompt's
        codes are kept at every level, students included. Arguments as in :meth:`generate`."""
        return self._sample(self.jukebox.generate_from_audio, args, kwargs)

    def upsample(self, *args: Any, **kwargs: Any) -> FastGenerationResult:
        """Sample the levels below given upper codes (:meth:`Jukebox.upsample`) in ``mode``."""
        return self._sample(self.jukebox.upsample, args, kwargs)

    @staticmethod
    def save(result: GenerationResult, out_dir: str | os.PathLike) -> list[Path]:
        """Write a result's WAVs, codes and labels (:meth:`GenerationResult.save`)."""
        return result.save(out_dir)

    # -- internals -------------------------------------------------------------------------

    def _sample(
        self,
        entry: Callable[..., GenerationResult],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        mode: str = "exact",
        level_modes: str | Mapping[str | int, str] | None = None,
        gamma: int | str | None = None,
        student_temperature: PerLevel = 1.0,
        student_chunk_size: int | None = None,
        draft: str = "auto",
        draft_dtype: str | torch.dtype | None = "auto",
    ) -> FastGenerationResult:
        """Run the teacher's ``entry`` with a sampler per level chosen by the mode.

        The mode's keyword arguments (taken out of ``kwargs``):
            mode: ``exact`` | ``accelerated`` | ``hybrid`` | ``speculative`` (module docs).
            level_modes: per-level overrides (``"middle=exact,bottom=student"`` or a mapping);
                required by ``hybrid``.
            gamma: speculative drafts per teacher pass, ``"auto"`` (measured while
                sampling, and windows where drafting was measured slower left to the teacher
                alone; the codes of a seed then depend on the timings, their distribution
                does not), or None: 4 with incremental drafts, 6 with window drafts
                (:func:`distill.speculative.default_gamma`).
            student_temperature: the students' temperature (one value or per level); 1.0
                samples the distribution they were distilled to match.
            student_chunk_size: :class:`StudentSampler`'s memory chunking (None: one call).
            draft: how categorical students draft in speculative levels: ``incremental``,
                ``window`` or ``auto`` (:func:`distill.speculative.choose_draft`).
            draft_dtype: the precision students draft in: ``auto`` (bf16 where native bf16
                products pay), ``keep``, or a dtype
                (:func:`distill.speculative.resolve_draft_dtype`).

        Everything else is ``entry``'s (``temperature``, ``top_k``, ``top_p`` are the
        teacher's, in exact and speculative levels alike). Everything is validated and the
        samplers are built before any sampling.
        """
        fast = dict(
            mode=mode,
            level_modes=level_modes,
            gamma=gamma,
            student_temperature=student_temperature,
            student_chunk_size=student_chunk_size,
            draft=draft,
            draft_dtype=draft_dtype,
        )
        for key in fast:
            if key in kwargs:
                fast[key] = kwargs.pop(key)
        mode, level_modes, gamma = fast["mode"], fast["level_modes"], fast["gamma"]
        bound = inspect.signature(entry).bind(*args, **kwargs)
        bound.apply_defaults()
        teacher = bound.arguments
        gamma = parse_gamma(gamma)
        parse_draft(fast["draft"])  # checked in every mode, before any model runs
        parse_draft_dtype(fast["draft_dtype"])
        plan = self.plan(mode, level_modes, teacher["levels"])
        samplers = self.samplers(
            plan,
            teacher["temperature"],
            teacher["top_k"],
            teacher["top_p"],
            gamma,
            fast["student_temperature"],
            teacher["chunk_size"],
            fast["student_chunk_size"],
            fast["draft"],
            fast["draft_dtype"],
        )
        teacher["samplers"] = samplers
        result = entry(*bound.args, **bound.kwargs)

        s_temps = per_level(fast["student_temperature"], self.levels, None)
        stats = {self._name(lv): s.stats for lv, s in samplers.items()}
        info = {
            **result.info,
            "sampling_mode": mode,
            "level_modes": {self._name(lv): m for lv, m in plan.items()},
            "stats": {k: v.to_dict() for k, v in stats.items()},
        }
        if any(m != "exact" for m in plan.values()):
            info["student_temperature"] = {
                self._name(lv): s_temps[lv] for lv, m in plan.items() if m != "exact"
            }
        if any(m == "speculative" for m in plan.values()):
            info["gamma"] = {
                self._name(lv): "auto" if s.inner.auto else s.inner.gamma
                for lv, s in samplers.items()
                if isinstance(s.inner, SpeculativeSampler)
            }
            info["draft"] = {
                self._name(lv): s.inner.draft
                for lv, s in samplers.items()
                if isinstance(s.inner, SpeculativeSampler)
            }
            info["draft_dtype"] = {
                self._name(lv): str(s.inner.draft_dtype).removeprefix("torch.")
                for lv, s in samplers.items()
                if isinstance(s.inner, SpeculativeSampler)
            }
        for name, st in stats.items():
            spec = ""
            if st.speculative is not None:
                sp = st.speculative
                spec = (
                    f", acceptance {sp.acceptance_rate:.3f}, "
                    f"{sp.tokens_per_pass:.2f} tokens per teacher pass"
                )
                if sp.exact_windows:
                    spec += (
                        f"; {sp.exact_windows} of {sp.windows} windows by the teacher alone "
                        "(gamma auto measured drafting slower there)"
                    )
            log.info(
                "%s level (%s): %d codes in %.2f s (%.0f codes/s)%s",
                name,
                st.mode,
                st.codes,
                st.seconds,
                st.codes_per_second,
                spec,
            )
        base = {f.name: getattr(result, f.name) for f in fields(GenerationResult)}
        base["info"] = info
        return FastGenerationResult(**base, stats=stats)


__all__ = [
    "EXPORT_DIR",
    "FAST_MODES",
    "FastGenerationResult",
    "FastJukebox",
    "LEVEL_MODES",
    "LevelStats",
    "STUDENTS_DIR",
    "StudentSampler",
    "STUDENT_MEMORY_BYTES",
    "WHOLE_SONG",
    "auto_chunk",
    "parse_level_modes",
    "parse_students",
    "resolve_level_modes",
]
