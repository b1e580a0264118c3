"""What the conditional diagnostic `cmi_prompt` costs per epoch, as a ratio measured in one
run: InfoPrompt (defaults) on SST-2 64-shot, seed 0; after each epoch its conditional_mi call is
timed again on its own (`--repeats` times, median) and set against the rest of the epoch
(whose time includes one call). CPU time of the process, one torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, add_common_arguments, bench_config, emit, provenance, write_section

SECTION = "bench/cmi_cost.py"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    from infoprompt.store import load_splits
    from infoprompt.train import Training

    torch.set_num_threads(1)
    started = time.perf_counter()
    task = "demo" if args.smoke else "sst2"
    cfg = bench_config(args, task=task, shots=16 if args.smoke else 64,
                       epochs=1 if args.smoke else args.epochs)
    training = Training(cfg, load_splits(cfg, with_test=False).without_test())
    rows = list(range(min(cfg.batch_size, len(training.valid_data))))
    ratios = []
    epochs = training.epochs()
    for _ in range(cfg.epochs):
        start = time.process_time()  # CPU time: a shared machine's load leaves it alone
        next(epochs)
        epoch = time.process_time() - start
        calls = []
        for _ in range(args.repeats):
            start = time.process_time()
            training.conditional_mi(training.valid_data, rows)
            calls.append(time.process_time() - start)
        call = statistics.median(calls)
        ratios.append(call / (epoch - call))
    figures = {"task": task, "epochs": cfg.epochs, "cmi_over_rest_of_epoch": ratios,
               "median_ratio": statistics.median(ratios)}
    emit(figures)
    if args.smoke or args.no_write:
        return
    (RESULTS / "cmi_cost.json").write_text(json.dumps(figures, indent=1))
    write_section(SECTION, "\n".join([
        "## Cost of the conditional diagnostic `cmi_prompt` (`bench/cmi_cost.py`)", "",
        f"InfoPrompt, SST-2 64-shot, seed 0, one torch thread, CPU time: the diagnostic's one "
        f"call per epoch (8 valid inputs × 8 prompts, no gradient) costs "
        f"**{figures['median_ratio']:.1%}** of the rest of the epoch (median of "
        f"{cfg.epochs} epochs: {', '.join(f'{r:.1%}' for r in ratios)}).", "",
        provenance(time.perf_counter() - started)]))


if __name__ == "__main__":
    main()
