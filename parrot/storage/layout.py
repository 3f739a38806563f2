"""Where a run lives in the object store, written once. Everything under ``runs/<id>/``:

- ``run.json``: the spec without input contents, state, progress, timestamps;
- ``inputs/<field>``: the input files as given;
- ``units/<index>.json``: one record per finished or failed conversation (a restarted coordinator
  lists them and runs only what is missing);
- ``outputs/<name>``: written when all units are done (FastChat / ShareGPT files, summary.json);
- ``reports/<report id>/``: reports made from the run.
"""

from __future__ import annotations

RUNS = "runs/"


def run_prefix(run_id: str) -> str:
    return f"{RUNS}{run_id}"


def run_of(key: str) -> str | None:
    """The id of the run a key belongs to (None for a key outside ``runs/<id>/``)."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and f"{parts[0]}/" == RUNS else None


def run_record(run_id: str) -> str:
    return f"{run_prefix(run_id)}/run.json"


def input_key(run_id: str, field: str) -> str:
    return f"{run_prefix(run_id)}/inputs/{field}"


def units_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}/units/"


def unit_key(run_id: str, index: int) -> str:
    return f"{units_prefix(run_id)}{index:07d}.json"


def outputs_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}/outputs"


def output_key(run_id: str, name: str) -> str:
    return f"{outputs_prefix(run_id)}/{name}"


def report_prefix(run_id: str, report_id: str) -> str:
    return f"{run_prefix(run_id)}/reports/{report_id}"
