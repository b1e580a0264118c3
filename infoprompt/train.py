"""One training run: `run(cfg, splits)` yields a metrics dict per epoch.

Reads top to bottom: the split as tensors, batching, one step, evaluation, the loop.
Nothing here knows about Ray; a search wraps `Training` (for checkpoints) or `run`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from infoprompt.batching import SplitTensors, epoch_order, make_batch
from infoprompt.config import Estimator, InfoPromptConfig
from infoprompt.encoder import load_encoder
from infoprompt.errors import InfoPromptError
from infoprompt.losses import (
    conditional_nce,
    mi_bound,
    nce_head,
    nce_rep,
    rep_noise,
    sample_token_negatives,
    vib_kl,
)
from infoprompt.metrics import task_metrics
from infoprompt.model import InfoPromptModel, gaussian
from infoprompt.precision import use_bf16
from infoprompt.store import Splits

__all__ = ["Diverged", "Training", "fit", "linear_schedule", "resolve_device", "run"]

LOSS_TERMS = ("loss", "loss_pred", "nce_rep", "nce_head", "kl")  # the objective and its terms
STEP_MEANS = (*LOSS_TERMS, "prompt_norm")  # averaged over an epoch's steps
# Diagnostics (cfg.diagnostics, methods with critics): both NCE terms with P̄ rolled by one
# across the batch, averaged over the steps like the terms; equal to the term when its critic
# ignores the prompt. Each term's gradient norm on the generator, from one batch per epoch.
SHUFFLED = ("nce_rep_shuffled", "nce_head_shuffled")
GRADIENTS = ("grad_pred", "grad_rep", "grad_head")
# Diagnostics (cfg.diagnostics, methods with prompts): log K − InfoNCE of which of K prompts
# (the first batch_size valid examples' own) X's state was given, X fixed: 0 when Z ignores
# the prompt, log K at most (losses.conditional_nce). Once per epoch, on valid.
CONDITIONAL = "cmi_prompt"


class Diverged(InfoPromptError):
    """The loss became NaN or infinite; the run cannot continue meaningfully."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InfoPromptError(f"--device {name}, but torch sees no CUDA GPU here; use "
                              "--device auto (GPU when there is one) or --device cpu")
    return torch.device(name)


def linear_schedule(optimizer: torch.optim.Optimizer, cfg: InfoPromptConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over cfg.warmup_ratio of the steps, then linear decay to zero:
    transformers' schedule. Its first step has lr 0 (step 0 of the warm-up); the schedule
    written here before it started at lr/warmup, one step ahead (docs/design.md)."""
    return get_linear_schedule_with_warmup(optimizer, max(1, int(cfg.warmup_ratio * total_steps)),
                                           total_steps)


def _adamw(groups: list[dict], **options: Any) -> torch.optim.AdamW:
    """AdamW with one fused kernel per parameter instead of a dozen small ops (CPU, 0.8 M
    trainable weights: 0.9 ms a step instead of 4.7). torch < 2.4 has no fused CPU kernel."""
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except RuntimeError:
        return torch.optim.AdamW(groups, foreach=True, **options)


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of several tensors taken as one vector (as clip_grad_norm_ measures)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


class Training:
    """State of one run. `epochs()` trains and yields metrics; `state()` is a checkpoint."""

    def __init__(self, cfg: InfoPromptConfig, splits: Splits, *, resume: dict | None = None):
        self.cfg = cfg
        self.splits = splits
        self.device = resolve_device(cfg.device)
        if cfg.bf16 and not use_bf16(self.device):  # slower than fp32 here: warned, fp32
            self.cfg = cfg = cfg.replace(bf16=False)
        torch.manual_seed(cfg.seed)
        # torch's CPU flash-attention backward in bf16 costs ~9x its fp32 one (MiniLM, batch
        # 8 x 64): plain matmul attention halves a bf16 step on CPU. CUDA keeps SDPA.
        attention = "eager" if cfg.bf16 and self.device.type == "cpu" else None
        self.model = InfoPromptModel(cfg, load_encoder(cfg.model, attn_implementation=attention),
                                     splits.task.num_labels)
        self.model.to(self.device)
        # On the device once per run: a batch then indexes there and copies nothing over.
        self.train_data = SplitTensors.from_table(splits.train).to(self.device)
        self.valid_data = SplitTensors.from_table(splits.valid).to(self.device)
        self.steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        self.optimizer = _adamw(self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = linear_schedule(self.optimizer, cfg, self.steps_per_epoch * cfg.epochs)
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
    def autocast(self) -> torch.autocast:
        """bf16 autocast when cfg.bf16, else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def batch(self, split: SplitTensors, rows: list[int], *,
              pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Rows of a split as a batch on the run's device, padded to its longest row (or to
        `pad_to`); methods without prompts get the prompt-free template. The run's own splits
        live on its device already (`.to` is then a no-op); another split is copied."""
        batch = make_batch(split, rows, n_prompts=self.cfg.n_prompts,
                           with_prompts=self.cfg.method.uses_prompts, pad_to=pad_to)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L = L_pred + β·NCE_rep + γ·NCE_head (eq. 11) + vib·KL, and the terms."""
        cfg, model = self.cfg, self.model
        with self.autocast():
            vib_noise = self._vib_noise(len(batch["labels"])) if cfg.effective_vib else None
            z, logits, prompts = model(batch["input_ids"], batch["attention_mask"],
                                       batch["mask_pos"], batch["p_free"], vib_noise)
            out = {"loss_pred": F.cross_entropy(logits.float(), batch["labels"])}
            if cfg.method.uses_critics:
                out.update(self._nce_terms(batch, z, logits, prompts.mean(1)))
            if cfg.effective_vib:
                out["kl"] = vib_kl(*gaussian(model.f_mu, model.f_sigma, z, cfg.log_sigma_max))
        zero = out["loss_pred"].new_zeros(())
        for name in LOSS_TERMS[2:]:
            out.setdefault(name, zero)
        out["loss"] = (out["loss_pred"] + cfg.effective_beta * out["nce_rep"]
                       + cfg.effective_gamma * out["nce_head"] + cfg.effective_vib * out["kl"])
        out["prompt_norm"] = (prompts.detach().float().norm(dim=-1).mean()
                              if prompts is not None else zero)
        return out

    def _vib_noise(self, rows: int) -> torch.Tensor:
        """ε (rows, D) of the head's latent, drawn from (seed, step) alone: what the head
        reads never depends on how many numbers the NCE terms drew (pred_only logs them at
        weight 0, with K or the estimator changing only the shared random stream)."""
        step = self.scheduler.last_epoch  # steps taken: a resumed run draws the same
        generator = torch.Generator(self.device).manual_seed(((self.cfg.seed << 32) + step)
                                                             % 2 ** 64)
        return torch.randn(rows, self.model.head.in_features, generator=generator,
                           device=self.device)

    def _nce_terms(self, batch: dict[str, torch.Tensor], z: torch.Tensor, logits: torch.Tensor,
                   p_bar: torch.Tensor) -> dict[str, torch.Tensor]:
        """NCE_rep and NCE_head for the batch (z (B, D), logits (B, C), p_bar (B, D)), and with
        cfg.diagnostics the same two with P̄ rolled by one across the batch: the same noise and
        token negatives, so a critic that ignores the prompt scores them exactly alike."""
        cfg, model = self.cfg, self.model
        # Drawn before the token negatives, as nce_rep drew them: `paper` keeps its numbers.
        noise = rep_noise(z, cfg.k_negatives, estimator=cfg.estimator,
                          hard_negative=cfg.hard_negative)
        negatives = (sample_token_negatives(batch["text_ids"], batch["text_mask"],
                                            cfg.k_negatives - 1,
                                            model.encoder.get_input_embeddings())
                     if cfg.estimator is Estimator.PAPER else None)

        def terms(prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (nce_rep(model.critic_rep, model.f_mu, model.f_sigma, prompt, z,
                            batch["z_free"], cfg.k_negatives, cfg.log_sigma_max, noise,
                            estimator=cfg.estimator, hard_negative=cfg.hard_negative),
                    nce_head(model.critic_head, model.head, logits, prompt, negatives,
                             estimator=cfg.estimator))

        out = dict(zip(("nce_rep", "nce_head"), terms(p_bar)))
        if cfg.diagnostics:
            with torch.no_grad():
                out.update(zip(SHUFFLED, terms(p_bar.roll(1, 0))))
        return out

    def _diagnose_gradients(self) -> bool:
        """On the first step of each epoch (the schedule counts steps, resumes included)."""
        return (self.cfg.diagnostics and self.cfg.method.uses_critics
                and self.scheduler.last_epoch % self.steps_per_epoch == 0)

    def _mi_gradients(self, out: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """∇ of β·NCE_rep and γ·NCE_head on the generator's parameters, the graph kept for the
        step's own backward. A term with weight 0 is not in the objective: no gradient."""
        params = list(self.model.generator.parameters())
        grads = {}
        for name, weight, term in (("grad_rep", self.cfg.effective_beta, out["nce_rep"]),
                                   ("grad_head", self.cfg.effective_gamma, out["nce_head"])):
            found = (torch.autograd.grad(weight * term, params, retain_graph=True,
                                         allow_unused=True) if weight else [None] * len(params))
            grads[name] = [torch.zeros_like(p) if g is None else g
                           for p, g in zip(params, found)]
        return grads

    def _gradient_norms(self, mi: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The norms of `mi`, and grad_pred: the generator's total gradient (read before
        clipping) minus the two, i.e. L_pred's and, with vib, vib·KL's."""
        total = [torch.zeros_like(p) if p.grad is None else p.grad
                 for p in self.model.generator.parameters()]
        rest = [t - r - h for t, r, h in zip(total, mi["grad_rep"], mi["grad_head"])]
        return {"grad_pred": _norm(rest), **{name: _norm(g) for name, g in mi.items()}}

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimizer step on a batch from `batch()`; returns the losses (and, on the first
        step of an epoch with cfg.diagnostics, the GRADIENTS norms)."""
        out = self.losses(batch)
        # No finiteness check here: reading the loss would make the host wait for the GPU
        # every step. epochs() checks the epoch's summed loss once, before its record.
        self.optimizer.zero_grad(set_to_none=True)
        mi_gradients = self._mi_gradients(out) if self._diagnose_gradients() else None
        out["loss"].backward()
        if mi_gradients is not None:
            out.update(self._gradient_norms(mi_gradients))
        torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]],
            self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return out

    # --- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: SplitTensors) -> dict[str, float]:
        """The task's metrics, and `loglik`: the mean log-probability of the gold labels (a
        selection signal that moves with every example, where accuracy moves in 1/N steps)."""
        predictions, logliks = [], []
        for start in range(0, len(split), self.cfg.eval_batch_size):
            rows = list(range(start, min(start + self.cfg.eval_batch_size, len(split))))
            batch = self.batch(split, rows)
            with self.autocast():
                _, logits, _ = self.model(batch["input_ids"], batch["attention_mask"],
                                          batch["mask_pos"], batch["p_free"])
            predictions.append(logits.argmax(-1).cpu())
            logliks.append(-F.cross_entropy(logits.float(), batch["labels"], reduction="none"))
        metrics = task_metrics(self.splits.task, split.labels.tolist(),
                               torch.cat(predictions).tolist())
        metrics["loglik"] = float(torch.cat(logliks).mean())
        return metrics

    @torch.no_grad()
    def conditional_mi(self, split: SplitTensors, rows: list[int]) -> torch.Tensor:
        """Per-example conditional_nce bound (len(rows),) in nats: each row's input under the
        prompts the model generates for every one of `rows` (its own first). A fixed prompt
        (warp) gives K equal states and exactly 0. Noise from a generator of its own, so
        logging it leaves the training's random stream alone."""
        batch = self.batch(split, rows)
        k = len(rows)
        shift = (torch.arange(k)[:, None] + torch.arange(k)[None, :]) % k  # in_batch's order
        inputs = {name: batch[name].repeat_interleave(k, 0)
                  for name in ("input_ids", "attention_mask", "mask_pos")}
        with self.autocast():
            prompts = self.model.prompts(batch["p_free"][shift.flatten().to(self.device)])
            z = self.model.represent(inputs["input_ids"], inputs["attention_mask"],
                                     inputs["mask_pos"], prompts)
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        nce = conditional_nce(z.view(k, k, -1), generator=generator)
        return math.log(k) - nce

    # --- the loop -----------------------------------------------------------------------
    def epochs(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        metric = self.splits.task.metric
        while self.epoch < cfg.epochs:
            started = time.perf_counter()
            order = epoch_order(cfg.seed, self.epoch, len(self.train_data))
            sums = dict.fromkeys(STEP_MEANS, 0.0)  # device tensors: one sync per epoch
            gradients = {}
            for start in range(0, len(order), cfg.batch_size):
                out = self.step(self.batch(self.train_data, order[start:start + cfg.batch_size]))
                for name in (*STEP_MEANS, *SHUFFLED):
                    if name in out:
                        sums[name] = sums.get(name, 0.0) + out[name].detach()
                gradients.update((name, out[name]) for name in GRADIENTS if name in out)
            if not math.isfinite(float(sums["loss"])):  # NaN or ±inf in any step: no record
                raise Diverged(f"loss became {float(sums['loss'])} in epoch {self.epoch + 1} "
                               f"(lr={self.cfg.lr:g}); lower the learning rate")
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
                **{name: float(value) for name, value in gradients.items()},
                "mi_rep": mi_bound(means["nce_rep"], cfg.nce_candidates[0]),
                "mi_head": mi_bound(means["nce_head"], cfg.nce_candidates[1]),
                **({CONDITIONAL: float(self.conditional_mi(
                    self.valid_data, list(range(min(cfg.batch_size, len(self.valid_data))))
                ).mean())} if cfg.diagnostics and cfg.method.uses_prompts else {}),
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
        return self.evaluate(SplitTensors.from_table(self.splits.test).to(self.device))

    # --- checkpoints --------------------------------------------------------------------
    def state(self, *, with_best: bool = True) -> dict[str, Any]:
        """Trainable parameters, optimizer, schedule and progress; never the frozen encoder.
        `with_best=False` leaves out the best epoch's parameters (a quarter of the size),
        which only `test()` needs."""
        return {"config": self.cfg.to_dict(), "epoch": self.epoch,
                "model": self.model.trainable_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history,
                "best": (self.best_epoch, self.best_valid, self.best_state if with_best else None),
                "rng": torch.get_rng_state(),
                # the GPU's own generator (NCE noise, token negatives): a resumed trial draws
                # what the uninterrupted one would have
                "cuda_rng": (torch.cuda.get_rng_state(self.device)
                             if self.device.type == "cuda" else None)}

    def _load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.best_epoch, self.best_valid, self.best_state = state["best"]
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


def run(cfg: InfoPromptConfig, splits: Splits, **options: Any) -> Iterator[dict[str, Any]]:
    """Train one configuration, yielding one metrics dict per epoch."""
    yield from Training(cfg, splits, **options).epochs()


def fit(cfg: InfoPromptConfig, splits: Splits, *,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        save_dir: str | None = None, **options: Any) -> dict[str, Any]:
    """Train to the end and score the best-valid epoch on the test split (if present):
    the `metrics.json` of the CLI and one seed of a search's final evaluation. `save_dir`:
    where the best-valid epoch's model is saved (infoprompt/saved.py)."""
    training = Training(cfg, splits, **options)
    for record in training.epochs():
        if on_epoch is not None:
            on_epoch(record)
    summary = {"task": cfg.task, "method": cfg.method.value, "seed": cfg.seed,
               "config": training.cfg.to_dict(), "history": training.history,
               "best_epoch": training.best_epoch, "best_valid_metric": training.best_valid}
    if splits.test is not None:
        test = training.test()
        summary["test_metric"] = test[splits.task.metric]
        summary["test_metrics"] = test
    if save_dir is not None:
        from infoprompt.saved import save_model

        if training.best_state is not None:  # test() has loaded it already; harmless twice
            training.model.load_state_dict(training.best_state, strict=False)
        save_model(save_dir, training.model, splits.task,
                   {"best_epoch": training.best_epoch,
                    "best_valid_metric": training.best_valid,
                    **({"test_metric": summary["test_metric"]} if "test_metric" in summary
                       else {})})
        summary["saved_to"] = str(save_dir)
    return summary
