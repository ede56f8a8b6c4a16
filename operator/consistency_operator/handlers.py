"""kopf wiring: which cluster changes trigger a reconcile, and the operator-wide settings.

Triggers (no polling for progress):
* a ConsistencyTraining is created, its spec changes, or the operator (re)starts -> reconcile it;
* a Job labelled as ours finishes (or disappears) -> reconcile the campaign named in its labels;
* a queued Job (suspended, or carrying a Kueue queue label) changes -> reconcile, to see its admission;
* an optional slow resync timer (``CONSISTENCY_RESYNC_SECONDS``, 0 = off) as a safety net for
  missed watch events, as controllers usually have.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from consistency_core.queueing import QUEUE_LABEL

from consistency_operator import apierrors
from consistency_operator.config import OperatorConfig
from consistency_operator.jobs import LABEL_CAMPAIGN, LABEL_MANAGED_BY, MANAGED_BY, job_suspended
from consistency_operator.kube import GROUP, PLURAL, VERSION, ApiError, Kube
from consistency_operator.metrics import METRICS, Metrics
from consistency_operator.observe import CampaignObserver
from consistency_operator.reconcile import Reconciler
from consistency_operator.results import job_finished
from consistency_operator.server import Endpoints

log = logging.getLogger(__name__)

JOB_EVENT_RETRIES = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Runtime:
    """The operator's process-wide objects (no campaign state: that lives in the cluster)."""

    config: OperatorConfig
    metrics: Metrics = field(default_factory=lambda: METRICS)
    kube: Kube = field(default_factory=Kube)
    endpoints: Endpoints = field(init=False)
    reconciler: Reconciler = field(init=False)

    def __post_init__(self) -> None:
        self.endpoints = Endpoints(self.metrics)
        self.reconciler = Reconciler(self.kube, self.config, CampaignObserver(self.metrics))


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The same order kopf uses by default: the kubernetes client's loaders, then the plain readers."""
    try:
        import kubernetes  # noqa: F401  (only probing that the client library is installed)
    except ImportError:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_via_client(**kwargs)


def register(registry: kopf.OperatorRegistry, rt: Runtime, resync_seconds: float = 0) -> None:
    reconciler, endpoints = rt.reconciler, rt.endpoints
    cr = (GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = _login(**kwargs)
        if info is not None:
            rt.kube.set_credentials(info)
            endpoints.ready = True  # startup has run and the API can be reached with these credentials
        return info

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.server_timeout = rt.config.watch_server_timeout
        settings.watching.client_timeout = rt.config.watch_client_timeout
        settings.peering.lifetime = rt.config.peering_lifetime
        # Keep kopf's bookkeeping under our own annotation prefix, never in the typed status.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        # Events come from the state machine; kopf adds only its warnings (e.g. handler errors).
        settings.posting.level = logging.WARNING
        # Watch only our Jobs, server-side.
        settings.watching.label_selectors["batch", "jobs"] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        await endpoints.start(rt.config.metrics_port)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await endpoints.stop()
        await rt.kube.close()

    async def _reconcile(namespace: str, name: str, retry: int = 0) -> None:
        try:
            await reconciler.reconcile(namespace, name)
        except ApiError as exc:
            # Only transient errors get here (permanent ones end the campaign inside reconcile): back off,
            # 5 s doubling to at most 5 minutes, so a struggling API server is not hammered.
            reconciler.observer.error("api")
            raise kopf.TemporaryError(str(exc), delay=apierrors.backoff(retry)) from exc

    # Stable ids: kopf keys its progress annotations by them.
    @kopf.on.resume(*cr, id="reconcile", registry=registry)
    @kopf.on.create(*cr, id="reconcile", registry=registry)
    @kopf.on.update(*cr, id="reconcile", field="spec", registry=registry)
    async def campaign_changed(namespace: str, name: str, retry: int = 0, **_: Any) -> None:
        await _reconcile(namespace, name, retry)

    @kopf.on.delete(*cr, id="forget", registry=registry, optional=True)
    async def campaign_deleted(namespace: str, name: str, **_: Any) -> None:
        # No finalizer (optional=True): the Jobs go with the CR through ownerReferences.
        reconciler.forget(namespace, name)

    @kopf.on.event("batch", "v1", "jobs", id="job-finished", registry=registry,
                   labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_CAMPAIGN: kopf.PRESENT})
    async def job_changed(event: dict[str, Any], body: kopf.Body, namespace: str, **_: Any) -> None:
        job = dict(body)
        queued = job_suspended(job) or QUEUE_LABEL in (body.metadata.labels or {})
        if event.get("type") != "DELETED" and not job_finished(job) and not queued:
            return
        campaign = body.metadata.labels[LABEL_CAMPAIGN]
        # Event handlers are not retried by kopf; a short in-process retry covers API hiccups,
        # the resync timer and the next restart's resume cover anything longer.
        for delay in (*JOB_EVENT_RETRIES, None):
            try:
                await reconciler.reconcile(namespace, campaign)
                return
            except (ApiError, kopf.TemporaryError) as exc:
                reconciler.observer.error("api")
                if delay is None:
                    log.error("%s/%s: giving up on Job %s event: %s", namespace, campaign, body.metadata.name, exc)
                    return
                await asyncio.sleep(delay)

    if resync_seconds > 0:
        @kopf.timer(*cr, id="resync", registry=registry, interval=resync_seconds, idle=resync_seconds)
        async def resync(namespace: str, name: str, retry: int = 0, **_: Any) -> None:
            await _reconcile(namespace, name, retry)
