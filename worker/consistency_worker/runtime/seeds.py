"""Seeds derived from the campaign seed and names: the one place randomness is keyed, so a draw depends
only on what it is for (a problem, a dataset, an epoch), never on order, shard or process (Python's
hash() is salted per process, so it cannot be used)."""

from __future__ import annotations

import hashlib
import random


def _hash(parts: tuple[object, ...], sep: str, bits: int) -> int:
    digest = hashlib.sha256(sep.join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[: (bits + 7) // 8], "big") & ((1 << bits) - 1)


def derive_seed(*parts: object) -> int:
    """A 31-bit seed for engines (torch generators, vLLM requests): every engine accepts that range."""
    return _hash(parts, "\x1f", 31)


def rng_seed(*parts: object) -> int:
    """A 64-bit seed for Python's random: the ':'-joined form prepare and distill have always drawn with,
    kept so existing campaigns select and keep the same problems."""
    return _hash(parts, ":", 64)


def derive_rng(*parts: object) -> random.Random:
    return random.Random(rng_seed(*parts))
