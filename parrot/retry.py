"""Exponential backoff with jitter: the one formula behind every retry loop (model calls, HTTP model
APIs, the object store).

Attempt ``n`` (0-based) waits for a step of ``min(max_s, initial_s * 2**n)``, of which the share
``jitter`` is random: 1.0 is "full jitter" (uniform in [0, step]), 0.5 "equal jitter" (half fixed,
half random), 0 no jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 10.0
    jitter: float = 1.0

    def delay(self, attempt: int) -> float:
        step = min(self.max_s, self.initial_s * (2 ** max(attempt, 0)))
        return max(0.0, step * (1.0 - self.jitter) + random.uniform(0.0, step * self.jitter))
