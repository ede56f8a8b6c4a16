"""HTTP endpoints on the metrics port: ``/metrics`` (Prometheus) and ``/readyz`` (readiness probe).

Liveness is kopf's own endpoint (``/healthz`` on the health port), which answers only while the
operator's event loop is alive.  Readiness turns true once the startup handlers have run and the
operator has credentials for the API server, and false again when it shuts down.  A standby of an
active/standby pair is ready too: it is healthy and will take over when the active one goes.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from consistency_operator.metrics import Metrics


class Endpoints:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.ready = False
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready\n")

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        self.ready = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
