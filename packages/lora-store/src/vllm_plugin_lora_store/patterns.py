"""Adapter-controlled regexes (``target_modules``, ``rank_pattern`` keys), bounded.

Python's ``re`` backtracks and holds the GIL while it does: ``(a+)+$`` against
30 characters blocks every thread of the API server for minutes. Here every
pattern runs on the ``regex`` module (a vLLM dependency), which releases the
GIL while matching ``str`` and takes a ``timeout``; all matches of one adapter
share one time budget (:data:`MATCH_BUDGET_SECONDS`). An adapter whose
patterns do not finish inside the budget is refused (``bad-config``).

Semantics are those of PEFT and vLLM: a ``target_modules`` string must
``fullmatch`` the module name; a ``rank_pattern`` key matches as vLLM's
``PEFTHelper._match_pattern`` does, ``(.*\\.)?(<key>)$`` (grouped, so a key
with ``|`` cannot match other modules), first key wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import regex

__all__ = [
    "MATCH_BUDGET_SECONDS",
    "MAX_PATTERNS",
    "MAX_PATTERN_CHARS",
    "PatternBudget",
    "PatternTooSlow",
    "rank_matcher",
]

#: Total matching time allowed for one adapter (all its modules and keys).
#: ``regex`` counts its timeout in CPU time; wall time on a loaded machine is longer.
MATCH_BUDGET_SECONDS = 0.01
#: Longest pattern accepted (a ``target_modules`` string or one ``rank_pattern`` key).
MAX_PATTERN_CHARS = 1024
#: Most ``rank_pattern`` keys accepted.
MAX_PATTERNS = 1024


class PatternTooSlow(Exception):
    """The adapter's patterns did not finish inside the budget."""


class PatternBudget:
    """One adapter's matching budget; ``compile`` and match through it."""

    def __init__(self, seconds: float = MATCH_BUDGET_SECONDS) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PatternTooSlow
        return left

    def compile(self, pattern: str) -> Any:
        """Compile (``ValueError`` when too long or invalid)."""
        if len(pattern) > MAX_PATTERN_CHARS:
            raise ValueError(f"it is longer than {MAX_PATTERN_CHARS} characters")
        self._left()
        try:
            return regex.compile(pattern)
        except (regex.error, OverflowError, RecursionError) as exc:
            raise ValueError(str(exc)) from None

    def fullmatch(self, compiled: Any, text: str) -> bool:
        try:
            return compiled.fullmatch(text, timeout=self._left()) is not None
        except TimeoutError:
            raise PatternTooSlow from None

    def match(self, compiled: Any, text: str) -> bool:
        try:
            return compiled.match(text, timeout=self._left()) is not None
        except TimeoutError:
            raise PatternTooSlow from None


def rank_matcher(budget: PatternBudget, keys: Iterable[str]) -> Callable[[str], int | None]:
    """``module -> index of the first matching key`` (None: no key matches).

    Raises ``ValueError`` naming the key that does not compile.
    """
    compiled: list[Any] = []
    for i, key in enumerate(keys):
        if regex.escape(key, special_only=True) == key:  # a plain name: a suffix test, no engine
            compiled.append(key)
            continue
        try:
            compiled.append(budget.compile(rf"(.*\.)?({key})$"))
        except ValueError as exc:
            raise ValueError(f"rank_pattern key {key!r} is not a valid regex: {exc}") from None
        if i >= MAX_PATTERNS:
            raise ValueError(f"rank_pattern has more than {MAX_PATTERNS} keys")

    def first(module: str) -> int | None:
        for i, c in enumerate(compiled):
            if isinstance(c, str):
                if module == c or module.endswith("." + c):
                    return i
            elif budget.match(c, module):
                return i
        return None

    return first
