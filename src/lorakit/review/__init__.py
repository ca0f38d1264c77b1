"""Clinician review of generated answers: a sampled sheet, a local grading page, exports, summaries.

See the guide "Reviewing answers". Nothing here imports torch; the page needs the extra
``lorakit[review]`` (FastAPI, uvicorn, Jinja2).
"""

from __future__ import annotations

from lorakit.review.grades import GRADES, DuplicateGrade, Grade, GradeStore, InvalidGrade
from lorakit.review.sheet import ReviewItem, ReviewSheet, read_answers, stratified_sample

__all__ = [
    "GRADES",
    "DuplicateGrade",
    "Grade",
    "GradeStore",
    "InvalidGrade",
    "ReviewItem",
    "ReviewSheet",
    "read_answers",
    "stratified_sample",
]
