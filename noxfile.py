"""Developer sessions: ``nox`` runs tests, lint, typecheck and docs; ``nox -s gpu`` on a GPU machine."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
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
    # The lm-evaluation-harness agreement test and the embedding metric run in CI too.
    session.install("-e", ".[test,agreement,embeddings,retrieval,safety,serve]")
    session.run("pytest", *session.posargs, env=OFFLINE)


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
    session.install("-e", ".", "mypy>=1.11")
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


@nox.session(default=False)
def gpu(session: nox.Session) -> None:
    """Tests that need a CUDA GPU (marker gpu)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "gpu", "tests/gpu", *session.posargs, env=OFFLINE)
