"""Shards merged into on-disk lists a range of lists at a time, each shard cut short as its part
of a range is copied: the same bytes as FAISS's ``merge_ondisk`` (which holds every shard until
the end), and a killed merge resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engines.vector.index import IndexConfig, add_vectors, train_index
from engines.vector.ondisk import empty_like, merge_deleting, range_bounds, write_shard


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


def _entry_bytes(trained) -> int:
    import faiss

    return faiss.extract_index_ivf(trained).code_size + 8


def _shard_bytes(paths: list[str]) -> int:
    return sum(Path(p).stat().st_size for p in paths if Path(p).exists())


@pytest.mark.parametrize("kind", ["ivfflat", "ivfsq8"])
def test_merge_by_ranges_writes_faiss_merge_bytes_and_cuts_the_shards_as_it_goes(tmp_path, kind):
    trained, paths, x = _shards(tmp_path, kind)
    ref = tmp_path / "ref" / "regions.faiss"
    ref.parent.mkdir()
    _reference(trained, paths, ref)
    out = tmp_path / "job" / "regions.faiss"
    out.parent.mkdir()
    before, seen = _shard_bytes(paths), []
    n = merge_deleting(trained, paths, str(out), on_range=lambda r: seen.append((r, _shard_bytes(paths))), range_bytes=20_000)
    assert n == 4500
    ranges = [r for r, _ in seen]
    assert len(ranges) >= 5 and ranges == sorted(ranges, reverse=True) and ranges[-1] == 0  # last range first
    left = [b for _, b in seen]
    assert before > left[0] and all(a > b for a, b in zip(left, left[1:]))  # each range cut off every shard
    assert before - left[-1] == 4500 * _entry_bytes(trained)  # at the end only their headers were left
    assert not any(Path(p).exists() for p in paths) and not Path(str(out) + ".merge").exists()
    assert out.with_suffix(".ivfdata").read_bytes() == ref.with_suffix(".ivfdata").read_bytes()
    (nt, (d, i)), (rnt, (rd, ri)) = _search(out, x[:50]), _search(ref, x[:50])
    assert nt == rnt == 4500 and np.array_equal(i, ri) and np.array_equal(d, rd)
    assert (i[:, 0] == np.arange(50) * 7).all()  # each row finds itself under its label


def test_ranges_cut_between_lists_of_about_the_asked_size():
    totals = np.array([3, 0, 5, 1, 1, 20, 0, 2])
    assert range_bounds(totals, 10, 40).tolist() == [0, 2, 3, 5, 6, 8]  # lists 2 (50 bytes) and 5 (200) alone
    assert range_bounds(totals, 10, 10_000).tolist() == [0, 8]
    assert range_bounds(np.zeros(4, np.int64), 10, 40).tolist() == [0, 4]
    assert range_bounds(np.zeros(0, np.int64), 10, 40).tolist() == [0]


def test_a_killed_merge_resumes_from_the_next_range(tmp_path, monkeypatch):
    import json

    import engines.vector.ondisk as ondisk

    monkeypatch.setattr(ondisk, "COPY_BYTES", 32 * 10)  # 10 entries a copy: lists longer than a copy, copies of many lists
    trained, paths, x = _shards(tmp_path, "ivfsq8")
    ref = tmp_path / "ref.faiss"
    _reference(trained, paths, ref)
    out = tmp_path / "regions.faiss"
    done = []

    def killed(r: int) -> None:
        done.append(r)
        if len(done) == 2:
            raise KeyboardInterrupt

    before = _shard_bytes(paths)
    with pytest.raises(KeyboardInterrupt):
        merge_deleting(trained, paths, str(out), on_range=killed, range_bytes=20_000)
    assert json.loads((tmp_path / "regions.faiss.merge" / "merged.json").read_text())["next_range"] == done[-1]
    assert all(Path(p).exists() for p in paths) and _shard_bytes(paths) < before  # cut short, none deleted
    assert not out.exists()  # no index file before every list is filled
    assert merge_deleting(trained, paths, str(out), range_bytes=1 << 30) == 4500  # the saved ranges, not this size
    assert out.with_suffix(".ivfdata").read_bytes() == ref.with_suffix(".ivfdata").read_bytes()
    assert not any(Path(p).exists() for p in paths)


def test_a_merge_begun_shard_by_shard_is_refused_with_the_fix(tmp_path):
    trained, paths, _ = _shards(tmp_path, "ivfsq8")
    state = tmp_path / "regions.faiss.merge"
    state.mkdir()
    (state / "merged.json").write_text('{"merged": ["unit-0.faiss"], "header": 100}')  # session 18's format
    with pytest.raises(RuntimeError, match="cannot be resumed; delete"):
        merge_deleting(trained, paths, str(tmp_path / "regions.faiss"))


def test_a_shard_of_another_index_is_refused_by_name(tmp_path):
    trained, paths, _ = _shards(tmp_path, "ivfflat")
    (tmp_path / "other").mkdir()
    _, other_paths, _ = _shards(tmp_path / "other", "ivfsq8")
    with pytest.raises(ValueError, match="unit-1.faiss"):
        merge_deleting(trained, [paths[0], other_paths[1]], str(tmp_path / "regions.faiss"))


def test_an_on_disk_index_extended_with_new_shards_equals_merging_all_in_memory(tmp_path):
    from engines.vector.ondisk import ondisk_data_path, read_index, trained_of

    trained, paths, x = _shards(tmp_path, "ivfsq8", n_shards=6)
    ref = tmp_path / "ref" / "index.faiss"
    ref.parent.mkdir()
    _reference(trained, paths, ref)  # all six shards at once, by FAISS (on copies)
    first = tmp_path / "v1" / "index.faiss"
    first.parent.mkdir()
    assert merge_deleting(trained, paths[:3], str(first), range_bytes=20_000) == 2000  # shard 2 is empty
    base_data = Path(ondisk_data_path(first))
    base_bytes = base_data.read_bytes()
    assert trained_of(first).ntotal == 0
    out = tmp_path / "v2" / "index.faiss"
    out.parent.mkdir()
    data = out.parent / "index-2.ivfdata"
    n = merge_deleting(trained_of(first), paths[3:], str(out), range_bytes=20_000, data_path=str(data), base=str(first))
    assert n == 5000 and base_data.read_bytes() == base_bytes  # the base's lists read, never cut
    assert data.read_bytes() == ref.with_suffix(".ivfdata").read_bytes()  # base entries first in every list
    (nt, (d, i)), (rnt, (rd, ri)) = _search(out, x[:50]), _search(ref, x[:50])
    assert nt == rnt == 5000 and np.array_equal(i, ri) and np.array_equal(d, rd)
    assert read_index(out).ntotal == 5000
    with pytest.raises(ValueError, match="cannot overwrite"):
        merge_deleting(trained, [], str(tmp_path / "x.faiss"), data_path=str(base_data), base=str(first))


def test_a_moved_on_disk_index_is_read_from_its_new_folder_and_shared_read_only(tmp_path):
    from engines.vector.ondisk import read_index

    trained, paths, x = _shards(tmp_path, "ivfflat")
    out = tmp_path / "a" / "index.faiss"
    out.parent.mkdir()
    merge_deleting(trained, paths, str(out), data_path=str(out.parent / "index-v1.ivfdata"))
    shutil.move(str(out.parent), str(tmp_path / "b"))  # as a pull from the object store puts it elsewhere
    index = read_index(tmp_path / "b" / "index.faiss")
    import faiss

    faiss.extract_index_ivf(index).nprobe = 8
    assert index.ntotal == 4500
    _, i = index.search(x[:20], 1)
    assert (i[:, 0] == np.arange(20) * 7).all()
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert lists.read_only and lists.filename == str(tmp_path / "b" / "index-v1.ivfdata")
    assert lists.prefetch_nthread == 0  # FAISS's prefetch threads crashed a k-NN worker (read_index)
