"""The paper's claims checked on an experiment's numbers, and the markdown reproduction report.

Each claim of the paper's Section 5 becomes a set of paired two-sided Wilcoxon comparisons
(alpha = 0.05, paired by seed) at every (task, budget). A comparison *holds* when the first agent's
mean ACR is higher and ``p < alpha``. A claim's verdict per task:

* **holds**: every comparison of the claim holds at every budget, or at all but one budget per
  pair ("nearly all budgets", the paper's wording);
* **partly holds**: at least half of the comparisons hold;
* **does not hold**: fewer than half hold.

The report is generated text driven by these numbers. A hand-written interpretation section
between the markers :data:`HAND_BEGIN` and :data:`HAND_END` survives regeneration.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iapo_gym.experiments.plots import short_env
from iapo_gym.experiments.results import Results, atomic_write_text
from iapo_gym.experiments.stats import ALPHA, format_p, mean_ci, paired_wilcoxon

__all__ = [
    "Comparison",
    "ClaimResult",
    "check_claims",
    "ReportInputs",
    "render_report",
    "write_report",
    "hand_written",
    "hand_written_block",
    "HAND_BEGIN",
    "HAND_END",
]

HAND_BEGIN = "<!-- BEGIN HAND-WRITTEN INTERPRETATION (kept when the report is regenerated) -->"
HAND_END = "<!-- END HAND-WRITTEN INTERPRETATION -->"
_HAND_DEFAULT = "_Not written yet: add an interpretation of the numbers above after a full run._"

#: Relative regret under which two agents both count as "at the oracle" (explains ties at large T).
NEAR_ORACLE = 0.03

IAPO_SCREENING = ("psst", "topk1", "topk4", "topk8")
EXPLORATION_BASELINES = ("uniform", "ucb", "egreedy", "softmax")
IAPO_METHODS = ("psst", "topk4", "topk8")
DECOUPLED_BASELINES = ("triple_n1", "triple_nrandom", "topk1")
LABELS = {
    "psst": "PSST",
    "topk1": "PSST+K1",
    "topk4": "PSST+K4",
    "topk8": "PSST+K8",
    "uniform": "Uniform",
    "ucb": "UCB",
    "egreedy": "ε-greedy",
    "softmax": "Softmax",
    "triple_n1": "TRIPLE (N=1)",
    "triple_nrandom": "TRIPLE (N=random)",
    "seqhalving": "Seq. Halving",
    "random": "Random",
}


def label(agent: str) -> str:
    """Display name of an agent (the paper's where it has one)."""
    return LABELS.get(agent, agent)


@dataclass(frozen=True)
class Comparison:
    """``better`` against ``worse`` (the claimed order) on one task at one budget."""

    env: str
    budget: int
    better: str
    worse: str
    n_pairs: int
    diff: float  # mean ACR of `better` minus `worse`
    rel_gain: float  # diff / |mean ACR of `worse`|
    p: float
    near_oracle: bool = False  # both agents' mean regret below NEAR_ORACLE of the mean oracle ACR

    @property
    def holds(self) -> bool:
        """The claimed order, significant at :data:`ALPHA`."""
        return self.diff > 0 and np.isfinite(self.p) and self.p < ALPHA

    @property
    def reversed(self) -> bool:
        """The opposite order, significant."""
        return self.diff < 0 and np.isfinite(self.p) and self.p < ALPHA


def compare(results: Results, env: str, budget: int, better: str, worse: str) -> Comparison | None:
    """Paired Wilcoxon of ``better`` vs ``worse`` (``None`` when they share no seed)."""
    seeds, a, b = results.paired("acr", env, budget, better, worse)
    if seeds.size == 0:
        return None
    _, p = paired_wilcoxon(a, b)
    diff = float(np.mean(a - b))
    base = abs(float(b.mean()))
    m = results.mask(env=env, budget=budget)
    scale = abs(float(results.oracle_acr[m].mean()))
    near = all(
        float(results.regret[m & results.mask(agent=x)].mean()) <= NEAR_ORACLE * scale for x in (better, worse)
    )
    rel = diff / base if base > 0 else float("nan")
    return Comparison(env, int(budget), better, worse, int(seeds.size), diff, rel, p, near)


@dataclass
class ClaimResult:
    """One claim on one task: its comparisons and verdict."""

    claim: str
    env: str
    comparisons: list[Comparison] = field(default_factory=list)
    verdict: str = "not tested"
    detail: str = ""

    def grade(self) -> None:
        """Set :attr:`verdict` from the comparisons (see the module docstring)."""
        if not self.comparisons:
            self.verdict = "not tested"
            return
        held = sum(c.holds for c in self.comparisons)
        pairs: dict[tuple[str, str], list[Comparison]] = {}
        for c in self.comparisons:
            pairs.setdefault((c.better, c.worse), []).append(c)
        nearly_all = all(sum(not c.holds for c in cs) <= (1 if len(cs) > 2 else 0) for cs in pairs.values())
        if nearly_all:
            self.verdict = "holds"
        elif held >= len(self.comparisons) / 2:
            self.verdict = "partly holds"
        else:
            self.verdict = "does not hold"
        self.detail = f"{held} of {len(self.comparisons)} comparisons significant in the claimed direction"


def _pairwise(results: Results, env: str, claim: str, better: Sequence[str], worse: Sequence[str]) -> ClaimResult:
    out = ClaimResult(claim, env)
    m = results.mask(env=env)
    present = set(results.agent[m].tolist())
    for b in sorted(set(results.budget[m].tolist())):
        for hi in better:
            for lo in worse:
                if hi in present and lo in present and hi != lo:
                    c = compare(results, env, b, hi, lo)
                    if c is not None:
                        out.comparisons.append(c)
    out.grade()
    return out


def _deception(results: Results, env: str) -> ClaimResult:
    """PSST+K1 misled on Synth-Bernoulli: below PSST at the largest budget, deploys optimal arms less often."""
    out = ClaimResult("PSST+K1 is misled by the deceptive prompts of Synth-Bernoulli", env)
    m = results.mask(env=env)
    if not {"psst", "topk1"} <= set(results.agent[m].tolist()):
        return out
    budgets = sorted(set(results.budget[m].tolist()))
    for b in budgets:
        c = compare(results, env, b, "psst", "topk1")
        if c is not None:
            out.comparisons.append(c)
    if not out.comparisons:
        return out
    last = out.comparisons[-1]

    def prompt_hit(agent: str, budget: int) -> float:
        idx = np.flatnonzero(m & results.mask(agent=agent, budget=budget))
        hits = [np.mean(np.equal(results.policy[i]["prompt"], results.policy[i]["best_prompt"])) for i in idx]
        return float(np.mean(hits)) if hits else float("nan")

    def regret(agent: str, budget: int) -> float:
        mm = m & results.mask(agent=agent, budget=budget)
        return float(results.regret[mm].mean()) if mm.any() else float("nan")

    k1_hit, psst_hit = prompt_hit("topk1", last.budget), prompt_hit("psst", last.budget)
    k1_regret = [regret("topk1", b) for b in budgets]
    misled = last.holds and k1_hit < psst_hit
    out.verdict = "holds" if misled else ("partly holds" if last.diff > 0 or k1_hit < psst_hit else "does not hold")
    out.detail = (
        f"at T={last.budget}: PSST − PSST+K1 = {last.diff:+.4f} ACR (p={format_p(last.p)}); optimal prompt deployed in "
        f"{100 * k1_hit:.0f}% of contexts by PSST+K1 vs {100 * psst_hit:.0f}% by PSST; PSST+K1 regret "
        f"{k1_regret[0]:.4f} at T={budgets[0]} → {k1_regret[-1]:.4f} at T={budgets[-1]}"
    )
    return out


def check_claims(results: Results) -> list[ClaimResult]:
    """Every claim of the paper's Section 5 on every task of ``results``."""
    out: list[ClaimResult] = []
    for env in results.unique("env"):
        out.append(
            _pairwise(
                results, env, "PSST and Top-K above Uniform, UCB, ε-greedy and Softmax", IAPO_SCREENING, EXPLORATION_BASELINES
            )
        )
        out.append(
            _pairwise(
                results,
                env,
                "IAPO methods (PSST, PSST+K4, PSST+K8) above TRIPLE (N=1), TRIPLE (N=random) and PSST+K1",
                IAPO_METHODS,
                DECOUPLED_BASELINES,
            )
        )
        if "SynthBernoulli" in env:
            out.append(_deception(results, env))
        out.append(_pairwise(results, env, "PSST above naive Sequential Halving", ("psst",), ("seqhalving",)))
    return out


# --------------------------------------------------------------------------- the report
@dataclass
class ReportInputs:
    """Everything the report shows."""

    results: Results
    agents: list[str]
    missing_agents: list[str]
    skipped_envs: dict[str, str]
    contexts: dict[str, Any]
    figures: dict[str, Path]
    command: str
    reference: str = "psst"


def _results_table(res: Results, env: str, agents: Sequence[str]) -> list[str]:
    m_env = res.mask(env=env)
    budgets = sorted(set(res.budget[m_env].tolist()))
    lines = [
        "| agent | " + " | ".join(f"T={b:,}" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for agent in agents:
        cells = []
        for b in budgets:
            mm = m_env & res.mask(agent=agent, budget=b)
            if mm.any():
                mu, h = mean_ci(res.acr[mm])
                cells.append(f"{mu:.4f} ± {h:.4f}")
            else:
                cells.append("–")
        if any(c != "–" for c in cells):
            lines.append(f"| {label(agent)} | " + " | ".join(cells) + " |")
    lines.append(
        "| *oracle* | " + " | ".join(f"{res.oracle_acr[m_env & (res.budget == b)].mean():.4f}" for b in budgets) + " |"
    )
    return lines


def _claim_section(claims: list[ClaimResult]) -> list[str]:
    lines: list[str] = []
    by_claim: dict[str, list[ClaimResult]] = {}
    for c in claims:
        by_claim.setdefault(c.claim, []).append(c)
    for i, (claim, items) in enumerate(by_claim.items(), start=1):
        lines += [f"### Claim {i}: {claim}", ""]
        for c in items:
            lines.append(f"* **{short_env(c.env)}: {c.verdict}**" + (f" — {c.detail}." if c.detail else "."))
            failing = [x for x in c.comparisons if not x.holds]
            if c.verdict != "not tested" and failing:
                shown = failing[:8]
                desc = "; ".join(
                    f"{label(x.better)} vs {label(x.worse)} at T={x.budget:,}: {x.diff:+.4f} (p={format_p(x.p)}"
                    + (", significantly reversed" if x.reversed else "")
                    + ")"
                    for x in shown
                )
                more = f" and {len(failing) - len(shown)} more" if len(failing) > len(shown) else ""
                lines.append(f"  * not significant in the claimed direction: {desc}{more}.")
            if c.comparisons and c.claim.startswith("IAPO methods"):
                for worse in DECOUPLED_BASELINES:
                    gains = [x.rel_gain for x in c.comparisons if x.worse == worse and np.isfinite(x.rel_gain)]
                    if gains:
                        lines.append(f"  * largest relative ACR gain over {label(worse)}: {100 * max(gains):+.1f}%.")
        lines.append("")
    return lines


def _budget_list(budgets: Sequence[int]) -> str:
    return ", ".join(f"{b:,}" for b in sorted(budgets))


def _why(x: Comparison, budgets: list[int]) -> str:
    """A short, pattern-driven explanation of one failing comparison."""
    small = len(budgets) > 1 and x.budget <= budgets[len(budgets) // 2 - 1]
    if x.reversed and small and x.better == "psst":
        return (
            "PSST spreads a small budget over R = ceil(log2(|P|·N_max)) halving rounds, so its early cuts rest on "
            "few blocks per arm; agents that commit early win at small T"
        )
    if x.reversed and x.better.startswith("topk") and not small:
        return (
            "Top-K screening keeps only K prompts after an N=1 warm-up, so a prompt that looks weak at N=1 but "
            "scales well is lost for good; agents that keep sampling every prompt catch up and pass it as T grows"
        )
    if x.reversed:
        return "the claimed loser is genuinely better here"
    if x.near_oracle:
        return f"both agents are within {100 * NEAR_ORACLE:.0f}% of the oracle ACR, so little is left to separate them"
    return "the gap is within run-to-run noise"


def _disagreements(claims: list[ClaimResult]) -> list[str]:
    lines = []
    for c in claims:
        if c.verdict in ("holds", "not tested"):
            continue
        budgets = sorted({x.budget for x in c.comparisons})
        lines.append(f"* **{short_env(c.env)} — {c.claim}: {c.verdict}.**")
        groups: dict[str, dict[tuple[str, str], list[int]]] = {}
        for x in c.comparisons:
            if not x.holds:
                groups.setdefault(_why(x, budgets), {}).setdefault((x.better, x.worse), []).append(x.budget)
        for reason, pairs in groups.items():
            lines.append(f"  * {reason[0].upper() + reason[1:]}:")
            for (hi, lo), bs in pairs.items():
                lines.append(f"    * {label(hi)} vs {label(lo)} at T = {_budget_list(bs)}")
    return lines or ["* None: every tested claim holds on every task run here."]


def hand_written_block(text: str) -> list[str]:
    """The lines of a hand-written section holding ``text``, between :data:`HAND_BEGIN` and :data:`HAND_END`."""
    return [HAND_BEGIN, text, HAND_END]


def hand_written(path: str | Path, default: str = "") -> str:
    """The hand-written text between :data:`HAND_BEGIN` and :data:`HAND_END` of the page at ``path``.

    Generated pages (this report, the report scripts' pages) put it back between the same markers
    when they are regenerated; ``default`` when the page or its markers do not exist yet.
    """
    path = Path(path)
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if HAND_BEGIN in text and HAND_END in text:
            return text.split(HAND_BEGIN, 1)[1].split(HAND_END, 1)[0].strip("\n")
    return default


def render_report(inp: ReportInputs, path: Path) -> str:
    """The markdown text of the reproduction report that will live at ``path``."""
    res = inp.results
    envs = res.unique("env")
    budgets = res.unique("budget")
    claims = check_claims(res)
    n_seeds = {a: len(set(res.seed[res.agent == a].tolist())) for a in inp.agents}
    runs = sorted(set(n_seeds.values()))
    lines = [
        "# Reproduction of the IAPO paper's evaluation (arXiv 2508.10030, Section 5)",
        "",
        "<!-- Generated by train.py from results.csv: numbers, verdicts and figures are regenerated; only the",
        "     hand-written interpretation section below is kept between regenerations. -->",
        "",
        f"Regenerate with `{inp.command}` (resumes from its results.csv; "
        "`--analyse-only` rebuilds this page without fitting).",
        "",
        "## Setup",
        "",
        f"* Generated {_dt.date.today().isoformat()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPU core(s), Python {platform.python_version()}.",
        f"* Tasks: {', '.join(short_env(e) for e in envs)}."
        + (
            " Not run (outcome table not installed here): "
            + ", ".join(f"{short_env(e)}" for e in inp.skipped_envs)
            + "; install them with `iapo-gym data import` / `iapo-gym data pull` and re-run."
            if inp.skipped_envs
            else ""
        ),
        f"* Agents: {', '.join(label(a) for a in inp.agents)}."
        + (f" Not registered when this ran: {', '.join(inp.missing_agents)}." if inp.missing_agents else ""),
        "* Left out on purpose: the Stable-Baselines3 agents (PPO, A2C, DQN), which learn from `step()` rewards one",
        "  completion at a time, are roughly two orders of magnitude slower, and are not in the paper.",
        f"* Budgets (completions): {', '.join(f'{b:,}' for b in budgets)}; runs per configuration: "
        f"{', '.join(map(str, runs))} (seeds paired across agents).",
        "* Protocol: run `s` re-splits a real task's queries 80/20 from seed `s` (synthetic tasks: a fresh world from",
        "  `s`), trains on the 80% and is scored on the 20% with the **exact** oracle ACR (the paper estimates it",
        "  with 10,000 Monte-Carlo test samples; exact values remove that noise). Statistics: paired two-sided",
        f"  Wilcoxon signed-rank tests (alpha = {ALPHA}); ± is the 95% t-interval of the mean over runs",
        "  (robust statistics, Holm-corrected tests, performance profiles and Pareto views follow the claims).",
        "* Fitting time per run (mean over configurations): "
        + ", ".join(f"{label(a)} {res.wall_s[res.agent == a].mean():.3g} s" for a in inp.agents if np.any(res.agent == a))
        + ".",
        "",
        "## Results",
        "",
    ]
    rel = lambda p: Path(os.path.relpath(Path(p).resolve(), path.resolve().parent)).as_posix()  # noqa: E731
    if "acr_plot" in inp.figures:
        lines += [f"![ACR against budget]({rel(inp.figures['acr_plot'])})", ""]
    if "n_plot" in inp.figures:
        lines += [f"![Deployed N against cost weight]({rel(inp.figures['n_plot'])})", ""]
    for env in envs:
        lines += [f"### {short_env(env)} — mean exact test ACR ± 95% CI", ""]
        lines += _results_table(res, env, inp.agents) + [""]
    lines += ["## The paper's claims, checked", ""]
    lines += _verdict_matrix(claims)
    lines += [
        "A comparison holds when the claimed winner's mean ACR is higher with p < 0.05 (paired two-sided Wilcoxon);",
        "a claim **holds** on a task when every pair holds at all budgets but at most one, **partly holds** when at",
        "least half of its comparisons hold.",
        "",
    ]
    lines += _claim_section(claims)
    lines += ["## Where the results disagree with the paper", ""] + _disagreements(claims) + [""]
    lines += _robust_section(inp, rel)
    lines += ["## Interpretation", "", *hand_written_block(hand_written(path, _HAND_DEFAULT)), ""]
    from iapo_gym.experiments.stats import wilcoxon_markdown, wilcoxon_table

    lines += [
        f"## Appendix: every agent against {label(inp.reference)} (paired two-sided Wilcoxon)",
        "",
        "<details><summary>Full table</summary>",
        "",
        wilcoxon_markdown(wilcoxon_table(res, reference=inp.reference)),
        "</details>",
        "",
    ]
    return "\n".join(lines)


def _robust_section(inp: ReportInputs, rel: Any) -> list[str]:
    """Interquartile means, probabilities of improvement, Holm-adjusted tests, profiles and Pareto views."""
    from iapo_gym.experiments.robust_report import robust_markdown, robust_rows

    res, ref = inp.results, inp.reference
    if ref not in set(res.unique("agent")):
        return []
    rows = robust_rows(res, reference=ref)
    lines = [
        "## Robust statistics (the rliable protocol)",
        "",
        "Means and t-intervals hide outlying runs and skew; following Agarwal et al. (2021, \"Deep RL at the",
        "edge of the statistical precipice\") every cell below gives the **interquartile mean (IQM)** of the",
        "runs' regret (oracle ACR minus exact test ACR, lower is better) with a 95% bootstrap interval, the",
        f"**probability of improvement** P(the agent's regret < {label(ref)}'s on a random pair of runs; ties",
        "count one half) with its bootstrap interval, and the paired two-sided Wilcoxon p-value **Holm-adjusted**",
        f"within its family: all comparisons against {label(ref)} on one task (agents x budgets). ▲ / ▼: better /",
        f"worse than {label(ref)} at the Holm-adjusted 5% level. Computed with `iapo_gym.experiments.robust_stats`",
        "(scipy's `trim_mean`, `bootstrap`, `wilcoxon`; 2,000 resamples).",
        "",
    ]
    if "profile_plot" in inp.figures:
        lines += [f"![Performance profiles]({rel(inp.figures['profile_plot'])})", ""]
    if "pareto_plot" in inp.figures:
        lines += [f"![Pareto view: quality against completions]({rel(inp.figures['pareto_plot'])})", ""]
    lines += robust_markdown(res, rows, label, short_env, reference=ref)
    return lines


def _verdict_matrix(claims: list[ClaimResult]) -> list[str]:
    envs = list(dict.fromkeys(c.env for c in claims))
    names = list(dict.fromkeys(c.claim for c in claims))
    cell = {(c.claim, c.env): c.verdict for c in claims}
    lines = ["| claim | " + " | ".join(short_env(e) for e in envs) + " |", "|---|" + "---|" * len(envs)]
    for i, n in enumerate(names, start=1):
        lines.append(f"| {i}. {n} | " + " | ".join(cell.get((n, e), "–") for e in envs) + " |")
    return lines + [""]


def write_report(inp: ReportInputs, path: str | Path) -> Path:
    """Render and atomically write the report to ``path``."""
    path = Path(path)
    return atomic_write_text(path, render_report(inp, path))
