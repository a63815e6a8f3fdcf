"""The command line: ``python -m llmops_workloads.training --config config.yaml``.

It turns every outcome into an exit code the operator can classify (``errors``), a one-line
reason on stderr, a last JSON log line, the progress file and the termination message. Signal
handlers go in first, before torch is imported: a SIGTERM while the model loads still ends in an
orderly, resumable exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ..common import logs
from .errors import EXIT_CRASH, EXIT_PERMANENT, PermanentError

log = logging.getLogger("llmops.training")
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


def main(argv: list[str] | None = None) -> int:
    from .loop import StopFlag

    parser = argparse.ArgumentParser(prog="python -m llmops_workloads.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config file (what the operator mounts)")
    args = parser.parse_args(argv)
    stop = StopFlag().install()

    from .config import load_config
    from .progress import Progress, ProgressServer, write_termination_message

    try:
        cfg = load_config(args.config)
    except PermanentError as e:
        logs.configure("json")
        return _fail(EXIT_PERMANENT, "failed", str(e), DEFAULT_TERMINATION_PATH, None, type(e).__name__)
    logs.configure(cfg.log_format, cfg.log_level)
    logging.captureWarnings(True)  # library warnings become log lines, not raw stderr
    _quiet_libraries()
    termination = cfg.progress.termination_message_path
    progress = Progress(cfg.progress_file)
    server = None
    try:
        if cfg.progress.port:
            server = ProgressServer(progress, cfg.progress.host, cfg.progress.port).start()
            log.info("progress endpoint", extra={"port": server.port})
        progress.write_file()
        from .loop import train

        outcome = train(cfg, progress, stop)
    except PermanentError as e:
        return _fail(EXIT_PERMANENT, "failed", str(e), termination, progress, type(e).__name__)
    except Exception as e:
        log.exception("trainer crashed")
        return _fail(EXIT_CRASH, "crashed", f"{type(e).__name__}: {e}", termination, progress)
    finally:
        if server is not None:
            server.stop()
    # The last loss, epoch and learning rate too: the operator may never have reached the progress port.
    last = {"loss": progress.loss, "epoch": progress.epoch, "learningRate": progress.learning_rate}
    summary = {**last, **outcome.summary, "exitCode": outcome.exit_code}
    write_termination_message(termination, summary, DEFAULT_TERMINATION_PATH)
    scalars = {k: v for k, v in summary.items() if isinstance(v, str | int | float | type(None)) and k != "message"}
    log.info(f"done: {summary['status']}", extra={**scalars, "outcome": summary.get("message")})
    return outcome.exit_code


def _fail(code: int, status: str, message: str, termination: str, progress: Any, error: str | None = None) -> int:
    """One line on stderr and in the log, the progress file, the termination message."""
    from .progress import write_termination_message

    first = message.splitlines()[0] if message else status
    print(f"error: {first}", file=sys.stderr, flush=True)
    log.error(first, extra={"exit_code": code, "permanent": code == EXIT_PERMANENT})
    summary: dict[str, Any] = {
        "status": status,
        "exitCode": code,
        "permanent": code == EXIT_PERMANENT,
        "message": first,
    }
    if error:  # the class (DatasetError, ConfigError, ModelNotFoundError, ...): the operator's condition reason
        summary["error"] = error
    if progress is not None:
        progress.state, progress.message = "failed", first
        progress.write_file()
        summary.update(step=progress.step, totalSteps=progress.total_steps, checkpointStep=progress.checkpoint_step)
    write_termination_message(termination, summary, DEFAULT_TERMINATION_PATH)
    return code


def _quiet_libraries() -> None:
    """Progress bars and load reports are not log lines."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    except ImportError:  # pragma: no cover
        pass
