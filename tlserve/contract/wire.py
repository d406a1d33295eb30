"""Protobuf wire format pieces written by hand where building messages through the API costs too much (the
server's answers) or would need another package (the client's health checks)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
