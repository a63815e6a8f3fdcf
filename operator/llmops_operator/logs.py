"""Structured JSON logs for the operator: the same formatter as the workloads'
(``llmops_workloads.common.logs``, stdlib only). Secrets never reach a log line: specs hold only
references to them."""

from __future__ import annotations

import logging

from llmops_workloads.common import logs


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    logs.configure(fmt, level)
    # kopf is chatty at INFO about every watch; keep its warnings.
    logging.getLogger("kopf").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
