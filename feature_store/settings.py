"""How to reach the online store (``RedisSettings``): a host and port, or a ``redis://`` / ``rediss://``
(TLS) URL, with an optional ACL username; ``redis+cluster://`` / ``rediss+cluster://`` (or ``cluster=True``)
name any node of a Redis Cluster; ``redis+sentinel://`` / ``rediss+sentinel://`` name Redis Sentinels and
the service whose primary they track. The event stream's layout (``StreamSettings``). Secrets (the password) come from the environment or a file and
never reach release specs, logs or ``repr``. Cheap to import: redis-py is imported on use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from reels.feature_store.layout import DEFAULT_PREFIX

if TYPE_CHECKING:
    import redis

    from reels.feature_store.store import OnlineStore

PASSWORD_ENV = "REELS_REDIS_PASSWORD"  # noqa: S105 - the name of the variable, not a secret
PASSWORD_FILE_ENV = "REELS_REDIS_PASSWORD_FILE"
URL_ENV = "REELS_REDIS_URL"  # the one place a URL may embed a password
USERNAME_ENV = "REELS_REDIS_USERNAME"
CA_FILE_ENV = "REELS_REDIS_CA_FILE"
CERT_FILE_ENV = "REELS_REDIS_CERT_FILE"
KEY_FILE_ENV = "REELS_REDIS_KEY_FILE"
SENTINEL_PASSWORD_ENV = "REELS_REDIS_SENTINEL_PASSWORD"  # noqa: S105 - the Sentinels' own, if they have one
SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
CLUSTER_SUFFIX = "+cluster"
SENTINEL_SUFFIX = "+sentinel"
MASK = "***"
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


def _sentinel_address(url: str) -> tuple[tuple[tuple[str, int], ...], str, int]:
    """The Sentinels (host, port), the service name and the db of a ``redis+sentinel://`` URL:
    ``redis+sentinel://[user@]host[:port][,host[:port]...]/service_name[/db]``."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in hosts.split(","):
        address = urlsplit(f"//{item.strip()}")  # also parses [::1]:26379
        try:
            port = address.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"bad Sentinel port {item!r} in the Redis URL {redacted(url)}") from None
        if not address.hostname:
            raise ValueError(f"the Redis URL {redacted(url)} names an empty Sentinel address")
        sentinels.append((address.hostname, port))
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise ValueError(
            f"the Redis URL {redacted(url)} names no service: redis+sentinel://host:port[,host:port]/service_name"
        )
    try:
        return tuple(sentinels), unquote(service), int(db or 0)
    except ValueError:
        raise ValueError(f"bad db in the Redis URL {redacted(url)}") from None


def _address(url: str) -> tuple[str | None, int]:
    """The (host, port) a URL names first: its server, or its first Sentinel."""
    if urlsplit(url).scheme.endswith(SENTINEL_SUFFIX):
        return _sentinel_address(url)[0][0]
    parts = urlsplit(url)
    return parts.hostname, parts.port or DEFAULT_PORT


def url_password(url: str) -> str | None:
    """The password in a Redis URL's userinfo (None: none)."""
    password = urlsplit(url).password
    return unquote(password) if password else None


def _safe_url(url: str, mask: str | None) -> str:
    """``url`` with its password dropped (``mask=None``) or replaced by ``mask``; the rest untouched."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, password = userinfo.partition(":")
    if colon and password and mask is not None:
        user = f"{user}:{mask}"
    netloc = f"{user}@{hostport}" if user else hostport
    return parts._replace(netloc=netloc).geturl()


def without_password(url: str) -> str:
    """The URL as release specs store it: ``rediss://user:secret@h:1/0`` → ``rediss://user@h:1/0``."""
    return _safe_url(url, None)


def redacted(url: str) -> str:
    """The URL as it may be printed: the password, if any, shows as ``***``."""
    return _safe_url(url, MASK)


MAX_STREAM_SHARDS = 256  # far more than primaries; each shard costs a consumer group and a read per step


@dataclass(frozen=True)
class StreamSettings:
    """The event stream's layout (config section ``stream``). ``shards``: how many streams the events are
    spread over; 1 (the default) is the single ``<prefix>:events`` stream. With N > 1 a user's events go to
    shard ``user_id % N`` (so they stay in order), each shard is a stream of its own
    (``<prefix>:events:{s<i>}``, hash-tagged so that the shards spread over a Redis Cluster's primaries) with
    its own consumer group and dead letters, and each ingest worker reads the shards it owns. N is fixed
    for a deployment: the workers refuse another N until the streams written with the old one are
    drained."""

    shards: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_STREAM_SHARDS:
            raise ValueError(f"stream.shards must be between 1 and {MAX_STREAM_SHARDS}, got {self.shards}")

    def shard_of(self, user_id: int) -> int:
        """The shard of a user's events."""
        return int(user_id) % self.shards

    def owned(self, spec: str | None) -> list[int]:
        """The shards named by ``spec`` (``"0,2"``, ``"0-3"``, ``"1,4-5"``; None or ``""``: all), sorted;
        ``ValueError`` for a malformed list or a shard that does not exist."""
        if not spec:
            return list(range(self.shards))
        owned: set[int] = set()
        for item in spec.split(","):
            first, dash, last = item.strip().partition("-")
            try:
                low, high = int(first), int(last if dash else first)
            except ValueError:
                raise ValueError(f"shards are numbers or ranges such as 0,2 or 0-3 (got {spec!r})") from None
            if not 0 <= low <= high < self.shards:
                raise ValueError(
                    f"shard {item.strip()!r} does not exist: stream.shards is {self.shards} "
                    f"(shards 0 to {self.shards - 1})"
                )
            owned.update(range(low, high + 1))
        return sorted(owned)


@dataclass(frozen=True)
class RedisSettings:
    """Where the online store lives and how to authenticate.

    The address is ``host``/``port`` or, when given, ``url`` (``redis://[user@]host:port/db``, or
    ``rediss://`` for TLS; the URL's host, port and db replace the fields). ``cluster``: the address is one
    node of a Redis Cluster (any node: the client discovers the others, follows MOVED/ASK redirections and
    a failover's new primaries); a ``redis+cluster://`` or ``rediss+cluster://`` URL sets it. A cluster has
    only db 0. The password never travels in
    files or argv: it comes from ``password`` (set in code), else the URL (which holds one only when it
    came from the environment), else ``$REELS_REDIS_PASSWORD``, else the file named by
    ``$REELS_REDIS_PASSWORD_FILE``, else ``$REELS_REDIS_URL`` when that names the same host and port. The
    ACL username: ``username``, else the URL's, else ``$REELS_REDIS_USERNAME``. TLS files (``rediss://``
    only): the fields, else ``$REELS_REDIS_CA_FILE`` / ``_CERT_FILE`` / ``_KEY_FILE``. ``as_spec()`` (what
    release specs store) and ``repr`` leave the password out.

    Sentinel: ``redis+sentinel://[user@]host:port[,host:port...]/service_name[/db]`` (``rediss+sentinel://``:
    TLS to the Sentinels and the primary) names the Sentinels (port 26379 unless given) that track the
    primary of ``service_name``; ``host``/``port`` are then the first Sentinel's. The client asks them for
    the current primary and asks again after a failover (``Sentinel.master_for``). The username and
    password above are the primary's; Sentinels that require a password of their own find it in
    ``$REELS_REDIS_SENTINEL_PASSWORD``."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    url: str | None = field(default=None, repr=False)  # repr shows it redacted (``__repr__``)
    username: str | None = None
    db: int = 0
    ca_file: str | None = None  # the CA bundle that signed the server's certificate
    cert_file: str | None = None  # client certificate, for servers that require one
    key_file: str | None = None  # its private key (a path, not the key)
    cluster: bool = False  # a Redis Cluster node (set by a ``+cluster`` URL scheme)
    # Set from a ``+sentinel`` URL: the Sentinels' addresses and the service whose primary they track.
    sentinels: tuple[tuple[str, int], ...] = field(default=(), init=False)
    service_name: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in SCHEMES:
                raise ValueError(
                    "a Redis URL starts with redis:// or rediss:// (TLS), redis+cluster:// or "
                    "rediss+cluster:// for a Redis Cluster, or redis+sentinel:// or rediss+sentinel:// for "
                    f"Redis Sentinel (got {parts.scheme or '?'}://)"
                )
            if any("password" in key.lower() for key, _ in parse_qsl(parts.query)):
                raise ValueError(
                    f"pass secrets through ${PASSWORD_ENV} or ${PASSWORD_FILE_ENV}, not URL options"
                )
            if parts.scheme.endswith(SENTINEL_SUFFIX):
                if self.cluster:
                    raise ValueError("a Redis URL names Sentinels or a Redis Cluster, not both")
                sentinels, service, db = _sentinel_address(self.url)
                for name, value in (("sentinels", sentinels), ("service_name", service), ("db", db),
                                    ("host", sentinels[0][0]), ("port", sentinels[0][1])):  # fmt: skip
                    object.__setattr__(self, name, value)
                return
            if not parts.hostname:
                raise ValueError(f"the Redis URL {redacted(self.url)} names no host")
            try:
                port = parts.port or DEFAULT_PORT
                db = int(parts.path.strip("/") or 0)
            except ValueError:
                raise ValueError(f"bad port or db in the Redis URL {redacted(self.url)}") from None
            # frozen: the derived address is set once here, so host/port always say where the store is
            object.__setattr__(self, "host", parts.hostname)
            object.__setattr__(self, "port", port)
            object.__setattr__(self, "db", db)
            object.__setattr__(self, "cluster", self.cluster or parts.scheme.endswith(CLUSTER_SUFFIX))
        elif self.ca_file or self.cert_file or self.key_file:
            raise ValueError("TLS files need a rediss:// URL")
        if self.cluster and self.db:
            raise ValueError(f"a Redis Cluster has only db 0 (got db {self.db})")

    def __repr__(self) -> str:
        shown = f"url={redacted(self.url)!r}, " if self.url else ""
        return (
            f"RedisSettings({shown}host={self.host!r}, port={self.port!r}, db={self.db!r}, "
            f"username={self.username!r}, prefix={self.prefix!r}{', cluster=True' if self.cluster else ''})"
        )

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (a ``rediss://`` URL)."""
        return bool(self.url) and urlsplit(self.url).scheme.startswith("rediss")

    def resolved_username(self) -> str | None:
        """The ACL username from the settings, the URL or the environment (None: the default user)."""
        from_url = urlsplit(self.url).username if self.url else None
        return (
            self.username or (unquote(from_url) if from_url else None) or os.environ.get(USERNAME_ENV) or None
        )

    def resolved_password(self) -> str | None:
        """The password from the settings, the URL, the environment or the password file (None: no AUTH)."""
        if self.password:
            return self.password
        if self.url and url_password(self.url):
            return url_password(self.url)
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        path = os.environ.get(PASSWORD_FILE_ENV)
        if path:
            return Path(path).read_text().strip() or None
        return self._environment_url_password()

    def _environment_url_password(self) -> str | None:
        # A process that got these settings from a spec (tritonserver's step models) but whose environment
        # holds the URL with its password: use it only for the server that URL names.
        env_url = os.environ.get(URL_ENV)
        if env_url and url_password(env_url):
            try:
                same = _address(env_url) == (self.host, self.port)
            except ValueError:  # a malformed URL names no server of ours
                return None
            if same:
                return url_password(env_url)
        return None

    def tls_files(self) -> dict[str, str]:
        """The TLS files in use, as redis-py's ``ssl_*`` keyword arguments (empty without TLS)."""
        if not self.tls:
            return {}
        files = {
            "ssl_ca_certs": self.ca_file or os.environ.get(CA_FILE_ENV),
            "ssl_certfile": self.cert_file or os.environ.get(CERT_FILE_ENV),
            "ssl_keyfile": self.key_file or os.environ.get(KEY_FILE_ENV),
        }
        return {key: value for key, value in files.items() if value}

    def client(self, timeout_s: float = 0.5, retries: bool = True) -> redis.Redis | redis.RedisCluster:
        """A redis-py client with connect and command timeouts of ``timeout_s`` (a ``RedisCluster`` in
        cluster mode). ``retries=False``: a failed command fails at once (the serving path has fallbacks;
        redis-py's default retries made each request wait seconds while Redis was away); a cluster client
        still follows MOVED/ASK redirections and refreshes its slot map after a failure."""
        import redis
        from redis.backoff import NoBackoff
        from redis.connection import SSLConnection, parse_url
        from redis.retry import Retry

        kwargs: dict = {"host": self.host, "port": self.port, "db": self.db}
        if self.url:
            # redis-py's own URL parser (query options such as ?ssl_cert_reqs= included); the credentials,
            # files and timeouts below take precedence over what the URL says.
            scheme, _, rest = self.url.partition("://")
            if self.sentinels:  # one address and the db, as redis-py's parser expects them
                rest = f"{self.host}:{self.port}/{self.db}?{urlsplit(self.url).query}"
            options = parse_url(
                f"{scheme.removesuffix(CLUSTER_SUFFIX).removesuffix(SENTINEL_SUFFIX)}://{rest}"
            )
            options.pop("password", None)
            options.pop("username", None)
            if options.pop("connection_class", None) is SSLConnection:
                options["ssl"] = True
            kwargs.update(options)
        kwargs.update(self.tls_files())
        kwargs.update(
            username=self.resolved_username(), password=self.resolved_password(), socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, health_check_interval=0,
        )  # fmt: skip
        if not retries:
            kwargs["retry"] = Retry(NoBackoff(), 0)
        if self.sentinels:
            return self._sentinel_client(kwargs, timeout_s)
        if self.cluster:
            from redis.cluster import RedisCluster

            kwargs.pop("db", None)  # always 0 (checked above); RedisCluster refuses the argument
            kwargs.pop("health_check_interval", None)
            return RedisCluster(**kwargs)
        return redis.Redis(**kwargs)

    def _sentinel_client(self, kwargs: dict, timeout_s: float) -> redis.Redis:
        """A client of the primary the Sentinels name for ``service_name`` (``kwargs``: the primary's
        connection settings); it asks them again when a connection to the old primary fails."""
        from redis.sentinel import Sentinel

        kwargs = {key: value for key, value in kwargs.items() if key not in ("host", "port")}
        sentinel_kwargs: dict = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if os.environ.get(SENTINEL_PASSWORD_ENV):
            sentinel_kwargs["password"] = os.environ[SENTINEL_PASSWORD_ENV]
        if kwargs.get("ssl"):
            sentinel_kwargs.update(ssl=True, **self.tls_files())
        sentinel = Sentinel(list(self.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs)
        return sentinel.master_for(self.service_name)

    def store(self, timeout_s: float = 0.5, retries: bool = True, **kwargs) -> OnlineStore:
        """An ``OnlineStore`` over a new client (``kwargs`` go to ``OnlineStore``)."""
        from reels.feature_store.store import OnlineStore

        return OnlineStore(self.client(timeout_s, retries), prefix=self.prefix, **kwargs)

    def describe(self) -> str:
        """One printable line: the address (URL redacted), the username and where the password comes
        from, never the password itself."""
        scheme = "redis+cluster" if self.cluster else "redis"
        where = redacted(self.url) if self.url else f"{scheme}://{self.host}:{self.port}/{self.db}"
        if self.password:
            source = "set in code"
        elif self.url and url_password(self.url):
            source = "from the URL"
        elif os.environ.get(PASSWORD_ENV):
            source = f"from ${PASSWORD_ENV}"
        elif os.environ.get(PASSWORD_FILE_ENV):
            source = f"from the file named by ${PASSWORD_FILE_ENV}"
        elif self._environment_url_password():
            source = f"from ${URL_ENV}"
        else:
            source = "none"
        files = ", ".join(f"{key.removeprefix('ssl_')} {value}" for key, value in self.tls_files().items())
        return (
            f"{where}, TLS {'on' if self.tls else 'off'}{f' ({files})' if files else ''}, "
            f"user {self.resolved_username() or 'default'}, password {source}"
        )

    def as_spec(self) -> dict[str, str | int]:
        """The settings without the password, for release specs and logs."""
        spec: dict[str, str | int] = {"host": self.host, "port": self.port, "prefix": self.prefix}
        if self.url:
            spec["url"] = without_password(self.url)
        optional = {"username": self.username, "ca_file": self.ca_file, "cert_file": self.cert_file,
                    "key_file": self.key_file}  # fmt: skip
        spec.update({key: value for key, value in optional.items() if value})
        if self.db and not self.url:
            spec["db"] = self.db
        if self.cluster and not self.url:
            spec["cluster"] = True
        return spec

    @classmethod
    def from_spec(cls, spec: dict) -> RedisSettings:
        """The inverse of ``as_spec`` (the password comes from the environment)."""
        optional = ("url", "username", "ca_file", "cert_file", "key_file")
        return cls(
            host=spec["host"], port=int(spec["port"]), prefix=spec.get("prefix", DEFAULT_PREFIX),
            db=int(spec.get("db", 0)), cluster=bool(spec.get("cluster", False)),
            **{key: spec[key] for key in optional if spec.get(key)},
        )  # fmt: skip
