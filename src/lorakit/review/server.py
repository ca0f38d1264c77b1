"""The review page: a small FastAPI app on 127.0.0.1, plain HTML forms, no JavaScript.

``GET /`` asks the reviewer's name, then lists the sheet with their grades; ``GET /item/N``
shows one answer (question, reference, answer, citations, guard verdicts) and the grading form;
``POST /grade`` stores a grade (:class:`~lorakit.review.grades.GradeStore`) and goes on to the
reviewer's next ungraded answer. ``GET /api/grades`` returns the stored grades as JSON and
``GET /health`` answers ``ok``.

Every form carries a token drawn when the server starts, and requests must name this server in
their ``Host`` header, so another web page open in the same browser cannot post grades to it or
read it through a rebound DNS name. Refusals: 400 malformed, 403 foreign, 409 duplicate.

FastAPI is imported with this module (it resolves the handlers' annotations from the module).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)

from lorakit.review.grades import (
    GRADE_LABELS,
    GRADES,
    MAX_NOTE,
    DuplicateGrade,
    InvalidGrade,
    latest_grades,
)

if TYPE_CHECKING:
    from lorakit.review.grades import GradeStore
    from lorakit.review.sheet import ReviewSheet

__all__ = ["create_app", "serve_review"]

MAX_BODY = 64 * 1024


def create_app(
    sheet: ReviewSheet, store: GradeStore, *, port: int, token: str | None = None
) -> FastAPI:
    """The review app for ``sheet``, storing grades in ``store``.

    Args:
        sheet: the items to grade.
        store: where grades go.
        port: the port it is served on (``Host`` must be ``127.0.0.1:port`` or ``localhost:port``).
        token: the form token (random when ``None``).
    """
    from lorakit.review.export import templates

    env = templates()
    review = _Review(sheet, store, env, token or secrets.token_urlsafe(24))
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    app = FastAPI(title="lorakit review", docs_url=None, redoc_url=None, openapi_url=None)
    _only_these_hosts(app, hosts)
    _add_routes(app, review)
    return app


class _Review:
    """What the handlers share: the sheet, the grade store, the page templates and the token."""

    def __init__(self, sheet: ReviewSheet, store: GradeStore, env: Any, token: str) -> None:
        self.sheet = sheet
        self.store = store
        self.env = env
        self.token = token
        self.index = {item.id: n for n, item in enumerate(sheet.items)}

    def mine(self, reviewer: str) -> dict[str, Any]:
        """The latest grade of each item by ``reviewer``."""
        latest = latest_grades(self.store.read())
        return {item: g for (item, who), g in latest.items() if who == reviewer}

    def link(self, reviewer: str) -> Any:
        """A function from an item number to its page for ``reviewer``."""
        return lambda n: f"/item/{n}?reviewer={quote(reviewer)}"

    def next_ungraded(self, graded: dict[str, Any], after: int = -1) -> int | None:
        """The first item after ``after`` (wrapping around) not in ``graded``."""
        items = self.sheet.items
        order = [*range(after + 1, len(items)), *range(0, after + 1)]
        return next((n for n in order if items[n].id not in graded), None)

    def page(self, n: int, reviewer: str, *, error: str = "", status: int = 200) -> HTMLResponse:
        """Item ``n`` with the grading form."""
        graded = self.mine(reviewer)
        item = self.sheet.items[n]
        current = graded.get(item.id)
        html = self.env.get_template("item.html").render(
            item=item,
            index=n,
            total=len(self.sheet.items),
            reviewer=reviewer,
            current=current,
            revision=0 if current is None else current.revision + 1,
            token=self.token,
            grades=GRADES,
            labels=GRADE_LABELS,
            max_note=MAX_NOTE,
            error=error,
            link=self.link(reviewer),
        )
        return HTMLResponse(html, status_code=status)

    def home(self, reviewer: str) -> HTMLResponse:
        """The list of items with ``reviewer``'s grades (the name form when none)."""
        graded = self.mine(reviewer) if reviewer else {}
        html = self.env.get_template("index.html").render(
            source=str(self.sheet.source),
            reviewer=reviewer,
            items=self.sheet.items,
            graded=graded,
            done=len(graded),
            next_item=self.next_ungraded(graded),
            labels=GRADE_LABELS,
            link=self.link(reviewer),
        )
        return HTMLResponse(html)

    def grade(self, body: bytes) -> Response:
        """Store the grade posted in ``body``; go on to the reviewer's next ungraded item."""
        form = _read_form(body, self.token)
        if isinstance(form, Response):
            return form
        n = self.index.get(form.get("item", ""))
        reviewer = form.get("reviewer", "").strip()
        try:
            saved = self.store.add(form)
        except InvalidGrade as error:
            if n is None or not reviewer:
                return PlainTextResponse(error.format(), status_code=400)
            return self.page(n, reviewer, error=error.format(), status=400)
        except DuplicateGrade as error:
            return self.page(n if n is not None else 0, reviewer, error=error.format(), status=409)
        following = self.next_ungraded(self.mine(saved.reviewer), self.index[saved.item])
        target = (
            f"/?reviewer={quote(saved.reviewer)}"
            if following is None
            else self.link(saved.reviewer)(following)
        )
        return RedirectResponse(target, status_code=303)


def _read_form(body: bytes, token: str) -> dict[str, str] | Response:
    """The fields of a posted form, or the refusal: too large, malformed, a field sent twice,
    or a token not from this server."""
    if len(body) > MAX_BODY:
        return PlainTextResponse("the form is too large", status_code=413)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        return PlainTextResponse("malformed form data", status_code=400)
    form = {k: v[0] for k, v in fields.items() if len(v) == 1}
    if any(len(v) != 1 for v in fields.values()):
        return PlainTextResponse("a field was sent twice", status_code=400)
    if not secrets.compare_digest(form.get("token", ""), token):
        return PlainTextResponse("this form is not from this review server", status_code=403)
    return form


def _only_these_hosts(app: FastAPI, hosts: set[str]) -> None:
    """Refuse requests whose ``Host`` is not in ``hosts``; forbid framing and caching."""

    @app.middleware("http")
    async def only_this_host(request: Request, call_next: Any) -> Response:
        if request.headers.get("host", "") not in hosts:
            return PlainTextResponse(
                "this review server answers only on 127.0.0.1", status_code=403
            )
        response: Response = await call_next(request)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        return response


def _add_routes(app: FastAPI, review: _Review) -> None:
    """The pages, the grading form's target, the grades as JSON and the health check."""

    @app.get("/health")
    def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/", response_class=HTMLResponse)
    def home(reviewer: str = "") -> HTMLResponse:
        return review.home(reviewer.strip())

    @app.get("/item/{n}", response_model=None)
    def item_page(n: int, reviewer: str = "") -> Response:
        if not 0 <= n < len(review.sheet.items):
            return PlainTextResponse(f"no answer {n} on this sheet", status_code=404)
        if not reviewer.strip():
            return RedirectResponse("/", status_code=303)
        return review.page(n, reviewer.strip())

    @app.post("/grade", response_model=None)
    async def grade(request: Request) -> Response:
        return review.grade(await request.body())

    @app.get("/api/grades")
    def grades_json() -> JSONResponse:
        return JSONResponse([g.to_dict() for g in review.store.read()])


def serve_review(sheet: ReviewSheet, store: GradeStore, *, port: int) -> None:
    """Serve the review page on ``127.0.0.1:port`` until interrupted."""
    import uvicorn

    uvicorn.run(
        create_app(sheet, store, port=port), host="127.0.0.1", port=port, log_level="warning"
    )
