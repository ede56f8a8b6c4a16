"""Which API errors end a campaign and which are retried, and how long the operator backs off (pure)."""

from __future__ import annotations

import pytest
from consistency_operator.apierrors import BACKOFF_CAP_S, backoff, classify


@pytest.mark.parametrize(("status", "operation", "resolvable", "permanent"), [
    (400, "create", True, True), (403, "create", True, True), (403, "patch", True, True),
    (422, "create", True, True), (404, "create", True, True), (409, "create", False, True),
    (404, "get", True, False), (409, "create", True, False),
    (429, "create", True, False), (500, "create", True, False), (503, "patch", True, False),
    (504, "get", True, False), (401, "get", True, False), (0, "create", True, False),
])
def test_classify(status: int, operation: str, resolvable: bool, permanent: bool) -> None:
    assert classify(status, operation=operation, resolvable_conflict=resolvable).permanent is permanent


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in range(5)] == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert backoff(6) == BACKOFF_CAP_S == backoff(1000)
