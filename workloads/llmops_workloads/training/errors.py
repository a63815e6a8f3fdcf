"""Exit codes and the errors that choose them.

The operator classifies a finished trainer pod from its exit code alone (a Job's
``podFailurePolicy`` can match them too): retrying a permanent error only burns GPU hours, and a
preempted run must be retried without counting against the Job's backoff limit.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CRASH = 1  # any unexpected exception: retryable (anything not listed here is retryable)
EXIT_PERMANENT = 42  # bad config, bad data, model not found, QLoRA without GPU: retrying cannot help
EXIT_PREEMPTED = 143  # SIGTERM: a checkpoint was saved (128 + SIGTERM, what Kubernetes reports anyway)


class PermanentError(Exception):
    """Retrying with the same inputs fails the same way: exit ``EXIT_PERMANENT``. The message is
    one line a person can act on (it names the file and line where there is one)."""


class ConfigError(PermanentError):
    pass


class DatasetError(PermanentError):
    pass


class ModelNotFoundError(PermanentError):
    pass


class UnsupportedError(PermanentError):
    """The request cannot run on this pod (QLoRA without a GPU or bitsandbytes)."""
