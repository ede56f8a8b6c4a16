"""Every API permission the operator needs, as (api_group, resource, verb).

This is the source of truth for the Helm chart's ClusterRole/Role: the packaging tests check the
chart against it, and the operator tests check it against the requests the real operator makes to
the emulated API server (so nothing here is unused and nothing used is missing).
"""

from __future__ import annotations

CORE = ""
CRD_GROUP = "consistency.dev"

# Always needed.
CAMPAIGN_PERMISSIONS: list[tuple[str, str, str]] = [
    (CRD_GROUP, "consistencytrainings", "get"),  # re-read the CR on every reconcile
    (CRD_GROUP, "consistencytrainings", "list"),  # kopf's initial listing
    (CRD_GROUP, "consistencytrainings", "watch"),
    (CRD_GROUP, "consistencytrainings", "patch"),  # kopf's bookkeeping + pinned-spec annotations
    (CRD_GROUP, "consistencytrainings/status", "patch"),
    ("batch", "jobs", "get"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("batch", "jobs", "create"),
    (CORE, "pods", "list"),  # termination messages of a finished Job's pods
    (CORE, "events", "create"),
]

# Only when watching specific namespaces (not cluster-wide): kopf follows namespace creation/deletion.
NAMESPACE_PERMISSIONS: list[tuple[str, str, str]] = [
    (CORE, "namespaces", "list"),
    (CORE, "namespaces", "watch"),
]

# Only with CONSISTENCY_PEERING set (active/standby): KopfPeering per namespace, or
# ClusterKopfPeering when cluster-wide.
PEERING_PERMISSIONS: list[tuple[str, str, str]] = [
    ("kopf.dev", "kopfpeerings", "list"),
    ("kopf.dev", "kopfpeerings", "watch"),
    ("kopf.dev", "kopfpeerings", "patch"),
    ("kopf.dev", "clusterkopfpeerings", "list"),
    ("kopf.dev", "clusterkopfpeerings", "watch"),
    ("kopf.dev", "clusterkopfpeerings", "patch"),
]

REQUIRED_PERMISSIONS: list[tuple[str, str, str]] = [
    *CAMPAIGN_PERMISSIONS,
    *NAMESPACE_PERMISSIONS,
    *PEERING_PERMISSIONS,
]
