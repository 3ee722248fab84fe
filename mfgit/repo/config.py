"""Repository configuration: git-style ``section.key`` names in an INI file.

``remote.hub.url`` lives in section ``[remote "hub"]``. The repository file
(``<gitdir>/config``) wins over the user's file (``$MFGIT_CONFIG_GLOBAL`` or
``~/.config/mfgit/config``).
"""

from __future__ import annotations

import configparser
import io
import os
from pathlib import Path

from mfgit.errors import BadConfigFile, ConfigError
from mfgit.store.fileio import LockedFile

OBJECT_FORMAT = "sha256"
FORMAT_VERSION = "2"  # what init writes: object files whose digest covers their id
# What open accepts. A version-1 repository (written by an earlier mfgit) has
# only version-1 object files; it becomes version 2 just before the first
# version-2 object is written into it (upgrade_format), after which an older
# mfgit refuses it instead of misreading it.
READABLE_VERSIONS = ("1", "2")
ALIASES = {"site": "user.site"}


def split_key(key: str) -> tuple[str, str]:
    key = ALIASES.get(key, key)
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(key, "keys look like section.name (e.g. user.name) or remote.<name>.url")
    if len(parts) == 2:
        return parts[0].lower(), parts[1].lower()
    sub = ".".join(parts[1:-1])
    if '"' in sub or "\n" in sub:
        raise ConfigError(key, "invalid subsection name")
    return f'{parts[0].lower()} "{sub}"', parts[-1].lower()


def global_config_path() -> Path:
    env = os.environ.get("MFGIT_CONFIG_GLOBAL")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".config" / "mfgit" / "config"


class ConfigFile:
    def __init__(self, path: Path):
        self.path = path
        self.parser = configparser.ConfigParser(interpolation=None, strict=False)
        if path.exists():
            data = path.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadConfigFile(str(path), f"byte {e.start} (0x{data[e.start]:02x}) is not UTF-8 text") from None
            try:
                self.parser.read_string(text)
            except configparser.Error as e:
                # configparser's messages span lines and quote the bad line; one line, bounded.
                raise BadConfigFile(str(path), " ".join(str(e).split())[:200]) from None

    def get(self, key: str) -> str | None:
        section, name = split_key(key)
        if self.parser.has_option(section, name):
            return self.parser.get(section, name)
        return None

    def set(self, key: str, value: str | None) -> None:
        section, name = split_key(key)
        if value is not None and ("\n" in value or "\r" in value):
            raise ConfigError(key, "values cannot contain line breaks")
        with LockedFile(self.path) as lock:
            # Re-read under the lock so concurrent writers do not lose keys.
            fresh = ConfigFile(self.path) if self.path.exists() else self
            parser = fresh.parser
            if value is None:
                if parser.has_option(section, name):
                    parser.remove_option(section, name)
                    if not parser.options(section):
                        parser.remove_section(section)
            else:
                if not parser.has_section(section):
                    parser.add_section(section)
                parser.set(section, name, value)
            buf = io.StringIO()
            parser.write(buf)
            lock.commit(buf.getvalue().encode("utf-8"))
            self.parser = parser

    def remove_section(self, section: str) -> None:
        with LockedFile(self.path) as lock:
            parser = ConfigFile(self.path).parser
            parser.remove_section(section)
            buf = io.StringIO()
            parser.write(buf)
            lock.commit(buf.getvalue().encode("utf-8"))
            self.parser = parser

    def sections(self) -> list[str]:
        return self.parser.sections()

    def items(self) -> dict[str, str]:
        out = {}
        for section in self.parser.sections():
            if " " in section:
                head, sub = section.split(" ", 1)
                prefix = f"{head}.{sub.strip(chr(34))}"
            else:
                prefix = section
            for k, v in self.parser.items(section):
                out[f"{prefix}.{k}"] = v
        return out


def upgrade_format(config: "Config") -> None:
    """Record that the repository now holds version-2 object files (before the first one is written)."""
    config.repo.set("core.formatversion", FORMAT_VERSION)


class Config:
    """Layered view: repository file, then the user's global file."""

    def __init__(self, repo_file: Path):
        self.repo = ConfigFile(repo_file)
        self._global: ConfigFile | None = None

    @property
    def global_file(self) -> ConfigFile:
        if self._global is None:
            self._global = ConfigFile(global_config_path())
        return self._global

    def get(self, key: str, default: str | None = None) -> str | None:
        v = self.repo.get(key)
        if v is None:
            v = self.global_file.get(key)
        return default if v is None else v

    def set(self, key: str, value: str | None, *, scope: str = "repo") -> None:
        target = self.repo if scope == "repo" else self.global_file
        if scope != "repo":
            target.path.parent.mkdir(parents=True, exist_ok=True)
        target.set(key, value)

    def items(self) -> dict[str, str]:
        out = dict(self.global_file.items())
        out.update(self.repo.items())
        return out

    def subsections(self, section: str) -> list[str]:
        """The names NAME of the repository's ``[section "NAME"]`` sections (e.g. the remotes), sorted."""
        head = f'{section} "'
        return sorted(s[len(head):-1] for s in self.repo.sections() if s.startswith(head) and s.endswith('"'))
