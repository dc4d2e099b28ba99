"""Shards merged into on-disk lists one at a time, each deleted once copied: the same bytes as
FAISS's ``merge_ondisk`` (which holds every shard until the end), and a killed merge resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.vector.index import IndexConfig, add_vectors, empty_like, train_index, write_shard
from engines.vector.ondisk import merge_deleting, merged_shards


def _shards(tmp_path: Path, kind: str, n_shards: int = 4) -> tuple[object, list[str], np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    trained, _, _ = train_index(x, len(x), IndexConfig(kind=kind, nlist=64, train_size=6000))
    paths = []
    for s, part in enumerate(np.array_split(np.arange(len(x)), n_shards)):
        shard = empty_like(trained)
        if s != 2:  # one empty shard, as a unit of unusable rows gives
            add_vectors(shard, x[part], part.astype(np.int64) * 7)
        paths.append(str(tmp_path / "shards" / f"unit-{s}.faiss"))
        Path(paths[-1]).parent.mkdir(exist_ok=True)
        write_shard(shard, paths[-1])
    return trained, paths, x


def _reference(trained, paths: list[str], out: Path):
    """FAISS's own on-disk merge, on copies of the shards."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    copies = [str(out.parent / f"ref-{Path(p).name}") for p in paths]
    for p, c in zip(paths, copies):
        shutil.copy(p, c)
    index = empty_like(trained)
    merge_ondisk(index, copies, str(out.with_suffix(".ivfdata")))
    faiss.write_index(index, str(out))
    return index


def _search(path: Path, q: np.ndarray):
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    faiss.extract_index_ivf(index).nprobe = 8
    return index.ntotal, index.search(q, 10)


@pytest.mark.parametrize("kind", ["ivfflat", "ivfsq8"])
def test_merge_deleting_writes_faiss_merge_bytes_and_deletes_each_shard(tmp_path, kind):
    trained, paths, x = _shards(tmp_path, kind)
    ref = tmp_path / "ref" / "regions.faiss"
    ref.parent.mkdir()
    _reference(trained, paths, ref)
    out = tmp_path / "job" / "regions.faiss"
    out.parent.mkdir()
    left = []
    n = merge_deleting(trained, paths, str(out), on_shard=lambda i: left.append(sum(Path(p).exists() for p in paths)))
    assert n == 4500 and left == [3, 2, 1, 0]  # each shard gone once copied
    assert out.with_suffix(".ivfdata").read_bytes() == ref.with_suffix(".ivfdata").read_bytes()
    assert not Path(str(out) + ".merge").exists()
    (nt, (d, i)), (rnt, (rd, ri)) = _search(out, x[:50]), _search(ref, x[:50])
    assert nt == rnt == 4500 and np.array_equal(i, ri) and np.array_equal(d, rd)
    assert (i[:, 0] == np.arange(50) * 7).all()  # each row finds itself under its label


def test_a_killed_merge_resumes_from_the_next_shard(tmp_path, monkeypatch):
    import engines.vector.ondisk as ondisk

    monkeypatch.setattr(ondisk, "COPY_BYTES", 32 * 10)  # 10 entries a copy: lists longer than a copy, copies of many lists
    trained, paths, x = _shards(tmp_path, "ivfsq8")
    ref = tmp_path / "ref.faiss"
    _reference(trained, paths, ref)
    out = tmp_path / "regions.faiss"

    def killed(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_deleting(trained, paths, str(out), on_shard=killed)
    assert merged_shards(str(out)) == {"unit-0.faiss", "unit-1.faiss"}
    assert [Path(p).exists() for p in paths] == [False, False, True, True]
    assert not out.exists()  # no index file before every list is filled
    assert merge_deleting(trained, paths, str(out)) == 4500
    assert out.with_suffix(".ivfdata").read_bytes() == ref.with_suffix(".ivfdata").read_bytes()
    assert merged_shards(str(out)) == set()


def test_a_shard_of_another_index_is_refused_by_name(tmp_path):
    trained, paths, _ = _shards(tmp_path, "ivfflat")
    (tmp_path / "other").mkdir()
    _, other_paths, _ = _shards(tmp_path / "other", "ivfsq8")
    with pytest.raises(ValueError, match="unit-1.faiss"):
        merge_deleting(trained, [paths[0], other_paths[1]], str(tmp_path / "regions.faiss"))
