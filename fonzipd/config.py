"""The configuration: pydantic models of the TOML file, with FONZIPD_* environment overrides.

Every key of the file can be overridden by ``FONZIPD_<SECTION>__<KEY>`` (for a sink,
``FONZIPD_SINKS__<ID>__<KEY>``). Secrets belong in the environment, an
``EnvironmentFile`` or systemd credentials, never in the file.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tomllib
import warnings
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fonzipd.kinds import Kind
from fonzipd.suggestions import did_you_mean, line_of, zone_meant

DEFAULT_CONFIG_PATH = Path("/etc/fonzipd/config.toml")
FONZIP_DOCUMENTED_RATE = 240


def is_loopback(host: str | None) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1: addresses that never leave the machine."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_https(scheme: str, host: str | None) -> None:
    """Refuse plain ``http://`` to anything but a loopback address (ValueError)."""
    if scheme != "https" and not is_loopback(host):
        raise ValueError(
            f"must start with https:// ({scheme}:// is allowed only to localhost, "
            "127.0.0.0/8 or ::1): credentials and personal data must not cross the "
            "network unencrypted"
        )


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FonzipSettings(_Section):
    """``[fonzip]``: the account fonzipd reads from."""

    base_url: pydantic.HttpUrl = pydantic.HttpUrl("https://fonzip.com/api/v2")
    """Fonzip API v2 root; point it at ``fonzipd simulate`` to try things safely."""
    client_id: SecretStr | None = None
    """API key id (Settings > Advanced > Fonzip API). Prefer FONZIPD_FONZIP__CLIENT_ID."""
    client_secret: SecretStr | None = None
    """API key secret. Prefer FONZIPD_FONZIP__CLIENT_SECRET."""
    access_token: SecretStr | None = None
    """A fixed access token that skips the token flow (to end a 409 lock early)."""
    timezone: str = "Europe/Istanbul"
    """IANA zone of the business day: windows, business dates and the nightly run."""
    requests_per_minute: float = Field(default=240, gt=0)
    """Fonzip allows 240/minute; fonzipd stays under this figure less ``rate_margin``."""
    rate_margin: float = Field(default=0.05, ge=0, lt=1)
    """Share of ``requests_per_minute`` kept in reserve for clock drift between us and Fonzip."""
    request_timeout: float = Field(default=30, gt=0)
    """Seconds for one HTTP request to Fonzip, connection included."""
    max_retries: int = Field(default=6, ge=0)
    """Retries of a request on 429, 5xx, network errors and timeouts."""
    token_lock_poll: float = Field(default=30, gt=0)
    """Seconds between token requests while Fonzip answers 409 "already created" (a live
    token fonzipd lacks: it is waited out, at most about an hour)."""
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=65536)
    """Largest answer read from Fonzip, in bytes; a larger one is a failed attempt."""

    @field_validator("base_url")
    @classmethod
    def _https_unless_loopback(cls, value: pydantic.HttpUrl) -> pydantic.HttpUrl:
        require_https(value.scheme, value.host)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            meant = zone_meant(value)
            hint = (
                f"; did you mean {' or '.join(meant)}?"
                if meant
                else " (Area/City, e.g. Europe/Istanbul)"
            )
            raise ValueError(f"unknown IANA timezone {value!r}{hint}") from exc
        return value

    @field_validator("requests_per_minute")
    @classmethod
    def _warn_above_documented(cls, value: float) -> float:
        if value > FONZIP_DOCUMENTED_RATE:
            warnings.warn(
                f"fonzip.requests_per_minute = {value:g} is above Fonzip's documented "
                f"{FONZIP_DOCUMENTED_RATE}/minute; use it only with a simulator or a raised limit",
                ConfigWarning,
                stacklevel=2,
            )
        return value

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The business-day timezone."""
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def effective_rate(self) -> float:
        """Requests per minute fonzipd actually allows itself."""
        return self.requests_per_minute * (1 - self.rate_margin)


class ConfigWarning(UserWarning):
    """A legal but risky configuration value."""


class ListenerSettings(_Section):
    """``[listener]``: the webhook endpoint Fonzip POSTs to.

    Without ``auth_token`` the listener does not start (``fonzipd run`` and ``check``
    exit 78) unless ``allow_unauthenticated = true`` on a loopback host: see
    ``listener_problems``.
    """

    host: str = "127.0.0.1"
    """Address to bind; keep 127.0.0.1 behind a TLS reverse proxy."""
    port: int = Field(default=8787, ge=0, le=65535)
    """TCP port (0 picks a free one, for tests)."""
    path: str = "/fonzip/webhook"
    """URL path of the webhook."""
    auth_token: SecretStr | None = None
    """The webhook's ``auth_token``; compared with ``X-FZ-Auth-Token``. Required (16+
    characters): set ``FONZIPD_LISTENER__AUTH_TOKEN`` or the systemd credential
    ``listener.auth_token``."""
    allow_unauthenticated: bool = False
    """Accept webhooks without a token, for local testing only: refused unless ``host``
    is a loopback address. Never implied by a missing token."""
    max_body_bytes: int = Field(default=4096, ge=256, le=1_048_576)
    """Largest webhook body accepted; Fonzip's are under 100 bytes."""
    commit_max_batch: int = Field(default=512, ge=1)
    """Most webhooks committed in one group commit."""
    header_timeout: float = Field(default=10, gt=0, le=300)
    """Seconds a client has, from connecting (or from its previous answer), to send a
    request's complete headers; a slower connection is closed."""
    body_timeout: float = Field(default=10, gt=0, le=300)
    """Seconds a client has to send a request's body once its headers arrived; a slower
    one is answered 408 and closed."""
    keepalive_timeout: float = Field(default=5, gt=0, le=300)
    """Seconds an idle keep-alive connection stays open after an answer."""
    max_connections: int = Field(default=1024, ge=8, le=65536)
    """Connections open at once. At the cap, a new connection closes the one that has
    waited longest without sending a complete request; if none is waiting, it is refused."""

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("auth_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (openssl rand -hex 24 makes one)")
        return value


class StateSettings(_Section):
    """``[state]``: fonzipd's own database."""

    path: Path = Path("/var/lib/fonzipd/state.db")
    """SQLite file (WAL mode) that only fonzipd writes; relative paths are to the config file."""
    keep_data_days: int | None = Field(default=None, ge=1)
    """Days after which a stored record's full Fonzip object (``data``) is dropped from
    the state database by the hourly housekeeping; the normalized fields stay, so
    reconciling still works. Unset: kept as long as the record."""


class FetcherSettings(_Section):
    """``[fetcher]``: turning events into records."""

    concurrency: int = Field(default=4, ge=1, le=64)
    """Detail fetches in flight at once (all share the rate limit)."""
    max_attempts: int = Field(default=5, ge=1)
    """Attempts of an event whose fetch fails for a reason retrying rarely fixes (404,
    another 4xx, a malformed answer, a value the normalizer refuses) before it is parked
    as failed with the reason (``fonzipd status`` lists it; the nightly reconcile looks
    again). Fonzip being down, rate limiting or a token lock never parks an event: it is
    retried until Fonzip is back."""
    retry_initial: float = Field(default=5, gt=0)
    """Seconds before the first retry; doubles each attempt, with jitter."""
    retry_max: float = Field(default=3600, gt=0)
    """Longest wait between retries, in seconds."""


class SinkSettings(BaseModel):
    """``[sinks.<id>]``: one destination. Keys other than these are the sink type's options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    """``sqlite``, ``csv``, ``http``, or a plugin's name."""
    enabled: bool = True
    """A disabled sink gets nothing queued and keeps what it had."""
    batch_size: int | None = Field(default=None, ge=1, le=10_000)
    """Records per ``write``; the sink type's default when unset."""
    flush_interval: float = Field(default=0.5, ge=0)
    """Longest wait, in seconds, of a lone record for others to share its write. The
    write goes as soon as the batch is full or more records arrive; 0 writes at once."""
    max_attempts: int = Field(default=10, ge=1)
    """Attempts of a batch that fails with an unexpected error (a bug in the sink) before
    its records become dead letters. Transient errors (sink down) are retried until the
    sink is back; permanent ones (a refused record) go to the dead letters at once."""
    retry_initial: float = Field(default=1, gt=0)
    """Seconds before the first retry; doubles each attempt, with jitter."""
    retry_max: float = Field(default=300, gt=0)
    """Longest wait between retries, in seconds."""
    redact: tuple[str, ...] = ()
    """Fonzip field names removed from ``data`` at any depth before a record is queued
    for this sink; ``person_name``, ``person_email``, ``person_phone`` empty those
    record fields; ``"sensitive"`` stands for identity numbers, card data, IP
    addresses, birthdays and addresses (the README lists the fields)."""
    kinds: tuple[Kind, ...] | None = None
    """Only records of these kinds reach this sink (unset: all six)."""
    statuses: tuple[str, ...] | None = None
    """Only records in these normalized statuses reach this sink (unset: all)."""
    enrichments: bool | None = None
    """Whether the detail of a record built from a list row (``reconciler.enrich``)
    reaches this sink as a new version of the same state. Unset: yes, except for a CSV
    sink without ``include_data``, whose new row would repeat the last one."""

    @field_validator("redact")
    @classmethod
    def _known_redactions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from fonzipd.privacy import check_redact

        return check_redact(value)

    @field_validator("kinds")
    @classmethod
    def _some_kinds(cls, value: tuple[Kind, ...] | None) -> tuple[Kind, ...] | None:
        if value is not None and not value:
            raise ValueError("names no kind: list at least one, or set enabled = false")
        return value

    @field_validator("statuses")
    @classmethod
    def _known_statuses(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from fonzipd.privacy import known_statuses

        if value is None:
            return None
        if not value:
            raise ValueError("names no status: list at least one, or set enabled = false")
        known = known_statuses()
        unknown = [s for s in value if s not in known]
        if unknown:
            raise ValueError(
                f"unknown status {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
            )
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The sink type's own options: every key that is not a shared one."""
        return dict(self.model_extra or {})


class ReconcilerSettings(_Section):
    """``[reconciler]``: the nightly reconcile that finds what webhooks missed."""

    enabled: bool = True
    """Run the nightly reconcile and the catch-up after downtime inside the daemon."""
    at: dt.time = dt.time(3, 30)
    """Local wall time (in ``fonzip.timezone``) the nightly run starts, once per local date."""
    lookback_days: int = Field(default=3, ge=0, le=60)
    """Days before yesterday reconciled again each night (late entries, later refunds)."""
    kinds: tuple[Kind, ...] = tuple(Kind)
    """Kinds reconciled (default all six): donation, membership_fee, ticket_sale,
    form_answer, ecard_sale, campaign."""
    coverage_warning: float = Field(default=0.2, ge=0, le=1)
    """Warn when more than this share of a day's records was first seen by the reconcile,
    not a webhook: a sign of a broken webhook set-up (firewall, TLS, wrong token)."""
    coverage_min_records: int = Field(default=10, ge=1)
    """Days with fewer records than this never warn about webhook coverage."""
    catchup_after: float = Field(default=3600, gt=0)
    """Seconds of downtime (since the last heartbeat) after which the daemon reconciles
    the downtime window at start: longer than Fonzip's webhook retry window."""
    fetch_wait: float = Field(default=1800, gt=0)
    """Seconds a run waits for the records it queued to be fetched before it leaves the
    day open (the next run retries it)."""
    records_from_lists: bool = True
    """Build reconcile and backfill records from the list rows wherever a row carries
    every normalized field (100 records a request), fetching the detail only where it
    does not (form answers, debts); false: fetch every record's detail (one request each)."""
    enrich: bool = False
    """Fetch, later and within the spare rate budget (after live and reconcile work),
    the detail of every record built from a list row; each sink takes the richer
    record as a new version unless its ``enrichments`` says otherwise."""
    poll_interval: float = Field(default=5, gt=0, le=300)
    """Seconds between the daemon's checks for due runs and for ``fonzipd reconcile``
    requests; the scheduler never sleeps longer than this at once."""

    @field_validator("at", mode="before")
    @classmethod
    def _wall_time(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                parsed = dt.time.fromisoformat(value)
            except ValueError:
                raise ValueError(f"must be a wall time HH:MM, got {value!r}") from None
            if parsed.tzinfo is not None:
                raise ValueError("must be a local wall time without an offset")
            return parsed
        return value


class LoggingSettings(_Section):
    """``[logging]``."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    format: Literal["auto", "json", "console"] = "auto"
    """``auto``: JSON under systemd or when not a terminal, console on a terminal."""


class MetricsSettings(_Section):
    """``[metrics]``: where /metrics, /healthz and /readyz are served."""

    port: int | None = Field(default=None, ge=0, le=65535)
    """A separate port for /metrics, /healthz and /readyz (0 picks a free one); unset:
    they are served on the listener's port. Set it when the listener faces the internet."""
    host: str = "127.0.0.1"
    """Address of that separate server; keep it on loopback or a private network."""


class HealthSettings(_Section):
    """``[health]``: when /readyz reports the daemon not ready."""

    sink_failing_after: float = Field(default=1800, ge=0)
    """Seconds a sink may keep failing before /readyz fails (0: never for sink failures)."""
    status_interval: float = Field(default=10, gt=0)
    """Seconds between the STATUS= lines sent to systemd (inbox and outbox depths)."""


class Settings(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        env_prefix="FONZIPD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    fonzip: FonzipSettings = FonzipSettings()
    listener: ListenerSettings = ListenerSettings()
    state: StateSettings = StateSettings()
    fetcher: FetcherSettings = FetcherSettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    sinks: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], SinkSettings] = {}
    plugins_dir: Path | None = None
    """Folder of single-file sink plugins; relative to the config file."""
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    health: HealthSettings = HealthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (init values come from the TOML file).
        return (env_settings, init_settings)

    @property
    def enabled_sinks(self) -> dict[str, SinkSettings]:
        """The sinks that receive records, by id."""
        return {sid: s for sid, s in self.sinks.items() if s.enabled}


def listener_problems(settings: Settings) -> list[str]:
    """What makes this configuration unsafe to serve webhooks with, one line each.

    ``fonzipd check`` fails on them and ``fonzipd run`` refuses to start (exit 78):
    a listener without a token by omission, the opt-out on a non-loopback address,
    and the metrics server on the listener's port.
    """
    lis, problems = settings.listener, []
    if lis.allow_unauthenticated and not is_loopback(lis.host):
        problems.append(
            f"listener.allow_unauthenticated = true is refused with listener.host = "
            f"{lis.host!r}: only a loopback host may run without a token; remove "
            "allow_unauthenticated and set the token (environment variable "
            "FONZIPD_LISTENER__AUTH_TOKEN or systemd credential listener.auth_token)"
        )
    elif lis.auth_token is None and not lis.allow_unauthenticated:
        problems.append(
            "listener.auth_token is not set: set the environment variable "
            "FONZIPD_LISTENER__AUTH_TOKEN or the systemd credential listener.auth_token "
            "(openssl rand -hex 24 makes one); for local testing only, "
            "[listener] allow_unauthenticated = true on a loopback host"
        )
    if settings.metrics.port and settings.metrics.port == lis.port:
        problems.append(
            f"metrics.port = {settings.metrics.port} is also listener.port: give [metrics] "
            "its own port (e.g. 9787, on 127.0.0.1) or remove metrics.port"
        )
    return problems


def default_config_path() -> Path:
    """``$FONZIPD_CONFIG``, else /etc/fonzipd/config.toml."""
    env = os.environ.get("FONZIPD_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Settings:
    """Read, validate and resolve one TOML file; ConfigError says what and where."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    text = raw.decode("utf-8")
    quoted = _quoted_booleans(data, text)
    _merge_credentials(data, os.environ.get("CREDENTIALS_DIRECTORY"))
    try:
        settings = settings_from_dict(data, base_dir=path.parent, origin=str(path), text=text)
    except ConfigError as exc:
        if not quoted:
            raise
        others = str(exc).splitlines()[1:]
        quoted += others
        count = len(quoted) - sum(1 for x in others if x.startswith("    "))
    else:
        if not quoted:
            return settings
        count = len(quoted)
    raise ConfigError(f"{path}: invalid configuration ({count} problem(s)):\n" + "\n".join(quoted))


def _bool_keys(model: type[BaseModel]) -> set[str]:
    return {name for name, f in model.model_fields.items() if f.annotation is bool}


def _quoted_booleans(data: dict[str, Any], text: str) -> list[str]:
    """Keys of the file that want true/false but were given a string (``enabled = "yes"``).

    pydantic would read "yes", "off" or "0" as a boolean; in the file a quoted value is
    a mistake worth stopping for (the environment, where every value is text, keeps
    them). One line per key: where it is and what to write instead.
    """
    tables: list[tuple[list[str], dict[str, Any], set[str]]] = []
    for name, field in Settings.model_fields.items():
        section = data.get(name)
        model = field.annotation
        if isinstance(section, dict) and isinstance(model, type) and issubclass(model, BaseModel):
            tables.append(([name], section, _bool_keys(model)))
    sinks = data.get("sinks")
    if isinstance(sinks, dict):
        for sid, table in sinks.items():
            if isinstance(table, dict):
                tables.append((["sinks", sid], table, _bool_keys(SinkSettings)))
    problems = []
    for loc, table, keys in tables:
        for key in sorted(keys & table.keys()):
            value = table[key]
            if isinstance(value, str):
                meant = (
                    "false" if value.strip().lower() in ("no", "false", "off", "0", "") else "true"
                )
                line = line_of(text, [*loc, key])
                where = f"line {line}: " if line else ""
                problems.append(
                    f"  {where}{'.'.join([*loc, key])}: {value!r} is a string; write "
                    f"{key} = {meant} (true or false, without quotes)"
                )
    return problems


def _merge_credentials(data: dict[str, Any], directory: str | None) -> None:
    """Put systemd credentials (``LoadCredential=fonzip.client_secret:...``) into ``data``.

    Each file of ``$CREDENTIALS_DIRECTORY`` named ``<section>.<key>`` (or
    ``sinks.<id>.<key>``) sets that key; a credential wins over the file, and
    ``FONZIPD_*`` environment variables win over both.
    """
    if not directory:
        return
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError as exc:
        raise ConfigError(f"$CREDENTIALS_DIRECTORY {directory}: {exc.strerror}") from exc
    for entry in entries:
        parts = entry.name.split(".")
        if len(parts) < 2 or not all(parts) or not entry.is_file():
            continue
        value = entry.read_text(encoding="utf-8").removesuffix("\n")
        target = data
        for part in parts[:-1]:
            section = target.setdefault(part, {})
            if not isinstance(section, dict):
                raise ConfigError(f"credential {entry.name}: {part} is not a table")
            target = section
        target[parts[-1]] = value


def settings_from_dict(
    data: dict[str, Any], *, base_dir: Path, origin: str, text: str | None = None
) -> Settings:
    """Validate already-parsed TOML data; relative paths resolve against ``base_dir``.

    ``text``, the file itself, lets errors give the line of each key.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigWarning)
            settings = Settings(**data)
    except pydantic.ValidationError as exc:
        raise ConfigError(_describe(exc, origin, text or "")) from None
    for w in caught:
        warnings.warn(f"{origin}: {w.message}", ConfigWarning, stacklevel=2)
    return _resolve_paths(settings, base_dir)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed beside the last part of ``loc`` (for a "did you mean")."""
    model: Any = Settings
    for part in loc[:-1]:
        if model is Settings and part == "sinks":
            model = None
            continue
        if model is None:  # a sink id
            model = SinkSettings
            continue
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return list(model.model_fields) if model is not None else []


def _describe(exc: pydantic.ValidationError, origin: str, text: str = "") -> str:
    lines = [f"{origin}: invalid configuration ({exc.error_count()} problem(s)):"]
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        line = line_of(text, [str(p) for p in err["loc"]]) if text else None
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + did_you_mean(str(err["loc"][-1]), _known_keys(err["loc"]))
        given = err.get("input")
        shown = "" if isinstance(given, dict | list) or err["type"] == "missing" else given
        if "secret" in key or "token" in key:
            shown = "***"
        elif repr(shown) in msg:
            shown = ""
        where = f"line {line}: " if line is not None else ""
        lines.append(f"  {where}{key}: {msg}" + (f" (got {shown!r})" if shown != "" else ""))
        if len(err["loc"]) >= 2 and (line is None or err["type"] != "extra_forbidden"):
            # Only a key has a variable and a credential; a whole [section] has neither.
            env = "FONZIPD_" + "__".join(str(p).upper() for p in err["loc"])
            lines.append(
                f"    (in the file, the environment variable {env}, "
                f"or the systemd credential {key})"
            )
    return "\n".join(lines)


def _resolve_paths(settings: Settings, base_dir: Path) -> Settings:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p).resolve()

    sinks = {
        sid: s.model_copy(
            update={
                k: str(resolve(Path(v)))
                for k, v in s.options.items()
                if k in ("path", "directory") and isinstance(v, str)
            }
        )
        for sid, s in settings.sinks.items()
    }
    return settings.model_copy(
        update={
            "state": settings.state.model_copy(update={"path": resolve(settings.state.path)}),
            "plugins_dir": None if settings.plugins_dir is None else resolve(settings.plugins_dir),
            "sinks": sinks,
        }
    )
