"""Errors with BIDS-App exit codes.

Every error a user can cause is a :class:`KetabidsError` subclass carrying its exit code and a
one-line message that names the offending file and the fix. ``ketabids.cli.main`` prints the
message and returns the code; nothing else in the package calls ``sys.exit``.
"""
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the BIDS-App contract (BIDS execution spec draft, sysexits.h)."""

    SUCCESS = 0
    FAILURE = 1
    VALIDATION_FAILED = 16
    UNKNOWN_LEVEL = 17
    NO_DATA = 18
    USAGE = 64
    BAD_DATA = 65
    NO_INPUT = 66
    CANT_CREATE = 73


class KetabidsError(Exception):
    """Base class: a user-facing, one-line error with an exit code."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message, exit_code=None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = ExitCode(exit_code)


class BIDSValidationError(KetabidsError):
    """The input dataset failed the BIDS validator."""

    exit_code = ExitCode.VALIDATION_FAILED


class UnknownLevelError(KetabidsError):
    """The analysis level is neither ``participant`` nor ``group``."""

    exit_code = ExitCode.UNKNOWN_LEVEL


class NoDataError(KetabidsError):
    """The filters (labels, sessions, filter file) selected no data."""

    exit_code = ExitCode.NO_DATA


class UsageError(KetabidsError):
    """Options that cannot work together or have invalid values."""

    exit_code = ExitCode.USAGE


class BadDataError(KetabidsError):
    """An input file exists but its content is unusable (4D T1w, NaNs, bad TSV...)."""

    exit_code = ExitCode.BAD_DATA


class MissingInputError(KetabidsError):
    """A required input (dataset, template, model, column) does not exist."""

    exit_code = ExitCode.NO_INPUT


class OutputError(KetabidsError):
    """The output (or work) directory cannot be created or written."""

    exit_code = ExitCode.CANT_CREATE


class OutputExistsError(OutputError):
    """The destination (e.g. ``group/train``) exists and replacing it was not asked for."""


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived (raised by the handler that
    :func:`ketabids.runner.signals.run_temp_dir` installs).

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` in the pipeline does
    not swallow it and every ``finally`` on the way out runs; the command line prints one line
    and exits with ``128 + signal`` (143 for SIGTERM; the shell convention, so it is not an
    :class:`ExitCode` member, which lists the codes of the Boutiques descriptor).
    """

    def __init__(self, signum: int = 15):
        import signal

        self.signum = int(signum)
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"terminated by {name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
