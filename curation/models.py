"""The model weights the platform uses: a catalogue, fetching into the hub cache, sha256 checks.

Each catalogue entry names a hub repository, a revision, the files to take (``allow_patterns``),
the sha256 of files where it is known, what the weights are for, and the config field that takes
``local_path(name)``. Files are fetched with ``huggingface_hub`` into its ordinary cache
(``HF_HOME`` / ``HF_HUB_CACHE``), so every tool that reads that cache (transformers, open_clip,
diffusers) finds them. ``huggingface_hub`` reads ``HF_ENDPOINT`` (a mirror) and ``HF_HUB_OFFLINE``
itself, once, when it is first imported: this module imports it inside functions only.

A lock file in the hub's assets folder (``huggingface_hub.cached_assets_path("zcurate", "models")``)
records, per model, the commit a pull resolved and the sha256 it saw for every file. A pull with a
lock fetches the locked commit (``--update`` moves it), and ``verify`` re-hashes the cached files
against the pinned hash, the hub's own LFS sha256 (from the cached tree listing) and the locked hash.

``ZCURATE_MODELS_CATALOGUE`` (or ``curate models ... --catalogue FILE``) points at a YAML/JSON file
whose entries replace or extend the built-in ones by name: a private mirror's repo ids, pinned
revisions and hashes. See docs/models.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from curation.config import ConfigError
from curation.errors import UserError

__all__ = [
    "CATALOGUE_ENV",
    "BUILTIN",
    "ModelEntry",
    "ModelError",
    "ModelStatus",
    "Finding",
    "PullResult",
    "catalogue",
    "get_entry",
    "lock_file",
    "read_lock",
    "status",
    "pull",
    "verify",
    "local_path",
    "resolve_weights",
    "sha256_file",
]

CATALOGUE_ENV = "ZCURATE_MODELS_CATALOGUE"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    repo_id: str
    files: tuple[str, ...]  # allow_patterns (fnmatch, as snapshot_download reads them)
    used_for: str = ""
    config_field: str = ""
    revision: str = "main"  # a branch, tag or (pinned) 40-hex commit
    path_in_repo: str = ""  # what local_path returns inside the snapshot: "" = the folder itself
    sha256: dict[str, str] = field(default_factory=dict)  # file -> expected sha256, where known
    approx_bytes: int | None = None
    repo_type: str = "model"


BUILTIN: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="clip-vit-l14-laion2b",
        repo_id="laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
        files=("open_clip_config.json", "open_clip_*.safetensors"),
        used_for="open_clip ViT-L/14 (LAION-2B): image/caption embeddings, CLIP score, input of the aesthetic head",
        config_field="prof_clip.model.path (backend: open_clip; the folder is open_clip's model folder; default when clip.model is unset)",
        approx_bytes=1_710_000_000,
    ),
    ModelEntry(
        name="chinese-clip-vit-b16",
        repo_id="OFA-Sys/chinese-clip-vit-base-patch16",
        revision="f2a455dcf33a4efd2db7c1e02f7f431a70a4b0cd",  # the commit that added model.safetensors
        files=("*.json", "vocab.txt", "model.safetensors"),
        used_for="bilingual (Chinese/English) CLIP: embeddings and CLIP score of Chinese captions",
        config_field="prof_clip.model.path (backend: hf_chinese_clip)",
        approx_bytes=753_000_000,
    ),
    ModelEntry(
        name="laion-aesthetic-l14",
        # LAION's improved-aesthetic-predictor head sac+logos+ava1-l14-linearMSE.pth. LAION publishes
        # it in a source repository, not on the hub; this is the hub copy the TRL project maintains.
        repo_id="trl-lib/ddpo-aesthetic-predictor",
        files=("aesthetic-model.pth",),
        path_in_repo="aesthetic-model.pth",
        used_for="LAION aesthetic predictor (sac+logos+ava1-l14-linearMSE): MLP head over 768-d ViT-L/14 image embeddings",
        config_field="prof_aesthetic.weights (default when unset)",
        approx_bytes=3_700_000,
    ),
    ModelEntry(
        name="siglip2-base-p16-224",
        repo_id="google/siglip2-base-patch16-224",
        files=("*.json", "*.safetensors", "*.model"),
        used_for="SigLIP 2 image encoder (base, patch 16, 224 px): image embeddings for retrieval and dedup",
        config_field="prof_clip.model.path (needs an embedding backend for SigLIP 2; none is registered yet)",
    ),
    ModelEntry(
        name="qwen3-4b",
        repo_id="Qwen/Qwen3-4B",
        files=("*.json", "*.safetensors", "merges.txt"),
        used_for="Qwen3-4B: the Z-Image text encoder (second-to-last hidden state, 2560-d caption features)",
        config_field="train.text_encoder_path",
        approx_bytes=8_050_000_000,
    ),
    ModelEntry(
        name="flux-vae",
        repo_id="Tongyi-MAI/Z-Image-Turbo",
        files=("vae/*",),
        path_in_repo="vae",
        used_for="the Flux VAE (AutoencoderKL, 16 latent channels) as shipped in the Z-Image repository's vae/ folder",
        config_field="train.vae_path",
        approx_bytes=170_000_000,
    ),
    ModelEntry(
        name="z-image-turbo",
        repo_id="Tongyi-MAI/Z-Image-Turbo",
        files=("transformer/*", "scheduler/*", "model_index.json"),
        path_in_repo="transformer",
        used_for="the released Z-Image-Turbo weights (6B S3-DiT transformer): fine-tuning start point",
        config_field="train.init_from",
        approx_bytes=24_600_000_000,
    ),
)


class ModelError(UserError):
    """A failure the command prints as one line per message (no traceback)."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


# --- the catalogue ----------------------------------------------------------------------------------

_FIELDS = {f.name for f in fields(ModelEntry)}


def _entry_from(raw: dict, base: ModelEntry | None, where: str) -> ModelEntry:
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; an entry has {sorted(_FIELDS)}")
    data: dict[str, Any] = {f: getattr(base, f) for f in _FIELDS} if base else {}
    data.update(raw)
    for key in ("name", "repo_id", "files"):
        if not data.get(key):
            raise ConfigError(f"{where}: {key} is required")
    files = data["files"]
    data["files"] = (files,) if isinstance(files, str) else tuple(str(f) for f in files)
    data["sha256"] = {str(k): str(v).lower() for k, v in (data.get("sha256") or {}).items()}
    for f, h in data["sha256"].items():
        if not _SHA256.fullmatch(h):
            raise ConfigError(f"{where}: sha256 of {f!r} is not 64 hex digits")
    data["revision"] = str(data.get("revision") or "main")
    data["path_in_repo"] = str(data.get("path_in_repo") or "").strip("/")
    return ModelEntry(**data)


def catalogue(path: str | Path | None = None) -> dict[str, ModelEntry]:
    """The built-in entries, replaced or extended by name with those of ``path`` (default: the
    file ``ZCURATE_MODELS_CATALOGUE`` names). The file is YAML or JSON: ``{models: [...]}``, or
    the list itself; ``replace: true`` drops the built-in entries."""
    out = {e.name: e for e in BUILTIN}
    path = path or os.environ.get(CATALOGUE_ENV) or None
    if not path:
        return out
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model catalogue {p} not found ({CATALOGUE_ENV} or --catalogue)")
    import yaml

    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"model catalogue {p}: {str(e).splitlines()[0]}") from None
    items = doc.get("models") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise ConfigError(f"model catalogue {p}: expected a list of entries under 'models'")
    if isinstance(doc, dict) and doc.get("replace"):
        out = {}
    for i, raw in enumerate(items):
        if not isinstance(raw, dict) or not raw.get("name"):
            raise ConfigError(f"model catalogue {p}: entry {i} has no name")
        out[raw["name"]] = _entry_from(raw, out.get(raw["name"]), f"model catalogue {p}, entry {raw['name']!r}")
    return out


def get_entry(name: str, cat: dict[str, ModelEntry] | None = None) -> ModelEntry:
    cat = catalogue() if cat is None else cat
    if name not in cat:
        raise ModelError(f"unknown model {name!r}; the catalogue has: {', '.join(sorted(cat))}")
    return cat[name]


# --- cache, lock --------------------------------------------------------------------------------------


def _hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (a lazily loaded submodule: import it by name)
    except ImportError:
        raise ModelError("huggingface_hub is not installed (it comes with the clip or train extra: pip install -e '.[clip]')") from None
    return huggingface_hub


def _cache_dir() -> Path:
    return Path(_hub().constants.HF_HUB_CACHE)


def _repo_dir(e: ModelEntry) -> Path:
    return _cache_dir() / f"{e.repo_type}s--{e.repo_id.replace('/', '--')}"


def lock_file() -> Path:
    """``<HF_HOME>/assets/zcurate/models/default/lock.json``: huggingface_hub's folder for a library's
    own files (``cached_assets_path``), next to the hub cache and outside it. Not created here."""
    return Path(_hub().constants.HF_ASSETS_CACHE).expanduser().resolve() / "zcurate" / "models" / "default" / "lock.json"


def read_lock() -> dict:
    p = lock_file()
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {"version": 1, "models": {}}
    data.setdefault("models", {})
    return data


def _write_lock(data: dict) -> None:
    p = lock_file()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, p)


def _locked(e: ModelEntry, lock: dict) -> dict | None:
    rec = lock["models"].get(e.name)
    return rec if rec and rec.get("repo_id") == e.repo_id and rec.get("repo_type", "model") == e.repo_type else None


def _commit(e: ModelEntry, rec: dict | None) -> str | None:
    """The commit whose snapshot holds this model here: a pinned one, the locked one, or the one the
    cache's ref for the revision names."""
    if _COMMIT.fullmatch(e.revision):
        return e.revision
    if rec and rec.get("commit") and rec.get("revision") == e.revision:
        return rec["commit"]
    ref = _repo_dir(e) / "refs" / e.revision
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def _tree(e: ModelEntry, commit: str) -> dict | None:
    """{path: the hub's LFS sha256 or None} of the files this entry takes, from the tree listing
    snapshot_download cached at ``commit`` (``<repo>/trees/<commit>.json``, no network); None when
    none is cached."""
    hub = _hub()
    from huggingface_hub.utils import filter_repo_objects

    by_path: dict[str, str | None] | None = None
    try:  # the listing's documented JSON keeps the LFS sha256 (get_cached_repo_tree drops it)
        doc = json.loads((_repo_dir(e) / "trees" / f"{commit}.json").read_text())
        if doc.get("format_version") == 1:
            by_path = {p: (v or {}).get("lfs_sha256") for p, v in doc["files"].items()}
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    if by_path is None:
        try:
            by_path = {f.path: None for f in hub.get_cached_repo_tree(e.repo_id, repo_type=e.repo_type, revision=commit)}
        except Exception:  # no cached listing (CachedRepoTreeNotFoundError), or an older huggingface_hub
            return None
    keep = filter_repo_objects(list(by_path), allow_patterns=list(e.files))
    return {p: by_path[p] for p in keep}


def _walk(e: ModelEntry, snap: Path) -> list[str]:
    _hub()
    from huggingface_hub.utils import filter_repo_objects

    if not snap.is_dir():
        return []
    rel = [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(rel, allow_patterns=list(e.files)))


def _expected(e: ModelEntry, rec: dict | None, commit: str) -> list[str]:
    if rec and rec.get("commit") == commit and rec.get("files"):
        return sorted(rec["files"])
    tree = _tree(e, commit)
    return sorted(tree) if tree is not None else _walk(e, _repo_dir(e) / "snapshots" / commit)


def _locked_files(rec: dict | None, commit: str) -> dict:
    """The lock's per-file records when the lock is of ``commit`` (a lock of another commit says
    nothing about these bytes)."""
    return rec.get("files", {}) if rec and rec.get("commit") == commit else {}


def _file_record(p: Path, sha256: str) -> dict:
    """What the lock keeps per checked file: the hash and the size/mtime that ``list`` compares."""
    size, mtime = _stat(p)
    return {"sha256": sha256, "size": size, "mtime_ns": mtime}


def _target(e: ModelEntry, snap: Path) -> Path:
    """What ``local_path`` hands a config inside a snapshot: the entry's path_in_repo, or the folder."""
    return snap / e.path_in_repo if e.path_in_repo else snap


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stat(p: Path) -> tuple[int, int]:
    s = p.stat()  # follows the snapshot symlink to the blob
    return s.st_size, s.st_mtime_ns


# --- status (list) --------------------------------------------------------------------------------


@dataclass
class ModelStatus:
    entry: ModelEntry
    present: str  # "yes", "partial", "no"
    bytes: int | None  # on disk when present, else the catalogue's estimate
    verified: str  # "yes", "changed" (files differ from the last check), "no", "-" (absent)
    commit: str | None


def status(e: ModelEntry, lock: dict | None = None) -> ModelStatus:
    """Where the model stands in the local cache. No network, no hashing (``verify`` hashes)."""
    hub = _hub()
    lock = read_lock() if lock is None else lock
    rec = _locked(e, lock)
    commit = _commit(e, rec)
    files = _expected(e, rec, commit) if commit else []
    have = []
    for f in files:
        hit = hub.try_to_load_from_cache(e.repo_id, f, revision=commit, repo_type=e.repo_type)
        if isinstance(hit, str):
            have.append(Path(hit))
    if not files or not have:
        return ModelStatus(e, "no", e.approx_bytes, "-", commit)
    present = "yes" if len(have) == len(files) else "partial"
    size = sum(p.stat().st_size for p in have)
    verified = "no"
    if rec and rec.get("commit") == commit and rec.get("files"):
        snap = _repo_dir(e) / "snapshots" / commit
        same = all((snap / f).exists() and list(_stat(snap / f)) == [v.get("size"), v.get("mtime_ns")] for f, v in rec["files"].items())
        verified = "yes" if same and present == "yes" else "changed"
    return ModelStatus(e, present, size, verified, commit)


# --- verify -----------------------------------------------------------------------------------------


@dataclass
class Finding:
    file: str
    kind: str  # "ok", "mismatch", "missing", "recorded"
    detail: str = ""


def _check(
    e: ModelEntry, file: str, path: Path, lfs: str | None, locked: str | None, on_file=None, when: str = "pull"
) -> tuple[Finding, str | None]:
    if on_file:
        on_file(file, path)
    got = sha256_file(path)
    for source, want in (("pinned", e.sha256.get(file)), ("hub's LFS", lfs), ("locked", locked)):
        if want and want != got:
            return Finding(file, "mismatch", f"sha256 {got[:16]}... differs from the {source} sha256 {want[:16]}..."), got
    sources = [s for s, w in (("pinned", e.sha256.get(file)), ("hub", lfs), ("locked", locked)) if w]
    if sources:
        return Finding(file, "ok", "matches " + ", ".join(sources)), got
    return Finding(file, "recorded", f"no pinned hash, recorded hash on first {when}: {got[:16]}..."), got


def verify(e: ModelEntry, on_file: Callable[[str, Path], None] | None = None) -> list[Finding] | None:
    """Re-hash the cached files of ``e``. None when the model is not in the cache. Files with no
    known hash get the one seen now recorded in the lock (later verifies compare against it)."""
    lock = read_lock()
    rec = _locked(e, lock)
    commit = _commit(e, rec)
    if not commit:
        return None
    snap = _repo_dir(e) / "snapshots" / commit
    files = _expected(e, rec, commit)
    if not snap.is_dir() or not files or not any((snap / f).exists() for f in files):
        return None
    tree = _tree(e, commit) or {}
    locked_files = _locked_files(rec, commit)
    out, seen = [], {}
    for f in files:
        p = snap / f
        if not p.exists():
            out.append(Finding(f, "missing", "listed but not in the cache (pull it again)"))
            continue
        finding, got = _check(e, f, p, tree.get(f), (locked_files.get(f) or {}).get("sha256"), on_file, when="verify")
        out.append(finding)
        if finding.kind in ("ok", "recorded"):
            seen[f] = _file_record(p, got)
    if all(x.kind in ("ok", "recorded") for x in out):
        _record(e, commit, seen, lock)
    elif any(x.kind == "recorded" for x in out):  # keep first-seen hashes even when another file is bad
        files_now = dict(locked_files)
        files_now.update({f: v for f, v in seen.items() if f not in locked_files})
        _record(e, commit, files_now, lock)
    return out


def _record(e: ModelEntry, commit: str, files: dict, lock: dict) -> None:
    lock["models"][e.name] = {
        "repo_id": e.repo_id,
        "repo_type": e.repo_type,
        "revision": e.revision,
        "commit": commit,
        "files": files,
        "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_lock(lock)


# --- pull ---------------------------------------------------------------------------------------------


@dataclass
class PullResult:
    entry: ModelEntry
    path: Path  # what local_path returns
    commit: str
    findings: list[Finding]
    bytes: int


def _drop(p: Path) -> None:
    """Remove a refused file from the cache: the snapshot link and the blob it points at."""
    blob = p.resolve()
    for q in (p, blob):
        try:
            q.unlink()
        except OSError:
            pass


def _hub_error(e: ModelEntry, err: BaseException) -> ModelError:
    hub = _hub()
    from huggingface_hub import errors

    endpoint = hub.constants.ENDPOINT
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    if isinstance(err, errors.GatedRepoError):
        return ModelError(f"{e.name}: {e.repo_id} is gated at {endpoint}: accept its terms there and log in (HF_TOKEN or `hf auth login`)")
    if isinstance(err, errors.RevisionNotFoundError):
        return ModelError(f"{e.name}: revision {e.revision!r} of {e.repo_id} not found at {endpoint}")
    if isinstance(err, errors.RepositoryNotFoundError):
        return ModelError(f"{e.name}: repository {e.repo_id} not found at {endpoint} (or private: set HF_TOKEN)")
    if isinstance(err, errors.LocalEntryNotFoundError):
        snaps = (_repo_dir(e) / "snapshots").glob("*")
        where = "only partly in the cache" if any(_walk(e, s) for s in snaps) else "not in the cache"
        if hub.constants.is_offline_mode():
            return ModelError(f"{e.name}: {where}, and HF_HUB_OFFLINE is set, so nothing can be downloaded")
        cause = err.__cause__ or err.__context__
        why = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}" if cause else first
        return ModelError(f"{e.name}: the hub at {endpoint} cannot be reached ({why}), and the files are {where}")
    if isinstance(err, errors.HfHubHTTPError):
        return ModelError(f"{e.name}: the hub at {endpoint} answered with an error: {first}")
    return ModelError(f"{e.name}: download failed: {type(err).__name__}: {first}")


def pull(e: ModelEntry, *, update: bool = False, on_file: Callable[[str, Path], None] | None = None) -> PullResult:
    """Fetch the entry's files into the hub cache (progress bars from huggingface_hub), hash them,
    and refuse (remove them, raise) any that differ from the pinned, hub LFS or locked sha256.
    With a lock, the locked commit is fetched; ``update`` resolves the catalogue revision again."""
    hub = _hub()
    lock = read_lock()
    rec = _locked(e, lock)
    # the locked commit, unless the catalogue pins a commit itself, names another revision than the
    # lock was made from, or --update asks for the revision's current commit
    use_lock = bool(rec and rec.get("commit") and rec.get("revision") == e.revision and not _COMMIT.fullmatch(e.revision))
    revision = rec["commit"] if use_lock and not update else e.revision
    try:
        folder = hub.snapshot_download(e.repo_id, repo_type=e.repo_type, revision=revision, allow_patterns=list(e.files))
    except Exception as err:  # every hub, network or disk failure becomes one line
        raise _hub_error(e, err) from None
    snap = Path(folder)
    commit = snap.name
    tree = _tree(e, commit)
    files = sorted(tree) if tree is not None else _walk(e, snap)
    if not files:
        raise ModelError(f"{e.name}: no file of {e.repo_id}@{commit[:12]} matches {list(e.files)}")
    missing = [f for f in files if not (snap / f).exists()]
    if missing:
        raise ModelError(*(f"{e.name}: {f}: not downloaded" for f in missing))
    locked_files = _locked_files(rec, commit)
    findings, seen, bad = [], {}, []
    for f in files:
        p = snap / f
        finding, got = _check(e, f, p, (tree or {}).get(f), (locked_files.get(f) or {}).get("sha256"), on_file)
        findings.append(finding)
        if finding.kind == "mismatch":
            bad.append(finding)
            _drop(p)
        else:
            seen[f] = _file_record(p, got)
    if bad:
        raise ModelError(*(f"{e.name}: {b.file}: {b.detail}; refused and removed from the cache" for b in bad))
    _record(e, commit, seen, lock)
    return PullResult(e, _target(e, snap), commit, findings, sum(v["size"] for v in seen.values()))


# --- for configs ------------------------------------------------------------------------------------


def local_path(name: str, *, verified: bool = False) -> Path | None:
    """The cached weights of catalogue entry ``name`` (a folder, or a file for single-file
    entries), or None when they are not all in the cache. Local only: no network, no hashing
    (``curate models verify`` hashes). ``verified``: only weights whose files still match the lock
    (pulled or verified here, unchanged since), so a default config never picks up bytes that no
    check has seen. Default configs can use it to pick weights up when present::

        text_encoder_path = str(p) if (p := local_path("qwen3-4b")) else None
    """
    try:
        e = get_entry(name)
        st = status(e)
    except (ModelError, ConfigError):
        return None
    if st.present != "yes" or not st.commit or (verified and st.verified != "yes"):
        return None
    target = _target(e, _repo_dir(e) / "snapshots" / st.commit)
    return target if target.exists() else None


SOURCE_CONFIG, SOURCE_CACHE, SOURCE_NONE = "config", "models cache", "none"


def resolve_weights(configured: str | None, name: str) -> tuple[str | None, str]:
    """``(path, source)`` for a stage's model path: the configured one (``config``), else the
    pulled and verified weights of catalogue entry ``name`` (``models cache``), else
    ``(None, "none")``, so that a user who ran ``curate models pull`` need not copy paths into
    configs, and a run can say where each model came from."""
    if configured:
        return configured, SOURCE_CONFIG
    p = local_path(name, verified=True)
    return (str(p), SOURCE_CACHE) if p else (None, SOURCE_NONE)
