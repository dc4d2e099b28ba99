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
    opts = {"aws_endpoint": f"http://{host}:{port}", "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
            "aws_region": "us-east-1", "allow_http": "true"}
    client = boto3.client("s3", endpoint_url=opts["aws_endpoint"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
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
    rows[2] = {**rows[2], "image": None, "image_uri": str(tmp_path)}                 # a folder, not a file
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
