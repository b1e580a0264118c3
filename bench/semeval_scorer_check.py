"""One SemEval-2010 Task 8 run, its test predictions scored twice: by our `semeval_f1` (the
run's test_metric) and by the official Perl scorer on the same predictions, written in the
release's format (IDs 8001.. in TEST_FILE_FULL.TXT's order).

    python bench/semeval_scorer_check.py --data-dir path/to/SemEval2010_task8_all_data
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_config, emit

SCORER = "SemEval2010_task8_scorer-v1.2/semeval2010_task8_scorer-v1.2.pl"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the official release folder")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="pred_only")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import infoprompt.train as train
    from infoprompt.store import load_splits
    from infoprompt.tasks import SEMEVAL_LABELS

    cfg = bench_config(args, task="semeval", shots=64, epochs=args.epochs, method=args.method,
                       seed=args.seed)
    splits = load_splits(cfg)
    calls = []
    scored = train.task_metrics
    train.task_metrics = lambda task, labels, predictions: (
        calls.append(predictions) or scored(task, labels, predictions))
    summary = train.fit(cfg, splits)
    predictions = calls[-1]  # the last evaluation is the test split's
    folder = Path(tempfile.mkdtemp(prefix="semeval-scorer-"))
    key = splits.test.column("label").to_pylist()  # the test split keeps the release's order
    for name, labels in (("proposed.txt", predictions), ("key.txt", key)):
        (folder / name).write_text("".join(f"{8001 + i}\t{SEMEVAL_LABELS[label]}\n"
                                           for i, label in enumerate(labels)))
    done = subprocess.run(["perl", str(Path(args.data_dir) / SCORER), str(folder / "proposed.txt"),
                           str(folder / "key.txt")], capture_output=True, text=True, check=True)
    official = float(re.search(r"macro-averaged F1 = ([\d.]+)%", done.stdout).group(1))
    figures = {"method": args.method, "epochs": args.epochs, "seed": args.seed,
               "test_metric": summary["test_metric"], "official_percent": official,
               "ours_percent_rounded": round(100 * summary["test_metric"], 2),
               "equal": round(100 * summary["test_metric"], 2) == official,
               "predictions": str(folder / "proposed.txt")}
    emit(figures)
    return figures


if __name__ == "__main__":
    main()
