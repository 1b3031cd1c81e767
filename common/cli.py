"""The one wrapper around every command-line entry point (``python -m …`` and the ``polypseg-*`` console scripts).

Each command defines ``main(argv) -> int`` and ends with::

    cli = entry(main)          # the console script
    if __name__ == "__main__":
        cli()

The wrapper prints warnings as one ``warning: …`` line each (once), a :class:`common.errors.UserError` or an
``OSError`` (disk full, permission denied, …) as one ``error: …`` line with exit status 1, Ctrl-C as
``interrupted (SIGINT)`` with status 130 and SIGTERM as ``terminated (SIGTERM)`` with status 143 — both raised as
exceptions in the main thread, so every ``finally`` and context manager runs (temporary files and folders are
removed, half-written outputs never published); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
import warnings
from typing import Callable, Sequence

from .errors import UserError

__all__ = ["Terminated", "cli_warnings", "entry", "run"]

Main = Callable[[Sequence[str] | None], int]


def cli_warnings() -> None:
    """A warning prints as one ``warning: …`` line (no source line echoed), each once."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"  # noqa: ARG005
    warnings.simplefilter("once", UserWarning)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return f"{e.strerror}{where}: the disk is full or a file-size limit was hit (nothing was kept); free space " \
               "or write elsewhere"
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror or e}: {e.filename}"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or type(e).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (a subclass of KeyboardInterrupt: the same clean-up paths run)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated("SIGTERM")


def run(main: Main, argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` as a command: exit status, one-line errors, one-line warnings, clean stops on signals."""
    cli_warnings()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Terminated:
        print("terminated (SIGTERM): nothing half-written was kept", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted (SIGINT): nothing half-written was kept", file=sys.stderr)
        return 130


def entry(main: Main) -> Callable[[], None]:
    """A console-script function for ``main`` (``[project.scripts]`` in pyproject.toml)."""

    def cli() -> None:
        raise SystemExit(run(main))

    cli.__doc__ = main.__doc__
    return cli
