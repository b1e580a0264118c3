"""BenchTraining: `infoprompt.train.Training` with what only benchmarks vary."""

from __future__ import annotations

import time

from infoprompt.encoder import recompute_prompt_free
from infoprompt.train import Training

__all__ = ["BenchTraining"]


class BenchTraining(Training):
    """Every batch padded to `pad_to` tokens; optionally the authors' two-pass design (P', Z'
    recomputed inside each step instead of read from the store); the wall time of every
    step in `step_seconds`."""

    def __init__(self, cfg, splits, *, pad_to: int | None = None, two_pass: bool = False):
        super().__init__(cfg, splits)
        self.pad_to, self.two_pass = pad_to, two_pass
        self.step_seconds: list[float] = []

    def batch(self, split, rows, *, pad_to=None):
        return super().batch(split, rows, pad_to=pad_to or self.pad_to)

    def step(self, batch):
        started = time.perf_counter()
        if self.two_pass:
            with self.autocast():
                batch = recompute_prompt_free(self.model.encoder, batch, self.cfg.n_prompts)
        out = super().step(batch)
        self.step_seconds.append(time.perf_counter() - started)
        return out
