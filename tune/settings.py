"""SearchSettings: everything a search needs besides Ray itself, validated at construction.

The command line builds it (one flag per field, generated), `--resume` rebuilds it from the
experiment's saved copy, and Python callers build it directly: nothing downstream reads an
argparse Namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from infoprompt.cli import add_dataclass_arguments, config_from_args
from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError
from tune.objective import Objective
from tune.space import (
    SPACE,
    Choice,
    Entry,
    Range,
    fixed_values,
    flag,
    show_values,
    space_from_args,
)

__all__ = ["RESUME_MAY_CHANGE", "RESUME_TAKES", "SearchSettings", "add_settings_arguments",
           "resumed", "settings_from_args"]


def _field(default: Any, help: str, group: str) -> Any:
    return field(default=default, metadata={"help": help, "group": group})


class Sampler(str, Enum):
    TPE = "tpe"
    GP = "gp"
    RANDOM = "random"


class Scheduler(str, Enum):
    ASHA = "asha"
    FIFO = "fifo"


@dataclass(frozen=True)
class SearchSettings:
    config: InfoPromptConfig = field(default_factory=InfoPromptConfig)
    space: dict[str, Entry] = field(default_factory=lambda: dict(SPACE))

    # --- the search ---
    num_samples: int = _field(16, "trials", "search")
    grace_period: int = _field(2, "epochs every trial runs before it can be stopped",
                               "ASHA")
    reduction_factor: float = _field(3.0, "keep 1/this of the trials at each rung", "ASHA")
    sampler: Sampler = _field(Sampler.TPE, "Optuna sampler that proposes the trials: tpe "
                              "(multivariate, constant liar), gp (Gaussian process), random",
                              "search")
    scheduler: Scheduler = _field(Scheduler.ASHA, "asha (stop poor trials early) or fifo (run "
                                  "every trial to --epochs)", "ASHA")
    split_draws: int = _field(1, "score each trial on N train/valid draws (split seeds --seed "
                                 "… --seed+N-1, the same for every trial) and report the mean "
                                 "per epoch: less selection noise, N× the cost", "search")
    rerank_top: int = _field(2, "after the search, re-train its K best configs and the default "
                                "on --rerank-draws further draws; a config replaces the default "
                                "only if it beats it there (paired t, Bonferroni over K); 0 "
                                "returns the search's best unchecked", "search")
    rerank_draws: int = _field(3, "split draws of the re-rank, after the search's (>= 2)",
                               "search")
    final_seeds: int = _field(5, "split seeds, after the search's and the re-rank's, on which "
                                 "the returned and the default config are re-trained and scored "
                                 "on test (0 skips)", "search")
    objective: Objective = _field(Objective.BEST, "what the search selects by, every epoch: "
                                  "best (running best valid metric), last (this epoch's), "
                                  "loglik (running best valid log-likelihood of the gold "
                                  "labels), best_loglik (best, ties broken by log-likelihood)",
                                  "search")
    n_startup_trials: int | None = _field(None, "TPE: trials sampled at random before it "
                                                "models the space (default: a quarter of "
                                                "--num-samples, at least 2)", "search")
    warm_start: str | None = _field(None, "an earlier experiment (folder, or name under "
                                          "--storage-path) whose finished trials seed this "
                                          "search's study; its task and space must match",
                                    "search")
    optuna_storage: str | None = _field(None, "database URL for the Optuna study "
                                              "(postgresql://…, mysql://…; default: optuna.db "
                                              "in the experiment folder)", "search")

    # --- Ray ---
    address: str | None = _field(None, "running Ray cluster to join ('auto' on a cluster "
                                        "node); default: start Ray on this machine", "Ray")
    cpus_per_trial: float = _field(1.0, "CPUs per trial (one torch thread each)", "Ray")
    gpus_per_trial: float = _field(0.0, "GPUs per trial; fractions share a GPU, e.g. 0.25 = "
                                        "four trials per GPU", "Ray")
    max_concurrent: int | None = _field(None, "trials at once (default: as many as the "
                                              "resources allow)", "Ray")
    max_failures: int = _field(2, "restarts of a failed trial from its last checkpoint", "Ray")
    storage_path: str = _field("~/infoprompt_results", "local folder or s3:// / gs:// URI for "
                               "checkpoints and results; a multi-node cluster needs a shared "
                               "one", "Ray")
    name: str | None = _field(None, "experiment name (default: "
                                    "<task>-<method>-<shots>shot-<time>)", "Ray")
    resume: bool = _field(False, "continue the experiment --name (default: the latest one) "
                                 "with the settings it was started with", "Ray")
    verbose: int = _field(1, "console: 0 = the search's own lines only, 1 = also Ray's trial "
                             "table every 30 s, 2 = also each trial's config and results as "
                             "it starts, reports and ends", "Ray")
    re_evaluate: bool = _field(False, "with --resume of a finished search: run its final "
                                      "evaluation again (default: print its results)", "Ray")
    # Not a flag: the experiment's record of its Optuna study's name (search_args.json), so
    # that a renamed or copied experiment finds its study (tune/study.py).
    study_name: str | None = None

    def __post_init__(self) -> None:
        # A field narrowed to one choice is the configuration's value, not a search dimension.
        fixed = {name: value for name, value in fixed_values(self.space).items()
                 if getattr(self.config, name) != value}
        if fixed:
            object.__setattr__(self, "config", self.config.replace(**fixed))
        for name, enum in (("objective", Objective), ("sampler", Sampler),
                           ("scheduler", Scheduler)):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                raise InfoPromptError(f"unknown {name} {getattr(self, name)!r}; choose one "
                                      "of: " + ", ".join(o.value for o in enum)) from None
        if self.n_startup_trials is not None and self.n_startup_trials < 0:
            raise InfoPromptError(f"--n-startup-trials must be >= 0, got {self.n_startup_trials}")
        for name, low in (("num_samples", 1), ("grace_period", 1), ("split_draws", 1),
                          ("rerank_top", 0), ("final_seeds", 0), ("max_failures", 0)):
            if getattr(self, name) < low:
                raise InfoPromptError(f"--{name.replace('_', '-')} must be >= {low}, "
                                      f"got {getattr(self, name)}")
        if self.verbose not in (0, 1, 2):
            raise InfoPromptError(f"--verbose must be 0, 1 or 2, got {self.verbose}")
        if self.reduction_factor <= 1:
            raise InfoPromptError(f"--reduction-factor must be > 1, got {self.reduction_factor:g}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise InfoPromptError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise InfoPromptError(f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        if self.rerank_top and self.rerank_draws < 2:
            raise InfoPromptError(f"--rerank-draws must be >= 2 for a paired test, got "
                                  f"{self.rerank_draws}; or --rerank-top 0 to skip the re-rank")
        if self.scheduler is Scheduler.ASHA and self.grace_period > self.config.epochs:
            raise InfoPromptError(f"--grace-period {self.grace_period} is more than --epochs "
                                  f"{self.config.epochs}: ASHA cannot wait longer than a trial "
                                  "runs; lower it")

    @property
    def startup_trials(self) -> int:
        """TPE's random start: enough to model from, few enough that TPE proposes most."""
        if self.n_startup_trials is not None:
            return self.n_startup_trials
        return max(2, self.num_samples // 4)

    @property
    def split_seeds(self) -> dict[str, list[int]]:
        """The split seeds of each stage, consecutive and disjoint: the search's draws, the
        re-rank's, then the final evaluation's (each seed draws its own train/valid)."""
        sizes = {"search": self.split_draws,
                 "rerank": self.rerank_draws if self.rerank_top else 0,
                 "final": self.final_seeds}
        seeds, start = {}, self.config.seed
        for stage, size in sizes.items():
            seeds[stage], start = list(range(start, start + size)), start + size
        return seeds

    def replace(self, **changes: Any) -> SearchSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what an experiment saves so that `--resume` continues it as it was."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["config"] = self.config.to_dict()
        for name in ("objective", "sampler", "scheduler"):
            out[name] = getattr(self, name).value
        out["space"] = {name: list(entry.values) for name, entry in self.space.items()}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchSettings:
        values = dict(values)
        config = InfoPromptConfig.from_dict(values.pop("config"))
        space = {name: Range(*entry) if isinstance(SPACE[name], Range) else Choice(tuple(entry))
                 for name, entry in values.pop("space").items() if name in SPACE}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(config=config, space={**SPACE, **space},
                   **{k: v for k, v in values.items() if k in known})


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The search's flags by group; ASHA's with --epochs, its max_t (the caller then adds
    the other InfoPromptConfig fields without `epochs`)."""
    for group in ("search", "ASHA", "Ray"):
        fields = [f.name for f in dataclasses.fields(SearchSettings)
                  if f.metadata.get("group") != group]
        title = group
        if group == "ASHA":
            title = ("early stopping (ASHA; --epochs is its max_t, what a trial it never "
                     "stops trains)")
            add_dataclass_arguments(parser, InfoPromptConfig, title=title, skip=[
                f.name for f in dataclasses.fields(InfoPromptConfig) if f.name != "epochs"])
        add_dataclass_arguments(parser, SearchSettings, title=title, skip=fields)


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """The settings the flags give (absent flags keep their defaults)."""
    given = vars(args)
    own = {f.name: given[f.name] for f in dataclasses.fields(SearchSettings)
           if f.name in given and "group" in f.metadata}
    settings = SearchSettings(config=config_from_args(args), space=space_from_args(args), **own)
    cfg = settings.config
    unused = [name for name in SPACE if f"{name}_space" in given and name in cfg.unused_fields]
    if unused:  # the sampler never sees it: say so rather than ignore the flag silently
        print(f"warning: {', '.join(flag(name) for name in unused)}: {', '.join(unused)} is "
              f"not searched with --method {cfg.method.value} --critic {cfg.critic.value} "
              f"--estimator {cfg.estimator.value} (it changes nothing that trains), so the "
              "flag has no effect", file=sys.stderr)
    return settings


# What a resumed search takes from the command that resumes it rather than from the
# experiment's saved settings: where the experiment is and which Ray to use; the resources
# per trial only when given (a cluster may have changed).
RESUME_TAKES = ("address", "storage_path", "name", "resume", "verbose", "re_evaluate")
RESUME_MAY_CHANGE = ("cpus_per_trial", "gpus_per_trial")


def resumed(saved: SearchSettings, now: SearchSettings, given: set[str]) -> SearchSettings:
    """The experiment's `saved` settings, with the resuming command's RESUME_TAKES (and
    RESUME_MAY_CHANGE when `given`). Anything else the command gives must match the saved
    value: the experiment's trials, checkpoints and scheduler were made with it."""
    def shown(value: Any) -> str:
        if isinstance(value, (Range, Choice)):
            return show_values(value.values)
        return str(getattr(value, "value", value))

    differ = []
    for name in given:
        if name in RESUME_TAKES + RESUME_MAY_CHANGE:
            continue
        if name in {f.name for f in dataclasses.fields(InfoPromptConfig)}:
            old, new, shown_flag = (getattr(saved.config, name), getattr(now.config, name),
                                    f"--{name.replace('_', '-')}")
        elif name.endswith("_space"):
            field_name = name.removesuffix("_space")
            old, new, shown_flag = (saved.space[field_name], now.space[field_name],
                                    flag(field_name))
        else:
            old, new, shown_flag = getattr(saved, name), getattr(now, name), \
                f"--{name.replace('_', '-')}"
        if old != new:
            differ.append(f"{shown_flag} {shown(new)} (it has {shown(old)})")
    if differ:
        raise InfoPromptError(f"--resume continues {now.name} with the settings it was started "
                              "with; drop or fix: " + ", ".join(sorted(differ)))
    changes = {name: getattr(now, name) for name in RESUME_TAKES}
    changes.update({name: getattr(now, name) for name in RESUME_MAY_CHANGE if name in given})
    return saved.replace(**changes)


def saved_json(settings: SearchSettings) -> str:
    body = {k: v for k, v in settings.to_dict().items() if k not in RESUME_TAKES}
    return json.dumps(body, indent=2)
