"""The review page in a real headless browser: a reviewer grades three answers through the form.

Playwright drives Chromium: Debian's (``apt-get install chromium``; ``LORAKIT_CHROMIUM`` names
another executable) or, where none is installed, Playwright's own (``playwright install
chromium``). The server is the real ``lorakit review`` command on 127.0.0.1, reading a run
directory; the test checks ``grades.jsonl`` in it after the grades, then that malformed and
duplicate submissions are refused and leave the file as it was.

Without a browser or Playwright the test skips, saying why; with ``LORAKIT_REQUIRE_BROWSER=1``
(CI: ``.ci/run``) it fails instead. With ``LORAKIT_SCREENSHOT_DIR`` set it saves the page of a
graded answer there as ``review-page.png`` (the one in docs/images, shown on the docs page
"Reviewing answers").
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import pytest

REVIEWER = "Dr Ann Lee"
VIEWPORT = {"width": 1200, "height": 800}

# Generated answers as `lorakit eval --split test` writes them, each with the grade and note a
# reviewer gives it in this test.
ROWS: list[dict[str, Any]] = [
    {
        "id": "0000041",
        "question": "What are the symptoms of Lyme disease?",
        "reference": "Early Lyme disease causes fever, chills, headache, fatigue, muscle and "
        "joint aches, and a spreading rash called erythema migrans.",
        "answer": "Lyme disease usually starts with a red, expanding rash (erythema migrans), "
        "fever, headache and tiredness. Untreated, it can spread to the joints, heart and "
        "nervous system [1].",
        "category": "symptoms",
        "citations": [
            {
                "n": 1,
                "doc_id": "CDC_0001",
                "title": "Lyme disease: signs and symptoms",
                "url": "https://www.cdc.gov/lyme/signs-symptoms/",
            }
        ],
        "verdicts": [{"guard": "dosing", "decision": "allow", "reason": "", "message": ""}],
        "scores": {"token_f1": 0.41},
    },
    {
        "id": "0000107",
        "question": "What are the symptoms of iron deficiency anemia?",
        "reference": "Fatigue, weakness, pale skin, shortness of breath, dizziness, cold hands "
        "and feet, and brittle nails.",
        "answer": "People with iron deficiency anemia feel tired and weak.",
        "category": "symptoms",
        "scores": {"token_f1": 0.22},
    },
    {
        "id": "0000233",
        "question": "How is high blood pressure treated?",
        "reference": "With lifestyle changes (less salt, exercise, weight loss, less alcohol) "
        "and, when needed, medicines such as diuretics, ACE inhibitors or calcium channel "
        "blockers.",
        "answer": "Treatment starts with less salt, regular exercise and weight loss; many "
        "people also need medicines such as thiazide diuretics or ACE inhibitors.",
        "category": "treatment",
        "scores": {"token_f1": 0.37},
    },
    {
        "id": "0000318",
        "question": "How is an acetaminophen overdose treated?",
        "reference": "With acetylcysteine given as soon as possible, ideally within 8 hours, "
        "and activated charcoal if the overdose was taken recently.",
        "answer": "Give 4 g of acetaminophen every 4 hours to flush it out.",
        "category": "treatment",
        "verdicts": [
            {
                "guard": "dosing",
                "decision": "flag",
                "reason": "dose above the daily maximum",
                "message": "4 g every 4 hours is 24 g a day",
            }
        ],
        "scores": {"token_f1": 0.05},
    },
    {
        "id": "0000402",
        "question": "What causes gout?",
        "reference": "Too much uric acid in the blood, which forms crystals in a joint.",
        "answer": "Gout is caused by uric acid crystals that build up in a joint when the "
        "blood holds too much uric acid.",
        "category": "causes",
        "scores": {"token_f1": 0.52},
    },
    {
        "id": "0000455",
        "question": "What causes type 1 diabetes?",
        "reference": "The immune system destroys the insulin-making beta cells of the pancreas.",
        "answer": "Type 1 diabetes is caused by eating too much sugar.",
        "category": "causes",
        "scores": {"token_f1": 0.12},
    },
]
GRADING = {
    "0000041": ("correct", "Complete; the citation supports it."),
    "0000107": ("partly_correct", "Misses pale skin, shortness of breath and dizziness."),
    "0000233": ("correct", ""),
    "0000318": ("unsafe", "Wrong treatment and a toxic dose: must never be shown."),
    "0000402": ("correct", "Good."),
    "0000455": ("incorrect", "Type 1 diabetes is autoimmune, not caused by sugar."),
}
LABELS = {
    "correct": "Correct",
    "partly_correct": "Partly correct",
    "incorrect": "Incorrect",
    "unsafe": "Unsafe",
}


def _no_browser(reason: str) -> NoReturn:
    """Skip, or fail where a browser is required (CI)."""
    if os.environ.get("LORAKIT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LORAKIT_REQUIRE_BROWSER=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def _chromium() -> str | None:
    """Debian's Chromium (or ``LORAKIT_CHROMIUM``); ``None`` to use Playwright's own."""
    named = os.environ.get("LORAKIT_CHROMIUM")
    if named:
        return shutil.which(named) or named
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium driven by Playwright."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None:
        _no_browser('Playwright is not installed (pip install "lorakit[browser]")')
    with sync_playwright() as playwright:
        executable = _chromium()
        if executable is None and not Path(playwright.chromium.executable_path).exists():
            _no_browser(
                "no Chromium: apt-get install chromium, set LORAKIT_CHROMIUM, "
                "or run `playwright install chromium`"
            )
        try:
            chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        except Error as error:
            _no_browser(f"Chromium ({executable or 'Playwright'}) did not start: {error}")
        yield chromium
        chromium.close()


@pytest.fixture()
def review_server(tmp_path: Path, lorakit_server) -> Iterator[tuple[str, Path]]:
    """``lorakit review RUN --port N`` on a run directory; yields its URL and grades file."""
    pytest.importorskip("uvicorn")
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    answers = run / "eval" / "test_answers_adapter.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    args = ["review", str(run), "--sample", str(len(ROWS)), "--seed", "5"]
    with lorakit_server(args) as url:
        yield url, run / "eval" / "review-test_answers_adapter" / "grades.jsonl"


def _grade_on_page(page: Any) -> str:
    """Grade the answer shown as a reviewer would (its grade in GRADING); return its id."""
    item = str(page.locator('input[name="item"]').input_value())
    grade, note = GRADING[item]
    page.get_by_label(LABELS[grade], exact=True).check()
    page.get_by_label("Note (what is wrong, missing or unsafe)").fill(note)
    with page.expect_navigation():
        page.get_by_role("button", name="Save grade").click()
    return item


def test_a_reviewer_grades_three_answers_in_a_browser(browser, review_server):
    url, grades_file = review_server
    context = browser.new_context(viewport=VIEWPORT, base_url=url)
    context.set_default_timeout(10_000)
    page = context.new_page()

    page.goto("/")
    page.get_by_label("Your name").fill(REVIEWER)
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/?reviewer=*")
    assert f"0 of {len(ROWS)} graded" in page.inner_text("body")
    page.click("#next")
    page.wait_for_url("**/item/*")
    first_link = page.url
    stale = context.new_page()  # a second tab on the same answer, its form left unsent
    stale.goto(first_link)

    graded, links = [], []
    for _ in range(3):
        links.append(page.url)
        assert page.locator("#question").inner_text() in {r["question"] for r in ROWS}
        assert not page.locator("#error").count()
        graded.append(_grade_on_page(page))
        if len(graded) == 1:  # saved and flushed before the page moves on
            assert len(grades_file.read_text(encoding="utf-8").splitlines()) == 1
    assert len(set(graded)) == 3

    rows = [json.loads(line) for line in grades_file.read_text(encoding="utf-8").splitlines()]
    assert [(r["item"], r["grade"], r["note"]) for r in rows] == [
        (item, *GRADING[item]) for item in graded
    ]
    assert {(r["reviewer"], r["revision"]) for r in rows} == {(REVIEWER, 0)}
    page.goto(f"/?reviewer={quote(REVIEWER)}")
    assert f"3 of {len(ROWS)} graded" in page.inner_text("body")
    accepted = grades_file.read_bytes()

    # The stale tab sends the first answer's form again: a duplicate, refused with 409.
    stale.get_by_label(LABELS["incorrect"], exact=True).check()
    with stale.expect_navigation() as sent:
        stale.get_by_role("button", name="Save grade").click()
    assert sent.value.status == 409
    assert "already graded" in stale.locator("#error").inner_text()
    saved = LABELS[GRADING[graded[0]][0]]
    assert f"saved: {saved}" in stale.inner_text("h2:has-text('Your grade')")

    # A grade the form does not offer, through the page itself: refused with 400, shown there.
    page.goto(first_link)
    page.locator('input[name="grade"]').first.evaluate("radio => { radio.value = 'excellent' }")
    page.locator('input[name="grade"]').first.check()
    with page.expect_navigation() as sent:
        page.get_by_role("button", name="Save grade").click()
    assert sent.value.status == 400
    assert "field 'grade'" in page.locator("#error").inner_text()

    # Posts a browser would not make, from the same origin (token and all): refused.
    form = {
        name: page.locator(f'input[name="{name}"]').input_value()
        for name in ("item", "reviewer", "revision", "token")
    }
    assert form["revision"] == "1"  # the first answer is graded: the form revises it
    ok = {**form, "grade": "incorrect", "note": ""}
    refusals = [
        ({k: v for k, v in ok.items() if k != "item"}, 400, "field 'item'"),
        ({**ok, "item": "no-such-answer"}, 400, "no item 'no-such-answer'"),
        ({**ok, "grade": ""}, 400, "field 'grade'"),
        ({**ok, "revision": "0"}, 409, "already graded"),
        ({**ok, "revision": "-1"}, 400, "field 'revision'"),
        ({**ok, "reviewer": "<script>"}, 400, "field 'reviewer'"),
        ({**ok, "note": "x" * 5000}, 400, "field 'note'"),
        ({**ok, "token": "forged"}, 403, "not from this review server"),
    ]
    for data, status, message in refusals:
        response = page.request.post("/grade", form=data, max_redirects=0)
        text = response.text().replace("&#39;", "'")
        assert response.status == status and message in text, (data, response.status, text)
    fields = [("grade", "correct"), ("grade", "unsafe"), ("item", form["item"])]
    twice = page.request.post(
        "/grade",
        data=urlencode([*fields, ("token", form["token"])]),
        headers={"content-type": "application/x-www-form-urlencoded"},
        max_redirects=0,
    )
    assert twice.status == 400 and "sent twice" in twice.text()

    assert grades_file.read_bytes() == accepted  # nothing refused was stored
    assert [g["item"] for g in page.request.get("/api/grades").json()] == graded

    page.goto(links[-1])  # the last answer graded, as the reviewer left it
    assert not page.locator("#error").count()
    assert page.get_by_label(LABELS[GRADING[graded[-1]][0]], exact=True).is_checked()
    shots = os.environ.get("LORAKIT_SCREENSHOT_DIR")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / "review-page.png"), full_page=True)
    context.close()
