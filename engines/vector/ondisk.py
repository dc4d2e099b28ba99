"""IVF shards merged into one set of on-disk inverted lists, a range of lists at a time.

FAISS's ``merge_ondisk`` memory-maps every shard and copies them all at once, so the disk holds
the shards and the merged lists together (8-bit lists: 2.6 + 2.6 GB at 1M rows, ~26 + 26 at 10M).
Here the merged file (``<index>.ivfdata``, the layout FAISS's ``OnDiskInvertedLists`` reads:
list after list, ``capacity x code_size`` code bytes then ``capacity`` int64 ids) is laid out
first, as a sparse file, from every shard's list sizes. Then it is written a range of lists at a
time (``RANGE_BYTES``), last range first: the range is assembled in memory from the same range of
every shard (a contiguous slice of each, as a shard's lists are in list order), written in one
sequential write, and every shard is truncated to where that range began. The disk holds the
lists plus one range; each byte is read once and written once. The result is byte for byte what
``merge_ondisk`` writes (tests/engines/vector/test_ondisk.py).

Why ranges and not shard after shard (sessions 17-18): a shard holds a few entries of every list,
so copying it into the merged file touches every page of that file; once the file outgrows the
page cache each shard re-reads and re-writes it nearly whole. At 10M rows (26 GB of 8-bit lists,
200 shards, 24 GiB of memory) that merge ran at ~15 s a shard, ~50 min in all (session 19),
where the 3M one (7.8 GB, in cache) took 47 s.

A shard file is what ``write_shard`` writes: FAISS's serialisation of an IVF index whose
inverted lists (``ArrayInvertedLists``) come last: ``ilar``, nlist, code size, ``full`` (every
list's size) or ``sprs`` (list, size pairs), then each non-empty list's codes and ids in list
order. That tail is read here with NumPy (a memory map, nothing held); its header is checked.

Resumable: the layout (the final index file), every shard's list sizes and where each range
starts in each shard are saved in ``<index>.merge/`` before the first copy, and the next range
to copy after each one, so a killed merge goes on from there (a range is written and synced
before its record is saved and the shards are cut; a range written but not yet recorded is
written again, from the shards, to the same place)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RANGE_BYTES = 512 << 20
"""Merged list bytes assembled in memory at once (``merge_deleting``): a range of lists."""
COPY_BYTES = 64 << 20
"""Code bytes copied at a time: the gathered codes plus ~5 index arrays of 8 bytes an entry
(~0.2 GB at 8-bit codes of 231 dimensions, ~0.1 GB at float32)."""


def empty_like(trained: Any) -> Any:
    """A copy of a trained index with no vectors: the starting point of every shard."""
    import faiss

    out = faiss.clone_index(trained)
    out.reset()
    return out


def write_shard(index: Any, path: str) -> None:
    """Write a shard of an IVF index without its coarse quantiser (an empty flat one in its place).

    Why: a shard is only ever merged list by list (``faiss.contrib.ondisk.merge_ondisk`` reads its
    inverted lists, never its quantiser), yet each carried a full copy of it: 168 MB of each
    313 MB shard at 3M rows (10 of the job's 19 GB of shards), ~0.5 GB per shard at 10M. The
    merged lists are byte for byte the same. A flat index (no quantiser) is written whole."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # flat
        faiss.write_index(index, path)
        return
    quantiser, own = ivf.quantizer, ivf.own_fields
    stub = faiss.IndexFlat(ivf.d, ivf.metric_type)
    ivf.own_fields = False  # the stub stays Python's; the real quantiser is put back below
    ivf.quantizer = stub
    try:
        faiss.write_index(index, path)
    finally:
        ivf.quantizer, ivf.own_fields = quantiser, own


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


def range_bounds(totals: np.ndarray, entry_bytes: int, range_bytes: int) -> np.ndarray:
    """List numbers cutting the merged lists into ranges of about ``range_bytes`` each (a list is
    never split: one longer than ``range_bytes`` is a range of its own), ``0`` first, nlist last."""
    ends, bounds = np.cumsum(totals * entry_bytes), [0]
    while bounds[-1] < len(totals):
        base = int(ends[bounds[-1] - 1]) if bounds[-1] else 0
        bounds.append(max(bounds[-1] + 1, int(np.searchsorted(ends, base + range_bytes, side="right"))))
    return np.array(bounds, np.int64)


def _lay_out(trained: Any, sources: list[str], data_path: str, state: Path, range_bytes: int, base: str | None) -> None:
    """The merged index file (its lists' places, no data yet) and the sparse data file it points
    to, from every source's list sizes; saved in ``state``: the layout, every source's sizes
    (``sizes.npy``, sources x nlist, memory-mapped while merging) and where each range of lists
    starts in each source (``at``). With ``base``, ``sources[0]`` is that index's data file."""
    import faiss

    index = empty_like(trained)
    ivf = faiss.extract_index_ivf(index)
    header, entry = header_bytes(trained, state), ivf.code_size + 8
    sizes = np.lib.format.open_memmap(state / "sizes.npy", "w+", np.int64, (len(sources), ivf.nlist))
    starts = np.zeros(len(sources), np.int64)
    for s, p in enumerate(sources):
        if base is not None and s == 0:
            sizes[0] = ondisk_sizes(base, ivf.nlist, ivf.code_size)
        else:
            _, sizes[s], starts[s] = shard_lists(p, header, ivf.nlist, ivf.code_size)
    totals = sizes.sum(0) if len(sources) else np.zeros(ivf.nlist, np.int64)
    bounds = range_bounds(totals, entry, range_bytes)
    at = np.zeros((len(sources), len(bounds)), np.int64)
    for s in range(len(sources)):
        at[s] = starts[s] + np.concatenate([[0], np.cumsum(sizes[s])])[bounds] * entry
    sizes.flush()
    del sizes
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, data_path)
    sizes64 = totals.astype(np.uint64)  # named: a temporary's memory is freed before FAISS reads it
    lists.set_all_lists_sizes(faiss.swig_ptr(sizes64))
    lists.update_totsize(int(totals.sum()) * entry)  # a sparse file: blocks come as ranges are copied
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    index.ntotal = ivf.ntotal = int(totals.sum())
    faiss.write_index(index, str(state / "index.faiss"))
    np.savez(state / "layout.npz", totals=totals, bounds=bounds, at=at)
    _save(state, len(bounds) - 1)


def _save(state: Path, next_range: int) -> None:
    """Ranges ``>= next_range`` are copied (they go last to first)."""
    (state / "merged.tmp").write_text(json.dumps({"format": 2, "next_range": next_range}))
    (state / "merged.tmp").replace(state / "merged.json")


def _copy_range(r: int, sources: list[str], layout: dict[str, np.ndarray], sizes: np.ndarray, code_size: int) -> np.ndarray:
    """Range ``r`` of the merged lists, assembled in memory from the same range of every source
    (a contiguous slice of each: a shard's lists are in list order)."""
    totals, bounds, at = layout["totals"], layout["bounds"], layout["at"]
    a, b = int(bounds[r]), int(bounds[r + 1])
    buf = np.empty(int(totals[a:b].sum()) * (code_size + 8), np.uint8)
    part = {"totals": totals[a:b], "filled": np.zeros(b - a, np.int64)}
    for s, p in enumerate(sources):
        lo, hi = int(at[s, r]), int(at[s, r + 1])
        if hi == lo:
            continue
        if Path(p).stat().st_size < hi:
            raise ValueError(f"{p}: shorter than the lists the merge recorded for it (changed since the merge began?)")
        src = np.memmap(p, np.uint8, mode="r", offset=lo, shape=(hi - lo,))
        copy_shard(src, np.asarray(sizes[s, a:b]), 0, buf, part, code_size)
        del src
    if not np.array_equal(part["filled"], part["totals"]):
        raise RuntimeError(f"lists {a}-{b}: the shards hold other sizes than the merge recorded")
    return buf


def _pwrite_all(fd: int, buf: np.ndarray, at: int) -> None:
    view, done = memoryview(buf), 0
    while done < len(view):  # one write may take less than asked (above 2 GiB on Linux)
        done += os.pwrite(fd, view[done:], at + done)


def merge_deleting(
    trained: Any,
    shard_paths: list[str],
    index_path: str,
    on_range: Callable[[int], None] | None = None,
    range_bytes: int | None = None,
    *,
    data_path: str | None = None,
    base: str | None = None,
) -> int:
    """Merge IVF shards of ``trained`` into ``index_path`` with its lists in ``data_path``
    (default ``<index>.ivfdata``), a range of lists at a time, last to first, each range's part
    of every shard cut off (the shards truncated) once the range is written; the shards deleted
    at the end. Returns the vectors in the merged index. ``on_range(r)``: called after range ``r`` is written,
    saved and cut off. ``range_bytes``: the merged bytes held in memory at once (``RANGE_BYTES``).

    ``base``: an on-disk index file (as this writes) whose lists come first in every list, as
    ``merge_from`` would put them: an index extended with new rows. Its data file is only read,
    never cut (readers may have it mapped), so ``data_path`` must be another file."""
    import faiss

    ivf = faiss.extract_index_ivf(trained)
    data_path = data_path or str(Path(index_path).with_suffix(".ivfdata"))
    sources = list(shard_paths)
    if base is not None:
        base_data = ondisk_data_path(base)
        if Path(base_data).resolve() == Path(data_path).resolve():
            raise ValueError(f"{data_path}: the merged lists cannot overwrite the lists of the index they extend")
        sources = [base_data, *sources]
    state = Path(index_path + ".merge")
    if (state / "merged.json").exists() and json.loads((state / "merged.json").read_text()).get("format") != 2:
        raise RuntimeError(
            f"{state}: a merge begun by an older version (shard by shard, its shards deleted as it went) cannot be "
            f"resumed; delete {state}, {data_path} and the shards folder to index again"
        )
    if not (state / "merged.json").exists():
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        _lay_out(trained, sources, data_path, state, range_bytes or RANGE_BYTES, base)
    with np.load(state / "layout.npz") as z:
        layout = {k: z[k].copy() for k in z.files}
    if len(layout["at"]) != len(sources):
        raise ValueError(f"{state}: the merge began with {len(layout['at'])} sources, not {len(sources)}")
    _copy_ranges(state, sources, layout, ivf.code_size, data_path, 1 if base is not None else 0, on_range)
    if not np.array_equal(ondisk_sizes(state / "index.faiss", ivf.nlist, ivf.code_size), layout["totals"]):
        raise RuntimeError(f"{state / 'index.faiss'}: its list sizes are not the merged ones")  # never used as the index
    (state / "index.faiss").replace(index_path)
    for p in shard_paths:
        Path(p).unlink(missing_ok=True)
    shutil.rmtree(state)
    return int(layout["totals"].sum())


def _copy_ranges(
    state: Path, sources: list[str], layout: dict, code_size: int, data_path: str, kept: int, on_range: Callable[[int], None] | None
) -> None:
    """Copy the ranges not yet copied, last to first; after each, cut every source but the first
    ``kept`` short of that range (the disk holds the merged lists and one range)."""
    sizes = np.load(state / "sizes.npy", mmap_mode="r")
    offsets = np.concatenate([[0], np.cumsum(layout["totals"] * (code_size + 8))]).astype(np.int64)
    fd = os.open(data_path, os.O_RDWR)
    try:
        for r in reversed(range(json.loads((state / "merged.json").read_text())["next_range"])):
            buf = _copy_range(r, sources, layout, sizes, code_size)
            _pwrite_all(fd, buf, int(offsets[layout["bounds"][r]]))
            os.fsync(fd)  # on disk before the shards' copies are cut off
            del buf
            _save(state, r)
            for s, p in enumerate(sources[kept:], kept):
                os.truncate(p, min(int(layout["at"][s, r]), Path(p).stat().st_size))
            if on_range is not None:
                on_range(r)
    finally:
        os.close(fd)
    del sizes


def merge_index(trained: str, shard_paths: list[str], out_path: str, *, data_path: str | None = None, base: str | None = None) -> int:
    """The shards (``write_shard`` files) of the trained index in the file ``trained``
    merged into one index file; returns its vector count. Run as a Ray task by the jobs: the
    driver never holds the index.

    An IVF index is merged into on-disk inverted lists (``data_path``, default
    ``<out>.ivfdata``: memory-mapped, nothing held; held in memory, the merged lists made this
    task the dedup job's largest process, 12.7 GiB at 1M rows) a range of lists at a time, each
    shard cut short as its part of a range is copied (``merge_deleting``): the disk holds the
    lists and one range, not the lists twice, and each byte is read and written once. Resumes
    where a killed merge stopped. A flat index (small data) is merged in memory.

    ``base``: the index file being extended. Its lists come first; on-disk ones are only read
    (readers may have them mapped); an index written whole (a flat one, or an IVF one from an
    older version) is read into memory, and an IVF one merged as one more shard."""
    import faiss

    index = faiss.read_index(trained)
    old = None if base is None or _header_only(base) is not None else faiss.read_index(base)
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:  # flat
        index = old if old is not None else empty_like(index)
        for p in shard_paths:
            shard = faiss.read_index(p)
            if shard.ntotal:
                index.merge_from(shard, 0)  # labels kept as they are
        faiss.write_index(index, out_path + ".tmp")
        Path(out_path + ".tmp").replace(out_path)
        return int(index.ntotal)
    if old is not None:  # an IVF index written whole: its lists as the first shard (a copy)
        copy = Path(out_path + ".base.faiss")
        if not copy.exists() and not Path(out_path + ".merge").exists():
            write_shard(old, str(copy) + ".tmp")
            Path(str(copy) + ".tmp").replace(copy)
        shard_paths, base = [str(copy), *shard_paths], None
    del old
    return merge_deleting(index, shard_paths, out_path, data_path=data_path, base=base)


# --- reading on-disk indexes ------------------------------------------------------------------


def _ondisk_lists(index: Any) -> Any | None:
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not IVF
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def _header_only(path: str | Path) -> Any | None:
    """The index in ``path`` without its lists' data when they are on disk, else None (FAISS
    cannot skip in-file lists: it refuses them under ``IO_FLAG_SKIP_IVF_DATA``)."""
    import faiss

    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA)
    except RuntimeError:  # in-file (array) lists
        return None
    return index if _ondisk_lists(index) is not None else None


def _beside(path: str | Path, lists: Any) -> str:
    """The data file of ``lists`` (read from the index file ``path``): the file of that name
    beside it (FAISS stores the absolute path the merge wrote; the folder may have moved or been
    downloaded)."""
    return str(Path(path).parent / Path(lists.filename).name)


def ondisk_data_path(path: str | Path) -> str:
    """The data file of the on-disk index in ``path`` (``_beside``)."""
    index = _header_only(path)
    if index is None:
        raise ValueError(f"{path}: not an index with on-disk lists")
    return _beside(path, _ondisk_lists(index))


def ondisk_sizes(path: str | Path, nlist: int, code_size: int) -> np.ndarray:
    """The list sizes of the on-disk index in ``path``, checked to be laid out as
    ``merge_deleting`` writes them (list after list, each exactly full): the layout of a shard's
    lists, so the data file is read as one more shard."""
    index = _header_only(path)  # kept: ``lists`` is only a view of its lists
    lists = _ondisk_lists(index) if index is not None else None
    if lists is None or (lists.nlist, lists.code_size) != (nlist, code_size):
        raise ValueError(f"{path}: not an on-disk index of {nlist} lists of {code_size}-byte codes")
    one = lists.lists
    sizes = np.fromiter((one.at(i).size for i in range(nlist)), np.int64, nlist)
    caps = np.fromiter((one.at(i).capacity for i in range(nlist)), np.int64, nlist)
    offs = np.fromiter((one.at(i).offset for i in range(nlist)), np.int64, nlist)
    packed = np.concatenate([[0], np.cumsum(sizes * (code_size + 8))[:-1]])
    if not (np.array_equal(sizes, caps) and np.array_equal(offs[sizes > 0], packed[sizes > 0])):
        raise ValueError(f"{path}: its lists are not packed one after another; rebuild the index")
    return sizes


def read_index(path: str | Path) -> Any:
    """An index file as a reader wants it, for searching only. On-disk lists: mapped read-only
    from the data file beside it (``_beside``), so every process on a machine shares one copy in
    the page cache instead of each reading the whole index into its memory. In-file lists (a
    flat index, or an IVF one written whole): mapped from the file too (``IO_FLAG_MMAP_IFC``;
    FAISS aborts on adding to a mapped index: an index to add to is read with
    ``faiss.read_index``)."""
    import faiss

    index = _header_only(path)
    if index is None:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    lists = _ondisk_lists(index)
    lists.filename = _beside(path, lists)
    lists.read_only = True
    # no prefetch threads: FAISS starts up to 32 per search call (one call per OpenMP slice),
    # they crashed a k-NN worker (SIGSEGV in OngoingPrefetch::prefetch_list, 100k rows) and
    # slow searches down (faiss issue 5010); the kernel reads ahead on a mapped file anyway
    lists.prefetch_nthread = 0
    lists.do_mmap()
    return index


def trained_of(path: str | Path) -> Any:
    """The trained, empty index of the index in ``path``: what new shards of it start from.
    On-disk lists: their data is not read (quantiser and codec only); an index written whole
    (flat, or from an older version) is read and emptied."""
    import faiss

    index = _header_only(path)
    if index is None:
        return empty_like(faiss.read_index(str(path)))
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    index.ntotal = ivf.ntotal = 0
    return index
