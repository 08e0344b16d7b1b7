"""Synthetic generators: the structure the paper's experiments need, checked with the exact oracle."""

from __future__ import annotations

import numpy as np
import pytest

from iapo_gym.arms import arm_from_index
from iapo_gym.oracle import best_arms, q_values
from iapo_gym.tables.validation import validate_table
from iapo_gym.tasks import TASKS, load_task_table, task_name
from iapo_gym.tasks.synthetic import make_synth_bernoulli, make_synth_categorical


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synth_bernoulli_has_deceptive_prompts_that_lose_at_large_n(seed: int) -> None:
    table = make_synth_bernoulli(seed)
    validate_table(table)
    assert (table.n_prompts, table.n_queries, len(table.contexts), table.n_max) == (32, 520, 3, 32)
    theta = table.answer_probs[..., 0]
    deceptive = np.array([p.startswith("deceptive") for p in table.prompts])
    # deceptive prompts: success probability below 1/2 on a sizeable share of queries
    assert np.all((theta[deceptive] < 0.5).mean(axis=1) > 0.25)
    q = q_values(table)
    best_single = int(q[0, :, 0].argmax())
    assert deceptive[best_single], "the best N=1 prompt must be a deceptive one"
    p_low, n_low = arm_from_index(best_arms(q)[0], table.n_max)
    assert not deceptive[p_low] and n_low > 1
    assert q[0, p_low, n_low - 1] > q[0, best_single, :].max() + 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_synth_categorical_best_arm_depends_on_context(seed: int) -> None:
    table = make_synth_categorical(seed)
    validate_table(table)
    assert (table.n_prompts, table.n_queries, len(table.contexts), table.n_objectives) == (32, 512, 27, 2)
    assert table.outcome_values.min() >= 0 and table.outcome_values.max() <= 4
    prompts, ns = arm_from_index(best_arms(q_values(table, table.test_queries())), table.n_max)
    assert len(set(prompts.tolist())) >= 2  # the objective weights move the best prompt
    low, high = ns[:9], ns[18:]
    assert np.all(high <= low) and high.mean() < low.mean()  # a higher cost weight asks for fewer samples


def test_worlds_are_reproducible_and_distinct() -> None:
    a, b, c = make_synth_categorical(7), make_synth_categorical(7), make_synth_categorical(8)
    np.testing.assert_array_equal(a.outcome_values, b.outcome_values)
    assert not np.array_equal(a.outcome_values, c.outcome_values)
    assert load_task_table("IAPO-SynthBernoulli-v0", world_seed=3).provenance["seed"] == 3


def test_task_names_resolve() -> None:
    assert task_name("iapo_gym:IAPO-MATH-v0") == "MATH" and task_name("MATH") == "MATH"
    assert {"SynthBernoulli", "MATH", "CommonsenseQA", "SynthCategorical", "HelpfulHarmless", "Summarization"} <= set(TASKS)
    with pytest.raises(KeyError, match="known tasks"):
        task_name("IAPO-Foo-v0")


def test_registered_shipped_task_loads_its_table_directory_through_gym_make(tmp_path) -> None:
    import gymnasium as gym

    from iapo_gym.tables.io import save_table
    from iapo_gym.tables.testing import example_table
    from iapo_gym.tasks import TaskInfo, register_task

    table = example_table("mv", seed=4, n_prompts=3, n_queries=20, n_max=6)
    save_table(table, tmp_path / "table")
    info = register_task(TaskInfo("TestShippedTiny", "mv", "shipped", "test table", table=str(tmp_path / "table")))
    try:
        env = gym.make(info.env_id, budget=12)
        u = env.unwrapped
        np.testing.assert_array_equal(u.table.answer_probs, table.answer_probs)
        assert (u.n_prompts, u.n_max, u.n_arms) == (3, 6, 18)
        env.reset(seed=0)
        assert env.step(5)[4]["budget_used"] == 6
    finally:
        TASKS.pop("TestShippedTiny")
        gym.registry.pop(info.env_id)


def test_register_task_refuses_incomplete_entries() -> None:
    from iapo_gym.tasks import TaskInfo, register_task

    with pytest.raises(ValueError, match="needs a generator"):
        register_task(TaskInfo("TestNoGen", "mv", "synthetic", "x"))
    with pytest.raises(ValueError, match="table name"):
        register_task(TaskInfo("TestNoTable", "mv", "real", "x"))
    assert "TestNoGen" not in TASKS and "TestNoTable" not in TASKS


def test_importing_the_package_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, iapo_gym; "
        "print('torch' in sys.modules, 'scipy' in sys.modules, 'IAPO-MATH-v0' in __import__('gymnasium').registry)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]
