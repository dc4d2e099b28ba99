"""Review state: the one data-access layer (SQLite in WAL mode by default, PostgreSQL by URL).

Why a database and not Lance: leases, decisions and sessions need transactions and row-level
updates from many annotators at once. Lance stays the system of record; ``curate review apply``
merges the decisions back as a new version.

How it stays fast with a million queued items (no per-request scans):
- leasing is one indexed statement: the ``items_next`` index is ordered the way the queue is
  served (status, gold, priority desc, id) and carries the lease expiry (no table reads while scanning), so "the best open item nobody holds" is the first
  index entries after the few currently leased; SQLite runs the statement under its write lock
  and PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so two annotators never get the same item;
- queue totals live in a ``counters`` table updated in the same transaction as the change;
- an annotator's open lease is found through the ``items_lease`` index.

Rules it enforces (the API relies on them, tests check them):
- an item is leased to one annotator at a time, with an expiry (a closed browser returns it);
- a decision is accepted only from the annotator holding the lease; one decision per
  (item, annotator) (a UNIQUE constraint), so a retried submit is idempotent and never counted twice;
- a share of items needs two annotators (agreement), gold items have a known answer and stay in
  the queue for every annotator once;
- an annotator may undo only their latest decision, within a window and before an apply has
  merged it: the decision row goes, the counters go back and the item is leased to them again, in
  one transaction (``undo``);
- every action is written to the audit log in the same transaction.

SQL is written once with ``?`` placeholders and standard syntax both engines accept
(``ON CONFLICT``, ``RETURNING``, partial indexes); the few differences are in ``_Dialect``.
"""

from __future__ import annotations

import json
import math
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.security import DUMMY_HASH, hash_password, new_token, token_digest, verify_password
from curation.text import strip_invisible

__all__ = [
    "ReviewDB",
    "ReviewError",
    "NotLeased",
    "Conflict",
    "NotFound",
    "BadInput",
    "Throttled",
    "LoginPolicy",
    "DECISIONS",
    "ROLES",
    "User",
    "PAIR_PREFIX",
    "is_pair_row",
    "pair_id_of",
    "redact_url",
]

DECISIONS = ("keep", "drop")
ROLES = ("annotator", "admin")
SCHEMA_VERSION = "1"

# Editing pairs share the queue with dataset rows (``curate pairs review``): their row id is
# ``pair:<pair_id>``. Defined here because both the job that queues them (pipelines) and the web
# app that shows them (annotator_ui) read it, and neither may import the other.
PAIR_PREFIX = "pair:"
_PAIR_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")  # render, synth and mine write 16-24 hex digits


def is_pair_row(row_id: str | None) -> bool:
    """Whether a queue row id names an editing pair rather than a dataset row."""
    return bool(row_id) and row_id.startswith(PAIR_PREFIX)


def pair_id_of(row_id: str) -> str | None:
    """The pair id of a queue row id, or None when it is not a well-formed pair row."""
    pid = row_id[len(PAIR_PREFIX) :] if is_pair_row(row_id) else ""
    return pid if _PAIR_ID.match(pid) else None


class ReviewError(Exception):
    """Base of the errors the API maps to 4xx answers."""


class NotFound(ReviewError):
    pass


class BadInput(ReviewError, ValueError):
    """A value no engine can store the same way (text with NUL characters: PostgreSQL refuses
    them, SQLite would keep them), refused on both so behaviour does not depend on the engine."""


class NotLeased(ReviewError):
    """The item is not leased to this annotator (never leased, expired and taken, or done)."""


class Conflict(ReviewError):
    """A different decision by the same annotator already exists for this item."""


class Throttled(ReviewError):
    """Too many failed logins for this account name or client address: refused before the
    password hash runs. ``retry_after``: seconds until an attempt is heard again."""

    def __init__(self, retry_after: float):
        super().__init__("too many failed logins; try again later")
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(frozen=True)
class LoginPolicy:
    """Login throttling (``ReviewDB.authenticate``). Why per account *and* per address: per
    account stops guessing one password from many machines, per address stops one machine
    trying many accounts (and burning a CPU core on scrypt). The address limit is higher, as a
    team behind one NAT address shares it. After ``max_failures`` failures within ``window_s``
    the key is locked for ``lockout_s``, doubling with each further lockout up to
    ``max_lockout_s``; a key quiet for ``max_lockout_s`` starts afresh."""

    max_failures: int = 5
    max_failures_addr: int = 20
    window_s: float = 900.0
    lockout_s: float = 30.0
    max_lockout_s: float = 3600.0

    def lockout(self, n: int) -> float:
        """Length of the ``n``-th lockout in a row (growing backoff)."""
        return min(self.lockout_s * 2 ** max(n - 1, 0), self.max_lockout_s)

    def limit(self, key: str) -> int:
        return self.max_failures_addr if key.startswith("addr:") else self.max_failures


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS users (
  id {serial}, name TEXT NOT NULL UNIQUE, pw_hash TEXT NOT NULL, role TEXT NOT NULL,
  active INTEGER NOT NULL DEFAULT 1, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
  token_hash TEXT PRIMARY KEY, user_id BIGINT NOT NULL, csrf TEXT NOT NULL,
  created DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  id {serial}, row_id TEXT NOT NULL UNIQUE, batch TEXT, priority DOUBLE PRECISION NOT NULL,
  status INTEGER NOT NULL DEFAULT 0, gold INTEGER NOT NULL DEFAULT 0, gold_answer TEXT,
  needed INTEGER NOT NULL DEFAULT 1, done_count INTEGER NOT NULL DEFAULT 0,
  lease_user BIGINT, lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
  payload TEXT NOT NULL, created DOUBLE PRECISION NOT NULL);
DROP INDEX IF EXISTS items_queue;
CREATE INDEX IF NOT EXISTS items_next ON items (status, gold, priority DESC, id, lease_expires);
CREATE INDEX IF NOT EXISTS items_lease ON items (lease_user) WHERE lease_user IS NOT NULL;
CREATE TABLE IF NOT EXISTS decisions (
  id {serial}, item_id BIGINT NOT NULL, user_id BIGINT NOT NULL, decision TEXT NOT NULL,
  flag INTEGER NOT NULL DEFAULT 0, caption TEXT, tags TEXT, reasons TEXT,
  created DOUBLE PRECISION NOT NULL, UNIQUE (item_id, user_id));
CREATE INDEX IF NOT EXISTS decisions_user ON decisions (user_id);
CREATE TABLE IF NOT EXISTS skips (
  item_id BIGINT NOT NULL, user_id BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL,
  PRIMARY KEY (item_id, user_id));
CREATE TABLE IF NOT EXISTS audit (
  id {serial}, ts DOUBLE PRECISION NOT NULL, user_id BIGINT, action TEXT NOT NULL,
  item_id BIGINT, detail TEXT);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action, id);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user_id, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS login_throttle (
  key TEXT PRIMARY KEY, failures INTEGER NOT NULL DEFAULT 0, window_start DOUBLE PRECISION NOT NULL,
  locked_until DOUBLE PRECISION NOT NULL DEFAULT 0, lockouts INTEGER NOT NULL DEFAULT 0,
  last DOUBLE PRECISION NOT NULL);
"""

COUNTERS = ("items_total", "items_open", "items_done", "gold_items", "decisions", "keep", "drop", "flag", "skips")

_ITEM_COLS = "id, row_id, batch, priority, status, gold, needed, done_count, lease_user, lease_expires, payload"


_BG_AUTOCHECKPOINT_PAGES = 50_000  # ~200 MiB of WAL: reached only if the background checkpoints stall


class _Dialect:
    """What differs between SQLite and PostgreSQL, nothing more."""

    def __init__(self, name: str):
        self.name = name
        self.serial = "INTEGER PRIMARY KEY" if name == "sqlite" else "BIGSERIAL PRIMARY KEY"
        # PostgreSQL: skip rows another transaction is leasing right now instead of waiting on them
        self.skip_locked = "" if name == "sqlite" else "FOR UPDATE SKIP LOCKED"
        self.lock_row = "" if name == "sqlite" else "FOR UPDATE"

    def sql(self, q: str) -> str:
        return q if self.name == "sqlite" else q.replace("?", "%s")


class _Tx:
    """A transaction's cursor with small helpers (placeholders translated per dialect)."""

    def __init__(self, cur, dialect: _Dialect):
        self.cur, self.d = cur, dialect

    @staticmethod
    def _params(params: tuple | list) -> tuple:
        params = tuple(params)
        for p in params:
            if isinstance(p, str) and "\x00" in p:
                raise BadInput("text must not contain NUL characters")
        return params

    def exec(self, q: str, params: tuple | list = ()) -> int:
        self.cur.execute(self.d.sql(q), self._params(params))
        return self.cur.rowcount

    def many(self, q: str, rows: list[tuple]) -> None:
        if rows:
            self.cur.executemany(self.d.sql(q), [self._params(r) for r in rows])

    def all(self, q: str, params: tuple | list = ()) -> list[tuple]:
        self.cur.execute(self.d.sql(q), self._params(params))
        return list(self.cur.fetchall())

    def one(self, q: str, params: tuple | list = ()) -> tuple | None:
        self.cur.execute(self.d.sql(q), self._params(params))
        return self.cur.fetchone()

    def audit(self, user_id: int | None, action: str, item_id: int | None = None, **detail: Any) -> None:
        self.exec(
            "INSERT INTO audit (ts, user_id, action, item_id, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), user_id, action, item_id, json.dumps(detail, default=str) if detail else None),
        )

    def bump(self, **deltas: int) -> None:
        # counter rows are locked in name order in every transaction, so two transactions that
        # bump overlapping counters can never wait on each other in a cycle (PostgreSQL deadlock)
        for name, n in sorted(deltas.items()):
            if n:
                self.exec("UPDATE counters SET value = value + ? WHERE name = ?", (int(n), name))


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages: a PostgreSQL URL may carry
    one, and error lines end up in logs and terminals that others read)."""
    hidden = re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", str(url))
    return re.sub(r"(password=)[^&]*", r"\1***", hidden)


def _sqlite_path(url: str) -> str:
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///") :]
    if url.startswith("sqlite://"):
        return url[len("sqlite://") :]
    return url


class ReviewDB:
    """The review database. ``url``: a file path or ``sqlite:///path`` (default engine), or
    ``postgresql://user:pass@host/db`` (needs the ``psycopg`` package).

    Thread-safe: each thread gets its own connection (the web server runs handlers in a pool).
    """

    def __init__(self, url: str | Path, *, create: bool = True):
        self.url = str(url)
        self.dialect = _Dialect("postgresql" if self.url.startswith(("postgresql://", "postgres://")) else "sqlite")
        self._local = threading.local()
        self._all_conns: list[Any] = []
        self._lock = threading.Lock()
        # SQLite has one writer at a time anyway; queueing this process's writers on a lock instead
        # of SQLite's busy handler (which sleeps 1..100 ms between retries) keeps the latency tail short
        self._write_lock = threading.Lock()
        self._ckpt_stop: threading.Event | None = None
        if self.dialect.name == "sqlite":
            path = Path(_sqlite_path(self.url))
            if not create and not path.exists():
                raise FileNotFoundError(f"no review database at {path}; run `curate review mine` first")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.init_schema() if create else self._require_schema()
        except (BadInput, FileNotFoundError):
            self.close()
            raise

    # --- connections ----------------------------------------------------------------------
    def _connect(self):
        if self.dialect.name == "sqlite":
            conn = sqlite3.connect(_sqlite_path(self.url), timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages: the queue index of 1M items stays hot
            conn.execute("PRAGMA mmap_size=268435456")
            if getattr(self, "_bg_checkpoints", False):
                # a background thread checkpoints; the automatic one stays only as a safety net
                conn.execute(f"PRAGMA wal_autocheckpoint={_BG_AUTOCHECKPOINT_PAGES}")
        else:
            try:
                import psycopg
            except ImportError as e:  # pragma: no cover - depends on the install
                raise RuntimeError("a postgresql:// review database needs `pip install psycopg[binary]`") from e
            # autocommit: transactions are opened explicitly by ``tx`` (``conn.transaction()``)
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        with self._lock:
            self._all_conns.append(conn)
        return conn

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and self.dialect.name != "sqlite" and (conn.closed or conn.broken):
            # the server restarted or dropped us: this thread reconnects instead of failing forever
            with self._lock:
                if conn in self._all_conns:
                    self._all_conns.remove(conn)
            conn = None
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def tx(self, write: bool = True, single: bool = False) -> Iterator[_Tx]:
        """One transaction. SQLite write transactions take the write lock up front
        (``BEGIN IMMEDIATE``) so two writers never deadlock upgrading a read lock.
        ``single``: a read of one statement, run in autocommit (atomic by itself)."""
        conn = self._conn()
        if single and not write:
            cur = conn.cursor()
            try:
                yield _Tx(cur, self.dialect)
            finally:
                cur.close()
            return
        if self.dialect.name == "sqlite":
            cur = conn.cursor()
            if write:
                self._write_lock.acquire()
            try:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield _Tx(cur, self.dialect)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            finally:
                if write:
                    self._write_lock.release()
        else:
            with conn.transaction():
                with conn.cursor() as cur:
                    yield _Tx(cur, self.dialect)

    def start_background_checkpoints(self, every_s: float = 1.0) -> None:
        """SQLite only (a no-op on PostgreSQL): copy the WAL back into the database file from a
        background thread, instead of in whichever request's commit crosses the auto-checkpoint
        size. Why: that checkpoint writes and fsyncs megabytes inside a request (a latency spike
        for the annotator who happens to commit then, and for everyone queued on the write lock).
        PASSIVE checkpoints never block readers or the writer; the long-running server calls this,
        short CLI runs keep SQLite's automatic checkpoints."""
        if self.dialect.name != "sqlite" or self._ckpt_stop is not None:
            return
        self._ckpt_stop = stop = threading.Event()
        self._bg_checkpoints = True

        def loop():
            conn = sqlite3.connect(_sqlite_path(self.url), timeout=30, isolation_level=None, check_same_thread=False)
            try:
                while not stop.wait(every_s):
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        pass  # busy or closing: the next round (or SQLite's safety net) catches up
            finally:
                conn.close()

        threading.Thread(target=loop, name="review-wal-checkpoint", daemon=True).start()
        with self._lock:
            for c in self._all_conns:  # connections opened before this call
                c.execute(f"PRAGMA wal_autocheckpoint={_BG_AUTOCHECKPOINT_PAGES}")

    def close(self) -> None:
        if self._ckpt_stop is not None:
            self._ckpt_stop.set()
            self._ckpt_stop = None
        with self._lock:
            for c in self._all_conns:
                try:
                    c.close()
                except Exception:
                    pass
            self._all_conns.clear()
        self._local = threading.local()

    def init_schema(self) -> None:
        with self.tx() as t:
            if self.dialect.name != "sqlite":
                # two processes creating the schema at once would race on CREATE ... IF NOT EXISTS
                t.exec("SELECT pg_advisory_xact_lock(?)", (7_260_412,))
            for stmt in _DDL.format(serial=self.dialect.serial).split(";"):
                if stmt.strip():
                    t.exec(stmt)
            for name in COUNTERS:
                t.exec("INSERT INTO counters (name, value) VALUES (?, 0) ON CONFLICT (name) DO NOTHING", (name,))
            t.exec("INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING", (SCHEMA_VERSION,))
            found = t.one("SELECT value FROM meta WHERE key = 'schema_version'")
        if found:
            self._check_version(found[0])

    def _check_version(self, found: str) -> None:
        """Tables of another layout: refused before anything reads them."""
        if found != SCHEMA_VERSION:
            raise BadInput(
                f"the review database {redact_url(self.url)} has schema version {found}; this version of zcurate reads "
                f"version {SCHEMA_VERSION}: export its decisions with the version that wrote it, or use a new database"
            )

    def _require_schema(self) -> None:
        """For ``create=False``: FileNotFoundError unless the review tables are there (a
        PostgreSQL database that exists but was never mined, an SQLite file of something else),
        and the schema version check of ``init_schema``. Why: a mistyped ``--db`` must not
        quietly become a new, empty review database that accounts and annotators then use."""
        exists = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        if self.dialect.name != "sqlite":
            exists = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'meta'"
        with self.tx(write=False) as t:
            found = t.one(exists)[0] and t.one("SELECT value FROM meta WHERE key = 'schema_version'")
        if not found:
            raise FileNotFoundError(f"no review database at {redact_url(self.url)}; run `curate review mine` first")
        self._check_version(found[0])

    # --- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as t:
            t.exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.tx(write=False) as t:
            r = t.one("SELECT value FROM meta WHERE key = ?", (key,))
        return r[0] if r else default

    # --- users and sessions ------------------------------------------------------------------
    def add_user(self, name: str, password: str, role: str = "annotator", *, replace: bool = False) -> User:
        """Create an account (or reset its password and role with ``replace``)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        name = name.strip()
        if not name or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
            raise ValueError("user name must be 1-64 printable characters without spaces")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        pw = hash_password(password)
        with self.tx() as t:
            row = t.one("SELECT id FROM users WHERE name = ?", (name,))
            if row and not replace:
                raise ValueError(f"user {name!r} exists; add --reset to change the password (replace=True from Python)")
            if row:
                t.exec("UPDATE users SET pw_hash = ?, role = ?, active = 1 WHERE id = ?", (pw, role, row[0]))
                t.exec("DELETE FROM sessions WHERE user_id = ?", (row[0],))  # old sessions end with the password
                uid = row[0]
            else:
                uid = t.one(
                    "INSERT INTO users (name, pw_hash, role, created) VALUES (?, ?, ?, ?) RETURNING id", (name, pw, role, time.time())
                )[0]
            t.audit(None, "add_user", name=name, role=role, reset=bool(row))
        return User(int(uid), name, role)

    def authenticate(
        self, name: str, password: str, *, addr: str | None = None, policy: LoginPolicy | None = None, now: float | None = None
    ) -> User | None:
        """The user for a right password, else None; raises ``Throttled`` (before hashing) while
        the name or the client address ``addr`` is locked out.

        The throttle keys on the name as typed, whether or not such an account exists, so a
        429 tells nothing about which names are real. ``now``: an injectable clock (tests)."""
        policy = policy or LoginPolicy()
        now = time.time() if now is None else now
        shown = name[:64].replace("\x00", "\ufffd")  # stored text has no NUL (PostgreSQL refuses it)
        keys = sorted({f"user:{shown}", *([f"addr:{addr[:64]}"] if addr else [])})
        self._throttle_begin(keys, policy, now)
        row = None
        if "\x00" not in name:  # no account can have such a name (add_user refuses it)
            with self.tx(write=False) as t:
                row = t.one("SELECT id, name, role, pw_hash, active FROM users WHERE name = ?", (name,))
        ok = verify_password(password, row[3] if row else DUMMY_HASH)  # same cost for unknown names
        ok = bool(ok and row and row[4])
        with self.tx() as t:
            t.audit(row[0] if row else None, "login" if ok else "login_failed", name=shown, **({"addr": addr[:64]} if addr else {}))
            if ok:
                self._throttle_success(t, keys)
            else:
                self._throttle_failure(t, keys, policy, now)
        return User(int(row[0]), row[1], row[2]) if ok else None

    def _throttle_begin(self, keys: list[str], policy: LoginPolicy, now: float) -> None:
        """Count this attempt against each key before the hash runs, or raise ``Throttled``.
        Counting up front (not after the hash) bounds the hashes that parallel attempts can
        start to ``limit`` per key; a success gives its count back (``_throttle_success``)."""
        with self.tx() as t:
            wait = 0.0
            rows = {}
            for key in keys:  # sorted: two logins lock the same rows in the same order
                rows[key] = r = self._throttle_row(t, key, policy, now)
                if r["locked_until"] > now:
                    wait = max(wait, r["locked_until"] - now)
                elif r["failures"] >= policy.limit(key):  # others' attempts in flight fill the budget
                    wait = max(wait, policy.lockout(r["lockouts"] + 1))
            if wait:
                raise Throttled(wait)
            for key, r in rows.items():
                t.exec("UPDATE login_throttle SET failures = ?, last = ? WHERE key = ?", (r["failures"] + 1, now, key))

    def _throttle_row(self, t: _Tx, key: str, policy: LoginPolicy, now: float) -> dict[str, Any]:
        """The key's state, locked for this transaction; an expired window or a long quiet
        spell starts it afresh."""
        t.exec("INSERT INTO login_throttle (key, window_start, last) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING", (key, now, now))
        f, ws, lu, lo, last = t.one(
            f"SELECT failures, window_start, locked_until, lockouts, last FROM login_throttle WHERE key = ? {self.dialect.lock_row}", (key,)
        )
        if now - max(last, lu) > policy.max_lockout_s:
            f, ws, lu, lo = 0, now, 0.0, 0
        elif now - ws > policy.window_s and lu <= now:
            f, ws = 0, now
        t.exec(
            "UPDATE login_throttle SET failures = ?, window_start = ?, locked_until = ?, lockouts = ? WHERE key = ?", (f, ws, lu, lo, key)
        )
        return {"failures": int(f), "window_start": ws, "locked_until": lu, "lockouts": int(lo)}

    def _throttle_failure(self, t: _Tx, keys: list[str], policy: LoginPolicy, now: float) -> None:
        """A key whose failures reached its limit is locked, with the next (longer) backoff; audited."""
        for key in keys:
            f, lu, lo = t.one(f"SELECT failures, locked_until, lockouts FROM login_throttle WHERE key = ? {self.dialect.lock_row}", (key,))
            if f < policy.limit(key) or lu > now:
                continue
            until = now + policy.lockout(lo + 1)
            t.exec(
                "UPDATE login_throttle SET failures = 0, window_start = ?, locked_until = ?, lockouts = ? WHERE key = ?",
                (now, until, lo + 1, key),
            )
            kind, _, who = key.partition(":")
            t.audit(
                None, "login_lockout", **{"name" if kind == "user" else "addr": who}, failures=int(f), lockout_s=until - now, until=until
            )

    @staticmethod
    def _throttle_success(t: _Tx, keys: list[str]) -> None:
        """A right password resets its account; the address only gets this attempt's count back
        (else anyone with one account could clear their address between guesses at others)."""
        for key in keys:
            if key.startswith("user:"):
                t.exec("DELETE FROM login_throttle WHERE key = ?", (key,))
            else:
                t.exec("UPDATE login_throttle SET failures = failures - 1 WHERE key = ? AND failures > 0", (key,))

    def create_session(self, user: User, ttl_s: float) -> tuple[str, str]:
        """(session token for the cookie, CSRF token for forms). Only the token's hash is stored."""
        token, csrf = new_token(), new_token()
        now = time.time()
        with self.tx() as t:
            t.exec(
                "INSERT INTO sessions (token_hash, user_id, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
                (token_digest(token), user.id, csrf, now, now + ttl_s),
            )
            t.exec("DELETE FROM sessions WHERE expires < ?", (now,))  # indexed by PK scan; few rows
        return token, csrf

    def session(self, token: str | None) -> tuple[User, str] | None:
        """(user, csrf token) of a live session, else None."""
        if not token or len(token) > 256:
            return None
        # one statement: atomic on its own, no BEGIN/COMMIT round trip (every request does this)
        with self.tx(write=False, single=True) as t:
            row = t.one(
                "SELECT u.id, u.name, u.role, s.csrf FROM sessions s JOIN users u ON u.id = s.user_id "
                "WHERE s.token_hash = ? AND s.expires > ? AND u.active = 1",
                (token_digest(token), time.time()),
            )
        return (User(int(row[0]), row[1], row[2]), row[3]) if row else None

    def end_session(self, token: str, user: User | None = None) -> None:
        with self.tx() as t:
            t.exec("DELETE FROM sessions WHERE token_hash = ?", (token_digest(token),))
            t.audit(user.id if user else None, "logout")

    def set_active(self, name: str, active: bool) -> dict[str, Any]:
        """Deactivate (or reactivate) an account. Deactivating ends its sessions at once and hands
        its leased items back to the queue, so nobody waits on a lease the person cannot renew;
        its decisions stay. Raises ValueError for an unknown name."""
        with self.tx() as t:
            row = t.one("SELECT id, active FROM users WHERE name = ?", (name,))
            if not row:
                raise ValueError(f"no user {name!r}; `curate review user list` shows the accounts")
            t.exec("UPDATE users SET active = ? WHERE id = ?", (int(active), row[0]))
            ended = released = 0
            if not active:
                ended = t.one("SELECT COUNT(*) FROM sessions WHERE user_id = ?", (row[0],))[0]
                released = t.one("SELECT COUNT(*) FROM items WHERE lease_user = ? AND status = 0", (row[0],))[0]
                t.exec("DELETE FROM sessions WHERE user_id = ?", (row[0],))
                t.exec("UPDATE items SET lease_user = NULL, lease_expires = 0 WHERE lease_user = ? AND status = 0", (row[0],))
            t.audit(None, "user_activated" if active else "user_deactivated", name=name, sessions_ended=ended, leases_released=released)
        return {"name": name, "active": active, "was_active": bool(row[1]), "sessions_ended": int(ended), "leases_released": int(released)}

    def user_table(self) -> list[dict[str, Any]]:
        """Every account with its role, whether it can log in, when it was made and its decisions."""
        with self.tx(write=False) as t:
            rows = t.all(
                "SELECT u.name, u.role, u.active, u.created, (SELECT COUNT(*) FROM decisions d WHERE d.user_id = u.id) "
                "FROM users u ORDER BY u.id"
            )
        return [{"name": r[0], "role": r[1], "active": bool(r[2]), "created": float(r[3]), "decisions": int(r[4])} for r in rows]

    def users(self) -> list[User]:
        with self.tx(write=False) as t:
            return [User(int(r[0]), r[1], r[2]) for r in t.all("SELECT id, name, role FROM users ORDER BY id")]

    # --- queue ------------------------------------------------------------------------------
    def enqueue(self, items: list[dict[str, Any]], batch: str, *, user: str | None = None, chunk: int = 5000) -> dict[str, Any]:
        """Add mined items. Each dict: ``row_id``, ``priority`` (higher first), ``payload`` (JSON-able),
        optional ``needed`` (1 or 2 annotators), ``gold_answer`` (keep/drop for gold items).

        A row already queued and still open (and not leased) gets the new priority and payload;
        a row already reviewed is left alone (its decisions stand). Returns counts.

        Gold: a new row, or a queued row nobody has decided yet, becomes a gold item (a gold
        row gets the new answer). A row already decided as a normal item cannot: those
        decisions were never measured against an answer. It is listed in ``gold_skipped`` with
        the reason instead of being dropped silently; ``gold`` counts the gold items really in
        the queue. Both keys are present when ``items`` has gold items."""
        for it in items:
            if it.get("gold_answer") is not None and it["gold_answer"] not in DECISIONS:
                raise ValueError(f"gold answer must be one of {DECISIONS}, got {it['gold_answer']!r}")
        seen: set[str] = set()
        items = [it for it in items if not (it["row_id"] in seen or seen.add(it["row_id"]))]  # first wins
        counts = {"added": 0, "updated": 0, "unchanged": 0, "gold": 0}
        skipped: list[dict[str, str]] = []
        for start in range(0, len(items), chunk):
            with self.tx() as t:
                self._enqueue_chunk(t, items[start : start + chunk], batch, counts, skipped)
        with self.tx() as t:
            t.audit(None, "enqueue", batch=batch, **counts, gold_skipped=len(skipped), by=user)
        out: dict[str, Any] = {k: counts[k] for k in ("added", "updated", "unchanged")}
        if any(it.get("gold_answer") is not None for it in items):
            out.update(gold=counts["gold"], gold_skipped=skipped)
        return out

    def _enqueue_chunk(self, t: _Tx, part: list[dict[str, Any]], batch: str, counts: dict[str, int], skipped: list) -> None:
        now = time.time()
        existing = self._queued(t, [it["row_id"] for it in part])
        new_rows, upd_rows, gold_rows = [], [], []
        new_gold = 0
        for it in part:
            rid, gold = it["row_id"], it.get("gold_answer")
            payload = json.dumps(it.get("payload", {}), default=str)
            ex = existing.get(rid)
            if ex is None:
                new_rows.append(
                    (rid, batch, float(it.get("priority", 0.0)), 1 if gold else 0, gold, int(it.get("needed", 1)), payload, now)
                )
                new_gold += gold is not None
                continue
            if ex["status"] == 0 and ex["done_count"] == 0 and ex["lease_user"] is None:
                upd_rows.append((float(it.get("priority", 0.0)), payload, batch, rid))
            else:
                counts["unchanged"] += 1
            if gold is None:
                continue
            if not ex["gold"] and (ex["status"] != 0 or ex["done_count"] > 0):
                skipped.append({"row_id": rid, "reason": "already reviewed as a normal item (its decisions stand, unmeasured)"})
                continue
            gold_rows.append((gold, rid))
            new_gold += not ex["gold"]
            counts["gold"] += 1
        t.many(
            "INSERT INTO items (row_id, batch, priority, gold, gold_answer, needed, payload, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        t.many("UPDATE items SET priority = ?, payload = ?, batch = ? WHERE row_id = ? AND status = 0", upd_rows)
        t.many("UPDATE items SET gold = 1, gold_answer = ? WHERE row_id = ?", gold_rows)
        t.bump(items_total=len(new_rows), items_open=len(new_rows), gold_items=new_gold)
        counts["added"] += len(new_rows)
        counts["updated"] += len(upd_rows)
        counts["gold"] += sum(r[3] for r in new_rows)

    @staticmethod
    def _queued(t: _Tx, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The queue state of those of ``ids`` already queued (500 per statement)."""
        out = {}
        for s in range(0, len(ids), 500):
            sub = ids[s : s + 500]
            marks = ",".join("?" * len(sub))
            for r in t.all(f"SELECT row_id, status, done_count, lease_user, gold FROM items WHERE row_id IN ({marks})", sub):
                out[r[0]] = {"status": r[1], "done_count": r[2], "lease_user": r[3], "gold": bool(r[4])}
        return out

    def _item_dict(self, r: tuple) -> dict[str, Any]:
        return {
            "id": int(r[0]),
            "row_id": r[1],
            "batch": r[2],
            "priority": r[3],
            "status": "open" if r[4] == 0 else "done",
            "gold": bool(r[5]),
            "needed": int(r[6]),
            "done_count": int(r[7]),
            "lease_user": r[8],
            "lease_expires": r[9],
            "payload": json.loads(r[10]),
        }

    def next_item(
        self, user: User, *, lease_s: float = 600.0, gold_rate: float = 0.0, rng: random.Random | None = None
    ) -> dict[str, Any] | None:
        """The annotator's current lease (renewed), else a newly leased item, else None (queue empty).

        With probability ``gold_rate`` a gold item this annotator has not answered is tried first."""
        now = time.time()
        d = self.dialect
        with self.tx() as t:
            cur = t.one(
                f"SELECT {_ITEM_COLS} FROM items WHERE lease_user = ? AND lease_expires > ? AND status = 0 ORDER BY lease_expires LIMIT 1",
                (user.id, now),
            )
            if cur:
                t.exec("UPDATE items SET lease_expires = ? WHERE id = ?", (now + lease_s, cur[0]))
                item = self._item_dict(cur)
                item["lease_expires"] = now + lease_s
                return item
            golds = [1, 0] if (rng or random).random() < gold_rate else [0, 1]
            for gold in golds:
                row = t.one(
                    f"UPDATE items SET lease_user = ?, lease_expires = ? WHERE id = ("
                    f" SELECT i.id FROM items i WHERE i.status = 0 AND i.gold = ? AND i.lease_expires < ?"
                    f"  AND NOT EXISTS (SELECT 1 FROM decisions x WHERE x.item_id = i.id AND x.user_id = ?)"
                    f"  AND NOT EXISTS (SELECT 1 FROM skips k WHERE k.item_id = i.id AND k.user_id = ?)"
                    f"  ORDER BY i.priority DESC, i.id LIMIT 1 {d.skip_locked})"
                    f" AND lease_expires < ? RETURNING {_ITEM_COLS}",
                    (user.id, now + lease_s, gold, now, user.id, user.id, now),
                )
                if row:
                    t.audit(user.id, "lease", int(row[0]), until=round(now + lease_s, 3))
                    return self._item_dict(row)
        return None

    def get_item(self, item_id: int) -> dict[str, Any]:
        with self.tx(write=False) as t:
            r = t.one(f"SELECT {_ITEM_COLS} FROM items WHERE id = ?", (item_id,))
        if not r:
            raise NotFound(f"no item {item_id}")
        return self._item_dict(r)

    def leased_item(self, user: User, item_id: int) -> dict[str, Any]:
        """The item if it is leased to ``user`` right now (what an annotator may look at)."""
        with self.tx(write=False) as t:
            r = t.one(
                f"SELECT {_ITEM_COLS} FROM items WHERE id = ? AND lease_user = ? AND lease_expires > ?", (item_id, user.id, time.time())
            )
            if not r:  # no such item is a 404, as for a decision on it; someone else's is a 403
                raise (
                    NotLeased(f"item {item_id} is not leased to you")
                    if t.one("SELECT 1 FROM items WHERE id = ?", (item_id,))
                    else NotFound(f"no item {item_id}")
                )
        return self._item_dict(r)

    def submit(
        self,
        user: User,
        item_id: int,
        decision: str,
        *,
        flag: bool = False,
        caption: str | None = None,
        tags: list[str] | None = None,
        reasons: list[str] | None = None,
    ) -> dict[str, Any]:
        """Record a decision. Idempotent: the same decision again answers ``duplicate: True``.

        Raises NotFound, NotLeased (no lease held, or it expired and someone else took the item),
        Conflict (a different decision from this annotator already exists)."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}")
        invisible = 0
        if caption is not None:  # a bidi override or zero-width space would change what others read, unseen
            caption, invisible = strip_invisible(caption)
        tags_j = json.dumps(list(tags or []))
        reasons_j = json.dumps(list(reasons or []))
        now = time.time()
        with self.tx() as t:
            item = t.one(
                f"SELECT id, status, gold, needed, done_count, lease_user FROM items WHERE id = ? {self.dialect.lock_row}", (item_id,)
            )
            if not item:
                raise NotFound(f"no item {item_id}")
            prev = t.one("SELECT decision, flag, caption, tags FROM decisions WHERE item_id = ? AND user_id = ?", (item_id, user.id))
            if prev:
                if (prev[0], bool(prev[1]), prev[2], prev[3]) == (decision, bool(flag), caption, tags_j):
                    return {"item_id": item_id, "decision": decision, "duplicate": True}
                t.audit(user.id, "submit_conflict", item_id, decision=decision)
                raise Conflict(f"item {item_id} already has a different decision from you")
            if item[5] != user.id:
                t.audit(user.id, "submit_not_leased", item_id)
                raise NotLeased(f"item {item_id} is not leased to you")
            t.exec(
                "INSERT INTO decisions (item_id, user_id, decision, flag, caption, tags, reasons, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, user.id, decision, int(bool(flag)), caption, tags_j, reasons_j, now),
            )
            done = not item[2] and item[4] + 1 >= item[3]
            t.exec(
                "UPDATE items SET done_count = done_count + 1, status = ?, lease_user = NULL, lease_expires = 0 WHERE id = ?",
                (1 if done else 0, item_id),
            )
            t.bump(decisions=1, flag=int(bool(flag)), items_open=-int(done), items_done=int(done), **{decision: 1})
            t.audit(
                user.id,
                "submit",
                item_id,
                decision=decision,
                flag=bool(flag),
                caption_changed=caption is not None,
                tags=len(tags or []),
                **({"invisible_removed": invisible} if invisible else {}),
            )
        return {"item_id": item_id, "decision": decision, "duplicate": False, "item_done": done}

    def skip(self, user: User, item_id: int) -> None:
        """Give the item back without a decision; it is not offered to this annotator again."""
        with self.tx() as t:
            n = t.exec("UPDATE items SET lease_user = NULL, lease_expires = 0 WHERE id = ? AND lease_user = ?", (item_id, user.id))
            if not n:
                raise (
                    NotLeased(f"item {item_id} is not leased to you")
                    if t.one("SELECT 1 FROM items WHERE id = ?", (item_id,))
                    else NotFound(f"no item {item_id}")
                )
            t.exec("INSERT INTO skips (item_id, user_id, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (item_id, user.id, time.time()))
            t.bump(skips=1)
            t.audit(user.id, "skip", item_id)

    def release_user(self, user: User) -> int:
        """Return all of an annotator's leases (logout)."""
        with self.tx() as t:
            n = t.exec("UPDATE items SET lease_user = NULL, lease_expires = 0 WHERE lease_user = ?", (user.id,))
            if n:
                t.audit(user.id, "release", count=n)
        return n

    def gold_feedback(self, user: User, item_id: int) -> str | None:
        """The expected answer of a gold item this annotator has decided, else None.

        Why keyed on the annotator's own decision: the answer is feedback on what they did, so
        an item they have not decided (or another's) tells nothing, not even that it is gold."""
        with self.tx(write=False) as t:
            r = t.one(
                "SELECT i.gold_answer FROM decisions d JOIN items i ON i.id = d.item_id WHERE d.item_id = ? AND d.user_id = ? AND i.gold = 1",
                (item_id, user.id),
            )
        return r[0] if r else None

    def undo(self, user: User, item_id: int, *, within_s: float = 300.0, lease_s: float = 600.0, allow_gold: bool = True) -> dict[str, Any]:
        """Take back this annotator's latest decision and give the item back to them, leased.

        Why only the latest, and only for ``within_s``: undo is for the slip noticed at once (a
        wrong key), not for revising history (that is ``reopen``, until the decision is applied).
        Counters go back in the same transaction, the decision row is deleted and the undo
        audited with what it removed. The annotator's other open leases (the next item they were
        given) go back to the queue, so the undone item is the one they see. Raises NotFound (no
        such decision of yours), Conflict (not your latest, too old, already applied to the
        dataset as ``reopen`` refuses it, or the item is now leased to someone else).
        ``allow_gold=False`` (the server shows gold answers after submit) also refuses a gold
        item: an answer seen and then changed would measure nothing."""
        now = time.time()
        with self.tx() as t:
            item, dec = self._own_decision_locked(t, user, item_id, allow_gold)
            self._check_undoable(t, user, item_id, item, dec, now, within_s)
            return self._take_back(t, user, item_id, item, dec, now + lease_s, "undo")

    def reopen(self, user: User, item_id: int, *, lease_s: float = 600.0, allow_gold: bool = True) -> dict[str, Any]:
        """Re-open one of this annotator's decisions that no apply has merged into the dataset
        yet: as ``undo`` (decision deleted, counters back, the item leased to them again,
        audited), for any such decision, however old. Why the limit: once applied, the dataset
        version holds the decision; changing it here would leave the two disagreeing, so a
        correction is then a new review. Raises NotFound, Conflict (applied, a gold answer seen,
        or someone else holds the item)."""
        now = time.time()
        with self.tx() as t:
            item, dec = self._own_decision_locked(t, user, item_id, allow_gold)
            if dec[0] <= self._applied_through(t):
                raise Conflict("this decision is already applied to the dataset; a correction is a new review")
            if item[2] is not None and item[2] != user.id and item[3] > now:
                raise Conflict("someone else is reviewing this item now")
            return self._take_back(t, user, item_id, item, dec, now + lease_s, "reopen")

    def _own_decision_locked(self, t: _Tx, user: User, item_id: int, allow_gold: bool) -> tuple[tuple, tuple]:
        """(item row, locked; the user's decision on it) or NotFound / Conflict (gold answer seen)."""
        item = t.one(f"SELECT status, gold, lease_user, lease_expires FROM items WHERE id = ? {self.dialect.lock_row}", (item_id,))
        dec = t.one("SELECT id, decision, flag, caption, created FROM decisions WHERE item_id = ? AND user_id = ?", (item_id, user.id))
        if not item or not dec:
            raise NotFound(f"no decision of yours on item {item_id}")
        if item[1] and not allow_gold:
            raise Conflict("this decision's expected answer was shown to you; it cannot be taken back")
        return item, dec

    @staticmethod
    def _take_back(t: _Tx, user: User, item_id: int, item: tuple, dec: tuple, lease_until: float, action: str) -> dict[str, Any]:
        """Delete the decision, put the counters back, lease the item to the user again (their
        other open leases go back to the queue) and audit what was removed."""
        t.exec("DELETE FROM decisions WHERE id = ?", (dec[0],))
        released = t.exec(
            "UPDATE items SET lease_user = NULL, lease_expires = 0 WHERE lease_user = ? AND id <> ? AND status = 0", (user.id, item_id)
        )
        t.exec(
            "UPDATE items SET status = 0, done_count = done_count - 1, lease_user = ?, lease_expires = ? WHERE id = ?",
            (user.id, lease_until, item_id),
        )
        reopened = int(item[0] == 1)
        t.bump(decisions=-1, flag=-int(bool(dec[2])), items_open=reopened, items_done=-reopened, **{dec[1]: -1})
        t.audit(user.id, action, item_id, decision=dec[1], flag=bool(dec[2]), caption_changed=dec[3] is not None, released=released)
        return {"item_id": item_id, "undone": dec[1], "flag": bool(dec[2])}

    @staticmethod
    def _applied_through(t: _Tx) -> int:
        r = t.one("SELECT value FROM meta WHERE key = 'applied_through'")
        return int(r[0]) if r else 0

    def applied_through(self) -> int:
        """The highest decision id an apply has merged into the dataset (0 before any): every
        decision with an id up to it is applied (ids only grow; a re-decision gets a new one)."""
        with self.tx(write=False) as t:
            return self._applied_through(t)

    def mark_applied(self, user: User | None, through_id: int, **detail: Any) -> None:
        """Record that an apply merged the decisions up to ``through_id`` (never moves back: two
        applies finishing out of order keep the later one), audited as ``apply``."""
        with self.tx() as t:
            if through_id > self._applied_through(t):
                t.exec(
                    "INSERT INTO meta (key, value) VALUES ('applied_through', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(int(through_id)),),
                )
            t.audit(user.id if user else None, "apply", applied_through=int(through_id), **detail)

    @classmethod
    def _check_undoable(cls, t: _Tx, user: User, item_id: int, item: tuple, dec: tuple, now: float, within_s: float) -> None:
        """Conflict unless ``dec`` is the user's latest decision, recent, not yet applied, on an
        item nobody else holds. Applied, as for ``reopen``: the dataset version already holds the
        decision, and deleting it here would leave the two disagreeing."""
        latest = t.one("SELECT item_id FROM decisions WHERE user_id = ? ORDER BY id DESC LIMIT 1", (user.id,))
        if latest[0] != item_id:
            raise Conflict("only your latest decision can be undone")
        if now - dec[4] > within_s:
            raise Conflict(f"decisions can be undone for {within_s:.0f} s; this one is older")
        if dec[0] <= cls._applied_through(t):
            raise Conflict("this decision is already applied to the dataset; a correction is a new review")
        if item[2] is not None and item[2] != user.id and item[3] > now:
            raise Conflict("someone else is reviewing this item now")

    # --- reading back ------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        with self.tx(write=False) as t:
            return {r[0]: int(r[1]) for r in t.all("SELECT name, value FROM counters")}

    def user_decision_count(self, user: User) -> int:
        with self.tx(write=False) as t:
            return int(t.one("SELECT COUNT(*) FROM decisions WHERE user_id = ?", (user.id,))[0])

    def decisions(self, *, since_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """All decisions joined with their item and annotator, oldest first (export, apply)."""
        q = (
            "SELECT d.id, i.id, i.row_id, i.gold, i.gold_answer, i.needed, u.name, d.decision, d.flag, d.caption, "
            "d.tags, d.reasons, d.created, i.payload FROM decisions d JOIN items i ON i.id = d.item_id "
            "JOIN users u ON u.id = d.user_id WHERE d.id > ? ORDER BY d.id"
        )
        params: list[Any] = [since_id]
        if limit:
            q += " LIMIT ?"
            params.append(limit)
        with self.tx(write=False) as t:
            rows = t.all(q, params)
        return [
            {
                "decision_id": r[0],
                "item_id": r[1],
                "row_id": r[2],
                "gold": bool(r[3]),
                "gold_answer": r[4],
                "needed": r[5],
                "user": r[6],
                "decision": r[7],
                "flag": bool(r[8]),
                "caption": r[9],
                "tags": json.loads(r[10] or "[]"),
                "reasons": json.loads(r[11] or "[]"),
                "time": r[12],
                "payload": json.loads(r[13]),
            }
            for r in rows
        ]

    def tag_labels(self) -> dict[str, dict[str, str]]:
        """Concept id -> ``{"en", "zh"}`` from every queued payload's ``tag_labels`` (the tag
        field's suggestions). Why from the queue: the names were looked up in the graph when
        the items were mined, and the server may have no graph of its own. Only the labels are
        read out of the JSON in SQL, never the whole payload."""
        labels = "json_extract(payload, '$.tag_labels')" if self.dialect.name == "sqlite" else "(payload::jsonb -> 'tag_labels')::text"
        with self.tx(write=False) as t:
            rows = t.all(f"SELECT DISTINCT {labels} FROM items WHERE payload LIKE ?", ('%"tag_labels"%',))
        out: dict[str, dict[str, str]] = {}
        for (raw,) in rows:
            for cid, lab in (json.loads(raw) if raw else {}).items():
                if isinstance(lab, dict):
                    out[cid] = {"en": str(lab.get("en") or ""), "zh": str(lab.get("zh") or "")}
        return out

    def flagged_rows(self) -> list[str]:
        with self.tx(write=False) as t:
            return [r[0] for r in t.all("SELECT DISTINCT i.row_id FROM decisions d JOIN items i ON i.id = d.item_id WHERE d.flag = 1")]

    def per_user(self) -> list[dict[str, Any]]:
        """Decisions and gold accuracy per annotator (admin page)."""
        with self.tx(write=False) as t:
            rows = t.all(
                "SELECT u.name, u.role, COUNT(d.id), "
                " SUM(CASE WHEN i.gold = 1 THEN 1 ELSE 0 END), "
                " SUM(CASE WHEN i.gold = 1 AND d.decision = i.gold_answer THEN 1 ELSE 0 END), "
                " SUM(CASE WHEN d.flag = 1 THEN 1 ELSE 0 END), MAX(d.created) "
                "FROM users u LEFT JOIN decisions d ON d.user_id = u.id LEFT JOIN items i ON i.id = d.item_id "
                "GROUP BY u.id, u.name, u.role ORDER BY u.name"
            )
            leases = dict(
                t.all(
                    "SELECT lease_user, COUNT(*) FROM items WHERE lease_user IS NOT NULL AND lease_expires > ? GROUP BY lease_user",
                    (time.time(),),
                )
            )
            names = dict(t.all("SELECT id, name FROM users"))
        held = {names.get(k): v for k, v in leases.items()}
        out = []
        for name, role, n, ng, nok, nflag, last in rows:
            out.append(
                {
                    "user": name,
                    "role": role,
                    "decisions": int(n or 0),
                    "gold_seen": int(ng or 0),
                    "gold_correct": int(nok or 0),
                    "gold_accuracy": (int(nok) / int(ng)) if ng else None,
                    "flags": int(nflag or 0),
                    "last": last,
                    "leases": int(held.get(name, 0)),
                }
            )
        return out

    def double_annotated(self) -> list[tuple[str, str]]:
        """(first, second) decisions of non-gold items that two annotators decided (for kappa)."""
        with self.tx(write=False) as t:
            rows = t.all(
                "SELECT d.item_id, d.decision FROM decisions d JOIN items i ON i.id = d.item_id "
                "WHERE i.needed >= 2 AND i.gold = 0 AND i.done_count >= 2 ORDER BY d.item_id, d.id"
            )
        pairs, cur, first = [], None, None
        for item_id, dec in rows:
            if item_id != cur:
                cur, first = item_id, dec
            elif first is not None:
                pairs.append((first, dec))
                first = None
        return pairs

    def audit_tail(self, n: int = 50) -> list[dict[str, Any]]:
        with self.tx(write=False) as t:
            rows = t.all(
                "SELECT a.ts, u.name, a.action, a.item_id, a.detail FROM audit a LEFT JOIN users u "
                "ON u.id = a.user_id ORDER BY a.id DESC LIMIT ?",
                (n,),
            )
        return [{"time": r[0], "user": r[1], "action": r[2], "item_id": r[3], "detail": r[4]} for r in rows]

    def own_decisions(self, user: User, *, limit: int = 50, offset: int = 0, item_id: int | None = None) -> list[dict[str, Any]]:
        """This annotator's decisions, newest first, with their item (history page): only rows
        whose ``user_id`` is theirs, so no id in a URL can show another person's decision."""
        q = (
            "SELECT d.id, i.id, i.row_id, d.decision, d.flag, d.caption, d.tags, d.reasons, d.created, i.status, i.payload "
            "FROM decisions d JOIN items i ON i.id = d.item_id WHERE d.user_id = ?"
        )
        params: list[Any] = [user.id]
        if item_id is not None:
            q += " AND d.item_id = ?"
            params.append(item_id)
        with self.tx(write=False) as t:
            rows = t.all(q + " ORDER BY d.id DESC LIMIT ? OFFSET ?", [*params, limit, offset])
        return [self._own_decision(r) for r in rows]

    @staticmethod
    def _own_decision(r: tuple) -> dict[str, Any]:
        payload = json.loads(r[10])
        return {
            "decision_id": int(r[0]),
            "item_id": int(r[1]),
            "row_id": r[2],
            "decision": r[3],
            "flag": bool(r[4]),
            "caption": r[5],
            "tags": json.loads(r[6] or "[]"),
            "reasons": json.loads(r[7] or "[]"),
            "time": float(r[8]),
            "item_open": r[9] == 0,
            "original_caption": payload.get("caption") or "",
        }

    def audit_page(
        self, *, user: str | None = None, action: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """(rows newest first, total matching) of the audit log, filtered by user name and action."""
        where, params = [], []
        if user:
            where.append("u.name = ?")
            params.append(user)
        if action:
            where.append("a.action = ?")
            params.append(action)
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        base = " FROM audit a LEFT JOIN users u ON u.id = a.user_id" + cond
        with self.tx(write=False) as t:
            total = int(t.one("SELECT COUNT(*)" + base, params)[0])
            rows = t.all(
                "SELECT a.ts, u.name, a.action, a.item_id, a.detail" + base + " ORDER BY a.id DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
        return [{"time": r[0], "user": r[1], "action": r[2], "item_id": r[3], "detail": r[4]} for r in rows], total

    def audit_actions(self) -> list[str]:
        """The actions the audit log holds (the audit page's filter choices)."""
        with self.tx(write=False) as t:
            return [r[0] for r in t.all("SELECT DISTINCT action FROM audit ORDER BY action")]

    def audit_count(self, action: str | None = None) -> int:
        with self.tx(write=False) as t:
            if action:
                return int(t.one("SELECT COUNT(*) FROM audit WHERE action = ?", (action,))[0])
            return int(t.one("SELECT COUNT(*) FROM audit")[0])

    def log(self, user: User | None, action: str, item_id: int | None = None, **detail: Any) -> None:
        """Audit an action that changes no review state (export, page views of admin data, apply)."""
        with self.tx() as t:
            t.audit(user.id if user else None, action, item_id, **detail)
