"""Figure 1: the conditional MI between a prompt and the representation, given the input, of
four kinds of prompt on one task and seed: random token embeddings, a hand-crafted
instruction, WARP's learned prompt and InfoPrompt's generated ones.

Per example X_i the kind's prompt competes with K−1 reference prompts (random token
embeddings, one fixed draw shared by every kind) applied to the SAME X_i; losses.conditional_nce
scores how well X_i's state tells them apart (docs/design.md 2.7 says why and what it is not).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from infoprompt.batching import SplitTensors
from infoprompt.config import InfoPromptConfig, Method
from infoprompt.encoder import load_tokenizer
from infoprompt.errors import InfoPromptError
from infoprompt.losses import conditional_nce
from infoprompt.model import InfoPromptModel
from infoprompt.store import load_splits

from infoprompt.analysis.common import describe, pyplot, save_figure, trained, write_outputs

__all__ = ["KINDS", "add_arguments", "conditional_mi_of", "main", "random_prompts"]

KINDS = ("random", "hand-crafted", "WARP", "InfoPrompt")
INSTRUCTION = "Classify the meaning of the following text ."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=int, default=64,
                        help="inputs scored, the first of the test split (default: 64)")
    parser.add_argument("--references", type=int, default=15,
                        help="K−1 random reference prompts each kind competes with (default: 15)")
    parser.add_argument("--noise-scale", type=float, default=0.25,
                        help="σ of the Gaussian channel per dimension, as a fraction of the "
                             "state's norm (default: 0.25)")
    parser.add_argument("--instruction", default=INSTRUCTION,
                        help="the hand-crafted prompt: its first n_p tokens' embeddings "
                             f"(default: {INSTRUCTION!r})")


def random_prompts(embeddings: torch.Tensor, count: int, n_prompts: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(count, n_p, D) embeddings of random vocabulary tokens, from ids ≥ min(1000, V/2) as the
    model's own prompts start (past special and unused ids)."""
    low = min(1000, embeddings.shape[0] // 2)
    ids = torch.randint(low, embeddings.shape[0], (count, n_prompts), generator=generator)
    return embeddings[ids.to(embeddings.device)].detach().float()


def instruction_prompt(cfg: InfoPromptConfig, text: str, embeddings: torch.Tensor) -> torch.Tensor:
    """(n_p, D): the embeddings of the instruction's first n_p tokens."""
    ids = load_tokenizer(cfg.model)(text, add_special_tokens=False)["input_ids"]
    if len(ids) < cfg.n_prompts:
        raise InfoPromptError(f"--instruction {text!r} has {len(ids)} tokens, fewer than n_p = "
                              f"{cfg.n_prompts}; give a longer instruction")
    return embeddings[torch.tensor(ids[:cfg.n_prompts], device=embeddings.device)].float()


@torch.no_grad()
def conditional_mi_of(model: InfoPromptModel, batch: dict[str, torch.Tensor],
                      prompts: torch.Tensor, references: torch.Tensor, noise_scale: float,
                      seed: int, chunk: int = 64) -> torch.Tensor:
    """Per-example bound (N,) in nats, at most log K: each example i under its prompt
    prompts[i] (N, n_p, D) first, then under the K−1 `references` (K−1, n_p, D)."""
    n = len(prompts)
    k = 1 + len(references)
    candidates = torch.cat([prompts[:, None], references.expand(n, -1, -1, -1)], 1).flatten(0, 1)
    inputs = [batch[name].repeat_interleave(k, 0)
              for name in ("input_ids", "attention_mask", "mask_pos")]
    z = torch.cat([model.represent(*(x[start:start + chunk] for x in inputs),
                                   candidates[start:start + chunk])
                   for start in range(0, n * k, chunk)])
    generator = torch.Generator(z.device).manual_seed(seed)
    return math.log(k) - conditional_nce(z.view(n, k, -1), noise_scale, generator=generator)


def run(cfg: InfoPromptConfig, *, out: Path, examples: int, references: int,
        noise_scale: float, instruction: str, log=print) -> dict[str, Any]:
    splits = load_splits(cfg, log=log)
    log(f"training WARP and InfoPrompt ({cfg.epochs} epochs, seed {cfg.seed})")
    runs = {kind: trained(cfg, method, splits, log=log)
            for kind, method in (("WARP", Method.WARP), ("InfoPrompt", Method.INFOPROMPT))}
    model = runs["InfoPrompt"].model  # the encoder is frozen: any model's represent is Φ's
    embeddings = model.encoder.get_input_embeddings().weight
    table = splits.test if splits.test is not None else splits.valid
    rows = list(range(min(examples, table.num_rows)))
    split = SplitTensors.from_table(table).to(runs["InfoPrompt"].device)
    batch = runs["InfoPrompt"].batch(split, rows)
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # not the models' init draw
    reference = random_prompts(embeddings, references, cfg.n_prompts, generator)
    n = len(rows)
    with torch.no_grad():
        prompts = {
            "random": random_prompts(embeddings, n, cfg.n_prompts, generator),
            "hand-crafted": instruction_prompt(cfg, instruction, embeddings).expand(n, -1, -1),
            "WARP": runs["WARP"].model.prompts(batch["p_free"]).float(),
            "InfoPrompt": model.prompts(batch["p_free"]).float(),
        }
    values = {kind: conditional_mi_of(model, batch, prompts[kind], reference, noise_scale,
                                      cfg.seed).tolist() for kind in KINDS}
    result = {"task": cfg.task, "seed": cfg.seed, "model": cfg.model, "epochs": cfg.epochs,
              "n_prompts": cfg.n_prompts, "candidates": references + 1,
              "log_k": math.log(references + 1), "noise_scale": noise_scale,
              "instruction": instruction, "examples": n,
              "split": "test" if splits.test is not None else "valid",
              "summary": {kind: describe(v) for kind, v in values.items()},
              "per_example": values}
    write_outputs(out, "cmi", result, _plot)
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    data = [result["per_example"][kind] for kind in KINDS]
    axis.violinplot(data, showmeans=True, showextrema=False)
    for i, values in enumerate(data, 1):
        axis.scatter([i] * len(values), values, s=4, alpha=0.4, color="black")
    axis.axhline(result["log_k"], color="grey", linestyle=":", linewidth=1)
    axis.text((len(KINDS) + 1) / 2, result["log_k"], "log K", ha="center", va="bottom", fontsize=8,
              color="grey")
    axis.set_xticks(range(1, len(KINDS) + 1),
                    [f"{k}\nmean {result['summary'][k]['mean']:.2f}" for k in KINDS])
    axis.set_ylabel("conditional MI bound (nats)")
    axis.set_ylim(top=1.1 * result["log_k"])
    axis.set_title(f"{result['task']}, seed {result['seed']}, {result['model']}: "
                   f"I(prompt; Z | X), K = {result['candidates']}", fontsize=10)
    save_figure(figure, path)


def main(cfg: InfoPromptConfig, args: argparse.Namespace) -> dict[str, Any]:
    if args.examples < 1 or args.references < 1 or not args.noise_scale > 0:
        raise InfoPromptError("--examples and --references must be >= 1 and --noise-scale > 0")
    result = run(cfg, out=args.out, examples=args.examples, references=args.references,
                 noise_scale=args.noise_scale, instruction=args.instruction)
    for kind in KINDS:
        s = result["summary"][kind]
        print(f"{kind:>12}: mean {s['mean']:.3f}  median {s['median']:.3f}  "
              f"(log K = {result['log_k']:.3f})")
    print(f"-> {args.out / 'cmi.png'}, {args.out / 'cmi.json'}")
    return result
