"""Run lorakit's data pipeline on a MedQuAD folder and print the report.

python prepare_medquad.py PATH/TO/medquad [--tokenizer tiny-phi3]
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoTokenizer

from lorakit import DataSpec, SplitSpec, prepare_data, read_source
from lorakit.data.splits import benchmark_overlap
from lorakit.testing import tiny_phi3_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("medquad")
    parser.add_argument("--tokenizer", default="tiny-phi3")
    parser.add_argument("--benchmark", help="a source URI to check for overlap, e.g. medqa:FILE")
    args = parser.parse_args()

    name = str(tiny_phi3_path()) if args.tokenizer == "tiny-phi3" else args.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(name)
    spec = DataSpec(
        source=f"medquad:{args.medquad}", split=SplitSpec(group_by="group+focus", seed=0)
    )
    data = prepare_data(spec, tokenizer)
    report = data.report.to_dict()
    print(
        json.dumps({k: report[k] for k in ("rows_read", "rows_kept", "dropped", "split")}, indent=2)
    )
    if args.benchmark:
        overlap = benchmark_overlap(
            data.splits.train, {args.benchmark: list(read_source(args.benchmark))}
        )
        print(json.dumps(overlap.to_dict(), indent=2))


if __name__ == "__main__":
    main()
