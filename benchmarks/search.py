"""Search over kept embeddings: index build, queries, recall, adding, duplicates (issue 27).

    python -m benchmarks.search --count 1000000

Fills an SQLite results database (the embedded default) as workers write it: --count results
with synthetic 512-wide float16 embeddings of known structure (testkit/vectors.py, --data:
``catalogue``, a narrow cone with most variation in 64 directions and count/50 kinds of
product, or ``islands``, count/50 clusters all equally far apart, a graph index's worst case;
1% of them with a planted near-copy at cosine ~0.995). Then, with the full-size Chinese CLIP
text tower (random weights: compute does not depend on them) exported to ONNX:

- the index built from the table (seconds, peak RSS, bytes on disk);
- recall@10 of the index against exact search (float32 products over every vector), for
  queries near stored images (cosine 0.9) and as far from them as a text is (cosine 0.3);
- similar-image queries (`Finder.similar` on a catalogued URI, top 50, with the database
  reads) and index-only searches: p50/p99;
- text queries (`Finder.text`, top 50, the tower warm, a new text each time) p50/p99, and what
  encoding one query costs by template count, text length and precision;
- adding 10,000 embeddings written after the build (`keeper.current`: read, add, save);
- `Finder.duplicates` over everything (threshold 0.98) and the planted pairs it found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from testkit.vectors import catalogue, clustered, near_copies
from worker.backends.weights import checkpoint_digest
from worker.checkpoint import build as build_checkpoint
from worker.core.contract import Item, Result
from worker.core.embedding import key_of, sha256_of
from worker.core.settings import LABELSETS, load_settings
from worker.db import migrate, writes
from worker.db.schema import engine_for
from worker.search import Finder, Group, exact, index, keeper
from worker.search import index as index_module
from worker.search.text import TextEncoder
from worker.search.towers import towers

DIM, BATCH, QUERIES, PLANTED = 512, 5000, 200, 0.01
LABELS = ["连衣裙", "台灯", "运动鞋"]


class Figures(dict):  # type: ignore[type-arg]
    """Each figure printed (stderr) as it is measured: a run stopped early still tells."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        print(json.dumps({key: value}, ensure_ascii=False), file=sys.stderr, flush=True)


SHAPES = {"catalogue": catalogue, "islands": clustered}


def vectors(count: int, seed: int, shape: str = "catalogue") -> np.ndarray:
    base = SHAPES[shape](count, DIM, seed=seed)
    planted = int(count * PLANTED)
    base[count - planted:] = near_copies(base[:planted], seed=seed)  # i and count-planted+i
    return base


def results(first: int, rows: np.ndarray, model: str) -> Iterator[list[Result]]:
    # Under the checkpoint's digest, as a worker registers them: the weights search looks for.
    weights = checkpoint_digest(Path(model), Path(os.environ["TAGGER_CACHE_DIR"])).digest
    for start in range(0, len(rows), BATCH):
        yield [Result(item=Item(uri(first + start + i)), model=model, weights=weights,
                      labelset_id="0123456789abcdef", run_id="bench",
                      content_sha256=content(first + start + i),
                      runtime="torch float32 cpu", embedding=vector,
                      labels=[{"label": LABELS[(start + i) % 3], "score": 0.9}])
               for i, vector in enumerate(rows[start:start + BATCH])]


def content(n: int) -> str:
    return sha256_of(str(n).encode())


def fill(url: str, model: str, first: int, rows: np.ndarray) -> float:
    started = time.perf_counter()
    for number, batch in enumerate(results(first, rows, model)):
        writes.write_results(engine_for(url), batch, f"bench-{first}-{number}",
                             keep_embeddings=True)
    return time.perf_counter() - started


def timed(call: Callable[[int], Any], runs: int) -> dict[str, float]:
    seconds = []
    for n in range(runs):
        started = time.perf_counter()
        call(n)
        seconds.append(time.perf_counter() - started)
    return {"p50_ms": round(1000 * float(np.percentile(seconds, 50)), 2),
            "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 2)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def build_index(finder: Finder) -> dict[str, Any]:
    rss, started = peak_rss_mb(), time.perf_counter()
    index = finder.index()
    files = [finder.folder / index.meta[k] for k in ("index", "delta")]
    return {"kind": index.kind, "links": index_module.LINKS, "seconds":
            round(time.perf_counter() - started, 1), "peak_rss_mb_before": rss,
            "peak_rss_mb_after": peak_rss_mb(),
            "bytes_on_disk_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
            "loaded_rss_mb": loaded_rss_mb(finder)}


def loaded_rss_mb(finder: Finder) -> float:
    """Peak RSS of a new process that loads the index and searches it once (the index's
    memory, with Python's and faiss's own ~100 MB)."""
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
    script = ("import sys; from pathlib import Path; import numpy as np; "
              "from worker.search.index import Index; "
              "i = Index.load(Path(sys.argv[1]), sys.argv[2]); "
              "i.search(np.ones((1, i.meta['dim']), np.float32), 50); "
              "print([l.split()[1] for l in open('/proc/self/status') if "
              "l.startswith('VmHWM')][0])")
    done = subprocess.run([sys.executable, "-c", script, str(finder.folder), finder.name],
                          capture_output=True, text=True, check=True)
    return round(int(done.stdout.split()[-1]) / 1024, 1)


def recall(finder: Finder, data: np.ndarray, keys: np.ndarray) -> dict[str, Any]:
    """The index's top 10 against exact search, for queries near stored vectors (cosine 0.9)."""
    rng = np.random.default_rng(9)
    queries = near_copies(data[rng.integers(0, len(data), QUERIES)], seed=3, cosine=0.9)
    graph = finder.index()
    truth = exact.top(queries, data, keys, 10)[1]
    figures: dict[str, Any] = {}
    default = index.EF_SEARCH
    try:
        for ef in (32, 64, 128, 512):  # the candidates a graph search keeps: recall against time
            index.EF_SEARCH = ef
            figures[f"ef_search {ef}"] = {
                "recall_at_10": overlap(graph.search(queries, 10)[1], truth),
                "index_search_top50": timed(lambda n: graph.search(queries[n], 50), QUERIES)}
    finally:
        index.EF_SEARCH = default
    # As far from its images as a text query is (CLIP puts a text at cosine ~0.3 to the images
    # it names): off the images' own neighbourhoods, where a graph has less to go by.
    far = near_copies(data[rng.integers(0, len(data), QUERIES)], seed=5, cosine=0.3)
    truth = exact.top(far, data, keys, 10)[1]
    for ef in (64, index.EF_TEXT, 256):  # text queries keep EF_TEXT candidates
        figures[f"far_queries_recall_at_10 ef_search {ef}"] = overlap(
            graph.search(far, 10, ef=ef)[1], truth)
    return {**figures, "recall_at_10": figures[f"ef_search {default}"]["recall_at_10"]}


def crossover(data: np.ndarray) -> dict[str, Any]:
    """Exact (flat) against graph search at EXACT_BELOW vectors: where exact is about as fast."""
    size = index.EXACT_BELOW
    flat = index.Index.empty(DIM, 0)
    flat.add(np.arange(size, dtype=np.int64), data[:size])
    graph = index.Index.empty(DIM, size)
    graph.add(np.arange(size, dtype=np.int64), data[:size])
    queries = data[:QUERIES].astype(np.float32)
    return {"vectors": size,
            "exact_top50": timed(lambda n: flat.search(queries[n], 50), QUERIES),
            "graph_top50": timed(lambda n: graph.search(queries[n], 50), QUERIES)}


def libraries(count: int, added: int) -> dict[str, Any]:
    """faiss's HNSW (as the index builds it) against usearch's on the same vectors."""
    data, keys = vectors(count, seed=1), np.arange(count, dtype=np.int64)
    started = time.perf_counter()
    graph = index.Index.empty(DIM, count)
    graph.add(keys[:-added], data[:-added])
    figures = {"faiss_hnsw_build_seconds": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    graph.add(keys[-added:], data[-added:])
    figures[f"faiss_hnsw_add_{added}_seconds"] = round(time.perf_counter() - started, 2)
    queries = near_copies(data[np.random.default_rng(9).integers(0, count, QUERIES)], seed=3,
                          cosine=0.9)
    truth = exact.top(queries, data, keys, 10)[1]
    found = graph.search(queries, 10)[1]
    figures["faiss_hnsw_recall_at_10"] = overlap(found, truth)
    figures["faiss_hnsw_top50"] = timed(lambda n: graph.search(queries[n], 50), QUERIES)
    return {**figures, **compare(data, keys, added, queries, truth)}


def overlap(found: Any, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / 10
                                for f, t in zip(found, truth, strict=True)])), 4)


def compare(data: np.ndarray, keys: np.ndarray, added: int, queries: np.ndarray,
            truth: np.ndarray) -> dict[str, Any]:
    """usearch's HNSW (float16, connectivity 16, expansion 40/64: faiss's settings) on the same
    vectors: build, adding, recall@10 and top-50 latency, beside faiss's above."""
    from usearch.index import Index as Hnsw

    hnsw = Hnsw(ndim=DIM, metric="ip", dtype="f16", connectivity=16, expansion_add=40,
                expansion_search=64)
    started = time.perf_counter()
    hnsw.add(keys[:-added], data[:-added], threads=os.cpu_count() or 1)
    built = time.perf_counter() - started
    started = time.perf_counter()
    hnsw.add(keys[-added:], data[-added:], threads=os.cpu_count() or 1)
    adding = time.perf_counter() - started
    found = [hnsw.search(q, 10).keys for q in queries]
    return {"usearch_build_seconds": round(built, 1), f"usearch_add_{added}_seconds":
            round(adding, 2), "usearch_memory_mb": round(hnsw.memory_usage / 2**20, 1),
            "usearch_recall_at_10": overlap(found, truth),
            "usearch_top50": timed(lambda n: hnsw.search(queries[n], 50), QUERIES)}


def planted_found(groups: list[Group], count: int) -> float:
    """The share of planted near-copies (row i and row count - planted + i) grouped together."""
    where = {h.uri: n for n, g in enumerate(groups) for h in g.members}
    planted = int(count * PLANTED)
    pairs = [(uri(i), uri(count - planted + i)) for i in range(planted)]
    return round(sum(a in where and where.get(a) == where.get(b) for a, b in pairs)
                 / max(len(pairs), 1), 4)


def uri(n: int) -> str:
    return f"s3://products/{n:09d}.jpg"


def text_costs(settings: Any) -> dict[str, float]:
    """p50 ms to encode one query by precision, templates and text length (tower warm)."""
    found = towers(settings, print)
    templates = [t for t in (LABELSETS / "templates_zh.txt").read_text("utf-8").splitlines() if t]
    costs = {}
    for precision in ("float32", "int8"):
        name = found.text.name.replace("text-int8-", "text-").replace("text-float32-", "text-")
        tower = found.folder / name.replace("text-", f"text-{precision}-", 1)
        encoder = TextEncoder(dataclasses.replace(found, text=tower))
        for count in (1, 8, 80):
            for text in ("红色连衣裙", "适合夏天海边度假穿的红色碎花长款连衣裙"):
                def once(_: int, encoder: TextEncoder = encoder, text: str = text,
                         count: int = count) -> None:
                    encoder.encode(text, templates[:count])

                runs = 1 if count == 80 else 15
                costs[f"{precision} {count} templates {len(text)} chars"] = timed(
                    once, runs)["p50_ms"]
    costs["int8 1 template 5 chars, threads spinning"] = spinning(encoder, templates[:1])
    return costs


def spinning(encoder: TextEncoder, templates: list[str]) -> float:
    """p50 ms of a short query with ONNX Runtime's default of threads that spin while they
    wait for work (what search ran with before)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3
    path = encoder.session._model_path  # the same file, other options
    encoder.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    encoder.encode("红色连衣裙", templates)
    return timed(lambda _: encoder.encode("红色连衣裙", templates), 30)["p50_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--added", type=int, default=10_000)
    parser.add_argument("--folder", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--data", choices=sorted(SHAPES), default="catalogue",
                        help="the embeddings' shape (default: catalogue)")
    parser.add_argument("--compare", type=int, metavar="N",
                        help="only build faiss's and usearch's HNSW over N vectors, and "
                             "compare them")
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(libraries(args.compare, args.added), indent=1))
        return
    with tempfile.TemporaryDirectory(prefix="bench-search-") as temporary:
        folder = args.folder or Path(temporary)
        figures = run(folder, args.count, args.added, args.data)
        print(json.dumps(figures, ensure_ascii=False, indent=1))


def run(folder: Path, count: int, added: int, shape: str) -> dict[str, Any]:
    model = folder / "model"
    if not (model / "config.json").is_file():
        build_checkpoint(model, [p.read_text("utf-8") for p in LABELSETS.glob("*.txt")])
    url = f"sqlite:///{folder / f'results-{shape}.db'}"  # a --folder holds one of each
    os.environ.update(TAGGER_HOME=str(folder / "home"), TAGGER_MODEL=str(model),
                      DATABASE_URL=url, TAGGER_CACHE_DIR=str(folder / "cache"))
    migrate.upgrade(url, create=True)
    settings = load_settings()
    data = vectors(count, seed=1, shape=shape)
    figures = Figures(count=count, data=shape, cpus=os.cpu_count())
    if Finder(settings, print).store.count() != count:  # a --folder filled before is reused
        figures["fill_seconds"] = round(fill(url, str(model), 0, data), 1)
    finder = Finder(settings, print)
    figures["build"] = build_index(finder)
    keys = np.array([key_of(bytes.fromhex(content(n))) for n in range(count)], np.int64)
    for name, value in recall(finder, data, keys).items():
        figures[name] = value
    picked = np.random.default_rng(4).integers(0, count, QUERIES)
    figures["similar_top50"] = timed(lambda n: finder.similar(uri(picked[n]), top=50), QUERIES)
    finder.text("预热", top=50)
    words = [w for w in (LABELSETS / "ecommerce_zh.txt").read_text("utf-8").split() if w]
    figures["text_top50"] = timed(  # a new text each time: the query cache never answers
        lambda n: finder.text(f"{words[n % len(words)]} {n}", top=50), 100)
    figures["text_encoding_p50_ms"] = text_costs(settings)
    figures["crossover"] = crossover(data)
    more = vectors(added + index.deltas.FOLD_AT, seed=2, shape=shape)
    fill(url, str(model), count, more[:added])
    started = time.perf_counter()
    keeper.current(finder.store, finder.folder, finder.name, print)
    figures["add_seconds"] = round(time.perf_counter() - started, 2)  # into the delta
    fill(url, str(model), count + added, more[added:])
    started = time.perf_counter()
    folded = keeper.current(finder.store, finder.folder, finder.name, print)
    figures[f"add_{index.deltas.FOLD_AT}_and_fold_seconds"] = round(
        time.perf_counter() - started, 2)
    figures["after_fold"] = {"kind": folded.kind, "delta": len(folded.delta),
                             "bytes_on_disk_mb": round((finder.folder / folded.meta["index"])
                                                       .stat().st_size / 2**20, 1)}
    started = time.perf_counter()
    groups = finder.duplicates(threshold=0.98)
    figures["duplicates"] = {"seconds": round(time.perf_counter() - started, 1),
                             "groups": len(groups), "planted_found": planted_found(groups, count),
                             "peak_rss_mb": peak_rss_mb()}
    return figures


if __name__ == "__main__":
    main()
