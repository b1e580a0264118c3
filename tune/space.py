"""The search space, as data: one entry per InfoPromptConfig field that the search varies.

Defaults follow DESIGN.md; the CLI can narrow each range. A method that ignores a
hyperparameter (β under `pred_only`, r under `warp`) does not search it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune

from infoprompt.config import InfoPromptConfig, Method
from infoprompt.errors import InfoPromptError

__all__ = ["Range", "SPACE", "default_point", "param_space"]


@dataclass(frozen=True)
class Range:
    """A log-uniform interval (low, high) or a set of choices."""
    low: float | None = None
    high: float | None = None
    choices: tuple[int, ...] = ()

    def sampler(self) -> Any:
        if self.choices:
            return tune.choice(list(self.choices))
        return tune.loguniform(self.low, self.high)

    def contains(self, value: float) -> bool:
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high


SPACE: dict[str, Range] = {
    "beta": Range(1e-3, 1.0),
    "gamma": Range(1e-3, 1.0),
    "k_negatives": Range(choices=(8, 16, 32, 64)),
    "lr": Range(1e-4, 1e-2),
    "bottleneck": Range(choices=(16, 32, 64, 128, 256)),
}


def searched_fields(method: Method) -> list[str]:
    """The fields that change what `method` trains (the others would be noise to TPE)."""
    fields = ["lr"]
    probe = InfoPromptConfig(method=method, beta=1.0, gamma=1.0)
    if probe.effective_beta:
        fields.append("beta")
    if probe.effective_gamma:
        fields.append("gamma")
    if probe.effective_beta or probe.effective_gamma:
        fields.append("k_negatives")
    if method.uses_generator or method is Method.ADAPTER:
        fields.append("bottleneck")
    return fields


def narrowed(overrides: dict[str, Range]) -> dict[str, Range]:
    """SPACE with the user's ranges applied, each checked."""
    space = dict(SPACE)
    for name, value in overrides.items():
        if value.choices:
            least = 2 if name == "k_negatives" else 1
            if any(c < least for c in value.choices):
                flag = {"k_negatives": "--k-choices"}.get(name, f"--{name}-choices")
                raise InfoPromptError(f"{flag} must all be >= {least}, got "
                                      f"{' '.join(map(str, value.choices))}")
        elif not 0 < value.low <= value.high:
            raise InfoPromptError(f"--{name}-range needs 0 < LOW <= HIGH, got "
                                  f"{value.low:g} {value.high:g}")
        space[name] = value
    return space


def param_space(method: Method, space: dict[str, Range]) -> dict[str, Any]:
    return {name: space[name].sampler() for name in searched_fields(method)}


def default_point(method: Method, space: dict[str, Range]) -> dict[str, Any] | None:
    """The paper's defaults as TPE's first trial, if they lie inside the (narrowed) space."""
    base = InfoPromptConfig()
    point = {name: getattr(base, name) for name in searched_fields(method)}
    if all(space[name].contains(value) for name, value in point.items()):
        return point
    return None
