"""Deterministic, DNS-safe names: the same stage attempt always maps to the same Job name, which is what
makes Job creation idempotent across operator restarts."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

# Pods of an Indexed Job get the hostname `<job>-<index>`; keep room for the index under 63 chars.
MAX_JOB_NAME = 52


def dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label or "x"


def job_name(campaign: str, key: str, attempt: int) -> str:
    suffix = key if attempt == 1 else f"{key}-a{attempt}"
    name = dns_label(f"{campaign}-{suffix}")
    if len(name) <= MAX_JOB_NAME:
        return name
    digest = hashlib.sha256(f"{campaign}/{suffix}".encode()).hexdigest()[:6]
    room = MAX_JOB_NAME - len(suffix) - len(digest) - 2
    head = dns_label(campaign)[: max(room, 1)].rstrip("-")
    return dns_label(f"{head}-{digest}-{suffix}")[:MAX_JOB_NAME].rstrip("-")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
