"""Export reads rows that only have an ``image_uri``: local paths, file:// and s3:// (a local moto
server); what cannot be read is an ``unreadable_uri`` exclusion with its reason, never a crash."""

from __future__ import annotations

import pytest

from pipelines.export import ExportConfig, read_uri, resolve_roles, shard_rows
from tests.helpers import coco_rows, samples_table


@pytest.fixture(scope="module")
def s3(coco_dir):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    opts = {
        "aws_endpoint": f"http://{host}:{port}",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
        "allow_http": "true",
    }
    client = boto3.client(
        "s3", endpoint_url=opts["aws_endpoint"], aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    client.create_bucket(Bucket="imgs")
    photo = sorted((coco_dir / "images").glob("*.jpg"))[0]
    client.put_object(Bucket="imgs", Key="a/photo.jpg", Body=photo.read_bytes())
    yield opts, photo
    server.stop()


def test_read_uri_local_file_and_s3(s3, tmp_path):
    opts, photo = s3
    data = photo.read_bytes()
    assert read_uri(str(photo)) == data and read_uri(f"file://{photo}") == data
    assert read_uri("s3://imgs/a/photo.jpg", opts) == data
    with pytest.raises(FileNotFoundError):
        read_uri("s3://imgs/a/missing.jpg", opts)
    with pytest.raises(FileNotFoundError):
        read_uri(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="max_image_bytes"):
        read_uri(str(photo), max_bytes=100)


def test_shard_rows_fetches_uri_rows_and_excludes_unreadable_ones(s3, coco_dir, tmp_path):
    opts, photo = s3
    rows = coco_rows(coco_dir, limit=4)
    rows[0] = {**rows[0], "image": None, "image_uri": "s3://imgs/a/photo.jpg"}
    rows[1] = {**rows[1], "image": None, "image_uri": "s3://imgs/a/missing.jpg"}
    rows[2] = {**rows[2], "image": None, "image_uri": str(tmp_path)}  # a folder, not a file
    rows[3] = {**rows[3], "image": None, "image_uri": None}
    src = samples_table(rows)
    cfg = ExportConfig(out=str(tmp_path / "o.lance"), resolution=256)
    table, excluded = shard_rows(src, cfg, resolve_roles(src.schema, cfg), fetch=lambda u: read_uri(u, opts))
    assert table.column("id").to_pylist() == [rows[0]["id"]]
    assert table.column("image").to_pylist() == [photo.read_bytes()]
    why = dict(excluded)
    assert why[rows[1]["id"]].startswith("unreadable_uri: FileNotFoundError")
    assert why[rows[2]["id"]].startswith("unreadable_uri: IsADirectoryError")
    assert why[rows[3]["id"]] == "no_image"


def test_uri_rows_are_fetched_concurrently_in_order(s3, coco_dir, tmp_path):
    """A unit's image_uri reads overlap (up to ``uri_fetch_threads``), rows keep their order and
    each unreadable URI still excludes only its own row."""
    import threading

    boto3 = pytest.importorskip("boto3")
    opts, _ = s3
    client = boto3.client(
        "s3", endpoint_url=opts["aws_endpoint"], aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    rows = coco_rows(coco_dir, limit=12)
    for k, r in enumerate(rows):
        client.put_object(Bucket="imgs", Key=f"many/{k}.jpg", Body=r["image"])
    want = {r["id"]: r["image"] for r in rows}
    rows = [
        {**r, "image": None, "image_uri": f"s3://imgs/many/{k}.jpg" if k != 5 else "s3://imgs/many/gone.jpg"} for k, r in enumerate(rows)
    ]
    in_flight, peak, calls, lock = [0], [0], [0], threading.Lock()
    both = threading.Barrier(2, timeout=20)  # the first two reads must be in flight together

    def fetch(uri):
        with lock:
            in_flight[0] += 1
            calls[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            first_two = calls[0] <= 2 and barrier_on[0]
        try:
            if first_two:
                both.wait()
            return read_uri(uri, opts)
        finally:
            with lock:
                in_flight[0] -= 1

    barrier_on = [True]
    src = samples_table(rows)
    cfg = ExportConfig(out=str(tmp_path / "o.lance"), resolution=256, uri_fetch_threads=4)
    table, excluded = shard_rows(src, cfg, resolve_roles(src.schema, cfg), fetch=fetch)
    kept = [r["id"] for k, r in enumerate(rows) if k != 5]
    assert table.column("id").to_pylist() == kept
    assert all(b == want[i] for i, b in zip(kept, table.column("image").to_pylist()))
    assert [(i, why.split(":")[1].strip()) for i, why in excluded] == [(rows[5]["id"], "FileNotFoundError")]
    assert 1 < peak[0] <= 4
    # one at a time when asked
    peak[0], barrier_on[0] = 0, False
    shard_rows(src, ExportConfig(out=cfg.out, resolution=256, uri_fetch_threads=1), resolve_roles(src.schema, cfg), fetch=fetch)
    assert peak[0] == 1
