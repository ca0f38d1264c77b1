"""The plugin manager: built-ins, entry points, disabling, loud failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit import PluginError, hookimpl
from lorakit.cli import main
from lorakit.plugins import DEFAULT_PLUGINS, Registries, make_plugin_manager, plugin_summary

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "medqa" / "plugin"


def test_builtins_are_plugins_like_any_other():
    pm = make_plugin_manager(entry_points=False, disabled=())
    names = {name for name, _ in pm.list_name_plugin()}
    assert set(DEFAULT_PLUGINS) <= names
    registries = Registries.from_plugin_manager(pm)
    assert registries.sources.entry("jsonl").plugin == "lorakit.data.sources"
    assert registries.cleaners.entry("drop_empty").plugin == "lorakit.data.cleaners"
    assert registries.templates.entry("qa").plugin == "lorakit.data.templates"


def test_disable_by_name_from_environment(monkeypatch):
    monkeypatch.setenv("LORAKIT_DISABLE_PLUGINS", " lorakit.data.cleaners , other")
    registries = Registries.from_plugin_manager(make_plugin_manager(entry_points=False))
    assert "exact_dedup" not in registries.cleaners
    assert "scrub_phi" in registries.cleaners  # another plugin's cleaner stays
    assert "jsonl" in registries.sources


def test_duplicate_name_names_both_plugins():
    class Shadow:
        @hookimpl
        def lorakit_register_sources(self, register):
            register("jsonl", lambda location, *, fields: iter(()))

    pm = make_plugin_manager(entry_points=False, plugins=[Shadow()], disabled=())
    with pytest.raises(
        PluginError, match=r"'jsonl' is registered twice, by 'lorakit.data.sources' and by"
    ):
        Registries.from_plugin_manager(pm)


def test_misspelled_hook_fails_loudly_with_suggestion():
    class Typo:
        @hookimpl
        def lorakit_register_cleaner(self, register):  # missing "s"
            register("x", object)

    with pytest.raises(PluginError, match="unknown hook 'lorakit_register_cleaner'") as info:
        make_plugin_manager(entry_points=False, plugins=[Typo()], disabled=())
    assert "lorakit_register_cleaners" in str(info.value)


def test_unmarked_hook_function_fails_loudly():
    class Unmarked:
        def lorakit_register_metrics(self, register):
            register("x", object)

    with pytest.raises(PluginError, match="without marking it as a hook"):
        make_plugin_manager(entry_points=False, plugins=[Unmarked()], disabled=())


def test_unknown_name_suggests_the_closest():
    registries = Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, disabled=())
    )
    with pytest.raises(Exception, match="did you mean 'near_dedup'"):
        registries.cleaners.resolve("near_dedupe")


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """The sample plugin package, pip-installed into a folder (entry points and all)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(EXAMPLE_PLUGIN),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert list(target.glob("lorakit_medqa_example-*.dist-info"))
    return target


def test_example_plugin_found_through_its_entry_point(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    pm = make_plugin_manager(disabled=())
    summary = {plugin["name"]: plugin for plugin in plugin_summary(pm)}
    assert summary["medqa_example"]["package"] == "lorakit-medqa-example"
    assert summary["medqa_example"]["version"] == "0.1.0"
    assert summary["medqa_example"]["hooks"] == [
        "lorakit_register_cleaners",
        "lorakit_register_metrics",
    ]
    registries = Registries.from_plugin_manager(pm)
    assert registries.cleaners.entry("scrub_contacts").plugin == "medqa_example"
    metric = registries.metrics.resolve("keyword_recall")
    assert metric("Diabetes raises blood sugar", "diabetes raises glucose") == pytest.approx(2 / 3)


def test_example_cleaner_runs_in_the_chain(installed_example, monkeypatch):
    from lorakit.data.cleaners import CleanerSpec, clean_rows
    from lorakit.data.rows import QARow

    monkeypatch.syspath_prepend(str(installed_example))
    registries = Registries.from_plugin_manager(make_plugin_manager(disabled=()))
    rows = [
        QARow(question="Who can help?", answer="Call 1-800-422-6237 or write to info@example.org."),
        QARow(question="What is it?", answer="A condition."),
    ]
    kept, report = clean_rows(rows, [CleanerSpec("scrub_contacts")], registries.cleaners)
    assert kept[0].answer == "Call [phone] or write to [email]."
    assert kept[1] == rows[1]
    assert report.steps[0].changed == 1


def test_example_plugin_can_be_disabled(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    monkeypatch.setenv("LORAKIT_DISABLE_PLUGINS", "medqa_example")
    registries = Registries.from_plugin_manager(make_plugin_manager())
    assert "scrub_contacts" not in registries.cleaners


def test_cli_plugins_lists_plugins_and_what_they_register(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {p["name"] for p in data["plugins"]} >= {*DEFAULT_PLUGINS, "medqa_example"}
    assert data["registered"]["metrics"]["keyword_recall"] == "medqa_example"
    assert data["registered"]["metrics"]["mcq_accuracy"] == "lorakit.evaluate.plugin"
    assert data["registered"]["metrics"]["token_f1"] == "lorakit.evaluate.text_plugin"
    table = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["plugins"])
    assert table.exit_code == 0
    assert "medqa_example" in table.output and "cleaner scrub_contacts" in table.output


def test_broken_entry_point_is_a_named_error(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lorakit]\nbroken = lorakit_no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        PluginError, match=r"plugin 'broken' .*broken-plugin.* failed to import"
    ) as info:
        make_plugin_manager(disabled=())
    assert "LORAKIT_DISABLE_PLUGINS=broken" in str(info.value)
    assert make_plugin_manager(disabled=("broken",)) is not None
