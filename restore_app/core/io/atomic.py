"""Atomic output: write to a hidden temporary name in the destination folder, then rename.

A killed process leaves at most a ``.NAME.*.partial.EXT`` file behind, never a truncated file under
the final name, and an existing output is replaced in one step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from restore_app.core.errors import OutputError

PARTIAL_MARK = ".partial"


def check_not_overwriting(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """Raise :class:`OutputError` if ``output`` is the same file as any of ``inputs``."""
    out = Path(output).resolve()
    for inp in inputs:
        inp_path = Path(inp)
        same = out == inp_path.resolve()
        if not same and out.exists() and inp_path.exists():
            same = os.path.samefile(out, inp_path)
        if same:
            raise OutputError(f"{output}: refusing to overwrite the input file")


def check_output_dir(path: str | Path) -> Path:
    """Return the output's folder, or raise if it is missing or not writable."""
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise OutputError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: output folder {parent} is not writable")
    return parent


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same extension; rename it on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and the
    destination is left untouched.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_output(d / "out.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "out.txt").read_text()
    'done'
    """
    path = Path(path)
    parent = check_output_dir(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{PARTIAL_MARK}{path.suffix}",
                                        dir=parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create a file in {parent}: {exc.strerror}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
