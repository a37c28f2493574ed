"""Redis, the admission gate: Lua scripts that hold all lines of a reservation or
none, so sold-out requests are turned away without touching PostgreSQL.

Redis keeps nothing that cannot be rebuilt from PostgreSQL: SKU levels stamped with
PostgreSQL's row version, pending holds of requests in flight, and recently known
reservation ids. Keys live under one prefix on a single Redis server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import redis.asyncio as aioredis
import redis.exceptions

from server.domain.inventory import ReserveCommand
from server.storage.lua_scripts import source
from server.storage.postgres import MirrorLevel


class GateUnavailable(Exception):
    """Redis cannot be used right now; callers fall back to PostgreSQL alone."""


class AdmitCode(IntEnum):
    """The gate's verdict on one reservation (codes of admit.lua)."""

    REJECTED = 0
    ADMITTED = 1
    KNOWN = 2
    NOT_MIRRORED = 3


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """What the Redis server holding the gate uses (INFO memory's used_memory), against
    its maxmemory (0: no limit), in bytes, and what it does there (maxmemory-policy)."""

    used_bytes: int
    max_bytes: int
    policy: str

    @property
    def bounded_without_eviction(self) -> bool:
        """Whether it refuses writes past a limit rather than growing or evicting keys."""
        return self.max_bytes > 0 and self.policy == "noeviction"


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one reservation, with each short SKU's available units."""

    code: AdmitCode
    available: dict[str, int]


# Any Redis failure (unreachable, out of memory, read-only replica ...) only bypasses the gate.
_ERRORS = (redis.exceptions.RedisError, OSError)


class AdmissionGate:
    """The Lua scripts and the keys they keep."""

    def __init__(self, client: aioredis.Redis, prefix: str = "sc:") -> None:
        self._client = client
        self.prefix = prefix
        self._admit = client.register_script(source("admit.lua"))
        self._settle = client.register_script(source("settle.lua"))
        self._levels = client.register_script(source("levels.lua"))
        self._ready = client.register_script(source("ready.lua"))

    @classmethod
    def from_url(cls, url: str, prefix: str = "sc:", timeout: float = 1.0) -> AdmissionGate:
        """A gate over a new connection pool."""
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=False
        )
        return cls(client, prefix)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def admit(
        self, commands: Sequence[ReserveCommand], pending_deadline_ms: int
    ) -> list[Admission]:
        """Hold each command's lines in Redis, all or none, in one script run."""
        args: list[str | int] = [self.prefix, pending_deadline_ms, len(commands)]
        for cmd in commands:
            args += [cmd.reservation_id, len(cmd.lines)]
            for line in cmd.lines:
                args += [line.sku, line.quantity]
        try:
            replies = await self._admit(args=args)
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc
        verdicts = []
        for reply in replies:
            code = AdmitCode(int(reply[0]))
            shorts = reply[1:]
            available = {shorts[i].decode(): int(shorts[i + 1]) for i in range(0, len(shorts), 2)}
            verdicts.append(Admission(code, available))
        return verdicts

    async def settle(
        self,
        *,
        clear: Sequence[str] = (),
        known: Sequence[tuple[str, int]] = (),
        levels: Sequence[MirrorLevel] = (),
    ) -> None:
        """Drop pending holds, remember known ids until a time (ms), mirror levels."""
        if not (clear or known or levels):
            return
        args: list[str | int] = [self.prefix, len(clear), *clear, len(known)]
        for rid, forget_at_ms in known:
            args += [rid, forget_at_ms]
        args.append(len(levels))
        for level in levels:
            args += [level.sku, level.on_hand, level.reserved, level.version]
        try:
            await self._settle(args=args)
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc

    async def levels(self, skus: Sequence[str]) -> dict[str, tuple[int, int]] | None:
        """(on_hand, reserved) of the mirrored SKUs among `skus`, in one script run; None
        when the mirror is not loaded."""
        try:
            reply = await self._levels(args=[self.prefix, *skus])
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc
        if not reply:
            return None if skus else {}
        found = {}
        for i, sku in enumerate(skus):
            on_hand, reserved = int(reply[2 * i]), int(reply[2 * i + 1])
            if on_hand >= 0:
                found[sku] = (on_hand, reserved)
        return found

    async def stale_pending(self, now_ms: int, limit: int = 1000) -> list[str]:
        """Ids of pending holds whose deadline passed: their request died in flight."""
        try:
            ids = await self._client.zrangebyscore(
                self.prefix + "pending", "-inf", now_ms, 0, limit
            )
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def is_ready(self) -> bool:
        """Whether the mirror was fully loaded since this Redis server started (the marker
        names the server's run_id: one that survived a restart or a failover is stale)."""
        try:
            return bool(await self._ready(args=[self.prefix]))
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc

    async def mark_ready(self, token: str) -> None:
        """Declare the mirror loaded on this Redis server."""
        try:
            await self._ready(args=[self.prefix, token])
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc

    async def memory(self) -> RedisMemory:
        """The Redis server's memory use and maxmemory."""
        try:
            info = await self._client.info("memory")
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc
        return RedisMemory(
            int(info["used_memory"]), int(info["maxmemory"]), str(info["maxmemory_policy"])
        )

    async def try_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take a short-lived lock (one loader at a time), or report it is taken."""
        try:
            return bool(
                await self._client.set(self.prefix + "lock:" + name, owner, nx=True, px=ttl_ms)
            )
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc

    async def unlock(self, name: str, owner: str) -> None:
        """Release a lock if we still own it."""
        key = self.prefix + "lock:" + name
        try:
            if await self._client.get(key) == owner.encode():
                await self._client.delete(key)
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc

    async def level(self, sku: str) -> tuple[int, int, int, int] | None:
        """(on_hand, reserved, pending, version) as mirrored, for checks and tests."""
        try:
            values = await self._client.hmget(self.prefix + "s:" + sku, "oh", "rs", "pd", "v")
        except _ERRORS as exc:
            raise GateUnavailable(str(exc)) from exc
        if values[0] is None:
            return None
        on_hand, reserved, pending, version = (int(v or 0) for v in values)
        return on_hand, reserved, pending, version
