"""python -m infoprompt.analysis <cmi|landscape|curves> [flags]: the paper's Figures 1-3."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from infoprompt.cli import ArgumentParser, add_config_arguments, config_from_args, guarded
from infoprompt.folders import check_writable_folder

COMMANDS = {
    "cmi": "Figure 1: conditional MI of random, hand-crafted, WARP and InfoPrompt prompts",
    "landscape": "Figure 2: task and representation loss landscapes with the first steps",
    "curves": "Figure 3: learning curves and steps to a fraction of the final metric",
}


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m infoprompt.analysis",
                            description="The paper's three analyses (Figures 1-3), one command each.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name, help in COMMANDS.items():
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--out", type=Path, default=Path("analysis") / name,
                         help=f"folder for {name}.png and {name}.json (default: analysis/{name})")
        _module(name).add_arguments(sub)
        if name != "curves":  # the others train: every run flag applies
            add_config_arguments(sub, skip=("method",))
    return parser


def _module(name: str):
    from importlib import import_module

    return import_module(f"infoprompt.analysis.{name}")


@guarded
def main(argv: list[str] | None = None) -> Any:
    args: argparse.Namespace = _parser().parse_args(argv)
    cfg = config_from_args(args)
    args.out = args.out.resolve()
    check_writable_folder(args.out, "--out")
    return _module(args.command).main(cfg, args)


if __name__ == "__main__":
    main()
