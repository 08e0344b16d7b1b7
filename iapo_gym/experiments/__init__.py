"""The experiment runner's helpers (``train.py`` drives them; each module has one job).

* :mod:`~iapo_gym.experiments.cliargs`  dataclass -> argparse, field docstrings become the help
* :mod:`~iapo_gym.experiments.agentspec` agents by zoo name, entry point or import path; hyper-parameters
* :mod:`~iapo_gym.experiments.progress` the progress line (runs done / total, agent-weighted ETA)
* :mod:`~iapo_gym.experiments.threads`  torch / BLAS thread limits (``--threads``)
* :mod:`~iapo_gym.experiments.evaluate` exact test-split metrics of fitted policies
* :mod:`~iapo_gym.experiments.results`  results.csv schema, crash-safe appends, resume
* :mod:`~iapo_gym.experiments.tblog`    TensorBoard scalars, policies and hyper-parameters
* :mod:`~iapo_gym.experiments.stats`    confidence intervals and paired Wilcoxon tables
* :mod:`~iapo_gym.experiments.plots`    PNG figures (ACR against budget, chosen N against cost)
* :mod:`~iapo_gym.experiments.report`   the paper's claims checked on the numbers, REPRODUCTION.md
"""
