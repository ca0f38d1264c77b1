"""The "fits a 12 GB card" claim, tested as a user lives it.

Each case runs in a fresh process that caps PyTorch's CUDA allocator at what a consumer card
leaves after its CUDA context (``torch.cuda.set_per_process_memory_fraction``, which is per
process): 11.0 GiB for a 12 GB card (12.0 GiB less about 0.5 GiB of context and 0.5 GiB for a
display or other programs), 7.5 GiB for an 8 GB card (8.0 GiB less the context alone). Past
the cap the allocator frees its cache and retries, then raises ``torch.OutOfMemoryError``, as
it does when a real card is full. Each case also records what its process held on the device
outside the allocator at the end (``outside_allocator_gib_end``: the context with its loaded
kernels), the figure a real card must hold on top of the capped one. Each process loads a
full-size Phi-3-mini architecture with random weights (bf16 on disk, NF4 as the preset
loads it) and Phi-3's real tokenizer, and runs the ``medqa_phi3`` preset on real MedQuAD
rows for 8 optimizer steps: an eval and a checkpoint every 4 steps, then the best
checkpoint loaded and verified, the test split scored and the adapter saved.

* 12 GB cases (the preset as it ships, the preset without Liger kernels as a plain
  ``pip install lorakit`` runs it, and the old padded 4 x 4 batch): they pass only when the
  run completes with ``best.verified`` and nothing ran out of memory but the settings the
  memory plan (``training.max_memory_gb=auto``, the preset's default) measured and rejected.
* 8 GB cases: the preset as it ships documents the outcome (xfail with the measured reason
  when it runs out of memory); with ``training.max_memory_gb`` set to the card's 7.5 GiB,
  the run must complete or stop with lorakit's clean ``ConfigError``, never a CUDA OOM.

Run on a CUDA machine: ``pytest -m gpu tests/gpu``. Needs bitsandbytes, Phi-3's tokenizer
(``LORAKIT_PHI3_TOKENIZER``, default ``../shared/data/phi3-tokenizer``) and a MedQuAD folder
(``LORAKIT_MEDQUAD``, default ``../shared/data/medquad``; any folder of its subsets; the
recorded runs used ``1_CancerGov_QA`` and ``3_GHR_QA``). Set ``LORAKIT_GPU_RESULTS`` to a
folder to get every case's figures in ``medqa_phi3_memory.json`` there.

The cap binds PyTorch's allocator only: the CUDA context and bitsandbytes' paged optimizer
state (CUDA managed memory; under 50 MB for this adapter's 25 M parameters) are outside it.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GIB = 2**30
ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT / ".." / "shared" / "data"
RESULTS_FILE = "medqa_phi3_memory.json"
CASE_TIMEOUT_S = 300  # one case takes about a minute and a half on an H200
STEPS = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# What each card leaves to PyTorch after its CUDA context (GiB).
CARD_12GB = 11.0
CARD_8GB = 7.5

# What each case must do. FIT: complete with nothing out of memory. DOCUMENT: complete, or
# run out of memory (xfail, with the measured reason in the report). BUDGET: complete, or stop
# with lorakit's clean ConfigError on training.max_memory_gb; never a CUDA OOM (the budget's
# planner may run out of memory while it measures its trial steps: that is how it measures).
FIT, DOCUMENT, BUDGET = "fit", "document", "budget"

# (id, cap in GiB, overrides on top of the preset, policy), in order of importance.
CASES: list[tuple[str, float, dict[str, Any], str]] = [
    ("12gb_preset", CARD_12GB, {}, FIT),
    ("8gb_preset", CARD_8GB, {}, DOCUMENT),
    # The seed's padded batch: 4 rows x 4 micro-batches, no packing (the old [4-4] case).
    (
        "12gb_padded_4x4",
        CARD_12GB,
        {"training.packing": False, "training.batch_size": 4, "training.grad_accum": 4},
        FIT,
    ),
    # A plain `pip install lorakit` has no Liger kernels (they come with lorakit[fast]).
    ("12gb_preset_no_liger", CARD_12GB, {"training.liger": "off"}, FIT),
    # What an 8 GB user is told to do: give lorakit the card's memory as its budget.
    ("8gb_budget", CARD_8GB, {"training.max_memory_gb": CARD_8GB}, BUDGET),
]


# --------------------------------------------------------------------------- paths


def _env_path(name: str, default: Path) -> Path:
    return Path(os.environ.get(name) or default).resolve()


def _tokenizer_dir() -> Path:
    path = _env_path("LORAKIT_PHI3_TOKENIZER", SHARED_DATA / "phi3-tokenizer")
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"Phi-3's tokenizer not found at {path} (set LORAKIT_PHI3_TOKENIZER)")
    return path


def _medquad() -> Path:
    path = _env_path("LORAKIT_MEDQUAD", SHARED_DATA / "medquad")
    if not path.is_dir() or not any(path.rglob("*.xml")):
        pytest.skip(f"no MedQuAD folder at {path} (set LORAKIT_MEDQUAD)")
    return path


def _record(case: str, figures: dict[str, Any]) -> None:
    """Add one case's figures to ``$LORAKIT_GPU_RESULTS/medqa_phi3_memory.json``."""
    print(json.dumps({case: figures}, default=str))
    folder = os.environ.get("LORAKIT_GPU_RESULTS")
    if not folder:
        return
    path = Path(folder) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("cards_gib", {"12 GB": CARD_12GB, "8 GB": CARD_8GB})
    data.setdefault("steps", STEPS)
    data.setdefault("cases", {})[case] = figures
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _run_child(args: list[str], log: Path, timeout: float) -> subprocess.CompletedProcess:
    with log.open("w") as out:
        return subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
            cwd=str(ROOT),
        )


def _tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def full_phi3(tmp_path_factory) -> Path:
    """A full-size Phi-3-mini with random weights (bf16) and Phi-3's real tokenizer, saved
    like a downloaded checkpoint; built in its own process so that this one holds no GPU
    memory."""
    if importlib.util.find_spec("bitsandbytes") is None:  # not imported: no CUDA context here
        pytest.skip("needs bitsandbytes: the preset loads the model in 4-bit")
    tokenizer = _tokenizer_dir()
    _medquad()  # skip before spending a minute on the model
    folder = tmp_path_factory.mktemp("phi3-mini-random")
    log = folder.parent / "build.log"
    done = _run_child(["build", str(folder), str(tokenizer)], log, timeout=600)
    if done.returncode != 0 or not (folder / "config.json").is_file():
        pytest.fail(f"building the model failed (exit {done.returncode}):\n{_tail(log, 4000)}")
    return folder


@pytest.mark.parametrize(
    ("case", "cap_gib", "overrides", "policy"), CASES, ids=[c[0] for c in CASES]
)
def test_medqa_phi3_on_a_small_card(full_phi3, tmp_path, case, cap_gib, overrides, policy):
    spec = {
        "case": case,
        "cap_gib": cap_gib,
        "model": str(full_phi3),
        "medquad": str(_medquad()),
        "run_dir": str(tmp_path / "run"),
        "overrides": overrides,
    }
    out = tmp_path / "figures.json"
    log = tmp_path / "case.log"
    done = None
    try:
        done = _run_child(["case", json.dumps(spec), str(out)], log, timeout=CASE_TIMEOUT_S)
        figures = json.loads(out.read_text()) if out.exists() else None
    except subprocess.TimeoutExpired:
        figures = None
    if figures is None:
        figures = {
            "case": case,
            "cap_gib": cap_gib,
            "outcome": "timeout" if done is None else "crashed",
            "returncode": None if done is None else done.returncode,
        }
    figures["policy"] = policy
    if figures["outcome"] != "ok":
        figures["log_tail"] = _tail(log, 6000)
    _record(case, figures)

    outcome = figures["outcome"]
    if outcome in ("timeout", "crashed"):
        pytest.fail(f"{case}: the case's process {outcome}:\n{figures['log_tail'][-3000:]}")
    assert figures.get("cap_enforced"), f"the {cap_gib} GiB cap did not hold: {figures}"
    where = (
        f"{figures.get('error_type')}: {str(figures.get('error', ''))[:300]} "
        f"(in {figures.get('where')}, {figures.get('steps_done')} steps done, peak "
        f"{figures.get('peak_allocated_gib')} GiB allocated / "
        f"{figures.get('peak_reserved_gib')} GiB reserved)"
    )
    if policy == DOCUMENT and outcome == "oom":
        pytest.xfail(f"{case}: out of memory under the {cap_gib} GiB cap: {where}")
    if policy == BUDGET and outcome == "clean_error":
        # The budget refused the run with lorakit's one-line error: the documented outcome.
        assert figures.get("error_field") == "training.max_memory_gb", where
        return
    assert outcome == "ok", (
        f"{case} did not complete under the {cap_gib} GiB cap: {outcome}, {where}"
    )
    assert figures["status"] == "complete", figures
    assert figures["best"]["verified"], figures
    assert figures["best"]["step"] in (4, 8), figures
    assert figures["steps"] == STEPS, figures
    if policy != BUDGET:  # out of memory only where the memory plan measured it
        assert figures["num_ooms"] == figures.get("plan_ooms", 0), figures
    assert figures["peak_reserved_gib"] <= cap_gib + 0.01, figures
    cost = figures["cost"]
    assert cost["tokens_trained"] > 0, cost
    assert cost["tokens_per_s"] > 0, cost


# --------------------------------------------------------------------------- child processes


def _build(folder: Path, tokenizer: Path) -> None:
    """Save a random full-size Phi-3-mini (bf16) with the real tokenizer's files."""
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from lorakit.testing import PHI3_MINI_CONFIG

    free, total = torch.cuda.mem_get_info()
    print(f"CUDA context and other processes at start: {(total - free) / GIB:.2f} GiB")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(Phi3Config(**PHI3_MINI_CONFIG)).to(torch.bfloat16)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    loaded = AutoTokenizer.from_pretrained(folder)
    assert len(loaded) <= PHI3_MINI_CONFIG["vocab_size"], len(loaded)
    print(f"saved {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters to {folder}")


def _cap(cap_gib: float) -> dict[str, Any]:
    """Cap this process's CUDA allocator at ``cap_gib`` and check that the cap holds."""
    free, total = torch.cuda.mem_get_info()  # creates this process's CUDA context
    props = torch.cuda.get_device_properties(0)
    fraction = cap_gib * GIB / props.total_memory
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    try:
        probe = torch.empty(int((cap_gib + 0.25) * GIB), dtype=torch.uint8, device="cuda")
        del probe
        enforced = False
    except torch.OutOfMemoryError:
        enforced = True
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.reset_accumulated_memory_stats()
    return {
        "gpu": torch.cuda.get_device_name(),
        "gpu_total_gib": round(props.total_memory / GIB, 2),
        "context_and_others_gib": round((total - free) / GIB, 3),
        "fraction": round(fraction, 5),
        "cap_enforced": enforced,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("liger-kernel", "bitsandbytes", "datasets", "triton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _steps_done(run_dir: Path) -> int | None:
    steps = []
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record.get("step"), int):
                steps.append(record["step"])
    except OSError:
        return None
    return max(steps, default=None)


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the preset under the cap; return the figures (never raises for a failed run)."""
    from lorakit.errors import LorakitError
    from lorakit.presets import medqa_phi3

    figures: dict[str, Any] = {
        "case": spec["case"],
        "cap_gib": spec["cap_gib"],
        "date": dt.date.today().isoformat(),
        "overrides": spec["overrides"],
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        or os.environ.get("PYTORCH_ALLOC_CONF"),
        "packages": _versions(),
    }
    figures.update(_cap(spec["cap_gib"]))
    recipe = medqa_phi3.with_overrides(
        {
            "model.name": spec["model"],
            "data.source": f"medquad:{spec['medquad']}",
            "data.fields": "",
            "data.limit": 1000,
            "data.split.group_by": "group+focus",
            "training.max_steps": STEPS,
            "training.eval_steps": 4,
            "training.save_steps": 4,
            "training.logging_steps": 1,
            **spec["overrides"],
        }
    )
    t = recipe.training
    figures["training"] = {
        "packing": t.packing,
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "tokens_per_batch": t.tokens_per_batch,
        "eval_batch_size": t.eval_batch_size,
        "max_len": recipe.data.tokenize.max_len,
        "optimizer": t.optimizer,
        "gradient_checkpointing": t.gradient_checkpointing,
        "liger": t.liger,
        "max_memory_gb": t.max_memory_gb,
    }
    run_dir = Path(spec["run_dir"])
    try:
        result = recipe.run(run_dir, show_progress=False)
    except BaseException as error:
        stack = traceback.extract_tb(error.__traceback__)
        frames = [f"{Path(f.filename).name}:{f.name}" for f in stack if "lorakit" in f.filename]
        oom = isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
        figures.update(
            outcome="oom"
            if oom
            else ("clean_error" if isinstance(error, LorakitError) else "error"),
            error_type=type(error).__name__,
            error=str(error)[:1500],
            error_field=getattr(error, "field", None),
            where=frames[2:],  # below recipe.run and run_recipe
            raised_in=f"{stack[-1].filename}:{stack[-1].lineno}:{stack[-1].name}"
            if stack
            else None,
            steps_done=_steps_done(run_dir),
        )
        traceback.print_exc()
    else:
        import attrs

        report = result.report
        cost = report.cost
        figures.update(
            outcome="ok",
            status=report.status,
            steps=report.steps,
            best=dict(report.best or {}),
            eval_loss_before=report.eval.loss_before,
            eval_loss=report.eval.loss,
            train_final_loss=report.train.final_loss,
            cost=None if cost is None else attrs.asdict(cost),
            liger_applied=any("Liger" in note for note in report.notes),
            notes=list(report.notes),
            versions=dict(report.run_card["versions"]),
        )
        data = json.loads((run_dir / "data_report.json").read_text())
        plan = run_dir / "memory_plan.json"
        if plan.exists():  # the settings the memory plan measured, and those that ran out
            figures["memory_plan"] = json.loads(plan.read_text())
            tried = figures["memory_plan"]["tried"]
            figures["plan_ooms"] = sum(t[2] == float("inf") for t in tried)
        figures["train_length_tokens"] = data["tokenization"]["train"]["length"]
    stats = torch.cuda.memory_stats()
    free, total = torch.cuda.mem_get_info()
    figures.update(
        # Device memory this process holds outside PyTorch's allocator at the end (its CUDA
        # context with the kernels loaded since, cuBLAS/Triton state, bitsandbytes' paged
        # memory where resident): on a real card it comes on top of the capped figure.
        outside_allocator_gib_end=round((total - free - torch.cuda.memory_reserved()) / GIB, 3),
        # Since the last reset: the run's whole life, except with a memory budget, whose
        # planner resets the peaks after each trial step.
        peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 3),
        peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 3),
        num_ooms=stats.get("num_ooms", 0),
        num_alloc_retries=stats.get("num_alloc_retries", 0),
    )
    return figures


def _main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "build":
        _build(Path(argv[1]), Path(argv[2]))
        return 0
    if mode == "case":
        figures = _case(json.loads(argv[1]))
        Path(argv[2]).write_text(json.dumps(figures, indent=2, default=str))
        print(json.dumps(figures, default=str))
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
