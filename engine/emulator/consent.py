"""Consent as Edge takes it: the ``consent[]`` of ``POST /ee/v1/privacy/set-consent`` (the Web
SDK's ``setConsent``) and the ``kndctr_<org>_consent`` state entry (``general=in|out``).

Standards accepted, as alloy sends them (``packages/core/src/components/Consent``; the Server
SDK ``setConsent`` page lists the same three):

* Adobe 1.0: ``{"standard": "Adobe", "version": "1.0", "value": {"general": "in" | "out"}}``
* Adobe 2.0: ``{"standard": "Adobe", "version": "2.0", "value": {"collect": {"val": "y"}, …}}``
  (the XDM consents object; ``collect.val`` ``"n"`` is an opt-out)
* IAB TCF 2.0: ``{"standard": "IAB TCF", "version": "2.0", "value": "<TC string>",
  "gdprApplies": true}``: an opt-out when GDPR applies and the TC string gives no consent to
  purpose 1 or to Adobe (vendor 565).

Malformed preferences get the codes alloy's tests expect from Edge
(``packages/browser/test/integration/specs/Consent/iab.spec.js``): an unknown standard or
version ``EXEG-0102-400``, a missing value ``EXEG-0103-400``, an empty TC string
``EXEG-0104-422``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

__all__ = [
    "CONSENT_CHECK_MAX_AGE",
    "CONSENT_MAX_AGE",
    "ConsentError",
    "general_from_entry",
    "parse_preferences",
    "tcf_general",
]

CONSENT_MAX_AGE = 15552000  # 180 days, as Edge stores kndctr_<org>_consent
CONSENT_CHECK_MAX_AGE = 7200
ADOBE_VENDOR_ID = 565  # Adobe's id in the IAB Global Vendor List
# XDM consent values (Consents and Preferences field group): yes, no, pending, and the
# legal bases other than consent.
_XDM_VALUES = frozenset({"y", "n", "p", "LI", "CT", "CP", "VI", "PI", "dy", "dn", "VT"})
General = Literal["in", "out"]


class ConsentError(ValueError):
    """Preferences Edge refuses: ``status``, the ``EXEG`` ``code`` and a ``detail`` naming
    the offending item."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def general_from_entry(value: str) -> str | None:
    """The ``general`` purpose of a consent entry value (``general=in;…``, alloy's
    ``parseConsentCookie``), or ``None`` when it has none."""
    for pair in value.split(";"):
        name, _, state = pair.partition("=")
        if name.strip() == "general":
            return state.strip()
    return None


def parse_preferences(consent: Any) -> General:
    """The general consent a set-consent ``consent`` array expresses: ``out`` when any item is
    an opt-out. :class:`ConsentError` for a malformed array."""
    if consent is None:
        raise ConsentError(400, "EXEG-0103-400", "The 'consent' array is required.")
    if not isinstance(consent, list) or not consent:
        raise ConsentError(400, "EXEG-0102-400", "'consent' must be a non-empty array.")
    general: General = "in"
    for index, item in enumerate(consent):
        if _item_general(item, f"consent[{index}]") == "out":
            general = "out"
    return general


def _item_general(item: Any, where: str) -> General:
    if not isinstance(item, dict):
        raise ConsentError(400, "EXEG-0102-400", f"{where} must be an object.")
    standard, version = item.get("standard"), item.get("version")
    if standard == "Adobe" and version == "1.0":
        value = _value(item, where)
        general = value.get("general") if isinstance(value, dict) else None
        if general not in ("in", "out") or set(value) != {"general"}:
            raise ConsentError(
                400,
                "EXEG-0102-400",
                f'{where}.value must be {{"general": "in" | "out"}} (Adobe 1.0), not {value!r}.',
            )
        return "out" if general == "out" else "in"
    if standard == "Adobe" and version == "2.0":
        value = _value(item, where)
        if not isinstance(value, dict):
            raise ConsentError(400, "EXEG-0102-400", f"{where}.value must be an object.")
        collect = value.get("collect")
        if not isinstance(collect, dict) or "val" not in collect:
            raise ConsentError(
                400,
                "EXEG-0102-400",
                f'{where}.value needs collect: {{"val": "y" | "n"}} (Adobe 2.0).',
            )
        _check_xdm(value, f"{where}.value")
        return "out" if collect["val"] == "n" else "in"
    if standard == "IAB TCF" and version == "2.0":
        value = _value(item, where)
        if not isinstance(value, str):
            raise ConsentError(400, "EXEG-0102-400", f"{where}.value must be a TC string.")
        if not value:
            raise ConsentError(422, "EXEG-0104-422", f"{where}.value is an empty TC string.")
        applies = item.get("gdprApplies", True)
        if not isinstance(applies, bool):
            raise ConsentError(400, "EXEG-0102-400", f"{where}.gdprApplies must be true or false.")
        try:
            return tcf_general(value, applies)
        except ValueError as exc:
            raise ConsentError(422, "EXEG-0104-422", f"{where}.value: {exc}.") from None
    raise ConsentError(
        400,
        "EXEG-0102-400",
        f"{where}: unsupported consent standard {standard!r} version {version!r} "
        "(Adobe 1.0, Adobe 2.0 or IAB TCF 2.0).",
    )


def _value(item: dict[str, Any], where: str) -> Any:
    if "value" not in item:
        raise ConsentError(400, "EXEG-0103-400", f"{where}.value is required.")
    return item["value"]


def _check_xdm(value: dict[str, Any], where: str) -> None:
    """Every ``val`` in an Adobe 2.0 consents object is an XDM consent value."""
    for key, member in value.items():
        if key == "val":
            if member not in _XDM_VALUES:
                raise ConsentError(
                    400,
                    "EXEG-0102-400",
                    f"{where}.val must be one of {', '.join(sorted(_XDM_VALUES))}, not {member!r}.",
                )
        elif isinstance(member, dict):
            _check_xdm(member, f"{where}.{key}")
        elif not isinstance(member, str | bool | int | float) or member is None:
            raise ConsentError(400, "EXEG-0102-400", f"{where}.{key} is not a consent field.")


def tcf_general(tc_string: str, gdpr_applies: bool = True) -> General:
    """``out`` when GDPR applies and the TC string's core segment gives no consent to
    purpose 1 (store and access information) or to Adobe (vendor 565). :class:`ValueError`
    when it is not a TCF 2 string."""
    if not gdpr_applies:
        return "in"
    core = tc_string.split(".", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not a base64url TC string") from None
    bits = _Bits(raw)
    if bits.read(0, 6) != 2:
        raise ValueError("not a TCF 2.0 TC string (its version is not 2)")
    purpose_one = bits.read(152, 1) == 1
    return "in" if purpose_one and _vendor_consent(bits, ADOBE_VENDOR_ID) else "out"


def _vendor_consent(bits: _Bits, vendor: int) -> bool:
    """Whether the core segment's vendor consent section (bit 213 on) includes ``vendor``."""
    max_vendor = bits.read(213, 16)
    if bits.read(229, 1) == 0:  # a bit field, one bit per vendor id
        return vendor <= max_vendor and bits.read(230 + vendor - 1, 1) == 1
    entries, pos = bits.read(230, 12), 242
    for _ in range(entries):
        is_range = bits.read(pos, 1)
        start = bits.read(pos + 1, 16)
        if is_range:
            end = bits.read(pos + 17, 16)
            pos += 33
            if start <= vendor <= end:
                return True
        else:
            pos += 17
            if start == vendor:
                return True
    return False


class _Bits:
    """Big-endian bit fields of a byte string."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data)
        self._size = len(data) * 8

    def read(self, start: int, length: int) -> int:
        if start + length > self._size:
            raise ValueError("the TC string is truncated")
        shift = self._size - start - length
        return (self._value >> shift) & ((1 << length) - 1)
