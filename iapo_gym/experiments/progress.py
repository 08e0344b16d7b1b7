"""The experiment's progress line: runs done / total and an ETA over the whole experiment.

::

    MATH topk4 T=20000 chunk 3/8:  140/600 runs |████▋               | 23% 01:12 elapsed, ETA 04:03

The bar advances after every chunk of runs (one run for agents that fit seeds one at a time, a
block of seeds for batched agents), so it moves even while one slow configuration is fitted. The
ETA is not tqdm's runs-per-second extrapolation, which is badly off when one experiment mixes
1k- and 50k-completion budgets or PSST (~1 ms per run) with PPO (~1 s): each pending chunk is
costed at ``runs x budget`` completions times the seconds per completion measured so far for
*its* agent (the experiment-wide rate until that agent has finished a chunk).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float) -> str:
    """``75`` -> ``01:15``; ``3725`` -> ``1:02:05``; unknown -> ``?``."""
    if s != s or s == float("inf"):
        return "?"
    s = int(round(max(s, 0.0)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """A tqdm bar over the runs of an experiment, with a budget- and agent-weighted ETA.

    Args:
        pending: ``(agent, budget, runs)`` for every chunk still to run.
        enabled: draw the bar (``--progress``).
        file: where to draw it (default: stderr).
    """

    def __init__(self, pending: Iterable[tuple[str, int, int]], enabled: bool = True, file: Any = None) -> None:
        from tqdm.auto import tqdm

        self.remaining: dict[str, float] = defaultdict(float)  # agent -> completions still to run
        total = 0
        for agent, budget, runs in pending:
            self.remaining[agent] += float(budget) * runs
            total += runs
        self.total = total
        self.done = 0
        self.seconds: dict[str, float] = defaultdict(float)  # agent -> fit+evaluate seconds so far
        self.work: dict[str, float] = defaultdict(float)  # agent -> completions done so far
        self.t0 = time.perf_counter()
        self.bar = tqdm(
            total=total,
            disable=not enabled or total == 0,
            unit="run",
            dynamic_ncols=True,
            smoothing=0,
            file=file,
            ascii=None if file is None else True,
            bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {percentage:3.0f}% {elapsed} elapsed{postfix}",
        )
        self._set_postfix()

    def describe(self, text: str) -> None:
        """What runs now (task, agent, budget, chunk)."""
        self.bar.set_description_str(text, refresh=True)

    def advance(self, agent: str, budget: int, runs: int, seconds: float) -> None:
        """``runs`` runs of ``agent`` at ``budget`` finished in ``seconds``."""
        work = float(budget) * runs
        self.seconds[agent] += seconds
        self.work[agent] += work
        self.remaining[agent] = max(self.remaining[agent] - work, 0.0)
        self.done += runs
        self.bar.update(runs)
        self._set_postfix()

    def eta(self) -> float:
        """Seconds still expected (nan before anything finished)."""
        done = sum(self.work.values())
        if done == 0:
            return float("nan")
        overall = sum(self.seconds.values()) / done
        return sum(w * (self.seconds[a] / self.work[a] if self.work[a] else overall) for a, w in self.remaining.items())

    def _set_postfix(self) -> None:
        self.bar.set_postfix_str(f"ETA {format_seconds(self.eta())}", refresh=True)  # tqdm prefixes ", "

    def close(self) -> None:
        """Leave the final line on screen."""
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
