"""A YAML loader for files a user hands to `consistency run`: bounded in size and free of aliases.

YAML anchors and aliases let a few hundred bytes stand for gigabytes once expanded (the "billion
laughs" document), and any deep copy or JSON round trip of the loaded data expands them. A campaign
has no use for them, so any alias is refused while the document is composed (before anything is
expanded), and a file over MAX_BYTES is refused before it is parsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024  # 1 MiB: a campaign file is a few KiB


class BoundedYamlError(ValueError):
    """The file is too large or uses a YAML alias; the message names the file (and line)."""


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise BoundedYamlError(
                f"line {mark.line + 1}, column {mark.column + 1}: YAML aliases (*{event.anchor}) are not allowed "
                "in a campaign file (they can expand without bound); write the value out")
        return super().compose_node(parent, index)


def read_bounded(path: Path, limit: int = MAX_BYTES) -> str:
    """The file's text, refused when over `limit` bytes (checked before and while reading)."""
    size = path.stat().st_size
    if size > limit:
        raise BoundedYamlError(f"{path}: {size} bytes; a campaign file may have at most {limit} bytes")
    with path.open("rb") as fh:
        data = fh.read(limit + 1)  # a growing file or a FIFO cannot slip past the stat
    if len(data) > limit:
        raise BoundedYamlError(f"{path}: more than {limit} bytes; a campaign file may have at most {limit} bytes")
    return data.decode("utf-8")


def load_all(path: Path, limit: int = MAX_BYTES) -> list[Any]:
    """Every document of a bounded, alias-free YAML file."""
    text = read_bounded(path, limit)
    try:
        return list(yaml.load_all(text, Loader=_NoAliasLoader))
    except BoundedYamlError as exc:
        raise BoundedYamlError(f"{path}: {exc}") from None
