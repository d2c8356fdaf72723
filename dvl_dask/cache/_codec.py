"""How cached values become bytes: plain values without pickle, other values as signed pickles.

A utility returns numbers, so almost every cached value is a float, an int, a
numpy scalar or small array, or the :class:`RunningStats` of repeated
evaluations. Those are written in a *value-only* encoding that decoding can
never turn into code: a tag byte and the raw numbers. Anything else (tuples,
dicts, user objects) is pickled, and pickles are only written and read with a
real secret.

Every entry is authenticated::

    magic (4 bytes) | HMAC-SHA256(secret, magic | key | 0 | body) | body
    body = kind (1 byte: b"V" value-only, b"P" pickle) | payload

The key is part of the MAC, so a valid entry replayed under another key does
not verify. :func:`decode` checks the MAC before it looks at the body, and
parses value-only bodies without :mod:`pickle`. Entries written by dvl_dask
versions that signed with a public built-in key have another magic and are
rejected unread.
"""

from __future__ import annotations

import hmac
import math
import pickle
import struct
from typing import Any

import numpy as np

from ..errors import CacheError
from ._stats import RunningStats

__all__ = ["MAGIC", "Rejected", "decode", "encode", "encode_plain"]

#: Format marker of current entries (version 2: value-only bodies, no public key).
MAGIC = b"DVL\x02"
_MAC_SIZE = 32
_PICKLE_PROTOCOL = 5
_VALUE = b"V"
_PICKLE = b"P"

# Tags of value-only payloads.
_NONE, _BOOL, _INT, _FLOAT, _STR, _BYTES = b"n", b"b", b"i", b"f", b"s", b"B"
_NP_SCALAR, _NP_ARRAY, _STATS = b"g", b"a", b"R"
#: numpy dtype kinds stored without pickle: bool, integers, floats, complex.
_PLAIN_KINDS = "biufc"
_MAX_NDIM = 32


class Rejected(Exception):
    """A stored entry failed verification or parsing; it was not unpickled."""


def _mac(secret: bytes, key: str, body: bytes) -> bytes:
    return hmac.digest(secret, MAGIC + key.encode("ascii") + b"\0" + body, "sha256")


def encode_plain(value: Any) -> bytes | None:
    """The value-only payload of ``value``, or None if it needs pickle."""
    kind = type(value)
    if value is None:
        return _NONE
    if kind is bool:
        return _BOOL + (b"\1" if value else b"\0")
    if kind is int:
        return _INT + str(value).encode("ascii")
    if kind is float:
        return _FLOAT + struct.pack("<d", value)
    if kind is str:
        return _STR + value.encode("utf-8", "surrogatepass")
    if kind is bytes:
        return _BYTES + value
    if kind is RunningStats:
        return _STATS + struct.pack("<qdd", value.count, value.mean, value.m2)
    if isinstance(value, np.generic) and value.dtype.kind in _PLAIN_KINDS:
        dtype = value.dtype.str.encode("ascii")
        return _NP_SCALAR + bytes([len(dtype)]) + dtype + value.tobytes()
    if kind is np.ndarray and value.dtype.kind in _PLAIN_KINDS and value.ndim <= _MAX_NDIM:
        dtype = value.dtype.str.encode("ascii")
        header = bytes([len(dtype)]) + dtype + bytes([value.ndim]) + struct.pack(f"<{value.ndim}q", *value.shape)
        return _NP_ARRAY + header + np.ascontiguousarray(value).tobytes()
    return None


def _plain_dtype(payload: bytes, offset: int) -> tuple[np.dtype[Any], int]:
    size = payload[offset]
    dtype = np.dtype(payload[offset + 1 : offset + 1 + size].decode("ascii"))
    if dtype.kind not in _PLAIN_KINDS or dtype.hasobject:
        raise Rejected("not a plain dtype")
    return dtype, offset + 1 + size


def decode_plain(payload: bytes) -> Any:
    """Parse a value-only payload (never unpickles); raise :class:`Rejected` if malformed."""
    if not payload:
        raise Rejected("empty payload")
    tag, rest = payload[:1], payload[1:]
    try:
        if tag == _NONE and not rest:
            return None
        if tag == _BOOL and rest in (b"\0", b"\1"):
            return rest == b"\1"
        if tag == _INT:
            return int(rest.decode("ascii"))
        if tag == _FLOAT:
            return struct.unpack("<d", rest)[0]
        if tag == _STR:
            return rest.decode("utf-8", "surrogatepass")
        if tag == _BYTES:
            return bytes(rest)
        if tag == _STATS:
            count, mean, m2 = struct.unpack("<qdd", rest)
            if count < 0 or math.isnan(m2):
                raise Rejected("invalid statistics")
            return RunningStats(count, mean, m2)
        if tag == _NP_SCALAR:
            dtype, offset = _plain_dtype(rest, 0)
            if len(rest) - offset != dtype.itemsize:
                raise Rejected("truncated scalar")
            return np.frombuffer(rest, dtype=dtype, count=1, offset=offset)[0]
        if tag == _NP_ARRAY:
            dtype, offset = _plain_dtype(rest, 0)
            ndim = rest[offset]
            if ndim > _MAX_NDIM:
                raise Rejected("too many dimensions")
            shape = struct.unpack_from(f"<{ndim}q", rest, offset + 1)
            offset += 1 + 8 * ndim
            if any(n < 0 for n in shape) or len(rest) - offset != math.prod(shape) * dtype.itemsize:
                raise Rejected("truncated array")
            return np.frombuffer(rest, dtype=dtype, offset=offset).reshape(shape).copy()
    except (ValueError, TypeError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise Rejected(f"malformed value: {exc}") from None
    raise Rejected("unknown value tag")


def encode(key: str, value: Any, secret: bytes) -> bytes:
    """Bytes to store ``value`` under ``key``: value-only when possible, else a pickle; signed."""
    plain = encode_plain(value)
    if plain is not None:
        body = _VALUE + plain
    else:
        try:
            body = _PICKLE + pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            raise CacheError(
                f"Cannot cache a value of type {type(value).__name__} under {key!r}: it cannot be pickled "
                f"({type(exc).__name__}: {exc}). To fix, return picklable values from cached functions."
            ) from exc
    return MAGIC + _mac(secret, key, body) + body


def decode(key: str, data: bytes, secret: bytes) -> Any:
    """The value stored in ``data`` under ``key``; :class:`Rejected` unless it verifies.

    Nothing is unpickled before the signature verifies, and value-only
    entries are never unpickled at all.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Rejected("not bytes")
    data = bytes(data)
    head = len(MAGIC) + _MAC_SIZE
    if len(data) <= head or data[: len(MAGIC)] != MAGIC:
        raise Rejected("unknown format")
    mac, body = data[len(MAGIC) : head], data[head:]
    if not hmac.compare_digest(mac, _mac(secret, key, body)):
        raise Rejected("signature mismatch")
    if body[:1] == _VALUE:
        return decode_plain(body[1:])
    if body[:1] == _PICKLE:
        return pickle.loads(body[1:])
    raise Rejected("unknown body kind")
