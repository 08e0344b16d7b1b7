"""Public conformance checks for agents (ours and yours).

>>> from iapo_gym.env import IAPOEnv
>>> from iapo_gym.agents import make_agent
>>> from iapo_gym.agents.testing import check_agent
>>> check_agent(make_agent("uniform"), lambda seed: IAPOEnv("SynthBernoulli", split_seed=seed, world_seed=seed),
...             budgets=(1, 100, 5000))  # None; AgentCheckError names the first rule an agent breaks

:func:`check_agent` raises :class:`AgentCheckError` naming the first violated rule:

1. **budget** -- after ``fit(env, T, seed)`` the env's ledger shows at most ``T`` completions spent
   and ``policy.budget_used`` equals that spend (agents must report what they used); the same for
   every run of ``fit_many``;
2. **determinism** -- two fits with the same seed on freshly built envs give the same deployment
   distribution for every context (``policy.arm_probs``) and the same spend;
3. **valid arms** -- ``policy.act`` returns an arm in ``0 .. P * N_max - 1`` for every context (and
   ``policy(context)`` an ``int``), and ``arm_probs`` rows are distributions;
4. **deployment view** -- ``fit`` gets a :class:`DeploymentView` of the env: pull, score, step,
   reset, contexts, spaces and a read-only ledger; reading the table (its test split), writing the
   ledger or a seeded reset after spending fails the check, and the completions drawn through the
   env must equal the ledger's spend (:func:`fit_guarded`);
5. **unseen contexts** -- the policy gives valid arms for contexts outside the finite set
   (:func:`check_policy_off_contexts`);
6. **hidden nondeterminism** -- repeated fits under different global RNG states
   (:func:`check_repeatable`) and fits in fresh interpreters with other ``PYTHONHASHSEED`` values
   (:func:`check_across_processes`) deploy the same arms.
7. **invariance** -- a seed determines its run: the policy of seed ``s`` is bit-identical whether it
   is fitted alone or inside ``fit_many`` batches of other seeds, in any order, in any chunking
   (:func:`check_invariance`).

``fit_many`` is checked the same way (:func:`fit_many_guarded`); only the library's batch engine
may read the views' tables, to draw many runs at once (it charges every ledger for exactly what it
draws).

``env_factory(seed)`` must build a fresh, unwrapped or wrapped IAPO env whose split / world depends
only on ``seed`` (e.g. ``lambda s: IAPOEnv(task, split_seed=s, world_seed=s)``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from iapo_gym.agents.base import Agent, Policy

__all__ = [
    "AgentCheckError",
    "DeploymentView",
    "ForbiddenAccess",
    "check_across_processes",
    "check_agent",
    "check_budget",
    "check_determinism",
    "check_invariance",
    "check_policy",
    "check_policy_off_contexts",
    "check_repeatable",
    "fit_guarded",
    "fit_many_guarded",
]


class AgentCheckError(AssertionError):
    """An agent violated one of the conformance rules."""


def _base(env: Any) -> Any:
    return getattr(env, "unwrapped", env)


def check_policy(policy: Policy, env: Any, who: str = "agent") -> None:
    """Rule 3: a valid arm for every context; ``arm_probs`` rows are distributions."""
    base = _base(env)
    n_arms = int(base.n_prompts) * int(base.n_max)
    weights = base.contexts.weights
    arms = np.asarray(policy.act(weights))
    if arms.shape != (weights.shape[0],):
        raise AgentCheckError(f"{who}: act() on {weights.shape[0]} contexts returned shape {arms.shape}")
    if not np.issubdtype(arms.dtype, np.integer) or arms.min() < 0 or arms.max() >= n_arms:
        raise AgentCheckError(f"{who}: act() returned arms outside 0..{n_arms - 1}: {arms.tolist()}")
    single = policy(weights[0])
    if not isinstance(single, int) or not 0 <= single < n_arms:
        raise AgentCheckError(f"{who}: policy(context) must return an int arm in 0..{n_arms - 1}; got {single!r}")
    probs = np.asarray(policy.arm_probs(weights, n_arms))
    if probs.shape != (weights.shape[0], n_arms) or np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0):
        raise AgentCheckError(f"{who}: arm_probs must be (C, {n_arms}) rows of probabilities")
    if int(policy.n_max) != int(base.n_max):
        raise AgentCheckError(f"{who}: policy.n_max={policy.n_max} but the env has n_max={base.n_max}")


def check_budget(policy: Policy, env: Any, budget: int, who: str = "agent") -> int:
    """Rule 1 for one run: ledger spend ``<= budget`` and ``== policy.budget_used``. Returns the spend."""
    spent = int(_base(env).ledger.spent)
    if spent > budget:
        raise AgentCheckError(f"{who}: spent {spent} completions with a budget of {budget}")
    if int(policy.budget_used) != spent:
        raise AgentCheckError(f"{who}: policy.budget_used={policy.budget_used} but the ledger shows {spent}")
    return spent


def check_determinism(
    agent: Agent, env_factory: Callable[[int], Any], budget: int, seed: int = 0, who: str = "agent"
) -> None:
    """Rule 2: the same seed gives the same policy (arm distribution per context) and the same spend."""
    env_a, env_b = env_factory(seed), env_factory(seed)
    pol_a, pol_b = agent.fit(env_a, budget, seed), agent.fit(env_b, budget, seed)
    base = _base(env_a)
    n_arms = int(base.n_prompts) * int(base.n_max)
    w = base.contexts.weights
    if not np.array_equal(pol_a.arm_probs(w, n_arms), pol_b.arm_probs(w, n_arms)):
        raise AgentCheckError(f"{who}: two fits with seed {seed} (budget {budget}) deploy different arms")
    if int(_base(env_a).ledger.spent) != int(_base(env_b).ledger.spent):
        raise AgentCheckError(f"{who}: two fits with seed {seed} (budget {budget}) spent different budgets")


# ---------------------------------------------------------------------------- the deployment view
#: Modules of the library's batch engine: they may read the table behind a guarded env (to draw
#: many runs' pulls at once) and charge its ledger, because they charge exactly what they draw
#: (``iapo_gym.agents.psst_paired`` holds the query-controlled engine ``QueryRuns``).
TRUSTED_ENGINE_MODULES = frozenset(
    {"iapo_gym.runs", "iapo_gym.agents._runs", "iapo_gym.agents._common", "iapo_gym.agents.psst_paired", "iapo_gym.sampling"}
)

#: What an agent may read from its env during ``fit``: what a deployment sees.
DEPLOYMENT_ATTRIBUTES = frozenset(
    {
        "contexts", "n_prompts", "n_max", "n_arms", "n_objectives", "strategy", "task", "action_space",
        "observation_space", "metadata", "spec", "render_mode", "train_queries", "backend", "context_source",
    }
)


class ForbiddenAccess(AgentCheckError, AttributeError):
    """An agent touched what a deployment cannot (raised, and recorded in case the agent swallows it)."""


def _caller_module(depth: int = 2) -> str:
    return str(sys._getframe(depth).f_globals.get("__name__", ""))


class _LedgerView:
    """Read-only ledger of a :class:`DeploymentView`; only the trusted batch engine may charge it."""

    __slots__ = ("_ledger", "_view")

    def __init__(self, ledger: Any, view: DeploymentView) -> None:
        object.__setattr__(self, "_ledger", ledger)
        object.__setattr__(self, "_view", view)

    budget = property(lambda self: self._ledger.budget)
    spent = property(lambda self: self._ledger.spent)
    remaining = property(lambda self: self._ledger.remaining)
    tokens = property(lambda self: self._ledger.tokens)
    prompt_tokens = property(lambda self: self._ledger.prompt_tokens)
    completion_tokens = property(lambda self: self._ledger.completion_tokens)
    lifetime_spent = property(lambda self: self._ledger.lifetime_spent)

    def fits(self, n: int) -> bool:  # noqa: D102 - the ledger's own
        return bool(self._ledger.fits(n))

    def affordable_n(self, n_max: int) -> int:  # noqa: D102
        return int(self._ledger.affordable_n(n_max))

    def charge(self, n: int, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        caller = _caller_module()
        if caller == "iapo_gym.ledger":  # iapo_gym.ledger.charge_many: judge the module that called it
            caller = _caller_module(3)
        if caller not in TRUSTED_ENGINE_MODULES:
            raise self._view._forbid("called env.ledger.charge(); completions are charged by env.pull / env.step")
        self._view.engine_charged += int(n)
        self._ledger.charge(n, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        raise self._view._forbid(f"read env.ledger.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._view._forbid(f"set env.ledger.{name} = {value!r}")


class DeploymentView(gym.Env):
    """The env as a deployment sees it while an agent learns (what :func:`fit_guarded` hands to ``fit``).

    It forwards ``pull``, ``score``, ``step``, ``reset``, ``action_masks``, the spaces, the context
    set, ``train_queries`` (indices a deployment may name in ``pull``) and a read-only ledger, and
    counts the completions drawn through it. Everything else -- the outcome table (its test split,
    its probabilities), ``test_queries``, writing to the ledger, ``reset(seed=...)`` once completions
    are spent (which would clear the ledger) -- raises :class:`ForbiddenAccess`, and the violation is
    recorded even if the agent catches the exception. Only the library's batch engine
    (:data:`TRUSTED_ENGINE_MODULES`) may read ``table`` and charge the ledger.

    A Python object cannot stop code that digs through the interpreter (``gc``, frames); the view
    catches agents that use the env beyond its deployment interface, not a deliberate attacker.
    """

    def __init__(self, env: Any) -> None:
        self._env = getattr(env, "unwrapped", env)
        self._ledger_view = _LedgerView(self._env.ledger, self)
        self.violations: list[str] = []
        self.drawn = 0  # completions drawn through pull / step
        self.engine_charged = 0  # completions the trusted batch engine charged (its own draws)
        self.resets = 0

    def _forbid(self, what: str) -> ForbiddenAccess:
        self.violations.append(what)
        return ForbiddenAccess(f"the agent {what}, which a deployment cannot do during fit")

    def __getattr__(self, name: str) -> Any:  # only called for names not defined on the view
        if name.startswith("__") or name in ("_env", "_ledger_view", "violations"):
            raise AttributeError(name)
        if name in DEPLOYMENT_ATTRIBUTES:
            return getattr(self._env, name)
        if name == "table" and _caller_module() in TRUSTED_ENGINE_MODULES:
            return self._env.table
        raise self._forbid(f"read env.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("_env", "_ledger_view", "violations", "drawn", "engine_charged", "resets") and (
            "_env" not in self.__dict__ or _caller_module() == __name__
        ):
            object.__setattr__(self, name, value)
            return
        raise self._forbid(f"set env.{name}")

    @property
    def unwrapped(self) -> DeploymentView:  # noqa: D102 - the view is the innermost env an agent sees
        return self

    @property
    def ledger(self) -> _LedgerView:  # noqa: D102
        return self._ledger_view

    @property
    def np_random(self) -> Any:  # noqa: D102
        raise self._forbid("used env.np_random; seed your own generator from fit's seed")

    @np_random.setter
    def np_random(self, value: Any) -> None:
        raise self._forbid("set env.np_random")

    def pull(self, prompt: Any, n: Any, query: Any = None, **kwargs: Any) -> Any:  # noqa: D102
        pulls = self._env.pull(prompt, n, query, **kwargs)
        self.drawn += int(np.asarray(pulls.n).sum())
        return pulls

    def score(self, pulls: Any, weights: Any = None) -> Any:  # noqa: D102
        return self._env.score(pulls, weights)

    def step(self, action: Any) -> Any:  # noqa: D102
        out = self._env.step(action)
        self.drawn += int(out[4]["n"])
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:  # noqa: D102
        if seed is not None and int(self._env.ledger.spent) > 0:
            raise self._forbid(
                f"called env.reset(seed={seed}) after spending {int(self._env.ledger.spent)} completions "
                "(a seeded reset clears the ledger)"
            )
        self.resets += 1
        return self._env.reset(seed=seed, options=options)

    def action_masks(self) -> Any:  # noqa: D102
        return self._env.action_masks()

    def close(self) -> None:  # noqa: D102
        pass


def _reconcile(env: Any, view: DeploymentView, budget_before: Any, lifetime_before: Any, who: str) -> None:
    """After a guarded fit: no violation, the budget untouched, draws == charges == the ledger's spend."""
    base = _base(env)
    if view.violations:
        raise AgentCheckError(f"{who}: during fit the agent {view.violations[0]}, which a deployment cannot do")
    if base.ledger.budget != budget_before:
        raise AgentCheckError(f"{who}: the ledger's budget changed from {budget_before} to {base.ledger.budget} during fit")
    spent = int(base.ledger.spent)
    if lifetime_before is not None and int(base.ledger.lifetime_spent) - int(lifetime_before) != spent:
        raise AgentCheckError(
            f"{who}: {int(base.ledger.lifetime_spent) - int(lifetime_before)} completions were charged during fit "
            f"but the ledger shows {spent} (it was cleared)"
        )
    if view.drawn + view.engine_charged != spent:
        raise AgentCheckError(
            f"{who}: the ledger shows {spent} completions but {view.drawn + view.engine_charged} were drawn through the env"
        )


def _ledger_marks(env: Any) -> tuple[Any, Any]:
    ledger = _base(env).ledger
    return ledger.budget, getattr(ledger, "lifetime_spent", None)


def fit_guarded(agent: Agent, env: Any, budget: int, seed: int, who: str = "agent") -> Policy:
    """``agent.fit`` on a :class:`DeploymentView` of ``env``; then the spend is reconciled.

    Fails when the agent used the env beyond its deployment interface (even if it caught the
    error), changed the ledger's budget, or when the completions drawn through the env (plus those
    the trusted batch engine charged) differ from the ledger's spend.
    """
    marks = _ledger_marks(env)
    view = DeploymentView(env)
    try:
        policy = agent.fit(view, budget, seed)
    except Exception as exc:  # an error caused by a refused access reports the access
        if view.violations:
            raise AgentCheckError(f"{who}: during fit the agent {view.violations[0]}, which a deployment cannot do") from exc
        raise
    _reconcile(env, view, *marks, who)
    return policy


def fit_many_guarded(
    agent: Agent, env_factory: Callable[[int], Any], budget: int, seeds: Sequence[int], who: str = "agent"
) -> tuple[list[Policy], dict[int, Any]]:
    """``agent.fit_many`` where ``make_env`` hands out :class:`DeploymentView` s; every run is reconciled.

    The library's batch engine may still read the views' tables (it draws many runs at once and
    charges each ledger for exactly what it draws); the agent's own code may not.

    Returns:
        The policies and the real envs by seed (to check their ledgers).
    """
    envs: dict[int, Any] = {}
    views: dict[int, DeploymentView] = {}
    marks: dict[int, tuple[Any, Any]] = {}

    def make(seed: int) -> DeploymentView:
        envs[seed] = env_factory(seed)
        marks[seed] = _ledger_marks(envs[seed])
        views[seed] = DeploymentView(envs[seed])
        return views[seed]

    try:
        policies = agent.fit_many(make, budget, list(seeds))
    except Exception as exc:
        bad = next((v.violations[0] for v in views.values() if v.violations), None)
        if bad is not None:
            raise AgentCheckError(f"{who}: during fit_many the agent {bad}, which a deployment cannot do") from exc
        raise
    for seed, view in views.items():
        _reconcile(envs[seed], view, *marks[seed], f"{who} (fit_many seed {seed})")
    return policies, envs


def check_policy_off_contexts(policy: Policy, env: Any, n: int = 64, seed: int = 0, who: str = "agent") -> None:
    """Rule 4: ``act`` / ``policy(w)`` / ``arm_probs`` give valid arms for contexts outside the finite set.

    Probes ``n`` weight vectors drawn uniformly from the observation space plus its corners (all
    zeros, all at the upper bound, only the cost weight) -- contexts a deployment may meet.
    """
    base = _base(env)
    n_arms = int(base.n_prompts) * int(base.n_max)
    space = getattr(env, "observation_space", None) or base.observation_space
    low, high = np.asarray(space.low, dtype=np.float64), np.asarray(space.high, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cost_only = np.zeros_like(low)
    cost_only[-1] = high[-1]
    probes = np.vstack([rng.uniform(low, high, size=(n, low.size)), low, high, cost_only])
    arms = np.asarray(policy.act(probes))
    if arms.shape != (probes.shape[0],) or not np.issubdtype(arms.dtype, np.integer):
        raise AgentCheckError(
            f"{who}: act() on {probes.shape[0]} unseen contexts returned {arms.dtype} of shape {arms.shape}"
        )
    bad = np.flatnonzero((arms < 0) | (arms >= n_arms))
    if bad.size:
        raise AgentCheckError(
            f"{who}: act() returned arm {int(arms[bad[0]])} (outside 0..{n_arms - 1}) for the context "
            f"{np.round(probes[bad[0]], 4).tolist()}, which is not in the finite set"
        )
    for w in probes[-3:]:
        single = policy(w)
        if not isinstance(single, int) or not 0 <= single < n_arms:
            raise AgentCheckError(
                f"{who}: policy({np.round(w, 4).tolist()}) returned {single!r}, not an arm in 0..{n_arms - 1}"
            )
    probs = np.asarray(policy.arm_probs(probes, n_arms))
    if probs.shape != (probes.shape[0], n_arms) or np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0):
        raise AgentCheckError(
            f"{who}: arm_probs on unseen contexts must be ({probes.shape[0]}, {n_arms}) rows of probabilities"
        )


def check_repeatable(
    agent: Agent, env_factory: Callable[[int], Any], budget: int, seed: int = 0, repeats: int = 2, who: str = "agent"
) -> None:
    """Rule 2b: ``repeats`` guarded fits with the same seed deploy the same arms and spend the same.

    Before fit ``k`` the global ``random`` and ``numpy.random`` states are seeded with ``k`` (and
    restored afterwards), so an agent that draws from a global RNG instead of its ``seed`` shows
    up; a rarely nondeterministic agent (wrong in a share ``p`` of fits) is caught with probability
    ``1 - (1 - p) ** repeats``.
    """
    saved = random.getstate(), np.random.get_state()
    reference = None
    try:
        for k in range(repeats):
            random.seed(k)
            np.random.seed(k)
            env = env_factory(seed)
            policy = fit_guarded(agent, env, budget, seed, who)
            base = _base(env)
            n_arms = int(base.n_prompts) * int(base.n_max)
            got = (np.asarray(policy.arm_probs(base.contexts.weights, n_arms)), int(base.ledger.spent))
            if reference is None:
                reference = got
            elif not np.array_equal(got[0], reference[0]) or got[1] != reference[1]:
                raise AgentCheckError(
                    f"{who}: fit {k + 1} of {repeats} with seed {seed} (budget {budget}) deployed different arms or spent "
                    f"a different budget than fit 1; an agent must depend on its seed only (no global or unseeded RNG)"
                )
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


_PROCESS_PROBE = r"""
import base64, pickle, sys
import cloudpickle
import numpy as np
jobs = cloudpickle.loads(base64.b64decode(sys.stdin.buffer.read()))
out = []
for agent, env_factory, budget, seed in jobs:
    env = env_factory(seed)
    policy = agent.fit(env, budget, seed)
    base = getattr(env, "unwrapped", env)
    n_arms = int(base.n_prompts) * int(base.n_max)
    out.append((np.asarray(policy.arm_probs(base.contexts.weights, n_arms)), int(base.ledger.spent)))
sys.stdout.write(base64.b64encode(pickle.dumps(out)).decode())
"""


def check_across_processes(
    jobs: Sequence[tuple[Agent, Callable[[int], Any], int, int]],
    hash_seeds: Sequence[int] = (1, 2),
    timeout: float = 300.0,
) -> None:
    """Rule 2c: each ``(agent, env_factory, budget, seed)`` fits the same in fresh interpreters.

    Every job is fitted here and in one fresh ``python`` process per ``PYTHONHASHSEED`` in
    ``hash_seeds`` (all jobs share those processes); deployments and spends must agree, so an
    agent whose choices depend on string hashing or set order fails. Jobs travel with
    ``cloudpickle`` (a Gymnasium dependency), so lambdas and local classes work.
    """
    import base64
    import os
    import pickle
    import subprocess

    import cloudpickle  # type: ignore[import-untyped]

    jobs = list(jobs)
    here = []
    for agent, env_factory, budget, seed in jobs:
        env = env_factory(seed)
        policy = agent.fit(env, budget, seed)
        base = _base(env)
        n_arms = int(base.n_prompts) * int(base.n_max)
        here.append((np.asarray(policy.arm_probs(base.contexts.weights, n_arms)), int(base.ledger.spent)))
    payload = base64.b64encode(cloudpickle.dumps(jobs))
    path = os.pathsep.join(p for p in sys.path if p)
    for hash_seed in hash_seeds:
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": path}
        done = subprocess.run(
            [sys.executable, "-c", _PROCESS_PROBE], input=payload, capture_output=True, timeout=timeout, env=env
        )
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise AgentCheckError(f"fitting in a fresh process (PYTHONHASHSEED={hash_seed}) failed: {tail[0]}")
        there = pickle.loads(base64.b64decode(done.stdout))
        for (agent, _, budget, seed), mine, theirs in zip(jobs, here, there, strict=True):
            if not np.array_equal(mine[0], theirs[0]) or mine[1] != theirs[1]:
                who = getattr(agent, "name", type(agent).__name__)
                raise AgentCheckError(
                    f"{who}: seed {seed} (budget {budget}) deploys different arms in a fresh process with "
                    f"PYTHONHASHSEED={hash_seed}; do not let choices depend on hash() or set/dict-of-str order"
                )


def check_agent(
    agent: Agent,
    env_factory: Callable[[int], Any],
    budgets: Iterable[int] = (1, 50, 1000, 5000),
    seeds: Sequence[int] = (0, 1, 2),
    determinism: bool = True,
    batch: bool = True,
    *,
    repeats: int = 2,
    hash_seeds: Sequence[int] = (1, 2),
    probes: int = 64,
    invariance: bool = True,
) -> None:
    """Run every conformance rule on ``agent`` for each budget.

    Args:
        agent: the agent under test.
        env_factory: ``seed -> env`` (fresh env per call).
        budgets: completion budgets to try.
        seeds: seeds of the ``fit`` runs and of the ``fit_many`` batch.
        determinism: also check rule 2 (``repeats`` guarded fits per budget, and one fit per
            ``PYTHONHASHSEED`` in ``hash_seeds`` in fresh processes for the smallest positive budget).
        batch: also check ``fit_many`` over ``seeds``.
        repeats: fits per budget compared by :func:`check_repeatable`.
        hash_seeds: ``PYTHONHASHSEED`` values of the fresh processes (``()``: skip that check).
        probes: contexts outside the finite set on which the policy is probed.
        invariance: also check rule 7 (:func:`check_invariance`) at the largest budget (with ``batch``).
    """
    who = getattr(agent, "name", type(agent).__name__)
    for budget in budgets:
        budget = int(budget)
        env = env_factory(seeds[0])
        policy = fit_guarded(agent, env, budget, seeds[0], f"{who} (fit, budget {budget})")
        check_budget(policy, env, budget, f"{who} (fit, budget {budget})")
        check_policy(policy, env, f"{who} (fit, budget {budget})")
        check_policy_off_contexts(policy, env, probes, seed=budget, who=f"{who} (fit, budget {budget})")
        if determinism:
            check_repeatable(agent, env_factory, budget, seeds[0], repeats, who)
        if batch:
            policies, envs = fit_many_guarded(agent, env_factory, budget, seeds, f"{who} (budget {budget})")
            if len(policies) != len(seeds):
                raise AgentCheckError(f"{who}: fit_many returned {len(policies)} policies for {len(seeds)} seeds")
            for s, pol in zip(seeds, policies, strict=True):
                check_budget(pol, envs[s], budget, f"{who} (fit_many seed {s}, budget {budget})")
                check_policy(pol, envs[s], f"{who} (fit_many seed {s}, budget {budget})")
    if determinism and hash_seeds:
        positive = [int(b) for b in budgets if int(b) > 0] or [0]
        check_across_processes([(agent, env_factory, min(positive), seeds[0])], hash_seeds)
    if invariance and batch:
        check_invariance(agent, env_factory, max(int(b) for b in budgets), seeds, who)


def _fingerprint(policy: Policy, env: Any) -> tuple[bytes, bytes, int, str]:
    """What must not change between fits of one seed.

    The deployment on the task's contexts and on fixed off-grid weights, the spend and the diagnostics.
    """
    import json

    base = _base(env)
    n_arms = int(base.n_prompts) * int(base.n_max)
    w = np.asarray(base.contexts.weights, dtype=np.float64)
    probe = np.random.default_rng(12345).random((16, w.shape[1])) * np.maximum(w.max(axis=0), 1.0)
    off = np.asarray(policy.act(probe), dtype=np.int64)
    info = json.dumps(getattr(policy, "info", {}), sort_keys=True, default=repr)
    return np.asarray(policy.arm_probs(w, n_arms)).tobytes(), off.tobytes(), int(policy.budget_used), info


def check_invariance(
    agent: Agent,
    env_factory: Callable[[int], Any],
    budget: int,
    seeds: Sequence[int] = (0, 1, 2),
    who: str = "agent",
) -> None:
    """Rule 7: seed ``s`` gives the same policy alone (``fit``), in batches, in any order and chunking.

    Compares, bit for bit, each seed's deployment distribution on the task's contexts, its arms on
    fixed off-grid weight vectors, its spend and its ``info`` across: ``fit`` per seed;
    ``fit_many(seeds)``; ``fit_many`` in reverse order with two extra seeds interleaved; and, when
    ``fit_many`` accepts ``memory_budget=``, the same batch with a 1 MiB budget (many small chunks
    and calls).
    """
    import inspect

    seeds = [int(s) for s in seeds]
    extra = [max(seeds) + 7, max(seeds) + 11]
    alone = {s: _fingerprint(agent.fit(env_factory(s), budget, s), env_factory(s)) for s in seeds}
    mixed = [extra[0], *reversed(seeds), extra[1]]
    batches: list[tuple[str, list[int], dict[str, Any]]] = [("fit_many", seeds, {}), ("reordered batch", mixed, {})]
    if "memory_budget" in inspect.signature(agent.fit_many).parameters:
        batches.append(("1 MiB chunks", mixed, {"memory_budget": 1 << 20}))
    for label, batch, kwargs in batches:
        policies = agent.fit_many(env_factory, budget, batch, **kwargs)
        for s, pol in zip(batch, policies, strict=True):
            if s in alone and _fingerprint(pol, env_factory(s)) != alone[s]:
                raise AgentCheckError(
                    f"{who}: seed {s} (budget {budget}) gives a different policy in {label} {batch} than fitted alone; "
                    "draw every random number from the run's own stream (RunBatch.streams)"
                )
