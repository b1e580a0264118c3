"""Step time and the Arrow store: what a training step costs against the frozen encoder's
own forward+backward, and what the stored prompt-free features buy.

    python bench/step_time.py                 # print the figures (one JSON line at the end)
    python bench/step_time.py --out           # ... and write them to BENCHMARKS.md
    python bench/step_time.py --smoke         # a few steps of everything (CI: tests/)
    python bench/step_time.py --device cuda --task demo --parts steps   # on a GPU (see
                                              # bench/gpu_check.sh); never writes

Four measurements, one process (the reader check spawns two more):

1. Train step, MiniLM, SST-2 64-shot, batch 8 padded to exactly 64 tokens, fp32 and bf16
   autocast (bf16 only where the CPU computes it natively, `infoprompt.precision`;
   elsewhere its rows are skipped and the section says why). `floor` = the frozen encoder's
   forward+backward on the prompted batch (a leaf `inputs_embeds` with requires_grad,
   backward of a scalar of the mask state): the cost no step can go below. `step` =
   `Training.step` on stored P', Z' (the default). `naive` = the same step recomputing the
   prompt-free pass (`BenchTraining(two_pass=True)`, the authors' two-pass design). The six
   (dtype x kind) measurements run round-robin on the same batch, in a rotating order, so
   machine noise hits them alike; medians after warm-up.
2. CoLA 64-shot epoch (8 train steps + the valid evaluation), fixed padding to max_length
   128 vs dynamic padding (to the longest row of each batch); epochs alternate.
3. Building the CoLA 64-shot store (train, valid, test = GLUE dev, features included) from an
   empty cache folder, and reading it back (a cache hit).
4. A second concurrent reader of that store: two processes memory-map the same files; each
   reports its private (USS) and shared memory before and after touching every table page.
   Host memory only: skipped with --device cuda.

`--parts` runs a subset; `--task demo` times the train step on the generated task (no GLUE
needed; the batch is padded to 64 tokens all the same). On CUDA every timing synchronizes
the device before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from infoprompt.batching import SplitTensors, epoch_order
from infoprompt.encoder import load_encoder
from infoprompt.precision import FORCE_ENV, bf16_slow_reason, cpu_bf16_feature, cpu_name
from infoprompt.store import load_splits
from infoprompt.train import Training

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCHMARKS, GLUE, bench_config, write_section
from _training import BenchTraining

KEY = "bench/step_time.py"  # its section of BENCHMARKS.md
SECTION = "## Step time and the Arrow store"
KINDS = ("floor", "step", "naive")
DTYPES = ("fp32", "bf16")
PARTS = ("steps", "epoch", "store", "memory")

# Targets of the "Arrow store" issue.
STEP_OVER_FLOOR_MAX = 1.10
NAIVE_OVER_STEP_MIN = 1.3


def log(message: str) -> None:
    print(f"[step_time] {message}", file=sys.stderr, flush=True)


def quiet(message: str) -> None:
    """The store's own log lines, kept off the benchmark's output."""


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def summary(samples: list[float]) -> dict[str, float]:
    """Milliseconds: the median and the spread around it."""
    ordered = sorted(samples)
    q = (statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) >= 2
         else [ordered[0]] * 9)
    return {"median": statistics.median(ordered), "p10": q[0], "p90": q[-1],
            "min": ordered[0], "n": len(ordered)}


# --- 1. train step --------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously to the host."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_step(training: Training, batch: dict[str, torch.Tensor]) -> float:
    """The frozen encoder's forward+backward on the prompted batch; returns seconds."""
    encoder = training.model.encoder
    with torch.no_grad():
        embeds = encoder.get_input_embeddings()(batch["input_ids"])
    embeds.requires_grad_(True)  # a leaf, like the prompts' path into the encoder
    rows = torch.arange(len(batch["mask_pos"]), device=embeds.device)
    sync(training.device)
    started = time.perf_counter()
    with training.autocast():
        hidden = encoder(inputs_embeds=embeds,
                         attention_mask=batch["attention_mask"]).last_hidden_state
    hidden[rows, batch["mask_pos"]].float().sum().backward()
    sync(training.device)
    return time.perf_counter() - started


def train_step(training: Training, rows: list[int]) -> float:
    """One `Training.step` as `epochs()` runs it (batching included); returns seconds."""
    sync(training.device)
    started = time.perf_counter()
    training.step(training.batch(training.train_data, rows))
    sync(training.device)
    return time.perf_counter() - started


def step_times(args: argparse.Namespace, cache_dir: str,
               dtypes: tuple[str, ...] = DTYPES,
               progress: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """The train-step rows, fp32 then bf16. `progress` gets the rows so far after every
    measured iteration (bench/gpu_check.py writes them: a part stopped at its time limit
    keeps its figures)."""
    iterations = args.warmup + args.steps
    base = bench_config(args, task=args.task, shots=64, max_length=64, cache_dir=cache_dir,
                        batch_size=8, epochs=max(30, math.ceil(iterations / 8) + 1),
                        device=args.device)
    splits = load_splits(base, with_test=False, log=quiet)
    trainings = {}
    for dtype in dtypes:
        cfg = base.replace(bf16=dtype == "bf16")
        stored = BenchTraining(cfg, splits, pad_to=64)
        naive = BenchTraining(cfg, splits, pad_to=64, two_pass=True)
        trainings[dtype] = {"floor": stored, "step": stored, "naive": naive}
    # The floor runs on the stored run's encoder (frozen: the floor changes no weight).
    reference = trainings["fp32"]["step"]
    batches = _batches(reference, iterations)
    lengths = {reference.batch(reference.train_data, rows)["input_ids"].shape[1]
               for rows in batches}
    assert lengths == {64}, f"batches are not padded to 64 tokens: {lengths}"

    jobs = [(dtype, kind) for dtype in dtypes for kind in KINDS]
    samples = {job: [] for job in jobs}
    for i, rows in enumerate(batches):
        shift = i % len(jobs)
        for dtype, kind in jobs[shift:] + jobs[:shift]:  # rotate: no kind always runs first
            training = trainings[dtype][kind]
            if kind == "floor":
                seconds = floor_step(training, training.batch(training.train_data, rows))
            else:
                seconds = train_step(training, rows)
            if i >= args.warmup:
                samples[dtype, kind].append(seconds * 1e3)
        if i == args.warmup - 1 or (i + 1) % 10 == 0:
            log(f"train step: {i + 1}/{iterations} iterations")
        if progress is not None and i >= args.warmup:
            progress(_step_rows(samples, trainings, dtypes))
    return _step_rows(samples, trainings, dtypes)


def _step_rows(samples: dict, trainings: dict, dtypes: tuple[str, ...]) -> list[dict]:
    """Medians and spread of the samples so far, one row per dtype."""
    results = []
    for dtype in dtypes:
        stats = {kind: summary(samples[dtype, kind]) for kind in KINDS}
        floor, step, naive = (stats[k]["median"] for k in KINDS)
        encoder = trainings[dtype]["step"].model.encoder
        results.append({"dtype": dtype, "floor_ms": floor, "step_ms": step, "naive_ms": naive,
                        "step_over_floor": step / floor, "naive_over_step": naive / step,
                        "attention": getattr(encoder.config, "_attn_implementation", None),
                        "spread_ms": stats})
    return results


def _batches(training: Training, count: int) -> list[list[int]]:
    """`count` training batches of 8 rows in the run's own shuffled epoch order."""
    out, epoch = [], 0
    size = training.cfg.batch_size
    while len(out) < count:
        order = epoch_order(training.cfg.seed, epoch, len(training.train_data))
        out += [order[s:s + size] for s in range(0, len(order) - size + 1, size)]
        epoch += 1
    return out[:count]


# --- 2. CoLA epoch, fixed vs dynamic padding ------------------------------------------------


def epoch_times(args: argparse.Namespace, cache_dir: str) -> dict:
    warm, reps = (0, 1) if args.smoke else (1, 3)
    cfg = bench_config(args, task="cola", shots=16 if args.smoke else 64, max_length=128,
                       cache_dir=cache_dir, epochs=warm + reps, device=args.device)
    splits = load_splits(cfg, with_test=False, log=quiet)
    runs = {"fixed": BenchTraining(cfg, splits, pad_to=cfg.max_length),
            "dynamic": BenchTraining(cfg, splits, pad_to=None)}
    loops = {name: training.epochs() for name, training in runs.items()}
    seconds = {name: [] for name in runs}
    for epoch in range(warm + reps):
        names = list(runs) if epoch % 2 == 0 else list(runs)[::-1]
        for name in names:
            started = time.perf_counter()
            next(loops[name])
            if epoch >= warm:
                seconds[name].append(time.perf_counter() - started)
        log(f"cola epoch {epoch + 1}/{warm + reps}")
    dynamic = runs["dynamic"]
    train_tokens = [dynamic.batch(dynamic.train_data, order[s:s + cfg.batch_size])
                    ["input_ids"].shape[1]
                    for order in [epoch_order(cfg.seed, 0, len(dynamic.train_data))]
                    for s in range(0, len(order), cfg.batch_size)]
    valid_tokens = int(dynamic.valid_data.host_lengths.max())
    out = {name: {"epoch_s": statistics.median(values), "all_s": values}
           for name, values in seconds.items()}
    out["fixed"]["tokens_per_batch"] = cfg.max_length
    out["dynamic"]["tokens_per_batch"] = statistics.mean(train_tokens)
    out["dynamic"]["valid_tokens"] = valid_tokens
    out["fixed_over_dynamic"] = out["fixed"]["epoch_s"] / out["dynamic"]["epoch_s"]
    out["epochs"] = {"warm_up": warm, "measured": reps}
    return out


# --- 3. building the store ------------------------------------------------------------------


def store_build(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """Build the CoLA 64-shot store (with test) from an empty cache folder, then hit it.
    A smoke run builds train and valid only (the 1043-row test split is most of the cost)."""
    repeats, with_test = (1, False) if args.smoke else (3, True)
    builds, hits, paths, rows = [], [], {}, {}
    for _ in range(repeats):
        cache = tempfile.mkdtemp(prefix="bench-store-")
        cfg = bench_config(args, task="cola", shots=64, max_length=128, cache_dir=cache,
                           device=args.device)
        started = time.perf_counter()
        splits = load_splits(cfg, with_test=with_test, log=quiet)
        builds.append(time.perf_counter() - started)
        started = time.perf_counter()
        splits = load_splits(cfg, with_test=with_test, log=quiet)
        hits.append(time.perf_counter() - started)
        paths = splits.paths
        rows = {name: table.num_rows for name in ("train", "valid", "test")
                if (table := getattr(splits, name)) is not None}
    files = sum(Path(p).stat().st_size for p in paths.values())
    log(f"store build: {builds} s, cache hit: {hits} s")
    return ({"build_s": statistics.median(builds), "hit_s": statistics.median(hits),
             "all_build_s": builds, "all_hit_s": hits, "rows": rows, "file_bytes": files},
            paths)


# --- 4. a second concurrent reader ----------------------------------------------------------


def memory() -> dict[str, int]:
    """This process's memory in bytes: RSS, USS (private), shared, private anonymous."""
    rollup = Path("/proc/self/smaps_rollup")
    if rollup.exists():
        kb = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB", rollup.read_text(),
                                                    re.MULTILINE)}
        return {"rss": kb["Rss"] * 1024,
                "uss": (kb["Private_Clean"] + kb["Private_Dirty"]) * 1024,
                "shared": (kb["Shared_Clean"] + kb["Shared_Dirty"]) * 1024,
                "private_dirty": kb["Private_Dirty"] * 1024}
    import psutil  # not Linux: fall back to psutil (its USS needs no smaps_rollup)

    info = psutil.Process().memory_full_info()
    return {"rss": info.rss, "uss": info.uss, "shared": getattr(info, "shared", 0),
            "private_dirty": info.uss}


def touch(tables: list[pa.Table]) -> int:
    """Read one byte of every page of every buffer (no copy); returns the bytes covered."""
    covered = 0
    for table in tables:
        for column in table.columns:
            for chunk in column.chunks:
                for buffer in (b for b in chunk.buffers() if b is not None and b.size):
                    view = np.frombuffer(buffer, dtype=np.uint8)
                    view[::4096].sum(), view[-1]  # reads one byte of each page, copies none
                    covered += len(view)
    return covered


def reader(paths: list[str], model: str) -> None:
    """One reader process (`--_reader`): reports JSON lines, advances on each stdin line."""
    torch.set_num_threads(1)
    snapshots = {"start": memory()}
    encoder = load_encoder(model)  # every reader holds its own model, resident
    sum(float(p.sum()) for p in encoder.parameters())
    snapshots["model"] = memory()
    tables = [pa.ipc.open_file(pa.memory_map(p)).read_all() for p in paths]
    covered = touch(tables)
    snapshots["tables"] = memory()
    print(json.dumps({"snapshots": snapshots, "table_bytes": covered}), flush=True)
    sys.stdin.readline()  # the other reader has mapped and touched the same files now
    snapshots["peer"] = memory()
    split_tensors = [SplitTensors.from_table(t) for t in tables]  # what Training converts
    snapshots["split_tensors"] = memory()
    print(json.dumps({"snapshots": snapshots}), flush=True)
    sys.stdin.readline()
    del encoder, split_tensors


def reader_memory(args: argparse.Namespace, paths: dict[str, str]) -> dict:
    gc.collect()  # unmap what this process still maps of the store: two readers, no third
    command = [sys.executable, str(Path(__file__).resolve()), "--_reader", "--model",
               args.model, *paths.values()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    try:
        first = {}
        for name in ("first", "second"):
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env=env)
            procs.append(proc)
            first[name] = json.loads(proc.stdout.readline())
        final = {}
        for name, proc in zip(("first", "second"), procs):
            proc.stdin.write("next\n")
            proc.stdin.flush()
            final[name] = json.loads(proc.stdout.readline())["snapshots"]
        for proc in procs:
            proc.stdin.write("exit\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    table_bytes = first["first"]["table_bytes"]

    def delta(snaps: dict, a: str, b: str) -> dict[str, int]:
        return {k: snaps[b][k] - snaps[a][k] for k in snaps[a]}

    out = {"table_bytes": table_bytes, "source": "smaps_rollup"
           if Path("/proc/self/smaps_rollup").exists() else "psutil"}
    for name in ("first", "second"):
        snaps = final[name]
        out[name] = {"model": delta(snaps, "start", "model"),
                     "tables": delta(snaps, "model", "tables"),
                     "peer": delta(snaps, "tables", "peer"),
                     "split_tensors": delta(snaps, "peer", "split_tensors"),
                     "rss_total": snaps["split_tensors"]["rss"]}
    second = out["second"]["tables"]
    # Shared pages: the second reader's private memory must not grow by the tables' size.
    out["second_reader_private_growth_bytes"] = second["uss"]
    out["tables_shared"] = second["uss"] < 0.1 * table_bytes + 256 * 1024
    return out


# --- report ---------------------------------------------------------------------------------


def targets(steps: list[dict]) -> list[dict]:
    by = {r["dtype"]: r for r in steps}
    out = []
    for r in steps:
        out.append({"target": f"step_ms <= {STEP_OVER_FLOOR_MAX:.2f} x floor_ms ({r['dtype']})",
                    "value": f"{r['step_over_floor']:.3f}",
                    "met": r["step_over_floor"] <= STEP_OVER_FLOOR_MAX})
    for r in steps:
        out.append({"target": f"naive_ms >= {NAIVE_OVER_STEP_MIN} x step_ms ({r['dtype']})",
                    "value": f"{r['naive_over_step']:.3f}",
                    "met": r["naive_over_step"] >= NAIVE_OVER_STEP_MIN})
    if "bf16" in by:
        ratio = by["bf16"]["step_ms"] / by["fp32"]["step_ms"]
        out.append({"target": "bf16 step faster than fp32 step", "value": f"{ratio:.3f}",
                    "met": ratio < 1.0})
    return out


def markdown(result: dict, command: str) -> str:
    steps, epoch, store, mem = (result[k] for k in ("step_time", "cola_epoch", "store_build",
                                                     "reader_memory"))
    env = result["environment"]
    out = [SECTION, ""]
    add = out.append
    add(f"Measured {result['date']} (UTC) with `{command}`: torch {env['torch']}, "
        f"{env['threads']} threads on {env['cpu']} ({env['cores']} cores). Load average "
        f"(1/5/15 min) at the start {env['loadavg_start']}, at the end {env['loadavg_end']}.")
    if not env["quiet"]:
        add("")
        add("**The machine was not quiet during this run** (1-minute load >= 1.0 when it "
            "started): absolute figures are inflated; the ratios come from interleaved "
            "measurements and hold better.")
    add("")
    add(f"### Train step (MiniLM, SST-2 64-shot, batch 8 x 64 tokens; median of "
        f"{result['steps']} interleaved steps after {result['warmup']} warm-up)")
    add("")
    add("| dtype | floor_ms | step_ms | naive_ms | step/floor | naive/step |")
    add("|---|---:|---:|---:|---:|---:|")
    for r in steps:
        add(f"| {r['dtype']} | {r['floor_ms']:.1f} | {r['step_ms']:.1f} | {r['naive_ms']:.1f} "
            f"| {r['step_over_floor']:.3f} | {r['naive_over_step']:.3f} |")
    attention = {r["dtype"]: r.get("attention") for r in steps}
    if all(attention.values()):
        add("")
        add("Encoder attention: " + ", ".join(f"{d} {a}" for d, a in attention.items()) + ".")
    b = result.get("bf16_over_fp32")
    add("")
    if b:
        native = result.get("bf16_native") or f"none ({FORCE_ENV}=1)"
        add(f"bf16/fp32: floor {b['floor']:.3f}, step {b['step']:.3f}, naive "
            f"{b['naive']:.3f} (the CPU's native bf16: {native}).")
    else:
        add(f"bf16 rows skipped: {result['bf16_skipped']}.")
    add("floor = frozen-encoder forward+backward on the prompted batch (nothing can go below "
        "it); step = `Training.step` with stored P', Z' (batching included); naive = the same "
        "step recomputing the prompt-free pass (`BenchTraining(two_pass=True)`).")
    add("")
    add("| target | value | met |")
    add("|---|---:|---|")
    for t in result["targets"]:
        add(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |")
    add("")
    add(f"### CoLA 64-shot epoch (fp32; 8 train steps + valid evaluation; median of "
        f"{epoch['epochs']['measured']} after {epoch['epochs']['warm_up']} warm-up)")
    add("")
    add("| padding | epoch s | tokens per train batch |")
    add("|---|---:|---:|")
    add(f"| fixed (pad_to=128) | {epoch['fixed']['epoch_s']:.2f} | 128 |")
    add(f"| dynamic (pad_to=None) | {epoch['dynamic']['epoch_s']:.2f} "
        f"| {epoch['dynamic']['tokens_per_batch']:.1f} (mean) |")
    add("")
    add(f"Fixed/dynamic: {epoch['fixed_over_dynamic']:.2f}x.")
    add("")
    rows = ", ".join(f"{name} {count}" for name, count in store["rows"].items())
    add(f"### The CoLA 64-shot store ({rows} rows, features included)")
    add("")
    add(f"| | seconds (median of {len(store['all_build_s'])}) |")
    add("|---|---:|")
    add(f"| build from an empty cache folder | {store['build_s']:.2f} |")
    add(f"| cache hit (read, memory-mapped, checksum verified) | {store['hit_s']:.2f} |")
    add("")
    add(f"Files: {store['file_bytes'] / 2**20:.2f} MiB. The build includes reading the GLUE "
        "TSVs, loading the encoder, tokenizing and encoding; a cache hit still reads the TSVs "
        "(their checksum is part of the key) and verifies each table's content digest.")
    add("")
    add("### A second concurrent reader (memory-mapped store)")
    add("")
    add(f"Two processes each load their own encoder, then memory-map the same store files "
        f"({mem['table_bytes'] / 2**20:.2f} MiB of table buffers) and touch every page; growth "
        f"per phase in MiB ({mem['source']}; USS = private memory):")
    add("")
    add("| reader | phase | USS | shared | RSS |")
    add("|---|---|---:|---:|---:|")
    phases = {"model": "load own encoder", "tables": "map + touch tables",
              "peer": "(other reader maps them)", "split_tensors": "SplitTensors.from_table"}
    for name in ("first", "second"):
        for phase, label in phases.items():
            d = mem[name][phase]
            add(f"| {name} | {label} | {d['uss'] / 2**20:+.2f} | {d['shared'] / 2**20:+.2f} "
                f"| {d['rss'] / 2**20:+.2f} |")
    add("")
    add(f"Tables shared between readers: {'yes' if mem['tables_shared'] else 'NO'} (the second "
        f"reader's private memory grew by "
        f"{mem['second_reader_private_growth_bytes'] / 2**20:.2f} MiB when it mapped and "
        "touched the tables).")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None,
         progress: Callable[[list[dict]], None] | None = None) -> dict | None:
    """`progress`: see `step_times` (bench/gpu_check.py)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30,
                        help="measured steps per (dtype, kind), after warm-up (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps (default 5)")
    parser.add_argument("--model", default="minilm", help="encoder (default: embedded MiniLM)")
    parser.add_argument("--data-dir", default=GLUE,
                        help="GLUE folder with CoLA/ and SST-2/ (default: $INFOPROMPT_GLUE_DIR, "
                             "else the Hugging Face hub)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu",
                        help="device of the train-step runs: cpu (default), cuda, cuda:N")
    parser.add_argument("--task", default="sst2", choices=("sst2", "demo"),
                        help="task of the train-step part (default sst2; demo needs no GLUE)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which measurements (default: all; memory is skipped on cuda)")
    parser.add_argument("--out", nargs="?", type=Path, const=BENCHMARKS,
                        default=None, metavar="FILE",
                        help="write the section to FILE (default BENCHMARKS.md at the repo)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run to check the script works (2 warm-up + 2 steps, one CoLA "
                             "16-shot epoch, one store build without test); never writes")
    parser.add_argument("--_reader", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._reader:
        reader(args.paths, args.model)
        return None
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 2)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        parser.error(f"--data-dir {args.data_dir} does not exist (needs CoLA/ and SST-2/)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}, but torch sees no CUDA GPU here")
    parts = [p for p in PARTS if p in args.parts]
    if device.type != "cpu" and "memory" in parts:
        log("reader memory: host memory of two CPU readers, not a device figure; skipped")
        parts.remove("memory")
    if args.out is not None and (parts != list(PARTS) or device.type != "cpu"
                                 or args.task != "sst2"):
        parser.error("--out writes the CPU section of BENCHMARKS.md: it needs every part, "
                     "--device cpu and --task sst2")
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "bench/step_time.py", *(argv if argv is not None
                                                           else sys.argv[1:])])
    load_start = loadavg()
    log(f"load average {load_start}")
    # Where bf16 is emulated (21x slower here once) its rows would only time the emulation.
    bf16_skipped = bf16_slow_reason(device)
    if bf16_skipped:
        log(f"bf16 rows skipped: {bf16_skipped}")
    dtypes = ("fp32",) if bf16_skipped else DTYPES
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "steps": args.steps, "warmup": args.warmup, "model": args.model, "task": args.task,
        "device": str(device), "parts": parts,
        "bf16_skipped": bf16_skipped, "bf16_native": cpu_bf16_feature(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-step-") as cache:
        if "steps" in parts:
            steps = step_times(args, cache, dtypes, progress)
            by = {r["dtype"]: r for r in steps}
            result["step_time"] = steps
            result["bf16_over_fp32"] = ({k: by["bf16"][f"{k}_ms"] / by["fp32"][f"{k}_ms"]
                                         for k in KINDS} if "bf16" in by else None)
            result["targets"] = targets(steps)
        if "epoch" in parts:
            result["cola_epoch"] = epoch_times(args, cache)
    if "store" in parts or "memory" in parts:
        result["store_build"], paths = store_build(args)
        if "memory" in parts:
            result["reader_memory"] = reader_memory(args, paths)
    result["environment"] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cores": os.cpu_count(), "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "loadavg_start": load_start, "loadavg_end": loadavg(),
        "quiet": load_start is None or load_start[0] < 1.0}
    if "memory" in parts and "store" not in parts:
        del result["store_build"]  # built only to be read; not a figure asked for
    if args.out is not None and not args.smoke:
        write_section(KEY, markdown(result, command), args.out)
        log(f"wrote '{SECTION}' to {args.out}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
