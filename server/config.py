"""The gRPC server's settings: the only place it reads environment variables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from runtime.settings import EnvSettings, SettingsError, Variables, parse_list
from server.domain.inventory import SKU_PATTERN

__all__ = ["Settings", "SettingsError", "from_env", "to_env"]

CARRIER_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
# Each watched SKU is three series of every server process: a handful, not a catalogue.
MAX_WATCHED_SKUS = 200


@dataclass(frozen=True)
class Settings(EnvSettings):
    """Everything the gRPC server needs, validated once at start-up and passed down."""

    # None means unset: `python -m server` refuses to start, `python -m devstack` (make
    # run) starts a project-owned server.
    pg_dsn: str | None = None
    redis_url: str | None = None
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_port: int = 9464  # 0 disables the HTTP metrics endpoint
    # Metrics carry no secrets but tell a lot; they stay on loopback unless configured.
    metrics_host: str = "127.0.0.1"
    # TLS on the gRPC port: the server's certificate chain and key (PEM files). With a
    # client CA, every connection must present a certificate it issued (mutual TLS).
    # Serving without TLS must be asked for: plaintext=True.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    plaintext: bool = False
    # Bearer tokens: JWTs verified with the keys of a JWKS file (by kid), for this
    # audience, from one of these issuers (a token must name one), living at most
    # auth_max_lifetime_s from issue (iat) to expiry (exp). auth_disabled admits every
    # call unchecked, as the caller "unauthenticated"; it must be asked for.
    auth_jwks_file: str = ""
    auth_audience: str = "stockcore"
    auth_issuers: tuple[str, ...] = ("stockcore",)
    auth_max_lifetime_s: float = 86_400.0
    auth_leeway_s: float = 30.0
    auth_cache_size: int = 10_000
    auth_reload_interval_s: float = 5.0
    auth_disabled: bool = False
    # gRPC server reflection; None: on under `make run` (python -m devstack), else off.
    reflection: bool | None = None
    workers: int = 1
    shard_count: int = 16
    # PostgreSQL connections of the batches and the server's own upkeep (expiry, the
    # mirror, health), and apart from them those of what callers read (GetStock STRONG,
    # GetReservation, GetOrder, ListOrders, WatchOrders): readers queue on their own
    # pool, so however many read, a batch that changes stock never waits for a reader.
    pg_pool_size: int = 8
    pg_read_pool_size: int = 4
    batch_max: int = 256
    # Batches of one kind in flight at once; the next batch gathers meanwhile.
    batch_concurrency: int = 1
    default_ttl_s: float = 300.0
    min_ttl_s: float = 1.0
    max_ttl_s: float = 86_400.0
    expiry_interval_s: float = 0.25
    redis_probe_interval_s: float = 0.5
    # A pending Redis hold older than this belongs to a request that died mid-flight.
    pending_grace_s: float = 30.0
    # How long a known reservation id stays in Redis after its hold expires.
    known_id_retention_s: float = 86_400.0
    db_timeout_s: float = 10.0
    log_level: str = "INFO"
    log_json: bool = True
    # Carriers whose pick-ups ShipOrder accepts.
    carriers: tuple[str, ...] = ("sf-express", "jd-logistics", "cainiao", "ups", "dhl", "fedex")
    # The outbox relay wakes on every commit that wrote order events (LISTEN/NOTIFY);
    # it also looks this often, as a safety net. relay_standby_interval_s: how often a
    # process that is not the relay asks whether it may take over.
    relay_interval_s: float = 1.0
    # Once woken, the relay waits this long for more commits to ride the same step: one
    # statement and one XADD round trip per few milliseconds rather than per commit.
    relay_gather_s: float = 0.005
    relay_standby_interval_s: float = 1.0
    relay_batch: int = 500
    # Approximate length the Redis event stream is trimmed to.
    event_stream_maxlen: int = 1_000_000
    # Stream entries older than this (since their publication) are trimmed, whether or not
    # every consumer group has read them: with maxmemory, this bounds the stream's memory
    # (README, "Redis memory"). A group further behind reads the rest from WatchOrders.
    event_stream_max_age_s: float = 3600.0
    # WatchOrders wakes on every cursor the relay gives (LISTEN/NOTIFY); it also looks
    # this often, as a safety net.
    watch_poll_interval_s: float = 1.0
    # Admission by waiting time (server/queue_delay.py): a class of calls (writes, reads)
    # whose batches' oldest requests waited longer than the target for a whole interval
    # has a standing queue, and its new calls are refused at once with RESOURCE_EXHAUSTED
    # and a retry delay (server/rpc/shedding.py) until a batch starts within the target.
    overload_target_s: float = 0.1
    overload_interval_s: float = 0.5
    # A ceiling on unary calls one process holds at once (a bound on memory, far above
    # what the queues admit); past it calls are refused the same way. WatchOrders streams
    # are bounded apart. The refusal budget: refusals per second per process above which
    # the retry delay given grows.
    max_in_flight: int = 5000
    max_watch_streams: int = 10_000
    # The largest request message accepted, in bytes; gRPC refuses a bigger one with
    # RESOURCE_EXHAUSTED before decoding it. The largest valid request (GetStock of 1,000
    # SKUs of 64 characters) is about 67 KB.
    max_request_bytes: int = 131_072
    # Prices (server/domain/pricing.py): with a catalogue file (the checkout page's
    # catalogue.json format), every CreateOrder's line prices must be the catalogue's,
    # except from the token subjects in price_sources; without one, prices are taken as
    # sent. `make run` names the demo catalogue.
    price_catalogue_file: str = ""
    price_sources: tuple[str, ...] = ()
    overload_refusal_budget: float = 200.0
    # Shares per caller (server/shares.py), so that no caller can take what the bounds
    # above leave to all: a caller is a token's subject, or the customer a customer's
    # token acts for (a server without token checks cannot tell callers apart and bounds
    # only the total). Open streams (WatchOrders, and any server-streaming RPC) and reads
    # in PostgreSQL at once (GetStock STRONG or past the mirror, GetReservation,
    # GetOrder, ListOrders), each past its share refused with RESOURCE_EXHAUSTED and a
    # RetryInfo. Reads in PostgreSQL are also bounded in rows read a second per caller
    # while others are served (server/rates.py: so many a second on average, as many at
    # once above that pace): a caller keeping its share busy all the time would otherwise
    # spend the CPU every other caller's latency depends on. A caller alone is not held.
    streams_per_caller: int = 100
    database_reads_per_caller: int = 16
    database_read_rows_per_caller: float = 400.0
    # The health service needs no token (probes use it), so its Watch streams are bounded
    # per peer address and in total; Check is not bounded.
    health_watches_per_peer: int = 32
    max_health_watches: int = 1000
    # SKUs an operator watches (a flash sale's, the best sellers): their on_hand, reserved
    # and available are gauges (stockcore_watched_stock_units), and whether the Redis
    # mirror agrees with PostgreSQL on them is checked (stockcore_gate_drifted_skus). One
    # read of each every watched_skus_interval_s (server/inventory/watched.py), whatever
    # the traffic: no call waits for it.
    watched_skus: tuple[str, ...] = ()
    watched_skus_interval_s: float = 15.0

    # The STOCKCORE_* variable of each field that one can set.
    VARIABLES: ClassVar[Variables] = {
        "STOCKCORE_PG_DSN": ("pg_dsn", str),
        "STOCKCORE_REDIS_URL": ("redis_url", str),
        "STOCKCORE_GRPC_HOST": ("grpc_host", str),
        "STOCKCORE_GRPC_PORT": ("grpc_port", int),
        "STOCKCORE_METRICS_PORT": ("metrics_port", int),
        "STOCKCORE_METRICS_HOST": ("metrics_host", str),
        "STOCKCORE_TLS_CERT": ("tls_cert_file", str),
        "STOCKCORE_TLS_KEY": ("tls_key_file", str),
        "STOCKCORE_TLS_CLIENT_CA": ("tls_client_ca_file", str),
        "STOCKCORE_PLAINTEXT": ("plaintext", bool),
        "STOCKCORE_AUTH_JWKS": ("auth_jwks_file", str),
        "STOCKCORE_AUTH_AUDIENCE": ("auth_audience", str),
        "STOCKCORE_AUTH_ISSUERS": ("auth_issuers", parse_list),
        "STOCKCORE_AUTH_MAX_LIFETIME": ("auth_max_lifetime_s", float),
        "STOCKCORE_AUTH_LEEWAY": ("auth_leeway_s", float),
        "STOCKCORE_AUTH_CACHE_SIZE": ("auth_cache_size", int),
        "STOCKCORE_AUTH_RELOAD_INTERVAL": ("auth_reload_interval_s", float),
        "STOCKCORE_AUTH_DISABLED": ("auth_disabled", bool),
        "STOCKCORE_REFLECTION": ("reflection", bool),
        "STOCKCORE_WORKERS": ("workers", int),
        "STOCKCORE_SHARDS": ("shard_count", int),
        "STOCKCORE_PG_POOL_SIZE": ("pg_pool_size", int),
        "STOCKCORE_PG_READ_POOL_SIZE": ("pg_read_pool_size", int),
        "STOCKCORE_BATCH_MAX": ("batch_max", int),
        "STOCKCORE_BATCH_CONCURRENCY": ("batch_concurrency", int),
        "STOCKCORE_DEFAULT_TTL": ("default_ttl_s", float),
        "STOCKCORE_MAX_TTL": ("max_ttl_s", float),
        "STOCKCORE_EXPIRY_INTERVAL": ("expiry_interval_s", float),
        "STOCKCORE_PENDING_GRACE": ("pending_grace_s", float),
        "STOCKCORE_DB_TIMEOUT": ("db_timeout_s", float),
        "STOCKCORE_REDIS_PROBE_INTERVAL": ("redis_probe_interval_s", float),
        "STOCKCORE_LOG_LEVEL": ("log_level", str),
        "STOCKCORE_LOG_JSON": ("log_json", bool),
        "STOCKCORE_CARRIERS": ("carriers", parse_list),
        "STOCKCORE_RELAY_INTERVAL": ("relay_interval_s", float),
        "STOCKCORE_RELAY_GATHER": ("relay_gather_s", float),
        "STOCKCORE_RELAY_STANDBY_INTERVAL": ("relay_standby_interval_s", float),
        "STOCKCORE_RELAY_BATCH": ("relay_batch", int),
        "STOCKCORE_EVENT_STREAM_MAXLEN": ("event_stream_maxlen", int),
        "STOCKCORE_EVENT_STREAM_MAX_AGE": ("event_stream_max_age_s", float),
        "STOCKCORE_WATCH_POLL_INTERVAL": ("watch_poll_interval_s", float),
        "STOCKCORE_MAX_IN_FLIGHT": ("max_in_flight", int),
        "STOCKCORE_OVERLOAD_TARGET_S": ("overload_target_s", float),
        "STOCKCORE_OVERLOAD_INTERVAL_S": ("overload_interval_s", float),
        "STOCKCORE_MAX_WATCH_STREAMS": ("max_watch_streams", int),
        "STOCKCORE_MAX_REQUEST_BYTES": ("max_request_bytes", int),
        "STOCKCORE_PRICE_CATALOGUE": ("price_catalogue_file", str),
        "STOCKCORE_PRICE_SOURCES": ("price_sources", parse_list),
        "STOCKCORE_OVERLOAD_REFUSAL_BUDGET": ("overload_refusal_budget", float),
        "STOCKCORE_STREAMS_PER_CALLER": ("streams_per_caller", int),
        "STOCKCORE_DATABASE_READS_PER_CALLER": ("database_reads_per_caller", int),
        "STOCKCORE_DATABASE_READ_ROWS_PER_CALLER": ("database_read_rows_per_caller", float),
        "STOCKCORE_HEALTH_WATCHES_PER_PEER": ("health_watches_per_peer", int),
        "STOCKCORE_MAX_HEALTH_WATCHES": ("max_health_watches", int),
        "STOCKCORE_WATCHED_SKUS": ("watched_skus", parse_list),
        "STOCKCORE_WATCHED_SKUS_INTERVAL": ("watched_skus_interval_s", float),
    }

    def checks(self) -> list[tuple[bool, str]]:
        """The rules a server's settings must keep."""
        return [
            (1 <= self.grpc_port <= 65535 or self.grpc_port == 0, "grpc_port must be 0-65535"),
            (0 <= self.metrics_port <= 65535, "metrics_port must be 0-65535"),
            (1 <= self.workers <= 64, "workers must be 1-64"),
            (1 <= self.shard_count <= 1024, "shard_count must be 1-1024"),
            (1 <= self.pg_pool_size <= 100, "pg_pool_size must be 1-100"),
            (1 <= self.pg_read_pool_size <= 100, "pg_read_pool_size must be 1-100"),
            (1 <= self.batch_max <= 10_000, "batch_max must be 1-10000"),
            (1 <= self.batch_concurrency <= 16, "batch_concurrency must be 1-16"),
            (
                0 < self.min_ttl_s <= self.default_ttl_s <= self.max_ttl_s,
                "need min <= default <= max ttl",
            ),
            (
                0 < self.expiry_interval_s <= 1.0,
                "expiry_interval_s must be in (0, 1] to expire within 2 s",
            ),
            (self.pending_grace_s > self.db_timeout_s, "pending_grace_s must exceed db_timeout_s"),
            (self.workers == 1 or self.grpc_port != 0, "several workers need a fixed grpc_port"),
            (
                bool(self.carriers) and all(CARRIER_PATTERN.fullmatch(c) for c in self.carriers),
                "carriers must be a non-empty list of names of [a-z0-9._-]",
            ),
            (0 < self.relay_interval_s <= 10.0, "relay_interval_s must be in (0, 10]"),
            (0 <= self.relay_gather_s <= 0.1, "relay_gather_s must be 0-0.1"),
            (
                0 < self.relay_standby_interval_s <= 10.0,
                "relay_standby_interval_s must be in (0, 10]",
            ),
            (1 <= self.relay_batch <= 10_000, "relay_batch must be 1-10000"),
            (self.event_stream_maxlen >= 1000, "event_stream_maxlen must be at least 1000"),
            (
                60 <= self.event_stream_max_age_s <= 7 * 86_400,
                "event_stream_max_age_s must be 60-604800 (a minute to a week)",
            ),
            (
                0 < self.watch_poll_interval_s <= 10.0,
                "watch_poll_interval_s must be in (0, 10]",
            ),
            (
                not (self.plaintext and self.tls_client_ca_file),
                "tls_client_ca_file needs TLS: mutual TLS cannot be plaintext",
            ),
            (bool(self.auth_audience), "auth_audience must not be empty"),
            (0 <= self.auth_leeway_s <= 300, "auth_leeway_s must be 0-300"),
            (bool(self.auth_issuers), "auth_issuers must name at least one issuer"),
            (
                60 <= self.auth_max_lifetime_s <= 30 * 86_400,
                "auth_max_lifetime_s must be 60 s to 30 days",
            ),
            (1 <= self.auth_cache_size <= 1_000_000, "auth_cache_size must be 1-1000000"),
            (
                0.1 <= self.auth_reload_interval_s <= 3600,
                "auth_reload_interval_s must be 0.1-3600",
            ),
            (1 <= self.max_in_flight <= 100_000, "max_in_flight must be 1-100000"),
            (0 < self.overload_target_s <= 10, "overload_target_s must be above 0 and at most 10"),
            (
                0 < self.overload_interval_s <= 60,
                "overload_interval_s must be above 0 and at most 60",
            ),
            (1 <= self.max_watch_streams <= 1_000_000, "max_watch_streams must be 1-1000000"),
            (
                81_920 <= self.max_request_bytes <= 4_194_304,
                "max_request_bytes must be 81920-4194304 (the largest valid request is ~67 KB)",
            ),
            (self.overload_refusal_budget > 0, "overload_refusal_budget must be above 0"),
            (
                1 <= self.streams_per_caller <= self.max_watch_streams,
                "streams_per_caller must be 1-max_watch_streams",
            ),
            (
                1 <= self.database_reads_per_caller <= 10_000,
                "database_reads_per_caller must be 1-10000",
            ),
            (
                1 <= self.database_read_rows_per_caller <= 1_000_000,
                "database_read_rows_per_caller must be 1-1000000 a second",
            ),
            (
                1 <= self.health_watches_per_peer <= self.max_health_watches <= 100_000,
                "need 1 <= health_watches_per_peer <= max_health_watches <= 100000",
            ),
            (
                len(self.watched_skus) <= MAX_WATCHED_SKUS
                and all(SKU_PATTERN.fullmatch(sku) for sku in self.watched_skus),
                f"watched_skus must be at most {MAX_WATCHED_SKUS} SKUs"
                " of [A-Za-z0-9._:/-] (1-64 characters)",
            ),
            (
                1 <= self.watched_skus_interval_s <= 3600,
                "watched_skus_interval_s must be 1-3600",
            ),
        ]

    def security_problem(self) -> str | None:
        """Why this server could not serve securely as configured, or None: TLS needs a
        certificate and key unless plaintext was asked for, tokens need a key set unless
        authentication was turned off."""
        if not self.plaintext and not (self.tls_cert_file and self.tls_key_file):
            return (
                "TLS needs STOCKCORE_TLS_CERT and STOCKCORE_TLS_KEY (PEM files);"
                " set STOCKCORE_PLAINTEXT=true only to serve without TLS"
            )
        if not self.auth_disabled and not self.auth_jwks_file:
            return (
                "token checks need STOCKCORE_AUTH_JWKS (a JWKS file of the signing keys);"
                " set STOCKCORE_AUTH_DISABLED=true only to admit every call unchecked"
            )
        return None


# The names the program's callers read and write its variables by.
from_env = Settings.from_env
to_env = Settings.to_env
