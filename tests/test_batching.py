"""Batches from split tensors: padded once per split, indexed and trimmed per batch, equal
to building each batch from the stored id lists (what make_batch did before the splits
moved to the device)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from infoprompt.batching import SplitTensors, make_batch, pad
from infoprompt.template import prompt_free_ids


def list_batch(table: pa.Table, rows: list[int], *, n_prompts: int, with_prompts: bool,
               pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """The reference: a batch built from the table's Python id lists."""
    ids = [table.column("input_ids")[i].as_py() for i in rows]
    mask_pos = torch.tensor([table.column("mask_pos")[i].as_py() for i in rows])
    if not with_prompts:
        ids = [prompt_free_ids(row, n_prompts) for row in ids]
        mask_pos = mask_pos - n_prompts
    input_ids, attention = pad(ids, pad_to)
    text_ids, text_mask = pad([table.column("text_ids")[i].as_py() or [0] for i in rows])

    def features(name: str) -> torch.Tensor:
        return torch.tensor([table.column(name)[i].as_py() for i in rows], dtype=torch.float32)

    return {"input_ids": input_ids, "attention_mask": attention, "mask_pos": mask_pos,
            "labels": torch.tensor([table.column("label")[i].as_py() for i in rows]),
            "text_ids": text_ids, "text_mask": text_mask, "p_free": features("p_free"),
            "z_free": features("z_free")}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("with_prompts", [True, False])
@pytest.mark.parametrize("pad_to", [None, 128])
def test_batches_equal_the_ones_built_from_id_lists(demo_store_16, with_prompts, pad_to):
    cfg, splits = demo_store_16
    table = splits.train
    data = SplitTensors.from_table(table)
    rng = np.random.default_rng(0)
    for size in (1, 3, 8, len(data)):
        rows = rng.permutation(len(data))[:size].tolist()
        got = make_batch(data, rows, n_prompts=cfg.n_prompts, with_prompts=with_prompts,
                         pad_to=pad_to)
        assert_same(got, list_batch(table, rows, n_prompts=cfg.n_prompts,
                                    with_prompts=with_prompts, pad_to=pad_to))


def tiny_table() -> pa.Table:
    """Four rows by hand, one with no text tokens."""
    ids = [[101, 1, 1, 103, 7, 102], [101, 1, 1, 103, 102], [101, 1, 1, 8, 103, 9, 10, 102],
           [101, 1, 1, 103, 11, 102]]
    text = [[7], [], [8, 9, 10], [11]]
    feats = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    return pa.table({
        "input_ids": pa.array(ids, pa.list_(pa.int32())),
        "mask_pos": pa.array([3, 3, 4, 3], pa.int64()),
        "label": pa.array([0, 1, 1, 0], pa.int64()),
        "text_ids": pa.array(text, pa.list_(pa.int32())),
        "p_free": pa.FixedSizeListArray.from_arrays(pa.array(feats.ravel()), 3),
        "z_free": pa.FixedSizeListArray.from_arrays(pa.array(-feats.ravel()), 3)})


def test_split_tensors_pad_each_split_once_and_count_an_empty_text_as_one_token():
    data = SplitTensors.from_table(tiny_table())
    assert data.input_ids.shape == (4, 8) and data.input_ids.dtype == torch.long
    assert data.lengths.tolist() == data.host_lengths.tolist() == [6, 5, 8, 6]
    assert data.input_ids[1].tolist() == [101, 1, 1, 103, 102, 0, 0, 0]
    assert data.text_ids.shape == (4, 3)
    assert data.text_lengths.tolist() == data.host_text_lengths.tolist() == [1, 1, 3, 1]
    assert data.text_ids[1].tolist() == [0, 0, 0]
    for rows in ([1], [0, 1], [3, 2, 1, 0]):
        for with_prompts in (True, False):
            assert_same(make_batch(data, rows, n_prompts=2, with_prompts=with_prompts),
                        list_batch(tiny_table(), rows, n_prompts=2, with_prompts=with_prompts))


def test_slices_and_chunks_give_the_same_rows():
    table = tiny_table()
    whole = SplitTensors.from_table(table)
    sliced = SplitTensors.from_table(table.slice(1, 2))
    assert sliced.lengths.tolist() == [5, 8]
    assert torch.equal(sliced.input_ids, whole.input_ids[1:3])
    two = SplitTensors.from_table(pa.concat_tables([table.slice(0, 1), table.slice(1)]))
    for name in SplitTensors.TENSORS:
        assert torch.equal(getattr(two, name), getattr(whole, name)), name


def test_moving_to_the_device_it_is_on_copies_nothing(demo_store_16):
    _, splits = demo_store_16
    data = SplitTensors.from_table(splits.train)
    moved = data.to(torch.device("cpu"))
    assert moved.device == torch.device("cpu")
    for name in SplitTensors.TENSORS:
        assert getattr(moved, name).data_ptr() == getattr(data, name).data_ptr(), name


def test_pad_to_shorter_than_the_batch_is_refused():
    data = SplitTensors.from_table(tiny_table())
    with pytest.raises(ValueError, match="shorter than the batch's longest row"):
        make_batch(data, [2], n_prompts=2, with_prompts=True, pad_to=5)
    # The prompt-free template is n_p shorter: 6 tokens fit in 6.
    assert make_batch(data, [2], n_prompts=2, with_prompts=False,
                      pad_to=6)["input_ids"].shape == (1, 6)
