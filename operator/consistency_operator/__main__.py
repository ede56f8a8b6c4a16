"""Entry point: ``python -m consistency_operator`` (also the container image's command).

Configuration comes from flags and environment (see ``config.py``); credentials from the in-cluster
service account or KUBECONFIG, whichever is present.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import kopf

from consistency_operator.config import parse_config
from consistency_operator.handlers import Runtime, register


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    kopf.configure(verbose=config.verbose, log_prefix=True)
    registry = kopf.OperatorRegistry()
    runtime = Runtime(config)
    register(registry, runtime, resync_seconds=config.resync_seconds)
    logging.getLogger(__name__).info(
        "watching %s; peering %s; metrics :%d, health :%d",
        ",".join(config.namespaces) or "all namespaces", config.peering or "off (standalone)",
        config.metrics_port, config.health_port)
    asyncio.run(kopf.operator(
        registry=registry,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        standalone=not config.peering,
        peering_name=config.peering or None,
        priority=config.priority,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
