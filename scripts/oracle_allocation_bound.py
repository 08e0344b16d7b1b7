"""Oracle-allocation reference: the regret of an idealised allocation that knows which prompts to sample.

    python scripts/oracle_allocation_bound.py SynthCategorical --runs 50 --budgets 5k,20k

(a task name, ``SmolArith``, or its env id, ``IAPO-SmolArith-v0``.)

For each run (seed ``s``: the same split / world as the reports' run ``s``) a *genie* picks the
candidate prompts from the exact train-split Q: the union over contexts of the ``k`` best prompts
(by their best arm). It then spends the whole budget ``T`` on those candidates only, with no
screening cost: every candidate is sampled ``m`` times on each of the same ``floor(T / (|S| m))``
random train queries (paired, as ``psst_model`` does; a query is reused cyclically once all are
used). The arms are estimated with ``psst_model``'s default estimators (per-query jackknifed
plug-in for majority voting over many answers, the empirical-Bayes NPMLE for binary majority
voting, the empirical-Bayes pooled estimate for Best-of-N) and the exact mean cost per completion, and the
best estimated ``(p, N)`` of each context is deployed. Regret is the exact test-split regret.

``m`` is chosen in hindsight (the best mean regret over a grid), so the number is favourable to the
genie. It is not a lower bound on every conceivable agent (an agent with another estimator could
do better), but it bounds what *this* family of estimators can reach at ``T``: a real agent must
also find the candidates, which the genie gets for free. ``k = 0`` means every prompt (a uniform
allocation without a genie).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

M_GRID = (2, 3, 4, 8, 16, 32)


def parse_budget(text: str) -> int:
    t = text.strip().lower()
    return int(float(t[:-1]) * 1000) if t.endswith("k") else int(t)


def env_id(task: str) -> str:
    """The env id of ``task`` (a task name or an env id); an unknown one exits with one line naming the known tasks."""
    from iapo_gym.tasks import TASKS, task_name

    try:
        return TASKS[task_name(task)].env_id
    except KeyError:
        raise SystemExit(
            f"oracle_allocation_bound.py: task {task!r} is unknown; give a task name ({', '.join(TASKS)}) or its env id "
            "(IAPO-<task>-v0)"
        ) from None


def candidates(q_tr: np.ndarray, k: int) -> np.ndarray:
    """Union over contexts of the ``k`` prompts with the best arm on the exact train Q (``k = 0``: all)."""
    best = q_tr.max(axis=-1)  # (C, P)
    if k <= 0 or k >= best.shape[1]:
        return np.arange(best.shape[1])
    top = np.argsort(-best, axis=1, kind="stable")[:, :k]
    return np.unique(top)


def query_counts(rng: np.random.Generator, train: np.ndarray, n_queries: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct train queries sampled and their completions per prompt (cyclic reuse)."""
    reps, rest = divmod(n_queries, train.size)
    perm = rng.permutation(train)
    if reps == 0:
        return perm[:rest], np.full(rest, m)
    n = np.full(train.size, m * reps)
    n[:rest] += m
    return perm, n


def estimate(table, cand: np.ndarray, queries: np.ndarray, n: np.ndarray, rng: np.random.Generator,
             weights: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``Qhat (C, |cand|, n_max)`` from fresh samples, with ``psst_model``'s estimators."""
    from iapo_gym.agents._bon_eb import eb_bon_expected_max, fit_dirichlet_concentration
    from iapo_gym.agents.psst_model import jackknife_mv_credit, npmle_binary_q

    n_max = table.n_max
    pp, qq = np.meshgrid(cand, queries, indexing="ij")  # (S, Q)
    nn = np.broadcast_to(n[None, :], pp.shape)
    cost = table.cost[cand][:, train].mean(axis=1)  # exact mean cost per completion
    n_arr = np.arange(1, n_max + 1)
    if table.strategy == "mv":
        probs = table.answer_probs[pp, qq]  # (S, Q, A)
        counts = rng.multinomial(nn, probs / probs.sum(axis=-1, keepdims=True))
        gold = np.broadcast_to(table.gold[queries][None, :], pp.shape)
        a_n = counts.shape[-1]
        if a_n == 2:
            k = np.take_along_axis(counts, gold[..., None], axis=-1)[..., 0]
            group = np.repeat(np.arange(cand.size), queries.size)
            credit = npmle_binary_q(k.reshape(-1), nn.reshape(-1), group, cand.size, n_max)  # (S, n_max)
        else:
            flat = counts.reshape(-1, a_n)
            g = gold.reshape(-1)
            own = flat[np.arange(flat.shape[0]), g]
            others = np.where(np.arange(a_n)[None, :] == g[:, None], -1, flat)
            others = np.maximum(-np.sort(-others, axis=1)[:, : a_n - 1], 0)
            per_q = jackknife_mv_credit(np.concatenate([own[:, None], others], axis=1), n_max)
            credit = per_q.reshape(cand.size, queries.size, n_max).mean(axis=1)
        return weights[:, 0, None, None] * credit[None] - weights[:, -1, None, None] * (cost[:, None] * n_arr)[None]
    probs = table.outcome_probs[pp, qq]  # (S, Q, M)
    counts = rng.multinomial(nn, probs / probs.sum(axis=-1, keepdims=True))
    vals = table.outcome_values[pp, qq]  # (S, Q, M, K)
    obj, inv = np.unique(weights[:, :-1], axis=0, return_inverse=True)
    gain = np.empty((obj.shape[0], cand.size, n_max))
    flat = counts.reshape(-1, vals.shape[2])
    group = np.repeat(np.arange(cand.size), queries.size)
    alpha = fit_dirichlet_concentration(flat, group, cand.size)
    for u in range(obj.shape[0]):
        sc = (vals @ obj[u]).reshape(-1, vals.shape[2])
        per_q = eb_bon_expected_max(sc, flat, group, cand.size, alpha, n_max)
        gain[u] = per_q.reshape(cand.size, queries.size, n_max).mean(axis=1)
    return gain[inv.reshape(-1)] - weights[:, -1, None, None] * (cost[:, None] * n_arr)[None]


def one_run(task: str, seed: int, budgets: list[int], ks: list[int], reps: int) -> dict[tuple[int, int, int], float]:
    """``(budget, k, m) -> mean test regret`` over ``reps`` sampling repetitions of one run."""
    from iapo_gym import oracle
    from iapo_gym.experiments import train
    from iapo_gym.experiments.evaluate import query_subtable

    env = train.env_factory(task, 1)(seed)
    table = env.table
    tr, te = np.asarray(env.train_queries), np.asarray(env.test_queries)
    q_tr = oracle.q_values(table, tr)
    q_te = query_subtable(table, te)
    q_te = oracle.q_values(q_te)
    weights = np.asarray(table.contexts.weights, dtype=np.float64)
    probs = env.contexts.probs
    rng = np.random.default_rng([seed, 0xB0])
    out: dict[tuple[int, int, int], float] = {}
    for k in ks:
        cand = candidates(q_tr, k)
        for b in budgets:
            for m in M_GRID:
                if m > table.n_max:
                    continue
                n_q = b // (cand.size * m)
                if n_q < 1:
                    continue
                regs = []
                for _ in range(reps):
                    queries, n = query_counts(rng, tr, n_q, m)
                    qh = estimate(table, cand, queries, n, rng, weights, tr)  # (C, S, N)
                    flat = qh.reshape(qh.shape[0], -1).argmax(axis=1)
                    p_idx, n_idx = np.divmod(flat, table.n_max)
                    arms = cand[p_idx] * table.n_max + n_idx
                    regs.append(float(oracle.regret(q_te, arms, probs)))
                out[(b, k, m)] = float(np.mean(regs))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="5k,20k")
    ap.add_argument("--k", default="1,2,0", help="candidate prompts per context (0: all prompts)")
    ap.add_argument("--reps", type=int, default=1, help="sampling repetitions per run")
    args = ap.parse_args(argv)
    args.task = env_id(args.task)
    budgets = [parse_budget(b) for b in args.budgets.split(",")]
    ks = [int(k) for k in args.k.split(",")]
    acc: dict[tuple[int, int, int], list[float]] = {}
    from iapo_gym.experiments.train import is_missing_table

    for s in range(args.seed, args.seed + args.runs):
        try:
            cells = one_run(args.task, s, budgets, ks, args.reps)
        except Exception as exc:
            if not is_missing_table(exc):
                raise
            raise SystemExit(f"oracle_allocation_bound.py: {str(exc).splitlines()[0]}") from None
        for key, v in cells.items():
            acc.setdefault(key, []).append(v)
    print(f"{args.task}: {args.runs} runs (seeds {args.seed}..{args.seed + args.runs - 1}); mean test regret (s.e.)")
    for b in budgets:
        for k in ks:
            cells = {m: np.array(acc[(b, k, m)]) for m in M_GRID if (b, k, m) in acc}
            if not cells:
                continue
            best = min(cells, key=lambda m: cells[m].mean())
            row = ", ".join(f"m={m}: {r.mean():.4f}" for m, r in cells.items())
            r = cells[best]
            label = "all prompts" if k <= 0 else f"top-{k} per context"
            print(f"T={b:,} {label}: best m={best} {r.mean():.4f} ({r.std(ddof=1) / np.sqrt(r.size):.4f})  [{row}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
