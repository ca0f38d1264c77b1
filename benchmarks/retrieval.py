"""Retrieval on MedQuAD: recall@1/5/10, MRR and nDCG of the question's own document for BM25,
dense (all-MiniLM-L6-v2) and fused retrieval, per subset; query latency; the abstention
threshold; and the dense search latency of the embedded store at a synthetic scale-up.

    python benchmarks/retrieval.py [--data ../shared/data] [--work /tmp/lorakit-retrieval]
                                   [--threads 1] [--scale 1000000] [--out benchmarks/results]

The index is built once into --work (a later run reuses its vectors: nothing is embedded
again). Writes ``DATE-retrieval-medquad-cpu.json`` and ``.md`` under --out and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _table(report: dict) -> str:
    ks = report["eval"]["ks"]
    head = ["subset", "retriever", "n", *[f"R@{k}" for k in ks], "MRR", f"nDCG@{ks[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    modes = report["eval"]["modes"]
    subsets = ["all", *sorted(modes["fused"]["subsets"])]
    for subset in subsets:
        for mode in ("lexical", "dense", "fused"):
            m = modes[mode]["all"] if subset == "all" else modes[mode]["subsets"][subset]

            def cell(name: str, m: dict = m) -> str:
                v = m[name]
                return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

            row = [subset, mode, str(m["n"]), *[cell(f"recall@{k}") for k in ks], cell("mrr")]
            row.append(cell(f"ndcg@{ks[-1]}"))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _compare_chroma(index_dir: Path, sources: list, url: str, questions: list, args) -> dict:
    """Dense search on a Chroma server vs the embedded store: latency and top-10 agreement."""
    import shutil

    from lorakit.retrieval import build_index, load_index

    copy = args.work / "medquad-index-chroma"
    if not copy.exists():
        shutil.copytree(index_dir, copy)
    started = time.perf_counter()
    build = build_index(sources, copy, store="chroma", store_options={"url": url})
    upload = time.perf_counter() - started
    local, remote = load_index(index_dir), load_index(copy)
    sample = [q.question for q in questions[: args.latency_sample]]
    vectors = local.embedder.embed(sample)
    out: dict = {"url": url, "embedded": build.embedded, "build_seconds": round(upload, 1)}
    agree = 0
    for name, index in (("embedded", local), ("chroma", remote)):
        times = []
        for vector in vectors:
            started = time.perf_counter()
            index.store.search(vector, 10)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        out[f"{name}_dense_search_ms"] = {
            "p50": round(times[len(times) // 2], 3),
            "p95": round(times[int(len(times) * 0.95) - 1], 3),
        }
    for vector in vectors:
        want = {row for row, _ in local.store.search(vector, 10)}
        got = {row for row, _ in remote.store.search(vector, 10)}
        agree += len(want & got)
    out["top10_overlap"] = round(agree / (10 * len(vectors)), 4)
    return out


def _scale_up(rows: int, dims: int, work: Path) -> dict:
    """Dense search latency of the embedded store over ``rows`` random unit vectors."""
    import numpy as np

    from lorakit.retrieval.stores import EmbeddedStore

    rng = np.random.default_rng(0)
    scratch = work / f"synthetic-{rows}"
    scratch.mkdir(parents=True, exist_ok=True)
    if not (scratch / "vectors.npy").exists():
        vectors = np.empty((rows, dims), dtype=np.float32)
        for start in range(0, rows, 100_000):
            part = rng.standard_normal((min(100_000, rows - start), dims), dtype=np.float32)
            vectors[start : start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
        np.save(scratch / "vectors.npy", vectors)
        del vectors
    store = EmbeddedStore().open(scratch, {})
    queries = rng.standard_normal((50, dims), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    store.search(queries[0], 50)  # page the matrix in
    times = []
    for q in queries:
        started = time.perf_counter()
        store.search(q, 50)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "rows": rows,
        "dims": dims,
        "dense_search_ms": {
            "p50": round(times[len(times) // 2], 2),
            "p95": round(times[int(len(times) * 0.95) - 1], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lorakit-retrieval"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--scale", type=int, default=1_000_000, help="synthetic rows (0: skip)")
    parser.add_argument(
        "--scale-only", action="store_true", help="only the synthetic scale-up (prints JSON)"
    )
    parser.add_argument(
        "--subsets", help="comma-separated MedQuAD subsets (default: all), indexed in this order"
    )
    parser.add_argument("--calibration-questions", type=int, default=500)
    parser.add_argument("--latency-sample", type=int, default=300)
    parser.add_argument(
        "--chroma-url", help="a Chroma server: compare its dense search with the embedded store"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    medquad = args.data / "medquad"
    if not medquad.is_dir():
        raise SystemExit(f"MedQuAD not found at {medquad}; pass --data DIR")

    import torch

    torch.set_num_threads(args.threads)
    if args.scale_only:
        print(json.dumps(_scale_up(args.scale, 384, args.work), indent=2))
        return

    from lorakit import __version__
    from lorakit.data.sources import read_source
    from lorakit.errors import DataError
    from lorakit.reporting import RichProgress
    from lorakit.retrieval import build_index, load_index
    from lorakit.retrieval.evaluation import (
        calibrate_threshold,
        evaluate_retrieval,
        questions_from_rows,
        read_questions,
        save_calibration,
    )

    uri = f"medquad:{medquad}"
    all_subsets = sorted(p.name for p in medquad.iterdir() if p.is_dir())
    chosen = args.subsets.split(",") if args.subsets else all_subsets
    sources = [uri] if not args.subsets else [f"medquad:{medquad / name}" for name in chosen]
    index_dir = args.work / "medquad-index"
    report: dict = {
        "date": datetime.date.today().isoformat(),
        "lorakit": __version__,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
        },
        "sources": sources,
    }
    with RichProgress() as progress:
        # one subset at a time (incremental adds): an interrupted run keeps what it embedded
        subsets = args.subsets.split(",") if args.subsets else all_subsets
        embedded = embed_seconds = 0.0
        for subset in subsets:
            try:
                part = build_index(
                    [f"medquad:{medquad / subset}"],
                    index_dir,
                    add=index_dir.exists(),
                    progress=progress,
                )
            except DataError:  # 12_MPlusHerbsSupplements_QA: answers removed upstream
                continue
            embedded += part.embedded
            embed_seconds += part.embed_seconds
        build = build_index(sources, index_dir, progress=progress)  # the whole corpus: 0 embedded
        report["build"] = {
            **build.to_dict(),
            "embedded": int(embedded),
            "embed_seconds": round(embed_seconds, 1),
            "passages_per_second": round(embedded / embed_seconds, 1) if embed_seconds else None,
            "final_rebuild_seconds": build.seconds,
        }
        index = load_index(index_dir)
        report["card"] = {k: v for k, v in index.card.to_dict().items() if k != "calibration"}

        rows = [row for source in sources for row in read_source(source)]
        questions = questions_from_rows(rows)
        rng = random.Random(0)
        on_topic = [q.question for q in rng.sample(questions, args.calibration_questions)]
        alpaca = args.data / "general" / "alpaca_seed_tasks.jsonl"
        off_topic = read_questions(
            f"jsonl:{alpaca}", fields={"question": "instruction", "answer": "id"}
        )
        calibration = calibrate_threshold(
            index,
            on_topic,
            off_topic,
            sources={"on_topic": f"{uri} (seeded sample)", "off_topic": f"jsonl:{alpaca}"},
            progress=progress,
        )
        save_calibration(index, calibration)
        report["calibration"] = calibration.to_dict()

        report["eval"] = evaluate_retrieval(
            index, questions, ks=(1, 5, 10), latency_sample=args.latency_sample, progress=progress
        )

    if args.chroma_url:
        report["chroma"] = _compare_chroma(index_dir, sources, args.chroma_url, questions, args)

    if args.scale:
        report["scale_up"] = _scale_up(args.scale, index.card.dims, args.work)

    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if not args.subsets else "-" + "+".join(n.split("_")[0] for n in chosen)
    stem = args.out / f"{report['date']}-retrieval-medquad{suffix}-cpu"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lat = report["eval"]["latency_ms"]
    cal = report["calibration"]
    md = [
        f"# Retrieval on MedQuAD ({report['date']}, lorakit {__version__}, "
        f"{report['machine']['cpus']} CPUs, torch threads {args.threads})",
        "",
        f"Index: {build.passages:,} passages of {build.documents:,} documents; embedded "
        f"{report['build']['embedded']:,} at {report['build']['passages_per_second']} "
        "passages/s on this CPU (0 when a cached index was reused).",
        f"Questions: {report['eval']['questions']:,} answered MedQuAD questions, gold = the "
        "question's own document; 95 % Wilson (recall) and bootstrap (MRR, nDCG) intervals.",
        "",
        _table(report),
        "",
        "Latency of one query (ms, query embedding included): "
        + "; ".join(
            f"{m} p50 {v['p50']} p95 {v['p95']} (CPU time p50 {v['cpu_p50']} p95 {v['cpu_p95']})"
            for m, v in lat.items()
        )
        + f"; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
        f"Abstention threshold {cal['threshold']:.3f} (cosine): on-topic covered "
        f"{cal['on_topic_covered']:.3f} of {cal['on_topic']}, off-topic abstained "
        f"{cal['off_topic_abstained']:.3f} of {cal['off_topic']}.",
    ]
    if "chroma" in report:
        c = report["chroma"]
        md.append(
            f"\nChroma server ({c['url']}): dense search p50 {c['chroma_dense_search_ms']['p50']} ms, "
            f"p95 {c['chroma_dense_search_ms']['p95']} ms vs embedded p50 "
            f"{c['embedded_dense_search_ms']['p50']} ms, p95 {c['embedded_dense_search_ms']['p95']} ms "
            f"(vector search only); top-10 overlap with exact search {c['top10_overlap']:.4f}; "
            f"upload of the vectors {c['build_seconds']} s."
        )
    if "scale_up" in report:
        s = report["scale_up"]
        md.append(
            f"\nSynthetic scale-up: dense search over {s['rows']:,} x {s['dims']} vectors, "
            f"embedded store: p50 {s['dense_search_ms']['p50']} ms, p95 "
            f"{s['dense_search_ms']['p95']} ms."
        )
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
