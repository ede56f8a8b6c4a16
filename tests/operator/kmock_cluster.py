"""A stateful fake Kubernetes API server (KMock's ``KubernetesEmulator``) for the operator tests.

The emulator runs on its own event loop in a background thread and listens on localhost over
HTTP, so the operator under test runs as a separate process with an ordinary kubeconfig and
talks real HTTP.  The tests talk to the emulator over HTTP too (``requests``), the way
``kubectl`` would, so every change they make also reaches the operator's watch streams.

KMock 0.8 stores objects as plain JSON and leaves out several things a real API server does;
``ApiServer`` (a thin subclass) adds those the operator relies on:

* ``/api/v1/namespaces[/<name>]`` is mis-parsed by kmock as a namespaced prefix (and crashes on
  the bare list path); kopf lists and watches namespaces when it serves specific namespaces, so
  the path parser is wrapped to treat that path as the cluster-scoped ``namespaces`` resource.
* on create: ``metadata.generateName`` (kopf posts Events that way), ``uid`` (ownerReferences
  need it), ``creationTimestamp``, ``generation`` and ``resourceVersion``;
* on update: ``resourceVersion`` and, for spec changes, ``generation`` bumps;
* ``labelSelector`` on list and watch (equality, inequality and existence terms), which kmock
  ignores: without it every Pod listing returns the whole namespace;
* request matching in O(1): kmock decides which reaction serves a request by re-filtering its whole
  request history on every request (quadratic; ~150 ms per request after a few hundred), so while a
  request is being served the history it sees is just that request.  The full log stays available
  to the tests (``requests_snapshot``).

What it deliberately does NOT emulate: controllers.  Nothing progresses on its own, no Pods are
scheduled, and there is no garbage collector; the tests play the Job controller and call
``collect_garbage()`` to simulate the ownerReferences cascade.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import requests
from kmock._internal import parsing

_original_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = [p for p in path.strip('/').split('/') if p]
    # /api/v1/namespaces, /api/v1/namespaces/<name>, /api/v1/namespaces/<name>/status.
    # A namespaced resource always has a plural after the namespace name, and no core
    # resource is called "status" or "finalize", so this cannot swallow a namespaced path.
    if parts[:3] == ['api', 'v1', 'namespaces'] and (len(parts) <= 4 or (
            len(parts) == 5 and parts[4] in ('status', 'finalize'))):
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath('', 'v1', 'namespaces', None, name, sub)
    return _original_parse_path(path)


# The request parser looks the function up through the module at call time.
parsing.parse_path = _parse_path

CRD_GROUP = 'consistency.dev'
CRD_VERSION = 'v1alpha1'
CRD_PLURAL = 'consistencytrainings'

RESOURCES: dict[str, dict[str, Any]] = {
    'v1/namespaces': {'kind': 'Namespace', 'singular': 'namespace', 'namespaced': False,
                      'verbs': {'list', 'watch', 'get', 'create'}},
    'v1/pods': {'kind': 'Pod', 'singular': 'pod', 'namespaced': True,
                'verbs': {'list', 'watch', 'get', 'create', 'patch', 'delete'}, 'subresources': {'status'}},
    'v1/events': {'kind': 'Event', 'singular': 'event', 'namespaced': True,
                  'verbs': {'list', 'watch', 'get', 'create'}},
    'v1/secrets': {'kind': 'Secret', 'singular': 'secret', 'namespaced': True,
                   'verbs': {'list', 'watch', 'get', 'create'}},
    'batch/v1/jobs': {'kind': 'Job', 'singular': 'job', 'namespaced': True,
                      'verbs': {'list', 'watch', 'get', 'create', 'patch', 'delete'},
                      'subresources': {'status'}},
    f'{CRD_GROUP}/{CRD_VERSION}/{CRD_PLURAL}': {
        'kind': 'ConsistencyTraining', 'singular': 'consistencytraining', 'namespaced': True,
        'shortnames': {'ct'}, 'verbs': {'list', 'watch', 'get', 'create', 'patch', 'delete'},
        'subresources': {'status'}},
    'kopf.dev/v1/kopfpeerings': {'kind': 'KopfPeering', 'singular': 'kopfpeering', 'namespaced': True,
                                 'verbs': {'list', 'watch', 'get', 'create', 'patch'}},
    'kopf.dev/v1/clusterkopfpeerings': {'kind': 'ClusterKopfPeering', 'singular': 'clusterkopfpeering',
                                        'namespaced': False,
                                        'verbs': {'list', 'watch', 'get', 'create', 'patch'}},
}

# Resources by plural, to turn a request path into an RBAC rule.
_API_GROUPS = {key.rsplit('/', 1)[1]: (key.rsplit('/', 2)[0] if key.count('/') == 2 else '')
               for key in RESOURCES}


_serving: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar('serving', default=None)


class ApiServer(kmock.KubernetesEmulator):
    """KMock's emulator plus the metadata bookkeeping of a real API server (see module doc)."""

    _revisions = itertools.count(1)

    def __iter__(self) -> Iterator[kmock.Request]:
        current = _serving.get()
        if current is not None:
            yield current  # matching reactions to the request in flight (see module doc)
        else:
            yield from super().__iter__()

    # (monotonic seconds, method, path, object name, user agent) per request, for latency measurements.
    timeline: list[tuple[float, str, str, str | None, str]]

    async def _handle(self, request: kmock.Request) -> Any:
        if not hasattr(self, 'timeline'):
            self.timeline = []
        name = request.name
        if name is None and isinstance(request.data, dict):
            name = request.data.get('metadata', {}).get('name')
        self.timeline.append((time.monotonic(), request.method, request.url.path, name,
                              request.headers.get('User-Agent', '')))
        fault = take_fault(self, request.method, request.url.path)
        if fault is not None:
            # An injected refusal, shaped like the real API server's metav1.Status.
            return aiohttp.web.json_response(
                {'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure', 'message': fault.message,
                 'reason': fault.reason, 'code': fault.status}, status=fault.status)
        token = _serving.set(request)
        try:
            return await self._handle_stamped(request)
        finally:
            _serving.reset(token)

    async def _handle_stamped(self, request: kmock.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault('metadata', {})
            if request.action == kmock.action.CREATE:
                self._stamp_new(request, meta)
            elif request.action == kmock.action.UPDATE:
                meta['resourceVersion'] = str(next(self._revisions))
                if 'spec' in request.data and not request.subresource:
                    current = self._find(request)
                    if current is not None and current.get('spec') != request.data['spec']:
                        meta['generation'] = int(current.get('metadata', {}).get('generation', 1)) + 1
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload = await super()._serve_list(request)
        selector = parse_selector(request.params.get('labelSelector', ''))
        if selector:
            payload['items'] = [obj for obj in payload['items'] if selector_matches(selector, obj)]
        return payload

    async def _serve_watch(self, request: kmock.Request) -> Any:
        selector = parse_selector(request.params.get('labelSelector', ''))
        async for event in super()._serve_watch(request):
            if not selector or not isinstance(event, dict) or selector_matches(selector, event.get('object') or {}):
                yield event

    def _stamp_new(self, request: kmock.Request, meta: dict[str, Any]) -> None:
        if not meta.get('name') and meta.get('generateName'):
            # Longer than the real server's 5 characters: it has a retry on collision, this has not.
            meta['name'] = meta['generateName'] + uuid.uuid4().hex[:12]
        if request.namespace and not meta.get('namespace'):
            meta['namespace'] = request.namespace
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = _now()
        meta['generation'] = 1
        meta['resourceVersion'] = str(next(self._revisions))

    def _find(self, request: kmock.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None


@dataclasses.dataclass
class Fault:
    """Answer requests of `method` whose path contains `path_part` with `status` (`times` times; None = always)."""

    method: str
    path_part: str
    status: int
    reason: str
    message: str
    times: int | None = None
    served: int = 0


_faults_lock = threading.Lock()


def take_fault(server: ApiServer, method: str, path: str) -> Fault | None:
    with _faults_lock:
        for fault in getattr(server, 'faults', []):
            if fault.method == method.upper() and fault.path_part in path and \
                    (fault.times is None or fault.served < fault.times):
                fault.served += 1
                return fault
    return None


Selector = list[tuple[str, str, str | None]]


def parse_selector(text: str) -> Selector:
    """Equality-based label selector terms: (key, op, value) with op in =, !=, exists, !exists."""
    terms: Selector = []
    for raw in filter(None, (t.strip() for t in text.split(','))):
        if '!=' in raw:
            key, value = raw.split('!=', 1)
            terms.append((key.strip(), '!=', value.strip()))
        elif '=' in raw:
            key, value = raw.replace('==', '=').split('=', 1)
            terms.append((key.strip(), '=', value.strip()))
        elif raw.startswith('!'):
            terms.append((raw[1:].strip(), '!exists', None))
        else:
            terms.append((raw, 'exists', None))
    return terms


def selector_matches(selector: Selector, obj: dict[str, Any]) -> bool:
    labels = (obj.get('metadata') or {}).get('labels') or {}
    for key, op, value in selector:
        if op == '=' and labels.get(key) != value:
            return False
        if op == '!=' and labels.get(key) == value:
            return False
        if op == 'exists' and key not in labels:
            return False
        if op == '!exists' and key in labels:
            return False
    return True


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


class EmulatedCluster:
    """Owns the emulator thread and offers kubectl-like synchronous helpers over HTTP."""

    def __init__(self, workdir: Path, namespaces: tuple[str, ...] = ('default',)) -> None:
        self.workdir = workdir
        self.namespaces = namespaces
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name='kmock', daemon=True)
        self.server: ApiServer | None = None
        self.url = ''
        self.http = requests.Session()

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> EmulatedCluster:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError('the KMock emulator did not start within 10 s')
        for ns in self.namespaces:
            self.create('v1', 'namespaces', {'metadata': {'name': ns}})
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.http.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = ApiServer()
        for key, info in RESOURCES.items():
            server.resources[key] = kmock.ResourceInfo(**info)
        async with server, kmock.Server(server) as srv:
            self.server = server
            self.url = str(srv.url).rstrip('/')
            self._started.set()
            await self._stop.wait()
            # Close open watch streams so the server shuts down promptly.
            with contextlib.suppress(Exception):
                await srv.server.close()

    def write_kubeconfig(self, path: Path | None = None) -> Path:
        path = path or self.workdir / 'kubeconfig'
        config = {
            'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'kmock',
            'clusters': [{'name': 'kmock', 'cluster': {'server': self.url}}],
            'users': [{'name': 'kmock', 'user': {'token': 'kmock-test-token'}}],
            'contexts': [{'name': 'kmock', 'context': {'cluster': 'kmock', 'user': 'kmock',
                                                      'namespace': self.namespaces[0]}}],
        }
        path.write_text(json.dumps(config))
        return path

    # ---- kubectl-like HTTP helpers -------------------------------------------------------------
    def path(self, api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
             sub: str | None = None) -> str:
        prefix = '/api/v1' if api_version == 'v1' else f'/apis/{api_version}'
        parts = [prefix]
        if namespace:
            parts.append(f'namespaces/{namespace}')
        parts.append(plural)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        return self.url + '/'.join(parts)

    def _check(self, resp: requests.Response) -> dict[str, Any]:
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, resp.text)
        return resp.json()

    def create(self, api_version: str, plural: str, body: dict[str, Any], namespace: str | None = None
               ) -> dict[str, Any]:
        body = {'apiVersion': api_version, **body}
        return self._check(self.http.post(self.path(api_version, plural, namespace), json=body, timeout=10))

    def get(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        resp = self.http.get(self.path(api_version, plural, namespace, name), timeout=10)
        if resp.status_code == 404:
            return None
        return self._check(resp)

    def list(self, api_version: str, plural: str, namespace: str | None = None,
             labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        # KMock ignores labelSelector, so selection happens here.
        items = self._check(self.http.get(self.path(api_version, plural, namespace), timeout=10))['items']
        labels = labels or {}
        return [i for i in items
                if all(i.get('metadata', {}).get('labels', {}).get(k) == v for k, v in labels.items())]

    def patch(self, api_version: str, plural: str, namespace: str | None, name: str, body: dict[str, Any],
              sub: str | None = None) -> dict[str, Any]:
        resp = self.http.patch(self.path(api_version, plural, namespace, name, sub), data=json.dumps(body),
                               headers={'Content-Type': 'application/merge-patch+json'}, timeout=10)
        return self._check(resp)

    def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> bool:
        resp = self.http.delete(self.path(api_version, plural, namespace, name), timeout=10)
        if resp.status_code == 404:
            return False
        self._check(resp)
        return True

    def collect_garbage(self) -> list[tuple[str, str, str]]:
        """Simulate the cluster's garbage collector: delete objects whose owners are all gone.

        Only Jobs and Pods are scanned (what this operator owns).  Returns what was deleted.
        """
        deleted: list[tuple[str, str, str]] = []
        live_uids = {o['metadata'].get('uid') for o in self._all_objects()}
        for api_version, plural in (('batch/v1', 'jobs'), ('v1', 'pods')):
            for obj in self.list(api_version, plural):
                owners = obj['metadata'].get('ownerReferences') or []
                if owners and not any(o.get('uid') in live_uids for o in owners):
                    meta = obj['metadata']
                    if self.delete(api_version, plural, meta.get('namespace'), meta['name']):
                        deleted.append((plural, meta.get('namespace'), meta['name']))
        return deleted

    def _all_objects(self) -> list[dict[str, Any]]:
        objs: list[dict[str, Any]] = []
        for key in RESOURCES:
            api_version, plural = key.rsplit('/', 1)
            objs.extend(self.list(api_version, plural))
        return objs

    # ---- injected API errors ---------------------------------------------------------------------
    def inject_fault(self, method: str, path_part: str, status: int, reason: str, message: str,
                     times: int | None = None) -> Fault:
        assert self.server is not None
        fault = Fault(method.upper(), path_part, status, reason, message, times)
        with _faults_lock:
            if not hasattr(self.server, 'faults'):
                self.server.faults = []
            self.server.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        assert self.server is not None
        with _faults_lock:
            self.server.faults = []

    # ---- request log (for RBAC) ---------------------------------------------------------------
    def requests_snapshot(self) -> list[kmock.Request]:
        assert self.server is not None
        return list(self.server)

    def rbac_used(self, user_agent_prefix: str | None = None) -> set[tuple[str, str, str]]:
        """(api_group, resource[/subresource], verb) for every request served, like the audit log."""
        used: set[tuple[str, str, str]] = set()
        for req in self.requests_snapshot():
            if user_agent_prefix and not req.headers.get('User-Agent', '').startswith(user_agent_prefix):
                continue
            rule = request_to_rule(req.method, req.url.path, dict(req.params))
            if rule is not None:
                used.add(rule)
        return used

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float = 15.0,
                 interval: float = 0.05) -> Any:
        return wait_for(what, probe, timeout, interval)


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f'HTTP {status}: {text[:300]}')
        self.status = status


def request_to_rule(method: str, path: str, params: dict[str, str]) -> tuple[str, str, str] | None:
    """Map an API request to the RBAC (group, resource, verb) it needs, as the authorizer does."""
    parts = [p for p in path.strip('/').split('/') if p]
    if not parts or parts[0] not in ('api', 'apis'):
        return None
    parts = parts[2:] if parts[0] == 'api' else parts[3:]
    if not parts:
        return None  # discovery endpoints (/api/v1, /apis/<group>/<version>) need no RBAC rule
    if len(parts) >= 3 and parts[0] == 'namespaces':
        parts = parts[2:]
    plural, name, sub = parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else None)
    group = _API_GROUPS.get(plural, '?')
    method = method.upper()
    if method == 'GET':
        verb = 'watch' if params.get('watch') in ('true', '1') else ('get' if name else 'list')
    else:
        verb = {'POST': 'create', 'PATCH': 'patch', 'PUT': 'update', 'DELETE': 'delete' if name else
                'deletecollection'}.get(method, method.lower())
    return (group, f'{plural}/{sub}' if sub else plural, verb)


@contextlib.contextmanager
def running_cluster(workdir: Path, namespaces: tuple[str, ...] = ('default',)) -> Iterator[EmulatedCluster]:
    cluster = EmulatedCluster(workdir, namespaces).start()
    try:
        yield cluster
    finally:
        cluster.stop()
