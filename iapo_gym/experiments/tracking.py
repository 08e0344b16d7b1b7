"""Optional experiment trackers (Weights & Biases, MLflow) mirroring the runner's TensorBoard scalars.

``train.py --tracker wandb`` / ``--tracker mlflow`` (or ``wandb,mlflow``) opens one tracker run per
(task, agent) configuration beside its TensorBoard run: same name, the configuration's
hyper-parameters as its config / params, and every scalar the TensorBoard run gets (``charts/*``,
``policy/n/*``, ``policy/optimal/*``, ``hparam/*``) with the training budget as its step.
Histograms and text tables stay TensorBoard-only.

Neither library is a dependency: each is imported when first used, and a missing one is one error
line naming the extra to install (``pip install 'iapo-gym[wandb]'`` / ``'iapo-gym[mlflow]'``).
Where the runs go is the libraries' own configuration (``WANDB_PROJECT``, ``WANDB_MODE``,
``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``; the project / experiment defaults to
``iapo-gym``). A resumed experiment continues the same tracker runs: their ids are kept in
``trackers.json`` in the TensorBoard run directory.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["TRACKERS", "TrackerError", "parse_trackers", "require", "Mirror"]

#: Tracker name -> (module imported, extra that installs it).
TRACKERS: dict[str, tuple[str, str]] = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
#: Project (wandb) / experiment (MLflow) when the environment names none.
DEFAULT_PROJECT = "iapo-gym"


class TrackerError(ValueError):
    """A bad ``--tracker`` value or a tracker library that is not installed (the message names the fix)."""


def parse_trackers(text: str) -> tuple[str, ...]:
    """``"wandb,mlflow"`` -> ``("wandb", "mlflow")`` (lower-cased, duplicates dropped, order kept).

    Raises:
        TrackerError: for a name that is not a known tracker.
    """
    names = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise TrackerError(f"--tracker: unknown tracker(s) {', '.join(bad)}; available: {', '.join(TRACKERS)}")
    return names


def require(name: str) -> ModuleType:
    """The tracker library ``name``, imported now.

    Raises:
        TrackerError: when it is not installed (one line naming the extra).
    """
    module, extra = TRACKERS[name]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrackerError(
            f"--tracker {name}: the {module} package is not installed ({exc}); pip install 'iapo-gym[{extra}]'"
        ) from None


class _Wandb:
    """One wandb run; the budget is its own metric (``budget``), so steps may repeat or go back."""

    def __init__(self, name: str, config: dict[str, Any], run_id: str | None) -> None:
        wandb = require("wandb")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=name,
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="create_new",  # the runner keeps several configurations' runs open at once
        )
        self.run.define_metric("budget")
        self.run.define_metric("*", step_metric="budget")
        self.id = str(self.run.id)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log({"budget": step, **scalars})

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    """One MLflow run through ``MlflowClient`` (the fluent API allows one active run per thread)."""

    def __init__(self, name: str, config: dict[str, Any], run_id: str | None) -> None:
        require("mlflow")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.id = ""
        if run_id:
            try:
                self.id = self.client.get_run(run_id).info.run_id
                self.client.update_run(self.id, status="RUNNING")
            except Exception:  # not in this tracking store (another MLFLOW_TRACKING_URI): start a new run
                self.id = ""
        if not self.id:
            exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            exp = self.client.get_experiment_by_name(exp_name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(exp_name)
            self.id = self.client.create_run(exp_id, run_name=name).info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in config.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.id, params=params[i : i + 100])

    def log(self, scalars: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.id, metrics=metrics[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.id)


_KINDS = {"wandb": _Wandb, "mlflow": _Mlflow}


class Mirror:
    """The tracker runs of one configuration; opened on the first :meth:`log`, like the event writer.

    Args:
        names: tracker names (:func:`parse_trackers`); empty = a mirror that does nothing.
        run_dir: the configuration's TensorBoard run directory (``trackers.json`` keeps the run ids).
        run_name: the TensorBoard run name, used as every tracker run's name.
        config: the configuration's hyper-parameters.
    """

    def __init__(self, names: Sequence[str], run_dir: str | Path, run_name: str, config: dict[str, Any]) -> None:
        self.names = tuple(names)
        self.run_name, self.config = run_name, dict(config)
        self._ids_file = Path(run_dir) / "trackers.json"
        self._runs: dict[str, Any] = {}

    def _open(self) -> None:
        ids = json.loads(self._ids_file.read_text()) if self._ids_file.exists() else {}
        for name in self.names:
            if name not in self._runs:
                try:
                    self._runs[name] = _KINDS[name](self.run_name, self.config, ids.get(name))
                except TrackerError:
                    raise
                except Exception as exc:  # e.g. an unreachable server or a refused store: one line, not a traceback
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise TrackerError(f"--tracker {name}: could not start the run {self.run_name}: {first}") from exc
                ids[name] = self._runs[name].id
        self._ids_file.parent.mkdir(parents=True, exist_ok=True)
        self._ids_file.write_text(json.dumps(ids, indent=1))

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Send ``scalars`` (tag -> value) at ``step`` (the budget) to every tracker."""
        if not self.names or not scalars:
            return
        if len(self._runs) < len(self.names):
            self._open()
        for run in self._runs.values():
            run.log({k: float(v) for k, v in scalars.items()}, int(step))

    def close(self) -> None:
        """Finish every open tracker run."""
        runs, self._runs = self._runs, {}
        for run in runs.values():
            run.close()
