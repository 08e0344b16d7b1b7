"""``iapo-gym oracle`` and ``iapo-gym plot``: exact best arms, oracle ACR and Q landscapes.

* ``iapo-gym oracle IAPO-MATH-v0 [--split train|test|all] [--json] [--world-seed S]`` prints the
  best arm and its exact Q per context and the oracle ACR.
* ``iapo-gym plot IAPO-MATH-v0 [--out FILE.png] [--contexts all|0,4,8|low,high]`` draws Q against N
  for every prompt, one panel per context, each context's best arm marked (the paper's Figure 2
  for any task).

``ENV_ID`` is a registered id (``IAPO-MATH-v0``), a task name (``MATH``) or a table directory.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym import oracle
from iapo_gym.arms import arm_from_index
from iapo_gym.tables.format import OutcomeTable

_ENV_ID = re.compile(r"^(?:iapo_gym:)?IAPO-(?P<task>.+?)-v\d+$")
#: Panels shown by ``plot`` when ``--contexts`` is not given and the task has more contexts.
DEFAULT_PANELS = 9


def task_name(env_id: str) -> str:
    """``"IAPO-MATH-v0"`` (or ``"iapo_gym:IAPO-MATH-v0"``) -> ``"MATH"``; a plain name is returned as is."""
    m = _ENV_ID.match(env_id)
    return m.group("task") if m else env_id


def load_env_table(env_id: str, world_seed: int | None = None) -> OutcomeTable:
    """The outcome table behind an env id, task name or table directory."""
    path = Path(env_id)
    if path.is_dir():
        from iapo_gym.tables.io import load_table

        return load_table(path)
    task = task_name(env_id)
    try:
        from iapo_gym.tasks import load_task_table
    except ImportError:  # task registry not available: fall back to named tables in the data dir
        from iapo_gym.tables.store import load_named

        return load_named(task)
    try:
        return load_task_table(task, world_seed=world_seed)
    except KeyError as exc:  # unknown task: a clear message instead of a traceback
        raise ValueError(str(exc.args[0]) if exc.args else f"unknown task {env_id!r}") from None


def split_queries(table: OutcomeTable, split: str) -> np.ndarray | None:
    """Query indices of the table's released ``split`` (``"all"`` -> None, i.e. every query)."""
    if split == "all":
        return None
    idx = table.train_queries() if split == "train" else table.test_queries()
    if idx.size == 0:
        raise ValueError(f"the {split} split of {table.task} is empty; use --split all")
    return idx


def _oracle(args: argparse.Namespace) -> int:
    table = load_env_table(args.env_id, args.world_seed)
    rep = oracle.report(table, split_queries(table, args.split))
    if args.json:
        print(json.dumps({**rep.to_json(), "split": args.split}, indent=2))
    else:
        print(rep.format())
    return 0


def select_contexts(names: tuple[str, ...], spec: str | None) -> list[int]:
    """Context indices from ``--contexts``: ``all``, comma-separated indices or names; default a spread."""
    c = len(names)
    if spec is None:
        if c <= DEFAULT_PANELS + 3:
            return list(range(c))
        return sorted(set(np.linspace(0, c - 1, DEFAULT_PANELS).round().astype(int).tolist()))
    if spec == "all":
        return list(range(c))
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.lstrip("-").isdigit():
            i = int(item)
            if not 0 <= i < c:
                raise ValueError(f"context index {i} is out of range 0..{c - 1}")
            out.append(i)
        elif item in names:
            out.append(names.index(item))
        else:
            raise ValueError(f"unknown context {item!r}; use indices 0..{c - 1}, 'all' or one of {list(names)[:5]}...")
    if not out:
        raise ValueError("--contexts selected nothing")
    return out


def plot_landscape(table: OutcomeTable, out: Path, contexts: list[int] | None = None, queries: Any = None) -> Path:
    """Write the Q-landscape figure (Q against N per prompt, one panel per context) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = oracle.q_values(table, queries)
    best = oracle.best_arms(q)
    bp, bn = arm_from_index(best, table.n_max)
    chosen = list(range(q.shape[0])) if contexts is None else contexts
    cols = min(3, len(chosen))
    rows = -(-len(chosen) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    n = np.arange(1, table.n_max + 1)
    colors = plt.cm.viridis(np.linspace(0, 1, table.n_prompts))
    for ax, c in zip(axes.flat, chosen, strict=False):
        for p in range(table.n_prompts):
            is_best = p == bp[c]
            ax.plot(n, q[c, p], color=colors[p], lw=2.2 if is_best else 0.8, alpha=1.0 if is_best else 0.6,
                    label=f"prompt {p}" if is_best else None, zorder=3 if is_best else 2)
        ax.plot([bn[c]], [q[c, bp[c], bn[c] - 1]], marker="*", ms=14, color="crimson", zorder=4,
                label=f"best (p={bp[c]}, N={bn[c]}) Q={q[c, bp[c], bn[c] - 1]:.4f}")
        ax.set_title(table.contexts.names[c], fontsize=9)
        ax.set_xlabel("N")
        ax.set_ylabel("Q")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    acr = oracle.acr(q, best, table.contexts.probs)
    shown = "" if len(chosen) == q.shape[0] else f", {len(chosen)} of {q.shape[0]} contexts"
    fig.suptitle(f"{table.task} ({table.strategy.upper()}): exact Q landscape, oracle ACR {acr:.4f}{shown}")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def _plot(args: argparse.Namespace) -> int:
    table = load_env_table(args.env_id, args.world_seed)
    out = Path(args.out) if args.out else Path(f"{table.task}_landscape.png")
    chosen = select_contexts(table.contexts.names, args.contexts)
    plot_landscape(table, out, chosen, split_queries(table, args.split))
    print(f"wrote {out}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("env_id", metavar="ENV_ID", help="env id (IAPO-MATH-v0), task name (MATH) or table directory")
    p.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="queries to average over: the table's released split, or all of them (default)")
    p.add_argument("--world-seed", type=int, default=None, help="seed of a synthetic task's world")


def add_parser(subparsers: Any) -> None:
    """Register ``oracle`` and ``plot`` on the ``iapo-gym`` sub-parser collection."""
    p = subparsers.add_parser("oracle", help="exact best arm and Q per context, oracle ACR")
    _common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_oracle)

    p = subparsers.add_parser("plot", help="plot the exact Q landscape (Q against N per prompt and context)")
    _common(p)
    p.add_argument("--out", default=None, help="PNG file to write (default: <task>_landscape.png)")
    p.add_argument("--contexts", default=None,
                   help=f"'all', or comma-separated indices or names (default: all, or {DEFAULT_PANELS} spread out)")
    p.set_defaults(func=_plot)


if __name__ == "__main__":  # pragma: no cover
    from iapo_gym.cli import main

    sys.exit(main(["oracle", *sys.argv[1:]]))
