"""``curate download`` against a real local HTTP server that serves COCO photos and misbehaves on
purpose: 404 / 410, 500 then success, 429 with Retry-After, always 503, too slow, a cut body, HTML
served as image/jpeg, redirect chains (short and endless), over-size bodies (declared and
streamed). Every row is accounted for, retries are counted by server hits, a killed job resumes
without fetching again, and ``--retry-errors`` fetches failed rows once more."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from engines.download import Fetcher, FetchOptions, resize_longest_side
from tests.helpers import free_port

MAX_BYTES = 1_000_000


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, images: Path):
        super().__init__(addr, _Handler)
        self.images, self.hits, self.lock = images, Counter(), threading.Lock()
        self.in_flight, self.max_in_flight = 0, 0  # of /wait/ requests
        self.down_ok = False  # /down/ starts answering once the test says so
        self.extra: dict[str, bytes] = {}  # /extra/NAME: bytes set by a test


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", length: int | None = None, **headers) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _file(self, name: str) -> bytes:
        return (self.server.images / name).read_bytes()

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        with srv.lock:
            srv.hits[self.path] += 1
            n = srv.hits[self.path]
            self.waiting = self.path.startswith("/wait/")
            if self.waiting:
                srv.in_flight += 1
                srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            self._route(self.path.split("?", 1)[0].strip("/").split("/"), n)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._done_waiting()

    def _done_waiting(self) -> None:
        """A /wait/ request stops counting as in flight before its response goes out: once the
        client has the whole body it frees its host slot and may send the next request, which can
        reach the server before this thread would get back to a decrement after sending (seen on
        a loaded machine as 3 in flight under a limit of 2)."""
        if getattr(self, "waiting", False):
            with self.server.lock:
                self.server.in_flight -= 1
            self.waiting = False

    def _route(self, parts: list[str], n: int) -> None:  # noqa: C901 (one branch per failure mode)
        kind, name = parts[0], parts[-1]
        if kind == "img":
            self._send(200, self._file(name))
        elif kind in ("404", "410", "403"):
            self._send(int(kind), b"no", ctype="text/plain")
        elif kind == "flaky":
            self._send(500, b"oops", ctype="text/plain") if n == 1 else self._send(200, self._file(name))
        elif kind == "busy":
            self._send(429, b"slow down", ctype="text/plain", Retry_After="0") if n == 1 else self._send(200, self._file(name))
        elif kind == "down":
            self._send(200, self._file(name)) if self.server.down_ok else self._send(503, b"down", ctype="text/plain")
        elif kind == "slow":
            time.sleep(1.5)
            self._send(200, self._file(name))
        elif kind == "cut":
            data = self._file(name)
            self._send(200, data[: len(data) // 2], length=len(data))
            self.close_connection = True
        elif kind == "html":
            self._send(200, b"<html><body>Not found, but 200 and image/jpeg</body></html>")
        elif kind == "redirect":
            left = int(parts[1])
            target = f"/img/{name}" if left == 0 else f"/redirect/{left - 1}/{name}"
            self._send(302, b"", Location=target)
        elif kind == "big":
            self._send(200, b"\xff" * (MAX_BYTES + 10))
        elif kind == "stream":  # no Content-Length: read until close, past max_bytes
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"\xff" * 65536)
            self.close_connection = True
        elif kind == "wait":
            time.sleep(0.3)
            body = self._file(name)
            self._done_waiting()
            self._send(200, body)
        elif kind == "trickle":  # headers at once, then a byte every 0.2 s: each read within the timeout
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the client gave up: what the test wants
                pass
            self.close_connection = True
        elif kind == "extra":
            self._send(200, self.server.extra[name])
        else:
            self._send(400, b"?", ctype="text/plain")


@pytest.fixture(scope="module")
def server(coco_dir):
    srv = _Server(("127.0.0.1", free_port()), coco_dir / "images")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _base(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def _opts(**kw) -> FetchOptions:
    return FetchOptions(**{"timeout": 0.5, "retries": 2, "backoff_seconds": 0.01, "max_bytes": MAX_BYTES, **kw})


# --- the engine, no Ray --------------------------------------------------------------------------


def test_fetch_outcomes_and_retries(server, coco_dir):
    names = sorted(p.name for p in (coco_dir / "images").glob("*.jpg"))
    f, base = Fetcher(_opts()), _base(server)
    ok = f.fetch_image(f"{base}/img/{names[0]}")
    assert ok.error is None and ok.data == (coco_dir / "images" / names[0]).read_bytes() and ok.format == "JPEG"
    assert f.fetch_image(f"{base}/404/e1").error == "download_failed: http 404"
    assert server.hits["/404/e1"] == 1  # never retried
    flaky = f.fetch_image(f"{base}/flaky/{names[1]}")
    assert flaky.error is None and flaky.attempts == 2 and server.hits[f"/flaky/{names[1]}"] == 2
    busy = f.fetch_image(f"{base}/busy/{names[1]}")
    assert busy.error is None and busy.attempts == 2  # 429, Retry-After: 0, then the image
    down = f.fetch_image(f"{base}/down/e1")
    assert down.error == "download_failed: http 503" and server.hits["/down/e1"] == 3  # 1 + 2 retries
    assert f.fetch_image(f"{base}/html/e1").error.startswith("not_an_image:")
    assert f.fetch_image(f"{base}/big/e1").error.startswith("too_large:") and server.hits["/big/e1"] == 1
    assert f.fetch_image(f"{base}/stream/e1").error == f"too_large: more than max_bytes {MAX_BYTES} bytes"
    assert f.fetch_image(f"{base}/redirect/3/{names[2]}").data == (coco_dir / "images" / names[2]).read_bytes()
    assert f.fetch_image(f"{base}/redirect/9/{names[2]}").error == "download_failed: too many redirects"
    cut = f.fetch_image(f"{base}/cut/{names[3]}")
    assert cut.kind == "truncated" and cut.error.startswith("download_failed: truncated") and cut.attempts == 3
    slow = f.fetch_image(f"{base}/slow/{names[3]}")
    assert slow.error == "download_failed: timeout" and slow.attempts == 3
    t0 = time.monotonic()  # a body trickling in, every read within the 0.5 s timeout: cut at the attempt's deadline
    trickle = Fetcher(_opts(retries=0)).fetch_image(f"{base}/trickle/e1")
    assert trickle.kind == "timeout" and trickle.error.startswith("download_failed: timeout"), trickle.error
    assert time.monotonic() - t0 < 5  # not the 200 s the body takes (it took all of it: the deadline was seen per 64 KiB)
    refused = f.fetch_image(f"http://127.0.0.1:{free_port()}/img/x.jpg")
    assert refused.kind == "connection" and refused.attempts == 3
    assert f.fetch_image("http://").kind == "bad_url"


def test_per_host_limit_holds_with_many_threads(server, coco_dir):
    name = sorted(p.name for p in (coco_dir / "images").glob("*.jpg"))[0]
    server.max_in_flight = 0
    f = Fetcher(_opts(concurrency_per_host=2, threads=8))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        res = list(pool.map(f.fetch_image, [f"{_base(server)}/wait/{name}?{i}" for i in range(8)]))
    assert all(r.error is None for r in res)
    assert server.max_in_flight == 2


def _oriented_jpeg(w: int, h: int, orientation: int) -> bytes:
    im = Image.new("RGB", (w, h), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    im.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def test_resize_keeps_format_and_applies_orientation(server):
    data = _oriented_jpeg(400, 200, 6)  # stored 400x200, shown rotated: 200x400
    small = resize_longest_side(data, 100)
    with Image.open(io.BytesIO(small)) as im:
        assert im.format == "JPEG" and im.size == (50, 100) and im.getexif().get(0x0112) in (None, 1)
    assert resize_longest_side(data, 400) is None  # small enough: original bytes kept
    server.extra["rot.jpg"] = data
    r = Fetcher(_opts(resize_max_side=100)).fetch_image(f"{_base(server)}/extra/rot.jpg")
    assert r.resized and (r.width, r.height, r.format) == (50, 100, "JPEG")
    png = io.BytesIO()
    Image.new("RGBA", (300, 120)).save(png, format="PNG")
    assert Image.open(io.BytesIO(resize_longest_side(png.getvalue(), 60))).format == "PNG"


# --- the job on Ray + Lance ----------------------------------------------------------------------


def _url_table(srv, names: list[str], tag: str) -> tuple[pa.Table, dict[str, str]]:
    """Rows of URLs (good and bad), and the expected outcome of each: a sha256 or an error prefix.
    ``tag`` (a query string) keeps each test's server hits apart."""
    base, rows, expect = _base(srv), [], {}

    def add(path: str, outcome: str) -> None:
        url = f"{base}{path}?{tag}"
        rows.append({"key": f"k{len(rows)}", "url": url, "caption": f"photo {len(rows)}"})
        expect[url] = outcome

    sha = {n: hashlib.sha256((srv.images / n).read_bytes()).hexdigest() for n in names}
    for n in names[:6]:
        add(f"/img/{n}", sha[n])
    if len(names) > 6:
        add(f"/flaky/{names[6]}", sha[names[6]])
        add(f"/redirect/2/{names[7]}", sha[names[7]])
        add("/404/j1", "download_failed: http 404")
        add("/410/j1", "download_failed: http 410")
        add(f"/down/{names[8]}", "download_failed: http 503")
        add(f"/slow/{names[9]}", "download_failed: timeout")
        add(f"/cut/{names[10]}", "download_failed: truncated")
        add("/html/j1", "not_an_image:")
        add("/big/j1", "too_large:")
        add("/redirect/9/j1", "download_failed: too many redirects")
    return pa.Table.from_pylist(rows), expect


def _check_rows(store, expect: dict[str, str]) -> None:
    got = store.to_arrow(columns=["image_uri", "image", "image_sha256", "width", "error"]).to_pylist()
    assert len(got) == len(expect)
    for r in got:
        want = expect[r["image_uri"]]
        if ":" in want:
            assert r["image"] is None and r["error"] is not None and r["error"].startswith(want), r
        else:
            assert r["error"] is None and hashlib.sha256(r["image"]).hexdigest() == want == r["image_sha256"], r
            assert r["width"] > 0


def _url_store(tmp_path, table: pa.Table, row_group_size: int):
    """A dataset of URL rows through the real ingest path (one fragment per Parquet row group)."""
    from curation.store import Store
    from pipelines.ingest import IngestConfig, ingest

    pq.write_table(table, tmp_path / "urls.parquet", row_group_size=row_group_size)
    store = Store(str(tmp_path / "ds.lance"))
    ingest(store, IngestConfig(source=[str(tmp_path / "urls.parquet")], flag_exact_duplicates=False), show_progress=False)
    assert store.open().count_rows("image IS NULL AND error IS NULL") == table.num_rows
    return store


def _path(srv, url: str) -> str:
    return url.removeprefix(_base(srv))


def _cfg(**kw):
    from pipelines.download import DownloadConfig

    return DownloadConfig(**{"timeout": 0.5, "retries": 2, "backoff_seconds": 0.01, "max_bytes": MAX_BYTES, "threads": 8, **kw})


def test_download_job_accounts_for_every_row_and_retries(ray_session, tmp_path, server, coco_dir):
    from pipelines.download import download

    names = sorted(p.name for p in (coco_dir / "images").glob("*.jpg"))[10:21]
    table, expect = _url_table(server, names, "t=main")
    store = _url_store(tmp_path, table, 4)  # 4 fragments
    results = download(store, _cfg(), show_progress=False)
    res = results[0]
    assert res.status == "committed" and [r.stage for r in results] == ["download", "exact_dup"]
    _check_rows(store, expect)
    hits = {_path(server, u): server.hits[_path(server, u)] for u in expect}
    by_kind = {p.split("/")[1]: n for p, n in hits.items() if not p.startswith("/img/")}
    assert by_kind == {"flaky": 2, "redirect": 1, "404": 1, "410": 1, "down": 3, "slow": 3, "cut": 3, "html": 1, "big": 1}
    assert res.extra["downloaded"] == 8 and res.extra["failed"] == 8 and res.stats.counters["retries"] == 1 + 2 + 2 + 2
    assert res.extra["failed_by_kind"] == {
        k: 1 for k in ("http_404", "http_410", "http_503", "timeout", "truncated", "not_an_image", "too_large", "redirects")
    }

    # a re-run has nothing to fetch; --retry-errors fetches the failed rows once more
    before = Counter(server.hits)
    assert download(store, _cfg(), show_progress=False)[0].status == "skipped" and server.hits == before
    server.down_ok = True
    down = next(u for u in expect if "/down/" in u)
    expect[down] = hashlib.sha256((server.images / names[8]).read_bytes()).hexdigest()
    again = download(store, _cfg(retry_errors=True, timeout=0.3, flag_exact_duplicates=False), show_progress=False)[0]
    assert again.status == "committed" and again.extra["downloaded"] == 1 and again.stats.rows == 8
    assert all(server.hits[_path(server, u)] == before[_path(server, u)] for u in expect if "/img/" in u)
    assert server.hits["/404/j1?t=main"] == 2
    _check_rows(store, expect)  # the row that failed before has its bytes and no error now
    assert store.open().count_rows("exact_dup_of IS NOT NULL") == 0


def test_killed_download_resumes_without_fetching_again(ray_session, tmp_path, server, coco_dir, monkeypatch):
    import pipelines.download as job

    names = sorted(p.name for p in (coco_dir / "images").glob("*.jpg"))[30:36]
    table, expect = _url_table(server, names, "t=resume")
    store = _url_store(tmp_path, table, 2)  # 3 fragments

    class Killed(job.Checkpoints):  # the driver dies right after checkpointing its first unit
        def save(self, rec):
            super().save(rec)
            raise RuntimeError("killed after one unit")

    monkeypatch.setattr(job, "Checkpoints", Killed)
    with pytest.raises(RuntimeError, match="killed after one unit"):
        job.download(store, _cfg(), show_progress=False, concurrency=1)
    monkeypatch.undo()
    ckpt_dir = next((Path(store.state_dir) / "checkpoints").glob("download-*"))
    saved = [int(p.stem.split("-")[1]) for p in ckpt_dir.glob("unit-*.json")]
    assert len(saved) == 1 and store.open().count_rows("image IS NOT NULL") == 0  # nothing committed
    done_urls = store.open().get_fragment(saved[0]).to_table(columns=["image_uri"]).column("image_uri").to_pylist()
    before = Counter(server.hits)
    res = job.download(store, _cfg(flag_exact_duplicates=False), show_progress=False)[0]
    assert res.status == "committed" and res.fragments_resumed == 1 and res.extra["downloaded"] == 6
    assert all(server.hits[_path(server, u)] == before[_path(server, u)] == 1 for u in done_urls)
    _check_rows(store, expect)
    assert not ckpt_dir.exists()


def test_cli_and_pipeline_step(tmp_path):
    from typer.testing import CliRunner

    from cli.download import reasons_table
    from cli.main import app
    from curation.registry import STEPS
    from curation.runner import StageResult
    from curation.stage import Stats
    from pipelines.download import DownloadConfig

    assert STEPS["download"].config_model is DownloadConfig
    out = CliRunner().invoke(app, ["download", "--dataset", str(tmp_path / "nope.lance")])
    assert out.exit_code == 2 and "no Lance dataset" in out.output
    bad = CliRunner().invoke(app, ["download", "--dataset", str(tmp_path / "nope.lance"), "--retries", "-1"])
    assert bad.exit_code != 0
    stats = Stats(3, Counter({"downloaded": 1, "failed_http_404": 2}))
    table = reasons_table(StageResult("download", "committed", 2, 1, stats=stats, extra={"downloaded": 1, "bytes_stored": 10}))
    assert [c._cells for c in table.columns] == [["downloaded", "failed: http_404", "MB stored", "MB/s fetched"], ["1", "2", "0.0", "-"]]
