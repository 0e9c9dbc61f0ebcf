"""Progress bars for the command line (to stderr, quiet when it is not a terminal)."""

from __future__ import annotations

import sys

from tqdm import tqdm


class ProgressBar:
    """A ``progress(done, total)`` callback that drives a tqdm bar; use as a context manager."""

    def __init__(self, description: str, unit: str = "step", enabled: bool | None = None) -> None:
        self._enabled = sys.stderr.isatty() if enabled is None else enabled
        self._desc, self._unit = description, unit
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=total or None, desc=self._desc, unit=self._unit, leave=False,
                             dynamic_ncols=True, file=sys.stderr)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def postfix(self, **values) -> None:
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
