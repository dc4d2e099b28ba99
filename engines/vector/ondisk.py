"""IVF shards merged into one set of on-disk inverted lists, each shard deleted once copied.

FAISS's ``merge_ondisk`` memory-maps every shard and copies them all at once, so the disk holds
the shards and the merged lists together (8-bit lists: 2.6 + 2.6 GB at 1M rows, ~26 + 26 at 10M),
the job's peak of disk.
Here the merged file (``<index>.ivfdata``, the layout FAISS's ``OnDiskInvertedLists`` reads:
list after list, ``capacity x code_size`` code bytes then ``capacity`` int64 ids) is laid out
first, as a sparse file, from every shard's list sizes; each shard is then copied into its place
in every list and deleted, so the disk holds the merged lists plus one shard. The result is
byte for byte what ``merge_ondisk`` writes (tests/engines/vector/test_ondisk.py).

A shard file is what ``index.write_shard`` writes: FAISS's serialisation of an IVF index whose
inverted lists (``ArrayInvertedLists``) come last: ``ilar``, nlist, code size, ``full`` (every
list's size) or ``sprs`` (list, size pairs), then each non-empty list's codes and ids in list
order. That tail is read here with NumPy (a memory map, nothing held); its header is checked.

Resumable: the layout (the final index file), the list totals and how far each list is filled
are saved in ``<index>.merge/`` before the first copy and after each shard, so a killed merge
goes on from the next shard (a shard is deleted only after its progress is saved; a shard
copied but not yet recorded is copied again, to the same place)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

COPY_BYTES = 64 << 20
"""Code bytes copied at a time: the gathered codes plus ~5 index arrays of 8 bytes an entry
(~0.2 GB at 8-bit codes of 231 dimensions, ~0.1 GB at float32)."""


def _fourcc(s: str) -> int:
    return int.from_bytes(s.encode(), "little")


def _rows(buf: np.ndarray, width: int) -> np.ndarray:
    """Every byte offset of ``buf`` as the start of a ``width``-byte row (an overlapping view), so
    entries at arbitrary offsets are gathered and scattered with one fancy index each."""
    return np.lib.stride_tricks.as_strided(buf, (len(buf) - width + 1, width), (1, 1), writeable=buf.flags.writeable)


def header_bytes(trained: Any, folder: Path) -> int:
    """Bytes before the inverted lists in a shard of ``trained``: an empty shard written as
    ``write_shard`` writes them, less its empty lists' 32 bytes ("ilar", nlist, code size, "sprs",
    an empty vector). The rest (the IVF header, the scalar quantiser, the stub quantiser) does not
    depend on the lists."""
    from engines.vector.index import empty_like, write_shard

    path = folder / "empty-shard.faiss"
    write_shard(empty_like(trained), str(path))
    size = path.stat().st_size
    path.unlink()
    return size - 32


def shard_lists(path: str, header: int, nlist: int, code_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(the shard file mapped read-only, its list sizes, where its lists' data start)."""
    buf = np.memmap(path, np.uint8, mode="r")

    def u(at: int, n: int = 1, width: int = 8) -> np.ndarray:
        return np.frombuffer(buf[at : at + n * width], np.uint64 if width == 8 else np.uint32)

    if len(buf) < header + 32 or int(u(header, width=4)[0]) != _fourcc("ilar"):
        raise ValueError(f"{path}: not a shard of this index (no inverted lists at byte {header})")
    if (int(u(header + 4)[0]), int(u(header + 12)[0])) != (nlist, code_size):
        raise ValueError(
            f"{path}: {int(u(header + 4)[0])} lists of {int(u(header + 12)[0])}-byte codes, the index has {nlist} of {code_size}"
        )
    kind, count = int(u(header + 20, width=4)[0]), int(u(header + 24)[0])
    vec = u(header + 32, count).astype(np.int64)
    sizes = np.zeros(nlist, np.int64)
    if kind == _fourcc("full"):
        sizes[:] = vec
    elif kind == _fourcc("sprs"):
        sizes[vec[0::2]] = vec[1::2]
    else:
        raise ValueError(f"{path}: unknown inverted-list layout {kind:#x}")
    start = header + 32 + 8 * count
    if start + int(sizes.sum()) * (code_size + 8) != len(buf):
        raise ValueError(f"{path}: {len(buf)} bytes where its lists say {start + int(sizes.sum()) * (code_size + 8)}")
    return buf, sizes, start


def copy_shard(src: np.ndarray, sizes: np.ndarray, start: int, dst: np.ndarray, layout: dict[str, np.ndarray], code_size: int) -> None:
    """Copy a shard's lists into their places in the merged file ``dst`` (mapped): after the
    entries of the shards before it (``layout["filled"]``, advanced here). Each list takes
    ``totals x (code_size + 8)`` bytes, in list order (``set_all_lists_sizes``' layout)."""
    totals, filled = layout["totals"], layout["filled"]
    offsets = np.concatenate([[0], np.cumsum(totals * (code_size + 8))[:-1]]).astype(np.int64)
    lists = np.flatnonzero(sizes)
    n = sizes[lists]
    src_at = start + np.concatenate([[0], np.cumsum(n * (code_size + 8))[:-1]]).astype(np.int64)
    ends, step = np.cumsum(n), max(1, COPY_BYTES // code_size)
    a = 0
    while a < len(lists):
        b = max(a + 1, int(np.searchsorted(ends, ends[a] - n[a] + step, side="right")))
        cnt = n[a:b]
        rep = np.repeat(np.arange(a, b), cnt)
        k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        lst = lists[rep]
        at = filled[lst] + k
        _rows(dst, code_size)[offsets[lst] + at * code_size] = _rows(src, code_size)[src_at[rep] + k * code_size]
        _rows(dst, 8)[offsets[lst] + totals[lst] * code_size + at * 8] = _rows(src, 8)[src_at[rep] + n[rep] * code_size + k * 8]
        a = b
    filled[lists] += n


def _lay_out(trained: Any, shard_paths: list[str], data_path: str, state: Path) -> None:
    """The merged index file (its lists' places, no data yet) and the sparse data file it points
    to, from every shard's list sizes; the layout saved in ``state``."""
    import faiss

    from engines.vector.index import empty_like

    index = empty_like(trained)
    ivf = faiss.extract_index_ivf(index)
    header = header_bytes(trained, state)
    totals = np.zeros(ivf.nlist, np.int64)
    for p in shard_paths:
        totals += shard_lists(p, header, ivf.nlist, ivf.code_size)[1]
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, data_path)
    sizes = totals.astype(np.uint64)
    lists.set_all_lists_sizes(faiss.swig_ptr(sizes))
    lists.update_totsize(int(totals.sum()) * (ivf.code_size + 8))  # a sparse file: blocks come as shards are copied
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    index.ntotal = ivf.ntotal = int(totals.sum())
    faiss.write_index(index, str(state / "index.faiss"))
    _save(state, {"totals": totals, "filled": np.zeros_like(totals)}, [], header)


def _save(state: Path, layout: dict[str, np.ndarray], merged: list[str], header: int) -> None:
    np.savez(state / "layout.tmp.npz", **layout)
    (state / "layout.tmp.npz").replace(state / "layout.npz")
    (state / "merged.tmp").write_text(json.dumps({"merged": merged, "header": header}))
    (state / "merged.tmp").replace(state / "merged.json")


def merge_deleting(trained: Any, shard_paths: list[str], index_path: str, on_shard: Callable[[int], None] | None = None) -> int:
    """Merge IVF shards of ``trained`` into ``index_path`` with its lists in ``<index>.ivfdata``,
    deleting each shard once copied (see the module doc); returns the vectors merged.
    ``on_shard(i)``: called after the i-th shard is copied, saved and deleted (progress)."""
    import faiss

    ivf = faiss.extract_index_ivf(trained)
    data_path = str(Path(index_path).with_suffix(".ivfdata"))
    state = Path(index_path + ".merge")
    if not (state / "merged.json").exists():
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        _lay_out(trained, shard_paths, data_path, state)
    got = json.loads((state / "merged.json").read_text())
    merged, header = got["merged"], got["header"]
    with np.load(state / "layout.npz") as z:
        layout = {k: z[k].copy() for k in z.files}
    dst = np.memmap(data_path, np.uint8, mode="r+")
    for i, p in enumerate(shard_paths):
        name = Path(p).name
        if name not in merged:
            src, sizes, start = shard_lists(p, header, ivf.nlist, ivf.code_size)
            copy_shard(src, sizes, start, dst, layout, ivf.code_size)
            del src  # no msync: a killed process leaves its writes in the page cache, as FAISS's merge does
            merged.append(name)
            _save(state, layout, merged, header)
        Path(p).unlink(missing_ok=True)
        if on_shard is not None:
            on_shard(i)
    if not np.array_equal(layout["filled"], layout["totals"]):
        raise RuntimeError(f"merge of {len(shard_paths)} shards left lists short of their sizes (state in {state})")
    del dst
    (state / "index.faiss").replace(index_path)
    shutil.rmtree(state)
    return int(layout["totals"].sum())


def merged_shards(index_path: str) -> set[str]:
    """Names of the shard files an interrupted ``merge_deleting`` copied (and may have deleted)."""
    f = Path(index_path + ".merge") / "merged.json"
    return set(json.loads(f.read_text())["merged"]) if f.exists() else set()
