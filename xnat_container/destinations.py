"""XNAT destinations: where results go and how to log in there, read from ``BidsBridge.Destinations``.

Only the standard library is used: the plugin validates this section inside Orthanc's embedded
interpreter at start-up. Each key under ``Destinations`` is an alias::

    "BidsBridge": {
      "Destinations": {
        "site": {
          "Url": "https://xnat.example.org",
          "Username": "bidsbridge",
          "PasswordFile": "/etc/bidsbridge/xnat-site.secret"
        }
      }
    }

Keys of one destination (all optional unless stated):

=====================  ===================================================================
``Url``                **required**. Base URL of XNAT (``http(s)://host[:port][/path]``).
``Username``           login (or an alias token's alias); or ``UsernameEnv``: the name of an
                       environment variable holding it.
``PasswordEnv``        name of an environment variable holding the password (or token secret);
``PasswordFile``       or a file holding it (surrounding white space is ignored). Exactly one
                       of the two. A ``Password`` key is refused: secrets never live in the
                       configuration JSON.
``Verify``             ``true``: check the server's TLS certificate (default).
``CaBundle``           PEM file of the certificate authorities to trust (implies ``Verify``).
``ConnectTimeout``     seconds to open a connection; default 10.
``ReadTimeout``        seconds to wait for an answer; default 120.
``Retries``            retries of one request after connection errors, timeouts and 5xx;
                       default 5 (with exponential backoff and jitter).
``BackoffSeconds``     first backoff delay; default 1. Doubles per retry up to
``MaxBackoffSeconds``  default 30.
``UseAliasToken``      ``false``. ``true``: log in once with the password, get an alias token
                       (``/data/services/tokens/issue``), use it for the rest of the delivery
                       and invalidate it at the end.
``SubjectLabel``       template of the XNAT subject label; default ``{subject}`` (the BIDS
                       subject). Fields: ``{subject}``, ``{session}``.
``SessionLabel``       template of the XNAT session label; default ``{subject}_{session}``.
=====================  ===================================================================

A bad value raises :class:`~xnat_container.errors.XnatConfigError` naming the key, e.g.
``BidsBridge.Destinations.site.Url must be an http(s) URL``.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from converters.settings import read_bool, read_int, read_number
from xnat_container.errors import XnatConfigError

__all__ = [
    "DEFAULT_SESSION_LABEL",
    "DEFAULT_SUBJECT_LABEL",
    "Destination",
    "Secret",
    "destination_from_url",
    "parse_destination",
    "parse_destinations",
]

SECTION = "BidsBridge.Destinations"
DEFAULT_SUBJECT_LABEL = "{subject}"
DEFAULT_SESSION_LABEL = "{subject}_{session}"
#: Environment variables used when a bare URL is given (the names XNAT's Container Service sets).
USER_ENV = "XNAT_USER"
PASSWORD_ENV = "XNAT_PASS"

_KEYS = frozenset(
    {
        "Url",
        "Username",
        "UsernameEnv",
        "PasswordEnv",
        "PasswordFile",
        "Verify",
        "CaBundle",
        "ConnectTimeout",
        "ReadTimeout",
        "Retries",
        "BackoffSeconds",
        "MaxBackoffSeconds",
        "UseAliasToken",
        "SubjectLabel",
        "SessionLabel",
    }
)
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TEMPLATE_FIELDS = frozenset({"subject", "session"})


class Secret:
    """A password or token secret that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Destination:
    """One XNAT server and how to talk to it. ``repr`` and :meth:`to_dict` never show the secret."""

    alias: str
    #: Base URL without a trailing slash.
    url: str
    username: str
    password: Secret = field(repr=False)
    #: ``True``/``False``, or the CA bundle to verify against.
    verify: bool | Path = True
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retries: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    use_alias_token: bool = False
    subject_label: str = DEFAULT_SUBJECT_LABEL
    session_label: str = DEFAULT_SESSION_LABEL

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    @property
    def shown_user(self) -> str:
        """The login as it may appear in messages (an alias token's alias is hidden)."""
        return "an alias token" if _looks_like_token(self.username) else f"user {self.username!r}"

    def to_dict(self) -> dict[str, Any]:
        """A record safe for logs and job records (no password, no token)."""
        return {
            "alias": self.alias,
            "url": self.url,
            "user": self.shown_user,
            "verify": str(self.verify) if isinstance(self.verify, Path) else self.verify,
            "timeouts": [self.connect_timeout, self.read_timeout],
            "retries": self.retries,
            "use_alias_token": self.use_alias_token,
        }


_TOKEN_ALIAS = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _looks_like_token(login: str) -> bool:
    """XNAT alias tokens' aliases are UUIDs; they are credentials and never shown."""
    return _TOKEN_ALIAS.fullmatch(login) is not None


def _check_url(url: object, key: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise XnatConfigError(f"{key} is required: the base URL of XNAT, e.g. https://xnat.example.org")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise XnatConfigError(f"{key} must be an http(s) URL such as https://xnat.example.org, not {url!r}")
    if parts.username or parts.password:
        raise XnatConfigError(f"{key} must not contain credentials; use Username and PasswordFile/PasswordEnv")
    if parts.query or parts.fragment:
        raise XnatConfigError(f"{key} must not have a query or fragment, got {url!r}")
    return url.strip().rstrip("/")


def _check_template(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise XnatConfigError(f"{key} must be a non-empty label template such as '{{subject}}'")
    try:
        names = {name for _text, name, _spec, _conv in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise XnatConfigError(f"{key} is not a valid template ({exc}): {value!r}") from exc
    unknown = names - _TEMPLATE_FIELDS
    if unknown:
        raise XnatConfigError(f"{key} uses unknown field(s) {sorted(unknown)}; known: {sorted(_TEMPLATE_FIELDS)}")
    return value


def _bool(section: Mapping[str, Any], name: str, default: bool, prefix: str) -> bool:
    return read_bool(section, name, default, key=f"{prefix}.{name}", error=XnatConfigError)


def _number(section: Mapping[str, Any], name: str, default: float, minimum: float, prefix: str) -> float:
    return read_number(section, name, default, minimum, key=f"{prefix}.{name}", error=XnatConfigError)


def _int(section: Mapping[str, Any], name: str, default: int, minimum: int, prefix: str) -> int:
    return read_int(section, name, default, minimum, key=f"{prefix}.{name}", error=XnatConfigError)


def _env(name: object, key: str, environ: Mapping[str, str]) -> str:
    if not isinstance(name, str) or not name:
        raise XnatConfigError(f"{key} must name an environment variable")
    value = environ.get(name, "")
    if not value:
        raise XnatConfigError(f"{key}: the environment variable {name} is not set (or empty)")
    return value


def _secret_file(value: object, key: str) -> Secret:
    if not isinstance(value, str) or not value:
        raise XnatConfigError(f"{key} must be the path of a file holding the password")
    path = Path(value)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise XnatConfigError(f"{key}: cannot read {path} ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise XnatConfigError(f"{key}: {path} is not UTF-8 text") from exc
    if not secret:
        raise XnatConfigError(f"{key}: {path} is empty")
    return Secret(secret)


def _check_keys(alias: str, section: object, key: str) -> None:
    """The alias is well formed and ``section`` an object of known keys, with no ``Password``."""
    if not _ALIAS.fullmatch(alias):
        raise XnatConfigError(f"{key}: an alias must be letters, digits, '_', '-' or '.'")
    if not isinstance(section, Mapping):
        raise XnatConfigError(f"{key} must be an object with at least a Url")
    if "Password" in section:
        raise XnatConfigError(
            f"{key}.Password is not allowed: keep the password out of the configuration, "
            "in a file (PasswordFile) or an environment variable (PasswordEnv)"
        )
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise XnatConfigError(f"{key}.{unknown[0]} is not a known key (known: {', '.join(sorted(_KEYS))})")


def _username(section: Mapping[str, Any], key: str, environ: Mapping[str, str]) -> str:
    """The login: ``Username``, or the environment variable ``UsernameEnv`` names."""
    if "Username" in section and "UsernameEnv" in section:
        raise XnatConfigError(f"{key}: give Username or UsernameEnv, not both")
    if "UsernameEnv" in section:
        return _env(section["UsernameEnv"], f"{key}.UsernameEnv", environ)
    username = section.get("Username", "")
    if not isinstance(username, str) or not username:
        raise XnatConfigError(f"{key}.Username is required (or UsernameEnv)")
    return username


def _password(section: Mapping[str, Any], key: str, environ: Mapping[str, str]) -> Secret:
    """The password, from exactly one of ``PasswordEnv`` and ``PasswordFile``."""
    if ("PasswordEnv" in section) == ("PasswordFile" in section):
        raise XnatConfigError(f"{key}: give exactly one of PasswordFile or PasswordEnv")
    if "PasswordEnv" in section:
        return Secret(_env(section["PasswordEnv"], f"{key}.PasswordEnv", environ))
    return _secret_file(section["PasswordFile"], f"{key}.PasswordFile")


def _verify(section: Mapping[str, Any], key: str) -> bool | Path:
    """TLS verification: ``Verify`` (default true), or the ``CaBundle`` file to verify against."""
    verify: bool | Path = _bool(section, "Verify", True, key)
    if "CaBundle" in section:
        bundle = section["CaBundle"]
        if not isinstance(bundle, str) or not Path(bundle).is_file():
            raise XnatConfigError(f"{key}.CaBundle must be the path of a PEM file, not {bundle!r}")
        if verify is False:
            raise XnatConfigError(f"{key}: CaBundle is given but Verify is false")
        verify = Path(bundle)
    return verify


def parse_destination(
    alias: str, section: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, prefix: str = SECTION
) -> Destination:
    """One destination from its configuration object; see the module docstring for the keys."""
    env = os.environ if environ is None else environ
    key = f"{prefix}.{alias}"
    _check_keys(alias, section, key)
    url = _check_url(section.get("Url"), f"{key}.Url")
    username = _username(section, key, env)
    password = _password(section, key, env)
    verify = _verify(section, key)
    connect_timeout = _number(section, "ConnectTimeout", 10.0, 0.1, key)
    read_timeout = _number(section, "ReadTimeout", 120.0, 0.1, key)
    backoff = _number(section, "BackoffSeconds", 1.0, 0.0, key)
    max_backoff = _number(section, "MaxBackoffSeconds", 30.0, 0.0, key)
    if max_backoff < backoff:
        raise XnatConfigError(f"{key}.MaxBackoffSeconds must be >= BackoffSeconds ({backoff:g})")
    return Destination(
        alias=alias,
        url=url,
        username=username,
        password=password,
        verify=verify,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries=_int(section, "Retries", 5, 0, key),
        backoff_seconds=backoff,
        max_backoff_seconds=max_backoff,
        use_alias_token=_bool(section, "UseAliasToken", False, key),
        subject_label=_check_template(section.get("SubjectLabel", DEFAULT_SUBJECT_LABEL), f"{key}.SubjectLabel"),
        session_label=_check_template(section.get("SessionLabel", DEFAULT_SESSION_LABEL), f"{key}.SessionLabel"),
    )


def parse_destinations(
    section: Mapping[str, Any] | None, *, environ: Mapping[str, str] | None = None, prefix: str = SECTION
) -> dict[str, Destination]:
    """Every destination of ``BidsBridge.Destinations`` (pass that object; ``None`` gives ``{}``)."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise XnatConfigError(f"{prefix} must be an object mapping aliases to destinations")
    return {alias: parse_destination(alias, value, environ=environ, prefix=prefix) for alias, value in section.items()}


def destination_from_url(
    url: str,
    *,
    environ: Mapping[str, str] | None = None,
    verify: bool | Path = True,
    **options: Any,
) -> Destination:
    """A destination for a bare URL, with credentials from ``XNAT_USER``/``XNAT_PASS``."""
    env = os.environ if environ is None else environ
    checked = _check_url(url, "the XNAT URL")
    username = env.get(USER_ENV, "")
    password = env.get(PASSWORD_ENV, "")
    if not username or not password:
        raise XnatConfigError(f"with a URL instead of an alias, set {USER_ENV} and {PASSWORD_ENV} in the environment")
    return Destination(
        alias=urlsplit(checked).hostname or "xnat",
        url=checked,
        username=username,
        password=Secret(password),
        verify=verify,
        **options,
    )
