"""The answer path on a real (tiny) trained run: the run's own template, batched decoding that
matches ``model.generate``, history within the context window, streaming, sampling, guards,
and ``lorakit ask``. No mocks of the model; guards are small in-test objects with the
GuardSet shape (the real ones live in lorakit.safety)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit import ConfigError
from lorakit.protocols import Verdict

pytestmark = pytest.mark.slow

SYSTEM = "You are a careful medical assistant."
SHORT = {
    "training.max_steps": 2,
    "training.eval_steps": 2,
    "training.save_steps": 2,
    "training.logging_steps": 1,
    "data.template_options": {"system": SYSTEM},
}


def trained_run(base: Path) -> Path:
    """A finished tiny run (its template has a system message), trained once per session."""
    from lorakit.presets import medqa_phi3_tiny

    run_dir = base / "answer-run"
    if not (run_dir / "report.json").exists():
        medqa_phi3_tiny.with_overrides(SHORT).run(run_dir, show_progress=False)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def answerer(run_dir: Path):
    from lorakit.answer import Answerer, SamplingSpec

    return Answerer.from_run_dir(run_dir, sampling=SamplingSpec(max_new_tokens=12))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from lorakit.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=300,
    )


def test_the_prompt_is_rendered_with_the_runs_own_template(answerer):
    from lorakit.data.rows import QARow
    from lorakit.data.templates import qa_template
    from lorakit.evaluate.generate import prompt_token_ids

    prepared = answerer.prepare("What is asthma?")
    expected = prompt_token_ids(
        [QARow(question="What is asthma?", answer="")],
        answerer.tokenizer,
        qa_template(system=SYSTEM),
    )[0]
    assert prepared.prompt_ids == expected
    assert SYSTEM in answerer.tokenizer.decode(prepared.prompt_ids)
    assert answerer.describe()["template_options"] == {"system": SYSTEM}


def test_batched_greedy_decoding_equals_model_generate(answerer):
    from lorakit.evaluate.generate import generate_from_ids

    questions = ["What is diabetes?", "How is high blood pressure treated?", "Flu?"]
    prepared = [answerer.prepare(q) for q in questions]
    answers = answerer.generate(prepared)
    reference = generate_from_ids(
        answerer.model,
        answerer.tokenizer,
        [p.prompt_ids for p in prepared],
        ["", "", ""],
        max_new_tokens=12,
        batch_size=3,
    )
    assert [a.model_text for a in answers] == [r.text for r in reference]
    assert [a.truncated for a in answers] == [r.truncated for r in reference]
    # One at a time gives the same answers (float32 on the CPU).
    assert [answerer.answer(q).text for q in questions] == [a.text for a in answers]


def test_streaming_yields_the_answer_in_pieces_then_the_answer(answerer):
    from lorakit.answer import Answer

    pieces = list(answerer.stream("What is diabetes?"))
    final = pieces[-1]
    assert isinstance(final, Answer)
    texts = [p for p in pieces[:-1] if isinstance(p, str)]
    assert len(texts) > 1
    assert "".join(texts).strip() == final.text == answerer.answer("What is diabetes?").text


def test_sampling_is_seeded_and_differs_from_greedy(answerer):
    from lorakit.answer import SamplingSpec

    hot = SamplingSpec(max_new_tokens=12, temperature=1.5, seed=3)
    first = answerer.answer("What is anemia?", sampling=hot).text
    assert answerer.answer("What is anemia?", sampling=hot).text == first
    assert first != answerer.answer("What is anemia?").text
    with pytest.raises(ConfigError, match="temperature"):
        SamplingSpec(temperature=-1)


def test_history_is_kept_within_the_context_window_oldest_turns_dropped(answerer):
    turns = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"Question {i} about blood pressure and diet?"},
            {"role": "assistant", "content": f"Answer {i}: less salt and more exercise."},
        ]
    full, dropped = answerer.prompt_ids("And asthma?", turns)
    assert dropped == 0
    window = answerer.context_window
    try:
        answerer.context_window = len(full) + 12 - 30  # too small for every turn
        ids, dropped = answerer.prompt_ids("And asthma?", turns)
        assert dropped > 0 and dropped % 2 == 0
        assert len(ids) + 12 <= answerer.context_window
        assert "Question 5" in answerer.tokenizer.decode(ids)  # the newest turn is kept
        assert "Question 0" not in answerer.tokenizer.decode(ids)
        answer = answerer.answer("And asthma?", turns)
        assert answer.dropped_turns == dropped
        answerer.context_window = 20
        with pytest.raises(ConfigError, match="context"):
            answerer.prompt_ids("And asthma?")
    finally:
        answerer.context_window = window
    with pytest.raises(ConfigError, match="role"):
        answerer.prompt_ids("x", [{"role": "tool", "content": "y"}])
    with pytest.raises(ConfigError, match="empty"):
        answerer.prepare("  ")


class Guards:
    """The GuardSet shape of lorakit.safety: check_input, check_output, decide."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def check_input(self, text: str) -> list[Verdict]:
        self.seen.append(("input", text))
        if "overdose" in text:
            return [Verdict(guard="self_harm", decision="block", reason="SH1", message="Call 988.")]
        if "John Smith" in text:
            return [
                Verdict(
                    guard="phi",
                    decision="rewrite",
                    reason="PHI",
                    text=text.replace("John Smith", "[NAME]"),
                )
            ]
        return [Verdict(guard="phi", decision="allow")]

    def check_output(self, question: str, answer: str) -> list[Verdict]:
        self.seen.append(("output", answer))
        return [Verdict(guard="urgent", decision="flag", reason="U1", message="See a doctor.")]

    def decide(self, verdicts: list[Verdict]) -> Verdict:
        order = {"block": 3, "rewrite": 2, "flag": 1, "allow": 0}
        return max(verdicts, key=lambda v: order[v.decision])


def test_guards_run_before_and_after_generation(answerer):
    guards = Guards()
    answerer.guards = guards
    try:
        blocked = answerer.answer("How much for an overdose?")
        assert blocked.abstained and blocked.reason == "input_blocked"
        assert blocked.text == "Call 988." and blocked.new_tokens == 0
        assert guards.seen == [("input", "How much for an overdose?")]  # never generated

        rewritten = answerer.prepare("Does John Smith have flu?")
        assert "John Smith" not in answerer.tokenizer.decode(rewritten.prompt_ids)
        flagged = answerer.answer("What is flu?")
        assert flagged.text.startswith("See a doctor.\n\n")  # urgent-care notice first
        assert [v.guard for v in flagged.verdicts] == ["phi", "urgent"]
        assert not answerer.streams_tokens
        pieces = list(answerer.stream("What is flu?"))
        assert pieces[0] == flagged.text  # checked whole, then shown whole
        assert pieces[-1].to_dict()["verdicts"][1]["reason"] == "U1"
    finally:
        answerer.guards = None


def test_ask_prints_the_answer_and_json(run_dir, answerer):
    done = cli("ask", str(run_dir), "What is diabetes?", "--max-new-tokens", "12", "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["answer"] == answerer.answer("What is diabetes?").text
    assert set(record) >= {"answer", "citations", "abstained", "retrieval", "verdicts", "model"}
    assert record["model"]["template_options"] == {"system": SYSTEM}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ask", "/no/such/run", "q"], "no such run directory"),
        (["ask", "q"], "give a RUN_DIR or --model"),
        (
            [
                "ask",
                "--model",
                "tiny-phi3",
                "--adapter",
                "{run}/adapter",
                "--template",
                "nope",
                "q",
            ],
            "nope",
        ),
    ],
)
def test_ask_bad_input_is_one_line(run_dir, args, expected):
    done = cli(*[a.replace("{run}", str(run_dir)) for a in args])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and expected in errors[0], done.stderr


def test_ask_with_model_and_adapter(run_dir):
    done = cli(
        "ask",
        "--model",
        "tiny-phi3",
        "--adapter",
        str(run_dir / "adapter"),
        "Flu?",
        "--max-new-tokens",
        "4",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_answers_are_decoded_on_the_fast_path_when_asked(answerer, monkeypatch):
    """The answer path loads its model with an attention the static-cache path takes (sdpa),
    not the packed-training kernel a GPU would otherwise get."""
    from lorakit.answer import last_decode_info

    assert answerer.model.config._attn_implementation == "sdpa"
    monkeypatch.setenv("LORAKIT_FAST_DECODE", "1")
    answerer.generate([answerer.prepare("What is asthma?")])
    assert last_decode_info()["path"] == "static"
