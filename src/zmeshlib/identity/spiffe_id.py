"""SPIFFE IDs, parsed and validated per the SPIFFE ID specification.

Rules (each rejection names one, in ``IdentityError.rule``):

=========================  ===============================================
rule                       what it requires
=========================  ===============================================
``empty``                  the ID is not the empty string
``too-long``               at most 2048 bytes in all
``scheme``                 starts with the lowercase scheme ``spiffe://``
``trust-domain-missing``   a trust domain follows the scheme
``trust-domain-too-long``  the trust domain is at most 255 characters
``userinfo``               no ``user@`` before the trust domain
``port``                   no ``:port`` after the trust domain
``trust-domain-charset``   trust domain only ``a-z 0-9 . - _`` (lowercase)
``query``                  no ``?query``
``fragment``               no ``#fragment``
``percent-encoding``       no ``%`` escapes anywhere
``path-trailing-slash``    the path does not end with ``/``
``path-empty-segment``     no ``//`` in the path
``path-dot-segment``       no ``.`` or ``..`` segment
``path-charset``           path segments only ``a-z A-Z 0-9 . - _``
``type``                   the value is a ``str``
=========================  ===============================================

Every function here takes arbitrary text (IDs come from certificates, policies
and the network) and raises only :class:`IdentityError`, whatever the input:
lone surrogates, NULs and non-ASCII letters fail the charset rules like any
other character.

Istio's convention ``/ns/<namespace>/sa/<service-account>`` is read by
:attr:`SpiffeId.namespace` and :attr:`SpiffeId.service_account`.
"""

from __future__ import annotations

import re

import attrs

from .._exceptions import IdentityError

_SCHEME = "spiffe://"
_MAX_ID = 2048
_MAX_TD = 255
_TD_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[a-zA-Z0-9._-]+")


def _fail(value: str, rule: str, why: str) -> IdentityError:
    return IdentityError(f"invalid SPIFFE ID {value!r}: {why} [{rule}]", rule=rule)


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise IdentityError(f"{what} must be a str, not {type(value).__name__}", rule="type")
    return value


def validate_trust_domain(td: str, *, context: str = "") -> str:
    """Check a bare trust domain name (``example.org``); return it unchanged."""
    _require_str(td, "a trust domain")
    shown = context or td
    if not td:
        raise _fail(shown, "trust-domain-missing", "the trust domain is empty")
    if len(td) > _MAX_TD:
        raise _fail(
            shown,
            "trust-domain-too-long",
            f"the trust domain is {len(td)} characters, at most {_MAX_TD} are allowed",
        )
    if "@" in td:
        raise _fail(shown, "userinfo", "a SPIFFE ID may not carry user info ('user@')")
    if ":" in td:
        raise _fail(shown, "port", "a SPIFFE ID may not carry a port")
    if not _TD_CHARS.fullmatch(td):
        bad = sorted({c for c in td if not _TD_CHARS.fullmatch(c)})
        raise _fail(
            shown,
            "trust-domain-charset",
            f"the trust domain may only use lowercase letters, digits, '.', '-' and '_' (found {''.join(bad)!r})",
        )
    return td


def _validate_path(value: str, path: str) -> None:
    if path == "":
        return
    if path.endswith("/"):
        raise _fail(value, "path-trailing-slash", "the path may not end with '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise _fail(
                value, "path-empty-segment", "the path may not contain empty segments ('//')"
            )
        if segment in (".", ".."):
            raise _fail(
                value, "path-dot-segment", f"the path may not contain a {segment!r} segment"
            )
        if not _SEGMENT_CHARS.fullmatch(segment):
            raise _fail(
                value,
                "path-charset",
                f"path segment {segment!r} may only use letters, digits, '.', '-' and '_'",
            )


@attrs.frozen(order=True, cache_hash=True)
class SpiffeId:
    """A validated SPIFFE ID. Build with :meth:`parse` or :meth:`from_parts`."""

    trust_domain: str
    path: str = ""

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        _require_str(value, "a SPIFFE ID")
        if value == "":
            raise _fail(value, "empty", "the ID is empty")
        # surrogatepass: a lone surrogate counts its 3 bytes here and fails the charset later
        if len(value.encode("utf-8", "surrogatepass")) > _MAX_ID:
            raise _fail(value[:64] + "...", "too-long", f"a SPIFFE ID is at most {_MAX_ID} bytes")
        if not value.startswith(_SCHEME):
            if value.lower().startswith(_SCHEME):
                raise _fail(value, "scheme", "the scheme must be lowercase 'spiffe://'")
            raise _fail(value, "scheme", "a SPIFFE ID starts with 'spiffe://'")
        rest = value[len(_SCHEME) :]
        if "%" in rest:
            raise _fail(value, "percent-encoding", "percent-encoded characters are not allowed")
        if "#" in rest:
            raise _fail(value, "fragment", "a SPIFFE ID may not have a fragment ('#...')")
        if "?" in rest:
            raise _fail(value, "query", "a SPIFFE ID may not have a query ('?...')")
        td, slash, tail = rest.partition("/")
        validate_trust_domain(td, context=value)
        path = slash + tail
        _validate_path(value, path)
        return cls(td, path)

    @classmethod
    def from_parts(cls, trust_domain: str, path: str = "") -> SpiffeId:
        _require_str(trust_domain, "a trust domain")
        _require_str(path, "a SPIFFE ID path")
        if path and not path.startswith("/"):
            path = "/" + path
        return cls.parse(f"{_SCHEME}{trust_domain}{path}")

    @classmethod
    def coerce(cls, value: str | SpiffeId) -> SpiffeId:
        """Accept a SpiffeId or its string, with or without ``spiffe://`` (as Istio writes it)."""
        if isinstance(value, SpiffeId):
            return value
        if isinstance(value, str) and "://" not in value:
            value = _SCHEME + value
        return cls.parse(value)

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"

    @property
    def uri(self) -> str:
        return str(self)

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """The Istio namespace: the segment after ``ns`` in ``/ns/<ns>/...``."""
        segs = self.segments
        return segs[1] if len(segs) >= 2 and segs[0] == "ns" else None

    @property
    def service_account(self) -> str | None:
        """The Istio service account: the segment after ``sa`` in ``/ns/<ns>/sa/<sa>``."""
        segs = self.segments
        return segs[3] if len(segs) >= 4 and segs[0] == "ns" and segs[2] == "sa" else None

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain
