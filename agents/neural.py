"""A neural function-approximation agent for continuous contexts (torch).

The paper restricts contexts to a finite set and names function approximation over continuous
preferences as the open problem. This agent learns a map ``context -> value of every arm`` from
pulls re-scored under many sampled contexts, explores with PSST's structure-aware rounds, and
deploys ``argmax`` of the learned map for ANY context.

**Structure used (all exact):**

* ``Q(c, p, N) = G(w, p, N) - w_cost * N * cost(p)``: the cost term is linear in ``w_cost`` and the
  mean cost per completion ``cost(p)`` is measured from the pulls, so only the *gain* ``G`` (the
  expected aggregated objective, BoN ``E[max_i w . o_i]`` / MV ``w_1 * credit``) is learned, as a
  function of the objective weights ``w`` alone.
* ``G`` is positively homogeneous in ``w`` (both strategies), so the network sees the direction
  ``w / sum(w)`` and its output is rescaled by ``sum(w)``.
* Every pull is re-scored under a **bank** of ``n_directions`` objective-weight vectors drawn from
  the task's Dirichlet (:func:`iapo_gym.continuous.distribution_of`) and split into nested blocks
  at every scale ``k = 1..N`` (:class:`iapo_gym.agents._engine.NestedStats`), giving count-weighted
  empirical gains ``G_hat(u, p, k)`` for every bank direction ``u``.

**Model.** Per run, a small MLP ``f(w) = W2 relu(W1 w + b1) + Ws w + b2`` (``hidden`` units, a linear
skip) with ``P * N_max`` outputs, trained full-batch with Adam (float32) on the masked, count-weighted MSE
``sum_{u,p,k} n(p,k) (f(w_u)[p,k] - G_hat(u,p,k))^2`` (targets centred per arm and scaled; arms
without data are masked out). All runs of a batch train at once as one batched network
(``torch.bmm``), so 100 seeds cost about as much as a few.

**Exploration** (structure-aware halving over a context sample). Rounds exactly as PSST
(:func:`iapo_gym.agents.psst.run_trimming`: ``R = ceil(log2(P * N_max))``, equal per-round budget, only each
prompt's largest surviving ``N`` is pulled, Eq. 6 allocation, stockpiling), but the "contexts" are an
*elimination sample* of ``n_directions x n_cost_draws`` continuous contexts (each bank direction
paired with cost weights drawn from the cost distribution), and the values ranked at each halving
are the **network's** predictions (re-fitted, warm-started, for ``round_steps`` steps after every
round). An arm survives while it is in the top half somewhere in the sample.

**Deployment.** :class:`NeuralPolicy` (numpy forward pass, no torch needed):
``argmax_a f(w)[a] * sum(w) - w_cost * N * cost(p)`` over the *candidates*: arms still active for
some context of the elimination sample and observed at least once.

**Seeding.** A run depends on its seed only (whatever batch it is fitted in). The bank and the
elimination sample are a fixed draw of the context distribution, seeded by the agent's name (the
same quadrature for every run: the runs of a batch share one tally per bank direction). Pull
queries and completions come from the run's own stream (:class:`iapo_gym.runs.RunStreams`);
each run's network is initialised from its own ``torch.Generator`` (seeded from the run's seed);
training is full-batch, and runs are independent networks (the loss is a sum over runs, so a
run's gradients never see another run). Training runs on one torch thread
(``threads``; the previous setting is restored afterwards): torch splits reductions across
threads by tensor shape, which would make a run's sums depend on its batch.

**TensorBoard.** With ``log_dir`` set, training loss per gradient step (``neural/loss``) and the
exploration statistics per round (``explore/spent``, ``explore/pulls``, ``explore/candidates``,
``explore/active_per_context``) are written (means over the runs of the batch).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from iapo_gym._checks import finite_weights
from iapo_gym.agents._common import BatchAgent
from iapo_gym.agents._engine import NestedStats
from iapo_gym.agents.base import Policy
from iapo_gym.agents.psst import n_rounds, run_trimming
from iapo_gym.contexts import ContextSet
from iapo_gym.continuous import distribution_of
from iapo_gym.runs import RunBatch as Runs

__all__ = ["NeuralAgent", "NeuralPolicy"]


# --------------------------------------------------------------------------------- the policy
@dataclass(eq=False)
class NeuralPolicy(Policy):
    """Deploys ``argmax`` of a learned gain map minus the exact cost term, for any context.

    Attributes:
        w1, b1, w2, b2, ws: MLP parameters (``(K, H)``, ``(H,)``, ``(H, A)``, ``(A,)``, ``(K, A)``).
        centre, scale: output de-normalisation: ``gain = centre + scale * f(direction)``, ``(A,)``, float.
        cost_per_completion: ``(P,)`` measured mean cost of one completion of each prompt.
        candidates: ``(A,)`` bool, arms the policy may deploy.
        n_max: largest N.
    """

    w1: NDArray[np.float64]
    b1: NDArray[np.float64]
    w2: NDArray[np.float64]
    b2: NDArray[np.float64]
    ws: NDArray[np.float64]
    centre: NDArray[np.float64]
    scale: float
    cost_per_completion: NDArray[np.float64]
    candidates: NDArray[np.bool_]
    n_max: int
    budget_used: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def values(self, weights: ArrayLike) -> NDArray[np.float64]:
        """Predicted ``Q(c, a)`` for contexts ``(B, K + 1)`` -> ``(B, A)`` (all arms, candidates or not)."""
        w = finite_weights(weights, self.w1.shape[0])
        obj = w[:, :-1]
        total = obj.sum(axis=1)
        direction = np.divide(obj, total[:, None], out=np.full_like(obj, 1.0 / obj.shape[1]), where=total[:, None] > 0)
        hidden = np.maximum(direction @ self.w1 + self.b1, 0.0)
        gain = self.centre + self.scale * (hidden @ self.w2 + self.b2 + direction @ self.ws)
        n = np.tile(np.arange(1, self.n_max + 1), self.cost_per_completion.size)
        cost = np.repeat(self.cost_per_completion, self.n_max) * n
        return gain * total[:, None] - w[:, -1:] * cost[None, :]

    def act(self, weights: ArrayLike) -> NDArray[np.int64]:
        """The candidate arm with the highest predicted value per context row of ``weights``."""
        v = self.values(weights)
        return np.argmax(np.where(self.candidates[None, :], v, -np.inf), axis=1).astype(np.int64)


# --------------------------------------------------------------------------------- the model
class _BatchedMLP:
    """``S`` independent MLPs trained as one batched network (torch, CPU)."""

    def __init__(self, seeds: list[int], n_in: int, hidden: int, n_out: int, lr: float, weight_decay: float):
        import torch

        self.torch = torch
        n_runs = len(seeds)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]  # one generator per run
        lim1 = 1.0 / np.sqrt(n_in)
        lim2 = 1.0 / np.sqrt(hidden)
        draws = [
            [torch.rand(shape, generator=g, dtype=torch.float32) for shape in ((n_in, hidden), (1, hidden), (hidden, n_out))]
            for g in gens
        ]

        def uniform(i: int, lim: float) -> Any:
            return ((torch.stack([d[i] for d in draws]) * 2 - 1) * lim).requires_grad_()

        self.w1 = uniform(0, lim1)
        self.b1 = uniform(1, lim1)
        self.w2 = uniform(2, lim2 * 0.1)
        self.b2 = torch.zeros((n_runs, 1, n_out), dtype=torch.float32, requires_grad=True)
        self.ws = torch.zeros((n_runs, n_in, n_out), dtype=torch.float32, requires_grad=True)
        self.params = [self.w1, self.b1, self.w2, self.b2, self.ws]
        self.opt = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay)

    def forward(self, x: Any) -> Any:
        """``x (S, U, K)`` -> ``(S, U, A)``."""
        torch = self.torch
        h = torch.relu(torch.baddbmm(self.b1, x, self.w1))
        return torch.baddbmm(self.b2, h, self.w2) + torch.bmm(x, self.ws)

    def train(self, x: Any, target: Any, weight: Any, steps: int) -> list[float]:
        """Full-batch Adam on ``sum weight * (f(x) - target)^2 / sum weight`` per run; returns mean losses."""
        denom = weight.sum(dim=(1, 2)).clamp_min(1e-12)
        losses = []
        for _ in range(int(steps)):
            self.opt.zero_grad(set_to_none=True)
            per_run = ((self.forward(x) - target) ** 2 * weight).sum(dim=(1, 2)) / denom
            loss = per_run.sum()
            loss.backward()
            self.opt.step()
            losses.append(float(per_run.mean().detach()))
        return losses

    def numpy(self, s: int) -> tuple[NDArray[np.float64], ...]:
        """Run ``s``'s parameters as numpy arrays ``(w1, b1, w2, b2, ws)``."""
        return tuple(p.detach()[s].numpy().astype(np.float64) for p in self.params)


# --------------------------------------------------------------------------------- the agent
class _NetStats:
    """Stats adapter for :func:`iapo_gym.agents.psst.run_trimming`: tallies pulls, ranks arms by the network.

    ``add`` records nested, bank-re-scored blocks; ``means`` re-fits the networks (warm start) and
    returns predicted ``Q`` on the elimination sample, ``(S, E, P, N)`` (NaN for unseen arms).
    """

    def __init__(self, agent: NeuralAgent, runs: Runs, bank: NDArray[np.float64], elim: ContextSet, writer: Any):
        self.agent, self.runs, self.writer = agent, runs, writer
        k = bank.shape[1]
        self.bank = bank  # (U, K) objective-weight directions
        # bank directions as cost-free contexts: NestedStats keeps one gain slice per direction
        bank_ctx = ContextSet(tuple(f"u{i}" for i in range(bank.shape[0])), np.c_[bank, np.zeros(bank.shape[0])])
        self.tally = NestedStats(runs.n_runs, runs.n_prompts, runs.n_max, bank_ctx)
        order = np.asarray(self.tally.split.group)  # NestedStats sorts distinct directions: map bank -> slice
        self.slice_of_bank = order
        self.elim_dir = np.asarray(elim.weights[:, :k])
        self.elim_cost = np.asarray(elim.weights[:, -1])
        self.elim_bank = np.asarray([int(i) for i in range(self.elim_dir.shape[0])]) % bank.shape[0]
        seeds = [runs.streams.child_seed(s, 1) for s in range(runs.n_runs)]
        self.net = _BatchedMLP(seeds, k, agent.hidden, runs.n_prompts * runs.n_max, agent.lr, agent.weight_decay)
        self.fitted_steps = 0
        self.step_log = 0
        self.active: NDArray[np.bool_] | None = None
        self.rounds_seen = 0

    def add(self, pulls: Any, run: NDArray[np.int64]) -> None:
        self.tally.add(pulls, run)

    # -------------------------------------------------------------- targets and fitting
    def targets(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """``(target (S, U, A), weight (S, U, A), centre (S, A), scale (S,))`` from the tallies."""
        t = self.tally
        count = t.count.reshape(t.n_runs, -1).astype(np.float64)  # (S, A)
        gain = t.gain[:, self.slice_of_bank].reshape(t.n_runs, self.bank.shape[0], -1)  # (S, U, A)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count[:, None] > 0, gain / count[:, None], 0.0)
        seen = count > 0
        centre = mean.mean(axis=1)  # (S, A)
        dev = mean - centre[:, None]
        wsum = np.maximum((count * seen).sum(axis=1), 1.0)
        scale = np.sqrt(((dev**2).mean(axis=1) * count).sum(axis=1) / wsum)
        spread = np.sqrt(((mean**2).mean(axis=1) * count).sum(axis=1) / wsum)
        scale = np.maximum(scale, 1e-3 * np.maximum(spread, 1e-12))
        target = dev / scale[:, None, None]
        weight = np.broadcast_to((count ** float(self.agent.count_power))[:, None, :], mean.shape).copy()
        weight[~np.broadcast_to(seen[:, None, :], weight.shape)] = 0.0
        return target, weight, centre, scale

    def fit(self, steps: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Train ``steps`` more steps; returns ``(centre, scale)`` of the current targets."""
        torch = self.net.torch
        target, weight, centre, scale = self.targets()
        x = torch.from_numpy(np.broadcast_to(self.bank[None], (self.runs.n_runs, *self.bank.shape)).astype(np.float32))
        losses = self.net.train(
            x, torch.from_numpy(target.astype(np.float32)), torch.from_numpy(weight.astype(np.float32)), steps
        )
        if self.writer is not None:
            for loss in losses:
                self.writer.add_scalar("neural/loss", loss, self.step_log)
                self.step_log += 1
        self.fitted_steps += steps
        self.centre, self.scale = centre, scale
        return centre, scale

    def predict(self, directions: NDArray[np.float64]) -> NDArray[np.float64]:
        """Predicted gains ``(S, D, A)`` at objective-weight ``directions (D, K)`` (on the simplex)."""
        torch = self.net.torch
        x = torch.from_numpy(np.broadcast_to(directions[None], (self.runs.n_runs, *directions.shape)).astype(np.float32))
        with torch.no_grad():
            f = self.net.forward(x).numpy().astype(np.float64)
        return self.centre[:, None] + self.scale[:, None, None] * f

    def cost_per_completion(self) -> NDArray[np.float64]:
        """``(S, P)`` mean cost of one completion per prompt (0 where unseen)."""
        c = self.tally.count[:, :, 0]
        return np.divide(self.tally.cost[:, :, 0], c, out=np.zeros(c.shape), where=c > 0)

    # -------------------------------------------------------------- run_trimming interface
    def means(self) -> NDArray[np.float64]:
        steps = self.agent.round_steps if self.fitted_steps else self.agent.first_steps
        self.fit(steps)
        s, p, n_max = self.runs.n_runs, self.runs.n_prompts, self.runs.n_max
        gain = self.predict(self.bank)[:, self.elim_bank]  # (S, E, A)
        n = np.arange(1, n_max + 1)
        cost = (self.cost_per_completion()[:, :, None] * n).reshape(s, -1)  # (S, A)
        q = gain - self.elim_cost[None, :, None] * cost[:, None, :]
        seen = (self.tally.count > 0).reshape(s, -1)
        q = np.where(seen[:, None, :], q, np.nan)
        self._log_round()
        return q.reshape(s, -1, p, n_max)

    def _log_round(self) -> None:
        if self.writer is None or self.active is None:
            return
        r = self.rounds_seen
        self.writer.add_scalar("explore/spent", float(self.runs.spent.mean()), r)
        self.writer.add_scalar("explore/pulls", float(self.tally.count[:, :, 0].sum() / max(self.runs.n_runs, 1)), r)
        self.writer.add_scalar("explore/candidates", float(self.active.any(axis=1).sum(axis=1).mean()), r)
        self.writer.add_scalar("explore/active_per_context", float(self.active.sum(axis=2).mean()), r)
        self.rounds_seen += 1


@dataclass
class NeuralAgent(BatchAgent):
    """Function approximation over continuous contexts with halving over a context sample.

    Args:
        n_directions: objective-weight directions in the bank (every pull is re-scored under each).
        n_cost_draws: cost weights paired with each direction in the elimination sample.
        hidden: hidden units of the MLP.
        first_steps: gradient steps of the first fit (after round 1).
        round_steps: gradient steps after each later round (warm start).
        final_steps: extra gradient steps before deployment.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        count_power: per-arm loss weight ``n(p, k) ** count_power`` (1: plain per-block MSE; 0.5
            balances rarely and often observed arms).
        eliminate: ``"net"`` ranks arms by the network at each halving (default); ``"empirical"``
            by the exact empirical means on the elimination sample (an ablation).
        threads: torch threads for training (None: 1, which keeps every run independent of its
            batch bit for bit; more threads are faster but make float sums depend on the batch shape).
        log_dir: TensorBoard directory (None: no logging).
    """

    n_directions: int = 32
    n_cost_draws: int = 4
    hidden: int = 32
    first_steps: int = 150
    round_steps: int = 30
    final_steps: int = 100
    lr: float = 1e-2
    weight_decay: float = 0.0
    count_power: float = 0.5
    eliminate: Literal["net", "empirical"] = "net"
    threads: int | None = None
    log_dir: str | None = None
    name: ClassVar[str] = "neural"

    def __post_init__(self) -> None:
        if self.eliminate not in ("net", "empirical"):
            raise ValueError(f"eliminate must be 'net' or 'empirical'; got {self.eliminate!r}")
        for key in ("n_directions", "n_cost_draws", "hidden"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")

    def _writer(self, runs: Runs) -> Any:
        if self.log_dir is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        task = getattr(runs.envs[0], "task", "env")  # the env's task name (not its table: check_agent's view)
        seeds = f"{runs.seeds[0]}" if runs.n_runs == 1 else f"{runs.seeds[0]}-{runs.seeds[-1]}"
        return SummaryWriter(str(Path(self.log_dir) / f"{task}__{self.name}__{seeds}__{int(time.time())}"))

    def fit_runs(self, runs: Runs) -> list[Policy]:
        """Fit every run of the batch at once (see :meth:`iapo_gym.agents.base.BatchAgent.fit_runs`)."""
        import torch

        # torch splits a reduction across threads by the tensor's shape, so with several threads a
        # run's float sums (hence its policy) would depend on how many runs share the batch.
        previous = torch.get_num_threads()
        torch.set_num_threads(int(self.threads) if self.threads is not None else 1)
        try:
            return self._fit(runs)
        finally:
            torch.set_num_threads(previous)

    def _fit(self, runs: Runs) -> list[Policy]:
        dist = distribution_of(runs.envs[0])
        k = dist.n_objectives
        bank_rng = np.random.default_rng([zlib.crc32(f"{self.name}/bank".encode())])  # fixed quadrature, see Seeding
        draws = dist.sample(bank_rng, int(self.n_directions) * int(self.n_cost_draws))
        bank = draws[: int(self.n_directions), :k] if k > 1 else np.ones((1, 1))
        # elimination sample: context e pairs bank direction e % U with its own cost draw
        u = bank.shape[0]
        n_elim = u * int(self.n_cost_draws)
        elim_w = np.c_[bank[np.arange(n_elim) % u], draws[:n_elim, -1]]
        elim = ContextSet(tuple(f"e{i}" for i in range(n_elim)), elim_w)
        writer = self._writer(runs)
        stats = _NetStats(self, runs, bank, elim, writer)
        if self.eliminate == "empirical":
            ranker: Any = _EmpiricalRanker(stats, elim, runs)
        else:
            ranker = stats
        n_arms = runs.n_prompts * runs.n_max
        active = np.ones((runs.n_runs, n_elim, n_arms), dtype=bool)
        stats.active = active
        infos = run_trimming(runs, ranker, active, runs.budgets.copy(), n_rounds(n_arms))
        stats._log_round()  # the final exploration state (also when the budget allowed no halving)
        centre, scale = stats.fit(int(self.final_steps) if stats.fitted_steps else int(self.first_steps))
        seen = (stats.tally.count > 0).reshape(runs.n_runs, -1)
        candidates = active.any(axis=1) & seen
        cost = stats.cost_per_completion()
        if writer is not None:
            writer.flush()
            writer.close()
        policies: list[Policy] = []
        for s in range(runs.n_runs):
            w1, b1, w2, b2, ws = stats.net.numpy(s)
            cand = candidates[s] if candidates[s].any() else seen[s] if seen[s].any() else np.eye(1, n_arms, 0, dtype=bool)[0]
            info = {**infos[s], "budget_used": int(runs.spent[s]), "candidates": int(cand.sum()),
                    "bank": u, "elimination_contexts": n_elim, "train_steps": stats.fitted_steps}
            policies.append(
                NeuralPolicy(w1, b1[0], w2, b2[0], ws, centre[s], float(scale[s]), cost[s], cand, runs.n_max,
                             budget_used=int(runs.spent[s]), info=info)
            )
        return policies


class _EmpiricalRanker:
    """Ablation: halving by the exact empirical means on the elimination sample (no network)."""

    def __init__(self, stats: _NetStats, elim: ContextSet, runs: Runs) -> None:
        self.stats, self.elim, self.runs = stats, elim, runs
        self.exact = NestedStats(runs.n_runs, runs.n_prompts, runs.n_max, elim)

    def add(self, pulls: Any, run: NDArray[np.int64]) -> None:
        self.stats.add(pulls, run)
        self.exact.add(pulls, run)

    def means(self) -> NDArray[np.float64]:
        return self.exact.means()
