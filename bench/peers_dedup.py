"""Peer near-duplicate finders over a folder of images, for ``bench/dedup_quality.py``.

Runs inside the peer virtualenv (``bench/.venv-peers``), never the project's: imagededup pins its
own torch/torchvision stack and cleanvision its own pandas, and neither must disturb the project's
environment. One process per peer method, so the parent can time the whole cost (interpreter,
imports, hashing, search) of the default setting; other settings reuse the hashes and add only
their search time.

    bench/.venv-peers/bin/python bench/peers_dedup.py imagededup PHash IMAGE_DIR --settings 10,4,16
    bench/.venv-peers/bin/python bench/peers_dedup.py cleanvision phash IMAGE_DIR --settings 8,4

Prints one JSON line per setting: ``{"peer", "method", "setting", "groups": [[file stem, ...]],
"pairs": [[a, b], ...], "shared_s", "setting_s"}``: seconds of the work all settings share (imports, and for imagededup
the hashing) and of this setting's own; a file stem is the dataset row id. Groups are the transitive
closure of the peer's duplicate pairs (images without a duplicate are left out); pairs are the
ones the peer reported itself (each once, a < b), to score them without the closure too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
# bench/ holds a profile.py that would shadow the standard library's (torch imports cProfile)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def unique_pairs(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """Each reported pair once, as [smaller, larger] (imagededup lists a pair from both sides)."""
    return sorted({tuple(sorted(p)) for p in pairs if p[0] != p[1]})


def closure(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """Connected components of duplicate pairs (union-find): a peer's answer as groups."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
    comps: dict[str, list[str]] = {}
    for x in parent:
        comps.setdefault(root(x), []).append(x)
    return sorted(sorted(c) for c in comps.values() if len(c) > 1)


def import_torchvision_on_cpu() -> None:
    """The registry's torchvision 0.28 is a CUDA build whose compiled ops do not load next to a CPU
    torch (``operator torchvision::nms does not exist``), and ``imagededup.utils`` imports it. As
    ``curation/compat.py`` does: declare the two op schemas torchvision's Python code registers fake
    kernels for, then import again. The hashing methods use no torchvision op."""
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    import torch

    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    lib = torch.library.Library("torchvision", "DEF")
    for schema in (
        "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
    ):
        lib.define(schema)
    globals()["_TORCHVISION_SHIM"] = lib  # the schemas live as long as the library object
    import torchvision  # noqa: F401, F811


def import_imagededup_hashing():
    """``imagededup.methods`` without its CNN module. ``imagededup/methods/__init__`` imports
    ``cnn``, whose class body builds a MobileNetV3 with ImageNet weights, downloaded from the
    PyTorch hub at import time: with no network the import fails, even for the hashes, which use
    neither torch nor the weights. A placeholder ``cnn`` module lets the package import; the hash
    classes are imagededup's own, untouched."""
    import types

    import_torchvision_on_cpu()

    stub = types.ModuleType("imagededup.methods.cnn")

    class CNN:  # noqa: D401 - placeholder
        def __init__(self, *a, **k):
            raise RuntimeError("imagededup's CNN needs weights from the PyTorch hub (no network here)")

    stub.CNN = CNN
    sys.modules["imagededup.methods.cnn"] = stub
    from imagededup import methods

    return methods


def run_imagededup(method: str, image_dir: Path, settings: list[int]):
    """imagededup hashing (64-bit hashes, Hamming distance <= setting; the library default is 10).
    Encodes once, then searches once per threshold."""
    methods = import_imagededup_hashing()
    hasher = getattr(methods, method)(verbose=False)
    setup = time.perf_counter() - T0
    t = time.perf_counter()
    enc = hasher.encode_images(image_dir=str(image_dir))
    encode = time.perf_counter() - t
    for thr in settings:
        t = time.perf_counter()
        dups = hasher.find_duplicates(encoding_map=enc, max_distance_threshold=thr)
        pairs = [(Path(a).stem, Path(b).stem) for a, bs in dups.items() for b in bs]
        find = time.perf_counter() - t
        yield {
            "peer": "imagededup",
            "method": method,
            "setting": f"max_distance_threshold={thr}",
            "groups": closure(pairs),
            "pairs": unique_pairs(pairs),
            "shared_s": setup + encode,
            "setting_s": find,
        }


def run_cleanvision(method: str, image_dir: Path, settings: list[int]):
    """cleanvision near duplicates: images whose perceptual hash (``method``, ``hash_size`` x
    ``hash_size`` bits; default phash, 8) is identical, plus its exact (MD5) duplicate sets. The
    hash size is its only knob, so each setting hashes again (counted as its encode time)."""
    from cleanvision import Imagelab

    setup = time.perf_counter() - T0
    for size in settings:
        t = time.perf_counter()
        lab = Imagelab(data_path=str(image_dir), verbose=False)
        lab.find_issues({"near_duplicates": {"hash_type": method, "hash_size": size}}, verbose=False)
        sets = lab.info["near_duplicates"]["sets"] + lab.info["exact_duplicates"]["sets"]
        spent = time.perf_counter() - t
        pairs = [(Path(a).stem, Path(b).stem) for s in sets for a in s for b in s]  # a set = one shared hash
        yield {
            "peer": "cleanvision",
            "method": method,
            "setting": f"hash_size={size}",
            "groups": closure(pairs),
            "pairs": unique_pairs(pairs),
            "shared_s": setup,
            "setting_s": spent,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peer", choices=["imagededup", "cleanvision"])
    ap.add_argument("method", help="imagededup: PHash, DHash, WHash, AHash; cleanvision: phash, dhash, whash, ahash")
    ap.add_argument("image_dir", type=Path)
    ap.add_argument("--settings", default="", help="thresholds (imagededup) or hash sizes (cleanvision); first = default")
    a = ap.parse_args()
    settings = [int(s) for s in a.settings.split(",") if s] or ([10] if a.peer == "imagededup" else [8])
    run = run_imagededup if a.peer == "imagededup" else run_cleanvision
    for res in run(a.method, a.image_dir, settings):
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
