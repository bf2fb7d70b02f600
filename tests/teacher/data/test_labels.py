"""Lyric tokenizer, name normalisation, vocabulary and the Jukebox label layout."""

from __future__ import annotations

import re

import numpy as np
import pytest
from unidecode import unidecode

from teacher.config import ConfigError
from teacher.data.labels import (
    LabelConfig,
    Labeller,
    Vocab,
    char_times,
    linear_lyric_window,
    make_label,
    split_label,
    timed_lyric_window,
)
from teacher.data.text import LyricTokenizer, genre_words, normalize_name

# ---------------------------------------------------------------------------------------------
# tokenizer


def test_vocab_sizes_match_jukebox_hparams():
    # jukebox/hparams.py: labels_v3 n_vocab=79, v2 n_vocab=80 (78/79 chars + <unk>)
    v3, v2 = LyricTokenizer("v3"), LyricTokenizer("v2")
    assert (len(v3.chars), v3.n_vocab) == (78, 79)
    assert (len(v2.chars), v2.n_vocab) == (79, 80)
    assert set(v2.chars) - set(v3.chars) == {"+"}
    assert LabelConfig(lyric_version="v2").n_vocab == 80
    # token = position + 1; 0 is <unk>
    assert v3.encode("Aa0 ") == [1, 27, 53, 76]
    assert v2.encode("Aa0 +") == [1, 27, 53, 77, 70]


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_clean_non_ascii_and_punctuation(version):
    tok = LyricTokenizer(version)
    text, stats = tok.clean_with_stats("Beyoncé — Déjà vu!")
    assert text == "Beyonce -- Deja vu!"
    assert (stats.mapped, stats.dropped) == (4, 0)  # é — é à transliterated
    assert tok.decode(tok.encode("Beyoncé — Déjà vu!")) == "Beyonce -- Deja vu!"
    plus, stats = tok.clean_with_stats("1+1=2 {x}\\next")
    assert plus == ("1+12 x\nnext" if version == "v2" else "112 x\nnext")
    assert stats.dropped_chars["="] == 1 and stats.dropped_chars["{"] == 1
    assert stats.dropped == (3 if version == "v2" else 4)
    assert tok.stats.chars == len("Beyoncé — Déjà vu!") * 2 + len("1+1=2 {x}\\next")


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_clean_equals_whole_string_reference(version):
    # Jukebox's clean on the whole string: unidecode, '\\' -> '\n', regex drop of non-vocab.
    tok = LyricTokenizer(version)
    not_vocab = re.compile("[^" + re.escape(tok.chars) + "]+")
    for s in ["Ça va? «Très» bien…\\ok", "日本語 ½ © ™ — – ‘q’", "tab\there + [x] (y)"]:
        assert tok.clean(s) == not_vocab.sub("", unidecode(s).replace("\\", "\n"))


def test_decode_skips_unk_and_padding():
    tok = LyricTokenizer("v3")
    assert tok.decode([0, -1, 1, 2, 0]) == "AB"
    assert tok.encode("A{B", clean=False) == [1, 0, 2]


def test_normalize_name_v2_v3():
    assert normalize_name("Alan Jackson", "v3") == "alan jackson"
    assert normalize_name("Beyoncé & Jay-Z", "v3") == "beyoncé & jay-z"
    assert normalize_name("Beyoncé & Jay-Z", "v2") == "beyonc_jay_z"
    assert normalize_name("András Schiff", "v2") == "andr_s_schiff"  # as in v2_artist_ids.txt
    assert normalize_name("__Hip--Hop__", "v2") == "hip_hop"
    assert genre_words("Country Rock", "v2") == ["country", "rock"]
    assert genre_words(["Country Rock", "Pop"], "v3") == ["country rock", "pop"]
    assert genre_words(None) == []
    with pytest.raises(ValueError, match="v2"):
        normalize_name("x", "v4")


# ---------------------------------------------------------------------------------------------
# vocab


def test_vocab_build_sorted_and_round_trip(tmp_path):
    v = Vocab.build(["Zed", "Abba", None, "abba", ""], ["Rock", ["Pop", "rock"], None], "v3")
    assert v.artists == {"unknown": 0, "abba": 1, "zed": 2}
    assert v.genres == {"unknown": 0, "pop": 1, "rock": 2}
    assert v.artist_id("ABBA") == 1 and v.artist_id("nobody") == 0 and v.artist_id(None) == 0
    assert v.genre_ids(["Rock", "Jazz"]) == [2, 0]
    assert v.genre_ids(None) == [0]
    assert (v.n_artists, v.n_genres) == (3, 3)
    path = v.save(str(tmp_path))
    assert path.endswith("vocab.json")
    w = Vocab.load(str(tmp_path))
    assert w == v
    assert w.artist_name(2) == "zed" and w.genre_name(0) == "unknown"


def test_vocab_v2_bag_of_words():
    v = Vocab.build(["A"], ["Country Rock", "Hip Hop"], "v2")
    assert v.genres == {"unknown": 0, "country": 1, "hip": 2, "hop": 3, "rock": 4}
    assert v.genre_ids("Country Rock") == [1, 4]


def test_vocab_from_jukebox_id_lists(tmp_path):
    (tmp_path / "a.txt").write_text("unknown;0\nalan jackson;7\nAlan J;7\n")
    (tmp_path / "g.txt").write_text("unknown;0\ncountry rock;3\n")
    v = Vocab.from_id_lists(str(tmp_path / "a.txt"), str(tmp_path / "g.txt"), "v3")
    assert v.artist_id("Alan Jackson") == 7 and v.artist_id("alan j") == 7
    assert v.genre_ids("Country Rock") == [3]
    assert v.artist_name(7) == "alan j"


# ---------------------------------------------------------------------------------------------
# label layout


def test_label_config_validate():
    assert LabelConfig().size == 9
    assert LabelConfig(max_genres=1, n_tokens=384).size == 389
    with pytest.raises(ConfigError, match="max_genres"):
        LabelConfig(max_genres=0).validate()
    with pytest.raises(ConfigError, match="lyric_version"):
        LabelConfig(lyric_version="v9").validate()


def test_make_label_layout():
    y = make_label(1000, 200, 100, 7, [3, 4], [11, 12, 13], max_genres=5)
    assert y.dtype == np.int64
    assert y.tolist() == [1000, 200, 100, 7, 3, 4, -1, -1, -1, 11, 12, 13]
    p = split_label(y, max_genres=5)
    assert (p.total_length, p.offset, p.length, p.artist_id) == (1000, 200, 100, 7)
    assert p.genre_ids == [3, 4] and p.lyric_tokens == [11, 12, 13]
    assert make_label(10, 0, 5, 0, [0], max_genres=1).tolist() == [10, 0, 5, 0, 0]
    with pytest.raises(ValueError, match="max_genres"):
        make_label(10, 0, 5, 0, [1, 2], max_genres=1)


# ---------------------------------------------------------------------------------------------
# lyric windows


def _reference_midpoint(n_full, n_tokens, total, offset, length):
    """The reference formula (Jukebox get_relevant_lyric_tokens), for even windows."""
    mid = int(n_full * (offset + length / 2.0) / total)
    return min(max(mid, n_tokens // 2), n_full - n_tokens // 2)


@pytest.mark.parametrize(
    "offset, start",
    [
        # 20 chars over 1000 samples, window 8, crop length 100; worked out by hand:
        (0, 0),  # int(20 * 50/1000) = 1 -> clamped up to 4 -> chars 0..7
        (330, 3),  # int(20 * 380/1000) = int(7.6) = 7 -> chars 3..10
        (500, 7),  # int(20 * 550/1000) = 11 -> chars 7..14
        (900, 12),  # int(20 * 950/1000) = 19 -> clamped down to 16 -> chars 12..19
    ],
)
def test_linear_window_hand_computed(offset, start):
    full = list(range(1, 21))
    tokens, idx = linear_lyric_window(full, 8, 1000, offset, 100)
    assert idx == list(range(start, start + 8))
    assert tokens == [full[i] for i in idx]
    assert start == _reference_midpoint(20, 8, 1000, offset, 100) - 4


def test_linear_window_matches_reference_formula():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_full, n_tok = int(rng.integers(8, 300)), 2 * int(rng.integers(1, 4))
        total = int(rng.integers(1000, 100000))
        length = int(rng.integers(1, total))
        offset = int(rng.integers(0, total))
        full = list(rng.integers(1, 79, n_full))
        tokens, idx = linear_lyric_window(full, n_tok, total, offset, length)
        mid = _reference_midpoint(n_full, n_tok, total, offset, length)
        assert idx == list(range(mid - n_tok // 2, mid + n_tok // 2))
        assert tokens == full[mid - n_tok // 2 : mid + n_tok // 2]


def test_linear_window_short_lyrics_left_padded():
    tokens, idx = linear_lyric_window([5, 6, 7], 5, 1000, 0, 100)
    assert tokens == [0, 0, 5, 6, 7] and idx == [-1, -1, 0, 1, 2]
    assert linear_lyric_window([], 3, 1000, 0, 100) == ([0, 0, 0], [-1, -1, -1])
    assert linear_lyric_window([1, 2], 0, 1000, 0, 100) == ([], [])


def test_char_times_hand_computed():
    text = "Hello, world!\nBye"
    words = [
        {"word": "Hello", "start": 0.0, "end": 1.0},
        {"word": "world", "start": 1.0, "end": 2.0},
        {"word": "Bye", "start": 5.0, "end": 6.0},
    ]
    t = char_times(text, words)
    expected = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.0, 1.1, 1.3, 1.5, 1.7, 1.9, 2.0, 2.0]
    expected += [5 + 1 / 6, 5.5, 5 + 5 / 6]
    np.testing.assert_allclose(t, expected)
    # centre 3 s falls in the gap: 14 chars are timed before it, window of 4 starts at 12
    tokens = list(range(1, len(text) + 1))
    got, idx = timed_lyric_window(tokens, t, 4, 3.0)
    assert idx == [12, 13, 14, 15] and "".join(text[i] for i in idx) == "!\nBy"
    # centre 1.4 s is inside "world" (chars 7, 8 before it): mid 9 -> chars 7..10
    assert timed_lyric_window(tokens, t, 4, 1.4)[1] == [7, 8, 9, 10]
    # before the first word / after the last: clamped like the linear window
    assert timed_lyric_window(tokens, t, 4, -1.0)[1] == [0, 1, 2, 3]
    assert timed_lyric_window(tokens, t, 4, 99.0)[1] == [13, 14, 15, 16]
    assert timed_lyric_window(tokens[:2], t[:2], 4, 0.0) == ([0, 0, 1, 2], [-1, -1, 0, 1])


def test_char_times_leading_text_and_missing_words():
    text = "oh la la"
    words = [{"word": "la", "start": 2.0, "end": 3.0}, {"word": "zz", "start": 4, "end": 5}]
    t = char_times(text, words)
    np.testing.assert_allclose(t, [2.0, 2.0, 2.0, 2.25, 2.75, 3.0, 3.0, 3.0])
    assert char_times("abc", []).tolist() == [0.0, 0.0, 0.0]


def test_labeller_timed_vs_linear():
    cfg = LabelConfig(max_genres=2, n_tokens=4)
    vocab = Vocab.build(["Bach"], ["Chorale"])
    lab = Labeller(cfg, vocab)
    words = [{"word": "ab", "start": 0.0, "end": 1.0}, {"word": "cd", "start": 9.0, "end": 10.0}]
    tokens, times = lab.encode_lyrics("ab cd", words)
    assert tokens == lab.tokenizer.encode("ab cd") and times is not None
    # a 1 s crop at 4.5 s of a 10 s song at 100 Hz: linear -> middle of the text,
    # timed -> the gap after "ab" (3 chars timed before 5 s)
    y_lin, idx_lin = lab.label(1000, 450, 100, 1, [1], tokens)
    y_tim, idx_tim = lab.label(1000, 450, 100, 1, [1], tokens, times, sample_rate=100)
    assert idx_lin == [0, 1, 2, 3]  # int(5 * 0.5) = 2 -> clamped to [0, 4)
    assert idx_tim == [1, 2, 3, 4]
    assert y_tim.tolist()[:6] == [1000, 450, 100, 1, 1, -1]
    assert lab.describe(y_tim)["lyrics"] == "b cd"
    assert lab.describe(y_tim)["artist"] == "bach"
