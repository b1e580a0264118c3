"""One training run: `run(cfg, splits)` yields a metrics dict per epoch.

Reads top to bottom: the split as tensors, batching, one step, evaluation, the loop.
Nothing here knows about Ray; a search wraps `Training` (for checkpoints) or `run`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from infoprompt.config import InfoPromptConfig
from infoprompt.encoder import load_encoder, prompt_free_features
from infoprompt.errors import InfoPromptError
from infoprompt.losses import mi_bound, nce_head, nce_rep, sample_token_negatives
from infoprompt.metrics import classification_metrics
from infoprompt.model import InfoPromptModel
from infoprompt.store import Splits, pad, prompt_free_ids

__all__ = ["Diverged", "Training", "fit", "resolve_device", "run"]

LOSS_TERMS = ("loss", "loss_pred", "nce_rep", "nce_head", "prompt_norm")


class Diverged(InfoPromptError):
    """The loss became NaN or infinite; the run cannot continue meaningfully."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InfoPromptError(f"--device {name}, but torch sees no CUDA GPU here; use "
                              "--device auto (GPU when there is one) or --device cpu")
    return torch.device(name)


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


def _adamw(groups: list[dict], **options: Any) -> torch.optim.AdamW:
    """AdamW with one fused kernel per parameter instead of a dozen small ops (CPU, 0.8 M
    trainable weights: 0.9 ms a step instead of 4.7). torch < 2.4 has no fused CPU kernel."""
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except RuntimeError:
        return torch.optim.AdamW(groups, foreach=True, **options)


class Training:
    """State of one run. `epochs()` trains and yields metrics; `state()` is a checkpoint."""

    def __init__(self, cfg: InfoPromptConfig, splits: Splits, *, resume: dict | None = None,
                 recompute_prompt_free: bool = False, pad_to: int | None = None):
        self.cfg = cfg
        self.splits = splits
        # The authors' two-pass design, kept for benchmarks and equivalence tests.
        self.recompute_prompt_free = recompute_prompt_free
        self.pad_to = pad_to
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        # torch's CPU flash-attention backward in bf16 costs ~9x its fp32 one (MiniLM, batch
        # 8 x 64): plain matmul attention halves a bf16 step on CPU. CUDA keeps SDPA.
        attention = "eager" if cfg.bf16 and self.device.type == "cpu" else None
        self.model = InfoPromptModel(cfg, load_encoder(cfg.model, attn_implementation=attention),
                                     splits.task.num_labels)
        self.model.to(self.device)
        self.train_data = SplitTensors.from_table(splits.train)
        self.valid_data = SplitTensors.from_table(splits.valid)
        self.steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        self.optimizer = _adamw(self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = self.steps_per_epoch * cfg.epochs
        warmup = max(1, int(cfg.warmup_ratio * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min((step + 1) / warmup,
                                             max(0.0, (total - step) / max(1, total - warmup))))
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_epoch = -1
        self.best_valid = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        if resume is not None:
            self._load(resume)

    def _param_groups(self) -> list[dict]:
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        encoder = [p for p in trainable if id(p) in encoder_ids]
        others = [p for p in trainable if id(p) not in encoder_ids]
        groups = [{"params": others, "lr": self.cfg.lr}]
        if encoder:  # finetune only: a prompt-tuning lr would wreck pretrained weights
            groups.append({"params": encoder, "lr": self.cfg.encoder_lr})
        return groups

    # --- one step -----------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.recompute_prompt_free:
            # Prompt slots sit at columns 1..n_p: dropping them is the prompt-free template.
            keep = [0] + list(range(1 + self.cfg.n_prompts, batch["input_ids"].shape[1]))
            with self._autocast():
                batch["p_free"], batch["z_free"] = prompt_free_features(
                    self.model.encoder, batch["input_ids"][:, keep],
                    batch["attention_mask"][:, keep], batch["mask_pos"] - self.cfg.n_prompts)
        return batch

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L = L_pred + β·NCE_rep + γ·NCE_head (eq. 11), and the terms."""
        cfg, model = self.cfg, self.model
        with self._autocast():
            z, logits, prompts = model(batch["input_ids"], batch["attention_mask"],
                                       batch["mask_pos"], batch["p_free"])
            out = {"loss_pred": F.cross_entropy(logits.float(), batch["labels"])}
            if cfg.method.uses_critics:
                p_bar = prompts.mean(1)
                out["nce_rep"] = nce_rep(model.critic_rep, model.f_mu, model.f_sigma, p_bar, z,
                                         batch["z_free"], cfg.k_negatives, cfg.log_sigma_max)
                negatives = sample_token_negatives(batch["text_ids"], batch["text_mask"],
                                                   cfg.k_negatives - 1,
                                                   model.encoder.get_input_embeddings())
                out["nce_head"] = nce_head(model.critic_head, model.head, logits, p_bar,
                                           negatives)
        zero = out["loss_pred"].new_zeros(())
        out.setdefault("nce_rep", zero)
        out.setdefault("nce_head", zero)
        out["loss"] = (out["loss_pred"] + cfg.effective_beta * out["nce_rep"]
                       + cfg.effective_gamma * out["nce_head"])
        out["prompt_norm"] = (prompts.detach().float().norm(dim=-1).mean()
                              if prompts is not None else zero)
        return out

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.losses(self._to_device(batch))
        if not torch.isfinite(out["loss"]):
            raise Diverged(f"loss became {out['loss'].item()} in epoch {self.epoch + 1} "
                           f"(lr={self.cfg.lr:g}); lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]],
            self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return out

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: SplitTensors) -> dict[str, float]:
        predictions = []
        for start in range(0, len(split), self.cfg.eval_batch_size):
            rows = list(range(start, min(start + self.cfg.eval_batch_size, len(split))))
            batch = self._to_device(self._batch(split, rows))
            with self._autocast():
                _, logits, _ = self.model(batch["input_ids"], batch["attention_mask"],
                                          batch["mask_pos"], batch["p_free"])
            predictions.append(logits.argmax(-1).cpu())
        return classification_metrics(split.labels.tolist(), torch.cat(predictions).tolist(),
                                      self.splits.task.num_labels)

    def _batch(self, split: SplitTensors, rows: list[int]) -> dict[str, torch.Tensor]:
        return make_batch(split, rows, n_prompts=self.cfg.n_prompts,
                          with_prompts=self.cfg.method.uses_prompts, pad_to=self.pad_to)

    # --- the loop -----------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> list[int]:
        """Shuffle order from (seed, epoch) alone: a resumed run sees the same batches."""
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return torch.randperm(len(self.train_data), generator=generator).tolist()

    def epochs(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        metric = self.splits.task.metric
        while self.epoch < cfg.epochs:
            started = time.perf_counter()
            order = self.epoch_order(self.epoch)
            sums = dict.fromkeys(LOSS_TERMS, 0.0)  # device tensors: one sync per epoch
            for start in range(0, len(order), cfg.batch_size):
                out = self.step(self._batch(self.train_data, order[start:start + cfg.batch_size]))
                for name in LOSS_TERMS:
                    sums[name] = sums[name] + out[name].detach()
            self.epoch += 1
            valid = self.evaluate(self.valid_data)
            means = {name: float(total) / self.steps_per_epoch for name, total in sums.items()}
            if valid[metric] > self.best_valid:
                self.best_valid, self.best_epoch = valid[metric], self.epoch
                self.best_state = copy.deepcopy(self.model.trainable_state())
            record = {
                "epoch": self.epoch,
                "valid_metric": valid[metric],
                **{f"valid_{name}": value for name, value in valid.items()},
                **means,
                "mi_rep": mi_bound(means["nce_rep"], cfg.k_negatives),
                "mi_head": mi_bound(means["nce_head"], cfg.k_negatives),
                "lr": self.scheduler.get_last_lr()[0],
                "best_valid_metric": self.best_valid,
                "best_epoch": self.best_epoch,
                "epoch_seconds": time.perf_counter() - started,
            }
            self.history.append(record)
            yield record

    def test(self) -> dict[str, float]:
        """Test metrics of the best-valid epoch's parameters (the split the search never sees)."""
        if self.splits.test is None:
            raise ValueError("these splits carry no test table")
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)
        return self.evaluate(SplitTensors.from_table(self.splits.test))

    # --- checkpoints --------------------------------------------------------------------
    def state(self, *, with_best: bool = True) -> dict[str, Any]:
        """Trainable parameters, optimizer, schedule and progress; never the frozen encoder.
        `with_best=False` leaves out the best epoch's parameters (a quarter of the size),
        which only `test()` needs."""
        return {"config": self.cfg.to_dict(), "epoch": self.epoch,
                "model": self.model.trainable_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history,
                "best": (self.best_epoch, self.best_valid, self.best_state if with_best else None),
                "rng": torch.get_rng_state()}

    def _load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.best_epoch, self.best_valid, self.best_state = state["best"]
        torch.set_rng_state(state["rng"])


def run(cfg: InfoPromptConfig, splits: Splits, **options: Any) -> Iterator[dict[str, Any]]:
    """Train one configuration, yielding one metrics dict per epoch."""
    yield from Training(cfg, splits, **options).epochs()


def fit(cfg: InfoPromptConfig, splits: Splits, *,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        **options: Any) -> dict[str, Any]:
    """Train to the end and score the best-valid epoch on the test split (if present):
    the `metrics.json` of the CLI and one seed of a search's final evaluation."""
    training = Training(cfg, splits, **options)
    for record in training.epochs():
        if on_epoch is not None:
            on_epoch(record)
    summary = {"task": cfg.task, "method": cfg.method.value, "seed": cfg.seed,
               "config": cfg.to_dict(), "history": training.history,
               "best_epoch": training.best_epoch, "best_valid_metric": training.best_valid}
    if splits.test is not None:
        test = training.test()
        summary["test_metric"] = test[splits.task.metric]
        summary["test_metrics"] = test
    return summary
