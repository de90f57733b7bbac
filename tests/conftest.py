"""Shared fixtures: a database per test (SQLite always, PostgreSQL when MSANTE_TEST_DATABASE_URL
is set) and a real msante server on loopback, initialised with the demo data."""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

import config


PG_URL = os.environ.get("MSANTE_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def _shared() -> Path:
    """`../shared`, beside the repository: beside this checkout, or, when this checkout is a git
    worktree (its `.git` is a file naming the main repository's), beside the main checkout."""
    root = Path(__file__).resolve().parents[1]
    beside = root.parent / "shared"
    git = root / ".git"
    if beside.is_dir() or not git.is_file():
        return beside
    gitdir = Path(git.read_text().partition("gitdir:")[2].strip())  # <main>/.git/worktrees/<name>
    return gitdir.parents[2].parent / "shared" if len(gitdir.parents) > 2 else beside


SHARED = _shared()


_PORTS = random.Random()  # its own generator: tests that seed `random` must not pick the same ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range: a port taken from that
    range (bind to 0) can be handed to an outgoing connection (a client, a database pool)
    between this check and the server's bind. A port is handed out once per run: a server
    started later in the run cannot be given one an earlier server has not bound yet."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _PORTS.randrange(10000, low)
        if port in _GIVEN:
            continue
        _GIVEN.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


@pytest.fixture(params=BACKENDS)
async def database_url(request, tmp_path):
    """A fresh, empty database URL; on PostgreSQL a uniquely named database, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    name = await _postgresql("CREATE DATABASE {}")
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    await _postgresql("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@pytest.fixture
async def postgresql_url():
    """A fresh PostgreSQL database, for tests that only make sense on it (several processes
    sharing one store); skipped when MSANTE_TEST_DATABASE_URL is not set."""
    if not PG_URL:
        pytest.skip("MSANTE_TEST_DATABASE_URL is not set")
    name = await _postgresql("CREATE DATABASE {}")
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    await _postgresql("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


async def _postgresql(statement: str, name: str | None = None) -> str:
    """Run a CREATE or DROP DATABASE `statement` for `name` (a new unique one by default)."""
    import asyncpg

    name = name or f"msante_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(statement.format(f'"{name}"'))
    finally:
        await conn.close()
    return name


@dataclass
class RunningServer:
    settings: config.Settings
    data_dir: Path
    listeners: dict[str, str]  # name -> host:port

    @property
    def ca_file(self) -> Path:
        return self.settings.ca_dir / "ca.crt"

    def client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def rows(self, query) -> list[dict]:  # noqa: ANN001 - a SQLAlchemy select
        return asyncio.run(self._run(lambda conn: conn.execute(query), lambda result: [dict(r._mapping) for r in result]))

    def scalar(self, query):  # noqa: ANN001, ANN201
        return asyncio.run(self._run(lambda conn: conn.execute(query), lambda result: result.scalar()))

    def execute(self, statement) -> None:  # noqa: ANN001
        asyncio.run(self._run(lambda conn: conn.execute(statement), lambda result: None, commit=True))

    async def _run(self, run, read, commit: bool = False):  # noqa: ANN001, ANN202
        """The store, read from the test's thread with an engine of its own (the server's lives
        on the server's loop)."""
        from store import db

        engine = db.create_engine(self.settings.database_url)
        try:
            async with (engine.begin() if commit else engine.connect()) as conn:
                return read(await run(conn))
        finally:
            await engine.dispose()

    def cli(self, *args: str) -> int:
        from msante import cli

        return cli.main([*args, "--data-dir", str(self.data_dir)])


def init_data_dir(data_dir: Path, monkeypatch, *, database_url: str | None = None) -> None:
    """`msante init --demo` into data_dir, with every listener on a free loopback port. The first
    call of a run per kind of store really runs it; later ones copy that result (files, SQLite
    file, or PostgreSQL database as a template), which is what init would have written but for
    the paths and the address: ~2 s of key generation, migrations and imports per server saved."""
    port = free_port()
    monkeypatch.setenv("MSANTE_SERVER__DATA_DIR", str(data_dir))
    monkeypatch.setenv("MSANTE_LISTEN__HTTPS", f"127.0.0.1:{port}")
    monkeypatch.setenv("MSANTE_SERVER__PUBLIC_URL", f"https://localhost:{port}")
    for name in ("smtp", "submission", "submissions", "imap", "imaps", "hl7"):
        monkeypatch.setenv(f"MSANTE_LISTEN__{name.upper()}", f"127.0.0.1:{free_port()}")
    if database_url:
        monkeypatch.setenv("MSANTE_DATABASE__URL", database_url)
    _Template.get(database_url).copy_to(data_dir, f"https://localhost:{port}", database_url)


@dataclass
class _Template:
    """A data directory (and store) `msante init --demo` wrote once, with the settings of the
    environment it was written in: tests that change what init writes get their own."""

    data_dir: Path
    public_url: str
    database_url: str | None

    @classmethod
    def get(cls, database_url: str | None) -> "_Template":
        kind = "postgresql" if database_url and database_url.startswith("postgresql") else \
            "sqlite-url" if database_url else "sqlite"
        own = ("LISTEN__", "SERVER__DATA_DIR", "SERVER__PUBLIC_URL", "DATABASE__URL")
        key = (kind, *sorted((k, v) for k, v in os.environ.items()
                             if k.startswith("MSANTE_") and not k[len("MSANTE_"):].startswith(own)))
        if key not in _TEMPLATES:
            _TEMPLATES[key] = cls._make(kind)
        return _TEMPLATES[key]

    @classmethod
    def _make(cls, kind: str) -> "_Template":
        from msante import cli

        root = Path(_TEMPLATE_ROOT.name) / uuid.uuid4().hex[:8]
        data_dir, public_url = root / "var", os.environ["MSANTE_SERVER__PUBLIC_URL"]
        database_url = None
        if kind == "sqlite-url":
            database_url = f"sqlite+aiosqlite:///{root / 'test.db'}"
        elif kind == "postgresql":
            database_url = PG_URL.rsplit("/", 1)[0] + "/" + _apart(_postgresql("CREATE DATABASE {}"))
        saved = {k: os.environ.get(k) for k in ("MSANTE_SERVER__DATA_DIR", "MSANTE_DATABASE__URL")}
        os.environ["MSANTE_SERVER__DATA_DIR"] = str(data_dir)
        if database_url:
            os.environ["MSANTE_DATABASE__URL"] = database_url
        try:
            assert cli.main(["init", "--demo"]) == 0
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return cls(data_dir, public_url, database_url)

    def copy_to(self, data_dir: Path, public_url: str, database_url: str | None) -> None:
        shutil.copytree(self.data_dir, data_dir)
        settings = data_dir / "msante.toml"
        settings.write_text(settings.read_text().replace(str(self.data_dir), str(data_dir))
                            .replace(self.public_url, public_url))
        if database_url is None:
            return
        if database_url.startswith("sqlite"):
            shutil.copyfile(self.database_url.split(":///", 1)[1], database_url.split(":///", 1)[1])
            return
        name, template = database_url.rsplit("/", 1)[1], self.database_url.rsplit("/", 1)[1]
        _apart(_postgresql("DROP DATABASE {} WITH (FORCE)", name))
        _apart(_postgresql(f'CREATE DATABASE {{}} TEMPLATE "{template}"', name))


def _apart(coroutine):  # noqa: ANN001, ANN202
    """Run `coroutine` to its end on a loop of its own in another thread. asyncio.run here, in
    an async test's setup, left the main thread without an event loop, which pytest-asyncio
    0.24 (the oldest allowed) then asked for: 34 tests failed with it."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = asyncio.run(coroutine)
        except BaseException as exc:  # raised again in the caller's thread
            outcome["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


_TEMPLATES: dict[tuple, _Template] = {}
_TEMPLATE_ROOT = tempfile.TemporaryDirectory(prefix="msante-templates-")  # removed when the run ends


@pytest.fixture(scope="session", autouse=True)
def _drop_templates():
    """The PostgreSQL template databases go with the run."""
    yield
    for template in _TEMPLATES.values():
        if template.database_url and template.database_url.startswith("postgresql"):
            _apart(_postgresql("DROP DATABASE IF EXISTS {} WITH (FORCE)", template.database_url.rsplit("/", 1)[1]))


@pytest.fixture
def loop_factory():
    """The event loop `server` runs on: asyncio's; a module may override this fixture (uvloop,
    which `msante serve` runs on when installed)."""
    return asyncio.new_event_loop


@pytest.fixture
def server(tmp_path, monkeypatch, database_url, loop_factory):
    """A server running in a thread (its own event loop), stopped and checked at teardown."""
    from msante import app

    data_dir = tmp_path / "var"
    init_data_dir(data_dir, monkeypatch, database_url=database_url)
    settings = config.load(data_dir=str(data_dir))
    ready = threading.Event()
    listeners: dict[str, str] = {}
    holder: dict = {}

    def on_ready(started) -> None:
        listeners.update({lst.name: lst.address for lst in started})
        ready.set()

    def run() -> None:
        loop = loop_factory()
        holder["loop"], holder["stop"] = loop, asyncio.Event()
        try:
            loop.run_until_complete(app.serve(settings, on_ready=on_ready, stop=holder["stop"]))
        except BaseException as exc:  # surfaced to the test below
            holder["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="msante-server", daemon=True)
    thread.start()
    assert ready.wait(30), "server did not start"
    if "error" in holder:
        raise holder["error"]
    yield RunningServer(settings, data_dir, listeners)
    holder["loop"].call_soon_threadsafe(holder["stop"].set)
    thread.join(30)
    assert not thread.is_alive(), "server did not stop"
    assert "error" not in holder, holder.get("error")


@dataclass
class RedisServer:
    """A private redis-server on a loopback port of its own, for tests that stop and restart
    it (a shared instance could not be killed, and other tests' events would cross)."""

    port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - kept open by the child
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no"], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: an outage as abrupt as they come."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def redis_server(tmp_path):
    """A private redis-server (never the machine's shared 6379), killed at teardown."""
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(free_port(), directory)
    server.start()
    yield server
    server.kill()
