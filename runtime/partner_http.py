"""JSON over HTTP to a partner (a warehouse, a carrier, the payment provider), with the
discipline every caller of a partner keeps, and the errors that say what a retry may
assume:

- a refused or timed-out connection attempt, 503 and 429 applied nothing (NotApplied);
- a timeout after the request was sent, a dropped connection, any other 5xx, and a 2xx
  whose body is not JSON may have applied (OutcomeUnknown / MalformedReply);
- any other 4xx refused the request for good (Rejected);
- a redirect is not followed (a partner does not get to send our request, body and
  headers, elsewhere): it is a reply the API does not promise (MalformedReply), as is a
  reply larger than `max_reply_bytes`, which is read no further than that. The whole
  exchange, the reply's last byte included, is bounded by `timeout_s`: a partner that
  drips its reply gets no answer in time (OutcomeUnknown).

Every id goes into a URL as one percent-encoded path segment (`partner_url`), and the URL
is handed to aiohttp as already encoded, so nothing on the way re-normalises it: an id
with slashes or dots names one object at the partner, never another one."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yarl


class PartnerError(Exception):
    """A call to a partner failed."""

    def __init__(self, partner: str, detail: str) -> None:
        super().__init__(f"{partner}: {detail}")
        self.partner = partner
        self.detail = detail


class NotApplied(PartnerError):
    """The partner did nothing: the connection was refused, or it answered with a status
    its contract says applied nothing (unavailable, rate limited). Safe to send elsewhere."""


class OutcomeUnknown(PartnerError):
    """The request may have been applied: no answer in time, the connection dropped after
    the request was sent, a server error, or a reply that cannot be read. Only a retry to
    the same partner with the same idempotency key is safe."""


class MalformedReply(OutcomeUnknown):
    """The partner answered, but not with what its API promises."""


class Rejected(PartnerError):
    """The partner refused the request for good (it is invalid for that partner); retrying
    it unchanged cannot help. `status` is the HTTP status it answered with (0: refused
    before it was sent)."""

    def __init__(self, partner: str, detail: str, status: int = 0) -> None:
        super().__init__(partner, detail)
        self.status = status


_NOT_APPLIED_STATUSES = frozenset({429, 503})
# How much of a refusal's body goes into its error, for people.
_ERROR_TEXT_BYTES = 300
# Segments a server drops or collapses however they are encoded ("%2E" is ".").
_UNNAMED_SEGMENTS = frozenset({"", ".", ".."})


def partner_url(
    base: yarl.URL, segments: Sequence[str], query: Mapping[str, str] | None = None
) -> yarl.URL:
    """`base` followed by each of `segments` as one path segment and by `query`, every
    character outside the unreserved set percent-encoded, as a URL marked encoded so no
    later step decodes or normalises it. ValueError for a segment that names nothing."""
    for segment in segments:
        if segment in _UNNAMED_SEGMENTS:
            raise ValueError(f"{segment!r} cannot be a path segment")
    path = base.raw_path.rstrip("/") + "".join("/" + quote(s, safe="") for s in segments)
    return yarl.URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=path,
        query_string=urlencode(list((query or {}).items()), quote_via=quote, safe=""),
        encoded=True,
    )


def _session(timeout_s: float, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 2.0)),
        connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300),
        raise_for_status=False,
    )


class JsonApi:
    """POSTs JSON to one partner and classifies what comes back."""

    def __init__(
        self,
        partner: str,
        base_url: str,
        timeout_s: float,
        connections: int,
        max_reply_bytes: int,
    ) -> None:
        self.partner = partner
        self._base = yarl.URL(base_url)
        self._session = _session(timeout_s, connections)
        self._max_reply_bytes = max_reply_bytes

    async def post(
        self,
        segments: Sequence[str],
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The JSON reply of a successful POST to the path of these segments; a
        PartnerError otherwise."""
        return await self._exchange("POST", segments, body, headers)

    async def get(self, segments: Sequence[str]) -> Any:
        """The JSON reply of a successful GET of the path of these segments; a
        PartnerError otherwise."""
        return await self._exchange("GET", segments, None, None)

    async def _exchange(
        self,
        method: str,
        segments: Sequence[str],
        body: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        try:
            url = partner_url(self._base, segments)
        except ValueError as exc:
            raise Rejected(self.partner, f"not sent: {exc}") from exc
        # Encoded: safe in a log line whatever the ids hold.
        path = url.raw_path
        try:
            async with self._session.request(
                method, url, json=body, headers=headers, allow_redirects=False
            ) as reply:
                if reply.status in _NOT_APPLIED_STATUSES:
                    raise NotApplied(self.partner, f"{path}: HTTP {reply.status}")
                if 300 <= reply.status < 400:
                    location = reply.headers.get("Location", "")[:200]
                    raise MalformedReply(
                        self.partner,
                        f"{path}: HTTP {reply.status} redirect to {location!r}, not followed",
                    )
                if 400 <= reply.status < 500:
                    text = (await reply.content.read(_ERROR_TEXT_BYTES)).decode(errors="replace")
                    raise Rejected(
                        self.partner, f"{path}: HTTP {reply.status} {text!r}", reply.status
                    )
                if reply.status >= 500:
                    raise OutcomeUnknown(self.partner, f"{path}: HTTP {reply.status}")
                data = await self._read(reply, path)
                try:
                    return json.loads(data)
                except ValueError as exc:
                    raise MalformedReply(self.partner, f"{path}: not JSON ({exc})") from exc
        except aiohttp.ClientConnectorError as exc:
            raise NotApplied(self.partner, f"{path}: cannot connect ({exc})") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise NotApplied(self.partner, f"{path}: connection timed out") from exc
        except TimeoutError as exc:
            raise OutcomeUnknown(self.partner, f"{path}: no answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise OutcomeUnknown(self.partner, f"{path}: {type(exc).__name__}: {exc}") from exc

    async def _read(self, reply: aiohttp.ClientResponse, path: str) -> bytes:
        """The reply's body, or MalformedReply as soon as it proves larger than the cap
        (by its Content-Length, or by what arrived: a decompressed body counts)."""
        cap = self._max_reply_bytes
        declared = reply.content_length
        if declared is not None and declared > cap:
            raise MalformedReply(self.partner, f"{path}: a {declared}-byte reply, more than {cap}")
        body = bytearray()
        async for chunk in reply.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > cap:
                raise MalformedReply(self.partner, f"{path}: a reply of more than {cap} bytes")
        return bytes(body)

    def malformed(self, what: str) -> MalformedReply:
        """The error for a reply that lacks what the API promises."""
        return MalformedReply(self.partner, what)

    async def close(self) -> None:
        """Close the connections."""
        await self._session.close()
