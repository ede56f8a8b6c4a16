"""A small async Kubernetes API client for exactly the calls the operator makes.

It shares kopf's credentials (the ``ConnectionInfo`` the login handler produced, from in-cluster
service account or KUBECONFIG), so there is one authentication path, and talks plain JSON so the
rest of the operator works with the same dicts kopf hands to handlers.  Every call here must have a
matching entry in ``rbac.REQUIRED_PERMISSIONS``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import kopf

GROUP = "consistency.dev"
VERSION = "v1alpha1"
PLURAL = "consistencytrainings"
KIND = "ConsistencyTraining"
USER_AGENT = "consistency-operator"


class ApiError(Exception):
    """An API request that failed; `operation` (create, get, patch, ...) and `status` (0 = no answer)
    let apierrors.classify tell a permanent refusal from a transient failure."""

    def __init__(self, status: int, reason: str, message: str, operation: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status, self.reason, self.message, self.operation = status, reason, message, operation


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    # False when nothing will ever free the name (set by the caller that looked at the existing object).
    resolvable = True


_OPERATIONS = {"POST": "create", "GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


class Kube:
    def __init__(self, timeout_s: float = 30.0) -> None:
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ready = asyncio.Event()

    def set_credentials(self, info: kopf.ConnectionInfo) -> None:
        """Called from the login handler; a re-login (expired token) replaces the session."""
        self._info = info
        old, self._session = self._session, None
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())
        self._ready.set()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> tuple[aiohttp.ClientSession, str]:
        if self._info is None:
            raise RuntimeError("no Kubernetes credentials yet (the login handler has not run)")
        if self._session is None or self._session.closed:
            headers = {**self._info.as_http_headers(), "User-Agent": USER_AGENT}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=self._info.as_ssl_context()),
                headers=headers, timeout=self._timeout)
        return self._session, self._info.server.rstrip("/")

    async def request(self, method: str, path: str, *, body: Any = None,
                      content_type: str = "application/json", params: dict[str, str] | None = None) -> Any:
        await asyncio.wait_for(self._ready.wait(), timeout=60)
        session, server = self._client()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        operation = _OPERATIONS.get(method, method.lower())
        try:
            async with session.request(method, server + path, data=data, headers=headers, params=params) as resp:
                text = await resp.text()
                if resp.status < 400:
                    return json.loads(text) if text else None
        except (aiohttp.ClientError, TimeoutError) as exc:
            # No answer (timeout, dropped connection): transient by nature.
            raise ApiError(0, type(exc).__name__, str(exc) or "no answer", operation) from exc
        try:
            status = json.loads(text)
            reason, message = status.get("reason", resp.reason), status.get("message", text)
        except (ValueError, AttributeError):
            reason, message = resp.reason or "", text[:500]
        if resp.status == 404:
            raise NotFound(404, reason, message, operation)
        if resp.status == 409:
            raise Conflict(409, reason, message, operation)
        raise ApiError(resp.status, reason, message, operation)

    # ---- ConsistencyTraining ---------------------------------------------------------------------
    @staticmethod
    def campaign_path(namespace: str, name: str, sub: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
        return f"{path}/{sub}" if sub else path

    async def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", self.campaign_path(namespace, name))
        except NotFound:
            return None

    async def patch_campaign_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", self.campaign_path(namespace, name, "status"), body={"status": patch},
                                  content_type="application/merge-patch+json")

    async def patch_campaign_annotations(self, namespace: str, name: str, annotations: dict[str, str | None]
                                         ) -> dict[str, Any]:
        return await self.request("PATCH", self.campaign_path(namespace, name),
                                  body={"metadata": {"annotations": annotations}},
                                  content_type="application/merge-patch+json")

    # ---- Jobs and their Pods ---------------------------------------------------------------------
    async def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body=job)

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        except NotFound:
            return None

    async def job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        # `job-name` is set by every Kubernetes version (the prefixed label only from 1.27).
        selector = f"job-name={job_name}"
        found = await self.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                                   params={"labelSelector": selector})
        # Filter again so a server that ignores the selector cannot mix Jobs up.
        return [p for p in (found or {}).get("items", []) if _pod_job(p) == job_name]


def _pod_job(pod: dict[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
