"""Remote URLs: a path, ``file:///path`` or ``s3://bucket[/prefix]``, checked rule by rule.

Nothing in a URL is ever executed or handed to a shell; credentials never
appear in a URL (they are refused), in `Transport.url` or in an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from mfgit.errors import InvalidRemoteURL

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


def _redact(url: str) -> str:
    """The URL with any user:password@ part replaced, for error messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1***@", url)


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
    shown = _redact(url)
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
    if scheme is not None and url[m.end():].startswith("//") and "@" in url[m.end() + 2:].split("/", 1)[0]:
        raise InvalidRemoteURL(shown, "credentials never go in URLs; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                                      "a profile or ~/.aws/credentials")
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
