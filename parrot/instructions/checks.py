"""The verifiable instructions: counts, keywords, formats, language, start/end, case, content.

Ids follow the IFEval naming (``group:name``) so files written for IFEval-style evaluation load
as they are; ``startend:start_checker`` is our own addition. Definitions used by the checks:

* *words* and *sentences* per script, as in :mod:`parrot.instructions.segmentation` (Punkt's
  English model for sentences, as the reference; CJK, Thai and Hindi as Multi-IF counts them);
* a *capital word* is a token with cased letters, all capitals (``NASA``; ``U.S.A.`` is one);
  words of scripts without case never are;
* ``number_paragraphs`` counts parts separated by a markdown divider line ``***`` (IFEval's
  convention); ``nth_paragraph_first_word`` counts parts separated by blank lines;
* a *bullet* is a line starting with ``*`` and another character than ``*``, or with ``-`` (as the
  reference: ``**bold**`` is not one, a ``---`` rule is);
* a *highlight* is ``*text*`` or ``**text**`` on one line;
* a *placeholder* is text in square brackets, ``[address]``;
* ``forbidden_words`` match whole words, ``existence`` and ``frequency`` count the keyword anywhere
  (as the reference: "the" counts inside "there"), case-insensitively.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata

from parrot.instructions.language import detect_language
from parrot.instructions.registry import Instruction, Param, compare, register
from parrot.instructions.segmentation import sentences, words

__all__ = ["sentences", "words"]

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_BULLET = re.compile(r"^\s*(?:\*[^*\n]|-).*$", re.MULTILINE)  # as the reference: "*x" or "-..." ("**bold**" is none)
_HIGHLIGHT = re.compile(r"\*\*[^\n*]+\*\*|(?<!\*)\*[^\n*]+\*(?!\*)")
_PLACEHOLDER = re.compile(r"\[.*?\]")  # as the reference: brackets on one line, even empty ones
_DIVIDER = re.compile(r"^\s*\*\s*\*\s*\*\s*$", re.MULTILINE)
_TITLE = re.compile(r"<<[^\n<>]+>>")




def _keyword_count(text: str, keyword: str) -> int:
    """Whole-word occurrences (``\b`` boundaries, as the reference's forbidden words)."""
    pattern = r"\b" + re.escape(keyword.strip()) + r"\b"
    return len(re.findall(pattern, text, flags=re.IGNORECASE))


def _occurrences(text: str, keyword: str) -> int:
    """Occurrences anywhere, case-insensitive, as the reference counts keywords for ``existence`` and
    ``frequency`` ("the" counts inside "there")."""
    return len(re.findall(re.escape(keyword.strip()), text, flags=re.IGNORECASE)) if keyword.strip() else 0


def _relation(name: str = "relation") -> Param:
    return Param(name, "relation", required=False, default="at least")


# ------------------------------------------------------------------------------ lengths


@register
class NumberWords(Instruction):
    id = "length_constraints:number_words"
    params = (Param("num_words", "int", minimum=0), _relation())
    description = "Answer with {relation} {num_words} words."

    def check(self, response: str) -> bool:
        return compare(len(words(response)), self.relation, self.num_words)


@register
class NumberSentences(Instruction):
    id = "length_constraints:number_sentences"
    params = (Param("num_sentences", "int", minimum=0), _relation())
    description = "Answer with {relation} {num_sentences} sentences."

    def check(self, response: str) -> bool:
        return compare(len(sentences(response)), self.relation, self.num_sentences)


@register
class NumberParagraphs(Instruction):
    id = "length_constraints:number_paragraphs"
    params = (Param("num_paragraphs", "int", minimum=1),)
    description = "Write exactly {num_paragraphs} paragraphs separated by the markdown divider ***."

    def check(self, response: str) -> bool:
        parts = _DIVIDER.split(response)
        if any(not p.strip() for p in parts[1:-1]):  # an empty paragraph between two dividers
            return False
        return sum(1 for p in parts if p.strip()) == self.num_paragraphs


@register
class NthParagraphFirstWord(Instruction):
    id = "length_constraints:nth_paragraph_first_word"
    params = (Param("num_paragraphs", "int", minimum=1), Param("nth_paragraph", "int", minimum=1),
              Param("first_word", "str"))
    description = "Write {num_paragraphs} paragraphs separated by blank lines; paragraph {nth_paragraph} starts with '{first_word}'."

    def check(self, response: str) -> bool:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", response) if p.strip()]
        if len(paragraphs) != self.num_paragraphs or self.nth_paragraph > len(paragraphs):
            return False
        # The first white-space token without the punctuation around it, as the reference ("Don't" stays one).
        token = paragraphs[self.nth_paragraph - 1].split()[0].strip(string.punctuation + "“”‘’«»")
        return bool(token) and token.lower() == self.first_word.strip().lower()


# ----------------------------------------------------------------------------- keywords


@register
class KeywordsExistence(Instruction):
    id = "keywords:existence"
    params = (Param("keywords", "str_list"),)
    description = "Include the keywords {keywords}."

    def check(self, response: str) -> bool:
        return all(_occurrences(response, k) > 0 for k in self.keywords)


@register
class ForbiddenWords(Instruction):
    id = "keywords:forbidden_words"
    params = (Param("forbidden_words", "str_list"),)
    description = "Do not use the words {forbidden_words}."

    def check(self, response: str) -> bool:
        return all(_keyword_count(response, k) == 0 for k in self.forbidden_words)


@register
class KeywordFrequency(Instruction):
    id = "keywords:frequency"
    params = (Param("keyword", "str"), Param("frequency", "int", minimum=0), _relation())
    description = "Use the word '{keyword}' {relation} {frequency} times."

    def check(self, response: str) -> bool:
        return compare(_occurrences(response, self.keyword), self.relation, self.frequency)


@register
class LetterFrequency(Instruction):
    id = "keywords:letter_frequency"
    params = (Param("letter", "str"), Param("let_frequency", "int", minimum=0), _relation("let_relation"))
    description = "Use the letter '{letter}' {let_relation} {let_frequency} times."

    def check(self, response: str) -> bool:
        return compare(response.lower().count(self.letter.strip().lower()), self.let_relation, self.let_frequency)


# ------------------------------------------------------------------------------ formats


def _strip_code_fence(text: str) -> str:
    """The text inside a ```json fence (one line or several), as the reference strips it."""
    t = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        if t.startswith(prefix):
            t = t[len(prefix):]
            break
    return t.removesuffix("```").strip()


@register
class JsonFormat(Instruction):
    id = "detectable_format:json_format"
    group = "whole_format"
    description = "Answer in JSON only (a code fence around it is allowed)."

    def check(self, response: str) -> bool:
        try:
            json.loads(_strip_code_fence(response))
        except ValueError:
            return False
        return True


@register
class NumberBulletLists(Instruction):
    id = "detectable_format:number_bullet_lists"
    params = (Param("num_bullets", "int", minimum=0),)
    description = "Answer with exactly {num_bullets} bullet points ('* ' or '- ')."

    def check(self, response: str) -> bool:
        return len(_BULLET.findall(response)) == self.num_bullets


@register
class NumberHighlightedSections(Instruction):
    id = "detectable_format:number_highlighted_sections"
    params = (Param("num_highlights", "int", minimum=1),)
    description = "Highlight at least {num_highlights} sections with markdown, *like this*."

    def check(self, response: str) -> bool:
        found = [h for h in _HIGHLIGHT.findall(response) if h.strip("*").strip()]
        return len(found) >= self.num_highlights


@register
class MultipleSections(Instruction):
    id = "detectable_format:multiple_sections"
    params = (Param("section_spliter", "str", required=False, default="Section"), Param("num_sections", "int", minimum=1))
    description = "Write {num_sections} sections, each starting with '{section_spliter} X'."

    def check(self, response: str) -> bool:
        marker = re.escape(self.section_spliter.strip())  # case-sensitive, as the reference
        return len(re.split(rf"\s?{marker}\s?\d+\s?", response)) - 1 >= self.num_sections


@register
class Title(Instruction):
    id = "detectable_format:title"
    description = "Give the answer a title in double angle brackets, <<like this>>."

    def check(self, response: str) -> bool:
        return any(t[2:-2].strip() for t in _TITLE.findall(response))


CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@register
class ConstrainedResponse(Instruction):
    id = "detectable_format:constrained_response"
    group = "whole_format"
    description = "Answer with one of: My answer is yes. / My answer is no. / My answer is maybe."

    def check(self, response: str) -> bool:
        return any(option in response for option in CONSTRAINED_OPTIONS)


# ----------------------------------------------------------------------------- language


@register
class ResponseLanguage(Instruction):
    id = "language:response_language"
    params = (Param("language", "str"),)
    group = "language"
    description = "Answer in the language '{language}' (ISO 639-1 code)."

    def check(self, response: str) -> bool:
        detected = detect_language(response)
        return detected is not None and detected.split("-")[0] == self.language.strip().lower().split("-")[0]


# ---------------------------------------------------------------------------- start/end


@register
class StartChecker(Instruction):
    id = "startend:start_checker"
    params = (Param("start_phrase", "str"),)
    group = "start"
    description = "Start the answer with '{start_phrase}'."

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.start_phrase.strip().lower())


@register
class EndChecker(Instruction):
    id = "startend:end_checker"
    params = (Param("end_phrase", "str"),)
    group = "end"
    description = "End the answer with '{end_phrase}' and nothing after it."

    def check(self, response: str) -> bool:
        # A closing quotation mark does not count (so startend:quotation and this can both hold).
        return response.strip().strip('"').strip().lower().endswith(self.end_phrase.strip().lower())


@register
class Quotation(Instruction):
    id = "startend:quotation"
    description = "Wrap the whole answer in double quotation marks."

    def check(self, response: str) -> bool:
        t = response.strip()
        return len(t) > 1 and t[0] in "\"“" and t[-1] in "\"”"


@register
class RepeatPrompt(Instruction):
    id = "combination:repeat_prompt"
    params = (Param("prompt_to_repeat", "str"),)
    group = "start"
    description = "First repeat the request word for word, then answer."

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.prompt_to_repeat.strip().lower())


@register
class TwoResponses(Instruction):
    id = "combination:two_responses"
    group = "whole_format"
    description = "Give two different answers separated by six asterisks (******)."

    def check(self, response: str) -> bool:
        parts = response.split("******")
        if any(not p.strip() for p in parts[1:-1]):  # an empty answer between two separators
            return False
        valid = [p.strip() for p in parts if p.strip()]  # a separator at either end is allowed
        return len(valid) == 2 and valid[0] != valid[1]


# --------------------------------------------------------------------------------- case


def _is_english(text: str) -> bool:
    """The instruction says English: Chinese "in lowercase" or lowercase Russian does not pass.
    Detected on the lowercased text (a deviation: the reference detects all-capital text as it is,
    where langdetect takes short English like "FINE THANKS" for Vietnamese)."""

    return detect_language(text.lower()) == "en"


@register
class Lowercase(Instruction):
    id = "change_case:english_lowercase"
    group = "case"
    description = "Write the whole answer in lowercase letters."

    def check(self, response: str) -> bool:
        return response.islower() and _is_english(response)


@register
class Uppercase(Instruction):
    id = "change_case:english_capital"
    group = "case"
    description = "Write the whole answer in capital letters."

    def check(self, response: str) -> bool:
        return response.isupper() and _is_english(response)


# U.S.A. is one token, INSTALLED_APPS and WELL-KNOWN are one, DON'T is two (DON, T), as the reference's
# word tokenizer splits it (DO, N'T).
_CAPS_TOKEN = re.compile(r"(?:[^\W\d_]\.){2,}|\w+(?:-\w+)*")


@register
class CapitalWordFrequency(Instruction):
    id = "change_case:capital_word_frequency"
    params = (Param("capital_frequency", "int", minimum=0), _relation("capital_relation"))
    description = "Use words in all capital letters {capital_relation} {capital_frequency} times."

    def check(self, response: str) -> bool:
        n = sum(1 for w in _CAPS_TOKEN.findall(response) if w.isupper())  # isupper: cased letters, all capitals
        return compare(n, self.capital_relation, self.capital_frequency)


# ------------------------------------------------------------------------ content, punctuation


@register
class NumberPlaceholders(Instruction):
    id = "detectable_content:number_placeholders"
    params = (Param("num_placeholders", "int", minimum=1),)
    description = "Include at least {num_placeholders} placeholders in square brackets, like [address]."

    def check(self, response: str) -> bool:
        return len(_PLACEHOLDER.findall(response)) >= self.num_placeholders


@register
class Postscript(Instruction):
    id = "detectable_content:postscript"
    params = (Param("postscript_marker", "str", required=False, default="P.S."),)
    description = "End with a postscript starting with {postscript_marker}."

    def check(self, response: str) -> bool:
        # As the reference: the marker anywhere (so **P.S.** counts), its dots required, a space
        # allowed after each ("P. S." like "P.S."; "steps" is no "P.S.").
        marker = self.postscript_marker.strip().lower().replace(" ", "")
        pattern = re.escape(marker).replace(r"\.", r"\.\s?")
        pattern = pattern[:-3] if pattern.endswith(r"\s?") else pattern
        return bool(marker) and re.search(pattern, response.lower()) is not None


@register
class NoComma(Instruction):
    id = "punctuation:no_comma"
    description = "Do not use any commas."

    def check(self, response: str) -> bool:
        return "," not in response and "，" not in response

