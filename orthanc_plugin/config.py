"""The ``BidsBridge`` section of Orthanc's configuration, read once into a typed object.

Every key is validated at start-up; a bad value raises :class:`ConfigError` naming the key, and
the plugin then refuses to start (Orthanc logs the message).  Only the standard library and
:mod:`converters.errors` are used: this module runs inside Orthanc's embedded interpreter.

Keys (all optional unless stated):

===================  ========================================================================
``Enabled``          ``true``. ``false`` loads the plugin but records and converts nothing.
``BidsRoot``         **required**. Directory of the BIDS dataset the workers publish into.
``StateDirectory``   **required**. Directory of the durable job queue (SQLite, WAL mode).
``Workers``          number of worker processes; default = number of cores.
``MaxAttempts``      attempts before a job is marked failed; default 3.
``RetryBaseSeconds`` wait after a job's first failed attempt (seconds, default 2); each further
``RetryMaxSeconds``  attempt waits twice as long, at most ``RetryMaxSeconds`` (default 300),
                     less up to a quarter at random. Orthanc unreachable costs no attempt.
``WorkerMemoryMB``   address-space limit of each worker and its dcm2niix (MiB, default 16384;
                     0 = none): a series that needs more fails with that reason instead of
                     starving the host.
``WorkerNice``       how much lower than Orthanc's the workers' CPU priority is (``nice``, 0-19,
                     default 10); their disk I/O goes to the lowest best-effort level too
                     (``ionice -c2 -n7``) unless 0. Orthanc's own C-STORE and REST come first.
``EarlyCompletion``  ``true`` (default): convert a series as soon as its instance count reaches
                     the count its headers announce (a whole multi-frame instance,
                     ImagesInAcquisition x temporal positions, a Siemens mosaic's repetitions;
                     :mod:`converters.completeness`), before Orthanc calls it stable; a later
                     instance converts it again at ``STABLE_SERIES``, replacing the file set.
                     ``false``: every series waits for ``StableAge``.
``JobTimeout``       seconds a job may run before its worker is killed and the job retried;
                     default 1800.
``Python``           interpreter that runs the workers (the project's venv); default: the venv
                     this package is installed in (or ``<repo>/.venv``), else ``python3``.
``OrthancUrl``       URL the workers use for Orthanc's REST API; default
                     ``http(s)://127.0.0.1:<HttpPort>``.
``RestUsername``     user for the REST API when the plugin cannot mint a token (with
``RestPasswordFile`` a file holding the password). By default the workers authenticate with
                     ``orthanc.GenerateRestApiAuthorizationToken()``.
``CatchUp``          ``"since-last-run"`` (default): at start, queue the series of Orthanc's
                     ``/changes`` log no job covers — stable while the plugin was not running,
                     or still receiving when Orthanc stopped (:mod:`.catch_up`); on the very
                     first start, nothing older is queued; ``"all"``: also on the first start,
                     every series in the log; ``"none"``.
``Subject`` /        fixed subject/session labels (default: from PatientID / StudyDate).
``Session``
``Rules``            routing-rules YAML file (absolute path), checked at start and reloaded live
                     when it changes; default: the shipped default rules.
``Datasets``         more BIDS datasets rules may route to: ``{"name": "/abs/dir"}``;
                     ``default`` is ``BidsRoot``.
``Destinations``     XNAT servers by alias (see :mod:`xnat_container.destinations`).
``Writers``          Orthanc user names (keys of ``RegisteredUsers``) allowed to change state
                     through the REST API (``POST`` retry / convert / segmentations; others get
                     403); ``[]``: nobody. Default (absent): every caller Orthanc authenticated.
                     Reads stay open to every authenticated caller; the plugin's own workers
                     (their minted token) always count as writers. Needs Orthanc to check
                     passwords (``AuthenticationEnabled: true``) or ``UserHeader``.
``UserHeader``       with Orthanc's *authorization plugin*: its token header (the only entry of
                     ``Authorization.TokenHttpHeaders``, no ``TokenGetArguments``) when the token
                     *is* the user name; its value is then matched against ``Writers``. Used
                     only once ``GET /plugins`` lists ``authorization`` (else ignored, logged).
                     Opaque tokens (JWT, orthanc-auth-service) are not supported: with
                     orthanc-python 4.0 the plugin cannot ask whose token it is (``RestApiGet``
                     and ``HttpGet`` send no caller headers, so the authorization plugin's
                     ``GET /auth/user/profile`` cannot be called on the caller's behalf); let
                     the authorization service refuse ``POST /bidsbridge/...`` itself.
===================  ========================================================================
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from converters.errors import BidsBridgeError
from converters.settings import read_bool, read_int, read_number

__all__ = ["ConfigError", "PluginConfig", "parse_config"]

SECTION = "BidsBridge"
CatchUpMode = Literal["since-last-run", "all", "none"]
_CATCH_UP_MODES: tuple[CatchUpMode, ...] = ("since-last-run", "all", "none")


class ConfigError(BidsBridgeError, ValueError):
    """A ``BidsBridge`` configuration value is missing or invalid; the message names the key."""


@dataclass(frozen=True)
class PluginConfig:
    enabled: bool
    bids_root: Path
    state_dir: Path
    workers: int
    max_attempts: int
    job_timeout: float
    python: Path
    orthanc_url: str
    rest_username: str | None
    rest_password_file: Path | None
    catch_up: CatchUpMode
    subject: str | None
    session: str | None
    rules_path: Path | None = None
    #: Dataset name -> root; always holds ``default`` (= ``bids_root``).
    datasets: dict[str, Path] | None = None
    #: The ``Destinations`` section as given (parsed where it is used).
    destinations: dict[str, Any] | None = None
    #: Backoff of retried attempts (``RetryBaseSeconds``, ``RetryMaxSeconds``).
    retry_base: float = 2.0
    retry_cap: float = 300.0
    #: ``WorkerMemoryMB``: address-space limit of a worker (MiB); 0 = none.
    worker_memory_mb: int = 16384
    #: ``WorkerNice``: CPU niceness added to the workers (and lowest best-effort I/O); 0 = as Orthanc.
    worker_nice: int = 10
    #: ``Writers``: who may change state through the REST API; None = every authenticated caller.
    writers: tuple[str, ...] | None = None
    #: ``UserHeader`` (lower-cased): the authorization plugin's token header naming the caller.
    user_header: str | None = None
    #: Orthanc checks HTTP Basic passwords (``AuthenticationEnabled``), so Basic user names are true.
    basic_auth: bool = False
    #: Orthanc's own ``StableAge`` (seconds without a new instance before a series is stable).
    stable_age: float = 60.0
    #: ``EarlyCompletion``: convert a series once its headers prove it complete, before StableAge.
    early_completion: bool = True

    def dataset_roots(self) -> dict[str, Path]:
        return dict(self.datasets or {"default": self.bids_root})


_KNOWN_KEYS = {
    "Rules",
    "Datasets",
    "Destinations",
    "Enabled",
    "BidsRoot",
    "StateDirectory",
    "Workers",
    "MaxAttempts",
    "JobTimeout",
    "RetryBaseSeconds",
    "RetryMaxSeconds",
    "WorkerMemoryMB",
    "WorkerNice",
    "EarlyCompletion",
    "Python",
    "OrthancUrl",
    "RestUsername",
    "RestPasswordFile",
    "CatchUp",
    "Subject",
    "Session",
    "Writers",
    "UserHeader",
}


def _key(name: str) -> str:
    return f"{SECTION}.{name}"


def _bool(section: dict[str, Any], name: str, default: bool) -> bool:
    return read_bool(section, name, default, key=_key(name), error=ConfigError)


def _int(section: dict[str, Any], name: str, default: int, minimum: int) -> int:
    return read_int(section, name, default, minimum, key=_key(name), error=ConfigError)


def _number(section: dict[str, Any], name: str, default: float, minimum: float) -> float:
    return read_number(section, name, default, minimum, key=_key(name), error=ConfigError)


def _optional_str(section: dict[str, Any], name: str) -> str | None:
    value = section.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_key(name)} must be a non-empty string, not {value!r}")
    return value


def _directory(section: dict[str, Any], name: str) -> Path:
    value = _optional_str(section, name)
    if value is None:
        raise ConfigError(f"{_key(name)} is required: the directory for the plugin's {name} data")
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{_key(name)} must be an absolute path, not {value!r}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{_key(name)}: cannot create directory {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{_key(name)}: directory {path} is not writable by the Orthanc user")
    return path


def default_python() -> Path:
    """The interpreter of the venv this package lives in, else ``<repo>/.venv``, else python3."""
    here = Path(__file__).resolve().parent
    candidates = []
    # Installed: <venv>/lib/python3.X/site-packages/orthanc_plugin/config.py
    if here.parent.name == "site-packages":
        candidates.append(here.parents[3] / "bin" / "python")
    # Editable install / source checkout: <repo>/orthanc_plugin/config.py
    candidates.append(here.parent / ".venv" / "bin" / "python")
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return Path("/usr/bin/python3")


def _check_destinations(destinations: dict[str, Any]) -> None:
    """Validate XNAT destinations now (their secrets must be readable), so a typo stops start-up."""
    from xnat_container import XnatError, parse_destinations  # noqa: PLC0415 - only when configured

    if not destinations:
        return
    try:
        parse_destinations(destinations)
    except (ValueError, XnatError) as exc:
        raise ConfigError(str(exc)) from exc


def _section(orthanc_config: dict[str, Any]) -> dict[str, Any]:
    section = orthanc_config.get(SECTION)
    if section is None:
        raise ConfigError(f"the {SECTION} section is missing from Orthanc's configuration")
    if not isinstance(section, dict):
        raise ConfigError(f"{SECTION} must be a JSON object")
    unknown = sorted(set(section) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"{_key(unknown[0])} is not a known setting (known: {', '.join(sorted(_KNOWN_KEYS))})"
        )
    return section


def _python(section: dict[str, Any]) -> Path:
    python = Path(section["Python"]) if "Python" in section else default_python()
    if "Python" in section and not (isinstance(section["Python"], str) and python.is_absolute()):
        raise ConfigError(f"{_key('Python')} must be an absolute path to a python interpreter")
    if not os.access(python, os.X_OK):
        raise ConfigError(f"{_key('Python')}: {python} is not an executable interpreter")
    return python


def _orthanc_url(section: dict[str, Any], orthanc_config: dict[str, Any]) -> str:
    orthanc_url = _optional_str(section, "OrthancUrl")
    if orthanc_url is None:
        port = orthanc_config.get("HttpPort", 8042)
        scheme = "https" if orthanc_config.get("SslEnabled", False) else "http"
        orthanc_url = f"{scheme}://127.0.0.1:{port}"
    if not orthanc_url.startswith(("http://", "https://")):
        raise ConfigError(f"{_key('OrthancUrl')} must start with http:// or https://")
    return orthanc_url.rstrip("/")


def _credentials(section: dict[str, Any]) -> tuple[str | None, Path | None]:
    password_file = _optional_str(section, "RestPasswordFile")
    username = _optional_str(section, "RestUsername")
    if (username is None) != (password_file is None):
        raise ConfigError(f"{_key('RestUsername')} and {_key('RestPasswordFile')} go together")
    if password_file is not None and not Path(password_file).is_file():
        raise ConfigError(f"{_key('RestPasswordFile')}: {password_file} is not a readable file")
    return username, None if password_file is None else Path(password_file)


def _catch_up(section: dict[str, Any]) -> CatchUpMode:
    catch_up = section.get("CatchUp", "since-last-run")
    for mode in _CATCH_UP_MODES:
        if catch_up == mode:
            return mode
    raise ConfigError(f"{_key('CatchUp')} must be one of {', '.join(_CATCH_UP_MODES)}, not {catch_up!r}")


def _datasets(section: dict[str, Any], bids_root: Path) -> dict[str, Path]:
    datasets = {"default": bids_root}
    raw_datasets = section.get("Datasets", {})
    if not isinstance(raw_datasets, dict):
        raise ConfigError(f"{_key('Datasets')} must be a JSON object of name -> directory")
    for name, folder in raw_datasets.items():
        if not (isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum()):
            raise ConfigError(f"{_key('Datasets')}: {name!r} is not a usable dataset name (letters, digits, - _)")
        if name == "default":
            raise ConfigError(f"{_key('Datasets')}.default is BidsRoot; do not redefine it")
        datasets[name] = _directory({f"Datasets.{name}": folder}, f"Datasets.{name}")
    return datasets


def _rules_and_destinations(section: dict[str, Any]) -> tuple[Path | None, dict[str, Any]]:
    rules = _optional_str(section, "Rules")
    if rules is not None and not (Path(rules).is_absolute() and Path(rules).is_file()):
        raise ConfigError(f"{_key('Rules')}: {rules} is not an existing file (absolute path)")
    destinations = section.get("Destinations", {})
    if not isinstance(destinations, dict):
        raise ConfigError(f"{_key('Destinations')} must be a JSON object of alias -> server settings")
    _check_destinations(destinations)
    return None if rules is None else Path(rules), destinations


_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def _basic_auth(orthanc_config: dict[str, Any]) -> bool:
    """Whether Orthanc checks HTTP Basic passwords: only then is a Basic user name who the caller is.

    Orthanc >= 1.5.8 turns authentication on when ``RemoteAccessAllowed`` is true and
    ``AuthenticationEnabled`` is not given.
    """
    enabled = orthanc_config.get("AuthenticationEnabled")
    if enabled is None:
        enabled = orthanc_config.get("RemoteAccessAllowed", False)
    return enabled is True and bool(orthanc_config.get("RegisteredUsers"))


def _user_header(section: dict[str, Any], orthanc_config: dict[str, Any]) -> str | None:
    """``UserHeader``: accepted only as the authorization plugin's one token header (it checks it)."""
    name = _optional_str(section, "UserHeader")
    if name is None:
        return None
    header = name.strip().lower()
    if not _HEADER_NAME.fullmatch(header):
        raise ConfigError(f"{_key('UserHeader')} must be an HTTP header name, not {name!r}")
    if header == "authorization":
        raise ConfigError(f"{_key('UserHeader')}: Authorization is Orthanc's own (HTTP Basic) header; "
                          "its user name is read without this setting")
    authorization = orthanc_config.get("Authorization")
    authorization = authorization if isinstance(authorization, dict) else {}
    tokens = authorization.get("TokenHttpHeaders") or []
    tokens = [str(t).lower() for t in tokens] if isinstance(tokens, list) else []
    if header not in tokens:
        raise ConfigError(f"{_key('UserHeader')}: {name!r} must be the token header of Orthanc's authorization "
                          "plugin (Authorization.TokenHttpHeaders), whose web service checks it; a header "
                          "nobody checks could be sent by anyone")
    if len(tokens) != 1 or authorization.get("TokenGetArguments"):
        raise ConfigError(f"{_key('UserHeader')}: {name!r} must be the authorization plugin's only token "
                          f'(Authorization.TokenHttpHeaders: ["{header}"] and no TokenGetArguments): that plugin '
                          f"grants a request when any one of its tokens is valid, so another token would let "
                          f"{name!r} be forged")
    return header


def _access(section: dict[str, Any], orthanc_config: dict[str, Any]) -> tuple[tuple[str, ...] | None, str | None, bool]:
    """``Writers`` and ``UserHeader``, checked against Orthanc's own authentication settings."""
    basic_auth = _basic_auth(orthanc_config)
    user_header = _user_header(section, orthanc_config)
    raw = section.get("Writers")
    if raw is None:
        return None, user_header, basic_auth
    if not (isinstance(raw, list) and all(isinstance(name, str) and name.strip() for name in raw)):
        raise ConfigError(f"{_key('Writers')} must be a list of Orthanc user names (RegisteredUsers), not {raw!r}")
    writers = tuple(dict.fromkeys(raw))
    if writers and not basic_auth and user_header is None:
        raise ConfigError(f"{_key('Writers')} names users, but Orthanc authenticates nobody: set "
                          "AuthenticationEnabled to true with RegisteredUsers (or use BidsBridge.UserHeader "
                          "with the authorization plugin)")
    users = orthanc_config.get("RegisteredUsers")
    if isinstance(users, dict) and user_header is None:
        unknown = [name for name in writers if name not in users]
        if unknown:
            raise ConfigError(f"{_key('Writers')}: {unknown[0]!r} is not one of RegisteredUsers "
                              f"({', '.join(sorted(users)) or 'none'})")
    return writers, user_header, basic_auth


def _stable_age(orthanc_config: dict[str, Any]) -> float:
    return read_number(orthanc_config, "StableAge", 60.0, 0.0, key="StableAge (Orthanc's own setting)",
                       error=ConfigError)


def parse_config(orthanc_config: dict[str, Any]) -> PluginConfig:
    """Validate Orthanc's whole configuration (as JSON) and return the plugin's settings."""
    section = _section(orthanc_config)
    python = _python(section)
    orthanc_url = _orthanc_url(section, orthanc_config)
    username, password_file = _credentials(section)
    catch_up = _catch_up(section)
    bids_root = _directory(section, "BidsRoot")
    datasets = _datasets(section, bids_root)
    rules, destinations = _rules_and_destinations(section)
    writers, user_header, basic_auth = _access(section, orthanc_config)
    return PluginConfig(
        enabled=_bool(section, "Enabled", True),
        bids_root=bids_root,
        state_dir=_directory(section, "StateDirectory"),
        workers=_int(section, "Workers", os.cpu_count() or 1, 1),
        max_attempts=_int(section, "MaxAttempts", 3, 1),
        job_timeout=_number(section, "JobTimeout", 1800.0, 1.0),
        retry_base=_number(section, "RetryBaseSeconds", 2.0, 0.0),
        retry_cap=_number(section, "RetryMaxSeconds", 300.0, 0.0),
        worker_memory_mb=_int(section, "WorkerMemoryMB", 16384, 0),
        worker_nice=min(_int(section, "WorkerNice", 10, 0), 19),
        python=python,
        orthanc_url=orthanc_url,
        rest_username=username,
        rest_password_file=password_file,
        catch_up=catch_up,
        subject=_optional_str(section, "Subject"),
        session=_optional_str(section, "Session"),
        rules_path=rules,
        datasets=datasets,
        destinations=destinations,
        writers=writers,
        user_header=user_header,
        basic_auth=basic_auth,
        stable_age=_stable_age(orthanc_config),
        early_completion=_bool(section, "EarlyCompletion", True),
    )
