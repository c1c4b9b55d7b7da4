"""Durable state shared by every server process: visitors' budgets (later also class quiz rounds).

SQLAlchemy Core on one URL (``settings().state_db_url``): by default an SQLite file ``state.sqlite3`` in
``ASAP_CACHE_DIR`` (WAL journal, a busy timeout, ``BEGIN IMMEDIATE`` transactions so that charges from several
processes queue up); ``ASAP_STATE_URL`` takes any SQLAlchemy URL, e.g. ``postgresql+psycopg://user:pw@host/asap``
(a plain ``postgresql://`` URL uses the psycopg driver), which several servers on several hosts can share.

Tables are created when missing. New state (class quiz rounds, ...) gets its own ``Table`` on ``METADATA``
below ``BUDGETS`` and its own small methods on ``StateStore``; ``create_all`` adds it to existing stores.

``charge`` / ``charge_all`` are atomic: the rows are locked (``SELECT ... FOR UPDATE`` on PostgreSQL, the
whole database with ``BEGIN IMMEDIATE`` on SQLite) while the used amount is read, compared with the limit
and written, so concurrent charges from any number of processes never pass a limit. One ``StateStore`` per
URL and process (``from_url`` caches it).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import BigInteger, Column, Float, MetaData, String, Table, create_engine, event, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..errors import InputError
from ..settings import settings

LOG = logging.getLogger("asap_explorer")
SQLITE_BUSY_S = 30.0  # an SQLite writer waits at most this long for another process's transaction
MAX_CLIENT_CHARS = 128  # longest client id kept (client ids are built by hosting.client_address)

METADATA = MetaData()
#: one row per client and kind of budget: ``used`` units since ``window_start`` (epoch s), renewed at ``window_end``
BUDGETS = Table(
    "budgets", METADATA,
    Column("client", String(MAX_CLIENT_CHARS), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("used", BigInteger, nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_end", Float, nullable=False),
)


@dataclass(frozen=True)
class Charge:
    """The outcome of charging ``amount`` units of ``kind``: ``used_before`` units were charged in the window
    that began at ``window_start`` (epoch s) and renews at ``window_end``; ``allowed`` False: nothing charged."""

    kind: str
    amount: int
    limit: int
    used_before: int
    window_start: float
    window_end: float
    allowed: bool

    @property
    def left(self) -> int:
        """Units still free in the window after this charge (before it, when refused)."""
        return max(0, self.limit - self.used_before - (self.amount if self.allowed else 0))


class StateUnavailable(InputError):
    """The state store cannot be reached: worded for visitors (details go to the server log)."""


def shown_url(url: str) -> str:
    """``url`` as the operator may read it in a log or at start: without its password."""
    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


def normalise_url(url: str) -> str:
    """``url`` with a plain ``postgresql://`` / ``postgres://`` mapped to the psycopg (3) driver."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _sqlite_engine(url: str) -> Engine:
    """An SQLite engine in WAL mode whose transactions begin with ``BEGIN IMMEDIATE`` (one writer at a time,
    others wait up to ``SQLITE_BUSY_S``)."""
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below emits the BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class StateStore:
    """Budgets (and later other shared state) in one SQL database; see the module docstring."""

    _cache: dict[str, StateStore] = {}
    _cache_lock = threading.Lock()

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        METADATA.create_all(engine)

    @classmethod
    def from_url(cls, url: str | None = None) -> StateStore:
        """The process's store for ``url`` (default ``settings().state_db_url``), opened once and cached."""
        if url is None:
            url = settings().state_db_url
        url = normalise_url(url)
        with cls._cache_lock:
            if url not in cls._cache:
                engine = _open_engine(url)
                try:
                    cls._cache[url] = cls(engine)
                except SQLAlchemyError as exc:  # unreachable server, bad credentials, read-only file ...
                    engine.dispose()
                    raise _unavailable(exc) from None
            return cls._cache[url]

    def close(self) -> None:
        """Drop this store from the process's cache and close its connections (a later ``from_url`` opens
        the database afresh, as a restarted server would)."""
        with self._cache_lock:
            for url in [u for u, s in self._cache.items() if s is self]:
                del self._cache[url]
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def charge(self, client: str, kind: str, amount: int, limit: int, window_s: float,
               now: float | None = None) -> Charge:
        """Charge ``amount`` units of ``kind`` to ``client`` unless that passes ``limit`` in the current window
        of ``window_s`` seconds (a window renews ``window_s`` after it began); atomic across processes."""
        return self.charge_all(client, [(kind, amount, limit)], window_s, now)[0]

    def charge_all(self, client: str, items: Sequence[tuple[str, int, int]], window_s: float,
                   now: float | None = None) -> list[Charge]:
        """Charge every ``(kind, amount, limit)`` of ``items`` to ``client``, or none of them when any would
        pass its limit (all checked first, then all charged, in one transaction). One ``Charge`` per item."""
        now = time.time() if now is None else float(now)
        client = client[:MAX_CLIENT_CHARS]
        try:
            with self.engine.begin() as conn:
                charges = [self._check(conn, client, kind, int(amount), int(limit), window_s, now)
                           for kind, amount, limit in sorted(items)]  # one lock order: no deadlocks
                if all(c.allowed for c in charges):
                    for c in charges:
                        conn.execute(update(BUDGETS).where(BUDGETS.c.client == client, BUDGETS.c.kind == c.kind)
                                     .values(used=c.used_before + c.amount, window_start=c.window_start,
                                             window_end=c.window_end))
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from None
        order = {kind: i for i, (kind, _, _) in enumerate(items)}
        return sorted(charges, key=lambda c: order[c.kind])

    def used(self, client: str, kind: str, now: float | None = None) -> int:
        """Units of ``kind`` charged to ``client`` in its current window (0 once the window has ended)."""
        now = time.time() if now is None else float(now)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(BUDGETS.c.used, BUDGETS.c.window_end).where(
                    BUDGETS.c.client == client[:MAX_CLIENT_CHARS], BUDGETS.c.kind == kind)).first()
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from None
        return int(row.used) if row is not None and now < row.window_end else 0

    def _check(self, conn: Connection, client: str, kind: str, amount: int, limit: int, window_s: float,
               now: float) -> Charge:
        """Lock ``client``'s row of ``kind`` (created when missing) and say whether ``amount`` more fits."""
        self._ensure_row(conn, client, kind, now, window_s)
        query = select(BUDGETS.c.used, BUDGETS.c.window_start, BUDGETS.c.window_end).where(
            BUDGETS.c.client == client, BUDGETS.c.kind == kind)
        row = conn.execute(query.with_for_update() if self.dialect != "sqlite" else query).one()
        used, start, end = int(row.used), float(row.window_start), float(row.window_end)
        if now >= end:  # the window is over: a new one begins now
            used, start, end = 0, now, now + window_s
        return Charge(kind, amount, limit, used, start, end, allowed=used + amount <= limit)

    def _ensure_row(self, conn: Connection, client: str, kind: str, now: float, window_s: float) -> None:
        """Insert an empty row for ``client`` and ``kind`` unless one exists (no error when another process
        inserted it first)."""
        values = dict(client=client, kind=kind, used=0, window_start=now, window_end=now + window_s)
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert

            conn.execute(postgresql_insert(BUDGETS).values(**values).on_conflict_do_nothing())
            return
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(BUDGETS).values(**values).on_conflict_do_nothing())
            return
        exists = conn.execute(select(BUDGETS.c.used).where(BUDGETS.c.client == client,
                                                           BUDGETS.c.kind == kind)).first()
        if exists is None:
            conn.execute(BUDGETS.insert().values(**values))


def _open_engine(url: str) -> Engine:
    """The engine for ``url``; ``InputError`` (for the operator) when it is not a URL SQLAlchemy can use."""
    try:
        if make_url(url).get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError, ValueError) as exc:
        LOG.error("state store URL not usable: %s", exc)
        raise StateUnavailable("This explorer cannot keep track of visitors' budgets right now.",
                               "try again later; the operator has been told in the server log.") from None


def _unavailable(exc: Exception) -> StateUnavailable:
    """The visitor-safe error for a database failure; the details go to the server log."""
    LOG.error("state store unavailable: %s", exc)
    return StateUnavailable("This explorer cannot record the cost of this request right now.",
                            "try again in a minute.")


__all__ = ["BUDGETS", "METADATA", "Charge", "StateStore", "StateUnavailable", "normalise_url", "shown_url"]
