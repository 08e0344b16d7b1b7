"""Synthetic IAPO tasks, drawn fresh from a seed (one world per run, as in the paper).

The paper's appendix generators were not available; these follow its stated design (the environment
descriptions of arXiv 2508.10030) and every parameter is a module constant documented here.

**Synth-Bernoulli** (majority voting, binary correctness = 2 answer categories, gold = 0):
32 prompts, 520 queries (416 train / 104 test, split drawn from the seed), ``N_max = 32``,
contexts low/mid/high with cost weights 0.0/0.2/1.0, per-completion cost per prompt
``U(0.004, 0.010)``. Each query has a difficulty ``d_q ~ N(0, 0.04)`` shared by all prompts.
Prompts come in three kinds:

* ``DECEPTIVE`` (4): bimodal. On a share ``U(0.30, 0.40)`` of queries the success probability is
  ``U(0.15, 0.45)`` (below 1/2, so voting drives it to 0), elsewhere ``U(0.90, 0.99)``. Their
  single-sample accuracy (about 0.72) is the best of all prompts, but their majority-vote accuracy
  saturates near 0.65.
* ``CONSISTENT`` (6): ``theta ~ U(0.56, 0.70)`` on nearly every query (mean about 0.62), so
  voting lifts them towards 1: they overtake the deceptive prompts from N of about 5 upwards.
* ``FILLER`` (22): ``theta ~ Beta`` with a prompt mean ``U(0.25, 0.60)`` and concentration 4,
  i.e. mediocre prompts.

The best N = 1 prompt is therefore deceptive, and the best arm at low cost is a consistent prompt
with a large N: Top-K screening with a small K commits to the wrong prompts.

**Synth-Categorical** (best-of-N, K = 2 objectives with values in [0, 4]): 32 prompts, 512
queries (410 train / 102 test), ``M = 8`` outcomes per (prompt, query) with ``Dirichlet(1)``
probabilities, ``N_max = 32``, 27 contexts (weights 0.1/0.9 .. 0.9/0.1 on the two objectives
times cost levels low/mid/high = 0.0/0.2/1.0). Each prompt has a mean level per objective
``mu_p ~ U(0.8, 2.6)^2`` with a trade-off (half the prompts favour objective 1 by ``+0.6`` and
penalise objective 2 by ``-0.6``, the other half the reverse) and a spread ``sigma_p ~ U(0.1, 0.9)``:
low-spread prompts are good at N = 1, high-spread prompts gain most from best-of-N. Outcome values
are ``clip(mu_p + d_q + sigma_p * z, 0, 4)`` with a query difficulty ``d_q ~ N(0, 0.3^2)`` and
``z`` standard normal, correlated 0.3 across the two objectives. Per-completion cost per prompt is
``U(0.01, 0.05)``, so at the high cost level a large N must earn its price.
"""

from __future__ import annotations

import numpy as np

from iapo_gym.contexts import cost_contexts, preference_contexts
from iapo_gym.tables.format import OutcomeTable

N_MAX = 32
COST_LEVELS = {"low": 0.0, "mid": 0.2, "high": 1.0}
TRAIN_FRACTION = 0.8

# Synth-Bernoulli
SB_PROMPTS, SB_QUERIES = 32, 520
SB_DECEPTIVE, SB_CONSISTENT = 4, 6
SB_COST_RANGE = (0.004, 0.010)

# Synth-Categorical
SC_PROMPTS, SC_QUERIES, SC_OUTCOMES = 32, 512, 8
SC_COST_RANGE = (0.01, 0.05)


def _split(rng: np.random.Generator, n_queries: int) -> np.ndarray:
    split = np.ones(n_queries, dtype=np.int8)
    split[rng.permutation(n_queries)[: int(TRAIN_FRACTION * n_queries)]] = 0
    return split


def synth_bernoulli_thetas(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Success probabilities ``(P, Q)`` and the prompt kinds ``(P,)`` (0 deceptive, 1 consistent, 2 filler)."""
    P, Q = SB_PROMPTS, SB_QUERIES
    kinds = np.full(P, 2)
    kinds[:SB_DECEPTIVE] = 0
    kinds[SB_DECEPTIVE : SB_DECEPTIVE + SB_CONSISTENT] = 1
    kinds = kinds[rng.permutation(P)]
    difficulty = rng.normal(0.0, 0.04, size=Q)

    hard_share = rng.uniform(0.30, 0.40, size=(P, 1))
    hard = rng.random((P, Q)) < hard_share
    deceptive = np.where(hard, rng.uniform(0.15, 0.45, (P, Q)), rng.uniform(0.90, 0.99, (P, Q)))
    consistent = rng.uniform(0.56, 0.70, (P, Q))
    mean = rng.uniform(0.25, 0.60, size=(P, 1))
    filler = rng.beta(4 * mean * np.ones((P, Q)), 4 * (1 - mean) * np.ones((P, Q)))
    theta = np.choose(kinds[:, None], [deceptive, consistent, filler]) - difficulty[None, :]
    return np.clip(theta, 0.01, 0.99), kinds


def make_synth_bernoulli(seed: int) -> OutcomeTable:
    """Draw one Synth-Bernoulli world (see the module docstring) from ``seed``."""
    rng = np.random.default_rng([seed, 0x5B])
    theta, kinds = synth_bernoulli_thetas(rng)
    cost = np.repeat(rng.uniform(*SB_COST_RANGE, size=(SB_PROMPTS, 1)), SB_QUERIES, axis=1)
    return OutcomeTable(
        task="SynthBernoulli",
        strategy="mv",
        prompts=tuple(f"{'deceptive' if k == 0 else 'consistent' if k == 1 else 'filler'}-{i}" for i, k in enumerate(kinds)),
        query_ids=tuple(f"q{i}" for i in range(SB_QUERIES)),
        objectives=("correct",),
        objective_ranges=np.array([[0.0, 1.0]]),
        contexts=cost_contexts(COST_LEVELS),
        n_max=N_MAX,
        cost=cost,
        split=_split(rng, SB_QUERIES),
        answer_probs=np.stack([theta, 1.0 - theta], axis=-1),
        gold=np.zeros(SB_QUERIES, dtype=np.int64),
        cost_unit="synthetic",
        provenance={"generator": "iapo_gym.tasks.synthetic.make_synth_bernoulli", "seed": int(seed)},
    )


def make_synth_categorical(seed: int) -> OutcomeTable:
    """Draw one Synth-Categorical world (see the module docstring) from ``seed``."""
    rng = np.random.default_rng([seed, 0x5C])
    P, Q, M = SC_PROMPTS, SC_QUERIES, SC_OUTCOMES
    mu = rng.uniform(0.8, 2.6, size=(P, 2))
    tradeoff = np.where(np.arange(P) % 2 == 0, 0.6, -0.6)[rng.permutation(P)]
    mu = mu + np.stack([tradeoff, -tradeoff], axis=1)
    sigma = rng.uniform(0.1, 0.9, size=P)
    difficulty = rng.normal(0.0, 0.3, size=Q)
    z = rng.standard_normal((P, Q, M, 2))
    z[..., 1] = 0.3 * z[..., 0] + np.sqrt(1 - 0.3**2) * z[..., 1]
    values = mu[:, None, None, :] + difficulty[None, :, None, None] + sigma[:, None, None, None] * z
    probs = rng.dirichlet(np.ones(M), size=(P, Q))
    cost = np.repeat(rng.uniform(*SC_COST_RANGE, size=(P, 1)), Q, axis=1)
    return OutcomeTable(
        task="SynthCategorical",
        strategy="bon",
        prompts=tuple(f"prompt-{i}" for i in range(P)),
        query_ids=tuple(f"q{i}" for i in range(Q)),
        objectives=("objective-1", "objective-2"),
        objective_ranges=np.array([[0.0, 4.0], [0.0, 4.0]]),
        contexts=preference_contexts(("objective-1", "objective-2"), COST_LEVELS),
        n_max=N_MAX,
        cost=cost,
        split=_split(rng, Q),
        outcome_values=np.clip(values, 0.0, 4.0),
        outcome_probs=probs,
        cost_unit="synthetic",
        provenance={"generator": "iapo_gym.tasks.synthetic.make_synth_categorical", "seed": int(seed)},
    )
