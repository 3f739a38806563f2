"""The run browser: a web page the coordinator serves on its HTTP port (beside /metrics).

Pages (all under ``/ui/``, behind the coordinator's token): the runs with live progress
(server-sent events from the same per-run event stream WatchRun uses) and cancel / resume
buttons; one run (per-turn mean score with 95% CI bands, instruction following per turn,
per-category table, failures); its conversations, paged on the server and filtered (category,
score below X, failed instruction checks); one conversation turn by turn (answer, judge score and
explanation, instruction checks, provenance of drafted turns; for collection runs the
context-dependent follow-ups highlighted, for negatives runs chosen vs rejected side by side);
two runs compared (per-turn deltas, the session turns where they differ most).

Charts are drawn in the browser by uPlot (MIT), served from ``static/vendor/``, which
``scripts/get_web_assets.sh`` fills at setup from npm (pinned version and checksum); no CDN.
Figures come from ``parrot.reports`` (the same tables and series as the static reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = field(default=True, metadata={"help": "Serve the run browser at /ui/ on the HTTP port (--web/--no-web)."})
    page_size: int = field(default=50, metadata={"help": "Rows per page of runs and conversations."})
    store_timeout_s: float = field(default=5.0, metadata={
        "help": "How long a page waits for the object store before it shows an outage banner."})
    index_cache_runs: int = field(default=4, metadata={"help": "Finished runs whose conversation index is kept in memory."})

    def __post_init__(self) -> None:
        from parrot.errors import ConfigError

        if not 1 <= self.page_size <= 1000:
            raise ConfigError(f"web page_size is {self.page_size}; allowed 1..1000")
        if not 0 < self.store_timeout_s <= 600:
            raise ConfigError(f"web store_timeout_s is {self.store_timeout_s}; allowed (0, 600]")
