"""User-facing errors: each names the file or value at fault and what is wrong with it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class FactoryError(Exception):
    """Base of every error that the CLI and jobs print as one line and exit non-zero on."""


class InputError(FactoryError):
    """A user-supplied file or value is unreadable, malformed or implausible."""


class StoreError(FactoryError):
    """A store is missing, incomplete, corrupt, or the output path is already used."""


class BundleError(FactoryError):
    """A model bundle is missing weights, was built for another preset, or is not safetensors."""


def factory_cause(err: BaseException | None) -> FactoryError | None:
    """The FactoryError behind `err` along Ray's `cause` attribute and Python's exception chain, if any.

    Ray re-raises a worker's exception as a RayTaskError subclass of it whose text holds the remote
    traceback; the original, with its one-line message, is its `cause`. Ray Train keeps each failed
    worker's exception in `worker_failures` (by rank).
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, FactoryError) and type(err).__module__ == __name__:
            return err
        for _, failure in sorted((getattr(err, "worker_failures", None) or {}).items()):
            if (cause := factory_cause(failure)) is not None:
                return cause
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


@contextmanager
def unwrapped() -> Iterator[None]:
    """Re-raise a FactoryError that Ray wrapped (task, actor, Ray Data and Ray Train errors) as itself."""
    try:
        yield
    except Exception as err:
        cause = factory_cause(err)
        if cause is None or cause is err:
            raise
        raise cause from None


def exit_status(prog: str, action: Callable[[], int | None]) -> int:
    """Run `action` for a command line: its return value (None is 0), or, when it raises a FactoryError,
    2 after one line `prog: error: message` on stderr (the user sees what is wrong, not a traceback)."""
    try:
        return int(action() or 0)
    except FactoryError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`factory info S | head`): not a failure of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 0
