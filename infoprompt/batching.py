"""From stored split tables to training batches: tensors once per run, batches per step.

Batches are padded to their longest row (dynamic padding): a 64-shot CoLA batch holds ~25
tokens where padding to max_length would give 128.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from infoprompt.template import prompt_free_ids

__all__ = ["SplitTensors", "epoch_order", "make_batch", "pad"]


def pad(rows: list[list[int]], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest row (or `length`): ids (B, T), attention (B, T).

    The pad id is irrelevant: padded keys are masked out and their outputs never read.
    """
    length = length or max(map(len, rows))
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.as_tensor(row)
        attention[i, :len(row)] = 1
    return ids, attention


@dataclass
class SplitTensors:
    """A split table as tensors, converted once per run (the table may be memory-mapped)."""
    input_ids: list[list[int]]
    mask_pos: torch.Tensor
    labels: torch.Tensor
    text_ids: list[list[int]]
    p_free: torch.Tensor
    z_free: torch.Tensor

    @classmethod
    def from_table(cls, table: pa.Table) -> SplitTensors:
        def features(name: str) -> torch.Tensor:
            """A view of the table's float32 buffer, not a copy: concurrent trials on a node
            share one copy of the features (memory-mapped, or in Ray's object store)."""
            column = table.column(name)
            # combine_chunks() copies even a single chunk; flatten() honours a slice's offset.
            array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
            values = array.flatten().to_numpy(zero_copy_only=False)
            if values.dtype != np.float32:
                values = values.astype(np.float32)
            with warnings.catch_warnings():
                # Read-only memory: nothing writes into it (batches index, which copies).
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return torch.from_numpy(values.reshape(len(array), -1))

        return cls(input_ids=table.column("input_ids").to_pylist(),
                   mask_pos=torch.tensor(table.column("mask_pos").to_numpy(), dtype=torch.long),
                   labels=torch.tensor(table.column("label").to_numpy(), dtype=torch.long),
                   text_ids=table.column("text_ids").to_pylist(),
                   p_free=features("p_free"), z_free=features("z_free"))

    def __len__(self) -> int:
        return len(self.labels)


def make_batch(split: SplitTensors, rows: list[int], *, n_prompts: int, with_prompts: bool,
               pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch (or to `pad_to`); methods without prompts get
    the prompt-free template."""
    ids = [split.input_ids[i] for i in rows]
    mask_pos = split.mask_pos[rows]
    if not with_prompts:
        ids = [prompt_free_ids(row, n_prompts) for row in ids]
        mask_pos = mask_pos - n_prompts
    input_ids, attention = pad(ids, pad_to)
    text_ids, text_mask = pad([split.text_ids[i] or [0] for i in rows])
    return {"input_ids": input_ids, "attention_mask": attention, "mask_pos": mask_pos,
            "labels": split.labels[rows], "text_ids": text_ids, "text_mask": text_mask,
            "p_free": split.p_free[rows], "z_free": split.z_free[rows]}


def epoch_order(seed: int, epoch: int, rows: int) -> list[int]:
    """The training order of one epoch, from (seed, epoch) alone: a resumed run, and any
    other trainer compared against ours, sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(rows, generator=generator).tolist()
