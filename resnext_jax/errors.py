"""The project's own errors for requests that cannot be done as asked: the command lines
answer them with their message alone (no traceback) and exit status 2."""

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn


class UsageError(ValueError):
    """An unknown name, a missing or unusable path, a value that does not fit; the message
    names the problem and what to change."""


def verbose() -> bool:
    """``RESNEXT_VERBOSE=1``: tracebacks and the libraries' own logs on the console."""
    return os.environ.get("RESNEXT_VERBOSE", "") not in ("", "0")


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """``main()``, with a usage error (or a missing file) answered in one line on stderr and
    exit status 2; ``RESNEXT_VERBOSE=1`` shows the traceback instead."""
    try:
        return main()
    except (UsageError, FileNotFoundError) as err:
        if verbose():
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one line naming the problem, exit status 2 (argparse's
    own prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """An argparse ``type``: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value
