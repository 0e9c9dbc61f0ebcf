"""The ``restore`` entry point: CPU settings that must exist before Python starts, then the CLI.

glibc's malloc returns large activation buffers to the kernel after every layer and page-faults them
back in on the next; raising its mmap and trim thresholds made a 15-layer conv net 2× faster on the
reference CPU. Those tunables are read only at process start, so the launcher sets them and re-executes
itself once (``RESTORE_NO_REEXEC=1`` disables that).
"""

from __future__ import annotations

import os
import platform
import sys

GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def _needs_reexec() -> bool:
    if os.environ.get("RESTORE_NO_REEXEC") or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    return "glibc.malloc.mmap_threshold" not in os.environ.get("GLIBC_TUNABLES", "")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if argv is None and _needs_reexec():
        env = dict(os.environ)
        current = env.get("GLIBC_TUNABLES")
        env["GLIBC_TUNABLES"] = f"{current}:{GLIBC_TUNABLES}" if current else GLIBC_TUNABLES
        env["RESTORE_NO_REEXEC"] = "1"
        try:
            os.execve(sys.executable, [sys.executable, "-m", "restore_app", *args], env)
        except OSError:
            pass  # run without the tunables rather than not at all
    from restore_app.cli.main import main as cli_main

    return cli_main(args)
