"""Which Kubernetes API errors end a campaign and which are worth another try (pure).

A permanent error is one the same request will meet again however long the operator waits: the
server refuses the object itself (400 Bad Request, 422 Invalid: a label too long, a quantity the
server cannot parse), the operator is not allowed to make it (403, e.g. an admission policy or a
missing RBAC rule), the namespace is gone (404 on a create), or a name is taken by an object nothing
will ever remove (409 with no owner to garbage-collect it).  Retrying those forever hides the reason
from the user, so they end the campaign `Failed` with the server's message.

Everything else (429 Too Many Requests, 5xx, timeouts, a dropped connection, 401 while a token is
refreshed) is transient and retried with capped exponential backoff.
"""

from __future__ import annotations

from dataclasses import dataclass

PERMANENT_STATUSES = frozenset({400, 403, 405, 413, 415, 422})
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 300.0


@dataclass(frozen=True)
class Verdict:
    permanent: bool
    why: str


def classify(status: int, *, operation: str = "", resolvable_conflict: bool = True) -> Verdict:
    """Permanent or transient, for an HTTP status from the API server (0 = no answer at all)."""
    if status in PERMANENT_STATUSES:
        return Verdict(True, f"the API server refused the request (HTTP {status})")
    if status == 404 and operation == "create":
        return Verdict(True, "the namespace or resource type does not exist (HTTP 404 on create)")
    if status == 409 and not resolvable_conflict:
        return Verdict(True, "the name is taken by an object nothing will remove (HTTP 409)")
    return Verdict(False, f"transient (HTTP {status})" if status else "transient (no answer)")


def backoff(retry: int) -> float:
    """Delay before retry number `retry` (0-based): 5 s, 10 s, 20 s, ... capped at 5 minutes."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, min(retry, 16)))
