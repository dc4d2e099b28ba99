"""Exact-duplicate detection on the driver: first row wins, same answer partitioned or not."""

import hashlib
import random

import lance
import pyarrow as pa

from pipelines.basic_stages import ExactDupStage


def _dataset(tmp_path):
    rng = random.Random(0)
    blobs = [f"img{i}".encode() for i in range(40)]
    rows = [rng.choice(blobs) for _ in range(300)]
    shas = [hashlib.sha256(b).hexdigest() for b in rows]
    shas[7] = None  # an undecodable row has no hash and is never a duplicate
    t = pa.table({"id": [f"r{i:04d}" for i in range(300)], "image_sha256": shas})
    return lance.write_dataset(t, tmp_path / "d.lance", max_rows_per_file=64), shas


def test_first_row_wins_and_partitions_agree(tmp_path):
    ds, shas = _dataset(tmp_path)
    expected, first = {}, {}
    for i, sha in enumerate(shas):
        if sha is None:
            continue
        if sha in first:
            expected[f"r{i:04d}"] = first[sha]
        else:
            first[sha] = f"r{i:04d}"
    whole = ExactDupStage()
    whole.prepare(ds)
    assert whole.dup_of == expected and len(expected) == 300 - 40 - 1

    class Partitioned(ExactDupStage):
        rows_per_partition = 10  # forces 256 hash-prefix partitions

    part = Partitioned()
    part.prepare(ds)
    assert part.dup_of == expected
