"""Fetching remote images: one URL -> checked image bytes, or a reason. No Ray, no Lance.

Why it is its own engine: a LAION-style table names its images by ``http(s)://`` URL, and ingest
stores such rows with ``image`` null and the URL in ``image_uri``. ``pipelines/download.py`` runs
this over those rows on Ray workers; everything here is plain threads and ``urllib3`` (installed
with ``requests``, which Ray and botocore pull in; it streams, bounds reads and pools connections
per host), so it is unit-tested against a local server.

What one fetch does, and why:

- a per-host limit (``HostLimiter``): many threads of one worker must not hammer one server;
- a timeout per attempt, for connecting, for each read and for the whole body (a server that
  trickles one byte a second must not hold a thread forever);
- retries with exponential backoff for what may pass (timeouts, connection errors, a cut body,
  429 and 5xx; ``Retry-After`` honoured up to the backoff cap), none for what will not (404, 403,
  410 and other 4xx, too large, not an image);
- redirects followed up to ``max_redirects``;
- at most ``max_bytes`` read (a ``Content-Length`` above it is refused before reading);
- the bytes must be an image by the project's own check (``curation.sources.inspect_image``: the
  header, the pixel-count bomb limit, then a full decode), so an HTML page served as
  ``image/jpeg`` is ``not_an_image``;
- optionally the longest side is brought down to ``resize_max_side`` (same format, EXIF
  orientation applied, so the stored width and height are what a viewer shows).

Errors are ``reason: detail`` like ingest's (``download_failed: http 404``,
``download_failed: timeout``, ``too_large: ...``, ``not_an_image: ...``), and each result also
carries a short ``kind`` (``http_404``, ``timeout``...) for the job's statistics.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import urllib3
from PIL import Image, ImageOps
from urllib3.exceptions import HTTPError, LocationValueError, MaxRetryError, NewConnectionError, ProtocolError, ResponseError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from curation.schema import SAMPLES_SCHEMA, sha256_hex
from curation.sources import inspect_image, stable_message

__all__ = [
    "DOWNLOAD_REASONS",
    "UPDATE_SCHEMA",
    "FetchOptions",
    "FetchResult",
    "HostLimiter",
    "Fetcher",
    "resize_longest_side",
    "fetch_batch",
]

DOWNLOAD_REASONS = ("download_failed", "too_large", "not_an_image", "truncated", "corrupt", "empty_file", "decompression_bomb")
"""Error reasons a download can leave on a URL row (``--retry-errors`` fetches those rows again)."""

UPDATE_SCHEMA = pa.schema([SAMPLES_SCHEMA.field(c) for c in ("id", "image", "image_sha256", "width", "height", "format", "error")])
"""The columns a download fills, keyed by ``id``: the same ones ingest fills for a local image."""

_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchOptions:
    """How one worker fetches (built from ``DownloadConfig``; plain, so it pickles to workers)."""

    timeout: float = 20.0
    retries: int = 3
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    max_bytes: int = 32 * 1024 * 1024
    max_redirects: int = 5
    max_pixels: int = 178_956_970
    resize_max_side: int | None = None
    concurrency_per_host: int = 4
    threads: int = 16
    user_agent: str = "zcurate-download/1.0"


@dataclass
class FetchResult:
    """One URL's outcome: ``data`` (checked, maybe resized) or ``error`` with its ``kind``."""

    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    error: str | None = None
    kind: str = "ok"
    attempts: int = 0
    fetched_bytes: int = 0
    resized: bool = False


class _Failure(Exception):
    """An attempt failed: ``reason: detail`` to store, a short ``kind``, and whether to try again."""

    def __init__(self, reason: str, detail: str, kind: str, retryable: bool, wait: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.kind, self.retryable, self.wait = reason, detail, kind, retryable, wait


class HostLimiter:
    """At most ``n`` requests at once per host, whatever the number of threads.

    Why: a unit of LAION rows often has thousands of URLs of one CDN; without a limit every thread
    of a worker would hit it together and earn 429s (or a ban)."""

    def __init__(self, n: int):
        self.n = n
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    def slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            if host not in self._sems:
                self._sems[host] = threading.BoundedSemaphore(self.n)
            return self._sems[host]


def _status_failure(resp: urllib3.BaseHTTPResponse) -> _Failure:
    """An HTTP error status: retry 429 / 5xx (after ``Retry-After`` when the server says so)."""
    code = resp.status
    wait = None
    ra = resp.headers.get("Retry-After", "")
    if ra.strip().isdigit():
        wait = float(ra.strip())
    return _Failure("download_failed", f"http {code}", f"http_{code}", code in _RETRY_STATUS, wait)


def _read_body(resp: urllib3.BaseHTTPResponse, opts: FetchOptions, deadline: float) -> bytes:
    """The body, refusing past ``max_bytes`` (declared or read) and past the attempt's deadline."""
    declared = resp.headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > opts.max_bytes:
        raise _Failure("too_large", f"{int(declared)} bytes declared > max_bytes {opts.max_bytes}", "too_large", False)
    buf = bytearray()
    # read1: whatever has arrived, up to a chunk; ``stream`` waits for a whole chunk, and a server
    # that sends a byte a second (each within the read timeout) kept one chunk, and the attempt,
    # going for 100 s past a 5 s timeout before the deadline below was looked at
    while chunk := resp.read1(_CHUNK):
        buf += chunk
        if len(buf) > opts.max_bytes:
            raise _Failure("too_large", f"more than max_bytes {opts.max_bytes} bytes", "too_large", False)
        if time.monotonic() > deadline:
            raise _Failure("download_failed", f"timeout (body not complete after {opts.timeout:g}s)", "timeout", True)
    return bytes(buf)


def _transport_failure(e: Exception) -> _Failure:
    """A urllib3 exception as a failure (all of these may pass on a later attempt, but redirects)."""
    inner = e.reason if isinstance(e, MaxRetryError) and e.reason is not None else e
    if isinstance(inner, ResponseError) and "redirect" in str(inner):
        return _Failure("download_failed", "too many redirects", "redirects", False)
    if isinstance(inner, Urllib3Timeout) and not isinstance(inner, NewConnectionError):  # urllib3 subclasses it
        return _Failure("download_failed", "timeout", "timeout", True)
    if isinstance(inner, ProtocolError) and "IncompleteRead" in str(inner):
        return _Failure("download_failed", "truncated body (connection closed early)", "truncated", True)
    if isinstance(inner, SSLError):
        return _Failure("download_failed", f"tls: {str(inner)[:150]}", "tls", True)
    detail = f"connection: {type(inner).__name__}: {str(inner)[:150]}"
    return _Failure("download_failed", stable_message(detail), "connection", True)


class Fetcher:
    """Fetches URLs with one connection pool, a per-host limit, retries and checks (thread-safe)."""

    def __init__(self, opts: FetchOptions):
        self.opts = opts
        self.limiter = HostLimiter(opts.concurrency_per_host)
        self.pool = urllib3.PoolManager(num_pools=256, maxsize=opts.concurrency_per_host, headers={"User-Agent": opts.user_agent})
        self._retry = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=opts.max_redirects, raise_on_redirect=True)

    def _attempt(self, url: str) -> bytes:
        """One GET with the redirects it needs; raises ``_Failure``."""
        try:
            host = urllib3.util.parse_url(url).host or ""
        except LocationValueError as e:
            raise _Failure("download_failed", f"bad url: {str(e)[:150]}", "bad_url", False) from None
        with self.limiter.slot(host):
            resp = self._open(url)
            ok = False
            try:
                if resp.status >= 400:
                    raise _status_failure(resp)
                data = _read_body(resp, self.opts, time.monotonic() + self.opts.timeout)
                ok = True
                return data
            except HTTPError as e:
                raise _transport_failure(e) from None
            finally:
                if not ok:  # never read the rest of a body we refused: drop the connection
                    resp.close()
                resp.release_conn()

    def _open(self, url: str) -> urllib3.BaseHTTPResponse:
        """The response (headers read, body not), redirects followed; raises ``_Failure``."""
        t = urllib3.Timeout(connect=self.opts.timeout, read=self.opts.timeout)
        try:
            return self.pool.request("GET", url, preload_content=False, retries=self._retry, timeout=t)
        except LocationValueError as e:
            raise _Failure("download_failed", f"bad url: {str(e)[:150]}", "bad_url", False) from None
        except HTTPError as e:
            raise _transport_failure(e) from None

    def _backoff(self, attempt: int, f: _Failure) -> float:
        """Exponential with jitter; a server's ``Retry-After`` wins, both capped."""
        wait = f.wait if f.wait is not None else self.opts.backoff_seconds * (2**attempt) * (0.5 + random.random())
        return min(wait, self.opts.max_backoff_seconds)

    def fetch(self, url: str) -> tuple[bytes | None, _Failure | None, int]:
        """(bytes, None, attempts) or (None, the last failure, attempts)."""
        for attempt in range(self.opts.retries + 1):
            try:
                return self._attempt(url), None, attempt + 1
            except _Failure as f:
                if not f.retryable or attempt == self.opts.retries:
                    return None, f, attempt + 1
                time.sleep(self._backoff(attempt, f))
        raise AssertionError("unreachable")

    def fetch_image(self, url: str) -> FetchResult:
        """Fetch, check it is an image, resize if asked: the row's new values. Never raises: one
        URL that breaks something unforeseen is that row's error, not a failed unit of thousands."""
        try:
            data, fail, attempts = self.fetch(url)
            if fail is not None:
                return FetchResult(error=stable_message(str(fail)), kind=fail.kind, attempts=attempts)
            return _checked(data, self.opts, attempts)
        except Exception as e:  # noqa: BLE001 (see the docstring)
            return FetchResult(error=stable_message(f"download_failed: {type(e).__name__}: {str(e)[:200]}"), kind="unexpected")


def _checked(data: bytes, opts: FetchOptions, attempts: int) -> FetchResult:
    """The project's image check on fetched bytes, then the optional resize."""
    w, h, fmt, err = inspect_image(data, opts.max_pixels)
    if err:
        reason = err.split(":", 1)[0]
        return FetchResult(error=stable_message(err), kind=reason, attempts=attempts, fetched_bytes=len(data))
    out = FetchResult(data, w, h, fmt, attempts=attempts, fetched_bytes=len(data))
    if opts.resize_max_side and max(w or 0, h or 0) > opts.resize_max_side:
        small = resize_longest_side(data, opts.resize_max_side)
        if small is not None:
            w2, h2, fmt2, err2 = inspect_image(small, opts.max_pixels)
            if not err2:
                out.data, out.width, out.height, out.format, out.resized = small, w2, h2, fmt2, True
    return out


_SAVE_ARGS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}


def resize_longest_side(data: bytes, max_side: int) -> bytes | None:
    """The image with its longest side at ``max_side``, in its own format, EXIF orientation
    applied (the tag is dropped with it). None when it is small enough or its format cannot be
    written back (the original bytes are then kept: a resize is a saving, not a requirement)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = "JPEG" if im.format == "MPO" else im.format
            if max(im.size) <= max_side or fmt is None:
                return None
            im = ImageOps.exif_transpose(im)
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            if fmt == "JPEG" and im.mode not in ("RGB", "L", "CMYK"):
                im = im.convert("RGB")
            out = io.BytesIO()
            im.save(out, format=fmt, **_SAVE_ARGS.get(fmt, {}))
            return out.getvalue()
    except Exception:  # noqa: BLE001 (a writer PIL lacks, an odd mode: keep the original bytes)
        return None


def fetch_batch(batch: pa.RecordBatch, fetcher: Fetcher, counters: Counter) -> pa.RecordBatch:
    """``id``, ``image_uri`` rows -> ``UPDATE_SCHEMA`` rows, fetched ``fetcher.opts.threads`` at a
    time, in order. Counts ``downloaded``, ``bytes_stored``, ``retries``, ``resized`` and
    ``failed_<kind>`` / ``error_<reason>`` into ``counters``."""
    ids = batch.column("id").to_pylist()
    urls = batch.column("image_uri").to_pylist()
    with ThreadPoolExecutor(max_workers=max(1, min(fetcher.opts.threads, len(urls)))) as pool:
        results = list(pool.map(fetcher.fetch_image, urls))
    rows = [_row(i, r, counters) for i, r in zip(ids, results, strict=True)]
    return pa.RecordBatch.from_pylist(rows, schema=UPDATE_SCHEMA)


def _row(row_id: str, r: FetchResult, counters: Counter) -> dict:
    counters["retries"] += max(0, r.attempts - 1)
    counters["bytes_fetched"] += r.fetched_bytes
    if r.error:
        counters[f"failed_{r.kind}"] += 1
        counters[f"error_{r.error.split(':', 1)[0]}"] += 1
        return {"id": row_id, "error": r.error}
    counters["downloaded"] += 1
    counters["bytes_stored"] += len(r.data or b"")
    counters["resized"] += int(r.resized)
    return {
        "id": row_id,
        "image": r.data,
        "image_sha256": sha256_hex(r.data),
        "width": r.width,
        "height": r.height,
        "format": r.format,
        "error": None,
    }
