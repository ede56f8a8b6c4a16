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


# The longest Job-name suffix a campaign can need: the baseline key with the last attempt a spec allows
# (retry.stageRetries <= 10, so attempt <= 11); "-1b1-i20-evaluate-a11" is one shorter.
LONGEST_JOB_SUFFIX = "-baseline-evaluate-a11"
# Longest ConsistencyTraining name: every Job name it derives stays readable (no hash) within MAX_JOB_NAME,
# and the name itself fits the 63-character label value `consistency.dev/campaign`.
MAX_CAMPAIGN_NAME = MAX_JOB_NAME - len(LONGEST_JOB_SUFFIX)


def campaign_name_problem(name: str) -> str | None:
    """Why `name` cannot name a campaign, or None."""
    if len(name) > MAX_CAMPAIGN_NAME:
        return (f"metadata.name: {len(name)} characters; at most {MAX_CAMPAIGN_NAME}, so every Job name "
                f"(<name>{LONGEST_JOB_SUFFIX}) and the consistency.dev/campaign label fit Kubernetes' limits")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name):
        return f"metadata.name: {name!r} is not a DNS label (lowercase letters, digits, '-')"
    return None
