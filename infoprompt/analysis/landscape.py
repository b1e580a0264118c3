"""Figure 2: the task loss and the representation loss over one prompt token (n_p = 1),
projected on the top-2 principal components of the encoder's input embedding matrix, with
the first training steps of InfoPrompt at γ = 0.05 and γ = 0 drawn on both.

A grid point (a, b) is the prompt e̅ + a·u₁ + b·u₂ (e̅ the mean embedding, u the components),
given to every one of a fixed set of training examples; each loss is averaged over them. The
losses are those of the model at the end of the first γ's trajectory (its head and critics):
the landscape the prompt was descending, not a random head's. A trajectory point is the
prompt averaged over the same examples, projected the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from infoprompt.batching import epoch_order
from infoprompt.config import InfoPromptConfig, Method
from infoprompt.errors import InfoPromptError
from infoprompt.losses import nce_rep, rep_noise
from infoprompt.model import gaussian
from infoprompt.store import load_splits
from infoprompt.train import Training

from infoprompt.analysis.common import pyplot, save_figure, write_outputs

__all__ = ["add_arguments", "grid_losses", "main", "roughness"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=40,
                        help="training steps drawn per trajectory (default: 40)")
    parser.add_argument("--grid", type=int, default=21, help="points per axis (default: 21)")
    parser.add_argument("--examples", type=int, default=20,
                        help="training examples each loss is averaged over (default: 20)")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.05, 0.0],
                        help="γ of each trajectory; the landscape is the first's (default: "
                             "0.05 0)")


def _prompt_coordinates(training: Training, batch: dict[str, torch.Tensor], pca: PCA) -> list:
    with torch.no_grad():
        mean_prompt = training.model.prompts(batch["p_free"]).float().mean((0, 1))
    return pca.transform(mean_prompt.cpu().numpy()[None])[0].tolist()


def trajectory(cfg: InfoPromptConfig, splits, rows: list[int], steps: int,
               pca: PCA) -> tuple[Training, list[list[float]], list[float]]:
    """Train `steps` steps as a run does (same batches, schedule, seed); returns the run, the
    prompt's PC coordinates before each step and after the last, and each step's loss."""
    training = Training(cfg, splits.without_test())
    batch = training.batch(training.train_data, rows)
    points, losses = [_prompt_coordinates(training, batch, pca)], []
    epoch = 0
    while len(losses) < steps:
        order = epoch_order(cfg.seed, epoch, len(training.train_data))
        for start in range(0, len(order), cfg.batch_size):
            if len(losses) == steps:
                break
            out = training.step(training.batch(training.train_data,
                                               order[start:start + cfg.batch_size]))
            losses.append(out["loss"].item())
            points.append(_prompt_coordinates(training, batch, pca))
        epoch += 1
    return training, points, losses


@torch.no_grad()
def grid_losses(training: Training, batch: dict[str, torch.Tensor], prompts: np.ndarray,
                seed: int) -> tuple[list[float], list[float]]:
    """Task loss and NCE_rep (each averaged over the batch) with every example given the same
    single prompt, for each row of `prompts` (G, D). The NCE noise is one fixed draw."""
    cfg, model = training.cfg, training.model
    n = len(batch["labels"])
    task, representation, noise = [], [], None
    for vector in torch.as_tensor(prompts, dtype=torch.float32, device=training.device):
        prompt = vector.expand(n, 1, -1)
        z = model.represent(batch["input_ids"], batch["attention_mask"], batch["mask_pos"],
                            prompt).float()
        latent = (gaussian(model.f_mu, model.f_sigma, z, cfg.log_sigma_max)[0]
                  if cfg.effective_vib else z)
        task.append(float(F.cross_entropy(model.head(latent), batch["labels"])))
        if noise is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                noise = rep_noise(z, cfg.k_negatives, estimator=cfg.estimator,
                                  hard_negative=cfg.hard_negative)
        representation.append(float(nce_rep(
            model.critic_rep, model.f_mu, model.f_sigma, prompt.mean(1), z, batch["z_free"],
            cfg.k_negatives, cfg.log_sigma_max, noise, estimator=cfg.estimator,
            hard_negative=cfg.hard_negative)))
    return task, representation


def roughness(values: np.ndarray) -> dict[str, float]:
    """How bumpy a (G, G) landscape is, scale-free: the mean |discrete Laplacian| of the
    values rescaled to [0, 1], and the number of strict local minima inside the grid."""
    span = float(values.max() - values.min()) or 1.0
    v = (values - values.min()) / span
    laplacian = v[1:-1, :-2] + v[1:-1, 2:] + v[:-2, 1:-1] + v[2:, 1:-1] - 4 * v[1:-1, 1:-1]
    inner = v[1:-1, 1:-1]
    neighbours = np.stack([v[1 + di:v.shape[0] - 1 + di, 1 + dj:v.shape[1] - 1 + dj]
                           for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj])
    return {"mean_abs_laplacian": float(np.abs(laplacian).mean()),
            "local_minima": int((inner < neighbours.min(0)).sum()),
            "range": span}


def run(cfg: InfoPromptConfig, *, out: Path, steps: int, grid: int, examples: int,
        gammas: list[float], log=print) -> dict[str, Any]:
    cfg = cfg.replace(n_prompts=1, method=Method.INFOPROMPT)
    splits = load_splits(cfg, with_test=False, log=log)
    if examples > splits.train.num_rows:
        raise InfoPromptError(f"--examples {examples} is more than the {splits.train.num_rows} "
                              "training examples; lower it")
    rows = torch.randperm(splits.train.num_rows,
                          generator=torch.Generator().manual_seed(cfg.seed))[:examples].tolist()
    runs = {}
    pca = None
    for gamma in gammas:
        if pca is None:  # the input embeddings, from the first run's (frozen) encoder
            embeddings = Training(cfg, splits).model.encoder.get_input_embeddings().weight
            pca = PCA(2).fit(embeddings.detach().float().cpu().numpy())
        log(f"trajectory γ = {gamma:g}: {steps} steps")
        runs[gamma] = trajectory(cfg.replace(gamma=gamma), splits, rows, steps, pca)
    training = runs[gammas[0]][0]
    points = np.array([p for _, path, _ in runs.values() for p in path])
    spread = 3 * np.sqrt(pca.explained_variance_)
    low = np.minimum(points.min(0), -spread)
    high = np.maximum(points.max(0), spread)
    margin = 0.1 * (high - low)
    axes = [np.linspace(lo - m, hi + m, grid) for lo, hi, m in zip(low, high, margin)]
    a, b = np.meshgrid(*axes, indexing="ij")  # [i, j] = (axes[0][i], axes[1][j])
    prompts = pca.inverse_transform(np.stack([a.ravel(), b.ravel()], 1))
    log(f"landscape: {grid}x{grid} prompts x {examples} examples")
    task, representation = grid_losses(training, training.batch(training.train_data, rows),
                                       prompts, cfg.seed)
    task_grid = np.array(task).reshape(grid, grid)
    rep_grid = np.array(representation).reshape(grid, grid)
    result = {"task": cfg.task, "seed": cfg.seed, "model": cfg.model, "steps": steps,
              "examples": rows, "estimator": cfg.estimator.value, "beta": cfg.beta,
              "landscape_gamma": gammas[0],
              "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
              "pc1": axes[0].tolist(), "pc2": axes[1].tolist(),
              "task_loss": task_grid.tolist(), "rep_loss": rep_grid.tolist(),
              "roughness": {"task_loss": roughness(task_grid), "rep_loss": roughness(rep_grid)},
              "trajectories": {str(g): {"points": path, "step_loss": losses}
                               for g, (_, path, losses) in runs.items()}}
    write_outputs(out, "landscape", result, _plot)
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    colours = ["tab:green", "tab:purple", "tab:orange", "tab:blue"]
    styles = ["-", "--", ":", "-."]  # paths that coincide stay visible
    for axis, key, title in zip(axes, ("task_loss", "rep_loss"),
                                ("task loss L_pred", "representation loss NCE_rep")):
        values = np.array(result[key]).T  # contourf wants [y, x]
        filled = axis.contourf(result["pc1"], result["pc2"], values, levels=20, cmap="viridis")
        figure.colorbar(filled, ax=axis)
        for colour, style, (gamma, run) in zip(colours, styles,
                                               result["trajectories"].items()):
            points = np.array(run["points"])
            axis.plot(points[:, 0], points[:, 1], color=colour, linewidth=2, linestyle=style,
                      label=f"γ = {float(gamma):g}")
            axis.plot(*points[0], marker="*", markersize=14, color=colour,
                      markeredgecolor="white")
            axis.plot(*points[-1], marker="o", markersize=4, color=colour)
        rough = result["roughness"][key]
        axis.set_title(f"{title}\n|Δ| {rough['mean_abs_laplacian']:.3f}, "
                       f"{rough['local_minima']} local minima", fontsize=10)
        axis.set_xlabel("offset along PC1 of the input embeddings")
        axis.set_ylabel("offset along PC2")
        axis.legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{result['task']}, seed {result['seed']}, {result['model']}, n_p = 1: "
                    f"first {result['steps']} steps (star: start)", fontsize=10)
    save_figure(figure, path)


def main(cfg: InfoPromptConfig, args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < 1 or args.grid < 3 or args.examples < 2:
        raise InfoPromptError("--steps must be >= 1, --grid >= 3 and --examples >= 2")
    result = run(cfg, out=args.out, steps=args.steps, grid=args.grid, examples=args.examples,
                 gammas=args.gammas)
    for key in ("task_loss", "rep_loss"):
        r = result["roughness"][key]
        print(f"{key}: mean |laplacian| {r['mean_abs_laplacian']:.4f} (of its range "
              f"{r['range']:.3f}), {r['local_minima']} local minima")
    print(f"-> {args.out / 'landscape.png'}, {args.out / 'landscape.json'}")
    return result
