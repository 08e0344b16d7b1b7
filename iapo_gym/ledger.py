"""The budget ledger: completions spent against a fixed training budget.

The budget unit is one LLM completion; a pull of ``(p, N)`` costs ``N``. Live runs also record
tokens. A charge that does not fit is refused *before* anything is spent or sampled.

The ledger is thread-safe: :meth:`BudgetLedger.charge` checks and adds under one lock, so threads
sharing a ledger (the sub-envs of one vectorised run, an agent pulling from several threads) can
never overspend together. One ledger object may be shared by several envs (``budget=ledger``): the
run's budget is then one budget, whatever the number of envs.

Processes: a ledger sent to another process (pickled) would become an independent copy with its
own budget. A ledger made by user code (to be shared) is therefore refused when pickled (SB3's ``SubprocVecEnv``,
Gymnasium's ``AsyncVectorEnv``); see ``docs/RL_LIBRARIES.md`` for what to do instead.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any

from iapo_gym._checks import whole_number

__all__ = ["BudgetExceededError", "BudgetLedger", "LedgerGroup", "ProcessBudgetLedger", "charge_many"]

# Taken by every multi-ledger charge before it takes the ledgers' own locks: two such charges never
# hold locks of one another's ledgers in opposite orders, and a single charge holds one lock only.
_MANY_LOCK = threading.Lock()


class BudgetExceededError(RuntimeError):
    """A pull asked for more completions than the ledger has left."""


class BudgetLedger:
    """Completions spent against ``budget`` (``None`` = unlimited); thread-safe.

    The counters are read-only: only :meth:`charge`, :meth:`charge_at_most`, :meth:`record_tokens`
    and :meth:`reset` change them.

    Args:
        budget: total completions allowed (a whole number ``>= 0``), or ``None``.
    """

    __slots__ = ("_budget", "_spent", "_lifetime", "_prompt_tokens", "_completion_tokens", "_lock", "_shared")

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None:
            try:
                budget = whole_number(budget, "budget", minimum=0)
            except (TypeError, ValueError):
                msg = f"budget must be a non-negative whole number of completions (or None); got {budget!r}"
                raise ValueError(msg) from None
        self._budget = budget
        self._spent = 0
        self._lifetime = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._lock = threading.Lock()
        self._shared = True  # a ledger made by user code is meant to be shared; envs make theirs with owned()

    @staticmethod
    def across_processes(budget: int | None = None) -> ProcessBudgetLedger:
        """A ledger that several processes share (subprocess vector envs); see :class:`ProcessBudgetLedger`."""
        return ProcessBudgetLedger(budget)

    @classmethod
    def owned(cls, budget: int | None = None) -> BudgetLedger:
        """A ledger private to one env (what ``IAPOEnv(budget=T)`` makes); copies of the env copy it."""
        out = cls(budget)
        out._shared = False
        return out

    # ------------------------------------------------------------------ read-only state
    @property
    def budget(self) -> int | None:
        """Total completions allowed, or ``None`` (unlimited)."""
        return self._budget

    @property
    def spent(self) -> int:
        """Completions charged since the last :meth:`reset`."""
        return self._spent

    @property
    def lifetime_spent(self) -> int:
        """Completions charged since the ledger was made (:meth:`reset` does not clear it)."""
        return self._lifetime

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens recorded by live backends since the last :meth:`reset`."""
        return self._prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Completion tokens recorded by live backends since the last :meth:`reset`."""
        return self._completion_tokens

    @property
    def tokens(self) -> int:
        """Tokens recorded so far (prompt + completion; 0 for simulated pulls)."""
        return self._prompt_tokens + self._completion_tokens

    @property
    def remaining(self) -> int | None:
        """Completions left, or ``None`` when unlimited."""
        b = self._budget
        return None if b is None else b - self._spent

    def __repr__(self) -> str:
        return f"BudgetLedger(budget={self._budget}, spent={self._spent}, tokens={self.tokens})"

    # ------------------------------------------------------------------ queries
    def fits(self, n: int) -> bool:
        """Whether a charge of ``n`` completions fits now.

        Another thread may charge before you do: :meth:`charge` is the atomic check-and-charge.
        """
        n = whole_number(n, "n", minimum=0)
        return self._budget is None or self._spent + n <= self._budget

    def affordable_n(self, n_max: int) -> int:
        """Largest ``N <= n_max`` a single pull can still afford (0 when none)."""
        n_max = whole_number(n_max, "n_max", minimum=0)
        return n_max if self._budget is None else max(0, min(n_max, self._budget - self._spent))

    # ------------------------------------------------------------------ charges
    def charge(self, n: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Atomically check and record ``n`` completions (and tokens).

        Raises:
            BudgetExceededError: ``n`` does not fit; nothing is charged.
            TypeError, ValueError: ``n`` or a token count is not a whole number ``>= 0``; nothing is charged.
        """
        n = self._count(n, "n (completions to charge)")
        pt = self._count(prompt_tokens, "prompt_tokens")
        ct = self._count(completion_tokens, "completion_tokens")
        with self._lock:
            if self._budget is not None and self._spent + n > self._budget:
                raise BudgetExceededError(
                    f"this pull needs {n} completions but only {self._budget - self._spent} of the budget of "
                    f"{self._budget} are left; check env.unwrapped.ledger.remaining (or info['action_mask']) before pulling"
                )
            self._spent += n
            self._lifetime += n
            self._prompt_tokens += pt
            self._completion_tokens += ct

    def charge_at_most(self, n: int) -> int:
        """Atomically charge ``min(n, remaining)`` completions and return how many were charged."""
        n = self._count(n, "n (completions to charge)")
        with self._lock:
            if self._budget is not None:
                n = min(n, self._budget - self._spent)
            self._spent += n
            self._lifetime += n
            return n

    def record_tokens(self, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Add tokens of completions already charged (live backends learn them after generating)."""
        pt = self._count(prompt_tokens, "prompt_tokens")
        ct = self._count(completion_tokens, "completion_tokens")
        with self._lock:
            self._prompt_tokens += pt
            self._completion_tokens += ct

    def _refund(self, n: int) -> None:
        """Take back ``n`` completions charged for a pull that returned no result (the env's own use)."""
        with self._lock:
            back = min(int(n), self._spent)
            self._spent -= back
            self._lifetime -= min(int(n), self._lifetime)

    def reset(self) -> None:
        """Forget all charges and tokens (a new training run); :attr:`lifetime_spent` is kept."""
        with self._lock:
            self._spent = self._prompt_tokens = self._completion_tokens = 0

    @staticmethod
    def _count(value: Any, name: str) -> int:
        return whole_number(value, name, minimum=0)

    # ------------------------------------------------------------------ sharing
    @property
    def shared(self) -> bool:
        """Whether the ledger may be shared by several envs (made by user code, not by :meth:`owned`).

        A shared ledger cannot be pickled into another process.
        """
        return self._shared

    def __getstate__(self) -> dict[str, Any]:
        if self._shared:
            raise TypeError(
                "this BudgetLedger is shared by several envs of one run and cannot be sent to another process "
                "(each process would spend its own copy of the budget); for subprocess vector envs pass "
                "BudgetLedger.across_processes(T), or use DummyVecEnv / gym.make_vec"
            )
        with self._lock:
            return {s: getattr(self, s) for s in self.__slots__ if s != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> BudgetLedger:
        """An independent copy (same budget and counters, not shared)."""
        with self._lock:
            state = {s: getattr(self, s) for s in self.__slots__ if s != "_lock"}
        out = BudgetLedger.__new__(BudgetLedger)
        out.__setstate__({**state, "_shared": False})
        return out


class ProcessBudgetLedger(BudgetLedger):
    """A ledger shared by several processes (SB3's ``SubprocVecEnv``, Gymnasium's ``AsyncVectorEnv``).

    The counters live in a small file guarded by ``fcntl.flock``: every process that unpickles the
    ledger opens the same file, and a charge is one atomic check-and-charge across all of them
    (and across threads). Made with :meth:`BudgetLedger.across_processes`; the file is removed when
    the ledger that made it is garbage collected. POSIX only (Linux, macOS).
    """

    __slots__ = ("_path", "_fd", "_pid", "_owner", "__weakref__")
    _FIELDS = 5  # budget (-1: unlimited), spent, lifetime, prompt tokens, completion tokens

    def __init__(self, budget: int | None = None) -> None:
        import os
        import tempfile
        import weakref

        try:
            import fcntl  # noqa: F401
        except ImportError:  # pragma: no cover - Windows
            raise OSError("a ledger shared between processes needs fcntl (Linux or macOS)") from None
        super().__init__(budget)
        fd, path = tempfile.mkstemp(prefix="iapo-ledger-", suffix=".bin")
        os.write(fd, self._pack(-1 if self._budget is None else self._budget, 0, 0, 0, 0))
        self._path, self._fd, self._pid, self._owner = path, fd, os.getpid(), True
        weakref.finalize(self, _remove_file, path, fd)

    @property
    def path(self) -> str:
        """The file that holds the counters (the same in every process sharing the ledger)."""
        return self._path

    # ------------------------------------------------------------------ file access
    @staticmethod
    def _pack(*values: int) -> bytes:
        import struct

        return struct.pack("<5q", *values)

    def _handle(self) -> int:
        import os

        if self._pid != os.getpid():  # a forked child: its own open file (flock is per open file)
            self._fd, self._pid = os.open(self._path, os.O_RDWR), os.getpid()
        return self._fd

    def _read(self, exclusive: bool = False) -> list[int]:
        import fcntl
        import os
        import struct

        fd = self._handle()
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            return list(struct.unpack("<5q", os.pread(fd, 40, 0)))
        finally:
            if not exclusive:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _update(self, change: Any) -> Any:
        """Apply ``change(values) -> (new values, result)`` atomically across threads and processes."""
        import fcntl
        import os

        with self._lock:
            fd = self._handle()
            values = self._read(exclusive=True)
            try:
                new, result = change(values)
                os.pwrite(fd, self._pack(*new), 0)
                return result
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ the ledger on the file
    @property
    def spent(self) -> int:  # noqa: D102 - the ledger's own
        return self._read()[1]

    @property
    def lifetime_spent(self) -> int:  # noqa: D102
        return self._read()[2]

    @property
    def prompt_tokens(self) -> int:  # noqa: D102
        return self._read()[3]

    @property
    def completion_tokens(self) -> int:  # noqa: D102
        return self._read()[4]

    @property
    def tokens(self) -> int:  # noqa: D102
        v = self._read()
        return v[3] + v[4]

    @property
    def remaining(self) -> int | None:  # noqa: D102
        return None if self._budget is None else self._budget - self.spent

    def fits(self, n: int) -> bool:  # noqa: D102
        n = whole_number(n, "n", minimum=0)
        return self._budget is None or self.spent + n <= self._budget

    def affordable_n(self, n_max: int) -> int:  # noqa: D102
        n_max = whole_number(n_max, "n_max", minimum=0)
        return n_max if self._budget is None else max(0, min(n_max, self._budget - self.spent))

    def charge(self, n: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:  # noqa: D102
        n = self._count(n, "n (completions to charge)")
        pt = self._count(prompt_tokens, "prompt_tokens")
        ct = self._count(completion_tokens, "completion_tokens")

        def change(v: list[int]) -> tuple[list[int], None]:
            if self._budget is not None and v[1] + n > self._budget:
                raise BudgetExceededError(
                    f"this pull needs {n} completions but only {self._budget - v[1]} of the budget of "
                    f"{self._budget} are left; check env.unwrapped.ledger.remaining (or info['action_mask']) before pulling"
                )
            return [v[0], v[1] + n, v[2] + n, v[3] + pt, v[4] + ct], None

        self._update(change)

    def charge_at_most(self, n: int) -> int:  # noqa: D102
        n = self._count(n, "n (completions to charge)")

        def change(v: list[int]) -> tuple[list[int], int]:
            got = n if self._budget is None else min(n, self._budget - v[1])
            return [v[0], v[1] + got, v[2] + got, v[3], v[4]], got

        return int(self._update(change))

    def record_tokens(self, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:  # noqa: D102
        pt = self._count(prompt_tokens, "prompt_tokens")
        ct = self._count(completion_tokens, "completion_tokens")
        self._update(lambda v: ([v[0], v[1], v[2], v[3] + pt, v[4] + ct], None))

    def _refund(self, n: int) -> None:
        k = int(n)
        self._update(lambda v: ([v[0], v[1] - min(k, v[1]), v[2] - min(k, v[2]), v[3], v[4]], None))

    def reset(self) -> None:  # noqa: D102
        self._update(lambda v: ([v[0], 0, v[2], 0, 0], None))

    def __repr__(self) -> str:
        return f"ProcessBudgetLedger(budget={self._budget}, spent={self.spent}, path={self._path!r})"

    # ------------------------------------------------------------------ crossing process boundaries
    def __getstate__(self) -> dict[str, Any]:
        return {"_budget": self._budget, "_path": self._path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import os

        self._budget, self._path = state["_budget"], state["_path"]
        self._spent = self._lifetime = self._prompt_tokens = self._completion_tokens = 0  # unused: the file counts
        self._lock, self._shared, self._owner = threading.Lock(), True, False
        try:
            self._fd = os.open(self._path, os.O_RDWR)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the shared ledger file {self._path} is gone: the process that made the ledger released it; "
                "keep that ledger alive while other processes use it"
            ) from None
        self._pid = os.getpid()

    def __deepcopy__(self, memo: dict[int, Any]) -> ProcessBudgetLedger:
        """The same ledger: a handle to counters shared by processes is not copied."""
        return self


def charge_many(ledgers: Sequence[BudgetLedger], amounts: Sequence[int] | Any) -> None:
    """Charge ``amounts[i]`` completions to ``ledgers[i]`` for every ``i``: all of them or none.

    The many-runs form of :meth:`BudgetLedger.charge`; see :class:`LedgerGroup` (which a caller
    charging the same ledgers repeatedly should keep).

    Raises:
        BudgetExceededError: some ledger cannot take its total; nothing is charged.
        ValueError: ``amounts`` does not hold one whole number ``>= 0`` per ledger; nothing is charged.
    """
    LedgerGroup(ledgers).charge(amounts)


class LedgerGroup:
    """Many ledgers charged together (a batch of training runs charges every run's ledger per step).

    :meth:`charge` checks the amounts once as a whole (whole numbers ``>= 0``), requires every
    ledger to accept its total (a ledger listed twice is charged the sum), then charges all of
    them. Plain ledgers are checked and charged with all their locks held, so no other thread
    charges in between; other ledgers (e.g. :class:`ProcessBudgetLedger`) are checked, then charged
    one by one. The loops over ledgers run in C (``map``): a step of 200 runs costs tens of
    microseconds.

    Args:
        ledgers: the ledgers, in the order of the amounts :meth:`charge` will receive.
    """

    def __init__(self, ledgers: Sequence[BudgetLedger]) -> None:
        import numpy as np

        self.size = len(ledgers)
        first: dict[int, int] = {}
        slot = [first.setdefault(id(led), len(first)) for led in ledgers]
        self._slot = np.asarray(slot, dtype=np.int64)
        self._merge = len(first) < self.size  # a ledger shared by several runs: charge its sum
        self.ledgers: list[BudgetLedger] = list({id(led): led for led in ledgers}.values())
        self._plain = all(type(led) is BudgetLedger for led in self.ledgers)
        if self._plain:
            self._locks = list(map(_LOCK_OF, self.ledgers))
            # read-only after construction: None (unlimited) -> NaN, which no total exceeds
            self._budget = np.array(list(map(_BUDGET_OF, self.ledgers)), dtype=np.float64)

    @property
    def exclusive(self) -> bool:
        """Whether every ledger is a plain :class:`BudgetLedger` listed once (no ledger shared by two slots)."""
        return self._plain and not self._merge

    def charge(self, amounts: Sequence[int] | Any) -> None:
        """Charge ``amounts[i]`` completions to ledger ``i`` of the group: all or none.

        Raises:
            BudgetExceededError: some ledger cannot take its total; nothing is charged.
            ValueError: ``amounts`` does not hold one whole number ``>= 0`` per ledger; nothing is charged.
        """
        import numpy as np

        arr = np.asarray(amounts)
        if arr.shape != (self.size,) or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"amounts must be one whole number per ledger ({self.size}); got shape {arr.shape}")
        if arr.size == 0:
            return
        if int(arr.min()) < 0:
            raise ValueError("amounts must be >= 0 completions")
        totals = arr.astype(np.int64)
        if self._merge:
            totals = np.bincount(self._slot, weights=totals, minlength=len(self.ledgers)).astype(np.int64)
        if not self._plain:
            for led, n in zip(self.ledgers, totals.tolist(), strict=True):
                room = led.remaining
                if room is not None and n > room:
                    raise BudgetExceededError(f"a ledger refuses {n} more completions (remaining: {room})")
            for led, n in zip(self.ledgers, totals.tolist(), strict=True):
                led.charge(n)
            return
        todo, count = self.ledgers, len(self.ledgers)
        with _MANY_LOCK:
            _consume(map(_LOCK_TYPE.acquire, self._locks))
            try:
                spent = np.fromiter(map(_SPENT_OF, todo), dtype=np.int64, count=count)
                new = spent + totals
                over = np.flatnonzero(new > self._budget)
                if over.size:
                    i = int(over[0])
                    raise BudgetExceededError(
                        f"a ledger refuses {int(totals[i])} more completions "
                        f"(remaining: {int(self._budget[i]) - int(spent[i])})"
                    )
                lifetime = np.fromiter(map(_LIFETIME_OF, todo), dtype=np.int64, count=count) + totals
                _consume(map(setattr, todo, repeat("_spent"), new.tolist()))
                _consume(map(setattr, todo, repeat("_lifetime"), lifetime.tolist()))
            finally:
                _consume(map(_LOCK_TYPE.release, self._locks))


def _consume(iterator: Any) -> None:
    deque(iterator, maxlen=0)


_LOCK_TYPE = type(threading.Lock())
_LOCK_OF, _SPENT_OF = attrgetter("_lock"), attrgetter("_spent")
_BUDGET_OF, _LIFETIME_OF = attrgetter("_budget"), attrgetter("_lifetime")


def _remove_file(path: str, fd: int) -> None:
    import contextlib
    import os

    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
