"""``lorakit serve`` for real: a server process on 127.0.0.1 serving two runs' adapters on one
tiny base, driven with the official ``openai`` client (plain and streaming) and raw httpx for
bad requests; and the adapter folder checked against vLLM's LoRA loader rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two runs on the tiny base: the trained one, and a copy whose adapter is scaled up."""
    import torch
    from safetensors.torch import load_file, save_file

    from test_answer import trained_run

    first = trained_run(tmp_path_factory.getbasetemp())
    second = tmp_path_factory.mktemp("served") / "louder"
    shutil.copytree(first, second, ignore=shutil.ignore_patterns("checkpoints"))
    weights = second / "adapter" / "adapter_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v * 8 if "lora_B" in k else v for k, v in state.items()}, str(weights))
    assert not torch.equal(load_file(str(weights))[next(iter(state))] * 0, torch.ones(1))
    return first, second


@pytest.fixture(scope="module")
def server(runs: tuple[Path, Path], lorakit_server) -> Iterator[str]:
    args = ["serve", *map(str, runs), "--api-key", KEY, "--max-tokens", "16"]
    with lorakit_server([*args, "--max-body-bytes", "20000"], timeout_s=180) as url:
        yield url


@pytest.fixture()
def client(server: str):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_lists_each_run_and_the_base(client, runs):
    ids = [m.id for m in client.models.list().data]
    assert ids == [runs[0].name, runs[1].name, "tiny-phi3"]


def test_chat_completion_plain_and_streamed_agree(client, runs):
    from lorakit.answer import Answerer, SamplingSpec

    messages = [{"role": "user", "content": "What is diabetes?"}]
    plain = client.chat.completions.create(model=runs[0].name, messages=messages, max_tokens=8)
    text = plain.choices[0].message.content
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.completion_tokens <= 8 and plain.usage.prompt_tokens > 5
    local = Answerer.from_run_dir(runs[0], sampling=SamplingSpec(max_new_tokens=8))
    assert text == local.answer("What is diabetes?").text  # greedy, as lorakit ask answers

    chunks = list(
        client.chat.completions.create(
            model=runs[0].name, messages=messages, max_tokens=8, stream=True
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == text
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_the_model_field_chooses_the_adapter(client, runs):
    messages = [{"role": "user", "content": "What is asthma?"}]
    answers = [
        client.chat.completions.create(model=name, messages=messages, max_tokens=10)
        .choices[0]
        .message.content
        for name in (runs[0].name, runs[1].name, "tiny-phi3", runs[0].name)
    ]
    assert answers[0] == answers[3]
    assert len(set(answers[:3])) == 3


def test_completions_plain_and_streamed(client, runs):
    plain = client.completions.create(model=runs[0].name, prompt="Insulin is", max_tokens=6)
    assert plain.choices[0].text and plain.object == "text_completion"
    streamed = client.completions.create(
        model=runs[0].name, prompt="Insulin is", max_tokens=6, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text


def test_concurrent_clients_are_batched_and_each_answered_once(client, server, runs):
    before = httpx.get(f"{server}/health").json()
    questions = [f"What causes symptom number {i}?" for i in range(8)]

    def ask(question: str) -> str:
        reply = client.chat.completions.create(
            model=runs[0].name, messages=[{"role": "user", "content": question}], max_tokens=6
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, questions))
    after = httpx.get(f"{server}/health").json()
    assert after["rows"] - before["rows"] == 8
    assert after["batches"] - before["batches"] < 8  # several requests shared a batch
    assert answers == [ask(q) for q in questions]  # batched answers equal one-by-one answers


def post(server: str, path: str, body: object, *, key: str = KEY, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{server}{path}", content=content, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (None, 400, "not JSON"),
        ({"model": "x"}, 400, "messages"),
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
        ({"model": "{run}", "messages": []}, 400, "messages"),
        ({"model": "{run}", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        (
            {"model": "{run}", "messages": [{"role": "assistant", "content": "hi"}]},
            400,
            "last message",
        ),
        (
            {"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 99},
            400,
            "at most 16",
        ),
        (
            {"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        ({"model": "{run}", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1"),
        ({"model": "{run}", "messages": [{"role": "user", "content": "  "}]}, 400, "empty"),
        (
            {"model": "{run}", "messages": [{"role": "user", "content": "x " * 12000}]},
            413,
            "larger than",
        ),
        ({"model": "{run}", "prompt": 3}, 400, "prompt"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(server, runs, body, status, expected):
    path = "/v1/completions" if body and "prompt" in body else "/v1/chat/completions"
    if body is not None and body.get("model") == "{run}":
        body = {**body, "model": runs[0].name}
    reply = post(server, path, body, raw=b"{not json" if body is None else None)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert expected in error["message"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_the_api_key_is_required(server, runs):
    reply = post(server, "/v1/models", {}, key="wrong")
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server}/health").status_code == 200  # health needs no key


def test_a_prompt_longer_than_the_context_is_a_400(server, runs):
    reply = post(
        server, "/v1/completions", {"model": runs[0].name, "prompt": "flu " * 4100, "max_tokens": 4}
    )
    assert reply.status_code == 400
    assert "context" in reply.json()["error"]["message"]


def test_the_adapter_folder_is_what_vllms_lora_loader_expects(runs, tmp_path):
    from lorakit.serve.vllm import check_vllm_adapter, vllm_command

    adapter = runs[0] / "adapter"
    assert check_vllm_adapter(adapter) == []
    command = vllm_command("microsoft/Phi-3-mini-4k-instruct", {"medqa": adapter}, port=8001)
    assert command[:3] == ["vllm", "serve", "microsoft/Phi-3-mini-4k-instruct"]
    assert "--enable-lora" in command and command[command.index("--max-lora-rank") + 1] == "16"
    assert f"medqa={adapter.resolve()}" in command
    # What vLLM refuses: Llama's split projections on Phi-3, DoRA.
    broken = tmp_path / "adapter"
    shutil.copytree(adapter, broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    config.update(target_modules=["q_proj", "v_proj"], use_dora=True)
    (broken / "adapter_config.json").write_text(json.dumps(config))
    problems = check_vllm_adapter(broken)
    assert any("DoRA" in p for p in problems) and any("q_proj" in p for p in problems)


def test_serve_engine_vllm_prints_the_command(runs):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lorakit.cli import main; main()",
            "serve",
            str(runs[0]),
            "--engine",
            "vllm",
            "--print-command",
            "--api-key",
            "s3cret",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert done.returncode == 0, done.stderr
    assert "--enable-lora" in done.stdout and f"{runs[0].name}=" in done.stdout
    assert "s3cret" not in done.stdout
