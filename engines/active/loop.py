"""The closed loop: human decisions -> agreement, reward head, recalibrated thresholds.

- ``aggregate`` turns per-annotator decisions into one verdict per row (gold answers win; two
  annotators who disagree give ``disputed``), with the reviewed caption and tags.
- ``cohen_kappa`` measures agreement of double-annotated items beyond chance.
- ``recalibrate`` moves each rule's threshold toward the cut that best separates human keeps from
  drops (balanced accuracy), shrunk toward the old threshold by how little evidence there is, so
  twenty labels nudge it and two thousand decide it.
- ``fit_reward_head`` fits a logistic head on profile signals (+ image embedding when present):
  P(keep) for every row, the quality axis the next ``mine`` balances on and the verifier's model.
  ``fit_aesthetic_head`` trains the LAION-shaped MLP the profiling engine loads as its pluggable
  aesthetics head from the same labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.active.rules import Rule, passes

__all__ = ["aggregate", "cohen_kappa", "agreement", "recalibrate", "RewardHead", "fit_reward_head", "fit_aesthetic_head", "reward_features"]


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


def fit_aesthetic_head(emb: np.ndarray, y: np.ndarray, *, epochs: int = 200, seed: int = 0):
    """Train the LAION-shaped head (``engines.profiling.aesthetics``) on image embeddings so that
    its output sits above 5 for rows humans keep and below 5 for drops (BCE on ``out - 5``):
    a drop-in aesthetics head on the LAION 1..10 scale, learned from this project's reviewers."""
    import torch

    from engines.profiling.aesthetics import build_head

    torch.manual_seed(seed)
    head = build_head(emb.shape[1])
    x = torch.as_tensor(np.asarray(emb, np.float32))
    t = torch.as_tensor(np.asarray(y, np.float32))
    pos = max(float(t.sum()), 1.0)
    weight = torch.where(t > 0, len(t) / (2 * pos), len(t) / (2 * max(len(t) - pos, 1.0)))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    head.train()
    for _ in range(epochs):
        opt.zero_grad()
        out = head(x).squeeze(1) - 5.0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, t, weight=weight)
        loss.backward()
        opt.step()
    head.eval()
    return head, float(loss.detach())
