"""What every `stripread` command shares with the person at the terminal: the exit codes, a
progress bar and a prompt. Exit codes: 0 ok, 1 the reading was refused (an error code of the
result schema), 2 bad usage or an unusable card/product file, 3 an internal error."""
from __future__ import annotations

import sys

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def progress(done: int, total: int) -> None:
    """A one-line progress bar on stderr."""
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr, flush=True)


def prompt(args, message: str) -> None:
    """Ask the technician to do something and wait for Enter (unless --yes or not at a terminal)."""
    if args.yes or not sys.stdin.isatty():
        print(message + ".")
    else:
        input(message + ", then press Enter: ")
