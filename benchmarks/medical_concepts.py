"""The ``medical_concepts`` metric on MedQuAD answers: concepts per answer, vocabulary coverage.

    python benchmarks/medical_concepts.py [--data ../shared/data] [--pairs 2000] [--seed 0]
        [--out benchmarks/results/2026-12-01-medical-concepts]

Reads every MedQuAD answer (subsets with answers; empty ones skipped), builds the matcher over
the built-in vocabularies (``hpo``, ``icd10cm``, both) and reports, per vocabulary set: build
time, text forms, matching speed, distinct concepts per answer (mean, median, p90), the share of
answers with at least one concept, per subset and per question type, and the most frequent
concepts. Then the metric itself on real text: concept P/R/F1 (bootstrap intervals) of each
answer against a *different* answer of the same document (same focus, other question type)
and against a random answer of another document, a floor that the first should clear.
Writes OUT.json and OUT.md and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _rows(data: Path) -> list[Any]:
    from lorakit.data.sources import read_source

    return [r for r in read_source(f"medquad:{data / 'medquad'}") if r.answer.strip()]


def _coverage(rows: list[Any], names: tuple[str, ...]) -> dict[str, Any]:
    from lorakit.evaluate.concepts import MedicalConcepts

    start = time.perf_counter()
    matcher = MedicalConcepts(list(names)).matcher
    built = time.perf_counter() - start
    start = time.perf_counter()
    found = [matcher.concepts(r.answer) for r in rows]
    took = time.perf_counter() - start
    counts = [len(f) for f in found]
    by_vocab = Counter(c.vocabulary for f in found for c in f.values())
    top = Counter((c.id, c.label) for f in found for c in f.values()).most_common(15)

    def share(selected: list[int]) -> dict[str, Any]:
        values = [counts[i] for i in selected]
        return {
            "answers": len(values),
            "mean": round(statistics.fmean(values), 2),
            "with_concept": round(sum(v > 0 for v in values) / len(values), 4),
        }

    groups: dict[str, dict[str, list[int]]] = {"subset": {}, "qtype": {}}
    for i, row in enumerate(rows):
        groups["subset"].setdefault(row.origin.split("/")[-2], []).append(i)
        groups["qtype"].setdefault(row.category or "?", []).append(i)
    ordered = sorted(counts)
    return {
        "vocabularies": {n: matcher.sizes[n] for n in matcher.vocabularies},
        "versions": matcher.versions,
        "forms": matcher.forms,
        "build_s": round(built, 2),
        "answers_per_s": round(len(rows) / took),
        "chars_per_s": round(sum(len(r.answer) for r in rows) / took),
        "concepts_per_answer": {
            "mean": round(statistics.fmean(counts), 2),
            "median": statistics.median(counts),
            "p90": ordered[int(0.9 * (len(ordered) - 1))],
        },
        "with_concept": round(sum(c > 0 for c in counts) / len(counts), 4),
        "mentions_by_vocabulary": dict(by_vocab),
        "by_subset": {k: share(v) for k, v in sorted(groups["subset"].items())},
        "by_qtype": {k: share(v) for k, v in sorted(groups["qtype"].items())},
        "top_concepts": [[cid, label, n] for (cid, label), n in top],
    }


def _pairs(rows: list[Any], count: int, seed: int) -> dict[str, Any]:
    from lorakit.evaluate.concepts import MedicalConcepts, score_concepts

    rng = random.Random(seed)
    by_doc: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_doc.setdefault(row.group or row.origin, []).append(i)
    docs = [d for d, members in by_doc.items() if len(members) > 1]
    same, other = [], []
    for _ in range(count):
        doc = rng.choice(docs)
        a, b = rng.sample(by_doc[doc], 2)
        same.append((a, b))
        c = rng.randrange(len(rows))
        while (rows[c].group or rows[c].origin) == doc:
            c = rng.randrange(len(rows))
        other.append((a, c))
    metric = MedicalConcepts()
    out = {}
    for name, pairs in (("same_document", same), ("other_document", other)):
        result = score_concepts(
            [rows[b].answer for _, b in pairs],
            [rows[a].answer for a, _ in pairs],
            metric,
            resamples=2000,
            seed=seed,
        )
        out[name] = {k: result[k] for k in ("n", "no_concepts", "precision", "recall", "f1")}
        out[name]["missed_top"] = result["missed_top"][:8]
    return out


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# medical_concepts on MedQuAD answers",
        "",
        f"{result['answers']:,} non-empty MedQuAD answers; {result['machine']}; "
        f"`{result['command']}`.",
        "",
        "| vocabularies | terms | text forms | build s | answers/s | concepts/answer "
        "mean / median / p90 | answers with >= 1 concept |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cov in result["coverage"].items():
        cpa = cov["concepts_per_answer"]
        terms = ", ".join(f"{k} {v:,}" for k, v in cov["vocabularies"].items())
        lines.append(
            f"| {name} | {terms} | {cov['forms']:,} | {cov['build_s']} | {cov['answers_per_s']:,} "
            f"| {cpa['mean']} / {cpa['median']} / {cpa['p90']} | {100 * cov['with_concept']:.1f} % |"
        )
    both = result["coverage"]["hpo+icd10cm"]
    lines += ["", "By subset (both vocabularies): mean concepts, share with >= 1 concept", ""]
    lines += ["| subset | answers | mean | with concept |", "|---|---|---|---|"]
    for name, row in both["by_subset"].items():
        lines.append(
            f"| {name} | {row['answers']:,} | {row['mean']} | {100 * row['with_concept']:.1f} % |"
        )
    lines += [
        "",
        "Most frequent concepts: "
        + ", ".join(f"{label} ({cid}) {n:,}" for cid, label, n in both["top_concepts"][:10]),
        "",
    ]
    lines += ["Concept overlap of an answer with another answer (95 % bootstrap intervals)", ""]
    lines += ["| pair | n | precision | recall | F1 |", "|---|---|---|---|---|"]
    for name, row in result["pairs"].items():
        cells = [
            f"{row[k]['mean']:.3f} [{row[k]['ci_low']:.3f}, {row[k]['ci_high']:.3f}] (n {row[k]['n']})"
            for k in ("precision", "recall", "f1")
        ]
        lines.append(f"| {name} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=(ROOT / ".." / "shared" / "data").resolve())
    parser.add_argument("--pairs", type=int, default=2000, help="answer pairs scored per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "2026-12-01-medical-concepts"
    )
    args = parser.parse_args()
    if not (args.data / "medquad").is_dir():
        raise SystemExit(f"MedQuAD not found under {args.data} (pass --data)")
    rows = _rows(args.data)
    coverage = {
        "+".join(names): _coverage(rows, names)
        for names in (("hpo",), ("icd10cm",), ("hpo", "icd10cm"))
    }
    result = {
        "answers": len(rows),
        "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "command": f"python benchmarks/medical_concepts.py --pairs {args.pairs} --seed {args.seed}",
        "coverage": coverage,
        "pairs": _pairs(rows, args.pairs, args.seed),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    markdown = _markdown(result)
    args.out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
