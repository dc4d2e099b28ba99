"""The Lance system of record: open/create by path or object-store URI, versions, diffs, reads.

Every job's commit is a new Lance version, so any state can be reproduced (``version=``) and
compared (``diff``). Engines add column groups through ``curation.runner``; this module holds
the few operations that are not per-fragment work.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import UserError
from curation.schema import SAMPLES_SCHEMA, group_of

__all__ = ["Store", "DatasetBusyError", "IdsAddedMeanwhile", "is_remote", "storage_options_from_env"]

_BLOB_TYPES = (pa.binary(), pa.large_binary())


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def storage_options_from_env(uri: str) -> dict[str, str]:
    """Object-store options from the usual AWS variables (plus ``AWS_ENDPOINT`` for S3-compatible
    servers such as MinIO or moto), so the same job runs on ``s3://`` with no code change."""
    if not str(uri).startswith(("s3://", "s3a://")):
        return {}
    opts: dict[str, str] = {}
    for env, key in [
        ("AWS_ENDPOINT", "aws_endpoint"),
        ("AWS_ENDPOINT_URL", "aws_endpoint"),
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_REGION", "aws_region"),
        ("AWS_DEFAULT_REGION", "aws_region"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ]:
        if os.environ.get(env) and key not in opts:
            opts[key] = os.environ[env]
    if opts.get("aws_endpoint", "").startswith("http://"):
        opts["allow_http"] = "true"
    return opts


class DatasetBusyError(UserError, RuntimeError):
    """Another process holds a job lock of this dataset (``Store.lock(..., wait=False)``)."""

    def __init__(self, name: str, holder: str, path: Path):
        super().__init__(f"{name} is held ({holder}); lock file {path}")
        self.name, self.holder, self.path = name, holder, path


class IdsAddedMeanwhile(RuntimeError):
    """Rows with some of the ids being committed landed after the job read the dataset (two
    ingests of one source at once): appending would store those rows twice."""

    def __init__(self, count: int, version: int):
        super().__init__(f"{count} of these rows were added by another job (now v{version})")
        self.count, self.version = count, version


def _lock_holder(path: Path) -> str:
    """'pid N, host H, since T' of a lock file's holder (its own record), for messages."""
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        h = {}
    return f"pid {h.get('pid', '?')}, host {h.get('host', '?')}, since {h.get('since', '?')}"


def _new_data_ids(ds: lance.LanceDataset, read_version: int | None) -> set[str]:
    """Ids of rows in fragments that ``read_version`` did not have (all when it is None)."""
    old = set() if read_version is None else {f.fragment_id for f in ds.checkout_version(read_version).get_fragments()}
    new = [f for f in ds.get_fragments() if f.fragment_id not in old]
    return set(ds.scanner(columns=["id"], fragments=new).to_table().column("id").to_pylist()) if new else set()


def _job_of(ds: lance.LanceDataset, version: int) -> dict[str, str]:
    """The commit message and ``curate.*`` properties of the transaction that made ``version``
    ({} when Lance kept no transaction for it, e.g. a cleaned-up old version)."""
    from lance.dataset import LANCE_COMMIT_MESSAGE_KEY

    try:
        tx = ds.read_transaction(version)
    except (OSError, ValueError, RuntimeError):
        return {}
    props = dict(getattr(tx, "transaction_properties", None) or {})
    job = {k.removeprefix("curate."): v for k, v in props.items() if k.startswith("curate.")}
    if props.get(LANCE_COMMIT_MESSAGE_KEY):
        job["message"] = props[LANCE_COMMIT_MESSAGE_KEY]
    if tx is not None and "message" not in job:
        job["message"] = type(tx.operation).__name__.lower()  # a commit without a message: its operation
    return job


STATE_MANIFEST = "manifest.json"  # in a pushed state folder: written last, compared on pull


def s3_filesystem(options: dict[str, Any]):
    """A pyarrow ``S3FileSystem`` from Lance-style object-store options (``aws_endpoint``,
    ``aws_access_key_id``, ...; the unprefixed spellings too). One per distinct options, reused:
    an S3 client costs more to build than a small object costs to read, and pyarrow's are
    thread-safe."""
    return _s3_filesystem(tuple(sorted((k, str(v)) for k, v in options.items() if v is not None)))


@functools.lru_cache(maxsize=16)
def _s3_filesystem(options: tuple) -> Any:
    import pyarrow.fs as pafs

    o = dict(options)
    kw: dict[str, Any] = {}
    endpoint = o.get("aws_endpoint") or o.get("aws_endpoint_url") or o.get("endpoint")
    if endpoint:
        sch, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host or sch, scheme=sch if host else "https")
    key = o.get("aws_access_key_id") or o.get("access_key_id")
    if key:
        kw.update(
            access_key=key,
            secret_key=o.get("aws_secret_access_key") or o.get("secret_access_key"),
            session_token=o.get("aws_session_token") or o.get("session_token"),
        )
    region = o.get("aws_region") or o.get("region")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def _check_relpath(relpath: str) -> str:
    rel = str(relpath).strip("/")
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise ValueError(f"state path must be relative, inside the state folder: {relpath!r}")
    return rel


def _remote_exists(fs: Any, key: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(key).type == pafs.FileType.File


def _read_remote(fs: Any, key: str) -> bytes:
    with fs.open_input_stream(key) as f:
        return f.read()


def _tmp_of(path: Path) -> Path:
    import uuid

    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # unique: actors may pull at once


def _atomic_write(path: Path, data: bytes) -> None:
    """Write then rename: a reader (another actor on this node) sees the old file or the new one."""
    tmp = _tmp_of(path)
    tmp.write_bytes(data)
    tmp.replace(path)


def _remote_files(fs, folder: str) -> list[str]:
    """Every file's path under ``folder`` in ``fs``."""
    import pyarrow.fs as pafs

    return [i.path for i in fs.get_file_info(pafs.FileSelector(folder, recursive=True)) if i.type == pafs.FileType.File]


def _download(fs: Any, key: str, path: Path) -> None:
    """Stream one object to ``path`` (bounded memory for a multi-GB index), atomically."""
    import shutil

    tmp = _tmp_of(path)
    try:
        with fs.open_input_stream(key) as f, open(tmp, "wb") as out:
            shutil.copyfileobj(f, out, 8 << 20)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Store:
    """A handle on one samples dataset. Cheap and picklable: Ray workers get a copy."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.uri = str(self.uri)
        if not is_remote(self.uri):
            self.uri = str(Path(self.uri).expanduser().resolve())
        if not self.storage_options:
            self.storage_options = storage_options_from_env(self.uri)

    # --- open / create -----------------------------------------------------------------------
    def exists(self) -> bool:
        try:
            self.open()
            return True
        except (ValueError, FileNotFoundError, OSError):
            return False

    def open(self, version: int | str | None = None) -> lance.LanceDataset:
        return lance.dataset(self.uri, version=version, storage_options=self.storage_options or None)

    def create(self, data: pa.Table | Iterable[pa.RecordBatch], schema: pa.Schema = SAMPLES_SCHEMA) -> lance.LanceDataset:
        """Create (or overwrite) the dataset with the given rows."""
        if isinstance(data, pa.Table):
            data = data.cast(schema)
        return lance.write_dataset(data, self.uri, schema=schema, mode="overwrite", storage_options=self.storage_options or None)

    def commit_rows(
        self,
        fragments: list,
        read_version: int | None,
        schema: pa.Schema = SAMPLES_SCHEMA,
        *,
        unique_ids: bool = True,
        message: str = "ingest",
    ) -> lance.LanceDataset:
        """Commit newly written fragments: create the dataset if it is still absent, else append.

        Why: two jobs that both saw "no dataset" must not both ``Overwrite`` (the later one would
        drop the earlier one's rows). Under the ``commit-rows`` lock the creator is decided by
        looking again; the others append on the version they find, retrying on Lance conflicts.
        With ``unique_ids``, rows whose id landed after ``read_version`` raise
        ``IdsAddedMeanwhile`` (the caller re-reads against the new version) instead of being
        stored twice. Remote stores: the lock only orders jobs on this machine; across machines
        appends rely on Lance's conflict checks, and two creators whose commits start within the
        same few milliseconds can still race (Lance has no create-only commit to close it)."""
        from lance import LanceDataset, LanceOperation
        from lance.commit import CommitConflictError

        opts = self.storage_options or None
        with self.lock("commit-rows"):
            for _ in range(20):
                latest = self.open() if self.exists() else None
                try:
                    if latest is None:
                        op = LanceOperation.Overwrite(schema, fragments)
                        return LanceDataset.commit(self.uri, op, storage_options=opts, commit_message=message)
                    if unique_ids and latest.version != read_version:
                        self._check_no_overlap(fragments, latest, read_version)
                    op = LanceOperation.Append(fragments)
                    return LanceDataset.commit(self.uri, op, read_version=latest.version, storage_options=opts, commit_message=message)
                except CommitConflictError:  # another commit landed first (a stage, a remote creator): look again
                    continue
        raise RuntimeError(f"{message}: gave up after 20 commit conflicts on {self.uri}")

    def _check_no_overlap(self, fragments: list, latest: lance.LanceDataset, read_version: int | None) -> None:
        """Raise ``IdsAddedMeanwhile`` when a row of the uncommitted ``fragments`` has an id that
        another job committed after ``read_version`` (only those rows can collide: earlier ones
        were skipped when the job read)."""
        added = _new_data_ids(latest, read_version)
        if not added:
            return
        from lance.file import LanceFileReader

        ours: set[str] = set()
        for frag in fragments:
            for f in frag.data_files():
                if 0 in f.fields:  # the file holding field 0, ``id`` (first in the samples schema)
                    r = LanceFileReader(f"{self.uri}/data/{f.path}", storage_options=self.storage_options or None, columns=["id"])
                    ours.update(r.read_all().to_table().column("id").to_pylist())
        if both := ours & added:
            raise IdsAddedMeanwhile(len(both), latest.version)

    @contextlib.contextmanager
    def lock(self, name: str, *, wait: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
        """Hold the exclusive job lock ``name`` of this dataset (``state_dir/locks/<name>.lock``).

        Why: two jobs doing the same thing at once share checkpoints and commit over each other.
        ``flock`` is released by the kernel when its holder dies (kill -9 included), so a lock is
        never stale: the next job takes it over and resumes from the dead one's checkpoints. The
        holder writes its pid, host and start time into the file for the others' messages. Busy:
        ``wait`` blocks (``on_wait`` gets the holder first); otherwise ``DatasetBusyError``. The
        file is never deleted (deleting would let two jobs lock two different files). Remote
        stores keep it in the local state cache: it orders jobs on this machine only."""
        import fcntl
        import socket
        import time

        path = self.state_dir / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(path)
                if not wait:
                    raise DatasetBusyError(name, holder, path) from None
                if on_wait:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            yield path
        finally:
            os.close(fd)  # releases the lock

    @property
    def state_dir(self) -> Path:
        """Where jobs keep checkpoints, stats, reports and indexes for this dataset.

        Local datasets keep it inside the dataset folder (``_curation/``, ignored by Lance) so it
        travels with the data; remote ones use a local cache keyed by URI (``CURATE_STATE_DIR``)."""
        if not is_remote(self.uri):
            d = Path(self.uri) / "_curation"
        else:
            root = Path(os.environ.get("CURATE_STATE_DIR", Path.home() / ".cache" / "curation"))
            d = root / hashlib.sha1(self.uri.encode()).hexdigest()[:16]
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --- state in the object store (remote datasets) -------------------------------------
    def push_state(self, relpath: str) -> list[str]:
        """Upload ``state_dir/relpath`` (a file or a folder) to ``<uri>/_curation/relpath``.

        Why: for a remote dataset ``state_dir`` is a local cache on one machine, so what a job
        leaves there (a FAISS index, ...) is invisible to other nodes; the object store is the
        copy every node can reach. A folder's ``manifest.json`` is deleted remotely first and
        uploaded last, so a reader never pairs a manifest with half-uploaded files. A no-op for
        local datasets (their state dir already lives inside the dataset folder). Returns the
        object paths written."""
        if not is_remote(self.uri):
            return []
        rel = _check_relpath(relpath)
        src = self.state_dir / rel
        if not src.exists():
            raise FileNotFoundError(f"nothing to push: {src} does not exist")
        fs, root = self.state_fs()
        dst = f"{root}/{rel}"
        if src.is_file():
            pairs = [(src, dst)]
        else:
            files = [q for q in sorted(src.rglob("*")) if q.is_file() and not q.name.endswith(".tmp")]
            files.sort(key=lambda q: q.name == STATE_MANIFEST)  # stable: manifests last
            pairs = [(q, f"{dst}/{q.relative_to(src).as_posix()}") for q in files]
            for _, key in pairs:
                if key.endswith("/" + STATE_MANIFEST) and _remote_exists(fs, key):
                    fs.delete_file(key)
        import shutil

        for q, key in pairs:
            if fs.type_name != "s3":  # S3 has no folders (create_dir would add marker objects)
                fs.create_dir(key.rsplit("/", 1)[0], recursive=True)
            with open(q, "rb") as f, fs.open_output_stream(key) as out:
                shutil.copyfileobj(f, out, 8 << 20)
        if src.is_dir():  # the folder mirrors the local one: an old index's data file goes
            for key in set(_remote_files(fs, dst)) - {key for _, key in pairs}:
                fs.delete_file(key)
        return [key for _, key in pairs]

    def pull_state(self, relpath: str) -> bool:
        """Download ``<uri>/_curation/relpath`` into ``state_dir/relpath``; True when files came.

        A folder with a ``manifest.json`` is fetched only when the local copy is missing or its
        manifest differs from the remote one (so a node downloads an index once, not per job);
        the local manifest is removed first and written last, so a reader on this node never
        pairs it with other files. Nothing in the object store (never pushed), or a remote folder
        without its manifest while a local copy has one (a push under way): False, the local
        copy is left as it is. A no-op (False) for local datasets."""
        if not is_remote(self.uri):
            return False
        import pyarrow.fs as pafs

        rel = _check_relpath(relpath)
        fs, root = self.state_fs()
        src = f"{root}/{rel}"
        info = fs.get_file_info(src)
        dst = self.state_dir / rel
        if info.type == pafs.FileType.NotFound:
            return False
        if info.type == pafs.FileType.File:
            _download(fs, src, dst)
            return True
        found = _remote_files(fs, src)
        man_key = f"{src}/{STATE_MANIFEST}"
        manifest = _read_remote(fs, man_key) if man_key in found else None
        local = dst / STATE_MANIFEST
        if manifest is None and local.is_file():
            return False  # a push is under way (or died half way): keep the complete local copy
        if manifest is not None and local.is_file() and local.read_bytes() == manifest:
            return False  # this node already has that version
        local.unlink(missing_ok=True)
        for key in found:
            if key != man_key:
                _download(fs, key, dst / key[len(src) + 1 :])
        if manifest is not None:
            now = _read_remote(fs, man_key) if _remote_exists(fs, man_key) else None
            if now != manifest:  # a push started meanwhile: these files may not match the manifest
                raise OSError(f"{self.uri}/_curation/{rel} was replaced while it was downloaded; run again")
            _atomic_write(dst / STATE_MANIFEST, manifest)
        for q in [q for q in dst.rglob("*") if q.is_file() and ".tmp" not in q.name]:  # a mirror: what left the store goes
            if f"{src}/{q.relative_to(dst).as_posix()}" not in found:
                q.unlink(missing_ok=True)  # a process that has it mapped keeps reading it
        return True

    def state_fs(self):
        """(pyarrow file system, path of ``<uri>/_curation`` in it), credentials from
        ``storage_options`` (the same ones Lance uses for the dataset)."""
        import pyarrow.fs as pafs

        scheme, rest = self.uri.split("://", 1)
        if scheme not in ("s3", "s3a"):
            fs, path = pafs.FileSystem.from_uri(self.uri)
            return fs, path.rstrip("/") + "/_curation"
        return s3_filesystem(self.storage_options or {}), rest.rstrip("/") + "/_curation"

    # --- inspect --------------------------------------------------------------------------
    def versions(self, *, jobs: bool = True) -> list[dict[str, Any]]:
        """All versions, oldest first: ``metadata`` is Lance's summary of the version (rows,
        fragments, files) and ``job`` what made it, from its commit's transaction: ``message``
        (e.g. "ingest", "stage caption_stats (incremental: 5 rows in 1 fragments)") and the
        ``curate.*`` properties a stage commit carries (stage, mode, fragments, rows, config).
        ``jobs=False`` skips reading the transactions (one small file per version)."""
        ds = self.open()
        out = []
        for v in ds.versions():
            rec = {"version": v["version"], "timestamp": v["timestamp"], "metadata": dict(v.get("metadata") or {})}
            if jobs:
                rec["job"] = _job_of(ds, v["version"])
            out.append(rec)
        return out

    def columns_by_group(self, version: int | None = None) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name in self.open(version).schema.names:
            groups.setdefault(group_of(name), []).append(name)
        return groups

    def error_counts(self, version: int | None = None) -> dict[str, int]:
        """Rows with an error, by reason (the text before the first colon)."""
        ds = self.open(version)
        t = ds.to_table(columns=["error"], filter="error IS NOT NULL")
        counts: dict[str, int] = {}
        for e in t.column("error").to_pylist():
            reason = e.split(":", 1)[0]
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_arrow(self, columns: list[str] | None = None, filter: str | None = None, version: int | None = None) -> pa.Table:
        return self.open(version).to_table(columns=columns, filter=filter)

    def light_columns(self, version: int | None = None) -> list[str]:
        """All columns except encoded image bytes: what a person means by 'show me the table'."""
        schema = self.open(version).schema
        return [f.name for f in schema if f.type not in _BLOB_TYPES]

    def duckdb(self, con: Any = None, name: str = "samples", version: int | None = None):
        """Register the dataset as a DuckDB view for SQL, read lazily (DuckDB reads only the
        columns and rows a query needs; half-float vectors widened: ``curation.sql``)."""
        import duckdb

        from curation.sql import duckdb_view

        con = con or duckdb.connect()
        con.register(name, duckdb_view(self.uri, version, self.storage_options))
        return con

    def diff(self, v1: int, v2: int) -> dict[str, Any]:
        """What changed between two versions: columns, rows by id, and per-column value changes."""
        a, b = self.open(v1), self.open(v2)
        ca, cb = set(a.schema.names), set(b.schema.names)
        ids_a = a.to_table(columns=["id"]).column("id")
        ids_b = b.to_table(columns=["id"]).column("id")
        added = pc.sum(pc.invert(pc.is_in(ids_b, ids_a))).as_py() or 0
        removed = pc.sum(pc.invert(pc.is_in(ids_a, ids_b))).as_py() or 0
        common = sorted(c for c in (ca & cb) - {"id"} if b.schema.field(c).type not in _BLOB_TYPES)
        changed: dict[str, int] = {}
        if common:
            ta = a.to_table(columns=["id", *common])
            tb = b.to_table(columns=["id", *common])
            # join row positions on id (Arrow joins cannot carry nested columns), then compare by take
            pos = pa.table({"id": ta.column("id"), "_ia": pa.array(range(ta.num_rows))}).join(
                pa.table({"id": tb.column("id"), "_ib": pa.array(range(tb.num_rows))}), "id"
            )
            ia, ib = pos.column("_ia"), pos.column("_ib")
            for c in common:
                x, y = ta.column(c).take(ia), tb.column(c).take(ib)
                try:
                    neq = pc.not_equal(x, y)
                    n = (pc.sum(pc.fill_null(neq, False)).as_py() or 0) + (pc.sum(pc.xor(pc.is_null(x), pc.is_null(y))).as_py() or 0)
                except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # nested types: compare as Python
                    n = sum(1 for p, q in zip(x.to_pylist(), y.to_pylist()) if p != q)
                if n:
                    changed[c] = int(n)
        return {
            "from": v1,
            "to": v2,
            "rows": [a.count_rows(), b.count_rows()],
            "rows_added": int(added),
            "rows_removed": int(removed),
            "columns_added": sorted(cb - ca),
            "columns_removed": sorted(ca - cb),
            "values_changed": changed,
        }

    def write_json(self, relpath: str, payload: Any) -> Path:
        p = self.state_dir / relpath
        tmp = _tmp_of(p)  # unique: two jobs may write the same file at once
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        tmp.replace(p)  # atomic: a killed job never leaves half a checkpoint
        return p

    def read_json(self, relpath: str) -> Any:
        """A JSON file of the state dir (``write_json``'s), or None when there is none."""
        p = self.state_dir / relpath
        return json.loads(p.read_text()) if p.is_file() else None
