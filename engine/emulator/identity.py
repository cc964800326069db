"""ECIDs and the ``kndctr_*`` state entries that carry them (research/adobe-edge.md §5).

The identity entry's value is built like Edge's own: URL-safe base64 of a protobuf message whose
field 1 is the ECID and field 30 the write time. Decoding it needs no table, so a visitor keeps
its ECID across emulator restarts, and a real Edge identity cookie is recognised too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets

__all__ = [
    "decode_identity",
    "encode_identity",
    "fpid_ecid",
    "is_ecid",
    "mint_ecid",
    "org_from_key",
    "org_key",
    "state_key",
]

_ECID = re.compile(r"\d{38}")
_KEY_PREFIX = "kndctr_"
_ADOBE = "_AdobeOrg_"
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_KNOWN_NAMES = ("identity", "cluster", "consent", "consent_check")


def mint_ecid() -> str:
    """A new random ECID: 38 decimal digits (leading zeros kept)."""
    return f"{secrets.randbelow(10**38):038d}"


def fpid_ecid(org: str, fpid: str) -> str:
    """The ECID Edge derives from an FPID: deterministic per org and FPID."""
    digest = hashlib.sha256(f"{org}\0{fpid}".encode()).digest()
    return f"{int.from_bytes(digest) % 10**38:038d}"


def is_ecid(value: object) -> bool:
    """Whether ``value`` has the shape of an ECID (38 digits)."""
    return isinstance(value, str) and _ECID.fullmatch(value) is not None


def org_key(org: str) -> str:
    """The org id as it appears in state keys: ``ABC@AdobeOrg`` → ``ABC_AdobeOrg``."""
    return org.replace("@", "_")


def state_key(org: str, name: str) -> str:
    """``kndctr_<org with @ → _>_<name>``, e.g. ``kndctr_ABC_AdobeOrg_identity``."""
    return f"kndctr_{org_key(org)}_{name}"


def org_from_key(key: str) -> tuple[str, str] | None:
    """``(org id, entry name)`` of a ``kndctr_*`` key, the org id with its ``@`` restored;
    ``None`` for any other key."""
    # Plain string scanning, not a regular expression: the lazy-org pattern this replaces
    # backtracked quadratically on a key repeating "_AdobeOrg_" (a 60 KB key took 0.8 s).
    if not key.startswith(_KEY_PREFIX) or "\n" in key:
        return None
    rest = key[len(_KEY_PREFIX) :]
    # Org ids end in "@AdobeOrg", which a key spells "_AdobeOrg"; split at the first
    # "_AdobeOrg_" whose remainder is a name of letters and "_" (so org ids holding
    # underscores still split correctly). The remainder is all name characters only after
    # the last other character, so one backwards scan and one find() settle it.
    last_other = len(rest) - 1
    while last_other >= 0 and rest[last_other] in _NAME_CHARS:
        last_other -= 1
    at = rest.find(_ADOBE, max(1, last_other - len(_ADOBE) + 1))
    if at != -1 and at + len(_ADOBE) < len(rest):
        return rest[:at] + "@AdobeOrg", rest[at + len(_ADOBE) :]
    # Keys of other orgs: the known entry names, as a suffix.
    for name in _KNOWN_NAMES:
        if rest.endswith("_" + name) and len(rest) > len(name) + 1:
            org = rest[: -len(name) - 1]
            if org.endswith("_AdobeOrg"):
                org = org[: -len("_AdobeOrg")] + "@AdobeOrg"
            return org, name
    return None


def encode_identity(ecid: str, write_time: int) -> str:
    """The identity entry value for ``ecid``: base64url(protobuf{1: ecid, 30: write_time})."""
    raw = ecid.encode()
    message = b"\x0a" + _varint(len(raw)) + raw + b"\xf0\x01" + _varint(write_time)
    return base64.urlsafe_b64encode(message).decode()


def decode_identity(value: str) -> str | None:
    """The ECID inside an identity entry value, or ``None`` when it is not one."""
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        if tag is None:
            return None
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if length is None or pos + length > len(data):
                return None
            chunk, pos = data[pos : pos + length], pos + length
            if field == 1:
                ecid = chunk.decode("ascii", "replace")
                return ecid if is_ecid(ecid) else None
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            return None
        if pos > len(data):
            return None
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int | None, int]:
    result = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    return None, len(data) + 1
