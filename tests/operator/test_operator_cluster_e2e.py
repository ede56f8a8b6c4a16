"""End to end against a real cluster (kind, k3s, a dev cluster).  Runs whenever a kubeconfig is present
(KUBECONFIG or ~/.kube/config) and skips otherwise; set CONSISTENCY_E2E=0 to skip it on purpose (e.g. when
the current context is a cluster you must not touch). Its user must be allowed to create CRDs and
namespaces; it works in a throwaway namespace that it deletes afterwards:

    pytest tests/operator/test_operator_cluster_e2e.py

What it checks that the emulator cannot: the real API server accepts the generated CRD and the Job
manifest (podFailurePolicy, security context, Indexed mode), status writes survive the CRD's
structural schema (pruning), and the real garbage collector removes the Jobs of a deleted CR.
With ``CONSISTENCY_E2E_WORKER_IMAGE`` (an image the cluster can pull, e.g. loaded with
``kind load docker-image``) it also waits for the prepare Job to finish and for the operator to
record its verdict.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

KUBECONFIG = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
if os.environ.get("CONSISTENCY_E2E") == "0" or not Path(KUBECONFIG.split(os.pathsep)[0]).exists():
    pytest.skip("real-cluster e2e: no kubeconfig (or CONSISTENCY_E2E=0)", allow_module_level=True)

pytest.importorskip("kubernetes")

import kubernetes.client  # noqa: E402
import kubernetes.config  # noqa: E402
import kubernetes.utils  # noqa: E402
from consistency_core.crd import crd  # noqa: E402
from operator_harness import OperatorProcess, wait_for  # noqa: E402

GROUP, VERSION, PLURAL = "consistency.dev", "v1alpha1", "consistencytrainings"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    kubernetes.config.load_kube_config(config_file=KUBECONFIG)
    ext = kubernetes.client.ApiextensionsV1Api()
    core = kubernetes.client.CoreV1Api()
    ns = f"ct-e2e-{uuid.uuid4().hex[:6]}"
    body = crd()
    client = kubernetes.client.ApiClient()
    # create_from_dict takes plain dicts in every client version (typed bodies differ between them).
    try:
        kubernetes.utils.create_from_dict(client, body)
    except kubernetes.utils.FailToCreateError as exc:
        if any(e.status != 409 for e in exc.api_exceptions):
            raise  # 409: already installed (e.g. by the Helm chart); use it as it is
    wait_for("CRD established", lambda: any(
        c.type == "Established" and c.status == "True"
        for c in (ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or [])),
        timeout=60, interval=1)
    kubernetes.utils.create_from_dict(client, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    workdir = tmp_path_factory.mktemp("e2e")
    operator = OperatorProcess(Path(KUBECONFIG), workdir, ns, {
        "CONSISTENCY_WORKER_IMAGE": os.environ.get("CONSISTENCY_E2E_WORKER_IMAGE", "busybox:1.36"),
        "CONSISTENCY_STORE_SECRET": ""})  # the campaign's store needs no credentials
    operator.start()
    try:
        yield {"ns": ns, "custom": kubernetes.client.CustomObjectsApi(), "batch": kubernetes.client.BatchV1Api(),
               "operator": operator}
    finally:
        operator.stop()
        core.delete_namespace(ns)


def test_campaign_on_a_real_cluster(api: dict[str, Any]) -> None:
    ns, custom, batch = api["ns"], api["custom"], api["batch"]
    cpu_only = {"gpus": 0, "cpu": "100m", "memory": "256Mi"}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ConsistencyTraining", "metadata": {"name": "e2e"},
            "spec": {"model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                     "store": {"uri": os.environ.get("CONSISTENCY_E2E_STORE", "file:///tmp/e2e")},
                     "resources": {"stages": {s: cpu_only for s in
                                              ("prepare", "generate", "distill", "train", "evaluate")}}}}
    cr = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    def prepare_job() -> Any:
        jobs = batch.list_namespaced_job(ns, label_selector="consistency.dev/campaign=e2e").items
        return jobs[0] if jobs else None
    job = wait_for("prepare Job", prepare_job, timeout=120, interval=1)
    assert job.metadata.name == "e2e-prepare"
    assert job.metadata.owner_references[0].uid == cr["metadata"]["uid"]
    assert job.spec.pod_failure_policy is not None

    def status() -> dict[str, Any]:
        return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "e2e").get("status") or {}
    st = wait_for("status written", lambda: status().get("stage") == "prepare" and status(), timeout=60,
                  interval=1)
    assert st["phase"] == "Running" and st["stages"][0]["jobName"] == "e2e-prepare"  # survived pruning

    if os.environ.get("CONSISTENCY_E2E_WORKER_IMAGE"):
        wait_for("prepare verdict recorded", lambda: status()["stages"][0]["outcome"] != "Running",
                 timeout=480, interval=2)

    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "e2e", propagation_policy="Foreground")
    wait_for("Jobs garbage-collected", lambda: not prepare_job(), timeout=180, interval=2)
