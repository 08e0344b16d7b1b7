"""Checkout entry point of the experiment runner; an installed package runs it as ``iapo-gym train``.

The runner itself is :mod:`iapo_gym.experiments.train` (``python train.py --help`` lists every option).
"""

import sys

from iapo_gym.experiments.train import main

if __name__ == "__main__":
    sys.exit(main())
