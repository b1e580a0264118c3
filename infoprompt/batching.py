"""From stored split tables to training batches: tensors once per run, batches per step.

A split becomes padded tensors once (`SplitTensors.from_table`) and moves to the run's
device once (`SplitTensors.to`); `make_batch` then only indexes and trims where the split
lives, so a step on a GPU copies nothing from the host but its row numbers.

Batches are padded to their longest row (dynamic padding): a 64-shot CoLA batch holds ~25
tokens where padding to max_length would give 128.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

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


def _padded(column: pa.ChunkedArray, *, at_least_one: bool = False
            ) -> tuple[torch.Tensor, np.ndarray]:
    """A list<int> column as (N, L_max) int64 ids, right-padded with 0, and the row lengths.
    `at_least_one`: an empty row counts as one token, id 0 (what `[] or [0]` gave)."""
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False)  # honours a slice's offset
    width = int(lengths.max(initial=0))
    ids = np.zeros((len(lengths), max(width, int(at_least_one))), dtype=np.int64)
    ids[np.arange(ids.shape[1]) < lengths[:, None]] = values  # row-major: row by row
    if at_least_one:
        lengths = np.maximum(lengths, 1)
    return torch.from_numpy(ids), lengths


@dataclass
class SplitTensors:
    """A split table as tensors: converted once per run (the table may be memory-mapped),
    moved to the run's device once (`to`).

    input_ids (N, L) and text_ids (N, L_text) are padded with 0 to the split's longest row;
    `lengths` and `text_lengths` give each row's real tokens (an empty text counts as one
    token, id 0: NCE_head draws its negatives from at least one). `host_lengths` and
    `host_text_lengths` are the same lengths on the host, so that a batch's width is known
    without waiting for the device. Memory: int64 ids, 8 bytes a token; all of SST-2's train
    split (`--shots all`: 60.6k rows, longest 71 prompted tokens with MiniLM's tokenizer,
    mean 18) is 34 MB of input_ids and 31 MB of text_ids, next to 186 MB of P', Z' (2 x 384
    float32 a row; 497 MB at roberta-large's 1024).
    """
    input_ids: torch.Tensor
    lengths: torch.Tensor
    mask_pos: torch.Tensor
    labels: torch.Tensor
    text_ids: torch.Tensor
    text_lengths: torch.Tensor
    p_free: torch.Tensor
    z_free: torch.Tensor
    host_lengths: np.ndarray
    host_text_lengths: np.ndarray

    TENSORS = ("input_ids", "lengths", "mask_pos", "labels", "text_ids", "text_lengths",
               "p_free", "z_free")

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

        input_ids, lengths = _padded(table.column("input_ids"))
        text_ids, text_lengths = _padded(table.column("text_ids"), at_least_one=True)
        return cls(input_ids=input_ids, lengths=torch.from_numpy(lengths),
                   mask_pos=torch.tensor(table.column("mask_pos").to_numpy(), dtype=torch.long),
                   labels=torch.tensor(table.column("label").to_numpy(), dtype=torch.long),
                   text_ids=text_ids, text_lengths=torch.from_numpy(text_lengths),
                   p_free=features("p_free"), z_free=features("z_free"),
                   host_lengths=lengths, host_text_lengths=text_lengths)

    def to(self, device: torch.device | str) -> SplitTensors:
        """The split on `device`: one copy per tensor, once per run. On the device the split
        already lives on, nothing is copied (the features stay views of the table)."""
        return dataclasses.replace(self, **{name: getattr(self, name).to(device)
                                            for name in self.TENSORS})

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def __len__(self) -> int:
        return len(self.labels)


def make_batch(split: SplitTensors, rows: Sequence[int], *, n_prompts: int, with_prompts: bool,
               pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Rows of a split as a batch on the split's device, padded to the longest row of this
    batch (or to `pad_to`); methods without prompts get the prompt-free template (the ids
    without the slots at 1..n_p, as `template.prompt_free_ids`)."""
    host_rows = np.asarray(rows, dtype=np.int64)
    index = torch.from_numpy(host_rows)
    if split.device.type == "cuda":  # the one host-to-device copy, queued: no wait
        index = index.pin_memory().to(split.device, non_blocking=True)
    width = int(split.host_lengths[host_rows].max())
    input_ids = split.input_ids[:, :width].index_select(0, index)
    lengths = split.lengths.index_select(0, index)
    mask_pos = split.mask_pos.index_select(0, index)
    if not with_prompts:
        input_ids = torch.cat([input_ids[:, :1], input_ids[:, 1 + n_prompts:]], dim=1)
        lengths, mask_pos, width = lengths - n_prompts, mask_pos - n_prompts, width - n_prompts
    if pad_to:
        if pad_to < width:
            raise ValueError(f"pad_to {pad_to} is shorter than the batch's longest row ({width})")
        input_ids, width = F.pad(input_ids, (0, pad_to - width)), pad_to
    text_width = int(split.host_text_lengths[host_rows].max())
    text_ids = split.text_ids[:, :text_width].index_select(0, index)
    return {"input_ids": input_ids, "attention_mask": _mask(lengths, width),
            "mask_pos": mask_pos, "labels": split.labels.index_select(0, index),
            "text_ids": text_ids,
            "text_mask": _mask(split.text_lengths.index_select(0, index), text_width),
            "p_free": split.p_free.index_select(0, index),
            "z_free": split.z_free.index_select(0, index)}


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) int64: 1 on each row's first `lengths` positions."""
    positions = torch.arange(width, device=lengths.device)
    return (positions < lengths[:, None]).long()


def epoch_order(seed: int, epoch: int, rows: int) -> list[int]:
    """The training order of one epoch, from (seed, epoch) alone: a resumed run, and any
    other trainer compared against ours, sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(rows, generator=generator).tolist()
