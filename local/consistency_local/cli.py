"""`consistency`: run a ConsistencyTraining campaign on this machine, watch it, report on it.

    consistency run -f campaign.yaml [--run-dir DIR] [--fresh]   run or resume (same command)
    consistency status [DIR] [--stages]                          like `kubectl get ct -o wide`
    consistency report [--run-dir DIR] -f campaign.yaml          (re)write the report
    consistency plan -f campaign.yaml [--strict] [-o json]       stages and cost before running anything
    consistency plan --compare                                   the seed's four options, priced
    consistency report --store s3://bucket/prefix/NS/NAME [--out DIR] [--endpoint URL]
                                                                 a cluster campaign's report, drawn here

Exit codes: 0 campaign succeeded, 1 campaign failed (plan --strict: the worst case may exceed
budget.maxUsd, or a dataset's size is unknown), 2 bad input, 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from consistency_core.stage_wire import StageConfig
from consistency_core.status import CampaignPhase, StageOutcome, StageRecord

from consistency_local.campaign_file import Campaign, CampaignFileError, load_campaign
from consistency_local.console import LiveConsole, render_status
from consistency_local.report import terminal_summary, write_report
from consistency_local.rundir import RunDir
from consistency_local.runner import RunError, run_campaign

DEFAULT_RUNS = Path("runs")
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def default_run_dir(campaign: Campaign) -> Path:
    name = campaign.name if campaign.namespace == "default" else f"{campaign.namespace}-{campaign.name}"
    return DEFAULT_RUNS / name


def run_and_report(campaign: Campaign, run_dir: Path, *, fresh: bool = False,
                   adjust: Callable[[StageRecord, StageConfig], StageConfig] | None = None) -> int:
    """Run or resume the campaign, print the live view and the summary; return the exit code.
    ``adjust``: see run_campaign."""
    console = LiveConsole()
    print(f"Campaign {campaign.namespace}/{campaign.name}: run directory {run_dir}", file=sys.stderr)
    try:
        status = run_campaign(campaign, run_dir, fresh=fresh, on_event=console.event, on_tick=console.tick,
                              adjust=adjust)
    except KeyboardInterrupt:
        console.close()
        print(f"\nInterrupted. Run the same command again to resume from {run_dir / 'status.json'}.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        console.close()
    path, data = write_report(RunDir(run_dir), campaign.name, campaign.namespace, campaign.spec, status)
    print(terminal_summary(data, path))
    if status.phase == CampaignPhase.failed:
        failed = [s for s in status.stages if s.outcome == StageOutcome.failed]
        if failed:
            log = RunDir(run_dir).log_path(failed[-1])
            print(f"Last failed stage log: {log}", file=sys.stderr)
    return 0 if status.phase == CampaignPhase.succeeded else EXIT_FAILED


def _cmd_run(args: argparse.Namespace) -> int:
    campaign = load_campaign(args.file)
    return run_and_report(campaign, args.run_dir or default_run_dir(campaign), fresh=args.fresh)


def _cmd_status(args: argparse.Namespace) -> int:
    print(render_status(args.path, stages=args.stages))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if args.store:
        from consistency_local.remote_report import campaign_root, report_from_store

        _, namespace, name = campaign_root(args.store)
        out = args.out or DEFAULT_RUNS / (name if namespace == "default" else f"{namespace}-{name}")
        _, summary = report_from_store(args.store, out, endpoint=args.endpoint)
        print(summary)
        return 0
    if args.file is None:
        raise RunError("report needs -f campaign.yaml (a local run) or --store URI (a cluster campaign)")
    campaign = load_campaign(args.file)
    run_dir = RunDir(args.run_dir or default_run_dir(campaign))
    status = run_dir.load_status()
    if status is None:
        raise RunError(f"{run_dir.status_path} does not exist: run the campaign first")
    path, data = write_report(run_dir, campaign.name, campaign.namespace, campaign.spec, status)
    print(terminal_summary(data, path))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from consistency_local import planning

    if args.compare:
        rows = planning.compare()
        if args.output == "json":
            print(json.dumps([{"option": r.option.name, "seedExamples": r.option.examples,
                               "seedHours": r.option.seed_hours, "seedUsd": r.option.seed_usd,
                               "defaultFigures": r.default_figures.to_wire(),
                               "publishedFigures": r.published_figures.to_wire()} for r in rows], indent=2))
        else:
            print(planning.render_compare(rows))
        return 0
    if args.file is None:
        raise RunError("plan needs -f campaign.yaml (or --compare)")
    campaign = load_campaign(args.file)
    plan = planning.plan_campaign(campaign.spec, campaign.name, campaign.namespace)
    if args.output == "json":
        print(json.dumps(plan.to_wire(), indent=2))
    else:
        print(f"Campaign {campaign.namespace}/{campaign.name}: spec valid")
        print(planning.render_plan(plan))
    # --strict: refuse what could overspend, and what cannot be sized to tell.
    refused = plan.verdict in ("MayExceedBudget", "ExceedsBudget", "Incomplete")
    return EXIT_FAILED if args.strict and refused else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consistency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume a campaign on this machine")
    run.add_argument("-f", "--file", type=Path, required=True, help="ConsistencyTraining YAML")
    run.add_argument("--run-dir", type=Path, default=None, help="default: runs/<name>")
    run.add_argument("--fresh", action="store_true", help="discard an earlier run of this campaign")
    run.set_defaults(func=_cmd_run)
    status = sub.add_parser("status", help="show campaigns (like kubectl get ct -o wide)")
    status.add_argument("path", type=Path, nargs="?", default=DEFAULT_RUNS, help="a run directory or runs/")
    status.add_argument("--stages", action="store_true", help="also list every stage attempt")
    status.set_defaults(func=_cmd_status)
    report = sub.add_parser("report", help="(re)write the report of a run")
    report.add_argument("-f", "--file", type=Path, default=None, help="ConsistencyTraining YAML (a local run)")
    report.add_argument("--run-dir", type=Path, default=None)
    report.add_argument("--store", default=None, help="a cluster campaign's directory in the store: "
                        "<spec.store.uri>/<namespace>/<name> (S3 credentials from the environment)")
    report.add_argument("--endpoint", default=None, help="S3 endpoint URL for --store (else AWS_ENDPOINT_URL)")
    report.add_argument("--out", type=Path, default=None, help="with --store: where to write (default runs/<name>)")
    report.set_defaults(func=_cmd_report)
    plan = sub.add_parser("plan", help="validate a campaign and forecast its stages and cost (no cluster, "
                          "no model)")
    plan.add_argument("-f", "--file", type=Path, default=None, help="ConsistencyTraining YAML")
    plan.add_argument("--strict", action="store_true",
                      help="exit 1 when the worst case exceeds budget.maxUsd (or a dataset cannot be sized)")
    plan.add_argument("-o", "--output", choices=("table", "json"), default="table")
    plan.add_argument("--compare", action="store_true",
                      help="price the seed's four options for a 7B model on one GPU (docs/planning.md)")
    plan.set_defaults(func=_cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CampaignFileError, RunError, ValueError) as exc:
        print(f"consistency: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
