"""The Arrow store: tokenized few-shot splits plus frozen prompt-free features, built once.

One Feather v2 (Arrow IPC, uncompressed, read memory-mapped) file per split, in a folder
named by a content hash of everything that determines it. The key's parts travel in the
schema metadata, so a file that does not match its key is detected and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import torch

from infoprompt.batching import pad
from infoprompt.config import ConfigError, InfoPromptConfig
from infoprompt.encoder import load_encoder, load_tokenizer, max_tokens, prompt_free_features
from infoprompt.few_shot import few_shot_splits
from infoprompt.folders import check_writable_folder
from infoprompt.sources import load_task
from infoprompt.tasks import Task
from infoprompt.template import Template, prompt_free_ids

__all__ = ["SPLITS", "Splits", "default_cache_dir", "features_table", "load_splits", "store_key"]

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1  # bump when the columns or the template change meaning
META_KEY = b"infoprompt"


@dataclass(frozen=True)
class Splits:
    """What a training run reads: one Arrow table per split (test may be withheld)."""
    task: Task
    train: pa.Table
    valid: pa.Table
    test: pa.Table | None
    key: str
    paths: dict[str, str]  # split name -> its store file

    def without_test(self) -> Splits:
        """The search never sees the test split."""
        return dataclasses.replace(self, test=None)


def default_cache_dir() -> Path:
    return Path(os.environ.get("INFOPROMPT_CACHE", Path.home() / ".cache" / "infoprompt"))


def _vocab_hash(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def store_key(cfg: InfoPromptConfig, fingerprint: str, tokenizer) -> tuple[str, dict]:
    """The hash naming a store folder, and the parts it hashes."""
    parts = {
        "format": FORMAT_VERSION,
        "task": cfg.task,
        "source": fingerprint,  # data source and its file checksums
        "shots": cfg.shots,
        "seed": cfg.seed,
        "model": cfg.model,  # tokenizer and the encoder that made the features
        "tokenizer": f"{type(tokenizer).__name__}:{_vocab_hash(tokenizer)}",
        "max_length": cfg.max_length,
        "n_prompts": cfg.n_prompts,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return digest[:20], parts


def load_splits(cfg: InfoPromptConfig, *, with_test: bool = True, log=None) -> Splits:
    """Read the store for cfg's (task, shots, seed, model, …), building what is missing."""
    log = log or (lambda message: print(message, file=sys.stderr))
    tokenizer = load_tokenizer(cfg.model)
    check_max_length(cfg)
    task, raw = load_task(cfg.task, cfg.data_dir)
    names = SPLITS if with_test else SPLITS[:2]
    root = Path(cfg.cache_dir or default_cache_dir()) / cfg.task
    keys, paths = {}, {}
    for name in names:
        # The test split (GLUE dev) is the same for every shots and seed: stored once.
        key_cfg = cfg.replace(shots=None, seed=0) if name == "test" else cfg
        keys[name] = store_key(key_cfg, raw.fingerprint, tokenizer)
        paths[name] = root / keys[name][0] / f"{name}.arrow"
    tables = {name: _read(paths[name], keys[name], log) for name in names}
    missing = [name for name, table in tables.items() if table is None]
    if missing:  # a filled cache may be read-only: only a build needs to write
        for name in missing:
            check_writable_folder(paths[name].parent, "the store folder",
                                  "give --cache-dir (or $INFOPROMPT_CACHE) a folder you can "
                                  "write; a filled store may be read-only")
        tables.update(_build(cfg, task, raw, tokenizer, keys, paths, missing, log))
    return Splits(task, tables["train"], tables["valid"], tables.get("test"), keys["train"][0],
                  {name: str(path) for name, path in paths.items()})


def check_max_length(cfg: InfoPromptConfig) -> None:
    """--max-length must fit the encoder's position embeddings: a longer input fails inside
    the encoder, after the data is read and tokenized."""
    limit = max_tokens(cfg.model)
    if limit is not None and cfg.max_length > limit:
        raise ConfigError(f"--max-length {cfg.max_length} is more than {cfg.model} takes "
                          f"({limit} tokens); use --max-length {limit} or less")


def _read(path: Path, key: tuple[str, dict], log) -> pa.Table | None:
    if not path.exists():
        return None
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        meta = json.loads(table.schema.metadata[META_KEY])
        if meta["key"] != key[0] or meta["parts"] != key[1] or meta["rows"] != table.num_rows:
            raise ValueError(f"metadata says key {meta['key']}, {meta['rows']} rows")
        if meta.get("split") != path.stem:  # train and valid share a key: a swap must show
            raise ValueError(f"metadata says split {meta.get('split')!r}, not {path.stem!r}")
        # Bytes changed inside the data still parse as Arrow: only a checksum catches them.
        if meta.get("digest") != _content_digest(table):
            raise ValueError("its content does not match the checksum in its metadata")
        return table
    except Exception as error:  # noqa: BLE001 - any unreadable file is rebuilt the same way
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        log(f"store: {path} is damaged ({reason}); rebuilding it")
        return None


def _content_digest(table: pa.Table) -> str:
    """sha256 of every column's values (not of the buffers' layout: a freshly built column may
    carry an all-valid bitmap that the file read back does not)."""
    digest = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns):
        digest.update(f"{name}:{column.type}:{len(column)}:".encode())
        array = column.combine_chunks()
        while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
            if pa.types.is_list(array.type):
                digest.update(pc.list_value_length(array).to_numpy(zero_copy_only=False))
            array = pc.list_flatten(array)
        if pa.types.is_string(array.type):
            digest.update(pc.binary_length(array).to_numpy(zero_copy_only=False))
            digest.update("".join(array.to_pylist()).encode())
        else:
            digest.update(np.ascontiguousarray(array.to_numpy(zero_copy_only=False)))
    return digest.hexdigest()


def _build(cfg: InfoPromptConfig, task: Task, raw, tokenizer, keys: dict[str, tuple[str, dict]],
           paths: dict[str, Path], names: list[str], log) -> dict[str, pa.Table]:
    started = time.perf_counter()
    samples = few_shot_splits(raw, task, cfg.shots, cfg.seed)
    template = Template.for_tokenizer(tokenizer, n_prompts=cfg.n_prompts,
                                      max_length=cfg.max_length)
    encoder = load_encoder(cfg.model)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    encoder.to(device)
    tables = {}
    for name in names:
        table = features_table(samples[name], task, tokenizer, template, encoder,
                               device=device)
        meta = {"key": keys[name][0], "parts": keys[name][1], "split": name,
                "rows": table.num_rows, "source": raw.source, "digest": _content_digest(table)}
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(table, paths[name])
        # Hand back the memory-mapped file, so a fresh build and a cache hit read alike.
        tables[name] = _read(paths[name], keys[name], log)
        if tables[name] is None:
            raise RuntimeError(f"store: {paths[name]} is unreadable right after writing it")
    log(f"store: built {', '.join(names)} for {cfg.task} in "
        f"{time.perf_counter() - started:.1f}s under {paths[names[0]].parent.parent}")
    return tables


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write beside the target and rename: a reader sees the old file or the whole new one,
    and two builders of the same key cannot interleave their bytes."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        feather.write_feather(table, tmp, compression="uncompressed")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared with other users' jobs
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def tokenize(samples: pa.Table, task: Task, tokenizer, template: Template) -> pa.Table:
    """Template-encode every row: input_ids, mask_pos, text_ids, label (and the texts)."""
    columns = [samples.column(f).to_pylist() for f in task.text_fields]
    encoded = [template.encode(tokenizer, texts) for texts in zip(*columns)]
    return pa.table({
        **{f: samples.column(f) for f in task.text_fields},
        "label": samples.column("label").cast(pa.int64()),
        "input_ids": pa.array([e.input_ids for e in encoded], pa.list_(pa.int32())),
        "mask_pos": pa.array([e.mask_pos for e in encoded], pa.int32()),
        "text_ids": pa.array([e.text_ids for e in encoded], pa.list_(pa.int32())),
    })


def features_table(samples: pa.Table, task: Task, tokenizer, template: Template, encoder, *,
                   device: torch.device) -> pa.Table:
    """What a split's store file holds: the tokenized rows with their P', Z' (also the
    path of new text to a saved model's prediction)."""
    table = tokenize(samples, task, tokenizer, template)
    p_free, z_free = encode_prompt_free(encoder, table, template.n_prompts, device=device)
    return _with_features(table, p_free, z_free)


def encode_prompt_free(encoder, table: pa.Table, n_prompts: int, *, device: torch.device,
                       batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """P', Z' for every row, (N, D) float32 each."""
    ids = [prompt_free_ids(row, n_prompts) for row in table.column("input_ids").to_pylist()]
    mask_pos = np.asarray(table.column("mask_pos")) - n_prompts
    # Sorting by length keeps the padding per batch small; the order is restored below.
    order = np.argsort([len(row) for row in ids], kind="stable")
    p_out, z_out = [], []
    for start in range(0, len(ids), batch_size):
        rows = order[start:start + batch_size]
        input_ids, attention = pad([ids[i] for i in rows])
        p_free, z_free = prompt_free_features(encoder, input_ids.to(device),
                                              attention.to(device),
                                              torch.as_tensor(mask_pos[rows]).long().to(device))
        p_out.append(p_free.cpu().numpy())
        z_out.append(z_free.cpu().numpy())
    hidden = encoder.config.hidden_size
    p_free = np.empty((len(ids), hidden), np.float32)
    z_free = np.empty((len(ids), hidden), np.float32)
    if ids:
        p_free[order] = np.concatenate(p_out)
        z_free[order] = np.concatenate(z_out)
    return p_free, z_free


def _with_features(table: pa.Table, p_free: np.ndarray, z_free: np.ndarray) -> pa.Table:
    hidden = p_free.shape[1]
    for name, values in (("p_free", p_free), ("z_free", z_free)):
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), hidden)
        table = table.append_column(name, column)
    return table
