"""Remote URLs: a path, ``file:///path`` or ``s3://bucket[/prefix]``, checked rule by rule.

Nothing in a URL is ever executed or handed to a shell; credentials never
appear in a URL (they are refused), in `Transport.url` or in an error: every
message that shows a URL shows `redact_url` of it, with any ``user:password@``
part and any query string or fragment (where presigned URLs carry their
signature) replaced by ``***``. S3 endpoints (``--endpoint``,
``remote.NAME.endpoint``) are checked by `check_endpoint_url` under the same
rule.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from mfgit.errors import InvalidEndpoint, InvalidRemoteURL

CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # NUL and control characters: refused in URLs and keys


@dataclass(frozen=True)
class RemoteURL:
    scheme: str  # "file" | "s3"
    path: str | None  # absolute local path (scheme "file")
    bucket: str | None  # scheme "s3"
    prefix: str  # s3 key prefix without leading/trailing "/"; "" for file

    @property
    def display(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return str(self.path)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_OTHER_SCHEMES = {
    "http", "https", "ssh", "git", "git+ssh", "ssh+git", "ftp", "ftps", "sftp", "rsync", "scp",
    "gs", "gcs", "az", "azure", "abfs", "abfss", "wasb", "wasbs", "hdfs", "webdav", "dav",
    "s3a", "s3n", "r2", "minio",
}
_SCP_LIKE = re.compile(r"^[^/:]*@[^/:]+:")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


# Up to the first "@", not the first "/": AWS secrets contain "/", and
# "s3://AKIA:ab/cd@bucket" must not show "cd" (over-redacting a message is harmless).
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^@]*@")
_QUERY = re.compile(r"[?#].*", re.DOTALL)
# "AK:SECRET@host/x" has no scheme, yet it is credentials, not a folder name
# (a folder with such a name is reached as "./AK:...").
_BARE_USERINFO = re.compile(r"^[^/@:]+:[^@]*@")
CREDENTIALS_REFUSED = ("credentials never go in URLs; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                       "a profile or ~/.aws/credentials")


def redact_url(url: str) -> str:
    """`url` as any message may show it: a ``user:password@`` part and a query string or fragment become ``***``."""
    shown = url or ""
    shown = _USERINFO.sub(r"\1***@", shown) if _USERINFO.match(shown) else _BARE_USERINFO.sub("***@", shown)
    return _QUERY.sub(lambda m: m.group(0)[0] + "***", shown)


def check_endpoint_url(url: str) -> str:
    """`url` if it is a usable S3 endpoint (``http(s)://host[:port][/path]``); `InvalidEndpoint` if not.

    Credentials are refused here as in remote URLs: an endpoint is stored in
    config and printed by ``remote -v``, where a secret must never be."""
    shown = redact_url(url)
    if not isinstance(url, str) or not url.strip():
        raise InvalidEndpoint(shown, "it is empty")
    if CONTROL.search(url) or url != url.strip() or " " in url:
        raise InvalidEndpoint(shown, "it contains whitespace or a control character")
    m = re.match(r"^(https?)://([^/?#]*)(.*)$", url, re.IGNORECASE | re.DOTALL)
    if not m:
        raise InvalidEndpoint(shown, "write http://host:port or https://host")
    authority, rest = m.group(2), m.group(3)
    if "@" in url:  # anywhere: a secret may hold a "/", and no endpoint needs an "@"
        raise InvalidEndpoint(shown, CREDENTIALS_REFUSED)
    if "?" in rest or "#" in rest:
        raise InvalidEndpoint(shown, "query strings and fragments are not supported (credentials never go in URLs)")
    host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
    if not host.strip("[]"):
        raise InvalidEndpoint(shown, "it names no host")
    port = authority[len(host) + 1:] if len(authority) > len(host) else ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise InvalidEndpoint(shown, f"invalid port {port!r}")
    return url


def check_bucket_name(name: str) -> str | None:
    """Why `name` breaks the S3 general purpose bucket naming rules, or None."""
    if not 3 <= len(name) <= 63:
        return "bucket names are 3 to 63 characters long"
    if not re.fullmatch(r"[a-z0-9.\-]+", name):
        return "bucket names use only lowercase letters, digits, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "bucket names begin and end with a letter or digit"
    if ".." in name:
        return "bucket names have no two adjacent periods"
    if ".-" in name or "-." in name:
        return "bucket names have no '.' next to '-'"
    if _IPV4.match(name):
        return "bucket names are not IP addresses"
    for p in ("xn--", "sthree-", "amzn-s3-demo-"):
        if name.startswith(p):
            return f"bucket names do not start with {p!r}"
    for s in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if name.endswith(s):
            return f"bucket names do not end with {s!r}"
    return None


def parse_remote_url(url: str, base: str | None = None) -> RemoteURL:
    """Parse a remote URL: a local path (absolute, or relative to `base`,
    default the current directory), ``file:///abs/path`` or
    ``s3://bucket[/prefix]``. Raises `InvalidRemoteURL` with the reason.

    No expansion of any kind (``~``, ``$VAR``) is done."""
    if not isinstance(url, str) or url.strip() == "":
        raise InvalidRemoteURL(str(url) if isinstance(url, str) else repr(url), "it is empty")
    shown = redact_url(url)
    if CONTROL.search(url):
        raise InvalidRemoteURL(shown, "it contains NUL or a control character")
    if url != url.strip():
        raise InvalidRemoteURL(shown, "it has leading or trailing whitespace")

    m = _SCHEME.match(url)
    scheme = m.group(1).lower() if m else None
    if scheme is not None and len(scheme) == 1 and os.name == "nt":
        scheme = None  # C:\path on Windows
    if scheme is not None and not (scheme in ("file", "s3") or scheme in _OTHER_SCHEMES or url[m.end():].startswith("//")):
        scheme = None  # "a:b" with no "//": a relative path with a colon
    after = url[m.end() + 2:] if scheme is not None and url[m.end():].startswith("//") else None
    # user@host, or user:secret@ where the secret holds a "/" (AWS secrets do)
    if after is not None and ("@" in after.split("/", 1)[0] or ":" in after.split("@", 1)[0] and "@" in after):
        raise InvalidRemoteURL(shown, CREDENTIALS_REFUSED)
    if scheme is None and _BARE_USERINFO.match(url):
        raise InvalidRemoteURL(shown, CREDENTIALS_REFUSED)
    if scheme is not None and scheme not in ("file", "s3"):
        raise InvalidRemoteURL(shown, f"{scheme}: remotes are not supported; use a path, file:///path or s3://bucket/prefix")
    if scheme is None:
        if _SCP_LIKE.match(url):
            raise InvalidRemoteURL(shown, "ssh remotes (user@host:path) are not supported; use a path, file:// or s3://")
        return RemoteURL("file", os.path.abspath(os.path.join(base or os.getcwd(), url)), None, "")

    rest = url[m.end():]
    if not rest.startswith("//"):
        raise InvalidRemoteURL(shown, f"write {scheme}://…")
    rest = rest[2:]
    authority, _slash, path = rest.partition("/")
    if "?" in rest or "#" in rest:
        raise InvalidRemoteURL(shown, "query strings and fragments are not supported")

    if scheme == "file":
        if authority not in ("", "localhost"):
            raise InvalidRemoteURL(shown, f"file URLs with a host ({authority}) are not supported; use file:///path")
        local = unquote("/" + path)
        if CONTROL.search(local):
            raise InvalidRemoteURL(shown, "it contains NUL or a control character")
        if local == "/" and not path:
            raise InvalidRemoteURL(shown, "it names no path")
        return RemoteURL("file", os.path.normpath(local) if local != "/" else "/", None, "")

    if scheme == "s3":
        bucket = authority
        if not bucket:
            raise InvalidRemoteURL(shown, "it names no bucket")
        why = check_bucket_name(bucket)
        if why:
            raise InvalidRemoteURL(shown, f"invalid bucket name {bucket!r}: {why}")
        prefix = path.strip("/")
        if prefix:
            if "\\" in prefix:
                raise InvalidRemoteURL(shown, "the prefix contains a backslash")
            for seg in prefix.split("/"):
                if seg == "":
                    raise InvalidRemoteURL(shown, "the prefix has an empty segment ('//')")
                if seg in (".", ".."):
                    raise InvalidRemoteURL(shown, f"the prefix has a {seg!r} segment")
        return RemoteURL("s3", None, bucket, prefix)

    raise AssertionError(scheme)  # pragma: no cover - every scheme is handled above
