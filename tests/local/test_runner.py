"""The local runner end to end: real worker processes, a real (tiny) model, real LoRA training.

One campaign is killed mid-run (SIGKILL, like a crashed laptop session) and resumed with the same
command; another has a gate it cannot pass and must take the iterate path, then fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from consistency_local.cli import main as cli_main
from consistency_local.console import render_status

from tests.local.campaign_fixtures import (
    build_constant_model,
    campaign_doc,
    statuses,
    write_campaign,
    write_data,
)

pytest.importorskip("transformers")
pytest.importorskip("peft")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("assets")
    return build_constant_model(root), write_data(root)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _succeeded(run_dir: Path) -> list[str]:
    try:
        return [s["key"] for s in statuses(run_dir)["stages"] if s["outcome"] == "Succeeded"]
    except (OSError, ValueError, KeyError):
        return []


def test_killed_run_resumes_and_completes_with_report(assets, tmp_path: Path, capsys) -> None:
    model, data = assets
    yaml_path = write_campaign(tmp_path / "camp" / "campaign.yaml", campaign_doc(model, data, name="resume",
                                                                                 math_gate=0.0))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "consistency_local.cli", "run", "-f", str(yaml_path), "--run-dir", str(run_dir)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it while 1B.1 is training: prepare, baseline, generate and distill are done by then.
        _wait_for(lambda: "1b1-i1-distill" in _succeeded(run_dir), 240, "1b1-i1-distill to finish")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done_before = _succeeded(run_dir)
    before = statuses(run_dir)
    results_before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*.json")}

    assert cli_main(["run", "-f", str(yaml_path), "--run-dir", str(run_dir)]) == 0

    after = statuses(run_dir)
    assert after["phase"] == "Succeeded", after["message"]
    succeeded = [s["key"] for s in after["stages"] if s["outcome"] == "Succeeded"]
    # Every stage succeeded exactly once (no duplicates), in plan order, through 1B.1, the gate and 1B.2.
    assert succeeded == ["prepare", "baseline-evaluate", "1b1-i1-generate", "1b1-i1-distill", "1b1-i1-train",
                         "1b1-i1-evaluate", "1b2-generate", "1b2-distill", "1b2-train", "1b2-evaluate", "report"]
    # The only other record allowed is the attempt the kill interrupted: when the worker was already running,
    # it got SIGTERM with the runner (PR_SET_PDEATHSIG) and reported a retryable preemption, which the
    # resumed run counts as a failed attempt and retries (timing decides whether the kill lands there).
    others = [s for s in after["stages"] if s["outcome"] != "Succeeded"]
    assert len(others) <= 1, others
    for record in others:
        assert record["key"] not in done_before and "SIGTERM" in record["message"], record
    # What had finished before the kill was not rerun: same records, same result files.
    assert after["stages"][: len(done_before)] == before["stages"][: len(done_before)]
    for name, mtime in results_before.items():
        assert (run_dir / "results" / name).stat().st_mtime_ns == mtime, name
    gate = next(c for c in after["conditions"] if c["type"] == "GatePassed")
    assert gate["status"] == "True"
    assert [e["phase"] for e in after["evaluations"]] == ["baseline", "1B.1", "1B.2"]
    # The report stage shipped the 1B.2 adapter with its model card, and the report, into the store.
    outputs = after["outputs"]
    card = Path(outputs["modelCard"].removeprefix("file://")).read_text()
    assert "library_name: peft" in card and str(model) in card and "with this adapter (1B.2)" in card
    assert (Path(outputs["adapter"].removeprefix("file://")) / "adapter_config.json").is_file()
    assert "## Before / after" in Path(outputs["report"].removeprefix("file://")).read_text()

    report = (run_dir / "report" / "report.md").read_text()
    for figure in ("metrics.png", "strata.png", "transitions.png", "stages.png"):
        assert (run_dir / "report" / figure).stat().st_size > 1000
        assert figure in report
    assert "Wilson 95%" in report and "before" in report
    # before/after also as paired comparisons (same problems, same seeds), in the report and the status
    assert "paired change, baseline -> 1B.2" in report and "McNemar p=" in report
    assert "math accuracy" in after["evaluations"][1]["paired"]
    status_text = render_status(run_dir, stages=True)
    assert "MATH-CHANGE" in status_text and "pp [" in status_text and "CHANGE (95% CI, p)" in status_text
    # the declared primary endpoint (default math pairwise agreement), baseline -> latest model, headlined
    assert after["evaluations"][-1]["primary"]["figure"] == "math pairwise agreement"
    assert "PRIMARY math pairwise agreement (baseline)" in status_text
    assert "Primary endpoint" in report and "Holm" in report
    out = capsys.readouterr().out
    assert f"Report: {run_dir / 'report' / 'report.md'}" in out
    assert "math accuracy" in out and "[" in out  # rates printed with their interval

    # A finished campaign re-run is a no-op that reprints the summary.
    assert cli_main(["run", "-f", str(yaml_path), "--run-dir", str(run_dir)]) == 0
    assert statuses(run_dir)["stages"] == after["stages"]

    assert cli_main(["status", str(run_dir), "--stages"]) == 0
    table = capsys.readouterr().out
    assert "default/resume" in table and "Succeeded" in table and "1b2-evaluate" in table


def test_failing_gate_takes_the_iterate_path_then_fails(assets, tmp_path: Path, s3_bucket: str) -> None:
    """Also the S3 path: every stage reads and writes the campaign's artifacts on a real S3 server."""
    model, data = assets
    # Half the eval answers are not 7: accuracy ~0.5 can never reach 0.9.
    doc = campaign_doc(model, data, name="gate", math_gate=0.9, baseline=False, max_iterations=2,
                       store=f"{s3_bucket}/campaigns")
    yaml_path = write_campaign(tmp_path / "campaign.yaml", doc)
    run_dir = tmp_path / "run"
    assert cli_main(["run", "-f", str(yaml_path), "--run-dir", str(run_dir)]) == 1
    status = statuses(run_dir)
    assert status["phase"] == "Failed"
    keys = [s["key"] for s in status["stages"]]
    assert keys == ["prepare", "1b1-i1-generate", "1b1-i1-distill", "1b1-i1-train", "1b1-i1-evaluate",
                    "1b1-i2-generate", "1b1-i2-distill", "1b1-i2-train", "1b1-i2-evaluate"]
    assert not any(k.startswith("1b2") for k in keys)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "GateFailed" and "math accuracy" in failed["message"]
    # Iteration 2 used the adjusted knobs: one more epoch, the scheduled lower temperature.
    gen2 = json.loads((run_dir / "configs" / "1b1-i2-generate-a1.json").read_text())
    train2 = json.loads((run_dir / "configs" / "1b1-i2-train-a1.json").read_text())
    train1 = json.loads((run_dir / "configs" / "1b1-i1-train-a1.json").read_text())
    assert gen2["params"]["sampling"]["temperature"] == 0.3
    assert train2["params"]["training"]["epochs"] == train1["params"]["training"]["epochs"] + 1
    report = (run_dir / "report" / "report.md").read_text()
    assert "1B.1 i2" in report and "Missing data" not in report  # evaluation reports were read back from S3

    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    keys_in_s3 = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="campaigns/")["Contents"]}
    assert "campaigns/default/gate/1b1-i2-evaluate/report.json" in keys_in_s3
    assert not (tmp_path / "artifacts").exists()


def test_changed_spec_is_refused_without_fresh(assets, tmp_path: Path, capsys) -> None:
    model, data = assets
    run_dir = tmp_path / "run"
    first = write_campaign(tmp_path / "a.yaml", campaign_doc(model, data, name="same", math_gate=0.0))
    # Identity is recorded before any stage runs; no need to run a whole campaign to test the check.
    from consistency_local.campaign_file import load_campaign
    from consistency_local.rundir import RunDir
    from consistency_local.runner import _check_identity

    campaign = load_campaign(first)
    RunDir(run_dir).write_run({"name": "same", "namespace": "default", "digest": campaign.digest, "source": "a"})
    changed = write_campaign(tmp_path / "b.yaml", campaign_doc(model, data, name="same", math_gate=0.5))
    assert cli_main(["run", "-f", str(changed), "--run-dir", str(run_dir)]) == 2
    assert "different spec" in capsys.readouterr().err
    _check_identity(RunDir(run_dir), campaign, fresh=False)  # the original spec is still accepted


def test_bad_campaign_file_names_the_field(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: consistency.dev/v1alpha1\nkind: ConsistencyTraining\nmetadata: {name: x}\n"
                    "spec:\n  model: {uri: m}\n  store: {uri: s}\n  quickFix: {samples: 0}\n")
    assert cli_main(["run", "-f", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "spec.quickFix.samples" in err
    assert not (tmp_path / "r" / "status.json").exists()


def test_worker_dies_without_result_is_a_retryable_failure(tmp_path: Path) -> None:
    from consistency_core.spec import StageName
    from consistency_core.status import StageRecord, TrainingPhase
    from consistency_local.rundir import RunDir
    from consistency_local.stage_process import _result_of

    record = StageRecord(key="1b1-i1-train", stage=StageName.train, phase=TrainingPhase.quick_fix, iteration=1,
                         job_name="x")
    rd = RunDir(tmp_path)
    killed = _result_of(record, -signal.SIGKILL, rd.result_path(record), rd.log_path(record), 1.0)
    assert not killed.ok and killed.retryable and "SIGKILL" in killed.message
    permanent = _result_of(record, 2, rd.result_path(record), rd.log_path(record), 1.0)
    assert not permanent.ok and not permanent.retryable


def test_status_with_no_runs(tmp_path: Path, capsys) -> None:
    assert cli_main(["status", str(tmp_path)]) == 0
    assert "No campaigns found" in capsys.readouterr().out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_worker_does_not_outlive_a_killed_runner(tmp_path: Path) -> None:
    """A resumed run must never race an orphaned worker: the worker gets SIGTERM with its runner."""
    code = (
        "import subprocess, sys, time\n"
        "from consistency_local.stage_process import _die_with_parent\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], preexec_fn=_die_with_parent)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()

    def gone() -> bool:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return True
        # A zombie reparented to init counts as gone once reaped; check its state.
        try:
            return Path(f"/proc/{child_pid}/stat").read_text().split()[2] == "Z"
        except OSError:
            return True

    _wait_for(gone, 10, "the orphaned worker to exit")
