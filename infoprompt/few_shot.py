"""The few-shot protocol: class-balanced train and valid sets drawn by seed from a task's
deduplicated train split, disjoint from each other and from test (GLUE dev), so model
selection never sees test data.

The rule for `shots` examples in train (and as many again in valid) over C classes: each
class gets shots // C, and the shots % C left over go one each to the first classes in label
order. A class with fewer than twice its share gives what it has (count // 2 to train, as
many to valid; a class seen once gives none) and its shortfall is shared out the same way
among the others. So GLUE's two classes are exactly balanced, and SemEval's 19 unbalanced
ones are as balanced as the data allows, every class present that has two examples."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from infoprompt.tasks import DataError, RawData, Task

__all__ = ["few_shot_splits"]


def _text_keys(table: pa.Table, task: Task) -> list[tuple[str, ...]]:
    return list(zip(*(table.column(f).to_pylist() for f in task.text_fields)))


def _pool(raw: RawData, task: Task) -> pa.Table:
    """Train rows with unique texts that do not occur in test (first occurrence kept)."""
    banned = set(_text_keys(raw.test, task))
    keep = []
    for i, key in enumerate(_text_keys(raw.train, task)):
        if key not in banned:
            banned.add(key)
            keep.append(i)
    return raw.train.take(pa.array(keep, pa.int64()))


def _per_class(shots: int, counts: list[int]) -> list[int]:
    """Examples of each class in train (and again in valid): the module's rule."""
    caps = [count // 2 for count in counts]
    wanted = [0] * len(counts)
    left = shots
    while left > 0:
        open_classes = [c for c, cap in enumerate(caps) if wanted[c] < cap]
        if not open_classes:
            break
        base, extra = divmod(left, len(open_classes))
        for rank, c in enumerate(open_classes):
            give = min(base + (rank < extra), caps[c] - wanted[c])
            wanted[c] += give
            left -= give
    return wanted


def _with_index(table: pa.Table, index: np.ndarray) -> pa.Table:
    return table.take(pa.array(index, pa.int64())).append_column(
        "index", pa.array(index, pa.int64()))


def few_shot_splits(raw: RawData, task: Task, shots: int | None,
                    seed: int) -> dict[str, pa.Table]:
    """Class-balanced `shots`-example train and valid sets drawn by `seed` from the
    deduplicated train split, and the whole GLUE dev split as test.

    `shots=None` uses everything: a stratified 10% of the pool for valid, the rest for train.
    Every table gets an int64 "index" column: the row's position in the deduplicated train
    pool (train, valid) or in the test split (test).
    """
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, np.integer))
                              or shots < task.num_labels):
        raise DataError(f"shots must be an integer >= {task.num_labels} (one example per "
                        f"class) or None for all, got {shots!r}")
    pool = _pool(raw, task)
    labels = pool.column("label").to_numpy()
    by_class = [np.flatnonzero(labels == c) for c in range(task.num_labels)]
    counts = [len(idx) for idx in by_class]
    if shots is None:
        # A class with a single example cannot be in both train and valid; train gets it.
        wanted = [max(1, round(count / 10)) if count >= 2 else 0 for count in counts]
    else:
        wanted = _per_class(int(shots), counts)
        if sum(wanted) < shots:
            best = sum(count // 2 for count in counts)
            fix = (f"use --shots {best} or fewer" if best >= task.num_labels
                   else "this split is too small for few-shot sampling")
            raise DataError(f"shots={shots} needs {shots} examples for train and {shots} for "
                            f"valid, but the {task.display_name} train split has only {best} to "
                            f"give each (half of each class, after removing duplicates); {fix}")

    rng = np.random.default_rng(seed)
    train_parts, valid_parts = [], []
    for idx, n in zip(by_class, wanted):
        perm = rng.permutation(idx)
        valid_parts.append(perm[n:2 * n] if shots is not None else perm[:n])
        train_parts.append(perm[:n] if shots is not None else perm[n:])
    # Shuffle across classes so batches are not grouped by label.
    train = rng.permutation(np.concatenate(train_parts))
    valid = rng.permutation(np.concatenate(valid_parts))
    return {
        "train": _with_index(pool, train),
        "valid": _with_index(pool, valid),
        "test": _with_index(raw.test, np.arange(raw.test.num_rows)),
    }
