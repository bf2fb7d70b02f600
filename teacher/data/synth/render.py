"""Rendering a synth score to audio with numpy: band-limited wavetable oscillators,
envelopes, the instruments, the source-filter voice (consonant bursts, glottal source, formant
resonators), drums, stems and the mix; plus the spectral measures the tests use
(:func:`formant_response`, :func:`band_energy`, :func:`spectral_centroid`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.signal import lfilter

from teacher.data.synth.compose import Hit, Note, Song, SungNote
from teacher.data.synth.phonetics import ONSET_CLASSES, VOWEL_FORMANTS
from teacher.data.synth.styles import ARTISTS, GENRES, INSTRUMENTS, Singer

# ---------------------------------------------------------------------------------------------
# sound: band-limited wavetable oscillators, envelopes, instruments, voice, drums

_TABLE = 2048
_MAX_HARMONICS = 64


@lru_cache(maxsize=1)
def _sines() -> np.ndarray:
    """``sin(2π k n / N)`` for harmonics k = 1..64 over one table period: (K, N)."""
    k = np.arange(1, _MAX_HARMONICS + 1)[:, None]
    return np.sin(2 * np.pi * k * np.arange(_TABLE)[None, :] / _TABLE)


def harmonic_table(amps: np.ndarray, f0_max: float, sample_rate: int) -> np.ndarray:
    """One period of ``Σ_k amps[k-1] sin(kθ)`` keeping harmonics below 0.45·sr (no aliasing)."""
    k_max = int(min(len(amps), _MAX_HARMONICS, max(1, 0.45 * sample_rate // max(f0_max, 1.0))))
    return amps[:k_max] @ _sines()[:k_max]


def _lookup(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read a one-period table at phase ``cycles`` (in periods) with linear interpolation."""
    pos = (cycles % 1.0) * _TABLE
    i0 = pos.astype(np.int64)
    frac = pos - i0
    i0 %= _TABLE
    return table[i0] * (1.0 - frac) + table[(i0 + 1) % _TABLE] * frac


def _harmonics(kind: str) -> np.ndarray:
    k = np.arange(1, _MAX_HARMONICS + 1, dtype=np.float64)
    if kind == "organ":  # drawbars 8', 4', 2 2/3', 2' and a little 1'
        amps = np.zeros(_MAX_HARMONICS)
        amps[[0, 1, 2, 3, 7]] = (1.0, 0.45, 0.2, 0.12, 0.04)
        return amps
    if kind == "pulse":  # 25% duty cycle
        return np.abs(np.sin(np.pi * k * 0.25)) / k
    if kind == "saw":
        return 1.0 / k
    if kind == "dark":
        return k**-2.5
    if kind == "pluck":
        return k**-0.9 * np.abs(np.sin(np.pi * k * 0.18))  # plucked at 18% of the string
    raise ValueError(kind)


def _gate(n: int, gate_n: int, release_n: int) -> np.ndarray:
    """1 until ``gate_n``, then a linear release to 0 over ``release_n`` samples."""
    env = np.ones(n)
    tail = np.arange(n - gate_n) / max(release_n, 1)
    env[gate_n:] = np.clip(1.0 - tail, 0.0, 1.0)
    return env


def _attack(t: np.ndarray, seconds: float) -> np.ndarray:
    return np.minimum(1.0, t / seconds)


def render_instrument(kind: str, notes: Sequence[Note], n_samples: int, sr: int) -> np.ndarray:
    """Render notes on one of :data:`INSTRUMENTS` into a float64 array of ``n_samples``."""
    out = np.zeros(n_samples)
    release = 0.08
    rel_n = int(release * sr)
    tables: dict[tuple[str, int], np.ndarray] = {}

    def table(name: str, f0: float) -> np.ndarray:
        key = (name, int(0.45 * sr // max(f0, 1.0)))  # same harmonic count → same table
        if key not in tables:
            tables[key] = harmonic_table(_harmonics(name), f0, sr)
        return tables[key]

    for note in notes:
        s = int(round(note.start * sr))
        if s >= n_samples:
            continue
        gate_n = max(1, int(round((note.end - note.start) * sr)))
        n = min(gate_n + rel_n, n_samples - s)
        if n <= 0:
            continue
        t = np.arange(n) / sr
        f0 = 440.0 * 2.0 ** ((note.pitch - 69.0) / 12.0)
        cycles = f0 * t
        if kind == "organ":
            x = _lookup(table("organ", f0), cycles) * (1 + 0.06 * np.sin(2 * np.pi * 5.7 * t))
            env = _attack(t, 0.015)
        elif kind == "fm_piano":  # 1:1 FM, index decaying (Chowning 1973)
            index = 2.4 * np.exp(-t / 0.25) + 0.25
            x = np.sin(2 * np.pi * cycles + index * np.sin(2 * np.pi * cycles))
            env = _attack(t, 0.003) * np.exp(-t / 0.9)
        elif kind == "pluck":  # bright attack fading to a dark tail
            w = np.exp(-t / 0.09)
            bright, dark = table("pluck", f0), table("dark", f0)
            x = w * _lookup(bright, cycles) + (1 - w) * 1.5 * _lookup(dark, cycles)
            env = _attack(t, 0.002) * np.exp(-t / 0.5)
        elif kind == "chip":
            x = _lookup(table("pulse", f0), cycles)
            env = _attack(t, 0.003) * (0.75 + 0.25 * np.exp(-t / 0.06))
        elif kind == "brass":  # brightness opens with the attack
            w = 0.85 * np.clip(t / 0.09, 0.0, 1.0)
            x = w * _lookup(table("saw", f0), cycles) + (1 - w) * _lookup(table("dark", f0), cycles)
            env = _attack(t, 0.045) * (0.85 + 0.15 * np.exp(-t / 0.15))
        else:
            raise ValueError(f"unknown instrument {kind!r}; known: {INSTRUMENTS}")
        out[s : s + n] += note.velocity * env * _gate(n, gate_n, rel_n) * x
    return out


def _resonate(x: np.ndarray, freq: float, bw: float, sr: int) -> np.ndarray:
    """A two-pole resonator with unity gain at DC (Klatt 1980, eq. 2)."""
    c = -math.exp(-2 * math.pi * bw / sr)
    b = 2 * math.exp(-math.pi * bw / sr) * math.cos(2 * math.pi * freq / sr)
    return lfilter([1.0 - b - c], [1.0, -b, -c], x)


def vowel_formants(vowel: str, scale: float = 1.0, sample_rate: int = 22050) -> list[tuple]:
    """``[(freq, bandwidth)]`` of the three formants of ``vowel``, scaled and kept below 0.45·sr."""
    freqs, bws = VOWEL_FORMANTS[vowel]
    top = 0.45 * sample_rate
    return [(min(f * scale, top * (0.8 + 0.1 * i)), b * scale) for i, (f, b) in enumerate(zip(freqs, bws))]  # fmt: skip


def formant_filter(x: np.ndarray, vowel: str, sample_rate: int, scale: float = 1.0) -> np.ndarray:
    """Cascade of the vowel's three formant resonators (a Klatt cascade vocal tract)."""
    for freq, bw in vowel_formants(vowel, scale, sample_rate):
        x = _resonate(x, freq, bw, sample_rate)
    return x


def formant_response(
    freqs: np.ndarray, vowel: str, sample_rate: int = 22050, scale: float = 1.0
) -> np.ndarray:
    """Magnitude response of :func:`formant_filter` at ``freqs`` (Hz)."""
    z = np.exp(-2j * np.pi * np.asarray(freqs, dtype=np.float64) / sample_rate)
    h = np.ones_like(z)
    for freq, bw in vowel_formants(vowel, scale, sample_rate):
        c = -math.exp(-2 * math.pi * bw / sample_rate)
        b = 2 * math.exp(-math.pi * bw / sample_rate) * math.cos(2 * math.pi * freq / sample_rate)
        h *= (1.0 - b - c) / (1.0 - b * z - c * z * z)
    return np.abs(h)


def band_energy(audio: np.ndarray, sample_rate: int, lo: float, hi: float) -> float:
    """Fraction of the (Hann-windowed) power spectrum of ``audio`` in ``[lo, hi)`` Hz."""
    x = np.asarray(audio, dtype=np.float64)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    total = power.sum()
    return float(power[(f >= lo) & (f < hi)].sum() / total) if total > 0 else 0.0


def spectral_centroid(audio: np.ndarray, sample_rate: int) -> float:
    """Power-weighted mean frequency (Hz) of ``audio``."""
    x = np.asarray(audio, dtype=np.float64)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    return float((f * power).sum() / max(power.sum(), 1e-20))


# centre frequency (Hz) of each plosive's burst: labials low, velars mid, alveolars high
_PLOSIVE_BURST = {"p": 900.0, "b": 700.0, "t": 4200.0, "d": 3200.0, "k": 2100.0, "g": 1800.0}


def _burst(onset: str, vowel: str, n: int, sr: int, rng: np.random.Generator, scale: float):
    """The consonant noise of ``onset`` (``n`` samples or fewer), or None for vowels/sonorants."""
    cls = ONSET_CLASSES.get(onset, "plosive" if onset else "none")
    if cls in ("none", "sonorant"):
        return None
    t = np.arange(n) / sr
    noise = rng.standard_normal(n)
    top = 0.42 * sr
    if cls == "plosive":  # a short release burst
        y = _resonate(noise, min(_PLOSIVE_BURST.get(onset, 2500.0), top), 1500.0, sr)
        env, level = np.exp(-t / 0.006), 0.5
    elif cls == "sibilant":  # "s"/"sh" hiss
        y = _resonate(noise, min(6200.0 if onset in ("s", "z") else 3400.0, top), 2500.0, sr)
        env, level = np.sin(np.pi * np.arange(n) / n) ** 0.5, 0.35
    elif cls == "aspirate":  # "h": breath through the vowel's own formants
        y = formant_filter(noise, vowel, sr, scale)
        env, level = np.sin(np.pi * np.arange(n) / n), 0.25
    else:  # "f", "th", "v", "w": soft broadband friction
        y = _resonate(noise, min(4500.0, top), 4000.0, sr)
        env, level = np.sin(np.pi * np.arange(n) / n), 0.18
    y = y * env
    rms = math.sqrt(float(np.mean(y**2))) + 1e-12
    return level * y / rms


# consonant duration and voice-onset delay in seconds, by onset class
_CONSONANT_TIMING = {
    "plosive": (0.02, 0.018),
    "sibilant": (0.08, 0.06),
    "fricative": (0.05, 0.04),
    "aspirate": (0.05, 0.035),
    "sonorant": (0.0, 0.0),
    "none": (0.0, 0.0),
}


def sing(notes: Sequence[SungNote], n_samples: int, sr: int, singer: Singer, seed: int = 0):
    """Render sung notes: consonant burst, then a glottal source through the vowel's formants.

    Each note is filtered on its own (a syllable), with a 50 ms release overlapping the next;
    its voiced part is scaled to RMS ``0.3·velocity`` so vowels are equally loud.
    """
    out = np.zeros(n_samples)
    rng = np.random.default_rng(seed)
    release_n = int(0.05 * sr)
    src_amps = np.arange(1, _MAX_HARMONICS + 1, dtype=np.float64) ** -singer.tilt
    for note in notes:
        s = int(round(note.start * sr))
        if s >= n_samples:
            continue
        dur = note.end - note.start
        cls = ONSET_CLASSES.get(note.onset, "plosive" if note.onset else "none")
        burst_s, delay_s = _CONSONANT_TIMING[cls]
        squeeze = min(1.0, 0.35 * dur / max(delay_s, 1e-9)) if delay_s else 1.0
        burst_n, delay_n = int(burst_s * squeeze * sr), int(delay_s * squeeze * sr)
        burst = _burst(note.onset, note.vowel, burst_n, sr, rng, singer.formant_scale)
        if burst is not None and burst_n > 0:
            m = min(burst_n, n_samples - s)
            out[s : s + m] += note.velocity * burst[:m]

        v0 = s + delay_n
        gate_n = max(1, int(round(dur * sr)) - delay_n)
        n = min(gate_n + release_n, n_samples - v0)
        if n <= 0:
            continue
        t = np.arange(n) / sr
        f0 = 440.0 * 2.0 ** ((note.pitch - 69.0) / 12.0)
        semis = -singer.scoop * np.exp(-t / 0.03) if singer.scoop else 0.0
        vib = singer.vibrato_depth * np.sin(2 * np.pi * singer.vibrato_hz * t + rng.uniform(0, 6.3))
        vib = vib * np.clip((t - 0.12) / 0.2, 0.0, 1.0)  # vibrato fades in after the onset
        freq = f0 * 2.0 ** (semis / 12.0) * (1.0 + vib)
        cycles = np.cumsum(freq) / sr
        src = _lookup(harmonic_table(src_amps, f0 * (1 + singer.vibrato_depth), sr), cycles)
        if singer.breath:
            src = src + singer.breath * rng.standard_normal(n)
        attack = 0.05 if cls == "sonorant" else 0.02
        env = _attack(t, attack) * _gate(n, gate_n, release_n)
        voiced = formant_filter(src * env, note.vowel, sr, singer.formant_scale)
        rms = math.sqrt(float(np.mean(voiced[:gate_n] ** 2))) + 1e-12
        out[v0 : v0 + n] += 0.3 * note.velocity * voiced / rms
    return out


def _drum_kit(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One sample per drum, peak 1; the noise comes from ``rng`` so songs are reproducible."""

    def t_of(seconds: float) -> np.ndarray:
        return np.arange(int(seconds * sr)) / sr

    t = t_of(0.3)
    freq = 45.0 + 110.0 * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.11)
    t = t_of(0.25)
    snare = _resonate(rng.standard_normal(len(t)), min(3000.0, 0.4 * sr), 3000.0, sr)
    snare = snare / np.abs(snare).max() * np.exp(-t / 0.06)
    snare += 0.6 * np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.04)
    t = t_of(0.08)
    hat = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / 0.015)
    t = t_of(0.12)
    shaker = np.diff(rng.standard_normal(len(t) + 1)) * np.minimum(1, t / 0.02) * np.exp(-t / 0.03)
    kit = {"kick": kick, "snare": snare, "hat": 0.5 * hat, "shaker": 0.4 * shaker}
    return {k: v / np.abs(v).max() for k, v in kit.items()}


def render_drums(hits: Sequence[Hit], n_samples: int, sr: int, seed: int = 0) -> np.ndarray:
    """Place the drum samples of :func:`_drum_kit` at each hit."""
    out = np.zeros(n_samples)
    kit = _drum_kit(sr, np.random.default_rng(seed))
    level = {"kick": 1.0, "snare": 0.7, "hat": 0.35, "shaker": 0.45}
    for h in hits:
        s = int(round(h.time * sr))
        x = kit[h.drum]
        m = min(len(x), n_samples - s)
        if m > 0:
            out[s : s + m] += h.velocity * level[h.drum] * x[:m]
    return out


def render_stems(song: Song, sample_rate: int) -> dict[str, np.ndarray]:
    """The song's stems as float64 arrays: ``vocals``, ``chords``, ``bass``, ``drums``.

    Levels are set here (RMS relative to the vocals); the mix is their sum.
    """
    n = int(round(song.seconds * sample_rate))
    a, g = ARTISTS[song.artist], GENRES[song.genre]
    vocals = sing(song.melody, n, sample_rate, a.singer, seed=song.noise_seed)
    chords = render_instrument(a.instrument, song.accompaniment, n, sample_rate)
    bass = render_instrument(a.instrument, song.bass, n, sample_rate)
    drums = render_drums(song.drums, n, sample_rate, seed=song.noise_seed + 1)

    def rms(x: np.ndarray) -> float:
        return math.sqrt(float(np.mean(x**2))) + 1e-12

    ref = rms(vocals) if np.any(vocals) else 0.05  # a song too short for a word still plays
    return {
        "vocals": vocals,
        "chords": chords * (g.accomp_level * ref / rms(chords)),
        "bass": bass * (0.5 * ref / rms(bass)),
        "drums": drums * (0.45 * ref / rms(drums)),
    }


def mix(stems: dict[str, np.ndarray], sample_rate: int, peak: float = 0.9) -> np.ndarray:
    """Sum stems, fade the edges (5 ms in, 30 ms out) and normalise to ``peak``: float32."""
    x = sum(stems.values())
    fade_in, fade_out = int(0.005 * sample_rate), int(0.03 * sample_rate)
    x[:fade_in] *= np.linspace(0.0, 1.0, fade_in)
    x[len(x) - fade_out :] *= np.linspace(1.0, 0.0, fade_out)
    top = float(np.abs(x).max())
    if not np.isfinite(top):
        raise FloatingPointError("non-finite sample in the synth mix")
    if top > 0:
        x = x * (peak / top)
    return x.astype(np.float32)
