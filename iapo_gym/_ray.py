"""Ray, imported lazily and started once, for the two places that use it (sweeps and table builds).

Ray is an optional extra (``iapo-gym[ray]``); nothing imports it at module level.
"""

from __future__ import annotations

from typing import Any


def import_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra to install."""
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError("--executor ray needs Ray: pip install 'iapo-gym[ray]'") from None
    return ray


def ensure_ray(address: str = "", num_cpus: int | None = None) -> tuple[Any, bool]:
    """``(ray, started)``: join the cluster at ``address`` (or start a local one) unless Ray already runs.

    ``started`` says whether this call started it, so the caller that started Ray shuts it down.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray, True
