"""`python -m infoprompt.store_cli build ...`: fill the Arrow store ahead of training or a
search."""

from __future__ import annotations

from pathlib import Path

from infoprompt.cli import ArgumentParser, add_config_arguments, config_from_args, guarded

__all__ = ["main"]


@guarded
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m infoprompt.store_cli",
                            description="Build the few-shot Arrow store.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="tokenize splits and store frozen features")
    build.add_argument("--seeds", type=int, nargs="+", default=[0],
                       help="one store entry per seed (default: 0)")
    add_config_arguments(build, skip={"seed"})
    args = parser.parse_args(argv)

    from infoprompt.store import load_splits  # torch loads only past argument checks

    for seed in args.seeds:
        cfg = config_from_args(args).replace(seed=seed)
        splits = load_splits(cfg)
        for name in ("train", "valid", "test"):
            path = Path(splits.paths[name])
            table = getattr(splits, name)
            print(f"{cfg.task} seed {seed} {name:5s} {table.num_rows:6d} rows  "
                  f"{path.stat().st_size / 2**20:7.2f} MiB  {path}")


if __name__ == "__main__":
    main()
