"""How to reach the online store (``RedisSettings``). Cheap to import: redis-py is imported on use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from reels.feature_store.layout import DEFAULT_PREFIX

if TYPE_CHECKING:
    import redis

    from reels.feature_store.store import OnlineStore

PASSWORD_ENV = "REELS_REDIS_PASSWORD"  # noqa: S105 - the name of the variable, not a secret
PASSWORD_FILE_ENV = "REELS_REDIS_PASSWORD_FILE"


@dataclass(frozen=True)
class RedisSettings:
    """Where the online store lives. The password never travels in files or argv: it comes from
    ``password`` (set in code), else ``$REELS_REDIS_PASSWORD``, else the file named by
    ``$REELS_REDIS_PASSWORD_FILE``; ``as_spec()`` (what release specs store) leaves it out."""

    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX

    def resolved_password(self) -> str | None:
        """The password from the settings, the environment or the password file (None: no AUTH)."""
        if self.password:
            return self.password
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        path = os.environ.get(PASSWORD_FILE_ENV)
        return Path(path).read_text().strip() or None if path else None

    def client(self, timeout_s: float = 0.5, retries: bool = True) -> redis.Redis:
        """A redis-py client with connect and command timeouts of ``timeout_s``. ``retries=False``: a
        failed command fails at once (the serving path has fallbacks; redis-py's default retries made
        each request wait seconds while Redis was away)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        extra = {} if retries else {"retry": Retry(NoBackoff(), 0)}
        return redis.Redis(
            host=self.host, port=self.port, password=self.resolved_password(), socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, health_check_interval=0, **extra,
        )  # fmt: skip

    def store(self, timeout_s: float = 0.5, retries: bool = True, **kwargs) -> OnlineStore:
        """An ``OnlineStore`` over a new client (``kwargs`` go to ``OnlineStore``)."""
        from reels.feature_store.store import OnlineStore

        return OnlineStore(self.client(timeout_s, retries), prefix=self.prefix, **kwargs)

    def as_spec(self) -> dict[str, str | int]:
        """The settings without the password, for release specs and logs."""
        return {"host": self.host, "port": self.port, "prefix": self.prefix}

    @classmethod
    def from_spec(cls, spec: dict) -> RedisSettings:
        """The inverse of ``as_spec`` (the password comes from the environment)."""
        return cls(host=spec["host"], port=int(spec["port"]), prefix=spec.get("prefix", DEFAULT_PREFIX))
