"""Reading what Ray Tune saved of an experiment, for the search and cluster tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def experiment_state(experiment: Path) -> dict[str, dict]:
    """trial_id -> {"status", "last_result"} from Tune's newest experiment_state file."""
    # By the session time in the name, not mtime: Ray's sync to the storage path rewrites an
    # older session's file after a resume, which makes it look newest.
    files = sorted(experiment.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        body = json.loads(files[-1].read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten right now
        return {}
    trials = {}
    for trial_json, runtime_json in body["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        trials[trial["trial_id"]] = {"status": trial["status"],
                                     "last_result": runtime.get("last_result") or {}}
    return trials


def read_results(experiment: Path) -> dict:
    """The search's own results.json."""
    return json.loads((experiment / "results.json").read_text())


def progress(trial: Path) -> list[dict[str, str]]:
    """The complete rows of a trial's progress.csv (the driver may be mid-write)."""
    path = trial / "progress.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if None not in row and None not in row.values()]


def epochs(rows: list[dict[str, str]]) -> list[int]:
    return [int(float(row["epoch"])) for row in rows]


def trial_folder(experiment: Path, trial_id: str) -> Path:
    """The folder of Ray's trial `trial_id`: trial_<Optuna number>_<id> (tune.tuner.trial_name)."""
    found = sorted(experiment.glob(f"trial_*_{trial_id}"))
    assert len(found) <= 1, found
    return found[0] if found else experiment / f"trial_missing_{trial_id}"
