"""LoRA search on Optuna: every trial an ordinary run (``lorakit search``, :func:`run_search`).

Needs the ``search`` extra (``pip install 'lorakit[search]'``)::

    from lorakit.presets import medqa_phi3
    from lorakit.search import SearchParam, SearchSpec, run_search

    space = [SearchParam.parse(text, medqa_phi3) for text in ("adapter.rank=8,16,32",)]
    result = run_search(medqa_phi3, SearchSpec(space=space), "searches/rank")
    print(result.to_markdown())
"""

from __future__ import annotations

from lorakit.search.results import SearchResult, TrialRow
from lorakit.search.spec import SearchParam, SearchSpec, trial_dir_name
from lorakit.search.study import TrialPruned, default_storage, run_search

__all__ = [
    "SearchParam",
    "SearchResult",
    "SearchSpec",
    "TrialPruned",
    "TrialRow",
    "default_storage",
    "run_search",
    "trial_dir_name",
]
