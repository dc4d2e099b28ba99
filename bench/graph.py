"""Benchmark: concept graph build (time, memory) and BM25 tagging throughput vs rank-bm25.

    .venv/bin/python bench/graph.py [--repeat 5] [--ref-sample 0]
    .venv/bin/python bench/graph.py --eval-only     # tag quality (issue 20) and what each matcher costs
    .venv/bin/python bench/graph.py --eval-only --details   # + the default matcher's misses and wrong tags


Tagging: the real COCO-mini captions (400) as documents, every WordNet concept with a query
(~82k synsets, ~118k English + Chinese terms) as queries. rank-bm25 gets the same token lists
(tokenisation is *not* counted for it) and scores every concept with ``get_scores``; ours
tokenises, counts and scores all concepts in one sparse product. Scores are compared for every
concept (max absolute difference). ``--ref-sample N`` times rank-bm25 on N random concepts and
extrapolates, for slow machines.

Both costs are printed: the scoring speed-up (tagger built, per caption: the amortised limit) and
end to end (the tagger build included, on these 400 captions; extrapolated to larger corpora).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ itself off the path: bench/profile.py would shadow the standard library's `profile`
# (cProfile imports it; torch, under the MiniLM sense choice, imports cProfile)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
COCO = ROOT.parent / "shared" / "data" / "coco-mini"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, no GPU, Python {platform.python_version()}, load average at start {load[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of our tagging (best is reported)")
    ap.add_argument("--ref-sample", type=int, default=0, help="rank-bm25 on N sampled concepts (0 = all)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-graph"))
    ap.add_argument("--eval-only", action="store_true", help="only the tag-quality evaluation and the matchers' cost")
    ap.add_argument("--details", action="store_true", help="with --eval-only: list the default matcher's misses, wrong and unjudged tags")
    args = ap.parse_args()
    import numpy as np

    print(f"machine: {machine()}")
    if args.eval_only:
        evaluate_matchers(details=args.details)
        return
    fig: dict = {}

    # --- graph build ------------------------------------------------------------------
    t0 = time.perf_counter()
    from graph.wordnet import load_wordnet

    g = load_wordnet()
    fig["wordnet_parse_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from graph.chinese import add_zh_labels

    fig["zh_labels"] = add_zh_labels(g)
    fig["zh_labels_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    g.save(args.out, graphml=False)
    fig["save_parquet_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    g.write_graphml(args.out / "graph.graphml")
    fig["write_graphml_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from graph.concepts import ConceptGraph

    g2 = ConceptGraph.load(args.out)
    fig["load_parquet_s"] = time.perf_counter() - t0
    fig["graph_nodes"], fig["graph_edges"] = len(g2), g2.g.number_of_edges()
    fig["peak_rss_after_build_mb"] = rss_mb()
    print(
        f"graph: {fig['graph_nodes']:,} nodes, {fig['graph_edges']:,} edges; parse {fig['wordnet_parse_s']:.2f}s, "
        f"zh labels {fig['zh_labels']:,} in {fig['zh_labels_s']:.2f}s, save Parquet {fig['save_parquet_s']:.2f}s + GraphML {fig['write_graphml_s']:.2f}s, "
        f"load {fig['load_parquet_s']:.2f}s, peak RSS {fig['peak_rss_after_build_mb']:.0f} MB"
    )

    # --- tagger ----------------------------------------------------------------------
    from graph.tagging import Tagger

    t0 = time.perf_counter()
    tagger = Tagger(g)
    fig["tagger_build_s"] = time.perf_counter() - t0
    n_q = sum(1 for q in tagger.queries if q)
    fig["concept_queries"] = n_q
    caps = json.loads((COCO / "captions_train2017.json").read_text())
    texts = [a["caption"].strip() for a in caps["annotations"]]
    print(f"tagger: {n_q:,} concepts with queries, {len(tagger.scorer.qcol):,} query tokens, built in {fig['tagger_build_s']:.2f}s")

    best = best_rows = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        docs = [tagger.tokenizer.tokens(t) for t in texts]
        tagger.scorer.fit(docs)
        S = tagger.scorer.scores(docs)
        best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        tagger.tag_rows([[t] for t in texts])
        best_rows = min(best_rows, time.perf_counter() - t0)
    fig["ours_bm25_s"], fig["ours_tag_rows_s"] = best, best_rows

    # --- rank-bm25 reference ------------------------------------------------------------
    from rank_bm25 import BM25Okapi

    dense = S.toarray()
    idx = [i for i, q in enumerate(tagger.queries) if q]
    if args.ref_sample:
        rng = np.random.default_rng(0)
        idx = sorted(rng.choice(idx, args.ref_sample, replace=False).tolist())
    t0 = time.perf_counter()
    ref = BM25Okapi(docs)
    max_diff = 0.0
    for i in idx:
        max_diff = max(max_diff, float(np.abs(ref.get_scores(tagger.queries[i]) - dense[:, i]).max()))
    ref_s = (time.perf_counter() - t0) * (n_q / len(idx))
    fig["rank_bm25_s"] = ref_s
    fig["max_abs_score_diff"] = max_diff
    fig["speedup_bm25"] = ref_s / best
    fig["speedup_with_propagation"] = ref_s / best_rows
    fig["captions_per_s_ours"] = len(texts) / best
    fig["captions_per_s_rank_bm25"] = len(texts) / ref_s
    # the whole cost: the tagger build (tokenizer, automaton, query matrix) is paid once per run,
    # before the first caption; rank-bm25 is handed our query and caption token lists for free
    fig["ours_end_to_end_s"] = fig["tagger_build_s"] + best
    fig["speedup_end_to_end"] = ref_s / fig["ours_end_to_end_s"]
    fig["speedup_end_to_end_with_propagation"] = ref_s / (fig["tagger_build_s"] + best_rows)
    # amortised: both costs grow linearly in the captions, the build does not (extrapolated)
    fig["speedup_end_to_end_at"] = {
        n: (n / fig["captions_per_s_rank_bm25"]) / (fig["tagger_build_s"] + n / fig["captions_per_s_ours"])
        for n in (10_000, 100_000, 1_000_000)
    }
    fig["peak_rss_mb"] = rss_mb()
    print(f"tagging {len(texts)} real captions x {n_q:,} concepts:")
    print(f"  ours (tokenise + count + score all concepts): {best * 1000:.1f} ms  -> {fig['captions_per_s_ours']:,.0f} captions/s")
    print(f"  ours tag_rows (+ best caption, propagation to ancestors, top-64): {best_rows * 1000:.1f} ms")
    print(
        f"  rank-bm25 get_scores per concept{f' (extrapolated from {len(idx)})' if args.ref_sample else ''}: "
        f"{ref_s:.1f} s -> {fig['captions_per_s_rank_bm25']:.1f} captions/s"
    )
    print(
        f"  speed-up {fig['speedup_bm25']:,.0f}x (with propagation {fig['speedup_with_propagation']:,.0f}x); "
        f"max |score difference| over {len(idx):,} concepts x {len(texts)} captions: {max_diff:.2e}"
    )
    print(
        f"  end to end (tagger build {fig['tagger_build_s']:.2f} s + one tagging pass): {fig['ours_end_to_end_s']:.2f} s -> "
        f"speed-up {fig['speedup_end_to_end']:.1f}x on {len(texts)} captions "
        f"({fig['speedup_end_to_end_with_propagation']:.1f}x with propagation)"
    )
    at = ", ".join(f"{n:,} captions {v:,.0f}x" for n, v in fig["speedup_end_to_end_at"].items())
    print(f"  amortised end to end (linear extrapolation of both rates, one build): {at}; the limit is {fig['speedup_bm25']:,.0f}x")
    print(f"peak RSS {fig['peak_rss_mb']:.0f} MB")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in fig.items()}))


def evaluate_matchers(details: bool = False) -> None:
    """Recall of the COCO categories captions name and precision on the judged sample
    (``graph/evaluate.py``), on the demo's graph (visual-only WordNet + Chinese labels), for the
    plain BM25 matcher, + noun-phrase rules, + the sense choice (prior only, then MiniLM). Each
    line's seconds are its whole cost on the 400 COCO captions: tagger build, fit, model load and
    tagging, the graph build apart (printed first)."""
    from graph.chinese import add_zh_labels
    from graph.evaluate import evaluate, load_coco
    from graph.tagging import TagConfig, Tagger
    from graph.wordnet import load_wordnet

    t0 = time.perf_counter()
    g = load_wordnet(visual_only=True)
    add_zh_labels(g)
    print(f"visual-only graph with zh labels: {len(g):,} nodes in {time.perf_counter() - t0:.1f}s")
    _, rows, _ = load_coco(COCO)
    texts = [c for r in rows for c in r]
    variants = {
        "BM25 only": dict(pos=False, wsd=False),
        "+ noun-phrase rules": dict(pos=True, wsd=False),
        "+ sense prior": dict(pos=True, wsd=True, wsd_model=False),
        "+ MiniLM sense choice (default)": dict(pos=True, wsd=True, wsd_model=True),
    }
    print(f"{'matcher':34} {'recall':>14} {'precision':>14} {'tags judged':>11} {'seconds':>8}")
    for name, kw in variants.items():
        t0 = time.perf_counter()
        tagger = Tagger(g, TagConfig(**kw)).fit(texts)
        fig = evaluate(tagger, COCO)
        secs = time.perf_counter() - t0
        r, p = fig["recall"], fig["precision"]
        rec = f"{r['recall']:.3f} ({r['found']}/{r['named']})"
        prec = f"{p['precision']:.3f} ({p['correct']}/{p['judged']})"
        print(f"{name:34} {rec:>14} {prec:>14} {p['coverage']:>11.0%} {secs:8.1f}")
    if details:
        print_errors(fig)
    evaluate_chinese(tagger, texts, details)


def evaluate_chinese(tagger, texts: list[str], details: bool) -> None:
    """The default matcher on Chinese captions: the judged sample (``graph/data/judged_zh.jsonl``:
    recall of expected concepts, precision of judged tags) and the held-out COCO-mini renderings
    (``graph/data/coco_zh.jsonl``: recall of the categories the English caption names, tags
    agreeing with the English caption's)."""
    from graph.evaluate import coco_zh, judged_zh

    t0 = time.perf_counter()
    z, c = judged_zh(tagger, texts), coco_zh(tagger, COCO)
    print(f"Chinese, default matcher ({time.perf_counter() - t0:.1f}s):")
    print(
        f"  judged sample ({z['captions']} captions)   recall {z['recall']:.3f} ({z['found']}/{z['expected']})  precision {z['precision']:.3f} ({z['correct']}/{z['judged']}), {len(z['unjudged'])} unjudged"
    )
    print(
        f"  COCO-mini in Chinese (held out)  recall {c['recall']:.3f} ({c['found']}/{c['named']})  agreeing with English {c['agreement']:.3f} ({c['agree']}/{c['tags']})"
    )
    if details:
        for m in z["misses"]:
            print(f"  zh missed   {m['label_en']} ({m['concept']}) | {m['caption']}")
        for kind in ("wrong", "unjudged"):
            for w in z[kind]:
                print(f"  zh {kind:8} {w['label_en']} ({w['concept']}) | {w['caption']}")
        for m in c["misses"]:
            print(f"  coco-zh missed  {m['category']} | {m['caption_zh']} | {m['caption']}")
        for d in c["differ"]:
            print(f"  coco-zh differs {d['label_en']} ({d['concept']}) | {d['caption']} | {d['caption_en']}")


def print_errors(fig: dict) -> None:
    """The last matcher's errors, one a line: what to read when a figure moves."""
    for m in fig["recall"]["misses"]:
        print(f"  missed   {m['category']:14} | {m['caption']}")
    for kind in ("wrong", "unjudged"):
        for w in fig["precision"][kind]:
            print(f"  {kind:8} {w['label_en']} ({w['concept']}) | {w['caption']}")


if __name__ == "__main__":
    main()
