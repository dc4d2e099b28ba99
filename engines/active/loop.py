"""The closed loop: human decisions -> agreement, reward head, recalibrated thresholds.

- ``aggregate`` turns per-annotator decisions into one verdict per row (gold answers win; two
  annotators who disagree give ``disputed``), with the reviewed caption and tags.
- ``cohen_kappa`` measures agreement of double-annotated items beyond chance.
- ``recalibrate`` moves each rule's threshold toward the cut that best separates human keeps from
  drops (balanced accuracy), shrunk toward the old threshold by how little evidence there is, so
  twenty labels nudge it and two thousand decide it.
- ``fit_reward_head`` fits a logistic head on profile signals (+ image embedding when present):
  P(keep) for every row, the quality axis the next ``mine`` balances on and the verifier's model.
- ``fit_keep_head`` trains a small MLP on image embeddings from the same labels: a
  **keep-probability head** (0..1, target: reviewers' keep decisions), stored by
  ``save_keep_head`` with that name and scale in its metadata and read back by ``load_keep_head``.
  It is not an aesthetics score: the file is laid out so that the profiling engine's aesthetics
  loader (``engines.profiling.aesthetics.load_head``) refuses it, and nothing writes it into
  ``prof_aesthetic``. ``fit_aesthetic_head`` is a deprecated alias of ``fit_keep_head``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engines.active.rules import Rule, passes

__all__ = [
    "aggregate",
    "cohen_kappa",
    "agreement",
    "recalibrate",
    "RewardHead",
    "fit_reward_head",
    "reward_features",
    "KeepHead",
    "KEEP_HEAD_KIND",
    "fit_keep_head",
    "save_keep_head",
    "load_keep_head",
    "fit_aesthetic_head",
]


def aggregate(decisions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """row_id -> {decision, flag, caption, tags, reviewers, time, votes} from the review database."""
    by_row: dict[str, list[dict]] = {}
    for d in decisions:
        by_row.setdefault(d["row_id"], []).append(d)
    out = {}
    for row_id, ds in by_row.items():
        ds = sorted(ds, key=lambda d: d["time"])
        keep = sum(d["decision"] == "keep" for d in ds)
        drop = len(ds) - keep
        if ds[0]["gold"] and ds[0]["gold_answer"]:
            verdict = ds[0]["gold_answer"]
        else:
            verdict = "keep" if keep > drop else "drop" if drop > keep else "disputed"
        original = (ds[0].get("payload") or {}).get("caption")
        edited = [d["caption"] for d in ds if d["caption"] is not None and d["caption"].strip() and d["caption"] != original]
        tags = next((d["tags"] for d in reversed(ds) if d["tags"]), [])
        out[row_id] = {
            "decision": verdict,
            "flag": any(d["flag"] for d in ds),
            "caption": edited[-1] if edited else None,
            "tags": list(tags),
            "reviewers": ",".join(dict.fromkeys(d["user"] for d in ds)),
            "time": ds[-1]["time"],
            "votes": len(ds),
            "payload": ds[0].get("payload") or {},
        }
    return out


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters over paired labels; None without pairs; 1.0 when both raters
    always agree on a single label (chance agreement 1, kappa undefined: perfect by convention)."""
    if not pairs:
        return None
    labels = sorted({x for p in pairs for x in p})
    n = len(pairs)
    po = sum(a == b for a, b in pairs) / n
    pe = sum((sum(a == lab for a, _ in pairs) / n) * (sum(b == lab for _, b in pairs) / n) for lab in labels)
    if pe >= 1.0:
        return 1.0
    return (po - pe) / (1.0 - pe)


def agreement(machine: list[str], human: list[str]) -> dict[str, Any]:
    """How well machine proposals matched humans: accuracy, kappa and the confusion counts."""
    pairs = [(m, h) for m, h in zip(machine, human) if m in ("keep", "drop") and h in ("keep", "drop")]
    conf = {f"{m}->{h}": sum(1 for a, b in pairs if (a, b) == (m, h)) for m in ("keep", "drop") for h in ("keep", "drop")}
    return {
        "n": len(pairs),
        "accuracy": (sum(a == b for a, b in pairs) / len(pairs)) if pairs else None,
        "kappa": cohen_kappa(pairs),
        "confusion": conf,
    }


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    pos, neg = y == 1, y == 0
    tpr = pred[pos].mean() if pos.any() else 0.0
    tnr = (~pred[neg]).mean() if neg.any() else 0.0
    return float((tpr + tnr) / 2)


def _best_cut(rule: Rule, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Threshold maximising balanced accuracy of 'keep iff x op t' (ties: closest to the old one)."""
    u = np.unique(x)
    cands = np.concatenate([[u[0] - 1e-6], (u[1:] + u[:-1]) / 2, [u[-1] + 1e-6], [rule.threshold]])
    best_t, best_s = rule.threshold, -1.0
    for t in cands:
        pred = x >= t if rule.op == ">=" else x <= t
        s = _balanced_accuracy(pred, y)
        if s > best_s + 1e-12 or (abs(s - best_s) <= 1e-12 and abs(t - rule.threshold) < abs(best_t - rule.threshold)):
            best_t, best_s = float(t), s
    return best_t, best_s


def recalibrate(
    rules: list[Rule], values: dict[str, np.ndarray], y: np.ndarray, *, prior_n: float = 50.0, min_labels: int = 10
) -> tuple[list[Rule], list[dict[str, Any]]]:
    """New thresholds from human labels ``y`` (1 keep, 0 drop) and each rule's signal ``values``.

    Each rule is judged on the rows the *other* rules keep (a drop caused by a watermark says
    nothing about the quality threshold), falling back to all labelled rows when too few remain.
    The new threshold is ``old + w * (best - old)`` with ``w = n / (n + prior_n)``."""
    y = np.asarray(y, np.int64)
    new_rules, report = [], []
    for r in rules:
        x = values.get(r.column)
        entry: dict[str, Any] = {"column": r.column, "op": r.op, "old": r.threshold, "new": r.threshold}
        if x is None:
            new_rules.append(r.model_copy())
            entry["note"] = "signal absent"
            report.append(entry)
            continue
        others = np.ones(len(y), bool)
        for o in rules:
            if o is not r and values.get(o.column) is not None:
                others &= passes(o, values[o.column])
        ok = ~np.isnan(x)
        sel = ok & others
        if sel.sum() < min_labels or len(set(y[sel])) < 2:
            sel = ok
            entry["subset"] = "all labelled rows"
        else:
            entry["subset"] = "rows the other rules keep"
        n = int(sel.sum())
        entry["n"] = n
        if n < min_labels or len(set(y[sel])) < 2:
            entry["note"] = f"needs >= {min_labels} labelled rows with both keep and drop"
            new_rules.append(r.model_copy())
            report.append(entry)
            continue
        best, score = _best_cut(r, x[sel], y[sel])
        w = n / (n + prior_n)
        t_new = r.threshold + w * (best - r.threshold)
        old_pred = x[sel] >= r.threshold if r.op == ">=" else x[sel] <= r.threshold
        new_pred = x[sel] >= t_new if r.op == ">=" else x[sel] <= t_new
        entry.update(
            {
                "best_cut": best,
                "weight": round(w, 3),
                "new": float(t_new),
                "balanced_accuracy_old": round(_balanced_accuracy(old_pred, y[sel]), 4),
                "balanced_accuracy_new": round(_balanced_accuracy(new_pred, y[sel]), 4),
                "keep_rate_human": round(float(y[sel].mean()), 4),
            }
        )
        new_rules.append(r.model_copy(update={"threshold": float(t_new)}))
        report.append(entry)
    return new_rules, report


def reward_features(values: dict[str, np.ndarray], emb: np.ndarray | None, columns: list[str]) -> np.ndarray:
    """Feature matrix: the named signal columns (NaN where absent) then the embedding."""
    n = len(emb) if emb is not None else len(next(iter(values.values())))
    cols = [values[c] if c in values else np.full(n, np.nan) for c in columns]
    x = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
    if emb is not None:
        x = np.concatenate([x, emb.astype(np.float64)], axis=1)
    return x


class RewardHead:
    """A logistic head: standardised signals (+ embedding) -> P(keep). Plain NumPy to apply, JSON to store."""

    def __init__(
        self,
        columns: list[str],
        mean: np.ndarray,
        std: np.ndarray,
        coef: np.ndarray,
        intercept: float,
        emb_column: str | None = None,
        emb_dim: int = 0,
        meta: dict | None = None,
    ):
        self.columns, self.mean, self.std = list(columns), np.asarray(mean), np.asarray(std)
        self.coef, self.intercept = np.asarray(coef), float(intercept)
        self.emb_column, self.emb_dim, self.meta = emb_column, int(emb_dim), dict(meta or {})

    def predict(self, values: dict[str, np.ndarray], emb: np.ndarray | None = None) -> np.ndarray:
        if self.emb_column and (emb is None or emb.shape[1] != self.emb_dim):
            raise ValueError(f"reward head needs {self.emb_column} embeddings of width {self.emb_dim}")
        x = reward_features(values, emb if self.emb_column else None, self.columns)
        return _sigmoid(self._standardise(x) @ self.coef + self.intercept)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return np.nan_to_num(z)  # a missing signal counts as average, never as an error

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "emb_column": self.emb_column,
            "emb_dim": self.emb_dim,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RewardHead:
        return cls(
            d["columns"],
            np.array(d["mean"]),
            np.array(d["std"]),
            np.array(d["coef"]),
            d["intercept"],
            d.get("emb_column"),
            d.get("emb_dim", 0),
            d.get("meta"),
        )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def fit_reward_head(
    values: dict[str, np.ndarray],
    y: np.ndarray,
    columns: list[str],
    *,
    emb: np.ndarray | None = None,
    emb_column: str | None = None,
    C: float = 1.0,
    min_labels: int = 10,
) -> RewardHead | None:
    """Logistic regression (class-balanced, L2) on human labels; None with too few or one-class labels.

    ``meta`` records the cross-validated AUC (how much to trust it) and the label counts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(y, np.int64)
    if len(y) < min_labels or len(set(y.tolist())) < 2:
        return None
    columns = [c for c in columns if c in values and not np.isnan(values[c]).all()]
    x = reward_features(values, emb, columns)
    if x.shape[1] == 0:
        return None
    mean = np.nanmean(x, axis=0)
    mean = np.where(np.isnan(mean), 0.0, mean)
    std = np.nanstd(x, axis=0)
    std = np.where((std < 1e-9) | np.isnan(std), 1.0, std)
    z = np.nan_to_num((x - mean) / std)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    auc = None
    folds = min(5, int(np.bincount(y).min()))
    if folds >= 2:
        p = cross_val_predict(model, z, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0), method="predict_proba")[:, 1]
        auc = float(roc_auc_score(y, p))
    model.fit(z, y)
    return RewardHead(
        columns,
        mean,
        std,
        model.coef_[0],
        float(model.intercept_[0]),
        emb_column if emb is not None else None,
        0 if emb is None else emb.shape[1],
        {"n": int(len(y)), "keep": int(y.sum()), "drop": int(len(y) - y.sum()), "cv_auc": auc},
    )


KEEP_HEAD_KIND = "keep_probability_head"

# what a keep head is, stored in its file (safetensors metadata, key "zcurate") and its reports
KEEP_HEAD_META: dict[str, Any] = {
    "kind": KEEP_HEAD_KIND,
    "name": "keep-probability head",
    "scale": "0..1",
    "output": "P(reviewers keep the row) = sigmoid(MLP(L2-normalised image embedding))",
    "target": "reviewer keep decisions (curate review apply)",
    "not": "an aesthetics score: never load it as the LAION 1..10 aesthetics head nor write it into prof_aesthetic",
}

# A tensor whose name the aesthetics loader picks up (it reads every key containing "layers.") and
# then refuses ("no LAION-style 'layers.N' weights found (keys: [...])"), so its error names what
# the file is. The head's own weights are under "keep_head.", which that loader never reads.
_NOT_AESTHETICS_KEY = (
    "layers.NOT-AN-AESTHETICS-HEAD: a keep-probability head (0..1, target: reviewer keep decisions); "
    "load it with engines.active.loop.load_keep_head"
)


def _keep_net(dim: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, 1))


class KeepHead:
    """A keep-probability head: L2-normalised image embeddings (n, dim) -> P(keep) in 0..1.

    ``meta`` is ``KEEP_HEAD_META`` plus what it was trained on (embedding column, label counts,
    and ``random_derived`` when its embeddings came from random weights)."""

    def __init__(self, net: Any, dim: int, meta: dict[str, Any] | None = None):
        self.net, self.dim = net.eval(), int(dim)
        self.meta = {**KEEP_HEAD_META, "dim": self.dim, **(meta or {})}

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """P(keep) per row, float32 in [0, 1]."""
        import torch

        emb = np.asarray(emb, np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"keep head expects (n, {self.dim}) embeddings, got {emb.shape}")
        with torch.inference_mode():
            return torch.sigmoid(self.net(torch.as_tensor(emb)).squeeze(1)).numpy().astype(np.float32)


def fit_keep_head(
    emb: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 200,
    seed: int = 0,
    embedding_column: str | None = None,
    random_derived: dict[str, Any] | None = None,
) -> tuple[KeepHead, float]:
    """Train a keep-probability head on image embeddings and human labels ``y`` (1 keep, 0 drop):
    class-balanced BCE on the logit, so its output is P(keep) on 0..1. Returns (head, last loss)."""
    import torch

    torch.manual_seed(seed)
    emb = np.asarray(emb, np.float32)
    net = _keep_net(emb.shape[1])
    x = torch.as_tensor(emb)
    t = torch.as_tensor(np.asarray(y, np.float32))
    pos = max(float(t.sum()), 1.0)
    weight = torch.where(t > 0, len(t) / (2 * pos), len(t) / (2 * max(len(t) - pos, 1.0)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    net.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(1), t, weight=weight)
        loss.backward()
        opt.step()
    yi = np.asarray(y, np.int64)
    meta: dict[str, Any] = {"embedding_column": embedding_column, "n": int(len(yi)), "keep": int(yi.sum()), "drop": int(len(yi) - yi.sum())}
    if random_derived:
        meta["random_derived"] = dict(random_derived)
    return KeepHead(net, emb.shape[1], meta), float(loss.detach())


def save_keep_head(head: KeepHead, path: str | Path) -> Path:
    """Write a keep head as ``.safetensors``: weights under ``keep_head.``, what it is (name,
    scale 0..1, target) in the metadata, and a marker that makes the aesthetics loader refuse it."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a keep head is saved as .safetensors (its metadata says what it is), not {path.suffix or 'no suffix'}")
    state = {f"keep_head.{k}": v.detach().cpu().contiguous() for k, v in head.net.state_dict().items()}
    state[_NOT_AESTHETICS_KEY] = torch.zeros(1)
    save_file(state, str(path), metadata={"zcurate": json.dumps(head.meta, default=str)})
    return path


def load_keep_head(path: str | Path) -> KeepHead:
    """A keep head written by ``save_keep_head``. Refuses (ValueError, one line) any other file,
    such as a LAION aesthetics head, whose output is a different thing on a different scale."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"keep head not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: not a keep head (keep heads are .safetensors files written by save_keep_head)")
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("zcurate") or "{}")
    if meta.get("kind") != KEEP_HEAD_KIND:
        raise ValueError(
            f"{path}: not a keep-probability head (its metadata kind is {meta.get('kind')!r}); "
            "an aesthetics head scores 1..10 and is loaded with engines.profiling.aesthetics.load_head"
        )
    state = {k[len("keep_head.") :]: v for k, v in load_file(str(path)).items() if k.startswith("keep_head.")}
    dim = int(state["0.weight"].shape[1])
    net = _keep_net(dim)
    net.load_state_dict(state)
    return KeepHead(net, dim, meta)


def fit_aesthetic_head(emb: np.ndarray, y: np.ndarray, *, epochs: int = 200, seed: int = 0) -> tuple[KeepHead, float]:
    """Deprecated: what this trained was never an aesthetics score but reviewers' keep decisions
    shifted onto the LAION 1..10 scale. Now an alias of ``fit_keep_head``: it returns a
    keep-probability head (0..1), which the aesthetics loader refuses."""
    warnings.warn(
        "fit_aesthetic_head is deprecated: it trains a keep-probability head (0..1, target: reviewer keep decisions), "
        "not an aesthetics score; call fit_keep_head",
        DeprecationWarning,
        stacklevel=2,
    )
    return fit_keep_head(emb, y, epochs=epochs, seed=seed)
