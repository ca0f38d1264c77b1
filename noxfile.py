"""Developer sessions: ``nox`` runs tests, lint, typecheck and docs; ``nox -s gpu`` on a GPU machine."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs", "package"]
nox.options.reuse_existing_virtualenvs = True

# The CPU wheel of torch that CI machines carry; override for another build.
TORCH = os.environ.get("LORAKIT_TORCH", "torch==2.13.0")
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and CPU end-to-end tests (real data from ../shared/data when present)."""
    session.install(TORCH)
    # The lm-evaluation-harness agreement test and the embedding metric run in CI too; so does
    # the review page's browser test (Playwright, extra `browser`; Chromium from .ci/run).
    session.install(
        "-e",
        ".[test,browser,agreement,embeddings,retrieval,safety,serve,concepts,review,search,"
        "tensorboard,mlflow]",
    )
    # Where the real data is (CI always has it beside the clone), a test that needs it fails
    # instead of skipping (tests/conftest.py).
    shared = Path(
        os.environ.get("LORAKIT_SHARED_DATA", Path(__file__).parent / ".." / "shared" / "data")
    )
    require = "1" if os.environ.get("CI") or shared.is_dir() else "0"
    env = {**OFFLINE, "LORAKIT_REQUIRE_DATA": require, **_chroma_server(session)}
    session.run("pytest", *session.posargs, env=env)


def _chroma_server(session: nox.Session) -> dict[str, str]:
    """A Chroma server in a venv of its own (its pins are not lorakit's), for the store tests
    (tests/test_retrieval_chroma.py); set LORAKIT_CHROMA_BIN to use another, or
    LORAKIT_NO_CHROMA=1 to skip them."""
    if os.environ.get("LORAKIT_CHROMA_BIN") or os.environ.get("LORAKIT_NO_CHROMA"):
        return {}
    venv = Path(session.create_tmp()) / "chroma-venv"
    chroma = venv / "bin" / "chroma"
    if not chroma.exists():
        session.run("python", "-m", "venv", str(venv), external=True)
        session.run(
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "chromadb>=1.0",
            external=True,
        )
    return {"LORAKIT_CHROMA_BIN": str(chroma)}


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/lorakit."""
    session.install(TORCH)
    # The web extras' packages are typed: without them FastAPI's decorators are untyped.
    session.install("-e", ".[serve,review]", "mypy>=1.11")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """mkdocs build --strict (API pages read the source, no import needed)."""
    session.install("-e", ".[docs]", "--no-deps")
    session.install("mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        f"{session.create_tmp()}/site",
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session
def package(session: nox.Session) -> None:
    """Build the wheel and sdist, install the wheel into a fresh venv in another folder, and
    train the offline tiny preset there: what `pip install lorakit` gives a user."""
    import shutil
    import tempfile
    from pathlib import Path

    session.install("build>=1.2")
    dist = Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "build", "--sdist", "--wheel", "--outdir", str(dist))
    wheel = next(dist.glob("lorakit-*.whl"))
    if not list(dist.glob("lorakit-*.tar.gz")):
        session.error("no sdist was built")
    user = Path(tempfile.mkdtemp(prefix="lorakit-user-"))
    session.run("python", "-m", "venv", str(user / "venv"))
    python = str(user / "venv" / "bin" / "python")
    session.run(python, "-m", "pip", "install", "--quiet", TORCH, external=True)
    session.run(python, "-m", "pip", "install", "--quiet", str(wheel), external=True)
    lorakit = str(user / "venv" / "bin" / "lorakit")
    with session.chdir(user):
        session.run(lorakit, "presets", external=True, env=OFFLINE)
        session.run(
            lorakit,
            "train",
            "medqa_phi3_tiny",
            "--set",
            "training.max_steps=4",
            "--set",
            "training.eval_steps=2",
            "--set",
            "training.save_steps=2",
            "--run-dir",
            str(user / "run"),
            "--no-progress",
            external=True,
            env=OFFLINE,
        )
    finished = (user / "run" / "report.json").is_file()
    shutil.rmtree(user, ignore_errors=True)
    if not finished:
        session.error("the installed wheel did not finish a run")


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """Tests that need a CUDA GPU (marker gpu)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "gpu", "tests/gpu", *session.posargs, env=OFFLINE)
