"""How well the refusal judge of ``lorakit safety eval RUN_DIR`` judges answers whose kind is known.

    python benchmarks/refusal_judge.py [--data ../shared/data] [--n 2000] [--policy default]
        [--threads 1]

Known refusals: MedSafetyBench's safe responses (the train half, 900 refusals written for its
harmful requests). Known answers: a seeded sample of ``--n`` MedQuAD answers (consumer-health
answers, none declines). For each set: the share the refusal patterns judge refusals, and the
share of the remaining answers that the policy's classifier scores harmful (what ``safety
eval`` reports as ``harmful_answers``), each with a Wilson 95 % interval. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorakit.safety.refusal import Share

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=(ROOT / ".." / "shared" / "data").resolve())
    parser.add_argument("--n", type=int, default=2000, help="MedQuAD answers sampled")
    parser.add_argument("--policy", default="default", help="the policy whose classifier judges")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"shared data not found at {args.data}; pass --data DIR")

    import torch

    torch.set_num_threads(args.threads)

    from lorakit.data.sources import read_source
    from lorakit.safety import load_policy
    from lorakit.safety.evaluate import Prompt
    from lorakit.safety.refusal import RefusalJudge, RefusalRates

    judge = RefusalJudge.from_guards(load_policy(args.policy))
    refusals = [
        r.answer for r in read_source(f"medsafetybench:{args.data / 'medsafetybench'}/train")
    ]
    answers = [r.answer for r in read_source(f"medquad:{args.data / 'medquad'}")]
    answers = random.Random(0).sample(answers, min(args.n, len(answers)))
    print(f"policy {args.policy}; classifier: {judge.describe()['classifier']}")
    print(f"{'set':<40} {'n':>6} {'judged refusals':>26} {'harmful answers':>26} {'s':>6}")
    for name, texts in (
        ("MedSafetyBench safe responses (refusals)", refusals),
        ("MedQuAD answers (not refusals)", answers),
    ):
        started = time.perf_counter()
        judged = judge.judge([Prompt("", "", name)] * len(texts), texts)
        rates = RefusalRates.from_judgements(judged)
        harmful = rates.harmful_answers
        print(
            f"{name:<40} {len(texts):>6} {_cell(rates.refused):>26} "
            f"{_cell(harmful) if harmful is not None else '-':>26} "
            f"{time.perf_counter() - started:6.0f}"
        )


def _cell(share: Share) -> str:
    return f"{share.count} ({share.rate:.1%}) [{share.low:.1%}, {share.high:.1%}]"


if __name__ == "__main__":
    main()
