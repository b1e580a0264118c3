"""A trained run as a folder another process can use: save, load (with checks), predict.

    model.safetensors   the trainable state of the best-valid epoch (never the frozen encoder)
    infoprompt.json     its config, task, label names, text fields and the encoder's identity

Only these two are ever read: safetensors and JSON cannot run code when loaded, a pickle
(.pt, .bin, .pkl) can, so a folder that offers one instead is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from infoprompt.batching import SplitTensors, make_batch
from infoprompt.config import InfoPromptConfig
from infoprompt.encoder import load_encoder, load_tokenizer
from infoprompt.errors import InfoPromptError
from infoprompt.model import InfoPromptModel
from infoprompt.store import features_table
from infoprompt.tasks import Task, get_task
from infoprompt.template import Template
from infoprompt.train import resolve_device

__all__ = ["FORMAT", "MANIFEST", "WEIGHTS", "SavedModel", "load_model", "save_model"]

WEIGHTS, MANIFEST, FORMAT = "model.safetensors", "infoprompt.json", 1
PICKLES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def encoder_identity(name: str, encoder: torch.nn.Module) -> dict[str, Any]:
    """What must match for the weights to mean the same thing: the encoder's name, its width
    and a hash of its input embeddings (another checkpoint under the same name differs)."""
    embeddings = encoder.get_input_embeddings().weight.detach().float().cpu()
    return {"name": name, "hidden_size": int(encoder.config.hidden_size),
            "embeddings_sha256": hashlib.sha256(embeddings.numpy().tobytes()).hexdigest()}


def save_model(folder: str | os.PathLike[str], model: InfoPromptModel, task: Task,
               extra: dict[str, Any] | None = None) -> Path:
    """Write the folder atomically: built beside its target and renamed into place, so a
    reader sees the old folder or the whole new one. `extra`: more for the manifest (say,
    the run's test metric). Returns the folder."""
    folder = Path(folder).expanduser().absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    manifest = {"format": FORMAT, "task": task.name, "label_names": list(task.label_names),
                "text_fields": list(task.text_fields), "metric": task.metric,
                "encoder": encoder_identity(cfg.model, model.encoder),
                "config": cfg.to_dict(), **(extra or {})}
    building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        state = {k: v.detach().float().cpu().contiguous()
                 for k, v in model.trainable_state().items()}
        save_file(state, building / WEIGHTS, metadata={"format": str(FORMAT)})
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for path in (building / WEIGHTS, building / MANIFEST):
            os.chmod(path, 0o644)
        os.chmod(building, 0o755)  # mkdtemp makes 0700
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(building, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


class SavedModel:
    """A loaded folder: `predict(rows)` gives class probabilities for raw texts."""

    def __init__(self, model: InfoPromptModel, task: Task, manifest: dict[str, Any],
                 device: torch.device):
        self.model, self.task, self.manifest, self.device = model, task, manifest, device
        self.cfg: InfoPromptConfig = model.cfg
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.template = Template.for_tokenizer(self.tokenizer, n_prompts=self.cfg.n_prompts,
                                               max_length=self.cfg.max_length)

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @torch.no_grad()
    def probabilities(self, split: SplitTensors) -> torch.Tensor:
        """(N, C) class probabilities of an already featurized split."""
        return probabilities(self.model, split, self.cfg)

    def predict(self, rows: pa.Table) -> torch.Tensor:
        """(N, C) class probabilities for a table with the task's text fields."""
        samples = rows.select(self.task.text_fields).append_column(
            "label", pa.array([0] * rows.num_rows, pa.int64()))  # unused: no gold labels
        table = features_table(samples, self.task, self.tokenizer, self.template,
                               self.model.encoder, device=self.device)
        return self.probabilities(SplitTensors.from_table(table).to(self.device))


@torch.no_grad()
def probabilities(model: InfoPromptModel, split: SplitTensors,
                  cfg: InfoPromptConfig) -> torch.Tensor:
    """(N, C) softmax of the head over a split, as Training.evaluate scores it."""
    model.eval()
    out = []
    for start in range(0, len(split), cfg.eval_batch_size):
        rows = list(range(start, min(start + cfg.eval_batch_size, len(split))))
        batch = make_batch(split, rows, n_prompts=cfg.n_prompts,
                           with_prompts=cfg.method.uses_prompts)
        _, logits, _ = model(batch["input_ids"], batch["attention_mask"], batch["mask_pos"],
                             batch["p_free"])
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.head.out_features)


def _refuse(folder: Path, reason: str) -> InfoPromptError:
    return InfoPromptError(f"--model-dir {folder}: {reason}")


def read_manifest(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise _refuse(folder, "no such folder; give a folder written by --save-model or by a "
                              "search's final evaluation")
    if not (folder / WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLES)
        if pickles:
            raise _refuse(folder, f"holds {pickles[0]}, a pickle that could run code when "
                                  f"loaded; only {WEIGHTS} (safetensors) is read")
        raise _refuse(folder, f"has no {WEIGHTS}; it is not a saved InfoPrompt model")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["config"], manifest["task"], manifest["encoder"]["name"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _refuse(folder, f"{MANIFEST} is missing or unreadable "
                              f"({type(error).__name__}: {error})") from None
    if manifest.get("format") != FORMAT:
        raise _refuse(folder, f"format {manifest.get('format')!r}, this version reads {FORMAT}")
    return manifest


def load_model(folder: str | os.PathLike[str], *, task: str | None = None,
               model: str | None = None, device: str = "auto") -> SavedModel:
    """The folder's model on `device`. Refused, in one line: a folder for another `task` or
    encoder (`model`) than the caller expects, an encoder that is not the one it was trained
    on, weights that do not fit the config, a pickle instead of safetensors."""
    folder = Path(folder).expanduser().absolute()
    manifest = read_manifest(folder)
    where = resolve_device(device)  # refuses cuda without a GPU, in one line
    saved_task, saved_encoder = manifest["task"], manifest["encoder"]
    if task is not None and task != saved_task:
        raise _refuse(folder, f"was trained for task {saved_task}, not {task}")
    if model is not None and model != saved_encoder["name"]:
        raise _refuse(folder, f"was trained on encoder {saved_encoder['name']}, not {model}")
    cfg = InfoPromptConfig.from_dict({**manifest["config"], "device": str(where)})
    the_task = get_task(saved_task)
    if saved_task == "custom":  # its columns and labels came from the data's task.json
        the_task = dataclasses.replace(the_task, text_fields=tuple(manifest["text_fields"]),
                                       label_names=tuple(manifest["label_names"]),
                                       metric=manifest["metric"])
    if list(the_task.label_names) != manifest["label_names"]:
        raise _refuse(folder, f"its labels {manifest['label_names']} are not task "
                              f"{saved_task}'s {list(the_task.label_names)}")
    encoder = load_encoder(cfg.model)
    if encoder_identity(cfg.model, encoder) != saved_encoder:
        raise _refuse(folder, f"the encoder {cfg.model!r} found here is not the one it was "
                              "trained on (other weights or width)")
    torch.manual_seed(cfg.seed)  # the initial prompts are drawn; the saved ones replace them
    net = InfoPromptModel(cfg, encoder, the_task.num_labels)
    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError) as error:
        raise _refuse(folder, f"{WEIGHTS} is not a readable safetensors file ({error})") from None
    expected = net.trainable_state()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise _refuse(folder, f"{WEIGHTS} does not fit its config (method "
                              f"{cfg.method.value}): other tensors or shapes")
    net.load_state_dict(state, strict=False)
    net.to(where)
    return SavedModel(net, the_task, manifest, where)


def read_rows(path: str | None, task: Task, lines: Iterator[str] | None = None) -> pa.Table:
    """Inputs to classify: a .tsv / .csv with a header, or .jsonl, with the task's text
    fields as columns; or, without a path, one text per line of `lines` (a pair task: the
    two texts separated by a tab)."""
    import pyarrow.csv
    import pyarrow.json

    fields = task.text_fields
    if path is None:
        rows = [line.rstrip("\n").split("\t") for line in (lines or []) if line.strip()]
        bad = next((i for i, row in enumerate(rows, 1) if len(row) != len(fields)), None)
        if bad is not None:
            raise InfoPromptError(f"input line {bad}: task {task.name} takes {len(fields)} "
                                  f"text(s) per line ({' TAB '.join(fields)})")
        return pa.table({f: [row[i] for row in rows] for i, f in enumerate(fields)})
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".jsonl":
            table = pyarrow.json.read_json(path)
        elif suffix in (".tsv", ".csv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            table = pyarrow.csv.read_csv(
                path, parse_options=pyarrow.csv.ParseOptions(
                    delimiter=delimiter, quote_char=False if suffix == ".tsv" else '"'),
                convert_options=pyarrow.csv.ConvertOptions(
                    column_types={f: pa.string() for f in fields}))
        else:
            raise InfoPromptError(f"--input {path}: give a .tsv, .csv or .jsonl file (or "
                                  "no --input: one text per line on stdin)")
    except (OSError, pa.ArrowInvalid) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise InfoPromptError(f"--input {path} cannot be read: {reason}") from None
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise InfoPromptError(f"--input {path} has no column {', '.join(missing)} (it has "
                              f"{', '.join(table.column_names)}); task {task.name} reads "
                              f"{', '.join(fields)}")
    return table.select(list(fields)).cast(pa.schema([(f, pa.string()) for f in fields]))


def prediction_table(rows: pa.Table, probs: torch.Tensor, labels: Sequence[str]) -> pa.Table:
    """The inputs, the predicted label and one probability column per class."""
    predicted = probs.argmax(-1).tolist()
    out = rows.append_column("prediction", pa.array([labels[i] for i in predicted]))
    for i, name in enumerate(labels):
        out = out.append_column(f"p_{name}", pa.array(probs[:, i].tolist(), pa.float64()))
    return out
