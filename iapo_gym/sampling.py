"""Vectorised draws of LLM completions from an outcome table.

``Pulls`` is the one record of raw outcomes that the sampler, the environment, the live backends
and the utilities exchange. A batch of ``B`` pulls is padded to a common width ``L``; ``mask``
marks the real completions (the first ``n[b]`` of row ``b``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, eq=False)
class Pulls:
    """Raw outcomes of ``B`` pulls, padded to width ``L``.

    Attributes:
        strategy: ``"mv"`` or ``"bon"``.
        prompt, n, query: ``(B,)`` int64 prompt index, completions drawn, query index.
        outcome: ``(B, L)`` int64, the answer category (MV) or outcome index (BoN); -1 where masked.
        values: ``(B, L, K)`` float64 objective values per completion (MV: 1.0 when the answer is
            the gold one); 0 where masked.
        cost: ``(B, L)`` float64 cost of each completion; 0 where masked.
        gold: ``(B,)`` int64 gold category (MV); -1 for BoN.
        mask: ``(B, L)`` bool, True for real completions.
        n_categories: answer categories ``A`` (MV), outcomes ``M`` (BoN).
    """

    strategy: str
    prompt: NDArray[np.int64]
    n: NDArray[np.int64]
    query: NDArray[np.int64]
    outcome: NDArray[np.int64]
    values: NDArray[np.float64]
    cost: NDArray[np.float64]
    gold: NDArray[np.int64]
    mask: NDArray[np.bool_]
    n_categories: int

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    @property
    def width(self) -> int:
        """Padded width ``L``."""
        return int(self.mask.shape[1])

    @property
    def completions(self) -> int:
        """Total completions in the batch (its budget charge)."""
        return int(self.n.sum())
