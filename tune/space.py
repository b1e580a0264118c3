"""The search space, as data: one entry per InfoPromptConfig field the search may vary.

Adding a searchable hyperparameter is one SPACE entry. Its `--<field>-range` or
`--<field>-choices` flag, the checks on the values a user narrows it to (InfoPromptConfig's
own validation) and whether a configuration searches it at all (a field the configuration
ignores, `InfoPromptConfig.unused_fields`, is left alone) all follow from that entry.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from infoprompt.config import ConfigError, InfoPromptConfig
from infoprompt.errors import InfoPromptError

__all__ = ["SPACE", "Choice", "Range", "Space", "add_space_arguments", "default_point",
           "fixed_values", "flag", "narrowed", "paper_point", "param_space", "searched_fields",
           "show_values", "space_from_args"]


@dataclass(frozen=True)
class Range:
    """Log-uniform in [low, high]."""
    low: float
    high: float

    @property
    def values(self) -> tuple[float, float]:
        return (self.low, self.high)

    def sampler(self) -> Any:
        import ray.tune

        return ray.tune.loguniform(self.low, self.high)

    def contains(self, value: Any) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    """One of a few values."""
    options: tuple[Any, ...]

    @property
    def values(self) -> tuple[Any, ...]:
        return self.options

    def sampler(self) -> Any:
        import ray.tune

        return ray.tune.choice(list(self.options))

    def contains(self, value: Any) -> bool:
        return value in self.options


Entry = Union[Range, Choice]
Space = Mapping[str, Entry]

SPACE: dict[str, Entry] = {
    "beta": Range(1e-3, 1.0),
    "gamma": Range(1e-3, 1.0),
    "k_negatives": Choice((8, 16, 32, 64)),
    "lr": Range(1e-4, 1e-2),
    "bottleneck": Choice((16, 32, 64, 128, 256)),
    "temperature": Range(0.01, 1.0),
    # One choice by default, the config's own (a single choice fixes a field rather than
    # searching it); widen them: --estimator-choices paper in_batch, --vib-choices 0 0.1.
    "estimator": Choice((InfoPromptConfig().estimator.value,)),
    "vib": Choice((InfoPromptConfig().vib,)),
}


def show_values(values: tuple[Any, ...]) -> str:
    """Values as a user types them: numbers in %g, strings (an estimator) as they are."""
    return " ".join(f"{v:g}" if isinstance(v, (int, float)) else str(getattr(v, "value", v))
                    for v in values)


def flag(name: str) -> str:
    """The command-line flag that narrows SPACE[name]."""
    kind = "range" if isinstance(SPACE[name], Range) else "choices"
    return f"--{name.replace('_', '-')}-{kind}"


def add_space_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search space (each flag narrows one searched field)")
    for name, entry in SPACE.items():
        shown = show_values(entry.values)
        if isinstance(entry, Range):
            group.add_argument(flag(name), dest=f"{name}_space", type=float, nargs=2,
                               metavar=("LOW", "HIGH"), default=argparse.SUPPRESS,
                               help=f"{name}: log-uniform in [LOW, HIGH] (default: {shown})")
        else:
            group.add_argument(flag(name), dest=f"{name}_space", nargs="+", metavar="V",
                               type=type(entry.options[0]), default=argparse.SUPPRESS,
                               help=f"{name}: one of these (default: {shown})")


def space_from_args(args: argparse.Namespace) -> dict[str, Entry]:
    """SPACE narrowed by the flags the user gave."""
    given = vars(args)
    overrides = {}
    for name, entry in SPACE.items():
        values = given.get(f"{name}_space")
        if values is not None:
            overrides[name] = Range(*values) if isinstance(entry, Range) else Choice(tuple(values))
    return narrowed(overrides)


def narrowed(overrides: Mapping[str, Entry]) -> dict[str, Entry]:
    """SPACE with the user's entries, each value checked by InfoPromptConfig itself."""
    space = dict(SPACE)
    for name, entry in overrides.items():
        shown = show_values(entry.values)
        if isinstance(entry, Range) and not 0 < entry.low <= entry.high:
            raise InfoPromptError(f"{flag(name)} needs 0 < LOW <= HIGH, got {shown}")
        for value in entry.values:
            try:
                InfoPromptConfig(**{name: value})
            except ConfigError as error:
                raise InfoPromptError(f"{flag(name)} {shown}: {error}") from None
        space[name] = entry
    return space


def fixed_values(space: Space) -> dict[str, Any]:
    """Fields narrowed to a single choice: set on the configuration, not searched."""
    return {name: entry.options[0] for name, entry in space.items()
            if isinstance(entry, Choice) and len(entry.options) == 1}


def searched_fields(cfg: InfoPromptConfig, space: Space = SPACE) -> list[str]:
    """The fields that change what `cfg` trains (the others would be noise to the sampler),
    single choices aside."""
    fixed = fixed_values(space)
    return [name for name in space if name not in cfg.unused_fields and name not in fixed]


def param_space(cfg: InfoPromptConfig, space: Space = SPACE) -> dict[str, Any]:
    """Ray Tune's param_space: one sampler per searched field."""
    return {name: space[name].sampler() for name in searched_fields(cfg, space)}


def paper_point(cfg: InfoPromptConfig, space: Space = SPACE) -> dict[str, Any]:
    """The paper's defaults for the fields `cfg` searches, as plain values (no enums)."""
    paper = InfoPromptConfig().to_dict()
    return {name: paper[name] for name in searched_fields(cfg, space)}


def default_point(cfg: InfoPromptConfig, space: Space = SPACE) -> dict[str, Any] | None:
    """The paper's defaults as the sampler's first trial, if they lie inside the (narrowed)
    space."""
    point = paper_point(cfg, space)
    return point if all(space[name].contains(v) for name, v in point.items()) else None
