"""``lorakit review``: the sheet, the grade store, the summary, exports, and the page over HTTP."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit.cli import main
from lorakit.errors import ConfigError, DataError
from lorakit.review import DuplicateGrade, GradeStore, InvalidGrade, ReviewSheet, read_answers
from lorakit.review.export import to_csv, to_html
from lorakit.review.sheet import ReviewItem, stratified_sample
from lorakit.review.summary import cohen_kappa, spearman, summarize

CATEGORIES = ["symptoms"] * 6 + ["treatment"] * 4 + ["causes"] * 2


def _rows() -> list[dict]:
    rows = []
    for i, category in enumerate(CATEGORIES):
        rows.append(
            {
                "id": f"q{i}",
                "question": f"Question {i} about {category}?",
                "reference": f"Reference answer {i}: fever and headache.",
                "category": category,
                "answer": f"=Generated answer {i} <b>bold</b>",
                "scores": {"token_f1": i / 12},
                "citations": [
                    {"n": 1, "doc_id": f"doc{i}", "url": "javascript:alert(1)", "text": "p"}
                ]
                if i % 3 == 0
                else [],
                "verdicts": [
                    {"guard": "dosing", "decision": "flag", "reason": "dose", "message": "m"}
                ]
                if i % 4 == 0
                else [],
            }
        )
    return rows


@pytest.fixture()
def answers(tmp_path: Path) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    return path


def _item(i: int, category: str) -> ReviewItem:
    return ReviewItem(id=str(i), question="q", answer="a", category=category)


def test_stratified_sample_is_proportional_with_a_minimum_and_seeded():
    items = [_item(i, c) for i, c in enumerate(["a"] * 10 + ["b"] * 5 + ["c"])]
    drawn = stratified_sample(items, 8, seed=3)
    counts = {c: sum(i.category == c for i in drawn) for c in "abc"}
    assert counts == {"a": 5, "b": 2, "c": 1}
    assert [i.id for i in drawn] == [i.id for i in stratified_sample(items, 8, seed=3)]
    assert [i.id for i in drawn] != [i.id for i in stratified_sample(items, 8, seed=4)]
    assert len(stratified_sample(items, 100, seed=0)) == 16
    with pytest.raises(ConfigError, match="--sample"):
        stratified_sample(items, 0, seed=0)


def test_sheet_is_drawn_once_and_kept(answers: Path):
    sheet = ReviewSheet.open(answers, sample=6, seed=1)
    assert sheet.folder == answers.parent / "review-answers"
    assert sorted(i.category for i in sheet.items).count("symptoms") == 3
    again = ReviewSheet.open(answers)
    assert [i.id for i in again.items] == [i.id for i in sheet.items] and again.sample == 6
    with pytest.raises(ConfigError, match="drawn with --seed 1, not 2"):
        ReviewSheet.open(answers, seed=2)
    answers.write_text(answers.read_text() + json.dumps({"id": "new", "question": "x?"}) + "\n")
    assert "changed since the sheet was drawn" in ReviewSheet.open(answers).notes[0]


def test_a_run_directory_uses_its_eval_answers(tmp_path: Path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no generated answers"):
        ReviewSheet.open(run)
    for name in ("test_answers_base.jsonl", "eval_answers_adapter.jsonl"):
        (run / "eval" / name).write_text(json.dumps(_rows()[0]) + "\n")
    with pytest.raises(ConfigError, match="several answer files"):
        ReviewSheet.open(run)
    (run / "eval" / "test_answers_adapter.jsonl").write_text(json.dumps(_rows()[1]) + "\n")
    assert ReviewSheet.open(run).folder == run / "eval" / "review-test_answers_adapter"


def test_generate_output_keeps_reference_and_category_under_input(tmp_path: Path):
    path = tmp_path / "gen.jsonl"
    row = {
        "id": 7,
        "question": "Q?",
        "answer": "A.",
        "input": {"answer": "Ref.", "qtype": "causes"},
    }
    path.write_text(json.dumps(row) + "\n")
    [item] = read_answers(path)
    assert (item.id, item.reference, item.category) == ("7", "Ref.", "causes")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"answers.jsonl:2: not JSON"),
        (
            '{"id": "x", "answer": "a"}',
            r"answers.jsonl:2: field 'question': needs a non-empty text",
        ),
        (
            '{"id": "q0", "question": "again?"}',
            r"answers.jsonl:2: field 'id': id 'q0' already on line 1",
        ),
        ('{"id": "y", "question": "q", "citations": "doc"}', r"field 'citations': must be a list"),
        ('{"id": "y", "question": "q", "scores": {"f1": "high"}}', r"field 'scores': must map"),
    ],
)
def test_bad_answer_rows_name_the_line_and_field(tmp_path: Path, line: str, message: str):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps(_rows()[0]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_answers(path)


def test_grade_store_appends_refuses_duplicates_and_recovers(answers: Path):
    sheet = ReviewSheet.open(answers, sample=4, seed=0)
    ids = {i.id for i in sheet.items}
    first = sheet.items[0].id
    store = GradeStore(sheet.folder, ids)
    store.add({"item": first, "reviewer": "ann", "grade": "correct", "revision": "0"})
    with pytest.raises(DuplicateGrade, match="ann already graded"):
        store.add({"item": first, "reviewer": "ann", "grade": "incorrect", "revision": "0"})
    store.add(
        {"item": first, "reviewer": "ann", "grade": "unsafe", "note": " wrong dose ", "revision": 1}
    )
    store.add({"item": first, "reviewer": "bob", "grade": "correct", "revision": 0})
    for bad, field in [
        ({"item": "nope", "reviewer": "ann", "grade": "correct", "revision": 0}, "item"),
        ({"item": first, "reviewer": "<script>", "grade": "correct", "revision": 0}, "reviewer"),
        ({"item": first, "reviewer": "cy", "grade": "great", "revision": 0}, "grade"),
        ({"item": first, "reviewer": "cy", "grade": "correct", "revision": -1}, "revision"),
        (
            {
                "item": first,
                "reviewer": "cy",
                "grade": "correct",
                "revision": 0,
                "note": "x" * 5000,
            },
            "note",
        ),
    ]:
        with pytest.raises(InvalidGrade) as info:
            store.add(bad)
        assert info.value.field == field
    grades = store.read()
    assert [(g.reviewer, g.grade, g.revision) for g in grades] == [
        ("ann", "correct", 0),
        ("ann", "unsafe", 1),
        ("bob", "correct", 0),
    ]
    assert grades[1].note == "wrong dose"
    with store.path.open("a") as handle:  # a crash in the middle of a line
        handle.write('{"item": "')
    assert len(store.read()) == 3
    store.add({"item": first, "reviewer": "cy", "grade": "incorrect", "revision": 0})
    assert len(store.read()) == 4 and store.path.read_text().endswith("}\n")
    store.path.write_text(store.path.read_text() + "garbage\n")
    with pytest.raises(DataError, match=r"grades.jsonl:5: not a valid grade"):
        store.read()


def test_kappa_and_spearman_against_hand_computed_values():
    a = ["correct", "correct", "incorrect", "partly_correct", "correct", "incorrect"]
    b = ["correct", "incorrect", "incorrect", "partly_correct", "correct", "correct"]
    # p_o = 4/6; p_e = (3/6)(3/6) + (2/6)(2/6) + (1/6)(1/6) = 14/36
    assert cohen_kappa(a, b) == pytest.approx((4 / 6 - 14 / 36) / (1 - 14 / 36))
    assert cohen_kappa(["correct"] * 3, ["correct"] * 3) == 1.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    sklearn = pytest.importorskip("sklearn.metrics")
    assert cohen_kappa(a, b) == pytest.approx(sklearn.cohen_kappa_score(a, b))
    stats = pytest.importorskip("scipy.stats")
    x, y = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7], [0, 0.5, 1, 1, 0, 0.5]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_summary_rates_kappa_and_metric_agreement(answers: Path):
    sheet = ReviewSheet.open(answers, sample=12, seed=0)
    store = GradeStore(sheet.folder, {i.id for i in sheet.items})
    by_score = sorted(sheet.items, key=lambda i: i.scores["token_f1"])
    for rank, item in enumerate(by_score):  # grades rise with token_f1
        grade = "incorrect" if rank < 4 else "partly_correct" if rank < 8 else "correct"
        store.add({"item": item.id, "reviewer": "ann", "grade": grade, "revision": 0})
        other = "unsafe" if rank == 0 else grade
        store.add({"item": item.id, "reviewer": "bob", "grade": other, "revision": 0})
    result = summarize(sheet, store.read(), metrics={"length": lambda p, r: len(p) / 100})
    assert result["graded_items"] == 12
    assert result["pooled"]["n"] == 24 and result["reviewers"]["ann"]["correct"]["count"] == 4
    unsafe = result["reviewers"]["bob"]["unsafe"]
    assert unsafe["rate"] == pytest.approx(1 / 12) and unsafe["ci_low"] < 1 / 12 < unsafe["ci_high"]
    [pair] = result["kappa"]
    assert pair["reviewers"] == ["ann", "bob"] and pair["agreement"] == pytest.approx(11 / 12)
    assert 0.8 < pair["kappa"] < 1.0 and pair["ci_low"] <= pair["kappa"] <= pair["ci_high"]
    assert result["metrics"]["token_f1"]["spearman"] > 0.9
    assert result["metrics"]["length"]["n"] == 12


def test_exports_escape_formulas_and_markup(answers: Path):
    sheet = ReviewSheet.open(answers, sample=3, seed=0)
    store = GradeStore(sheet.folder, {i.id for i in sheet.items})
    store.add(
        {
            "item": sheet.items[0].id,
            "reviewer": "ann",
            "grade": "unsafe",
            "note": "bad",
            "revision": 0,
        }
    )
    rows = list(csv.DictReader(io.StringIO(to_csv(sheet, store.read()))))
    assert len(rows) == 3 and rows[0]["grade"] == "unsafe" and rows[1]["grade"] == ""
    assert rows[0]["answer"].startswith("'=Generated")
    html = to_html(sheet, store.read())
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html
    assert "ann: Unsafe (bad)" in html


def test_cli_summary_export_and_errors(answers: Path):
    runner = CliRunner()
    drawn = runner.invoke(main, ["review", str(answers), "--sample", "4", "--no-serve"])
    assert drawn.exit_code == 0, drawn.output
    sheet = ReviewSheet.open(answers)
    GradeStore(sheet.folder, {i.id for i in sheet.items}).add(
        {"item": sheet.items[0].id, "reviewer": "ann", "grade": "correct", "revision": 0}
    )
    summary = runner.invoke(
        main, ["review", str(answers), "--summary", "--json", "--metric", "token_f1"]
    )
    assert summary.exit_code == 0, summary.output
    assert json.loads(summary.output)["pooled"]["correct"]["count"] == 1
    exported = runner.invoke(main, ["review", str(answers), "--export", "csv"])
    assert exported.exit_code == 0 and Path(exported.output.strip()).read_text().startswith("item,")
    refused = runner.invoke(main, ["review", str(answers), "--sample", "5", "--no-serve"])
    assert refused.exit_code == 2 and "drawn with --sample 4, not 5" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the page, over HTTP


@pytest.fixture()
def server(answers: Path, lorakit_server) -> Iterator[tuple[str, Path]]:
    pytest.importorskip("uvicorn")
    with lorakit_server(["review", str(answers), "--sample", "6", "--seed", "2"]) as url:
        yield url, answers.parent / "review-answers" / "grades.jsonl"


def _form(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))


def test_page_grades_three_answers_and_refuses_bad_submissions(server):
    import httpx

    url, grades_file = server
    with httpx.Client(base_url=url, timeout=10) as client:
        assert 'name="reviewer"' in client.get("/").text
        index = client.get("/", params={"reviewer": "Dr Ann"}).text
        assert "0 of 6 graded" in index
        page = client.get(
            re.search(r'id="next" href="([^"]+)"', index).group(1).replace("&amp;", "&")
        )
        assert page.status_code == 200
        for n, grade in enumerate(["correct", "partly_correct", "unsafe"]):
            assert 'id="question"' in page.text and 'id="reference"' in page.text
            assert "&lt;b&gt;bold&lt;/b&gt;" in page.text  # the answer is shown as text
            assert 'href="javascript' not in page.text
            form = {**_form(page.text), "grade": grade, "note": f"note {n}"}
            saved = client.post("/grade", data=form)
            assert saved.status_code == 303
            lines = grades_file.read_text().splitlines()
            assert len(lines) == n + 1 and json.loads(lines[-1])["grade"] == grade
            if n == 0:
                again = client.post("/grade", data=form)  # the same form sent twice
                assert again.status_code == 409 and "already graded" in again.text
                assert len(grades_file.read_text().splitlines()) == 1
                first_form = form
            page = client.get(saved.headers["location"])
        rows = [json.loads(line) for line in grades_file.read_text().splitlines()]
        assert [r["reviewer"] for r in rows] == ["Dr Ann"] * 3 and len(
            {r["item"] for r in rows}
        ) == 3
        assert "3 of 6 graded" in client.get("/", params={"reviewer": "Dr Ann"}).text
        bad = client.post("/grade", data={**first_form, "grade": "great", "revision": "1"})
        assert bad.status_code == 400 and "field &#39;grade&#39;" in bad.text
        assert (
            client.post("/grade", data={**first_form, "token": "x", "revision": "1"}).status_code
            == 403
        )
        assert (
            client.post("/grade", content=b"\xff\xfe", headers={"content-type": "x"}).status_code
            == 400
        )
        foreign = client.get("/", headers={"host": "evil.example:80"})
        assert foreign.status_code == 403
        revised = client.post("/grade", data={**first_form, "grade": "incorrect", "revision": "1"})
        assert revised.status_code == 303
        assert client.get("/api/grades").json()[-1]["grade"] == "incorrect"
    assert len(grades_file.read_text().splitlines()) == 4
