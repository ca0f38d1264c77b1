"""Every hook: its own behaviour test, and its exact signature in docs/plugins/hooks.md."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from lorakit import hookimpl, hookspecs
from lorakit.data.rows import QARow
from lorakit.plugins import Registries, hook_names, make_plugin_manager

HOOKS_DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins" / "hooks.md"


def _registries(plugin: object) -> Registries:
    return Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, plugins=[plugin], disabled=())
    )


def test_hook_lorakit_register_sources(tmp_path):
    from lorakit.data.sources import read_source

    class Plugin:
        @hookimpl
        def lorakit_register_sources(self, register):
            def read_lines(location, *, fields):
                for n, line in enumerate(Path(location).read_text().splitlines(), 1):
                    question, answer = line.split("|")
                    yield QARow(question=question, answer=answer, origin=f"{location}:{n}")

            register("pipes", read_lines)

    data = tmp_path / "qa.txt"
    data.write_text("What is a fever?|A raised body temperature.\n")
    registries = _registries(Plugin())
    rows = list(read_source(f"pipes:{data}", registries=registries))
    assert rows[0].answer == "A raised body temperature."
    assert registries.sources.entry("pipes").plugin != "lorakit.data.sources"


def test_hook_lorakit_register_cleaners():
    from lorakit.data.cleaners import CleanerSpec, clean_rows
    from lorakit.protocols import Drop

    class Plugin:
        @hookimpl
        def lorakit_register_cleaners(self, register):
            def no_urls():
                return lambda row: Drop("has url") if "http" in row.answer else row

            register("no_urls", no_urls)

    rows = [QARow(question="q1", answer="see http://x"), QARow(question="q2", answer="fine")]
    kept, report = clean_rows(rows, [CleanerSpec("no_urls")], _registries(Plugin()).cleaners)
    assert [r.question for r in kept] == ["q2"]
    assert report.steps[0].dropped == {"has url": 1}


def test_hook_lorakit_register_templates():
    class Shouting:
        def prompt(self, row):
            return [{"role": "user", "content": row.question.upper()}]

        def answer(self, row):
            return row.answer

    class Plugin:
        @hookimpl
        def lorakit_register_templates(self, register):
            register("shout", Shouting)

    template = _registries(Plugin()).templates.resolve("shout")()
    assert template.prompt(QARow(question="why?", answer="x"))[0]["content"] == "WHY?"


def test_hook_lorakit_register_metrics():
    from lorakit.protocols import mean_metric

    class Plugin:
        @hookimpl
        def lorakit_register_metrics(self, register):
            register("exact", lambda p, r: float(p.strip() == r.strip()))

    metric = _registries(Plugin()).metrics.resolve("exact")
    assert mean_metric(metric, ["a", "b "], ["a", "c"]) == 0.5


def test_hook_lorakit_register_presets():
    preset = {"adapter.rank": 8}

    class Plugin:
        @hookimpl
        def lorakit_register_presets(self, register):
            register("my_preset", preset)

    registries = _registries(Plugin())
    assert registries.presets.resolve("my_preset") is preset
    with pytest.raises(Exception, match="did you mean 'my_preset'"):
        registries.presets.resolve("my_prest")


def test_every_hook_has_its_own_test():
    module = sys.modules[__name__]
    missing = [name for name in hook_names() if not hasattr(module, f"test_hook_{name}")]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


@pytest.mark.parametrize("name", hook_names())
def test_hook_documented_with_exact_signature(name):
    spec = getattr(hookspecs, name)
    signature = f"{name}{inspect.signature(spec)}".replace("'", "")
    text = HOOKS_DOC.read_text(encoding="utf-8")
    assert signature in text, f"{HOOKS_DOC.name} lacks the signature `{signature}`"
