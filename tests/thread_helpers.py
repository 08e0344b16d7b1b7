"""Helpers that force thread interleavings in concurrency tests."""

from __future__ import annotations


def yield_on_every_line(*modules: object):
    """A ``threading.settrace`` hook that hands the GIL to another thread on every line of ``modules``.

    Forces the interleavings a check-then-charge race needs (without it a tiny critical section
    almost never interleaves); a lock-free ledger overspends in most trials under it.
    """
    import time

    files = {getattr(m, "__file__", None) for m in modules}

    def local(frame, event, arg):
        if event == "line":
            time.sleep(0)
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename in files else None

    return tracer


def run_threads(target, n_threads: int, tracer) -> None:
    import threading

    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as err:  # noqa: BLE001  (re-raised in the main thread below)
            errors.append(err)

    threading.settrace(tracer)
    try:
        threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        threading.settrace(None)
    if errors:
        raise errors[0]
