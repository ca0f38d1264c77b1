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


def test_hook_lorakit_register_retrievers(tmp_path):
    import numpy as np

    from lorakit.retrieval import build_index, load_index
    from lorakit.retrieval.embedders import HashingEmbedder

    calls = []

    class ReversedStore:
        """A store that remembers the vectors itself and ranks by negated cosine."""

        def write(self, folder, vectors, passage_ids, options):
            calls.append(("write", len(passage_ids), dict(options)))
            np.save(folder / "mine.npy", -np.asarray(vectors))
            return {"file": "mine.npy"}

        def open(self, folder, settings):
            vectors = np.load(folder / settings["file"])
            calls.append(("open", settings["file"]))

            class Opened:
                def search(self, vector, k):
                    scores = vectors @ vector
                    return [(int(i), float(scores[i])) for i in np.argsort(-scores)[:k]]

            return Opened()

    class Plugin:
        @hookimpl
        def lorakit_register_retrievers(self, register):
            register("reversed", ReversedStore())

    registries = _registries(Plugin())
    assert registries.retrievers.entry("embedded").plugin == "lorakit.retrieval.stores"
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        '{"id": "a", "text": "Gout affects the big toe."}\n'
        '{"id": "b", "text": "Asthma narrows the airways."}\n'
    )
    out = tmp_path / "index"
    build_index(
        [f"jsonl:{corpus}"],
        out,
        embedder=HashingEmbedder(),
        store="reversed",
        store_options={"colour": "red"},
        registries=registries,
    )
    index = load_index(out, registries=registries)
    assert index.card.store == "reversed" and index.card.store_settings == {"file": "mine.npy"}
    hits = index.search("gout big toe", k=2, mode="dense")
    assert hits[0].passage.doc_id == "b"  # the plugin's store decided the dense order
    assert calls == [("write", 2, {"colour": "red"}), ("open", "mine.npy")]


def test_hook_lorakit_register_benchmarks(tmp_path, tiny_phi3):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit import PluginError
    from lorakit.evaluate.benchmarks import Benchmark, parse_bench, run_benchmark

    class Plugin:
        @hookimpl
        def lorakit_register_benchmarks(self, register):
            register("hormones", Benchmark(name="hormones", scheme="jsonl", summary="two items"))

    data = tmp_path / "hormones.jsonl"
    rows = [
        {"question": "Which hormone lowers blood sugar?", "options": ["Glucagon", "Insulin"]},
        {"question": "Which gland makes insulin?", "options": ["Pancreas", "Liver"]},
    ]
    data.write_text(
        "".join(
            json.dumps({**r, "answer_letter": k}) + "\n" for r, k in zip(rows, "BA", strict=True)
        ),
        encoding="utf-8",
    )
    registries = _registries(Plugin())
    bench, location = parse_bench(f"hormones:{data}", registries)
    assert bench.scheme == "jsonl" and location == str(data)
    assert registries.benchmarks.entry("hormones").plugin != "lorakit.evaluate.benchmarks"
    assert registries.benchmarks.entry("medqa").plugin == "lorakit.evaluate.benchmarks"
    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_phi3)
    result = run_benchmark(model, tokenizer, f"hormones:{data}", registries=registries)
    assert result.bench == "hormones" and result.n == 2 and result.choices == "letters"

    class Duplicate:
        @hookimpl
        def lorakit_register_benchmarks(self, register):
            register("medqa", Benchmark(name="medqa", scheme="jsonl"))

    with pytest.raises(PluginError, match="benchmark 'medqa' is registered twice"):
        _registries(Duplicate())


def test_hook_lorakit_register_trackers(tmp_path):
    import json

    from lorakit.presets import medqa_phi3_tiny

    calls: list[tuple[str, object]] = []

    class MemoryTracker:
        def log_params(self, params):
            calls.append(("params", dict(params)))

        def log_metrics(self, metrics, step):
            calls.append(("metrics", (step, dict(metrics))))

        def log_artifacts(self, run_dir, files):
            calls.append(("artifacts", sorted(p.name for p in files)))

        def finish(self, status):
            calls.append(("finish", status))

    class MemoryFactory:
        requires = ("json",)
        install = "nothing to install"

        def create(self, recipe, run_dir):
            calls.append(("create", run_dir))
            return MemoryTracker()

    class Plugin:
        @hookimpl
        def lorakit_register_trackers(self, register):
            register("memory", MemoryFactory())

    pm = make_plugin_manager(entry_points=False, plugins=[Plugin()], disabled=())
    recipe = medqa_phi3_tiny.with_overrides(
        {
            "training.max_steps": 2,
            "training.eval_steps": 1,
            "training.save_steps": 1,
            "data.limit": 40,
            "training.report_to": "memory",
        }
    )
    result = recipe.run(tmp_path / "run", plugin_manager=pm, show_progress=False)
    assert calls[0] == ("create", tmp_path / "run")
    assert calls[1][1]["training.report_to"] == "memory"
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    logged = [value for name, value in calls if name == "metrics"]
    assert [step for step, _ in logged[: len(lines)]] == [json.loads(x)["step"] for x in lines]
    assert logged[-1][1]["final_eval_loss"] == result.report.eval.loss
    assert calls[-2:] == [
        ("artifacts", ["adapter", "report.json", "report.md"]),
        ("finish", "complete"),
    ]
    assert _registries(Plugin()).trackers.entry("mlflow").plugin == "lorakit.tracking"


def test_hook_lorakit_register_guards():
    from lorakit.protocols import Verdict
    from lorakit.safety import load_policy

    class NoShouting:
        name = "no_shouting"
        stage = "input"

        def check(self, text, *, question=None):
            if text.isupper():
                return Verdict(guard=self.name, decision="flag", reason="shouting", message="Calm.")
            return Verdict(guard=self.name, decision="allow")

    class Plugin:
        @hookimpl
        def lorakit_register_guards(self, register):
            register("no_shouting", NoShouting)

    registries = _registries(Plugin())
    guards = load_policy("rules+no_shouting", registries=registries)
    assert guards.decide(guards.check_input("WHAT IS A FEVER")).message == "Calm."
    assert guards.decide(guards.check_input("What is a fever?")).decision == "allow"
    assert registries.guards.entry("emergency").plugin == "lorakit.safety.plugin"
    with pytest.raises(Exception, match="did you mean 'no_shouting'"):
        load_policy("no_shoutin", registries=registries)


def test_hook_lorakit_register_vocabularies():
    from lorakit.evaluate.concepts import DictVocabulary, MedicalConcepts

    class Plugin:
        @hookimpl
        def lorakit_register_vocabularies(self, register):
            register("tiny_umls", DictVocabulary("tiny_umls", {"C1": ("Fever", "pyrexia")}))

    registries = _registries(Plugin())
    assert registries.vocabularies.entry("hpo").plugin == "lorakit.evaluate.concepts_plugin"
    metric = MedicalConcepts(["tiny_umls"], registries=registries)
    assert metric("Pyrexia.", "A fever.") == 1.0
    with pytest.raises(Exception, match="did you mean 'tiny_umls'"):
        _ = MedicalConcepts(["tiny_uml"], registries=registries).matcher


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


class Recorder:
    """A plugin implementing every run hook, recording its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    @hookimpl
    def lorakit_load_model(self, spec):
        from lorakit.model import load_hf_model

        self.calls.append(("load_model", {"spec": spec}))
        loaded = load_hf_model(spec)
        loaded.notes.append("loaded by the recorder plugin")
        return loaded

    @hookimpl
    def lorakit_trainer_callbacks(self, recipe):
        from transformers import TrainerCallback

        calls = self.calls

        class Steps(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                calls.append(("step", {"step": state.global_step}))

        self.calls.append(("trainer_callbacks", {"recipe": recipe}))
        return [Steps()]

    @hookimpl
    def lorakit_run_start(self, recipe, run_dir):
        self.calls.append(
            ("run_start", {"recipe": recipe, "run_dir": run_dir, "exists": run_dir.is_dir()})
        )

    @hookimpl
    def lorakit_log_metrics(self, metrics, step):
        self.calls.append(("log_metrics", {"metrics": metrics, "step": step}))

    @hookimpl
    def lorakit_run_end(self, result):
        self.calls.append(("run_end", {"result": result}))


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    from lorakit.presets import medqa_phi3_tiny

    recipe = medqa_phi3_tiny.with_overrides(
        {"training.max_steps": 10, "training.eval_steps": 5, "training.save_steps": 5}
    )
    recorder = Recorder()
    pm = make_plugin_manager(entry_points=False, plugins=[recorder], disabled=())
    result = recipe.run(
        tmp_path_factory.mktemp("hooks") / "run", plugin_manager=pm, show_progress=False
    )
    return recipe, recorder.calls, result


def _names(calls):
    return [name for name, _ in calls]


def test_hook_lorakit_load_model(recorded_run):
    recipe, calls, result = recorded_run
    assert _names(calls).count("load_model") == 1
    assert dict(calls)["load_model"]["spec"] == recipe.model
    assert "loaded by the recorder plugin" in result.report.notes


def test_hook_lorakit_load_model_none_passes_to_the_builtin(tiny_phi3):
    from lorakit.model import ModelSpec, QuantizedModelBuilder, QuantSpec

    class Pass:
        @hookimpl
        def lorakit_load_model(self, spec):
            return None

    pm = make_plugin_manager(entry_points=False, plugins=[Pass()], disabled=())
    loaded = QuantizedModelBuilder(
        ModelSpec(name=str(tiny_phi3), quant=QuantSpec(method="none")), plugin_manager=pm
    ).build()
    assert type(loaded.model).__name__ == "Phi3ForCausalLM"


def test_hook_lorakit_trainer_callbacks(recorded_run):
    _, calls, _ = recorded_run
    steps = [c["step"] for name, c in calls if name == "step"]
    assert steps == list(range(1, 11))


def test_hook_lorakit_run_start(recorded_run):
    recipe, calls, result = recorded_run
    assert _names(calls)[0] == "run_start"
    first = calls[0][1]
    assert first["recipe"] == recipe and first["run_dir"] == result.run_dir and first["exists"]


def test_hook_lorakit_log_metrics(recorded_run):
    _, calls, result = recorded_run
    logged = [c for name, c in calls if name == "log_metrics"]
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == len(lines)
    assert [c["step"] for c in logged if "eval_loss" in c["metrics"]] == [5, 10]


def test_hook_lorakit_run_end(recorded_run):
    _, calls, result = recorded_run
    assert _names(calls)[-1] == "run_end"
    assert calls[-1][1]["result"] is result
    assert (result.run_dir / "report.json").is_file()


def test_hook_lorakit_run_failed(tmp_path):
    from lorakit.presets import medqa_phi3_tiny

    class Fail:
        def __init__(self):
            self.calls = []

        @hookimpl
        def lorakit_load_model(self, spec):
            raise RuntimeError("no model today")

        @hookimpl
        def lorakit_run_failed(self, recipe, run_dir, error):
            self.calls.append((recipe, run_dir, error))

        @hookimpl
        def lorakit_run_end(self, result):
            self.calls.append(("end", result))

    plugin = Fail()
    pm = make_plugin_manager(entry_points=False, plugins=[plugin], disabled=())
    with pytest.raises(RuntimeError, match="no model today"):
        medqa_phi3_tiny.run(tmp_path / "run", plugin_manager=pm, show_progress=False)
    [(recipe, run_dir, error)] = plugin.calls
    assert recipe == medqa_phi3_tiny and run_dir == tmp_path / "run"
    assert isinstance(error, RuntimeError)
    assert not (run_dir / "report.json").exists()


def test_bad_settings_fail_before_the_model_loads(tmp_path, shared_data):
    from lorakit import ConfigError, DataError
    from lorakit.presets import medqa_phi3_tiny

    class NoModel:
        @hookimpl
        def lorakit_load_model(self, spec):
            raise AssertionError("the model was loaded before the settings were checked")

    pm = make_plugin_manager(entry_points=False, plugins=[NoModel()], disabled=())
    bad = [
        ({"data.template_options": "sytem=x"}, ConfigError, "did you mean 'system'"),
        (
            {"evaluation.benchmarks": f"medqa:{tmp_path / 'missing.jsonl'}"},
            DataError,
            "missing.jsonl",
        ),
        ({"evaluation.metrics": "rouge"}, ConfigError, "did you mean 'rouge_l'"),
    ]
    for n, (overrides, error, message) in enumerate(bad):
        with pytest.raises(error, match=message):
            medqa_phi3_tiny.with_overrides(overrides).run(
                tmp_path / f"r{n}", plugin_manager=pm, show_progress=False
            )
