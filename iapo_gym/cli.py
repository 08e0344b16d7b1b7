"""The ``iapo-gym`` command: one sub-command family per module that owns the work.

Each family lives beside the code it drives and exposes ``add_parser(subparsers)``, which
registers its sub-commands and sets ``func`` on them:

* ``data``   (``iapo_gym.tables.cli``): list, path, import, pull tables
* ``oracle``, ``plot`` (``iapo_gym.oracle_cli``): exact best arms, ACR, landscapes
* ``build``  (``iapo_gym.live.cli``): generate a table with a live LLM backend
* ``serve``  (``iapo_gym.deploy.cli``): serve a saved policy as an OpenAI-compatible router
* ``train``  (``iapo_gym.experiments.train``): the experiment runner (``python train.py`` in a checkout);
  its options are its own, so everything after ``train`` goes to it unchanged
"""

from __future__ import annotations

import argparse
import importlib
import sys

from iapo_gym import __version__

FAMILIES = (
    "iapo_gym.tables.cli", "iapo_gym.oracle_cli", "iapo_gym.live.cli", "iapo_gym.deploy.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every family that imports cleanly)."""
    parser = argparse.ArgumentParser(prog="iapo-gym", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "train", help="run an experiment (agents x tasks x budgets x seeds); see 'iapo-gym train --help'", add_help=False
    )
    for module_name in FAMILIES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a family whose module is not written yet
            if exc.name == module_name:
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from iapo_gym.experiments.train import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"iapo-gym {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
