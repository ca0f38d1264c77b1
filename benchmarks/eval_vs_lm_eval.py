"""Multiple-choice scoring speed: lorakit against lm-evaluation-harness's HF backend on the
same model object, items, prompts and device, each at its best batch size, in one process,
with per-item agreement of the chosen options.

CPU, tiny Phi-3 (a minute)::

    python benchmarks/eval_vs_lm_eval.py --model tiny --limit 40 --batch-sizes 8

GPU, full-size Phi-3-mini architecture with random weights (bf16)::

    python benchmarks/eval_vs_lm_eval.py --model random-phi3-mini --batch-sizes 16,32,64

Benchmarks (from ``--data``, default ``../shared/data``): MedQA (4 options, letters), MedMCQA
(dev, letters), PubMedQA (labelled set, yes/no/maybe as texts, with its context) and
MMLU-medical (dev, letters, one task per subject with its description), all zero-shot. lorakit
scores with :func:`lorakit.evaluate.mcq.score_loglikelihood`; the harness with
``lm_eval.simple_evaluate`` over task YAML files written to a temporary folder whose templates
rebuild lorakit's prompt (``tests/test_lm_eval_agreement.py`` checks that the prompts and
log-likelihoods agree). A warm-up pass over a few items runs first for each. Times are wall
clock around the whole scoring call (the harness's task building included: what a user
waits for) and, for the harness, also around its model's ``loglikelihood`` alone (its scoring
without the task building, the fairer comparison of the two scorers). Prints a table; ``--out FILE`` writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from lorakit.data.rows import LETTERS

DOC_TO_TEXT = (
    "{% if context %}Context: {{ context.strip() }}\nQuestion: {{ question.strip() }}"
    "{% else %}{{ question.strip() }}{% endif %}"
    "{% if show_options %}{% for option in options %}\n"
    "{{ 'ABCDEFGHIJ'[loop.index0] }}. {{ option.strip() }}{% endfor %}{% endif %}"
    "\nAnswer:"
)
MMLU_DESCRIPTION = (
    "The following are multiple choice questions (with answers) about "
    "{{ subject.replace('_', ' ') }}.\n\n"
)
HARNESS_SETTINGS = {
    "log_samples": True,
    "bootstrap_iters": 0,
    "random_seed": 0,
    "numpy_random_seed": 0,
    "torch_random_seed": 0,
    "fewshot_random_seed": 0,
}
"""``lm_eval.simple_evaluate`` settings for a repeatable run with per-sample records (also used by
tests/test_lm_eval_agreement.py)."""
MODEL_SECONDS: list[float] = []
"""Seconds the harness spent inside its model's ``loglikelihood`` (its scoring alone)."""
# name -> (file under --data, choices)
BENCHES = {
    "medqa": ("medqa/us_4_options_sample.jsonl", "letters"),
    "medmcqa": ("medmcqa/dev.json", "letters"),
    "pubmedqa": ("pubmedqa/ori_pqal_train.json", "texts"),
    "mmlu_medical": ("mmlu/dev", "letters"),
}


def load_model(name: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from lorakit.testing import PHI3_MINI_CONFIG, tiny_phi3_path

    cuda = torch.cuda.is_available()
    if name == "random-phi3-mini":
        torch.manual_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            model = Phi3ForCausalLM(Phi3Config(**PHI3_MINI_CONFIG)).to(torch.bfloat16)
        return model.eval(), AutoTokenizer.from_pretrained(tiny_phi3_path())
    path = tiny_phi3_path() if name == "tiny" else name
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to("cuda" if cuda else "cpu").eval(), AutoTokenizer.from_pretrained(path)


def write_task(folder: Path, name: str, rows: list[Any], choices: str, description: str) -> None:
    """An lm-evaluation-harness task (YAML + JSON lines in ``folder``) whose Jinja templates
    rebuild lorakit's prompt from the raw fields, exemplars drawn first-n from its own rows,
    scored by ``acc`` and ``acc_norm`` (also used by tests/test_lm_eval_agreement.py)."""
    import yaml

    docs = [
        {
            "question": row.question,
            "context": row.context,
            "options": list(row.options),
            "show_options": choices == "letters",
            "letters": list(LETTERS[: len(row.options)]),
            "texts": [option.strip() for option in row.options],
            "subject": row.category or "",
            "answer": row.answer_index,
        }
        for row in rows
    ]
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "cache")},
        "test_split": "test",
        "fewshot_split": "test",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice",
        "doc_to_text": DOC_TO_TEXT,
        "doc_to_choice": choices,
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    if description:
        config["description"] = description
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def harness_choices(
    model: Any, tokenizer: Any, rows: list[Any], choices: str, batch: int
) -> list[int]:
    """The harness's chosen option per row (argmax of its log-likelihoods), in row order."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    subjects = sorted({r.category or "" for r in rows}) if any(r.category for r in rows) else [""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tasks = {}
        for i, subject in enumerate(subjects):
            name = f"lk_task_{i}"
            group = [r for r in rows if (r.category or "") == subject]
            write_task(folder, name, group, choices, MMLU_DESCRIPTION if subject else "")
            tasks[name] = group
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch)
        scoring = lm.loglikelihood

        def loglikelihood(requests: Any, *more: Any, **options: Any) -> Any:
            start = time.perf_counter()
            try:
                return scoring(requests, *more, **options)
            finally:
                MODEL_SECONDS.append(time.perf_counter() - start)

        lm.loglikelihood = loglikelihood  # type: ignore[method-assign]
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            num_fewshot=0,
            **HARNESS_SETTINGS,
        )
    chosen: dict[int, int] = {}
    for name, group in tasks.items():
        for sample in out["samples"][name]:
            scores = [float(resp[0][0]) for resp in sample["resps"]]
            chosen[id(group[sample["doc_id"]])] = max(range(len(scores)), key=scores.__getitem__)
    return [chosen[id(r)] for r in rows]


def lorakit_choices(
    model: Any, tokenizer: Any, rows: list[Any], choices: str, batch: int
) -> list[int]:
    from lorakit.evaluate.benchmarks import BENCHMARKS
    from lorakit.evaluate.mcq import score_loglikelihood
    from lorakit.evaluate.spec import BenchSpec

    mmlu = any(r.category for r in rows)
    spec = BenchSpec(
        choices=choices,  # type: ignore[arg-type]
        shots=0,
        description=BENCHMARKS["mmlu_medical"].description if mmlu else "",
        batch_size=batch,
    )
    return list(score_loglikelihood(model, tokenizer, rows, spec).choices())


def timed(fn: Any, *args: Any) -> tuple[list[int], float]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, random-phi3-mini or a folder")
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).parents[1] / ".." / "shared" / "data"
    )
    parser.add_argument("--benches", default=",".join(BENCHES))
    parser.add_argument("--limit", type=int, default=200, help="items per benchmark")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import lm_eval
    import torch

    from lorakit.evaluate.benchmarks import BENCHMARKS, load_benchmark

    model, tokenizer = load_model(args.model)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    batches = [int(b) for b in args.batch_sizes.split(",")]
    rows_out = []
    for bench in args.benches.split(","):
        file, choices = BENCHES[bench]
        items, _ = load_benchmark(BENCHMARKS[bench], str(args.data / file), limit=args.limit)
        items = list(items)
        row: dict[str, Any] = {"bench": bench, "items": len(items), "choices": choices}
        picks: dict[str, list[int]] = {}
        for label, fn in (("lorakit", lorakit_choices), ("lm_eval", harness_choices)):
            fn(model, tokenizer, items[:4], choices, batches[0])  # warm-up
            best = None
            for batch in batches:
                MODEL_SECONDS.clear()
                chosen, seconds = timed(fn, model, tokenizer, items, choices, batch)
                rate = len(items) / seconds
                if best is None or rate > best[0]:
                    best = (rate, batch, len(items) / sum(MODEL_SECONDS) if MODEL_SECONDS else rate)
                picks[label] = chosen
            assert best is not None
            row[f"{label}_items_per_s"] = round(best[0], 2)
            row[f"{label}_batch"] = best[1]
            if label == "lm_eval":  # its scoring alone, without building its tasks
                row["lm_eval_scoring_items_per_s"] = round(best[2], 2)
        row["ratio"] = round(row["lorakit_items_per_s"] / row["lm_eval_items_per_s"], 2)
        row["ratio_scoring"] = round(
            row["lorakit_items_per_s"] / row["lm_eval_scoring_items_per_s"], 2
        )
        row["agree"] = sum(a == b for a, b in zip(picks["lorakit"], picks["lm_eval"], strict=True))
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    header = (
        f"{args.model} on {device}; torch {torch.__version__}, lm_eval {lm_eval.__version__}; "
        f"batch sizes tried {args.batch_sizes}, zero-shot"
    )
    print(f"\n{header}\n")
    print(
        "| benchmark | items | lorakit items/s (batch) | lm-eval items/s (batch) | ratio "
        "| lm-eval scoring alone, items/s | ratio to it | same choice |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        print(
            f"| {r['bench']} | {r['items']} | {r['lorakit_items_per_s']:,} ({r['lorakit_batch']}) | "
            f"{r['lm_eval_items_per_s']:,} ({r['lm_eval_batch']}) | {r['ratio']}x | "
            f"{r['lm_eval_scoring_items_per_s']:,} | {r['ratio_scoring']}x | "
            f"{r['agree']}/{r['items']} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"setup": header, "rows": rows_out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
