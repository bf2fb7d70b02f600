"""Phonetics of the synth's sung words: vowels and their formants, consonant onsets and the
lexicon, and a spelling-based guess of a syllable's vowel and onset (used for the chorales'
German and English lyrics too)."""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# phonetics: vowels, consonant onsets and the lexicon

VOWELS = ("a", "e", "i", "o", "u")

# Formant frequencies and bandwidths (Hz) of an adult male voice, after Peterson & Barney (1952):
# a as in "father", e as in "bed", i as in "see", o as in "go", u as in "blue".
VOWEL_FORMANTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "a": ((730.0, 1090.0, 2440.0), (90.0, 110.0, 160.0)),
    "e": ((530.0, 1840.0, 2480.0), (70.0, 100.0, 150.0)),
    "i": ((270.0, 2290.0, 3010.0), (60.0, 100.0, 170.0)),
    "o": ((500.0, 850.0, 2410.0), (70.0, 90.0, 150.0)),
    "u": ((300.0, 870.0, 2240.0), (60.0, 90.0, 140.0)),
}

# onset consonant → its class; the class picks the noise burst in :func:`sing`.
ONSET_CLASSES: dict[str, str] = {
    **dict.fromkeys(("p", "b", "t", "d", "k", "g", "c", "q"), "plosive"),
    **dict.fromkeys(("s", "z", "sh", "sch", "tz", "x"), "sibilant"),
    **dict.fromkeys(("f", "v", "th", "ch", "w"), "fricative"),
    "h": "aspirate",
    **dict.fromkeys(("m", "n", "l", "r", "j", "y"), "sonorant"),
    "": "none",
}

# word:vowel:onset. Monosyllables grouped by their sung vowel (the onset is the sound, not the
# spelling: "know" starts with n).
_LEXICON_TEXT = """
star:a:s heart:a:h far:a:f calm:a:k dark:a:d arms:a: spark:a:s part:a:p hard:a:h palm:a:p
start:a:s are:a: bed:e:b red:e:r bell:e:b friend:e:f well:e:w west:e:w said:e:s head:e:h ten:e:t
rest:e:r yes:e:y step:e:s see:i:s sea:i:s dream:i:d free:i:f sweet:i:s keep:i:k green:i:g
tree:i:t me:i:m leaf:i:l sleep:i:s feel:i:f home:o:h road:o:r gold:o:g snow:o:s go:o:g slow:o:s
stone:o:s know:o:n hope:o:h boat:o:b low:o:l soul:o:s blue:u:b moon:u:m you:u:y through:u:th
soon:u:s true:u:t room:u:r cool:u:k new:u:n who:u:h tune:u:t loose:u:l
"""


@dataclass(frozen=True)
class Word:
    """A lexicon entry: the text, the vowel it is sung on and its onset consonant."""

    text: str
    vowel: str
    onset: str


LEXICON: tuple[Word, ...] = tuple(
    Word(*item.split(":")) for item in _LEXICON_TEXT.split() if item.strip()
)
_WORDS_BY_TEXT = {w.text: w for w in LEXICON}


def word_vowel(word: str) -> str:
    """The vowel (one of :data:`VOWELS`) a lexicon word is sung on; falls back to spelling."""
    entry = _WORDS_BY_TEXT.get(word.lower())
    return entry.vowel if entry else syllable_phonetics(word)[0]


def syllable_phonetics(text: str) -> tuple[str, str]:
    """Guess ``(vowel, onset)`` of a written syllable (English or German spelling).

    The vowel is the first vowel letter group folded onto a/e/i/o/u (``ei``/``ai``/``au`` → a,
    ``ie`` → i, ``eu``/``äu`` → o, ``ä``/``ö`` → e, ``ü``/``y`` → i); the onset is the leading
    consonant cluster's first sound (``sch``/``sh``/``ch``/``th`` kept whole). A syllable
    without a vowel letter is sung on "a".
    """
    s = "".join(c for c in text.lower() if c.isalpha())
    s = s.replace("ß", "s")
    i = next((k for k, c in enumerate(s) if c in "aeiouäöüy"), None)
    if i is None:
        return "a", _onset_of(s)
    pair = s[i : i + 2]
    folded = {"ei": "a", "ai": "a", "ay": "a", "au": "a", "ie": "i", "ee": "i", "ea": "i"}
    folded |= {"eu": "o", "äu": "o", "oo": "u", "ou": "u", "ue": "u"}
    if pair in folded:
        vowel = folded[pair]
    else:
        vowel = {"ä": "e", "ö": "e", "ü": "i", "y": "i"}.get(s[i], s[i])
    return vowel, _onset_of(s[:i])


def _onset_of(cluster: str) -> str:
    for sound in ("sch", "sh", "ch", "th", "tz"):
        if cluster.startswith(sound):
            return sound
    return cluster[:1]
