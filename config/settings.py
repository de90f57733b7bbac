"""Settings: one TOML file, defaults for everything, and `MSANTE_<SECTION>__<KEY>` overrides.

Operators and scripts rely on the key names, so they are declared once here, with their
types; anything unknown or mistyped stops the program before a listener opens, with one
message naming the file, the key and what was expected (a half-configured server that
accepts mail is worse than one that does not start).
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from mailserver.headers import MAX_FIELDS, MAX_HEADER_BYTES

ENV_PREFIX = "MSANTE_"
GENERATED_NAME = "msante.toml"


class ConfigError(Exception):
    """A setting is missing, unknown or of the wrong shape; the message says which."""


@dataclass(frozen=True)
class Issuer:
    """A trusted token issuer (Pro Santé Connect, or the dev issuer created by init)."""

    issuer: str
    audience: str
    jwks_file: str = ""
    jwks_url: str = ""
    acr: str = ""  # required acr value ("eidas1" for PSC); empty: not checked


@dataclass(frozen=True)
class Limits:
    """What anonymous clients may hold of the server, whatever the protocol (see SCHEMA)."""

    connections: int = 4000
    connections_per_address: int = 50
    login_deadline: int = 60
    smtp_refusals: int = 20
    imap_refusals: int = 50


@dataclass(frozen=True)
class MailClients:
    """Where mail clients connect, as they reach it (a NAT or a load balancer may map other
    ports): what autoconfig and the web client's settings page tell them. Port 0: not offered."""

    host: str = "localhost"
    imaps: int = 0
    submissions: int = 0
    submission: int = 0


@dataclass(frozen=True)
class Settings:
    source: str  # the file the settings came from, or "defaults"
    domains: tuple[str, ...]
    data_dir: Path
    database_url: str
    listen: Mapping[str, str]
    issuers: tuple[Issuer, ...]
    public_url: str
    max_message_size: int
    max_header_size: int
    max_header_fields: int
    mailbox_quota: int
    token_leeway: int
    relay_routes: Mapping[str, str]
    relay_retry_base: int
    relay_retry_max: int
    relay_lifetime: int
    relay_delay_warning: int
    tls_cert: Path
    tls_key: Path
    client_cas: tuple[Path, ...]
    crls: tuple[Path, ...]
    crl_refresh: int
    admins: tuple[str, ...]
    dev_sign_in: bool
    limits: Limits = Limits()
    clients: MailClients = MailClients()
    hl7_max_frame: int = 20 * 1024 * 1024
    hl7_raw_retention_days: int = 90  # [hl7] raw_retention_days; 0 keeps raw messages forever
    max_attachment: int = 10 * 1024 * 1024
    bus_url: str = ""  # Redis, for events between processes and nodes; "": this process only
    workers: int = 1  # processes `msante serve` runs (msante/workers.py); 0: one per core
    job_lease: int = 60  # [server] job_lease
    imap_idle_keepalive: int = 120  # [imap] idle_keepalive
    relay_connections: int = 10  # [relay] connections_per_destination

    def path(self, *parts: str) -> Path:
        return self.data_dir.joinpath(*parts)

    @property
    def hostname(self) -> str:
        """The name this server gives itself in SMTP greetings, Received: and reports."""
        return self.domains[0]

    @property
    def ca_dir(self) -> Path:
        """The dev certificate authority created by `msante init`."""
        return self.path("pki")


LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "https", "hl7")

# section -> key -> (type, default). A default of None means "derived from other keys".
SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "server": {
        "domains": (list, ["msante.test"]),
        "data_dir": (str, "var"),
        "public_url": (str, None),  # https://<https listener>, used in tokens and discovery
        "max_message_size": (int, 25 * 1024 * 1024),  # announced with SMTP SIZE; 25 MB as most operators
        "mailbox_quota": (int, 2 * 1024 ** 3),  # bytes per box (IMAP QUOTA, APPEND/COPY refused beyond)
        # A message's header section accepted by SMTP: Postfix's header_size_limit is 100 KiB;
        # half of what IMAP reads (mailserver/headers.py), so trace fields added later still fit
        "max_header_size": (int, 128 * 1024),
        "max_header_fields": (int, 500),  # 50 Received: (the hop limit) and many others; IMAP reads 1000
        # Processes serving the same listeners (SO_REUSEPORT), to use every core; 0: one per core.
        # More than one needs PostgreSQL and [bus] url (docs/deployment.md).
        "workers": (int, 1),
        # Seconds a process holds the queued deliveries and hospital events it works (renewed
        # every third of it while it does): a node that dies leaves them this long at most
        # before another takes them over (store/lease.py). Longer than a clock skew between nodes.
        "job_lease": (int, 60),
    },
    "database": {
        "url": (str, None),  # default: SQLite file in data_dir
    },
    "bus": {
        # Redis (redis://, rediss:// or unix://) through which several processes or nodes on one
        # database hear each other's events (store/redis_bus.py); "": events stay in this process.
        "url": (str, ""),
    },
    "listen": {
        "smtp": (str, "127.0.0.1:2525"),
        "submission": (str, "127.0.0.1:5870"),
        "submissions": (str, "127.0.0.1:4650"),
        "imap": (str, "127.0.0.1:1430"),
        "imaps": (str, "127.0.0.1:9930"),
        "https": (str, "127.0.0.1:8443"),
        "hl7": (str, "127.0.0.1:2575"),  # HL7 v2 over MLLP in mutual TLS, from hospitals (2575: IANA's hl7)
    },
    "hl7": {
        # Largest MLLP frame (one HL7 message) a hospital may send: an MDM carries its document
        # in base64 (4/3 of the PDF), and the mail it becomes must stay under max_message_size.
        "max_frame": (int, 20 * 1024 * 1024),
        # Days a hospital's raw message (patient identity, document) is kept once dispatched; then
        # only its MSH segment stays, enough to answer a late resend with the same ACK. 0: forever.
        "raw_retention_days": (int, 90),
    },
    "instant": {
        # Largest document uploaded to a care circle (a scanned letter, a photo of a wound, a lab
        # PDF are a few MB; Tchap caps files at 100 MB, WhatsApp documents at 2 GB). Each is held
        # in memory while it arrives and is checked, so a bounded size keeps that cheap.
        "max_attachment": (int, 10 * 1024 * 1024),
    },
    "tls": {
        "cert": (str, None),  # PEM server certificate (chain); default: <data_dir>/tls/server.crt
        "key": (str, None),  # its private key; default: <data_dir>/tls/server.key
        "client_cas": (list, None),  # CAs client certificates must chain to; default: the dev CA
        "crls": (list, []),  # CRL files of those CAs (PEM or DER); `msante init` lists the dev CA's
        "crl_refresh": (int, 10),  # seconds between checks of the CRL files for a new version
    },
    "relay": {
        "routes": (dict, {}),  # {"domain" = "host:port"}: where mail for a domain goes (tests, private links)
        "retry_base": (int, 60),  # seconds before the first retry; doubles each time (Postfix: 300)
        "retry_max": (int, 3600),  # longest wait between two attempts (Postfix maximal_backoff_time: 4000)
        "lifetime": (int, 5 * 24 * 3600),  # then the message bounces (Postfix maximal_queue_lifetime: 5d)
        "delay_warning": (int, 4 * 3600),  # NOTIFY=DELAY report after this long in the queue (sendmail: 4h)
        # Connections opened at once to one destination when its backlog allows: one connection
        # sends its messages one after another, each waiting for the peer's commit, so a single
        # one caps the rate at one peer fsync per message (Postfix's
        # default_destination_concurrency_limit is 20; receivers cap connections per address).
        "connections_per_destination": (int, 10),
    },
    "auth": {
        "issuers": (list, []),
        "admins": (list, []),  # national identifiers allowed to read the audit trail over HTTPS
        "token_leeway": (int, 30),  # seconds of clock skew tolerated on exp/nbf/iat
        "dev_sign_in": (bool, False),  # the dev issuer's sign-in page (web/oidc.py): demos only, loopback only
    },
    "clients": {  # what mail clients are told (autoconfig, the web client's settings page)
        "host": (str, None),  # the name they connect to; default: public_url's host
        "imaps": (int, None),  # ports as they reach them; default: the listener's own, 0 when it is off
        "submissions": (int, None),
        "submission": (int, None),
    },
    "imap": {
        # Seconds between the untagged `* OK Still here` an IDLE session is sent: mobile
        # carriers' NAT and firewalls drop a silent TCP flow after a few minutes (often 5),
        # and the client then waits for news that can no longer reach it. Dovecot sends its
        # keepalive every 2 minutes too (imap_idle_notify_interval).
        "idle_keepalive": (int, 120),
    },
    "limits": {
        # Open connections on all listeners together: each holds a file descriptor and a few
        # hundred KB at most; past this, new ones get the protocol's refusal (IMAP BYE, SMTP
        # 421, HTTP 503). Keep it well below the descriptor limit (`ulimit -n`): the server
        # warns at start when it is not, since TLS clients fail silently once descriptors run out.
        "connections": (int, 4000),
        # Open connections from one client address on one listener (Postfix's
        # smtpd_client_connection_count_limit is 50 too). A hospital behind one NAT address
        # may need more; a benchmark from loopback does.
        "connections_per_address": (int, 50),
        # Seconds from connecting to a successful login on IMAP and submission, however
        # active the client: an anonymous session is closed then (Dovecot's
        # login_proxy_timeout and Postfix's smtpd_timeout are of this order).
        "login_deadline": (int, 60),
        # Refusals one session may earn (failed logins, senders or recipients refused, each
        # audited) before it is closed: enough for a confused client, not for a prober
        # filling the audit trail. IMAP clients retry more (several folders, several boxes).
        "smtp_refusals": (int, 20),
        "imap_refusals": (int, 50),
    },
}


def load(path: str | os.PathLike | None = None, *, data_dir: str | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (else `<data_dir>/msante.toml` if init wrote one, else only defaults), apply
    environment overrides, validate everything."""
    environ = os.environ if environ is None else environ
    if path is None:  # `msante init` writes <data_dir>/msante.toml when no file was given
        written = Path(environ.get(ENV_PREFIX + "SERVER__DATA_DIR") or data_dir or "var") / GENERATED_NAME
        path = written if written.exists() else None
    source = str(path) if path else "defaults"
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for section, body in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}] (expected one of {', '.join(SCHEMA)})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key in body:
            if key not in SCHEMA[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key} "
                                  f"(expected one of {', '.join(SCHEMA[section])})")
    from_env = _apply_environment(raw, environ)
    if data_dir is not None and "data_dir" not in raw.get("server", {}):
        raw.setdefault("server", {})["data_dir"] = data_dir

    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        values[section] = {}
        for key, (kind, default) in keys.items():
            value = raw.get(section, {}).get(key, default)
            if value is not None:
                value = _check_type(from_env.get(f"{section}.{key}", source), f"{section}.{key}", value, kind)
            values[section][key] = value
    return _build(source, values, from_env)


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """`MSANTE_LISTEN__SMTP=""` overrides [listen] smtp; lists and tables are given as JSON.
    Returns which keys came from which variable, so errors name the variable."""
    origins = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(f"environment: {name} names no setting (no key {section}.{key})")
        kind = SCHEMA[section][key][0]
        if kind is str:
            value: Any = text
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ConfigError(f"environment: {name} must be JSON for a {kind.__name__}, got {text!r}") from None
        raw.setdefault(section, {})[key] = value
        origins[f"{section}.{key}"] = f"environment {name}"
    return origins


def _check_type(source: str, key: str, value: Any, kind: type) -> Any:
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{source}: {key} must be a {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_hostport(where: str, value: str) -> str:
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} must be \"host:port\" (or \"\" to disable), got {value!r}")
    return value


def _build(file_source: str, v: dict[str, dict[str, Any]], from_env: dict[str, str]) -> Settings:
    def where(key: str) -> str:
        return f"{from_env.get(key, file_source)}: {key}"

    domains = v["server"]["domains"]
    if not domains or not all(isinstance(d, str) and d and "@" not in d for d in domains):
        raise ConfigError(f"{where('server.domains')} must be a non-empty list of domain names, got {domains!r}")
    try:
        domains = tuple(d.strip().lower().encode("idna").decode("ascii") for d in domains)
    except UnicodeError:
        raise ConfigError(f"{where('server.domains')} holds a name that is not a valid domain: {domains!r}") from None
    data_dir = Path(v["server"]["data_dir"])
    listen = {k: _check_hostport(where(f"listen.{k}"), v["listen"][k]) for k in LISTENERS}
    max_size = v["server"]["max_message_size"]
    if max_size < 1024:
        raise ConfigError(f"{where('server.max_message_size')} must be at least 1024 bytes, got {max_size}")
    for key, ceiling in (("max_header_size", MAX_HEADER_BYTES // 2), ("max_header_fields", MAX_FIELDS // 2)):
        if not 1 <= v["server"][key] <= ceiling:  # room for the trace fields of the hops still to come
            raise ConfigError(f"{where('server.' + key)} must be between 1 and {ceiling}, got {v['server'][key]}")
    if v["server"]["mailbox_quota"] < max_size:
        raise ConfigError(f"{where('server.mailbox_quota')} must be at least server.max_message_size")
    if v["auth"]["token_leeway"] < 0 or v["auth"]["token_leeway"] > 300:
        raise ConfigError(f"{where('auth.token_leeway')} must be between 0 and 300 seconds")
    url = v["database"]["url"] or f"sqlite+aiosqlite:///{data_dir / 'msante.db'}"
    if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
        raise ConfigError(f"{where('database.url')} must start with sqlite+aiosqlite:// or "
                          f"postgresql+asyncpg://, got {url.split('://')[0]}://…")
    if not 0 <= v["server"]["workers"] <= 64:
        raise ConfigError(f"{where('server.workers')} must be between 0 (one per core) and 64, "
                          f"got {v['server']['workers']}")
    bus_url = v["bus"]["url"]
    if bus_url and not bus_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{where('bus.url')} must start with redis://, rediss:// or unix:// "
                          f"(or be \"\" for one process), got {bus_url.split('://')[0]}://…")
    issuers = []
    for i, item in enumerate(v["auth"]["issuers"]):
        at = f"{where('auth.issuers')}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at} must be a table {{issuer, audience, jwks_file or jwks_url}}")
        unknown = set(item) - {"issuer", "audience", "jwks_file", "jwks_url", "acr"}
        if unknown:
            raise ConfigError(f"{at} has unknown keys {sorted(unknown)}")
        for key in ("issuer", "audience"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise ConfigError(f"{at}.{key} is required (a string)")
        if bool(item.get("jwks_file")) == bool(item.get("jwks_url")):
            raise ConfigError(f"{at} needs exactly one of jwks_file or jwks_url")
        issuers.append(Issuer(**{k: str(val) for k, val in item.items()}))
    admins = v["auth"]["admins"]
    if not all(isinstance(a, str) and a.isdigit() for a in admins):
        raise ConfigError(f"{where('auth.admins')} must be a list of national identifiers (digits), got {admins!r}")
    tls = v["tls"]
    client_cas = tls["client_cas"] if tls["client_cas"] is not None else [str(data_dir / "pki" / "ca.crt")]
    if not all(isinstance(c, str) and c for c in client_cas):
        raise ConfigError(f"{where('tls.client_cas')} must be a list of file paths")
    crls = tls["crls"]
    if not all(isinstance(c, str) and c for c in crls):
        raise ConfigError(f"{where('tls.crls')} must be a list of file paths")
    if not 1 <= tls["crl_refresh"] <= 3600:
        raise ConfigError(f"{where('tls.crl_refresh')} must be between 1 and 3600 seconds")
    relay = v["relay"]
    routes = {}
    for domain, target in relay["routes"].items():
        if not isinstance(target, str):
            raise ConfigError(f"{where('relay.routes')}: the route of {domain} must be \"host:port\"")
        try:
            routes[domain.strip().lower().encode("idna").decode("ascii")] = _check_hostport(
                f"{where('relay.routes')}[{domain}]", target)
        except UnicodeError:
            raise ConfigError(f"{where('relay.routes')}: {domain!r} is not a domain name") from None
    for key in ("retry_base", "retry_max", "lifetime", "delay_warning"):
        if relay[key] < 1:
            raise ConfigError(f"{where('relay.' + key)} must be a positive number of seconds")
    if not 1 <= relay["connections_per_destination"] <= 100:
        raise ConfigError(f"{where('relay.connections_per_destination')} must be between 1 and 100, "
                          f"got {relay['connections_per_destination']}")
    if not 1 <= v["server"]["job_lease"] <= 3600:
        raise ConfigError(f"{where('server.job_lease')} must be between 1 and 3600 seconds, "
                          f"got {v['server']['job_lease']}")
    for key, value in v["limits"].items():
        if value < 1:
            raise ConfigError(f"{where('limits.' + key)} must be at least 1, got {value}")
    if not 1024 <= v["hl7"]["max_frame"] <= max_size:
        raise ConfigError(f"{where('hl7.max_frame')} must be between 1024 and server.max_message_size "
                          f"(the notice it becomes is a mail), got {v['hl7']['max_frame']}")
    if v["hl7"]["raw_retention_days"] < 0:
        raise ConfigError(f"{where('hl7.raw_retention_days')} must be 0 (keep) or a number of days, "
                          f"got {v['hl7']['raw_retention_days']}")
    if not 1024 <= v["instant"]["max_attachment"] <= 100 * 1024 * 1024:
        raise ConfigError(f"{where('instant.max_attachment')} must be between 1024 and 104857600 bytes, "
                          f"got {v['instant']['max_attachment']}")
    if not 1 <= v["imap"]["idle_keepalive"] <= 29 * 60:
        raise ConfigError(f"{where('imap.idle_keepalive')} must be between 1 and 1740 seconds (under IDLE's "
                          f"30 minutes), got {v['imap']['idle_keepalive']}")
    https = listen["https"] or "127.0.0.1:8443"
    public_url = v["server"]["public_url"] or f"https://{_url_host(https)}"
    clients = v["clients"]
    ports = {}
    for key in ("imaps", "submissions", "submission"):
        own = split_hostport(listen[key])[1] if listen[key] else 0
        ports[key] = clients[key] if clients[key] is not None else own
        if not 0 <= ports[key] <= 65535:
            raise ConfigError(f"{where('clients.' + key)} must be a port (0: not offered), got {ports[key]}")
    client_host = clients["host"] if clients["host"] is not None else urlsplit(public_url).hostname or ""
    if not client_host or any(c.isspace() or c in "/:@" for c in client_host):
        raise ConfigError(f"{where('clients.host')} must be a host name, got {client_host!r}")
    return Settings(source=file_source, domains=domains, data_dir=data_dir, database_url=url, listen=listen,
                    issuers=tuple(issuers), public_url=public_url.rstrip("/"), max_message_size=max_size,
                    max_header_size=v["server"]["max_header_size"], max_header_fields=v["server"]["max_header_fields"],
                    mailbox_quota=v["server"]["mailbox_quota"],
                    token_leeway=v["auth"]["token_leeway"], relay_routes=routes,
                    relay_retry_base=relay["retry_base"], relay_retry_max=relay["retry_max"],
                    relay_lifetime=relay["lifetime"], relay_delay_warning=relay["delay_warning"],
                    relay_connections=relay["connections_per_destination"],
                    tls_cert=Path(tls["cert"] or data_dir / "tls" / "server.crt"),
                    tls_key=Path(tls["key"] or data_dir / "tls" / "server.key"),
                    client_cas=tuple(Path(c) for c in client_cas), crls=tuple(Path(c) for c in crls),
                    crl_refresh=tls["crl_refresh"], admins=tuple(admins),
                    dev_sign_in=v["auth"]["dev_sign_in"], limits=Limits(**v["limits"]),
                    clients=MailClients(client_host, **ports), hl7_max_frame=v["hl7"]["max_frame"], bus_url=bus_url,
                    hl7_raw_retention_days=v["hl7"]["raw_retention_days"],
                    workers=v["server"]["workers"], job_lease=v["server"]["job_lease"],
                    max_attachment=v["instant"]["max_attachment"],
                    imap_idle_keepalive=v["imap"]["idle_keepalive"])


def _url_host(hostport: str) -> str:
    host, _, port = hostport.rpartition(":")
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    return f"{host}:{port}"


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
