"""Language of an answer, with ``langdetect`` (offline; its language profiles ship in the package).

langdetect samples internally; the factory is seeded once so the same text always gets the same
answer. Text without letters has no language (None).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_seeded = False


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code langdetect finds for ``text`` (e.g. "en", "fr", "zh-cn"), or None."""
    global _seeded
    if not any(c.isalpha() for c in text):
        return None
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    with _lock:
        if not _seeded:
            DetectorFactory.seed = 0
            _seeded = True
        try:
            return detect(text)
        except LangDetectException:
            return None
