"""The one exception hierarchy of reels. Every layer raises these (this module sits in the lowest layer so
all can import it); callers catch ``ReelsError``. The CLI turns each into a one-line message and the
class's ``exit_code``; any other exception is a bug and ends with its traceback.

==========  ===================================================================================
exit code   meaning
==========  ===================================================================================
0           success
1           a check ran and said no (drift found, the promotion gate rejected a candidate,
            a promotion was rolled back)
2           bad input: configuration, command-line values, a data batch, a request
3           something the command needs does not exist yet (no data, features or models; no GPU)
4           a service is unreachable (Redis, Triton)
70          a bug: an unexpected exception (the traceback is printed)
130         interrupted (Ctrl-C)
==========  ===================================================================================
"""

from __future__ import annotations


class ReelsError(Exception):
    """Base of every error reels raises on purpose."""

    exit_code = 2


class CheckFailed(ReelsError):
    """A check ran and its answer is no (drift above the threshold, a gate that rejected a candidate)."""

    exit_code = 1


class InvalidInput(ReelsError, ValueError):
    """Bad input from the caller: a config value, a data batch, a request."""

    exit_code = 2


class ConfigError(InvalidInput):
    """An unknown, mistyped or out-of-range configuration value."""


class AlreadyExists(ReelsError, FileExistsError):
    """Refusing to overwrite something without being told to."""

    exit_code = 2


class NotFound(ReelsError, LookupError):
    """A prerequisite is missing: data, features, trained models, a release, a namespace."""

    exit_code = 3


class ServiceUnavailable(ReelsError, ConnectionError):
    """A service (Redis, Triton) does not answer."""

    exit_code = 4


BUG_EXIT_CODE = 70
INTERRUPTED_EXIT_CODE = 130
