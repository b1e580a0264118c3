"""The wheels that `bash bench/gpu_check.sh --wheels DIR` installs on a bare GPU machine.

A lent GPU machine has Python 3.12, torch, transformers, pyarrow, pandas and the like, no
network, and takes at most 64 MiB of git-ignored files per command. Ray, Optuna and a few of
their needs are missing, and Ray's wheel alone is larger than one command carries. So:

    python bench/gpu_wheels.py download            # here: .gpu-wheels/1, .gpu-wheels/2, ...
    python bench/gpu_wheels.py install DIR TARGET  # there (gpu_check.sh does it): the parts
                                                   # gathered in DIR, into TARGET

`download` fetches the exact versions below for CPython 3.12 on manylinux x86-64, splits any
file larger than a part into numbered pieces (`NAME.whl.part1of2`, ...) and packs everything
into numbered folders of at most --part-mib each: one folder per command. `install` joins the
pieces, refuses an incomplete set (the command that carried a part did not reach this
machine), and installs every wheel with `pip install --no-index --no-deps --target`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# What tune/ needs beyond the GPU machine's own packages (torch, transformers, pyarrow,
# pandas, numpy, click, filelock, msgpack, packaging, protobuf, pyyaml, requests, fsspec,
# attrs, tqdm, markupsafe, typing-extensions are there): Ray with its `tune` extra (whose
# ray.train needs pydantic), Optuna, and their needs, at the versions this project is tested
# with (constraints/cpu.txt's venv).
WHEELS = ("ray==2.60.0", "optuna==5.1.0", "alembic==1.20.1", "sqlalchemy==2.1.9",
          "mako==1.4.3", "colorlog==6.12.0", "tensorboardx==2.6.5", "jsonschema==4.26.0",
          "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1",
          "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
          "typing-inspection==0.4.5")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
PIECE = re.compile(r"^(?P<name>.+\.whl)\.part(?P<index>\d+)of(?P<count>\d+)$")
MIB = 2 ** 20


def log(message: str) -> None:
    print(f"[gpu_wheels] {message}", file=sys.stderr, flush=True)


def split(files: list[Path], out: Path, part_bytes: int) -> list[Path]:
    """`files` into folders out/1, out/2, ... of at most `part_bytes` each; a file larger
    than that is cut into pieces first. Largest first into the first folder with room."""
    pieces: list[tuple[str, bytes | Path, int]] = []
    for path in files:
        size = path.stat().st_size
        if size <= part_bytes:
            pieces.append((path.name, path, size))
            continue
        data = path.read_bytes()
        count = -(-size // part_bytes)
        step = -(-size // count)
        for i in range(count):
            chunk = data[i * step:(i + 1) * step]
            pieces.append((f"{path.name}.part{i + 1}of{count}", chunk, len(chunk)))
    folders: list[tuple[Path, int]] = []
    for name, content, size in sorted(pieces, key=lambda piece: -piece[2]):
        index = next((i for i, (_, used) in enumerate(folders) if used + size <= part_bytes),
                     None)
        if index is None:
            folders.append((out / str(len(folders) + 1), 0))
            index = len(folders) - 1
        folder, used = folders[index]
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, folder / name)
        else:
            (folder / name).write_bytes(content)
        folders[index] = (folder, used + size)
    return [folder for folder, _ in folders]


def join(folder: Path, into: Path) -> list[Path]:
    """The wheels of `folder`, pieces joined, in `into`. Raises ValueError naming any wheel
    whose pieces are not all there."""
    wheels, pieces = [], {}
    for path in sorted(folder.iterdir()):
        match = PIECE.match(path.name)
        if match:
            pieces.setdefault((match["name"], int(match["count"])), {})[int(match["index"])] = path
        elif path.name.endswith(".whl"):
            wheels.append(path)
    for (name, count), found in sorted(pieces.items()):
        missing = sorted(set(range(1, count + 1)) - set(found))
        if missing:
            raise ValueError(f"{name}: pieces {missing} of {count} are missing from {folder} "
                             "(carry every .gpu-wheels/N folder, in commands on the same machine)")
        target = into / name
        with target.open("wb") as whole:
            for i in range(1, count + 1):
                whole.write(found[i].read_bytes())
        wheels.append(target)
    return wheels


def download(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp",
                   *(f"--platform={p}" for p in PLATFORMS), "--dest", scratch, *WHEELS]
        log(" ".join(command))
        subprocess.run(command, check=True)
        files = sorted(Path(scratch).glob("*.whl"))
        folders = split(files, out, int(args.part_mib * MIB))
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.iterdir())
        names = ", ".join(sorted(f.name for f in folder.iterdir()))
        log(f"{folder}: {size / MIB:.1f} MiB, {names}")
    print(json.dumps({"folders": [str(f) for f in folders]}))
    return 0


def install(args: argparse.Namespace) -> int:
    """Join and install; writes a JSON summary to --report (installed, or why not)."""
    report: dict = {"dir": args.dir, "target": args.target}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            wheels = join(Path(args.dir), Path(scratch))
            if not wheels:
                raise ValueError(f"no wheels in {args.dir}")
            command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                       "--no-compile", "--disable-pip-version-check", "--upgrade", "--target",
                       args.target, *map(str, wheels)]
            log(" ".join(command))
            done = subprocess.run(command, capture_output=True, text=True)
            sys.stderr.write(done.stdout + done.stderr)
            if done.returncode != 0:
                raise ValueError(f"pip install exited {done.returncode}: "
                                 + (done.stderr.strip().splitlines() or ["?"])[-1])
        report.update(status="ok", installed=sorted(
            p.name.removesuffix(".dist-info") for p in Path(args.target).glob("*.dist-info")))
        code = 0
    except ValueError as error:
        report.update(status="failed", reason=str(error))
        log(str(error))
        code = 1
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch and split the wheels (here)")
    get.add_argument("--dir", default=".gpu-wheels", help="git-ignored; replaced")
    get.add_argument("--part-mib", type=float, default=56.0)
    put = commands.add_parser("install", help="join and install the wheels (there)")
    put.add_argument("dir", help="the folder holding every part's files")
    put.add_argument("target", help="pip --target folder (put it on PYTHONPATH)")
    put.add_argument("--report", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    return {"download": download, "install": install}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
