"""Private data: ``data.private = true`` (``--private`` on ``lorakit train`` and ``lorakit data
inspect``) runs ``scrub_phi`` in every cleaning chain, and the cleaning report counts the
entities by type without their values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit import ConfigError
from lorakit.cli import main
from lorakit.data.cleaners import DEFAULT_CLEANERS, CleanerSpec
from lorakit.data.pipeline import DataSpec, inspect_data

DEMO = Path(__file__).resolve().parents[1] / "src" / "lorakit" / "presets" / "demo_medqa.jsonl"
PLANTED = {
    0: "Mrs. Jane Whitfield (MRN 4829113, phone 617-555-0142) asks: what is high blood pressure?",
    3: "Email me at jane.whitfield@example.org: what lowers blood pressure? Admitted 03/14/2023.",
    5: "My SSN is 123-45-6789 and I am a 93-year-old man. What is a normal pulse?",
}
SECRETS = ("Whitfield", "4829113", "617-555-0142", "jane.whitfield@example.org", "123-45-6789")


@pytest.fixture()
def phi_source(tmp_path: Path) -> str:
    """The demo set with PHI planted in three questions."""
    rows = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]
    for index, question in PLANTED.items():
        rows[index]["question"] = question
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f"jsonl:{path}"


def test_private_appends_scrub_phi_when_absent():
    plain = DataSpec(source="jsonl:x.jsonl")
    assert plain.cleaning_chain() == DEFAULT_CLEANERS
    private = DataSpec(source="jsonl:x.jsonl", private=True)
    assert private.cleaning_chain() == (*DEFAULT_CLEANERS, CleanerSpec("scrub_phi"))
    assert private.cleaners == DEFAULT_CLEANERS  # the recipe keeps what the user wrote
    early = (CleanerSpec.parse("scrub_phi:entities=EMAIL"), *DEFAULT_CLEANERS)
    assert DataSpec(source="jsonl:x", cleaners=early, private=True).cleaning_chain() == early
    own = (CleanerSpec("drop_empty"),)
    assert private.cleaning_chain(own) == (*own, CleanerSpec("scrub_phi"))


def test_private_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"data\.private must be true or false"):
        DataSpec(source="jsonl:x", private="yes")  # type: ignore[arg-type]
    from lorakit.presets import medqa_phi3_tiny

    assert medqa_phi3_tiny.with_overrides({"data.private": True}).to_dict()["data"]["private"]
    with pytest.raises(ConfigError, match="private"):
        medqa_phi3_tiny.with_overrides({"data.private": "maybe"})


def test_private_data_is_scrubbed_and_counted_by_type(phi_source, tiny_tokenizer):
    spec = DataSpec(source=phi_source, private=True)
    report, examples = inspect_data(spec, tiny_tokenizer)
    step = report.cleaning.steps[-1]
    assert step.name == "scrub_phi"
    assert step.counts == {
        "NAME": 1,
        "MRN": 1,
        "PHONE": 1,
        "EMAIL": 1,
        "DATE": 1,
        "SSN": 1,
        "AGE": 1,
    }
    assert step.changed == 3
    text = json.dumps(report.to_dict())
    assert not any(secret in text for secret in SECRETS)
    rendered = "".join(tiny_tokenizer.decode(e.input_ids) for e in examples)
    assert "[MRN]" in rendered and not any(secret in rendered for secret in SECRETS)
    plain, _ = inspect_data(DataSpec(source=phi_source), tiny_tokenizer)
    assert "scrub_phi" not in [s.name for s in plain.cleaning.steps]


def test_inspect_private_flag(phi_source):
    args = ["data", "inspect", phi_source, "--tokenizer", "tiny-phi3", "--max-len", "256"]
    result = CliRunner().invoke(main, [*args, "--private", "--json"])
    assert result.exit_code == 0, result.output
    steps = {s["name"]: s for s in json.loads(result.output)["cleaning"]["steps"]}
    assert steps["scrub_phi"]["counts"]["SSN"] == 1
    plain = CliRunner().invoke(main, [*args, "--json"])
    assert "scrub_phi" not in {s["name"] for s in json.loads(plain.output)["cleaning"]["steps"]}
    table = CliRunner().invoke(main, [*args, "--private"])
    assert "scrub_phi appended (private data)" in table.output


@pytest.mark.slow
def test_train_private_scrubs_the_training_data(phi_source, tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "medqa_phi3_tiny",
            "--private",
            *("--set", f"data.source={phi_source}", "--set", "training.max_steps=1"),
            *("--set", "training.eval_steps=1", "--set", "training.save_steps=1"),
            *("--run-dir", str(run_dir), "--no-progress"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    steps = {s["name"]: s for s in data["cleaning"]["steps"]}
    assert steps["scrub_phi"]["counts"]["MRN"] == 1
    recipe = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))["recipe"]
    assert recipe["data"]["private"] is True
    written = "".join(p.read_text(errors="ignore") for p in run_dir.glob("*.json*"))
    assert not any(secret in written for secret in SECRETS)
