"""engines/active: hard-case mining, pseudo-labels, verifier, balancing, recalibration, reward head."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from engines.active.loop import aggregate, agreement, cohen_kappa, fit_reward_head, recalibrate
from engines.active.mining import MineConfig, balanced_order, knn, mine
from engines.active.pseudo import caption_fix, pseudo_label, verify
from engines.active.rules import DEFAULT_RULES, Rule
from engines.profiling.captions import ocr_overlap


def _table(n=400, seed=0, with_emb=True):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, n)
    sim = rng.uniform(0, 0.5, n)
    concepts = ["dog"] * int(n * 0.8) + ["cat"] * (n - int(n * 0.8))
    cols = {
        "id": [f"row{i:04d}" for i in range(n)],
        "captions": [[{"text": f"a photo of a {c} number {i}", "kind": "short", "lang": "en"}] for i, c in enumerate(concepts)],
        "error": [None] * n,
        "prof_quality": pa.array(q, pa.float32()),
        "prof_clip_sim": pa.array(sim, pa.float32()),
        "prof_ocr_text": ["SALE 50% OFF" if i % 50 == 0 else "" for i in range(n)],
        "tag_concepts": [[c, "animal"] for c in concepts],
        "tag_scores": [[1.0, 0.5]] * n,
        "tag_direct": [[True, False]] * n,
    }
    t = pa.table(cols)
    if with_emb:
        e = rng.normal(size=(n, 16)).astype(np.float32)
        u = e[0] / np.linalg.norm(e[0])
        v = e[1] - (e[1] @ u) * u
        e[1] = 0.93 * u + np.sqrt(1 - 0.93**2) * v / np.linalg.norm(v)  # a borderline near-duplicate pair
        e[10:15] = e[200] + rng.normal(scale=0.05, size=(5, 16))  # look-alikes of row 200
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        t = t.append_column("prof_clip_image", pa.FixedSizeListArray.from_arrays(pa.array(e.ravel(), pa.float16()), 16))
    return t


def test_knn_is_exact_and_skips_self():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    s, ix = knn(base[:20], base, 3, chunk=64, exclude_self=np.arange(20))
    full = base[:20] @ base.T
    full[np.arange(20), np.arange(20)] = -np.inf
    assert np.array_equal(ix, np.argsort(-full, axis=1)[:, :3])
    assert np.allclose(s, np.sort(full, axis=1)[:, ::-1][:, :3], atol=1e-5)


def test_knn_in_query_blocks_is_the_one_product():
    """Every row against every row (borderline duplicates without dedup's column) goes in blocks of
    queries: at 15,000 rows one product took 3.8 GB of driver memory."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(300, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    whole = knn(base, base, 4, chunk=128, exclude_self=np.arange(300))
    blocks = knn(base, base, 4, chunk=128, exclude_self=np.arange(300), max_cells=128 * 7)  # 7 queries a block
    assert np.array_equal(whole[1], blocks[1]) and np.array_equal(whole[0], blocks[0])


def test_borderline_duplicates_come_from_dedups_similarity_when_it_ran():
    t = _table(with_emb=False)
    sim = np.full(t.num_rows, np.nan)
    sim[[3, 4]], sim[5] = 0.93, 0.99  # in the band (between distinct and duplicate), and a clear duplicate
    t = t.append_column("dup_sim", pa.array(sim, pa.float32()))
    items, summary = mine(t, DEFAULT_RULES, MineConfig(n=400, min_hardness=0.0))
    by = {it["row_id"]: it["payload"]["hard_reasons"] for it in items}
    assert summary["criteria"]["borderline_duplicate"] == 2
    for r in ("row0003", "row0004"):
        assert any(w.startswith("borderline duplicate (nearest similarity 0.93") for w in by[r]), by[r]
    assert not any(w.startswith("borderline") for w in by.get("row0005", []))


def test_mining_finds_threshold_cases_ocr_and_balances_concepts():
    t = _table()
    items, summary = mine(t, DEFAULT_RULES, MineConfig(n=40, neighbours=2))
    assert summary["criteria"]["near_threshold"] > 0 and summary["criteria"]["ocr_missing"] == 8
    assert "prof_aesthetic" not in summary["signals_used"]  # absent columns are simply not used
    assert len(items) == 40
    q = {r: v for r, v in zip(t.column("id").to_pylist(), t.column("prof_quality").to_pylist())}
    near = [it for it in items if any(r.startswith("near threshold: prof_quality") for r in it["payload"]["hard_reasons"])]
    assert near and all(abs(q[it["row_id"]] - 0.45) < 0.3 for it in near)
    # the pool is 80% dog, the batch is balanced: cat gets about half
    cats = sum(it["payload"]["concept"] == "cat" for it in items)
    assert 15 <= cats <= 25
    # priorities follow serving order, payloads carry pseudo-labels, verdicts and look-alikes
    assert [it["priority"] for it in items] == sorted((it["priority"] for it in items), reverse=True)
    p = items[0]["payload"]
    assert p["pseudo"]["decision"] in ("keep", "drop") and p["verifier"]["method"] == "signal_consensus"
    assert len(p["neighbours"]) == 2 and p["neighbours"][0]["row_id"] != p["row_id"]
    ocr_items = [it for it in items if it["payload"]["ocr_text"]]
    for it in ocr_items:
        assert 'reads "SALE 50% OFF"' in it["payload"]["pseudo"]["caption_fix"]


def test_like_flagged_and_borderline_duplicates_use_embeddings():
    t = _table()
    items, summary = mine(
        t, DEFAULT_RULES, MineConfig(n=400, min_hardness=0.0, like_flagged_k=5), flagged=["row0200"], reviewed={"row0200": "drop"}
    )
    by = {it["row_id"]: it["payload"]["hard_reasons"] for it in items}
    assert "row0200" not in by  # reviewed rows are not queued again
    like = [r for r, why in by.items() if any("looks like flagged failure row0200" in w for w in why)]
    assert set(like) >= {f"row{i:04d}" for i in range(10, 15)}
    for r in ("row0000", "row0001"):
        assert any(w.startswith("borderline duplicate (nearest similarity 0.93") for w in by[r]), by[r]


def test_mining_degrades_without_any_signal_columns():
    t = pa.table({"id": ["a", "b"], "captions": [[{"text": "x", "kind": "short", "lang": "en"}], None]})
    items, summary = mine(t, DEFAULT_RULES, MineConfig(n=10))
    assert items == [] and {"near_threshold", "signals_disagree", "ocr_missing", "borderline_duplicate"} <= set(summary["skipped_criteria"])


def test_pseudo_label_and_verifier_can_disagree():
    rules = [Rule(column="prof_quality", op=">=", threshold=0.5), Rule(column="prof_clip_sim", op=">=", threshold=0.2)]
    v = {"prof_quality": 0.49, "prof_clip_sim": 0.45}  # barely fails quality, clearly matches caption
    p = pseudo_label(v, rules, caption="a dog")
    assert p["decision"] == "drop" and "prof_quality" in p["reasons"][0]
    ver = verify(v, rules, {"prof_quality": 0.2, "prof_clip_sim": 0.1})
    assert ver["verdict"] == "keep" and ver["method"] == "signal_consensus"
    assert verify(v, rules, {}, reward_p=0.2)["verdict"] == "drop"
    assert verify(v, rules, {}, neighbour_votes=["drop", "drop", "keep", "drop"])["verdict"] == "drop"
    assert ocr_overlap(caption="a sign saying hello world", ocr_text="HELLO WORLD") == 1.0
    assert caption_fix("一只猫", "你好", "zh").endswith("“你好”")


def test_balanced_order_round_robins_strata():
    strata = ["a"] * 6 + ["b"] * 2 + ["c"]
    h = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95, 0.3, 0.2])
    order = balanced_order(strata, h, 6)
    assert [strata[i] for i in order] == ["b", "a", "c", "b", "a", "a"]


def test_kappa_matches_the_textbook_value():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    a = ["keep"] * 20 + ["drop"] * 15 + ["keep"] * 5 + ["drop"] * 10
    b = ["keep"] * 20 + ["drop"] * 15 + ["drop"] * 5 + ["keep"] * 10
    assert cohen_kappa(list(zip(a, b))) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b))
    assert cohen_kappa([]) is None and cohen_kappa([("keep", "keep")] * 3) == 1.0
    ag = agreement(["keep", "drop", None], ["keep", "keep", "drop"])
    assert ag["n"] == 2 and ag["accuracy"] == 0.5


def test_recalibration_moves_thresholds_toward_human_cuts():
    rng = np.random.default_rng(0)
    n = 600
    q, s = rng.uniform(0, 1, n), rng.uniform(0, 0.5, n)
    y = ((q >= 0.6) & (s >= 0.1)).astype(int)  # humans: stricter on quality, more lenient on similarity
    rules = [
        Rule(column="prof_quality", op=">=", threshold=0.45),
        Rule(column="prof_clip_sim", op=">=", threshold=0.2),
        Rule(column="prof_nsfw", op="<=", threshold=0.5),
    ]
    new, rep = recalibrate(rules, {"prof_quality": q, "prof_clip_sim": s}, y, prior_n=50)
    nq, ns, nn = (r.threshold for r in new)
    assert 0.45 < nq <= 0.62 and nq > 0.57  # up, most of the way to 0.6 with 600 labels
    assert 0.08 <= ns < 0.2 and ns < 0.12  # down toward 0.1
    assert nn == 0.5 and rep[2]["note"] == "signal absent"
    assert rep[0]["balanced_accuracy_new"] > rep[0]["balanced_accuracy_old"]
    hard = np.nonzero((q > 0.4) & (q < 0.7) & (s > 0.25))[0][:20]  # mined near the quality threshold
    few, rep_few = recalibrate(rules, {"prof_quality": q[hard], "prof_clip_sim": s[hard]}, y[hard], prior_n=50)
    assert 0.45 < few[0].threshold < nq  # twenty labels only nudge it
    assert rep_few[0]["best_cut"] == pytest.approx(0.6, abs=0.03)
    none, _ = recalibrate(rules, {"prof_quality": q[:5]}, y[:5])
    assert none[0].threshold == 0.45


def test_reward_head_learns_the_human_rule_and_aggregate_resolves_votes():
    rng = np.random.default_rng(0)
    n = 300
    vals = {"prof_quality": rng.uniform(0, 1, n), "prof_noise": rng.uniform(0, 10, n)}
    y = (vals["prof_quality"] + rng.normal(scale=0.05, size=n) > 0.5).astype(int)
    head = fit_reward_head(vals, y, ["prof_quality", "prof_noise", "prof_absent"])
    assert head.columns == ["prof_quality", "prof_noise"] and head.meta["cv_auc"] > 0.95
    p = head.predict({"prof_quality": np.array([0.1, 0.9]), "prof_noise": np.array([5.0, 5.0])})
    assert p[0] < 0.2 < 0.8 < p[1]
    assert fit_reward_head(vals, np.ones(n, int), ["prof_quality"]) is None  # one class: nothing to learn
    decs = [
        {
            "row_id": "a",
            "gold": False,
            "gold_answer": None,
            "user": "u1",
            "decision": "keep",
            "flag": False,
            "caption": None,
            "tags": [],
            "time": 1.0,
            "payload": {"caption": "orig"},
        },
        {
            "row_id": "a",
            "gold": False,
            "gold_answer": None,
            "user": "u2",
            "decision": "drop",
            "flag": True,
            "caption": "new caption",
            "tags": ["dog"],
            "time": 2.0,
            "payload": {"caption": "orig"},
        },
        {
            "row_id": "g",
            "gold": True,
            "gold_answer": "keep",
            "user": "u1",
            "decision": "drop",
            "flag": False,
            "caption": "orig",
            "tags": [],
            "time": 3.0,
            "payload": {"caption": "orig"},
        },
    ]
    agg = aggregate(decs)
    assert agg["a"]["decision"] == "disputed" and agg["a"]["flag"] and agg["a"]["caption"] == "new caption"
    assert agg["a"]["reviewers"] == "u1,u2" and agg["a"]["tags"] == ["dog"]
    assert agg["g"]["decision"] == "keep" and agg["g"]["caption"] is None  # gold answer wins; unchanged caption


def test_mining_over_blocks_queues_what_mining_in_memory_queues():
    """The job mines with the rows cut into blocks (one a Lance fragment, kept on workers) and
    the numbers on the driver: the same items, reasons, verdicts and look-alikes as one block."""
    from curation.blocks import LocalBlocks
    from engines.active.mining import MineBlock, mine_blocks

    t = _table()
    reviewed = {f"row{i:04d}": ("keep" if i % 3 else "drop") for i in range(20, 60)}
    kw = {"flagged": ["row0200", "row0005"], "reviewed": reviewed}
    cfg = MineConfig(n=120, min_hardness=0.0, like_flagged_k=5, neighbours=3)
    whole = mine(t, DEFAULT_RULES, cfg, **kw)
    cuts = [0, 1, 150, 150, 333, 400]  # a one-row block and an empty one too
    blocks = LocalBlocks([MineBlock(t.slice(a, b - a), a, DEFAULT_RULES) for a, b in zip(cuts, cuts[1:])])
    split = mine_blocks(blocks, DEFAULT_RULES, cfg, columns=t.column_names, **kw)
    assert split == whole
    reasons = {w.split(" ")[0] for it in whole[0] for w in it["payload"]["hard_reasons"]}
    assert {"looks", "borderline", "near"} <= reasons and any(it["payload"]["neighbours"] for it in whole[0])


def test_strata_merged_block_by_block_serve_what_every_candidate_serves():
    """The driver keeps each stratum's hardest rows only as deep as round-robin serving can reach
    (about n + strata entries, not a row a candidate), merging block by block: the serving order is
    the one ``balanced_order`` gives over every candidate at once, ties included."""
    from engines.active.mining import _Strata

    rng = np.random.default_rng(5)
    m = 20_000
    keys = [(f"c{k}", int(b)) for k, b in zip(rng.zipf(1.6, m) % 40, rng.integers(-1, 4, m))]  # a few big strata, many small
    h = np.round(rng.random(m), 2)  # ties in hardness
    for n in (1, 7, 150, 900, 30_000):
        want = balanced_order(keys, h, n)
        strata = _Strata(n)
        kept = 0
        for lo in range(0, m, 1_700):  # blocks of rows, each giving its strata's hardest n
            part: dict = {"strata": {}, "counts": {}}
            for key in dict.fromkeys(keys[lo : lo + 1_700]):
                r = np.array([i for i in range(lo, min(lo + 1_700, m)) if keys[i] == key])
                top = np.lexsort((r, -h[r]))[:n]
                part["strata"][key], part["counts"][key] = (h[r][top], r[top]), len(r)
            strata.add(part)
            kept = max(kept, sum(len(v[0]) for v in strata.rows.values()))
        assert strata.order() == want, n
        assert kept <= n + 2 * len(strata.counts), (n, kept)


def test_mining_no_block_or_no_row_queues_nothing():
    from curation.blocks import LocalBlocks
    from engines.active.mining import MineBlock, mine_blocks

    t = _table().slice(0, 0)
    for blocks in (LocalBlocks([]), LocalBlocks([MineBlock(t, 0, DEFAULT_RULES)])):
        items, summary = mine_blocks(blocks, DEFAULT_RULES, MineConfig(), columns=t.column_names)
        assert items == [] and summary["rows"] == 0
