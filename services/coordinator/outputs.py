"""A finished run's output files, assembled from its unit records in input order.

Each kind makes its own files (``RunKind.outputs`` in ``kinds/<kind>.py``, which lists them);
every run also gets ``failures.jsonl`` (failed conversations with their reasons, never silently
dropped) and, in ``summary.json``, the run's id, kind and counts.
"""

from __future__ import annotations

import json
import time
from typing import Any

from parrot.storage.layout import output_key
from parrot.v1 import coordinator_pb2 as cpb
from services.coordinator.kinds.base import FINISHED, jsonl
from services.coordinator.spec import Plan


async def write_outputs(run: cpb.Run, plan: Plan, units: dict[int, dict[str, Any]], store: Any) -> dict[str, Any]:
    """Writes the run's output files; returns the summary (what ``summary.json`` holds)."""
    ordered = [units[i] for i in sorted(units)]
    failures = [{"index": u["index"], "id": u["id"], "reason": u.get("reason", "")} for u in ordered if u["status"] != FINISHED]
    done = [u for u in ordered if u["status"] == FINISHED]
    files = plan.kind.outputs(run.id, plan, done)
    files["failures.jsonl"] = jsonl(failures)
    summary = json.loads(files["summary.json"])
    summary.update({"run_id": run.id, "kind": plan.kind.name, "conversations": len(plan.units), "finished": len(done),
                    "failed": len(failures), "written_at": time.time()})
    files["summary.json"] = json.dumps(summary, indent=2).encode()
    for name, data in files.items():
        await store.put(output_key(run.id, name), data)
    return summary
