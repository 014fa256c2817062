"""HMAC-SHA1 (RFC 2104) of messages that all begin with the same bytes, as Twilio's
signatures of the requests to one URL do: the two SHA-1 states are seeded once (the inner one
with the padded key and those first bytes) and copied for each message instead of started
over; a copy of an `hmac.HMAC` costs twice as much, through its Python methods. The receipts
listener checks the carrier's signatures with it (api/carrier_signature.py UrlSignatures) and
the emulator signs its status callbacks with it (deploy/local/emulator.py StatusCallbacks)."""

import hashlib

_SHA1_BLOCK = 64
# A key's bytes XORed with HMAC's inner and outer pads, as bytes.translate tables.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class SeededHmac:
    """HMAC-SHA1 with `key` of `prefix` followed by the bytes of each message."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, prefix: bytes) -> None:
        if len(key) > _SHA1_BLOCK:
            key = hashlib.sha1(key).digest()
        key = key.ljust(_SHA1_BLOCK, b"\0")
        self._inner = hashlib.sha1(key.translate(_IPAD))
        self._inner.update(prefix)
        self._outer = hashlib.sha1(key.translate(_OPAD))

    def digest(self, rest: bytes) -> bytes:
        """The HMAC of the prefix followed by `rest`."""
        inner = self._inner.copy()
        inner.update(rest)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()
