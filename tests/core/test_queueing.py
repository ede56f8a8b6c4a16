from datetime import UTC, datetime, timedelta

from consistency_core import queueing
from consistency_core import statemachine as sm
from consistency_core.names import rfc3339

from .helpers import minimal_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def started_status():
    decision = sm.decide(minimal_spec(), None, campaign="c", now=T0)
    return decision.status


def test_queued_then_admitted_moves_start_to_admission_and_keeps_the_wait():
    status = started_status()
    events = queueing.observe_job(status, suspended=True, started=None, now=T0, queue="q")
    record = status.current()
    assert record.outcome == "Queued" and status.stage_status == "Queued"
    assert [e.reason for e in events] == ["Queued"] and "queue q" in events[0].message
    # Still suspended on the next pass: nothing new.
    assert queueing.observe_job(status, suspended=True, started=None, now=T0 + timedelta(minutes=5)) == []
    # Admitted: the Job controller's startTime is the admission time, even if seen later.
    admitted = T0 + timedelta(minutes=40)
    events = queueing.observe_job(status, suspended=False, started=rfc3339(admitted),
                                  now=admitted + timedelta(minutes=3))
    assert [e.reason for e in events] == ["Admitted"] and "2400s queued" in events[0].message
    assert record.outcome == "Running" and status.stage_status == "Running"
    assert record.start_time == rfc3339(admitted) and record.queued_seconds == 2400 and record.queued_time is None


def test_preempted_back_into_the_queue_adds_up_the_waits():
    status = started_status()
    queueing.observe_job(status, suspended=True, started=None, now=T0)
    queueing.observe_job(status, suspended=False, started=None, now=T0 + timedelta(seconds=60))
    queueing.observe_job(status, suspended=True, started=None, now=T0 + timedelta(seconds=600))
    queueing.observe_job(status, suspended=False, started=None, now=T0 + timedelta(seconds=700))
    record = status.current()
    assert record.queued_seconds == 160 and record.start_time == rfc3339(T0 + timedelta(seconds=700))


def test_cost_of_a_queued_stage_counts_from_admission():
    from consistency_core.stage_wire import StageResult

    spec = minimal_spec(resources={"stages": {"prepare": {"gpus": 1}}}, budget={"gpuHourUsd": 2.0})
    status = started_status()
    queueing.observe_job(status, suspended=True, started=None, now=T0)
    queueing.observe_job(status, suspended=False, started=None, now=T0 + timedelta(hours=5))
    result = StageResult(key="prepare", ok=True, metrics={"selection": 1, "eval": 1})
    status.current().gpus = 1
    done = sm.decide(spec, status, result, campaign="c", now=T0 + timedelta(hours=6)).status
    prepare = done.last_success("prepare")
    assert prepare.gpu_hours == 1.0 and prepare.queued_seconds == 5 * 3600
    assert done.cost.usd == 2.0


def test_no_current_stage_clears_the_stage_status():
    status = started_status()
    status.current().outcome = "Succeeded"
    queueing.refresh(status)
    assert status.stage_status is None
