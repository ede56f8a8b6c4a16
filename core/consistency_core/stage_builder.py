"""Stage-config building: where each stage reads and writes, and which spec sections it is handed.

`stage_config` is the one place a spec turns into what a stage is told; the decisions (which stage next,
gate, retries) live in statemachine.py. Stage params carry the spec's own sections (see stage_wire.py), so
a spec knob has no other copy to keep in step.
"""

from __future__ import annotations

from consistency_core import cost
from consistency_core.plan import BASELINE_KEY, PREPARE_KEY, REPORT_KEY, Step, phase_settings, stage_key
from consistency_core.spec import (
    AgreementFilter,
    CampaignSpec,
    FailureExamples,
    SamplingKnobs,
    StageName,
    TrainingKnobs,
)
from consistency_core.stage_wire import (
    DISTILL_PAIRS,
    DISTILL_TRAIN,
    EVALUATE_REPORT,
    PREPARE_EVAL,
    PREPARE_SCAN,
    PREPARE_SELECTION,
    TRAIN_ADAPTER,
    DistillMode,
    DistillParams,
    EvaluateParams,
    GenerateParams,
    PrepareParams,
    ReportParams,
    StageConfig,
    StageParams,
    TrainParams,
    join_uri,
)
from consistency_core.status import CampaignPhase, CampaignStatus, Cost, TrainingPhase


class StageConfigBuilder:
    """Stage configs of one campaign, given its spec and the status so far (adapters, reports)."""

    def __init__(self, spec: CampaignSpec, status: CampaignStatus, campaign: str, namespace: str):
        self.spec, self.status, self.campaign, self.namespace = spec, status, campaign, namespace
        self.root = join_uri(spec.store.uri, namespace, campaign)

    def out(self, key: str) -> str:
        return join_uri(self.root, key)

    def config(self, step: Step, attempt: int) -> StageConfig:
        spec = self.spec
        return StageConfig(
            campaign=self.campaign,
            namespace=self.namespace,
            key=step.key,
            stage=step.stage,
            phase=str(step.config_phase),  # StrEnum or "baseline": the wire wants the plain text
            iteration=step.iteration,
            attempt=attempt,
            seed=spec.seed,
            store=spec.store,
            output_uri=self.out(step.key),
            model=spec.model,
            backend=spec.backend,
            params=self.params(step),
            deadline_seconds=spec.resources.stages.for_stage(step.stage).deadline_seconds,
        )

    def params(self, step: Step) -> StageParams:
        """The one builder of stage params: spec sections as they are, plus the URIs that link the stages."""
        spec, prepared = self.spec, self.out(PREPARE_KEY)
        if step.stage == StageName.prepare:
            return PrepareParams(
                datasets=spec.datasets,
                selection=spec.quick_fix.selection,
                scan_datasets=spec.expansion.scan_datasets if spec.expansion.enabled else [],
                eval_datasets=spec.evaluation.datasets,
            )
        if step.stage == StageName.report:
            # A snapshot: the report stage renders the campaign as it stood when it started.
            return ReportParams(spec=spec, status=self.report_snapshot(), adapter_uri=self.status.adapter)
        if step.stage == StageName.evaluate:
            return EvaluateParams(
                problems_uri=join_uri(prepared, PREPARE_EVAL),
                sampling=SamplingKnobs.part_of(spec.evaluation),
                adapter_uri=None if step.key == BASELINE_KEY else self._own_adapter(step),
                baseline_report_uri=self._compare_with(step),
                failure=spec.expansion.failure,
                primary_endpoint=spec.evaluation.primary_endpoint,
                primary_baseline_uri=None if step.key == BASELINE_KEY else self._baseline_report(),
                tensor_parallel_size=spec.resources.stages.evaluate.gpus or 1,
            )
        settings = phase_settings(spec, step.phase, step.iteration)
        expansion = step.phase == TrainingPhase.expansion
        # 1B.1 answers its selection with the base model; 1B.2 scans with the adapter that passed the gate.
        problems = join_uri(prepared, PREPARE_SCAN if expansion else PREPARE_SELECTION)
        continue_from = self.status.adapter if expansion else None
        if step.stage == StageName.generate:
            generate = spec.resources.stages.generate
            return GenerateParams(
                problems_uri=problems,
                sampling=SamplingKnobs.part_of(settings),
                adapter_uri=continue_from,
                shards=generate.shards,
                tensor_parallel_size=generate.gpus or 1,
            )
        if step.stage == StageName.distill:
            return DistillParams(
                problems_uri=problems,
                generations_uri=self.out(stage_key(step.phase, step.iteration, StageName.generate)),
                mode=DistillMode.failures if expansion else DistillMode.consistent,
                filter=AgreementFilter.part_of(settings),
                failures=FailureExamples.part_of(settings) if expansion else None,
                replay_uri=self._passing_distill() if expansion and spec.expansion.replay_fraction > 0 else None,
            )
        data = DISTILL_PAIRS if settings.objective == "preference" else DISTILL_TRAIN
        return TrainParams(
            data_uri=join_uri(self.out(stage_key(step.phase, step.iteration, StageName.distill)), data),
            training=TrainingKnobs.part_of(settings),
            init_adapter_uri=continue_from,
            processes=spec.resources.stages.train.gpus or 1,
        )

    def report_snapshot(self) -> dict:
        """The campaign as the report shows it: everything before the report stage, as succeeded. Built
        from finished records only, so it is the same on every pass (a restart rebuilds the same config)."""
        st = self.status
        gate = st.condition("GatePassed")
        snapshot = CampaignStatus(
            phase=CampaignPhase.succeeded, training_phase=st.training_phase, iteration=st.iteration,
            message="succeeded", consistency=st.consistency, math_accuracy=st.math_accuracy,
            primary_change=st.primary_change,
            conditions=[gate] if gate else [], stages=[r for r in st.stages if r.key != REPORT_KEY],
            evaluations=st.evaluations, cost=Cost(gpu_hours=st.cost.gpu_hours, usd=st.cost.usd),
            adapter=st.adapter,
        )
        return snapshot.to_wire()

    def _own_adapter(self, step: Step) -> str:
        """The adapter an iteration's evaluate measures: the one its own train stage wrote."""
        return join_uri(self.out(stage_key(step.phase, step.iteration, StageName.train)), TRAIN_ADAPTER)

    def _passing_distill(self) -> str | None:
        """Training data of the 1B.1 iteration whose gate passed (what 1B.2 replays)."""
        passed = [e for e in self.status.evaluations if e.phase == TrainingPhase.quick_fix and e.gate_passed]
        if not passed:
            return None
        return join_uri(self.out(stage_key(TrainingPhase.quick_fix, passed[-1].iteration, StageName.distill)),
                        DISTILL_TRAIN)

    def _baseline_report(self) -> str | None:
        return join_uri(self.out(BASELINE_KEY), EVALUATE_REPORT) if self.spec.evaluation.baseline else None

    def _compare_with(self, step: Step) -> str | None:
        """The report an evaluation compares against: 1B.1 against the base model, 1B.2 against the 1B.1
        evaluation that passed the gate (or the base model when that report is missing)."""
        if step.key == BASELINE_KEY:
            return None
        if step.phase == TrainingPhase.quick_fix:
            return self._baseline_report()
        passed = [e for e in self.status.evaluations if e.phase == TrainingPhase.quick_fix and e.gate_passed]
        return passed[-1].report if passed else self._baseline_report()

    def workload(self, step: Step, config: StageConfig) -> cost.Workload:
        """What a stage will process, for its cost forecast."""
        counts = self.prepared_counts()
        params = config.params
        if isinstance(params, GenerateParams):
            problems = counts.get("scan" if step.phase == TrainingPhase.expansion else "selection")
            if problems is None:
                problems = sum(s.count for s in self.spec.quick_fix.selection)
            return cost.Workload(problems=problems, samples=params.sampling.samples,
                                 max_new_tokens=params.sampling.max_new_tokens)
        if isinstance(params, EvaluateParams):
            return cost.Workload(problems=counts.get("eval", 0), samples=params.sampling.samples,
                                 max_new_tokens=params.sampling.max_new_tokens)
        if isinstance(params, TrainParams):
            distilled = self.status.last_success(stage_key(step.phase, step.iteration, StageName.distill))
            examples = int(distilled.result.get("metrics", {}).get("examples", 0)) if distilled else 0
            return cost.Workload(examples=examples, epochs=params.training.epochs)
        return cost.Workload()

    def prepared_counts(self) -> dict[str, int]:
        record = self.status.last_success(PREPARE_KEY)
        metrics = record.result.get("metrics", {}) if record else {}
        return {k: int(v) for k, v in metrics.items() if k in ("selection", "scan", "eval") and v is not None}
