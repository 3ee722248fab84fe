"""The one place that knows the transports: a URL or a configured remote name → an open transport.

(restic's ``backend/location`` registry is the model.) Nothing else imports
the folder or S3 transport; everything else talks to `Transport`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

from mfgit.errors import ConfigError, RemoteNotFound
from mfgit.remote.transport import Transport
from mfgit.remote.url import parse_remote_url

if TYPE_CHECKING:
    from mfgit.repo.base import BaseRepository

# config key under remote.NAME → the S3 transport's option
S3_CONFIG_KEYS = {"endpoint": "endpoint_url", "region": "region", "profile": "profile",
                  "timeout": "timeout", "connectTimeout": "connect_timeout"}
TIME_LIMIT_KEYS = ("timeout", "connectTimeout")
URL_REMOTE = "_url"  # the tracking name of a remote given by URL rather than by name


def open_transport(url: str, s3_options: dict | None = None) -> Transport:
    """The transport for a remote URL.

    `s3_options` (S3 only, all optional): endpoint_url, region, profile,
    access_key_id, secret_access_key, addressing_style ("path" by default
    when an endpoint is given), timeout (seconds one operation may take,
    retries included), connect_timeout (seconds one attempt to connect may
    take). What is not given comes from boto3's usual chain
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/config and
    credentials, instance roles)."""
    parsed = parse_remote_url(url)
    if parsed.scheme == "file":
        from mfgit.remote.local import LocalTransport

        return LocalTransport(parsed.path)
    from mfgit.remote.s3 import S3Transport

    return S3Transport(parsed.bucket, parsed.prefix, s3_options or {})


class OpenRemote(NamedTuple):
    """(name used for tracking refs, transport); a context manager that closes the transport."""

    name: str
    transport: Transport

    def __enter__(self) -> "OpenRemote":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.transport.close()


def _configured_url(repo: "BaseRepository", name: str) -> str | None:
    try:
        return repo.config.get(f"remote.{name}.url")
    except ConfigError:
        return None  # not a remote name ("../hub", "s3://b/p"): a URL


def seconds(key: str, value: Any) -> float:
    """A time limit from config or a flag: a number of seconds above 0, else `ConfigError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(key, f"{value!r} is not a number of seconds above 0")
    return number


def remote_options(repo: "BaseRepository", name: str, timeout: float | None = None) -> dict[str, Any]:
    """The S3 options of configured remote `name`; `timeout` (a flag) wins over remote.NAME.timeout."""
    opts: dict[str, Any] = {}
    for key, opt in S3_CONFIG_KEYS.items():
        value = repo.config.get(f"remote.{name}.{key}")
        if value:
            opts[opt] = seconds(f"remote.{name}.{key}", value) if key in TIME_LIMIT_KEYS else value
    if timeout is not None:
        opts["timeout"] = seconds("--timeout", timeout)
    return opts


def open_remote(repo: "BaseRepository", name_or_url: str, *, timeout: float | None = None) -> OpenRemote:
    """A configured remote (its URL and S3 options from config) or a URL given as it is.

    `timeout`: seconds one operation on an S3 remote may take (overrides
    remote.NAME.timeout); a folder's operations are file system calls."""
    url = _configured_url(repo, name_or_url)
    if url is not None:
        return OpenRemote(name_or_url, open_transport(url, remote_options(repo, name_or_url, timeout) or None))
    if "/" in name_or_url or name_or_url.startswith(("s3:", "file:", ".")):
        opts = {"timeout": seconds("--timeout", timeout)} if timeout is not None else None
        return OpenRemote(URL_REMOTE, open_transport(name_or_url, opts))
    raise RemoteNotFound(name_or_url)


def tracking_name(repo: "BaseRepository", name_or_url: str) -> str:
    """The name open_remote uses for tracking refs: the remote's, or "_url"."""
    return name_or_url if _configured_url(repo, name_or_url) is not None else URL_REMOTE
