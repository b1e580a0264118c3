"""The re-rank after a search: its K best configurations and the default, re-trained on split
draws the search never saw, and the decision which one the search returns (pure; search.py
runs the trainings).

The search's best objective is the maximum of many noisy evaluations, so it overstates its
config (the winner's curse). A challenger replaces the default only when it beats it on the
re-rank draws by a margin those draws resolve: a paired Student-t test of challenger −
default over the draws, one-sided at 2.5%/K per challenger (Bonferroni over the K
challengers: 2.5% that any of them wins by chance) — the lower bound of the two-sided
1 − 0.05/K confidence interval is above 0. Otherwise the default is returned: the search does no harm it cannot rule out.
"""

from __future__ import annotations

import math
from typing import Any

from tune.report import TrialRow

__all__ = ["ALPHA", "DEFAULT", "challengers", "config_key", "decide"]

ALPHA = 0.05  # two-sided, shared among the challengers (Bonferroni)
DEFAULT = "default"


def config_key(config: dict[str, Any]) -> tuple:
    """A config as a dict key: the same values in any order are the same config."""
    return tuple(sorted(config.items()))


def challengers(trials: list[TrialRow], k: int, default: dict[str, Any]) -> dict[str, TrialRow]:
    """The k best distinct configs by the search's objective, the default left out (it is
    re-trained anyway), by trial name. An errored trial is never one (summarize's rule)."""
    scored = sorted((t for t in trials if t.objective is not None
                     and math.isfinite(t.objective) and not t.status.startswith("error")),
                    key=lambda t: -t.objective)
    seen, out = {config_key(default)}, {}
    for trial in scored:
        if len(out) == k:
            break
        if config_key(trial.config) not in seen:
            seen.add(config_key(trial.config))
            out[trial.name or trial.trial_id] = trial  # the trial's one name (tuner.trial_name)
    return out


def decide(scores: dict[str, list[float]], configs: dict[str, dict[str, Any]],
           seeds: list[int]) -> dict[str, Any]:
    """`scores`: label -> the re-rank objective per seed of `seeds`, DEFAULT among them.
    The re-rank table (challenger − default, paired, with its Bonferroni interval) and the
    decision: the passing challenger with the largest mean difference, else the default."""
    from infoprompt.metrics import paired_difference

    others = [label for label in scores if label != DEFAULT]
    confidence = 1 - ALPHA / max(1, len(others))
    rows = []
    for label, values in scores.items():
        finite = [v for v in values if math.isfinite(v)]
        row = {"label": label, "config": configs[label], "per_seed": values,
               "mean": sum(finite) / len(finite) if finite else math.nan}
        if label != DEFAULT:
            row["vs_default"] = paired_difference(values, scores[DEFAULT],
                                                  confidence=confidence)
            low = row["vs_default"]["ci"][0]
            row["resolved_better"] = bool(row["vs_default"]["n"] >= 2 and low > 0)
        rows.append(row)
    passing = [r for r in rows if r.get("resolved_better")]
    if passing:
        winner = max(passing, key=lambda r: r["vs_default"]["mean"])
        low, high = winner["vs_default"]["ci"]
        reason = (f"{winner['label']} beats the default on the {len(seeds)} re-rank draws by "
                  f"{winner['vs_default']['mean']:+.4f}, {confidence:.1%} CI [{low:+.4f}, "
                  f"{high:+.4f}] (above 0): it replaces the default")
    else:
        winner = rows[[r["label"] for r in rows].index(DEFAULT)]
        reason = ("the default is returned: no challenger beat it on the "
                  f"{len(seeds)} re-rank draws by a margin they resolve (paired t, "
                  f"{confidence:.1%} CI lower bound > 0)" if others else
                  "the default is returned: the search found no other config")
    return {"seeds": seeds, "confidence": confidence,
            "test": "paired Student-t over the re-rank draws, challenger − default; "
                    f"Bonferroni over {len(others)} challenger(s): the two-sided "
                    f"{confidence:.1%} CI's lower bound must be above 0",
            "rows": rows,
            "decision": {"returned": winner["label"], "config": winner["config"],
                         "reason": reason}}
