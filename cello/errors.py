"""User-facing errors.

A `CelloError` is bad input or a bad setting that the user can fix: its message names the
file or field, the problem and the fix. The CLI prints it without a traceback and exits 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CelloError(Exception):
    """An error the user can fix; the message says what and how."""


class InputError(CelloError):
    """Bad input data (a file, a column, a field)."""


class ConfigError(CelloError):
    """A bad setting in params.yaml or on the command line."""


class UpstreamError(CelloError):
    """A remote server (model endpoint, API) answered with an error or could not be reached.

    `status_code` is the last HTTP status (None when no answer came), so callers can tell a
    refused request (4xx) from an outage without parsing the message.
    """

    def __init__(self, msg: str, *, status_code: int | None = None):
        super().__init__(msg)
        self.status_code = status_code


class MissingDependencyError(CelloError, ImportError):
    """An optional dependency is not installed; the message names the extra."""
