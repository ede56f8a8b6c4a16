"""Plain-text figures shared by the report and the local runner's terminal output (`consistency status`),
so a duration or a paired change reads the same in both."""

from __future__ import annotations


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def paired_text(change: dict | None) -> str:
    """A paired before/after change as the evaluate stage records it: difference in points, its 95%
    interval and the exact McNemar p-value."""
    if not change or not change.get("n"):
        return ""
    return (f"{change['difference'] * 100:+.1f}pp [{change['low'] * 100:+.1f},{change['high'] * 100:+.1f}] "
            f"p={change['pValue']:.2g}")
