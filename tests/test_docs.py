"""Every code block of README.md and docs/**/*.md runs as written (offline, on the tiny model).

How blocks run
--------------
* ```` ```python ```` blocks run in order, one namespace per page (a later block sees the names
  an earlier one defined, as a reader running the page would), in-process.
* ```` ```console ```` / ```` ```bash ```` blocks: each ``$ command`` (``\\`` continues a line)
  runs with bash as a subprocess, the ``lorakit`` and ``python`` of this environment first on
  the PATH, offline (``HF_HUB_OFFLINE=1`` ...). Lines after a command are its output: when one
  starts with ``error:`` the command must fail and print that line (``…`` matches anything);
  otherwise the command must exit 0.
* Every page runs in its own empty folder, which looks like the repository root to the block:
  ``../shared/data`` is the real data (as in tests/conftest.py) and ``examples/``, ``tests/``,
  ``src/``, ``benchmarks/`` are links to the repository's. A page inside a repository folder
  (``examples/medqa/README.md``) runs in that folder's place, among links to its files, so
  its relative paths (``python prepare_medquad.py ../../../shared/data/medquad``) work.
* Other languages (toml, json, text ...) are not run.

Directives: an HTML comment right before a block (blank lines and other directives may stand
between), invisible on the rendered site and visible in the Markdown:

* ``<!-- docs-test: skip (REASON) -->`` — the block is not run; the skip says REASON.
* ``<!-- docs-test: skip-command TEXT (REASON) -->`` — commands of a console block that
  contain TEXT are not run (``pip install``: no network here; the extras are installed).
* ``<!-- docs-test: replace OLD => NEW (REASON) -->`` — run the block with OLD replaced by NEW
  (whole words). ``{tiny_run}`` in NEW is a finished ``medqa_phi3_tiny`` run directory, copied
  into the page's folder (trained once per test session).
* ``<!-- docs-test: install PLUGIN_DIR (REASON) -->`` — from this block on, the page sees the
  plugin package in PLUGIN_DIR as ``pip install -e PLUGIN_DIR`` would install it (its module
  and entry points on the path of the blocks and their commands), without touching this
  environment.
* ``<!-- docs-test: setup`` + Python lines + ``-->`` — hidden code run in the page's namespace
  before the block (the names a snippet assumes, a file it reads).
* ``<!-- docs-test: skip-signatures (REASON) -->`` anywhere on a page: its one-line Python
  blocks of the form ``name(args) -> type`` are signatures, not code.

A block without a directive must run; a directive without a reason is an error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "examples").rglob("README.md")),
]
LINKED = ("examples", "tests", "src", "benchmarks")
PYTHON = {"python", "py"}
CONSOLE = {"console", "bash", "sh", "shell"}
COMMAND_TIMEOUT = 300
NEVER_RUN = {
    "pip": "installs packages into this environment",
    "nox": "runs every test session (CI runs it)",
    "git": "changes a repository",
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[^\n]*$")
DIRECTIVE = re.compile(r"^[ \t]*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->", re.S | re.M)
REASON = re.compile(r"^(?P<head>.*?)\s*\((?P<reason>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*$", re.S)
SIGNATURE = re.compile(r"^\w+\(.*\)\s*->\s*[\w\[\], .|]+$")


@attrs.frozen
class Block:
    page: Path
    line: int
    lang: str
    text: str
    directives: tuple[str, ...]
    page_directives: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def _directives_before(lines: list[str], start: int) -> tuple[str, ...]:
    """The docs-test comments right above line ``start`` (0-based)."""
    found: list[str] = []
    i = start - 1
    while i >= 0:
        if not lines[i].strip():
            i -= 1
            continue
        if lines[i].rstrip().endswith("-->"):
            j = i
            while j >= 0 and "<!--" not in lines[j]:
                j -= 1
            match = DIRECTIVE.search("\n".join(lines[max(j, 0) : i + 1]))
            if j < 0 or match is None:
                break
            found.insert(0, match.group("body"))
            i = j - 1
            continue
        break
    return tuple(found)


def collect(page: Path) -> Iterator[Block]:
    text = page.read_text(encoding="utf-8")
    lines = text.split("\n")
    page_directives = tuple(
        m.group("body")
        for m in DIRECTIVE.finditer(text)
        if m.group("body").startswith("skip-signatures")
    )
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        end = i + 1
        while end < len(lines) and not re.match(
            rf"^{indent}{fence[0]}{{{len(fence)},}}\s*$", lines[end]
        ):
            end += 1
        body = [
            ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : end]
        ]
        yield Block(
            page=page,
            line=i + 1,
            lang=opening.group("lang").lower(),
            text="\n".join(body) + "\n",
            directives=_directives_before(lines, i),
            page_directives=page_directives,
        )
        i = end + 1


BLOCKS = [b for page in PAGES for b in collect(page) if b.lang in PYTHON | CONSOLE]


# --------------------------------------------------------------------------- directives


@attrs.define
class Plan:
    skip: str | None = None
    skip_commands: list[tuple[str, str]] = attrs.Factory(list)
    replace: list[tuple[str, str]] = attrs.Factory(list)
    setup: list[str] = attrs.Factory(list)
    install: list[str] = attrs.Factory(list)


def _split_reason(body: str, block: Block) -> tuple[str, str]:
    match = REASON.match(body)
    if not match or not match.group("reason").strip():
        pytest.fail(f"{block.id}: docs-test directive {body!r} needs a reason in parentheses")
    return match.group("head").strip(), match.group("reason").strip()


def plan(block: Block) -> Plan:
    result = Plan()
    for body in block.directives:
        verb, _, rest = (
            body.partition(" ") if not body.startswith("setup") else ("setup", "", body[5:])
        )
        if verb == "setup":
            result.setup.append(rest.strip("\n"))
        elif verb == "skip":
            result.skip = _split_reason(body, block)[1]
        elif verb == "skip-command":
            head, reason = _split_reason(rest, block)
            result.skip_commands.append((head, reason))
        elif verb == "replace":
            head, _reason = _split_reason(rest, block)
            old, sep, new = head.partition("=>")
            if not sep:
                pytest.fail(f"{block.id}: write replace OLD => NEW (REASON), got {body!r}")
            result.replace.append((old.strip(), new.strip()))
        elif verb == "install":
            result.install.append(_split_reason(rest, block)[0])
        elif verb != "skip-signatures":
            pytest.fail(f"{block.id}: unknown docs-test directive {body!r}")
    for body in block.page_directives:
        _, reason = _split_reason(body, block)
        if (
            block.lang in PYTHON
            and SIGNATURE.match(block.text.strip())
            and "\n" not in block.text.strip()
        ):
            result.skip = f"a signature: {reason}"
    return result


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """One finished medqa_phi3_tiny run (4 steps) that blocks about a run directory share."""
    run_dir = tmp_path_factory.mktemp("docs-tiny-run") / "run"
    done = subprocess.run(
        [
            _lorakit(), "train", "medqa_phi3_tiny",
            "--set", "training.max_steps=4", "--set", "training.eval_steps=2",
            "--set", "training.save_steps=2", "--run-dir", str(run_dir), "--no-progress",
        ],
        env=_env(tmp_path_factory.getbasetemp()),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


PHI3 = "microsoft/Phi-3-mini-4k-instruct"


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A Hugging Face cache (``HF_HUB_CACHE``) holding Phi-3's real tokenizer from
    ../shared/data/phi3-tokenizer, and a config.json naming its architecture, so commands
    that name ``--tokenizer microsoft/Phi-3-mini-4k-instruct`` run offline as written. The
    weights are not there: blocks that need the model are marked."""
    cache = tmp_path_factory.mktemp("docs-hub")
    repo = cache / "models--microsoft--Phi-3-mini-4k-instruct"
    snapshot = repo / "snapshots" / "local"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("local", encoding="utf-8")
    for item in (shared_data / "phi3-tokenizer").iterdir():
        if item.is_file():
            shutil.copy(item, snapshot / item.name)
    (snapshot / "config.json").write_text(
        '{"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}', encoding="utf-8"
    )
    return cache


@attrs.define
class PageState:
    folder: Path
    namespace: dict[str, Any]
    env: dict[str, str]
    copies: dict[str, str] = attrs.Factory(dict)
    paths: list[str] = attrs.Factory(list)

    def install(self, plugin_dir: str) -> None:
        """Put the plugin's source and a dist-info with its entry points on the path."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        project = tomllib.loads((ROOT / plugin_dir / "pyproject.toml").read_text("utf-8"))[
            "project"
        ]
        site = self.folder.parent / "site"
        info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n",
            encoding="utf-8",
        )
        groups = project.get("entry-points", {})
        (info / "entry_points.txt").write_text(
            "".join(
                f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items())
                for group, items in groups.items()
            ),
            encoding="utf-8",
        )
        for path in (str(site), str(ROOT / plugin_dir / "src")):
            if path not in self.paths:
                self.paths.append(path)
        self.env["PYTHONPATH"] = os.pathsep.join([*self.paths, self.env.get("PYTHONPATH", "")])


_PAGES: dict[Path, PageState] = {}


@pytest.fixture()
def page_state(
    request: pytest.FixtureRequest,
    shared_data: Path,
    hub_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PageState]:
    """The page's folder and namespace, made for its first block; the cwd during a block."""
    block: Block = request.node.callspec.params["block"]
    state = _PAGES.get(block.page)
    if state is None:
        base = tmp_path_factory.mktemp("docs-" + block.page.stem)
        (base / "shared").mkdir()
        (base / "shared" / "data").symlink_to(shared_data, target_is_directory=True)
        folder = base / "work"
        folder.mkdir()
        inside = block.page.parent.relative_to(ROOT)
        home = inside.parts[0] if inside.parts and inside.parts[0] in LINKED else None
        for name in LINKED:
            if name != home:
                (folder / name).symlink_to(ROOT / name, target_is_directory=True)
        if home is not None:  # examples/medqa/README.md runs in its folder, among its files
            folder = folder / inside
            folder.mkdir(parents=True)
            for entry in block.page.parent.iterdir():
                (folder / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        state = _PAGES[block.page] = PageState(
            folder=folder,
            namespace={"__name__": "__docs__", "__file__": str(block.page)},
            env={**_env(folder), "HF_HUB_CACHE": str(hub_cache)},
        )
    path_before, cwd = list(sys.path), os.getcwd()
    os.chdir(state.folder)
    sys.path[:0] = state.paths
    try:
        yield state
    finally:
        os.chdir(cwd)
        sys.path[:] = path_before


def _lorakit() -> str:
    found = Path(sys.executable).with_name("lorakit")
    return str(found) if found.exists() else "lorakit"


def _env(folder: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LORAKIT_DATA_HOME": str(folder / ".lorakit-data"),
        "COLUMNS": "100",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    env.pop("LORAKIT_DISABLE_PLUGINS", None)
    return env


# --------------------------------------------------------------------------- running


def _substitute(
    text: str, block_plan: Plan, state: PageState, request: pytest.FixtureRequest
) -> str:
    for old, new in block_plan.replace:
        if "{tiny_run}" in new:
            if "tiny_run" not in state.copies:
                source: Path = request.getfixturevalue("tiny_run")
                target = state.folder / "runs" / f"tiny-run-{len(state.copies)}"
                shutil.copytree(source, target)
                state.copies["tiny_run"] = str(target.relative_to(state.folder))
            new = new.replace("{tiny_run}", state.copies["tiny_run"])
        pattern = (
            rf"(?<![\w.-]){re.escape(old)}(?![\w])" if re.match(r"\w", old[-1]) else re.escape(old)
        )
        text, n = re.subn(pattern, lambda _m, new=new: new, text)
        if n == 0:
            pytest.fail(f"replace {old!r}: not in the block")
    return text


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """``(command, output lines)`` for each ``$ command`` of a console block."""
    commands: list[tuple[str, list[str]]] = []
    lines = text.rstrip("\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            commands.append((command.strip(), []))
        elif commands:
            commands[-1][1].append(line)
        i += 1
    return commands


def _pattern(expected: str) -> re.Pattern[str]:
    parts = re.split(r"…|\.\.\.", " ".join(expected.split()))
    return re.compile(".*?".join(re.escape(p) for p in parts), re.S)


def run_console(text: str, block_plan: Plan, state: PageState, block: Block) -> list[str]:
    commands = _commands(text)
    if not commands:
        pytest.fail(
            f"{block.id}: a console block without a '$ command' (mark it skip with a reason)"
        )
    skipped: list[str] = []
    assignments: list[str] = []
    for command, output in commands:
        reason = next((r for part, r in block_plan.skip_commands if part in command), None)
        if reason is not None:
            skipped.append(f"{command[:60]} ({reason})")
            continue
        if command.split()[0] in NEVER_RUN:
            pytest.fail(
                f"{block.id}: $ {command}: {NEVER_RUN[command.split()[0]]}: mark it skip-command"
            )
        if re.fullmatch(r"\w+=\S*", command):
            assignments.append(command)
            continue
        script = "\n".join([*assignments, command])
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=state.folder,
            env=state.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        printed = " ".join((done.stdout + "\n" + done.stderr).split())
        errors = [ln.strip() for ln in output if ln.strip().startswith("error:")]
        where = f"{block.id}: $ {command}"
        if errors:
            assert done.returncode != 0, (
                f"{where}\nexpected to fail, exit 0:\n{done.stdout[-2000:]}"
            )
            for expected in errors:
                assert _pattern(expected).search(printed), (
                    f"{where}\nexpected {expected!r}, printed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}"
                )
        else:
            assert done.returncode == 0, (
                f"{where}\nexit {done.returncode}:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
            )
    return skipped


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs_as_written(
    block: Block, page_state: PageState, request: pytest.FixtureRequest
):
    block_plan = plan(block)
    if block_plan.skip is not None:
        pytest.skip(f"{block.id}: {block_plan.skip}")
    for plugin_dir in block_plan.install:
        page_state.install(plugin_dir)
        sys.path[:0] = [p for p in page_state.paths if p not in sys.path]
    for code in block_plan.setup:
        exec(compile(code, f"{block.id} (setup)", "exec"), page_state.namespace)
    text = _substitute(block.text, block_plan, page_state, request)
    if block.lang in PYTHON:
        exec(compile(text, block.id, "exec"), page_state.namespace)
        return
    skipped = run_console(text, block_plan, page_state, block)
    for line in skipped:
        print(f"{block.id}: not run: $ {line}")  # shown with -rP, and on a failure
    if skipped and len(skipped) == len(_commands(text)):
        pytest.skip(f"{block.id}: every command skipped: " + "; ".join(skipped))


def test_every_directive_has_a_known_form():
    """A misspelt directive would silently run nothing: every one parses, with its reason."""
    for block in BLOCKS:
        plan(block)
    stray = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks = list(collect(page))
        stray += [
            f"{b.id}: on a {b.lang or 'plain'} block, which is not run"
            for b in blocks
            if b.directives and b.lang not in PYTHON | CONSOLE
        ]
        used = {d for b in blocks for d in (*b.directives, *b.page_directives)}
        stray += [
            f"{page.name}: {m.group('body')[:40]}"
            for m in DIRECTIVE.finditer(text)
            if m.group("body") not in used
        ]
    assert not stray, f"docs-test directives not right before a block that runs: {stray}"


def test_the_collector_reads_fences_directives_and_commands(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- docs-test: skip (needs a GPU) -->\n\n```console\n$ lorakit a \\\n"
        "    --b c\nerror: x\n$ lorakit d\n```\n\n- item\n\n  ```python\n  x = 1\n  ```\n",
        encoding="utf-8",
    )
    first, second = collect(page)
    assert (first.line, first.lang, first.directives) == (4, "console", ("skip (needs a GPU)",))
    assert _commands(first.text) == [("lorakit a --b c", ["error: x"]), ("lorakit d", [])]
    assert (second.line, second.lang, second.text, second.directives) == (
        13,
        "python",
        "x = 1\n",
        (),
    )
    assert plan(first).skip == "needs a GPU"
    assert {b.page.name for b in BLOCKS} >= {"README.md", "quickstart.md", "cli.md"}
