"""A remote in S3-compatible object storage (AWS S3, SeaweedFS, MinIO, R2…).

Key ``a/b`` is the object ``PREFIX/a/b`` in the bucket. A single PUT is
atomic for readers. Compare-and-swap uses conditional writes: ``If-None-Match:
*`` (create only) and ``If-Match: ETAG``; the version token is the ETag as the
server returns it (quotes included).

Every botocore error becomes an mfgit error in one place,
`S3Transport._errors`; no message built there contains a credential.

Time limits (docs/remotes.md, "Time limits"): each operation — one GET, PUT,
HEAD or page of a listing, botocore's retries included — ends within
``timeout`` seconds (`mfgit.remote.deadline`), whatever the server does;
each attempt to connect within ``connect_timeout``; at most `ATTEMPTS`
attempts are made. The errors say how long the operation took, how many
attempts it made and what the limit was.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import botocore.exceptions as bx
import botocore.session
from botocore.config import Config

from mfgit.errors import KeyNotFound, PreconditionFailed, RemoteAuthError, RemoteError, RemoteUnreachable
from mfgit.remote import deadline
from mfgit.remote.transport import Transport, check_key, check_prefix, is_valid_key
from mfgit.remote.url import check_endpoint_url, redact_url

# What S3Transport takes (mfgit.remote.registry.open_transport documents each).
S3_OPTION_NAMES = ("endpoint_url", "region", "profile", "access_key_id", "secret_access_key",
                   "addressing_style", "connect_timeout", "timeout")
DEFAULT_TIMEOUT = 120.0  # seconds one operation may take, from its first attempt to the last byte
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds one attempt to connect may take
ATTEMPTS = 3  # attempts per operation, the first included (botocore total_max_attempts)

_AUTH_REASONS = {
    "InvalidAccessKeyId": "the access key id is not known to the server",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied (all access to this bucket is disabled)",
    "AccountProblem": "access denied (a problem with the account)",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
    "TokenRefreshRequired": "the session token has expired",
    "InvalidClientTokenId": "the access key id is not valid",
    "AuthorizationHeaderMalformed": "the request was signed for the wrong region or credentials",
    "RequestTimeTooSkewed": "this machine's clock is too far off the server's",
    "403": "access denied (403)",
    "Forbidden": "access denied (403)",
}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412"}


def _connection_reason(exc: BaseException) -> str:
    text = str(getattr(exc, "kwargs", {}).get("error", "") or exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text \
            or "name resolution" in text:
        return "host name not found"
    if "timed out" in text or "timeout" in text:
        return "connection timed out"
    if "unreachable" in text:
        return "network is unreachable"
    if "reset" in text:
        return "connection reset"
    return "connection failed"


_loader_lock = threading.Lock()
_loader = None


def _shared_loader():
    """botocore's model loader, shared by every transport of the process:
    parsing the S3 model costs ~0.3 s per fresh session, reusing it ~0.03 s.
    Sessions stay fresh, so credentials are resolved anew for each transport."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.session.Session().get_component("data_loader")
        return _loader


class S3Transport(Transport):
    max_workers = 16
    place = "S3 prefix"

    def __init__(self, bucket: str, prefix: str = "", options: dict[str, Any] | None = None):
        opts = {k: v for k, v in (options or {}).items() if v not in (None, "")}
        unknown = set(opts) - set(S3_OPTION_NAMES)
        if unknown:
            raise ValueError(f"unknown S3 options: {', '.join(sorted(unknown))}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._root = self.prefix + "/" if self.prefix else ""
        self._bucket_checked = False
        self.timeout = float(opts.get("timeout", DEFAULT_TIMEOUT))
        self.connect_timeout = float(opts.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
        if not (self.timeout > 0 and self.connect_timeout > 0):
            raise ValueError("S3 time limits are numbers of seconds above 0")
        endpoint = opts.get("endpoint_url")
        self.endpoint_url = ""
        env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        custom = bool(endpoint or env_endpoint)
        if custom:  # from config, a flag or the environment: refused if it holds credentials
            check_endpoint_url(endpoint or env_endpoint)
        config = Config(
            retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
            connect_timeout=self.connect_timeout,
            read_timeout=self.timeout,
            max_pool_connections=32,
            s3={"addressing_style": opts.get("addressing_style") or ("path" if custom else "auto")},
        )
        with self._errors("connect to", ""):
            session = botocore.session.Session(profile=opts.get("profile"))
            session.register_component("data_loader", _shared_loader())
            region = opts.get("region") or session.get_config_variable("region") or "us-east-1"
            try:
                self._client = session.create_client(
                    "s3", region_name=region, endpoint_url=endpoint, config=config,
                    aws_access_key_id=opts.get("access_key_id"),
                    aws_secret_access_key=opts.get("secret_access_key"),
                )
            except ValueError:
                # botocore's message repeats the endpoint as given: not shown.
                raise RemoteError(self.url, f"invalid endpoint {redact_url(str(endpoint))!r}") from None
        self.endpoint_url = self._client.meta.endpoint_url
        deadline.install(self._client, self.timeout)

    # -- error mapping: the one place ----------------------------------------------------

    @contextmanager
    def _errors(self, op: str, key: str, expected: str | None = None) -> Iterator[None]:
        """Run `op` on `key` under the operation time limit; turn botocore failures into mfgit errors."""
        with deadline.deadline(self.timeout) as d:
            try:
                yield
            except Exception as exc:
                if d.expired or isinstance(exc, deadline.DeadlineExceeded):
                    raise RemoteUnreachable(self.url, self._out_of_time(op, key, d)) from exc
                self._map_error(exc, op, key, expected, d)
                raise
            if d.expired:
                # The watchdog cut the connection: what was read may look like
                # a whole answer to http.client (end of headers at EOF), but
                # it is not one.
                raise RemoteUnreachable(self.url, self._out_of_time(op, key, d))

    def _out_of_time(self, op: str, key: str, d: deadline.Deadline) -> str:
        endpoint = redact_url(self.endpoint_url) or "the S3 endpoint"
        target = f" {key}" if key else ""
        return (f"{endpoint} did not complete {op}{target} within the limit of {self.timeout:g} s: gave up after "
                f"{d.elapsed():.1f} s and {d.attempts} attempt(s) (the limit is remote.NAME.timeout or --timeout)")

    def _map_error(self, exc: Exception, op: str, key: str, expected: str | None, d: deadline.Deadline) -> None:
        """Raise the mfgit error for a botocore failure; return for anything else (it is re-raised)."""
        endpoint = redact_url(self.endpoint_url) or "the S3 endpoint"
        target = f" {key}" if key else ""
        tries = f"{d.attempts} attempt(s) in {d.elapsed():.1f} s"
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {}) or {}
            meta = exc.response.get("ResponseMetadata", {}) or {}
            code = str(err.get("Code") or meta.get("HTTPStatusCode") or "")
            status = meta.get("HTTPStatusCode")
            if code == "NoSuchBucket":
                raise RemoteError(self.url, f"bucket {self.bucket} does not exist") from exc
            if op == "put_if" and (code in _CONFLICT or status == 412 or code in _MISSING_KEY):
                # If-Match on an absent key answers 404 on AWS, 412 elsewhere.
                raise PreconditionFailed(key, expected, self.url) from exc
            if code in _AUTH_REASONS or status == 403:
                reason = _AUTH_REASONS.get(code, f"access denied ({code})")
                raise RemoteAuthError(self.url, f"{reason} ({op}{target})") from exc
            if code in _MISSING_KEY or status == 404:
                raise KeyNotFound(key, self.url) from exc
            if code in ("SlowDown", "ServiceUnavailable", "503", "InternalError", "500"):
                raise RemoteError(self.url, f"the server failed to {op}{target} ({code}, {tries}); "
                                            "try again later") from exc
            message = " ".join(str(err.get("Message") or "").split())[:200]
            raise RemoteError(self.url, f"cannot {op}{target}: {code} {message}".strip()) from exc
        if isinstance(exc, bx.NoCredentialsError):
            raise RemoteAuthError(self.url, "no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                                            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials") from exc
        if isinstance(exc, bx.PartialCredentialsError):
            raise RemoteAuthError(self.url, f"incomplete AWS credentials (missing {exc.kwargs.get('cred_var', '?')})") from exc
        if isinstance(exc, bx.ProfileNotFound):
            raise RemoteAuthError(self.url, f"AWS profile {exc.kwargs.get('profile', '?')!r} not found") from exc
        if isinstance(exc, bx.ConnectTimeoutError):
            raise RemoteUnreachable(self.url, f"cannot reach {endpoint}: connection timed out ({tries}, at most "
                                              f"{self.connect_timeout:g} s each: remote.NAME.connectTimeout)") from exc
        if isinstance(exc, bx.EndpointConnectionError):
            raise RemoteUnreachable(self.url, f"cannot reach {endpoint}: {_connection_reason(exc)} ({tries})") from exc
        if isinstance(exc, bx.ReadTimeoutError):
            raise RemoteUnreachable(self.url, f"{endpoint} did not answer {op}{target} ({tries}; the limit is "
                                              f"{self.timeout:g} s: remote.NAME.timeout or --timeout)") from exc
        if isinstance(exc, bx.ConnectionClosedError):
            raise RemoteUnreachable(self.url, f"{endpoint} closed the connection ({tries})") from exc
        if isinstance(exc, bx.SSLError):
            raise RemoteUnreachable(self.url, f"TLS handshake with {endpoint} failed") from exc
        if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError)):
            raise RemoteUnreachable(self.url, f"cannot reach {endpoint}: {_connection_reason(exc)} ({tries})") from exc
        if isinstance(exc, bx.BotoCoreError):
            raise RemoteError(self.url, f"cannot {op}{target}: {type(exc).__name__}") from exc

    def _key(self, key: str) -> str:
        check_key(key, self.url)
        return self._root + key

    def _check_bucket(self) -> None:
        """HEAD on an object answers 404 both for a missing key and a missing
        bucket; tell them apart once."""
        if self._bucket_checked:
            return
        try:
            with self._errors("check bucket", ""):
                self._client.head_bucket(Bucket=self.bucket)
        except RemoteAuthError:
            pass  # HeadBucket may be forbidden to keys that may read objects
        except KeyNotFound:
            raise RemoteError(self.url, f"bucket {self.bucket} does not exist") from None
        self._bucket_checked = True

    # -- the interface -------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        full = self._key(key)
        with self._errors("get", key):
            resp = self._client.get_object(Bucket=self.bucket, Key=full)
            return resp["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        full = self._key(key)
        with self._errors("put", key):
            self._client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data))

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors("check", key):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except KeyNotFound:
            self._check_bucket()
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix, self.url)
        out: list[str] = []
        token: str | None = None
        while True:  # one page per operation: each is under the time limit, not the whole listing
            with self._errors("list", prefix):
                page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._root + prefix,
                                                    **({"ContinuationToken": token} if token else {}))
            for obj in page.get("Contents", ()) or ():
                name = obj["Key"][len(self._root):]
                if obj["Key"].startswith(self._root) and is_valid_key(name):
                    out.append(name)
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if not token:
                break
        out.sort()
        return out

    def is_empty(self) -> bool:
        with self._errors("list", ""):
            page = self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._root, MaxKeys=1)
        return not page.get("Contents")

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        full = self._key(key)
        try:
            with self._errors("get", key):
                resp = self._client.get_object(Bucket=self.bucket, Key=full)
                return resp["Body"].read(), resp["ETag"]
        except KeyNotFound:
            return None

    def put_if(self, key: str, data: bytes, expected: str | None) -> str:
        full = self._key(key)
        data = bytes(data)
        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        with self._errors("put_if", key, expected):
            try:
                resp = self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **cond)
            except bx.ClientError as exc:
                if (exc.response.get("ResponseMetadata") or {}).get("RetryAttempts", 0):
                    # An earlier attempt may have been applied and its answer
                    # lost: then the object already holds our bytes.
                    current = self.get_versioned(key)
                    if current is not None and current[0] == data:
                        return current[1]
                raise
            return resp["ETag"]

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            try:
                client.close()
            except Exception:  # pragma: no cover - best effort
                pass
