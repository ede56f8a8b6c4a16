"""Operator latency and scale against KMock's Kubernetes emulator (no cluster needed).

Measures, with the real operator process and the API emulator used by tests/operator:

* latency from a Job's success (the status PATCH that marks it Complete) to the creation (POST) of
  the campaign's next Job, taken from the API server's own request timeline: median and p95,
  for one campaign at a time and under load;
* N concurrent campaigns (default 100) driven through a whole 1B.1 run (prepare, generate, distill,
  train, evaluate) with no reconcile errors;
* the operator's resident memory (current and peak).

Target: median under 1 s, no errors.  Usage: python bench/operator_latency.py [--campaigns 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "operator"))

from kmock_cluster import EmulatedCluster  # noqa: E402
from operator_harness import CT, CTS, JobController, OperatorProcess, campaign_body  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

# A campaign that succeeds ends with its report stage (CPU): the last transition measured.
STAGES = ("prepare", "1b1-i1-generate", "1b1-i1-distill", "1b1-i1-train", "1b1-i1-evaluate", "report")
RESULTS: dict[str, dict[str, Any]] = {
    "prepare": {"selection": 664, "scan": 0, "eval": 1483},
    "generate": {"problems": 664, "completions": 3984},
    "distill": {"examples": 400},
    "train": {"steps": 100},
    "evaluate": {"problems": 1483, "consistency": 0.7, "meanAgreement": 0.8, "accuracy": {"math": 0.6}},
    "report": {"figures": 4},
}


def body(name: str) -> dict[str, Any]:
    return campaign_body(name, evaluation={"baseline": False}, expansion={"enabled": False},
                         resources={"stages": {"generate": {"shards": 1}}})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latencies(cluster: EmulatedCluster) -> list[float]:
    """Seconds from each 'Job complete' status PATCH to the POST of that campaign's next Job."""
    assert cluster.server is not None
    completed: dict[str, float] = {}
    created: dict[str, float] = {}
    for t, method, path, name, agent in list(cluster.server.timeline):
        if name is None:
            continue
        if method == "PATCH" and "/jobs/" in path and path.endswith("/status") and agent == "bench":
            completed[name] = t
        elif method == "POST" and path.endswith("/jobs") and agent.startswith("consistency-operator"):
            created.setdefault(name, t)
    out: list[float] = []
    for name, t_created in sorted(created.items(), key=lambda item: item[1]):
        campaign, key = _split(name)
        if key == STAGES[0]:
            continue
        previous = f"{campaign}-{STAGES[STAGES.index(key) - 1]}"
        if previous in completed:
            out.append(t_created - completed[previous])
    return out


def _split(job_name: str) -> tuple[str, str]:
    for key in STAGES:
        if job_name.endswith("-" + key):
            return job_name[: -len(key) - 1], key
    raise ValueError(job_name)


def drive(cluster: EmulatedCluster, jobs: JobController, names: list[str], ns: str, timeout: float) -> float:
    """Play the Job controller until every campaign has Succeeded; returns the wall time."""
    start = time.monotonic()
    done: set[str] = set()
    wanted = set(names)
    while len(done) < len(names):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{len(names) - len(done)} campaign(s) unfinished after {timeout:.0f}s")
        for job in cluster.list("batch/v1", "jobs", ns):
            labels = job["metadata"]["labels"]
            if labels["consistency.dev/campaign"] not in wanted or (job.get("status") or {}).get("conditions"):
                continue
            jobs.succeed(job, RESULTS[labels["consistency.dev/stage"]])
        for item in cluster.list(CT, CTS, ns):
            if item["metadata"]["name"] not in wanted:
                continue
            phase = (item.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if phase == "Failed":
                    raise RuntimeError(f"{item['metadata']['name']} failed: {item['status'].get('message')}")
                done.add(item["metadata"]["name"])
        # The poll interval is not part of the measured latency (it starts at the PATCH); a slower
        # poll keeps the emulator, which shares this process, free to serve the operator.
        time.sleep(0.1)
    return time.monotonic() - start


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def errors(text: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "consistency_reconcile_errors_total")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=5, help="campaigns run one at a time first")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, seconds: what make test runs so that a benchmark that no longer runs fails")
    args = parser.parse_args()
    if args.quick:
        args.campaigns, args.sequential = 3, 1

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cluster = EmulatedCluster(workdir, namespaces=("bench",)).start()
        cluster.http.headers["User-Agent"] = "bench"
        # Cluster-wide (no namespace list), the Helm chart's default.
        operator = OperatorProcess(cluster.write_kubeconfig(), workdir, "")
        operator.env["CONSISTENCY_RESYNC_SECONDS"] = "0"
        try:
            operator.start()
            jobs = JobController(cluster)

            for i in range(args.sequential):
                name = f"seq-{i}"
                cluster.create(CT, CTS, body(name), namespace="bench")
                drive(cluster, jobs, [name], "bench", timeout=60)
            quiet = latencies(cluster)
            mark = len(quiet)

            names = [f"load-{i:03d}" for i in range(args.campaigns)]
            for name in names:
                cluster.create(CT, CTS, body(name), namespace="bench")
            wall = drive(cluster, jobs, names, "bench", timeout=600)
            loaded = latencies(cluster)[mark:]

            text = operator.scrape()
            rss, peak = rss_mib(operator.proc.pid) if operator.proc else (0.0, 0.0)
            log = operator.logs()
            if "Traceback" in log:
                i = log.index("Traceback")
                print(log[max(0, i - 1500): i + 3000], file=sys.stderr)
            tracebacks = log.count("Traceback")
            all_jobs = cluster.list("batch/v1", "jobs", "bench")
        finally:
            operator.stop()
            cluster.stop()

    print(f"one campaign at a time ({len(quiet)} transitions): "
          f"median {statistics.median(quiet) * 1000:.0f} ms, p95 {percentile(quiet, 0.95) * 1000:.0f} ms")
    print(f"{args.campaigns} concurrent campaigns ({len(loaded)} transitions, {len(all_jobs)} Jobs, "
          f"{wall:.1f} s wall): median {statistics.median(loaded) * 1000:.0f} ms, "
          f"p95 {percentile(loaded, 0.95) * 1000:.0f} ms, max {max(loaded) * 1000:.0f} ms")
    expected_jobs = len(STAGES) * (args.campaigns + args.sequential)
    print(f"reconcile errors: {errors(text):.0f}; tracebacks in the operator log: {tracebacks}; "
          f"Jobs: {len(all_jobs)} (one per stage: {expected_jobs})")
    print(f"operator RSS: {rss:.0f} MiB (peak {peak:.0f} MiB)")
    clean = errors(text) == 0 and tracebacks == 0 and len(all_jobs) == expected_jobs
    if args.quick:  # too few transitions to judge latency: only that every campaign ran cleanly
        print("quick mode: ran cleanly" if clean else "FAIL: errors or a wrong number of Jobs")
        return 0 if clean else 1
    ok = clean and statistics.median(quiet) < 1.0 and statistics.median(loaded) < 1.0
    print("PASS" if ok else "FAIL: target is median < 1 s and no errors")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
