"""`consistency-worker` as a real process: exit codes, result file, config sources, idempotent re-runs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from consistency_core.stage_wire import (
    EXIT_OK,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    MANIFEST,
    PREPARE_EVAL,
    PREPARE_SCAN,
    PREPARE_SELECTION,
    RESULT,
    TERMINATION_MESSAGE_LIMIT,
    StageConfig,
    StageResult,
)
from consistency_worker.job.context import StageContext, parse_shard, resolve_shard
from consistency_worker.runtime.progress import Progress
from consistency_worker.store.facade import open_store
from consistency_worker.store.manifest import ManifestBuilder

from tests.conftest import REPO_ROOT, make_bucket


def tiny_gsm8k(shared: Path, tmp_path: Path, n_train: int = 40, n_test: int = 10) -> tuple[Path, Path]:
    """The first rows of the real GSM8K files, so a prepare run takes well under a second."""
    train, test = tmp_path / "gsm8k-train.jsonl", tmp_path / "gsm8k-test.jsonl"
    with (shared / "gsm8k" / "train.jsonl").open() as fh:
        train.write_text("".join(next(fh) for _ in range(n_train)))
    with (shared / "gsm8k" / "test.jsonl").open() as fh:
        test.write_text("".join(next(fh) for _ in range(n_test)))
    return train, test


def prepare_config(store_uri: str, train: Path | str, test: Path | str, **store_extra: Any) -> dict[str, Any]:
    return {
        "campaign": "demo",
        "key": "1b1-i1-prepare",
        "stage": "prepare",
        "phase": "1B.1",
        "iteration": 1,
        "seed": 7,
        "store": {"uri": store_uri, **store_extra},
        "outputUri": f"{store_uri.rstrip('/')}/1b1-i1/prepare",
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "params": {
            "kind": "prepare",
            "datasets": [
                {"name": "gsm8k-train", "uri": str(train), "format": "gsm8k", "roles": ["train", "scan"]},
                {"name": "gsm8k-test", "uri": str(test), "format": "gsm8k", "roles": ["eval"]},
            ],
            "selection": [{"dataset": "gsm8k-train", "count": 12}],
            "scanDatasets": ["gsm8k-train"],
            "evalDatasets": ["gsm8k-test"],
        },
    }


def run_cli(args: list[str], *, env: dict[str, str] | None = None, stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONSISTENCY_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "consistency_worker.cli", *args],
        cwd=REPO_ROOT, env=full_env, input=stdin, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def read_result(path: Path) -> dict[str, Any]:
    text = path.read_text()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    return json.loads(text)


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from consistency_worker import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'boto3', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "HEAVY []" in out.stdout
    assert "prepare" in out.stdout and "Exit codes" in out.stdout


def test_bad_config_exits_permanent_naming_the_field(tmp_path: Path) -> None:
    config = prepare_config(str(tmp_path / "store"), "a.jsonl", "b.jsonl")
    config["params"]["selection"][0]["count"] = 0
    del config["seed"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result_file = tmp_path / "result.json"
    proc = run_cli(["prepare", "--config", str(path), "--result-file", str(result_file)])
    assert proc.returncode == EXIT_PERMANENT, proc.stderr
    result = read_result(result_file)
    assert result["ok"] is False and result["retryable"] is False
    assert result["key"] == "1b1-i1-prepare"
    assert "config.seed: Field required" in result["message"]
    assert "config.params.prepare.selection[0].count" in result["message"]
    # The same compact result is stdout's last line.
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ("{not json", "not valid JSON"),
        (None, "does not exist"),
    ],
)
def test_unreadable_config_is_permanent(tmp_path: Path, config_text: str | None, expected: str) -> None:
    path = tmp_path / "config.json"
    if config_text is not None:
        path.write_text(config_text)
    result_file = tmp_path / "out" / "result.json"
    proc = run_cli(["prepare", "--config", str(path), "--result-file", str(result_file)])
    assert proc.returncode == EXIT_PERMANENT
    assert expected in read_result(result_file)["message"]


def test_stage_mismatch_and_bad_shard_are_permanent(tmp_path: Path) -> None:
    config = json.dumps(prepare_config(str(tmp_path / "store"), "a.jsonl", "b.jsonl"))
    proc = run_cli(["distill", "--config", "env:CFG"], env={"CFG": config})
    assert proc.returncode == EXIT_PERMANENT
    assert "the command runs 'distill'" in json.loads(proc.stdout.splitlines()[-1])["message"]

    proc = run_cli(["prepare", "--config", "env:CFG", "--shard", "3/2"], env={"CFG": config})
    assert proc.returncode == EXIT_PERMANENT
    assert "need 0 <= i < n" in json.loads(proc.stdout.splitlines()[-1])["message"]

    proc = run_cli(["prepare", "--config", "env:MISSING"])
    assert proc.returncode == EXIT_PERMANENT
    assert "MISSING is not set" in proc.stdout


def test_unreachable_store_is_retryable_and_bounded(tmp_path: Path) -> None:
    # Port 9 (discard) on localhost: nothing listens, connections are refused.
    config = prepare_config("s3://artifacts/campaign", "a.jsonl", "b.jsonl", endpoint="http://127.0.0.1:9")
    result_file = tmp_path / "termination-log"
    env = {
        "CFG": json.dumps(config),
        "AWS_ACCESS_KEY_ID": "cli-test-id",
        "AWS_SECRET_ACCESS_KEY": "cli-test-secret-value",
        "CONSISTENCY_S3_MAX_ATTEMPTS": "2",
        "CONSISTENCY_S3_CONNECT_TIMEOUT": "1",
        "CONSISTENCY_RESULT_FILE": str(result_file),
    }
    start = time.monotonic()
    proc = run_cli(["prepare", "--config", "env:CFG"], env=env)
    assert proc.returncode == EXIT_RETRYABLE, proc.stderr
    assert time.monotonic() - start < 30
    result = read_result(result_file)
    assert result["retryable"] is True and result["ok"] is False
    assert "http://127.0.0.1:9" in result["message"]
    assert "s3://artifacts/campaign/1b1-i1/prepare/result.json" in result["message"]
    assert "cli-test-secret-value" not in proc.stdout + proc.stderr


def test_prepare_runs_then_rerun_does_nothing(shared_datasets: Path, tmp_path: Path) -> None:
    pytest.importorskip("consistency_worker.data.loaders")
    train, test = tiny_gsm8k(shared_datasets, tmp_path)
    store = tmp_path / "store"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(prepare_config(str(store), train, test)))
    result_file = tmp_path / "result.json"
    args = ["prepare", "--config", str(config_path), "--result-file", str(result_file)]

    first = run_cli(args)
    assert first.returncode == EXIT_OK, first.stderr
    result = read_result(result_file)
    assert result["ok"] is True
    assert result["metrics"]["selection"] == 12
    out_dir = store / "1b1-i1" / "prepare"
    names = (PREPARE_SELECTION, PREPARE_SCAN, PREPARE_EVAL, MANIFEST, RESULT)
    before = {n: ((out_dir / n).read_bytes(), (out_dir / n).stat().st_mtime_ns) for n in names}

    second = run_cli(args)
    assert second.returncode == EXIT_OK
    assert "nothing to do" in second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == json.loads(first.stdout.splitlines()[-1])
    after = {n: ((out_dir / n).read_bytes(), (out_dir / n).stat().st_mtime_ns) for n in names}
    assert after == before  # not even rewritten


def test_config_from_s3_and_stdin(s3_env: dict[str, str], shared_datasets: Path, tmp_path: Path) -> None:
    pytest.importorskip("consistency_worker.data.loaders")
    train, test = tiny_gsm8k(shared_datasets, tmp_path)
    bucket = make_bucket(s3_env["AWS_ENDPOINT_URL"])
    config = prepare_config(f"s3://{bucket}/c1", train, test)
    from consistency_worker.store.facade import open_store

    store = open_store(f"s3://{bucket}")
    store.write_json(f"s3://{bucket}/configs/prepare.json", config)
    proc = run_cli(["prepare", "--config", f"s3://{bucket}/configs/prepare.json"], env=s3_env)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert store.is_file(f"s3://{bucket}/c1/1b1-i1/prepare/{PREPARE_SELECTION}")
    manifest = store.read_json(f"s3://{bucket}/c1/1b1-i1/prepare/{MANIFEST}")
    assert manifest["outputs"]["selection"]["sha256"]

    proc = run_cli(["prepare", "--config", "-"], env=s3_env, stdin=json.dumps(config))
    assert proc.returncode == EXIT_OK
    assert "nothing to do" in proc.stderr


def test_sigterm_while_running_is_retryable(tmp_path: Path) -> None:
    result_file = tmp_path / "result.json"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONSISTENCY_"))}
    # Reading the config from a stdin that never ends keeps the process busy until the signal.
    proc = subprocess.Popen(
        [sys.executable, "-m", "consistency_worker.cli", "prepare", "--config", "-",
         "--result-file", str(result_file)],
        cwd=REPO_ROOT, env=full_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        # This log line comes right after the SIGTERM handler is installed (thread-pool lines may precede it).
        lines = [proc.stderr.readline()]
        while "reading the stage config from -" not in lines[-1]:
            assert lines[-1], f"worker stopped logging before reading its config: {lines}"
            lines.append(proc.stderr.readline())
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_RETRYABLE, stderr
    result = read_result(result_file)
    assert result["retryable"] is True and "SIGTERM" in result["message"]


def test_interrupted_stage_reruns_to_the_same_outputs(shared_datasets: Path, tmp_path: Path) -> None:
    train, test = tiny_gsm8k(shared_datasets, tmp_path)
    store = tmp_path / "store"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(prepare_config(str(store), train, test)))
    assert run_cli(["prepare", "--config", str(config_path)]).returncode == EXIT_OK
    out_dir = store / "1b1-i1" / "prepare"
    selection = (out_dir / PREPARE_SELECTION).read_bytes()
    # Killed after writing outputs but before the result file: the next attempt redoes the work.
    (out_dir / RESULT).unlink()
    (out_dir / PREPARE_SCAN).write_text("half a file")
    again = run_cli(["prepare", "--config", str(config_path)])
    assert again.returncode == EXIT_OK
    assert "nothing to do" not in again.stderr
    assert (out_dir / PREPARE_SELECTION).read_bytes() == selection
    assert len((out_dir / PREPARE_SCAN).read_text().splitlines()) == 40
    assert (out_dir / RESULT).is_file()


# ---- StageContext pieces: shards, per-shard result names, progress, manifests


def generate_config(tmp_path: Path, shards: int) -> StageConfig:
    return StageConfig.model_validate({
        "campaign": "c", "key": "1b1-i1-generate", "stage": "generate", "phase": "1B.1", "iteration": 1,
        "seed": 1, "store": {"uri": str(tmp_path)}, "outputUri": str(tmp_path / "gen"), "model": {"uri": "m"},
        "params": {"kind": "generate", "problemsUri": "p.jsonl", "shards": shards, "tensorParallelSize": 1,
                   "sampling": {"samples": 2, "temperature": 0.5, "maxNewTokens": 8}},
    })


def test_shard_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = generate_config(tmp_path, shards=4)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert resolve_shard(config) == (0, 1)
    assert resolve_shard(config, "2/3") == (2, 3)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    assert resolve_shard(config) == (3, 4)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "4")
    with pytest.raises(ValueError, match=r"outside params\.shards=4"):
        resolve_shard(config)
    for bad in ("1", "a/b", "2/2", "-1/2", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_sharded_stage_gets_its_own_result_and_manifest(tmp_path: Path) -> None:
    ctx = StageContext.create(generate_config(tmp_path, shards=4), shard="1/4", scratch_dir=tmp_path / "s")
    assert ctx.result_uri == str(tmp_path / "gen" / "result-00001-of-00004.json")
    assert ctx.manifest_uri == str(tmp_path / "gen" / "manifest-00001-of-00004.json")
    single = StageContext.create(generate_config(tmp_path, shards=1), scratch_dir=tmp_path / "s")
    assert single.result_uri.endswith("/gen/result.json")


def test_progress_logs_rate_and_eta_and_writes_the_progress_file(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    state_file = tmp_path / "progress.json"
    logger = logging.getLogger("test.progress")
    with Progress(10, "generate", logger=logger, progress_file=state_file, stage="generate",
                  log_interval=0.0, use_tty=False) as progress:
        for _ in range(4):
            progress.update()
        state = json.loads(state_file.read_text())
        assert state["stage"] == "generate" and state["total"] == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "test.progress"]
    assert lines[0].startswith("generate: 1/10 (10.0%)") and "/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("generate: 4/10 (40.0%)") and lines[-1].endswith("(done)")
    final = json.loads(state_file.read_text())
    assert final["done"] == 4 and final["etaSeconds"] is not None


def test_manifest_hashes_outputs_and_records_code_version(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.write_text(str(tmp_path / "out/a.txt"), "abc")
    store.write_text(str(tmp_path / "out/adapter/w.bin"), "weights")
    builder = ManifestBuilder()
    builder.add_input("data", "s3://b/data.jsonl", data=b"xyz")
    with builder.timed("work"):
        pass
    result = StageResult(key="k", ok=True, metrics={"n": 1},
                         outputs={"a": str(tmp_path / "out/a.txt"), "adapter": str(tmp_path / "out/adapter")})
    manifest = builder.write(store, str(tmp_path / "out/manifest.json"), result)
    assert manifest["outputs"]["a"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert manifest["outputs"]["adapter"]["files"] == {"w.bin": hashlib.sha256(b"weights").hexdigest()}
    assert manifest["inputs"]["data"]["bytes"] == 3
    assert manifest["codeVersion"]["package"] and "work" in manifest["timings"]
    assert json.loads((tmp_path / "out/manifest.json").read_text()) == manifest


def test_hub_token_never_leaves_in_the_result_or_the_log(tmp_path: Path) -> None:
    """HF_TOKEN (from spec.model.tokenSecret) is redacted from the termination message and from every log
    line, tracebacks included, even when the failure's own text contains it."""
    token = "hf_cliTestTokenValue0123456789"
    missing = tmp_path / token / "train.jsonl"  # the error message names this path, token and all
    config = prepare_config(str(tmp_path / "store"), missing, missing)
    result_file = tmp_path / "result.json"
    proc = run_cli(["prepare", "--config", "env:CFG", "--log-level", "DEBUG"],
                   env={"CFG": json.dumps(config), "HF_TOKEN": token, "CONSISTENCY_RESULT_FILE": str(result_file)})
    assert proc.returncode in (EXIT_PERMANENT, EXIT_RETRYABLE), proc.stderr
    result = read_result(result_file)
    assert result["ok"] is False and "***" in result["message"]
    assert token not in result_file.read_text()
    assert token not in proc.stdout + proc.stderr
    assert "***" in proc.stderr  # the log did mention the path, redacted
