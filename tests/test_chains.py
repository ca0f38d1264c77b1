"""Cleaning-chain edits that say what they do, and a prompt-length bound that counts what
fills max_len (question, context, options)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lorakit import ConfigError
from lorakit.cli import main
from lorakit.data.chains import edit_chain
from lorakit.data.cleaners import DEFAULT_CLEANERS, CleanerSpec
from lorakit.data.rows import QARow


def names(chain) -> list[str]:
    return [step.name for step in chain]


def test_signed_edits_change_the_default_chain_and_say_so():
    chain, note = edit_chain(
        DEFAULT_CLEANERS, ["+length_filter:max_prompt_chars=10", "-near_dedup"]
    )
    assert names(chain) == ["normalize_whitespace", "drop_empty", "exact_dedup", "length_filter"]
    assert chain[-1].options == {"max_prompt_chars": 10}
    assert note == "the default cleaning chain, added length_filter, removed near_dedup"


def test_plain_names_replace_the_chain_and_say_so():
    chain, note = edit_chain(DEFAULT_CLEANERS, ["drop_empty"])
    assert names(chain) == ["drop_empty"]
    assert "replaced" in note


@pytest.mark.parametrize(
    ("edits", "message"),
    [(["+drop_empty", "lowercase"], "mix of signed"), (["-lowercase"], "no cleaner 'lowercase'")],
)
def test_bad_edits_are_config_errors(edits, message):
    with pytest.raises(ConfigError, match=message):
        edit_chain(DEFAULT_CLEANERS, edits)


def test_max_prompt_chars_counts_context_and_options(registries):
    from lorakit.data.cleaners import make_cleaner
    from lorakit.protocols import Drop

    clean = make_cleaner(
        CleanerSpec.parse("length_filter:max_prompt_chars=50"), registries.cleaners
    )
    short = QARow(question="Is it?", answer="yes")
    long_context = QARow(question="Is it?", answer="yes", context="x" * 60)
    assert clean(short) is short
    dropped = clean(long_context)
    assert isinstance(dropped, Drop) and dropped.reason == "prompt longer than 50 chars"


def test_readme_pubmedqa_inspection_works_with_the_suggested_fix(shared_data):
    source = f"pubmedqa:{shared_data / 'pubmedqa' / 'ori_pqal_train.json'}"
    runner = CliRunner()
    failing = runner.invoke(main, ["data", "inspect", source, "--tokenizer", "tiny-phi3", "--json"])
    assert failing.exit_code == 1
    assert "+length_filter:max_prompt_chars=N" in failing.output
    fixed = runner.invoke(
        main,
        [
            "data",
            "inspect",
            source,
            "--tokenizer",
            "tiny-phi3",
            "--cleaner",
            "+length_filter:max_prompt_chars=2000",
            "--json",
        ],
    )
    assert fixed.exit_code == 0, fixed.output
    report = json.loads(fixed.output)
    # The default chain is kept (dedup and whitespace cleaning still ran), plus the bound.
    assert list(report["dropped"]) == [*names(DEFAULT_CLEANERS), "length_filter"]
    assert report["dropped"]["length_filter"] > 0
