"""The Arrow store: cache keys, hits, stored features, damage handling, padding, Ray, races."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from pyarrow import feather

from infoprompt import store
from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError
from infoprompt.sources import load_raw
from infoprompt.store import META_KEY, load_splits
from infoprompt.tasks import get_task
from infoprompt.template import prompt_free_ids

LOSSES = ("loss", "loss_pred", "nce_rep", "nce_head")


# --- helpers ---------------------------------------------------------------------------------


def _quiet(message: str) -> None:
    pass


def _meta(table: pa.Table) -> dict:
    return json.loads(table.schema.metadata[META_KEY])


def _replace_file(path: Path, data: bytes) -> None:
    """Put new bytes at `path` as a new file. Never rewrite a store file in place: tables of
    this process memory-map it, and truncating a mapped file turns their next read into
    SIGBUS. (The store itself only ever renames whole files into place.)"""
    path.unlink()
    path.write_bytes(data)


def _mtimes(splits) -> dict[str, int]:
    return {name: os.stat(path).st_mtime_ns for name, path in splits.paths.items()}


POSITIVE = ("a warm , funny and moving film", "the best picture of the year",
            "a delight from start to finish", "smart , tender and beautifully acted",
            "a joyous celebration of life", "gorgeous to look at and a pleasure to watch",
            "one of the most satisfying movies in years", "a triumph of style and heart",
            "sharp writing and a wonderful cast", "an uplifting story , well told",
            "clever , charming and often hilarious", "a rare gem that rewards patience")
NEGATIVE = ("a dull , lifeless mess", "the worst picture of the year",
            "a chore from start to finish", "flat , clumsy and badly acted",
            "a tedious waste of two hours", "ugly to look at and a pain to watch",
            "one of the most irritating movies in years", "a disaster of style and heart",
            "lazy writing and a wooden cast", "a depressing story , badly told",
            "clumsy , charmless and never funny", "a forgettable film that wastes its cast")


def _write_sst2(root: Path) -> Path:
    """A small folder in the GLUE SST-2 TSV layout: 12 + 12 train rows, 3 + 3 dev rows."""
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    train = [(text, 1) for text in POSITIVE[:9]] + [(text, 0) for text in NEGATIVE[:9]]
    train += [(text + " indeed", 1) for text in POSITIVE[:3]]
    train += [(text + " indeed", 0) for text in NEGATIVE[:3]]
    dev = [(text, 1) for text in POSITIVE[9:]] + [(text, 0) for text in NEGATIVE[9:]]
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in rows]
        (folder / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def sst2_dir(tmp_path):
    return _write_sst2(tmp_path / "glue")


@pytest.fixture
def demo_copy(demo_store_16, tmp_path):
    """A private copy of the session's demo store, safe to damage."""
    cfg, _ = demo_store_16
    cache = tmp_path / "cache"
    shutil.copytree(cfg.cache_dir, cache)
    cfg = cfg.replace(cache_dir=str(cache))
    return cfg, load_splits(cfg, log=_quiet)


# --- keys and cache hits ---------------------------------------------------------------------


def test_second_load_is_a_cache_hit_that_recomputes_nothing(tmp_path, monkeypatch):
    cfg = InfoPromptConfig(task="demo", shots=16, device="cpu", cache_dir=str(tmp_path))
    built = load_splits(cfg, log=_quiet)
    before = _mtimes(built)

    def boom(*args, **kwargs):
        raise AssertionError("a cache hit must not tokenize or encode again")

    monkeypatch.setattr(store, "_build", boom)
    monkeypatch.setattr(store, "encode_prompt_free", boom)
    monkeypatch.setattr(store, "load_encoder", boom)
    messages: list[str] = []
    hit = load_splits(cfg, log=messages.append)

    assert messages == []
    assert hit.key == built.key and hit.paths == built.paths
    assert _mtimes(hit) == before
    for name in ("train", "valid", "test"):
        assert getattr(hit, name).equals(getattr(built, name))


def test_key_follows_seed_shots_max_length_and_data_bytes(sst2_dir, tmp_path):
    base = InfoPromptConfig(task="sst2", shots=4, seed=0, max_length=32, device="cpu",
                            data_dir=str(sst2_dir), cache_dir=str(tmp_path / "cache"))
    first = load_splits(base, log=_quiet)
    first_mtimes = _mtimes(first)
    keys = {first.key}

    for change in ({"seed": 1}, {"shots": 6}, {"max_length": 24}):
        other = load_splits(base.replace(**change), log=_quiet)
        assert other.key not in keys, change
        keys.add(other.key)
        for name in ("train", "valid"):
            assert Path(other.paths[name]).is_file()
            assert other.paths[name] != first.paths[name]
    # The test split does not depend on shots or seed: stored once and shared.
    assert load_splits(base.replace(seed=1), log=_quiet).paths["test"] == first.paths["test"]
    assert load_splits(base.replace(max_length=24), log=_quiet).paths["test"] != \
        first.paths["test"]

    # Editing one row of the data file changes its checksum, so every split gets a new key.
    train_tsv = sst2_dir / "SST-2" / "train.tsv"
    train_tsv.write_text(train_tsv.read_text().replace("the best picture of the year",
                                                       "the finest picture of the year"))
    edited = load_splits(base, log=_quiet)
    assert edited.key not in keys
    assert edited.paths["test"] != first.paths["test"]
    assert all(Path(path).is_file() for path in edited.paths.values())
    # ... and the old entries were left alone.
    assert _mtimes(first) == first_mtimes


def test_schema_metadata_records_the_key_parts(sst2_dir, tmp_path):
    cfg = InfoPromptConfig(task="sst2", shots=4, seed=3, max_length=40, device="cpu",
                           data_dir=str(sst2_dir), cache_dir=str(tmp_path))
    splits = load_splits(cfg, log=_quiet)
    raw = load_raw(get_task("sst2"), str(sst2_dir))
    for name in ("train", "valid"):
        meta = _meta(getattr(splits, name))
        assert meta["key"] == splits.key == Path(splits.paths[name]).parent.name
        assert meta["split"] == name
        assert meta["rows"] == getattr(splits, name).num_rows == 4
        parts = meta["parts"]
        assert parts["task"] == "sst2"
        assert parts["shots"] == 4 and parts["seed"] == 3 and parts["max_length"] == 40
        assert parts["n_prompts"] == cfg.n_prompts and parts["model"] == "minilm"
        assert parts["source"] == raw.fingerprint
        assert parts["tokenizer"].startswith("BertTokenizer")
        assert "SST-2" in meta["source"]
    test_parts = _meta(splits.test)["parts"]
    assert test_parts["shots"] is None and test_parts["seed"] == 0  # shared by all draws


# --- stored features -------------------------------------------------------------------------


def test_stored_features_equal_a_fresh_encoder_pass(demo_store_16, minilm_encoder_pristine,
                                                    minilm_tokenizer):
    from infoprompt.encoder import prompt_free_features

    cfg, splits = demo_store_16
    table = splits.train
    p_stored = np.asarray(table.column("p_free").combine_chunks().flatten()).reshape(
        table.num_rows, -1)
    z_stored = np.asarray(table.column("z_free").combine_chunks().flatten()).reshape(
        table.num_rows, -1)
    assert p_stored.shape == (16, minilm_encoder_pristine.config.hidden_size)
    for row, (ids, mask_pos) in enumerate(zip(table.column("input_ids").to_pylist(),
                                              table.column("mask_pos").to_pylist())):
        # One row at a time: no padding at all, so batching/sorting in the store cannot hide.
        free = prompt_free_ids(ids, cfg.n_prompts)
        assert free[mask_pos - cfg.n_prompts] == minilm_tokenizer.mask_token_id
        p_free, z_free = prompt_free_features(
            minilm_encoder_pristine, torch.tensor([free]),
            torch.ones(1, len(free), dtype=torch.long), torch.tensor([mask_pos - cfg.n_prompts]))
        np.testing.assert_allclose(p_stored[row], p_free[0].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(z_stored[row], z_free[0].numpy(), rtol=0, atol=1e-5)
    assert not np.allclose(p_stored, z_stored)  # two different features, not one twice


# --- damaged files ---------------------------------------------------------------------------


def _truncate(data: bytes, table: pa.Table) -> bytes:
    return data[: len(data) // 2]


def _garbage(data: bytes, table: pa.Table) -> bytes:
    return np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()


def _overwrite_features(data: bytes, table: pa.Table) -> bytes:
    # Garbage *inside* the data: the file still parses as Arrow, only a checksum can tell.
    first = np.asarray(table.column("p_free").chunks[0].flatten())[:16].tobytes()
    at = data.find(first)
    assert at > 0, "p_free values not found in the file"
    return data[:at] + b"\x7f" * len(first) + data[at + len(first):]


@pytest.mark.parametrize("damage", [_truncate, _garbage, _overwrite_features],
                         ids=["truncated", "garbage", "garbage-inside-the-data"])
def test_damaged_file_is_detected_and_rebuilt_with_one_line(demo_copy, damage):
    cfg, splits = demo_copy
    path = Path(splits.paths["train"])
    good = path.read_bytes()
    expected = splits.train
    _replace_file(path, damage(good, expected))

    messages: list[str] = []
    rebuilt = load_splits(cfg, log=messages.append)

    damaged = [m for m in messages if " is damaged (" in m]
    assert len(damaged) == 1, messages
    assert str(path) in damaged[0] and "train" in damaged[0]
    assert all("\n" not in m and m.strip() for m in messages), messages
    assert rebuilt.train.equals(expected)
    assert rebuilt.valid.equals(splits.valid)  # only the damaged split was touched
    assert path.read_bytes() == good  # the rebuild is deterministic
    later: list[str] = []
    load_splits(cfg, log=later.append)
    assert later == []


def test_damage_message_on_stderr_by_default_is_one_line(demo_copy, capsys):
    cfg, splits = demo_copy
    path = Path(splits.paths["valid"])
    _replace_file(path, b"not an arrow file at all")
    capsys.readouterr()
    load_splits(cfg)
    err = capsys.readouterr().err.splitlines()
    damaged = [line for line in err if " is damaged (" in line]
    assert len(damaged) == 1 and str(path) in damaged[0], err
    assert "Traceback" not in "\n".join(err)


def test_file_carrying_another_key_is_rebuilt(demo_copy):
    cfg, splits = demo_copy
    path = Path(splits.paths["train"])
    other = load_splits(cfg.replace(seed=1), log=_quiet)
    meta = _meta(other.train)
    # Same columns and rows as a real entry, just the metadata of another key.
    path.unlink()
    feather.write_feather(splits.train.replace_schema_metadata(
        {META_KEY: json.dumps(meta).encode()}), str(path), compression="uncompressed")

    messages: list[str] = []
    rebuilt = load_splits(cfg, log=messages.append)
    damaged = [m for m in messages if " is damaged (" in m]
    assert len(damaged) == 1 and str(path) in damaged[0], messages
    assert _meta(rebuilt.train)["key"] == splits.key
    assert rebuilt.train.equals(splits.train)


@contextlib.contextmanager
def _read_only(root: Path):
    """Make a folder tree truly read-only, for root too: `chattr +i` (immutable; root may
    run the tests, and chmod changes nothing for root), else chmod; skip if neither works."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True,
                              check=False).returncode == 0 if shutil.which("chattr") else False
        undo = ["chattr", "-R", "-i", str(root)]
    else:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made, undo = True, ["chmod", "-R", "u+w", str(root)]
    try:
        try:
            (root / "probe").touch()
            writable = True
        except OSError:
            writable = False
        if not made or writable:
            pytest.skip("cannot make a read-only folder here (chattr +i needs ext4 and "
                        "CAP_LINUX_IMMUTABLE)")
        yield
    finally:
        subprocess.run(undo, capture_output=True, check=False)


def test_a_filled_read_only_store_is_read_and_a_build_there_refused_first(demo_copy,
                                                                          monkeypatch):
    """A read-only cache that holds the tables keeps working; one that must build is refused
    in one line before anything is encoded (it used to fail with PermissionError after the
    first split)."""
    cfg, splits = demo_copy

    def boom(*args, **kwargs):
        raise AssertionError("nothing may be built in a read-only store")

    with _read_only(Path(cfg.cache_dir)):
        monkeypatch.setattr(store, "encode_prompt_free", boom)
        monkeypatch.setattr(store, "load_encoder", boom)
        hit = load_splits(cfg, log=_quiet)
        assert hit.train.equals(splits.train) and hit.test.equals(splits.test)
        with pytest.raises(InfoPromptError, match=r"the store folder .* cannot be written"):
            load_splits(cfg.replace(seed=1), log=_quiet)


def test_valid_file_copied_over_train_is_rebuilt(demo_copy):
    # train and valid share a key and a row count: only the split name tells them apart.
    cfg, splits = demo_copy
    train, valid = Path(splits.paths["train"]), Path(splits.paths["valid"])
    _replace_file(train, valid.read_bytes())
    messages: list[str] = []
    rebuilt = load_splits(cfg, log=messages.append)
    assert [m for m in messages if " is damaged (" in m and str(train) in m], messages
    assert rebuilt.train.equals(splits.train)
    assert not rebuilt.train.equals(rebuilt.valid)


# --- training reads the store ----------------------------------------------------------------


def _step_losses(training, *, pad_to: int | None = None,
                 two_pass: bool = False) -> list[dict[str, float]]:
    """Train every epoch through the public batch API, recording each step's loss terms;
    `two_pass` recomputes P', Z' for each batch instead of reading the stored ones."""
    from infoprompt.batching import epoch_order
    from infoprompt.encoder import recompute_prompt_free

    cfg, recorded = training.cfg, []
    for epoch in range(cfg.epochs):
        order = epoch_order(cfg.seed, epoch, len(training.train_data))
        for start in range(0, len(order), cfg.batch_size):
            batch = training.batch(training.train_data, order[start:start + cfg.batch_size],
                                   pad_to=pad_to)
            if two_pass:
                with training.autocast():
                    batch = recompute_prompt_free(training.model.encoder, batch, cfg.n_prompts)
            out = training.step(batch)
            recorded.append({name: out[name].item() for name in LOSSES})
    return recorded


def _zero_features(table: pa.Table) -> pa.Table:
    for name in ("p_free", "z_free"):
        column = table.column(name)
        zeros = pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(len(column) * column.type.list_size, np.float32)),
            column.type.list_size)
        table = table.set_column(table.schema.get_field_index(name), name, zeros)
    return table


def test_stored_features_train_like_the_two_pass_design(demo_store_16):
    from infoprompt.train import Training

    cfg, splits = demo_store_16
    cfg = cfg.replace(method="infoprompt", epochs=2, batch_size=8)
    cached = _step_losses(Training(cfg, splits.without_test()))
    # The recomputing run gets tables whose stored features are zeros: equal losses prove it
    # really recomputed them, and that the stored P', Z' are what the encoder gives.
    blank = dataclasses.replace(splits.without_test(), train=_zero_features(splits.train),
                                valid=_zero_features(splits.valid))
    recomputed = _step_losses(Training(cfg, blank), two_pass=True)

    assert len(cached) == len(recomputed) == 4  # 2 epochs x 2 steps of 8
    for step, (a, b) in enumerate(zip(cached, recomputed)):
        for name in LOSSES:
            assert b[name] == pytest.approx(a[name], abs=1e-5), (step, name)
    assert all(s["nce_rep"] > 0 and s["nce_head"] > 0 for s in cached)


def test_make_batch_pads_to_the_longest_row_unless_told(demo_store_16, minilm_tokenizer):
    from infoprompt.batching import SplitTensors, make_batch

    cfg, splits = demo_store_16
    data = SplitTensors.from_table(splits.train)
    stored_ids = splits.train.column("input_ids").to_pylist()
    stored_text = splits.train.column("text_ids").to_pylist()
    lengths = [len(ids) for ids in stored_ids]
    assert data.lengths.tolist() == lengths and data.input_ids.shape == (len(data), max(lengths))
    rows = sorted(range(len(data)), key=lengths.__getitem__)[:3]  # the three shortest
    longest = max(lengths[i] for i in rows)
    assert longest < max(lengths) < cfg.max_length

    batch = make_batch(data, rows, n_prompts=cfg.n_prompts, with_prompts=True)
    assert batch["input_ids"].shape == (3, longest)
    assert batch["attention_mask"].sum(1).tolist() == [lengths[i] for i in rows]
    for k, i in enumerate(rows):
        assert batch["input_ids"][k, :lengths[i]].tolist() == stored_ids[i]
        assert not batch["input_ids"][k, lengths[i]:].any()
    text_longest = max(len(stored_text[i]) for i in rows)
    assert batch["text_ids"].shape == (3, text_longest)
    assert batch["text_mask"].sum(1).tolist() == [len(stored_text[i]) for i in rows]
    assert torch.equal(batch["p_free"], data.p_free[rows])

    fixed = make_batch(data, rows, n_prompts=cfg.n_prompts, with_prompts=True,
                       pad_to=cfg.max_length)
    assert fixed["input_ids"].shape == (3, cfg.max_length)
    assert torch.equal(fixed["input_ids"][:, :longest], batch["input_ids"])
    assert torch.equal(fixed["attention_mask"].sum(1), batch["attention_mask"].sum(1))

    free = make_batch(data, rows, n_prompts=cfg.n_prompts, with_prompts=False)
    assert free["input_ids"].shape == (3, longest - cfg.n_prompts)
    assert torch.equal(free["mask_pos"], batch["mask_pos"] - cfg.n_prompts)
    at_mask = free["input_ids"][torch.arange(3), free["mask_pos"]]
    assert at_mask.tolist() == [minilm_tokenizer.mask_token_id] * 3


def test_split_tensors_view_the_stored_features_without_copying(demo_store_16):
    from infoprompt.batching import SplitTensors

    _, splits = demo_store_16
    for name in ("p_free", "z_free"):
        buffer = splits.train.column(name).chunk(0).values.buffers()[1]
        tensor = getattr(SplitTensors.from_table(splits.train), name)
        assert tensor.dtype == torch.float32 and tensor.shape == (len(splits.train), 384)
        assert buffer.address <= tensor.data_ptr() < buffer.address + buffer.size, name
        assert torch.equal(tensor[0], torch.tensor(splits.train.column(name)[0].as_py()))
    # A slice (an offset into the same buffer) and a table of two chunks give the right rows.
    sliced = SplitTensors.from_table(splits.train.slice(3, 5))
    two = SplitTensors.from_table(pa.concat_tables([splits.train.slice(0, 3),
                                                    splits.train.slice(3)]))
    whole = SplitTensors.from_table(splits.train)
    assert torch.equal(sliced.p_free, whole.p_free[3:8])
    assert torch.equal(two.z_free, whole.z_free)


def test_fixed_padding_trains_like_dynamic_padding(demo_store_16):
    from infoprompt.train import Training

    cfg, splits = demo_store_16
    cfg = cfg.replace(epochs=1)
    dynamic = _step_losses(Training(cfg, splits.without_test()))
    fixed = _step_losses(Training(cfg, splits.without_test()), pad_to=cfg.max_length)
    for a, b in zip(dynamic, fixed, strict=True):
        for name in LOSSES:
            assert b[name] == pytest.approx(a[name], abs=1e-5), name


# --- Ray's object store ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # address="local": always a private instance, never a cluster someone else started.
    ray.init(address="local", num_cpus=1, include_dashboard=False,
             object_store_memory=80 * 2**20, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _mapping_of(address: int) -> str:
    """The /proc/self/maps line of the mapping that holds `address` ('' if none)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if low <= address < high:
                return line.strip()
    return ""


@pytest.mark.slow
def test_ray_task_reads_the_table_from_shared_memory_without_copying(ray_local,
                                                                    demo_store_16):
    # How this tells zero-copy from a copy: a deserialised copy lives in the worker's private
    # heap, fresh memory for every `ray.get`. A zero-copy read is a view on the object store's
    # shared-memory file (/dev/shm/plasma…), which Ray maps into every worker on the node. So
    # the p_free data buffer must (a) lie inside a *shared* ('s') mapping of the plasma file
    # and (b) have the same address on a second get of the same object. An in-band pickle
    # (a copy) fails both.
    ray = ray_local
    _, splits = demo_store_16
    ref = ray.put(splits.train)

    @ray.remote
    def locate(refs):
        import ray as ray_worker

        def address(table):
            return table.column("p_free").chunks[0].values.buffers()[1].address

        first, second = ray_worker.get(refs[0]), ray_worker.get(refs[0])
        where = address(first)
        with open("/proc/self/maps") as maps:
            mapping = next((line.strip() for line in maps
                            if int(line.split()[0].split("-")[0], 16) <= where
                            < int(line.split()[0].split("-")[1], 16)), "")
        return where, address(second), mapping, first.num_rows, os.getpid()

    # A list keeps Ray from resolving the ref before the task runs: the task itself gets.
    first, second, mapping, rows, pid = ray.get(locate.remote([ref]))
    assert pid != os.getpid()
    assert rows == splits.train.num_rows
    assert first == second
    fields = mapping.split()
    assert "s" in fields[1] and "plasma" in mapping, mapping

    # The same holds for the driver's own gets; and the data arrives intact.
    got, again = ray.get(ref), ray.get(ref)
    where = got.column("p_free").chunks[0].values.buffers()[1].address
    assert where == again.column("p_free").chunks[0].values.buffers()[1].address
    assert "plasma" in _mapping_of(where)
    assert got.equals(splits.train)
    assert got.schema.metadata == splits.train.schema.metadata


# --- two builders at once --------------------------------------------------------------------


def _build_in_child(cache_dir: str, barrier, queue) -> None:
    """Spawned: build the demo store, writing only once the other process is ready to write
    too, so both really build the same key at the same time."""
    from infoprompt import store as child_store

    write = child_store._write_atomic
    waited: list[bool] = []

    def write_together(table, path):
        if not waited:
            waited.append(True)
            barrier.wait(timeout=600)
        write(table, path)

    child_store._write_atomic = write_together
    cfg = InfoPromptConfig(task="demo", shots=16, device="cpu", cache_dir=cache_dir)
    splits = child_store.load_splits(cfg, log=lambda message: None)
    queue.put({name: (splits.paths[name], child_store._content_digest(getattr(splits, name)))
               for name in ("train", "valid", "test")})


@pytest.mark.slow
def test_two_processes_building_the_same_key_both_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    children = [context.Process(target=_build_in_child, args=(str(tmp_path), barrier, queue))
                for _ in range(2)]
    for child in children:
        child.start()
    try:
        results = [queue.get(timeout=900) for _ in children]
    finally:
        for child in children:
            child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0]
    assert results[0] == results[1]

    cfg = InfoPromptConfig(task="demo", shots=16, device="cpu", cache_dir=str(tmp_path))
    messages: list[str] = []
    splits = load_splits(cfg, log=messages.append)
    assert messages == []  # readable, matching, nothing rebuilt
    for name, (path, digest) in results[0].items():
        assert splits.paths[name] == path
        assert store._content_digest(getattr(splits, name)) == digest
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".arrow"]
    assert leftovers == []
