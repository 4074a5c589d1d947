"""Object ids (``msgbatch_...``, ``batch_...``, ``file-...``, ``batch_req_...``) from entropy the
caller supplies (``os.urandom(16)`` in the adapters, fixed bytes in tests), so the core draws no
randomness of its own and a test can predict every id it renders.
"""

from __future__ import annotations

import hashlib

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Long enough that 16 random bytes never collide in practice (128 bits), short enough to read.
ID_BODY_LENGTH = 24


def base62(data: bytes, length: int = ID_BODY_LENGTH) -> str:
    """``data`` as ``length`` base-62 characters (left-padded with zeros, truncated from the left)."""
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(_ALPHABET[remainder])
    text = "".join(reversed(digits)).rjust(length, "0")
    return text[-length:]


def new_id(prefix: str, entropy: bytes) -> str:
    """A fresh object id; ``entropy`` must be at least 16 random bytes."""
    if len(entropy) < 16:
        raise ValueError("an object id needs at least 16 bytes of entropy")
    return prefix + base62(entropy)


def derived_id(prefix: str, *parts: str) -> str:
    """An id that is a pure function of ``parts``: the same item always gets the same
    ``batch_req_...`` id, so re-rendering an output file after a crash yields identical bytes."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return prefix + base62(digest[:16])
