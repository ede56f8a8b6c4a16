"""`consistency-worker <stage> --config <uri|path|env:VAR|->`: run one stage and hand back its result.

The compact result (<= 4 KiB JSON) goes to --result-file, $CONSISTENCY_RESULT_FILE or the container
termination-message path /dev/termination-log (when it exists), and on stdout's last line. Exit codes:
EXIT_OK, EXIT_PERMANENT (bad config or data: do not retry), EXIT_RETRYABLE (transient: retry).
Everything heavy is imported lazily, so `--help` stays fast and never loads torch."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

from consistency_core.spec import StageName
from consistency_core.stage_wire import EXIT_OK, EXIT_PERMANENT, EXIT_RETRYABLE, StageConfig, StageResult

from consistency_worker.runtime.pod_limits import limit_thread_pools

STAGE_CHOICES = tuple(s.value for s in StageName)
ENV_RESULT_FILE = "CONSISTENCY_RESULT_FILE"
DEFAULT_TERMINATION_PATH = Path("/dev/termination-log")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "HF_TOKEN")

log = logging.getLogger("consistency_worker")


class ConfigError(Exception):
    """The stage config cannot be read or is invalid (permanent)."""


PREEMPTED_MESSAGE = "terminated by SIGTERM (pod eviction or Job deletion)"


class Preempted(Exception):
    """SIGTERM: the pod is being evicted or the Job deleted; another attempt can resume."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consistency-worker",
        description="Run one stage of a self-consistency fine-tuning campaign.",
        epilog=f"Exit codes: {EXIT_OK} ok, {EXIT_PERMANENT} permanent failure (bad config/data), "
        f"{EXIT_RETRYABLE} retryable failure (store unreachable, OOM, preemption).",
    )
    parser.add_argument("stage", choices=STAGE_CHOICES, help="Stage to run.")
    parser.add_argument("--config", required=True,
                        help="StageConfig JSON: s3://..., file://..., a path, env:VAR or - (stdin).")
    parser.add_argument("--shard", default=None,
                        help="This process's shard as i/n (default: JOB_COMPLETION_INDEX, else 0/1).")
    parser.add_argument("--result-file", default=None,
                        help=f"Where to write the compact result (default: ${ENV_RESULT_FILE}, "
                        f"else {DEFAULT_TERMINATION_PATH} when it exists).")
    parser.add_argument("--scratch-dir", default=None, help="Scratch directory (default: a new temp dir).")
    parser.add_argument("--log-level", default=os.environ.get("CONSISTENCY_LOG_LEVEL", "INFO"),
                        help="Logging level (default INFO).")
    return parser


def read_config_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    if source.startswith("env:"):
        name = source[4:]
        if name not in os.environ:
            raise ConfigError(f"--config {source}: environment variable {name} is not set")
        return os.environ[name]
    from consistency_worker.store.errors import StoreNotFound
    from consistency_worker.store.facade import read_text

    try:
        return read_text(source)
    except StoreNotFound:
        raise ConfigError(f"--config: {source} does not exist") from None


def parse_config(text: str, source: str) -> StageConfig:
    from pydantic import ValidationError

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {source}: not valid JSON: {exc}") from None
    try:
        return StageConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            problems.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid stage config: " + "; ".join(problems)) from None


def redact(text: str) -> str:
    """Defence in depth: no credential value from the environment ever leaves in a message."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record, tracebacks included (an exception's text may hold a secret)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def classify(exc: BaseException) -> bool:
    """True when another attempt may succeed (EXIT_RETRYABLE), False for permanent failures."""
    from consistency_worker.stages import StageFailure
    from consistency_worker.store.errors import StoreError

    if isinstance(exc, StageFailure | StoreError):
        return exc.retryable
    if isinstance(exc, ConfigError):
        return False
    if isinstance(exc, Preempted | MemoryError | KeyboardInterrupt):
        return True
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        return True
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return False
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True
    # Data/programming errors: the same input fails the same way again.
    return not isinstance(exc, ValueError | LookupError | TypeError | AttributeError | NotImplementedError)


def termination_path(cli_value: str | None) -> Path | None:
    if cli_value:
        return Path(cli_value)
    if os.environ.get(ENV_RESULT_FILE):
        return Path(os.environ[ENV_RESULT_FILE])
    return DEFAULT_TERMINATION_PATH if DEFAULT_TERMINATION_PATH.exists() else None


def emit(result: StageResult, path: Path | None) -> None:
    message = result.to_termination_message()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(message)
        except OSError as exc:
            log.warning("cannot write the result to %s: %s", path, exc)
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


_terminated = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminated
    _terminated = True
    raise Preempted(PREEMPTED_MESSAGE)


def _unexpected(exc: BaseException) -> bool:
    """Errors we did not raise on purpose deserve a traceback in the log."""
    from consistency_worker.stages import StageFailure
    from consistency_worker.store.errors import StoreError

    return not isinstance(exc, ConfigError | StageFailure | StoreError | Preempted)


def _key_of(text: str | None) -> str:
    try:
        return str(json.loads(text or "")["key"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


def _run_data_parallel(processes: int, args: argparse.Namespace, out_path: Path | None, key: str) -> int:
    """Re-run this command under torchrun in `processes` processes and pass rank 0's result and exit
    code on (torchrun itself exits 1 for any failed child)."""
    from consistency_worker.engines.distributed import launch

    worker_args = [args.stage, "--config", args.config, "--log-level", args.log_level]
    if args.shard:
        worker_args += ["--shard", args.shard]
    if args.scratch_dir:
        worker_args += ["--scratch-dir", args.scratch_dir]
    code, text = launch(processes, worker_args)
    result: StageResult | None = None
    if text:
        try:
            result = StageResult.model_validate_json(text)
        except ValueError:
            result = None
    if result is None:
        # A rank died without rank 0 reporting (OOM killer, crash, signal): like a lost pod, worth a retry.
        result = StageResult(key=key, ok=False, retryable=True, message=f"data-parallel run ({processes} "
                             f"processes) ended without a result: torchrun exited with code {code}")
    emit(result, out_path)
    if result.ok:
        return EXIT_OK
    return EXIT_RETRYABLE if result.retryable else EXIT_PERMANENT


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    # botocore logs request details at DEBUG; keep it quiet even at --log-level DEBUG.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Before torch, numpy or tokenizers load: their thread pools would otherwise size to the node. Before the
    # SIGTERM handler too, which raises Preempted: raised here, outside the try below, it would exit 1, not 75.
    limit_thread_pools()
    signal.signal(signal.SIGTERM, _on_sigterm)
    log.info("consistency-worker %s: reading the stage config from %s", args.stage,
             args.config if not args.config.startswith("env:") else args.config.split(":", 1)[0] + ":...")
    out_path = termination_path(args.result_file)
    text: str | None = None
    scratch: Path | None = None
    try:
        text = read_config_text(args.config)
        config = parse_config(text, args.config)
        if config.stage.value != args.stage or config.params.kind != args.stage:
            raise ConfigError(f"config.stage is {config.stage.value!r} and config.params.kind is "
                              f"{config.params.kind!r}, but the command runs {args.stage!r}")
        from consistency_worker.engines import distributed

        processes = getattr(config.params, "processes", 1)
        if processes > 1 and not distributed.under_torchrun():
            return _run_data_parallel(processes, args, out_path, config.key)
        from consistency_worker.job.context import StageContext
        from consistency_worker.stages import run_stage

        world = distributed.current_world()
        if not world.is_writer:
            out_path = None  # rank 0 reports; the launcher hands its result on
        scratch_arg = Path(args.scratch_dir) if args.scratch_dir else None
        if scratch_arg is not None and world.distributed:
            scratch_arg = scratch_arg / f"rank-{world.rank}"
        try:
            ctx = StageContext.create(config, shard=args.shard, scratch_dir=scratch_arg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        scratch = None if args.scratch_dir else ctx.scratch_dir
        result = run_stage(ctx)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        retryable = classify(exc)
        message = redact(f"{type(exc).__name__}: {exc}")
        if _terminated and not isinstance(exc, Preempted):
            # The Preempted exception was swallowed somewhere (e.g. inside logging) and the stage then
            # failed for a knock-on reason: the signal is still the cause, and another attempt may pass.
            retryable, message = True, f"{PREEMPTED_MESSAGE}; then {message}"
        log.error("stage failed (%s): %s", "retryable" if retryable else "permanent", message,
                  exc_info=_unexpected(exc))
        result = StageResult(key=_key_of(text), ok=False, retryable=retryable, message=message)
        emit(result, out_path)
        return EXIT_RETRYABLE if retryable else EXIT_PERMANENT
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    emit(result, out_path)
    if result.ok:
        return EXIT_OK
    return EXIT_RETRYABLE if result.retryable else EXIT_PERMANENT


if __name__ == "__main__":
    sys.exit(main())
