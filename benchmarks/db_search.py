"""Place-database search: latency, memory, build time and recall of flat, HNSW and IVF-PQ indexes.

For N = 10^3, 10^4, ... up to ``--max-n`` (default 10^5; ``--max-n 1000000`` adds 10^6, ~15 min and
~6 GiB) keyframes of ``--dim``-dimensional synthetic descriptors, each
index type is built in its own :class:`~distilvpr_ros.mapping.PlaceDatabase` (metric ``ip``, the
package's default parameters unless overridden) and measured:

* ``build_s``: adding the descriptors to the index (plus k-means/PQ training for IVF-PQ);
* ``memory_bytes``: size of the serialised faiss index (what it holds in RAM; the database keeps its
  float32 descriptor matrix, N x dim x 4 bytes, on top of that for every index type);
* ``latency_ms_p50`` / ``latency_ms_p99``: one query at a time through ``PlaceDatabase.search`` (k=10);
* ``batch_ms_per_query``: all ``--queries`` queries in one call, divided by their number;
* ``recall@1``: fraction of queries whose exact nearest neighbour (flat search) is the index's first
  result; ``recall@10``: fraction whose exact nearest neighbour is among the index's first 10.

IVF-PQ is reported twice: ``ivfpq`` re-ranks ``k * refine_factor`` PQ candidates with the stored
descriptors (the package default, exact scores) and ``ivfpq-raw`` returns PQ scores and order as they
are (``refine_factor = 1``). Below the training minimum IVF-PQ falls back to flat (``built`` says so).

Data: a mixture of Gaussians on the unit sphere (``N / --cluster-size`` components, default ~100
keyframes each, cosine ~0.5 within a component and ~0 across) generated in chunks; queries are fresh
draws from the same mixture, so the nearest neighbour is one of ~100 similar keyframes. Approximate
search only has to find the right component and then rank within it, which is kinder than real
descriptors with a continuum of similarities: read the recalls as an upper bound.

    .venv/bin/python benchmarks/db_search.py --threads 1 --out $DOCS/db_search.json
    .venv/bin/python benchmarks/db_search.py --max-n 1000000 --threads 2 --out $DOCS/db_search_1e6.json

(``DOCS=docs/results/benchmarks``.)

Besides the JSON, a markdown table is written next to it (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import faiss
import numpy as np

from distilvpr_ros.mapping import EmbeddingSpace, IndexConfig, PlaceDatabase

CHUNK = 100_000
SPREAD = 1.0  # isotropic noise norm around a cluster centre (centre norm 1)
K = 10


class Mixture:
    """Reproducible mixture of Gaussians on the sphere, drawn in chunks."""

    def __init__(self, n: int, dim: int, cluster_size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(max(8, n // cluster_size), dim)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.dim, self.seed = dim, seed

    def draw(self, n: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream])
        x = self.centres[rng.integers(len(self.centres), size=n)]
        x += SPREAD / np.sqrt(self.dim) * rng.standard_normal((n, self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_db(mix: Mixture, n: int, index: IndexConfig) -> tuple[PlaceDatabase, float]:
    db = PlaceDatabase([EmbeddingSpace("bench", mix.dim, "synthetic", "-", index=index)])
    for c, start in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - start)
        poses = np.zeros((m, 7))
        poses[:, 6] = 1.0
        db.add_many(np.arange(start, start + m, dtype=float), poses, ["map"] * m, ["bench"] * m,
                    {"bench": mix.draw(m, stream=c + 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IVF-PQ fallback to flat below the training minimum: reported
        t = time.perf_counter()
        db.index("bench")
        build = time.perf_counter() - t
    return db, build


def measure(db: PlaceDatabase, queries: np.ndarray, single: int, exact_top1: np.ndarray | None) -> dict:
    lat = []
    for q in queries[:single]:
        t = time.perf_counter()
        db.search("bench", q[None], K)
        lat.append(1e3 * (time.perf_counter() - t))
    t = time.perf_counter()
    _, ids = db.search("bench", queries, K)
    batch = 1e3 * (time.perf_counter() - t) / len(queries)
    out = {"latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
           "batch_ms_per_query": batch, "ids": ids}
    if exact_top1 is not None:
        out["recall@1"] = float(np.mean(ids[:, 0] == exact_top1))
        out["recall@10"] = float(np.mean((ids == exact_top1[:, None]).any(axis=1)))
    return out


def bench_n(n: int, args) -> list[dict]:
    mix = Mixture(n, args.dim, args.cluster_size, args.seed)
    queries = mix.draw(args.queries, stream=0)
    configs = {
        "flat": IndexConfig(type="flat"),
        "hnsw": IndexConfig(type="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                            ef_search=args.ef_search),
        "ivfpq": IndexConfig(type="ivfpq", pq_m=args.pq_m, nprobe=args.nprobe),
    }
    rows, exact_top1 = [], None
    for name, cfg in configs.items():
        db, build = build_db(mix, n, cfg)
        index = db.index("bench")
        base = {"n": n, "dim": args.dim, "built": db.index_state("bench")["built"], "build_s": build,
                "memory_bytes": int(faiss.serialize_index(index).nbytes)}
        variants = [(name, None)] + ([("ivfpq-raw", 1)] if name == "ivfpq" else [])
        for label, refine in variants:
            if refine is not None:
                db.set_search_params("bench", refine_factor=refine)
            r = measure(db, queries, args.single, exact_top1)
            ids = r.pop("ids")
            if name == "flat":
                exact_top1 = ids[:, 0]
                r.update({"recall@1": 1.0, "recall@10": 1.0})
            rows.append({"index": label, **base, **r, "params": cfg.model_dump(exclude_defaults=True)})
            print_row(rows[-1])
        del db, index
    return rows


def print_row(r: dict) -> None:
    print(f"{r['n']:>9} {r['index']:<10} {r['built']:<6} {r['build_s']:8.2f} {r['memory_bytes'] / 2**20:10.1f} "
          f"{r['latency_ms_p50']:8.3f} {r['latency_ms_p99']:8.3f} {r['batch_ms_per_query']:9.4f} "
          f"{r['recall@1']:6.3f} {r['recall@10']:6.3f}", flush=True)


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [
        "# Place-database search (single query, k = 10)", "",
        f"Command: `{result['command']}`", "",
        f"D = {a['dim']}, metric ip, clustered synthetic descriptors (~{a['cluster_size']} per cluster), "
        f"{a['queries']} queries for recall and batch time, {a['single']} timed one at a time; faiss "
        f"{result['faiss']}, {a['threads']} OpenMP thread(s); HNSW M={a['hnsw_m']} efC={a['ef_construction']} "
        f"efS={a['ef_search']}; IVF-PQ m={a['pq_m']} nprobe={a['nprobe']} (`ivfpq` re-ranks with the stored "
        f"descriptors, `ivfpq-raw` does not). Recall is against exact (flat) search. Load average before/after: "
        f"{result['load_average_before'][0]:.2f} / {result['load_average_after'][0]:.2f} on "
        f"{result['cpu_count']} cores.", "",
        "| N | index | built as | build s | index MiB | p50 ms | p99 ms | batch ms/query | R@1 | R@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['n']:,} | {r['index']} | {r['built']} | {r['build_s']:.2f} | "
                     f"{r['memory_bytes'] / 2**20:.1f} | {r['latency_ms_p50']:.3f} | {r['latency_ms_p99']:.3f} | "
                     f"{r['batch_ms_per_query']:.4f} | {r['recall@1']:.3f} | {r['recall@10']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-n", type=int, default=10**5,
                   help="largest database size (powers of 10 from 10^3; 1000000 adds 10^6)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000, help="queries for the batch and recall measurements")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="faiss OpenMP threads")
    p.add_argument("--hnsw-m", type=int, default=IndexConfig().hnsw_m)
    p.add_argument("--ef-construction", type=int, default=IndexConfig().ef_construction)
    p.add_argument("--ef-search", type=int, default=IndexConfig().ef_search)
    p.add_argument("--pq-m", type=int, default=48, help="PQ sub-quantizers (must divide --dim)")
    p.add_argument("--nprobe", type=int, default=IndexConfig().nprobe)
    p.add_argument("--cluster-size", type=int, default=100, help="mean keyframes per mixture component")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/benchmarks/db_search.json"))
    args = p.parse_args()

    faiss.omp_set_num_threads(args.threads)
    result = {
        "command": ".venv/bin/python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "k": K,
        "cpu_count": os.cpu_count(),
        "load_average_before": list(os.getloadavg()),
        "machine": platform.processor() or platform.machine(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "results": [],
    }
    print(f"{'N':>9} {'index':<10} {'built':<6} {'build_s':>8} {'index_MiB':>10} {'p50_ms':>8} {'p99_ms':>8} "
          f"{'batch_ms/q':>9} {'R@1':>6} {'R@10':>6}")
    n = 1000
    while n <= args.max_n:
        result["results"].extend(bench_n(n, args))
        n *= 10
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"-> {args.out}, {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
