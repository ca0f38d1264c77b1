"""lorakit with Phi-3-mini-4k-instruct's real tokenizer (../shared/data/phi3-tokenizer).

The tiny tokenizer of ``lorakit.testing`` has Phi-3's special tokens but not its vocabulary,
its added-token flags or its April 2024 chat template. These tests load the real one the way
lorakit loads a tokenizer (``AutoTokenizer.from_pretrained`` on a local folder, as
``lorakit.model.load_hf_model`` and ``lorakit data inspect --tokenizer`` do) and check
lorakit's rendering, answer-only labels and prompt/completion split on real MedQuAD, MedQA
and PubMedQA rows against Phi-3's real ids.

Phi-3's ids used below: ``<unk>`` 0, ``<s>`` 1, ``\\n`` 13, ``▁`` 29871, ``.`` 29889,
``<|endoftext|>`` 32000 (the eos, and the shipped pad), ``<|assistant|>`` 32001,
``<|system|>`` 32006, ``<|end|>`` 32007, ``<|user|>`` 32010.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit.cli import main
from lorakit.data.pipeline import DataSpec, prepare_data
from lorakit.data.rows import QARow
from lorakit.data.splits import SplitSpec
from lorakit.data.templates import QATemplate
from lorakit.data.tokenize import (
    IGNORE_INDEX,
    TokenizeSpec,
    _ids,
    ensure_pad_token,
    stop_token_ids,
    tokenize_rows,
)
from lorakit.errors import ConfigError

pytest.importorskip("transformers")

UNK, BOS, NEWLINE, SPACE, DOT = 0, 1, 13, 29871, 29889
EOS, ASSISTANT, SYSTEM, END, USER = 32000, 32001, 32006, 32007, 32010
SWALLOWING = (USER, END, ASSISTANT)  # rstrip=True: whitespace after them is part of the token
VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"
N_VECTORS = 46
LONG = 8192  # longer than every MedQuAD, MedQA and PubMedQA example: nothing is cut


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def phi3_path(shared_data: Path) -> Path:
    path = shared_data / "phi3-tokenizer"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"Phi-3's tokenizer not found at {path}")
    return path


def load_phi3(path: Path):
    """The tokenizer as lorakit loads one from a local folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture()
def phi3(phi3_path: Path):
    """A fresh tokenizer per test: the pipeline changes its pad token in place."""
    return load_phi3(phi3_path)


@pytest.fixture(scope="module")
def phi3_module(phi3_path: Path):
    return load_phi3(phi3_path)


def read_llama_cpp_vectors(folder: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's ``test-tokenizer-0`` vectors, read as its ``read_tests`` reads them.

    The ``.inp`` file is the texts, each followed by ``\\n__ggml_vocab_test__\\n`` (so the file
    ends with the separator and nothing after the last one is a text; an empty text is a
    separator right after another); the ``.out`` file has one line per text, the ids separated
    by spaces (with a leading space), an empty line for no ids.
    """
    (inp,) = folder.glob("*.inp")
    (out,) = folder.glob("*.out")
    raw = inp.read_bytes().decode("utf-8")
    texts: list[str] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(VECTOR_SEPARATOR, pos)
        if end < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:end])
        pos = end + len(VECTOR_SEPARATOR)
    lines = out.read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    assert len(texts) == len(lines), f"{len(texts)} texts but {len(lines)} id lines"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines, strict=True)]


@pytest.fixture(scope="module")
def vectors(phi3_path: Path) -> list[tuple[str, list[int]]]:
    return read_llama_cpp_vectors(phi3_path / "llama.cpp-vectors")


def prepared(source: str, tokenizer, *, group_by: str = "group"):
    spec = DataSpec(
        source=source,
        split=SplitSpec(eval_fraction=0.05, test_fraction=0.05, group_by=group_by),
        tokenize=TokenizeSpec(max_len=LONG),
    )
    data = prepare_data(spec, tokenizer)
    rows, examples = [], []
    for name, part in (
        ("train", data.splits.train),
        ("eval", data.splits.eval),
        ("test", data.splits.test),
    ):
        assert len(data.examples[name]) == len(part)  # nothing dropped at LONG
        rows += part
        examples += data.examples[name]
    return data, rows, examples


@pytest.fixture(scope="module")
def medquad(shared_data: Path, phi3_path: Path):
    tokenizer = load_phi3(phi3_path)
    return (tokenizer, *prepared(f"medquad:{shared_data / 'medquad'}", tokenizer))


@pytest.fixture(scope="module")
def medqa(shared_data: Path, phi3_path: Path):
    tokenizer = load_phi3(phi3_path)
    source = f"medqa:{shared_data / 'medqa' / 'us_4_options_sample.jsonl'}"
    return (tokenizer, *prepared(source, tokenizer, group_by="id"))


@pytest.fixture(scope="module")
def pubmedqa(shared_data: Path, phi3_path: Path):
    tokenizer = load_phi3(phi3_path)
    source = f"pubmedqa:{shared_data / 'pubmedqa' / 'ori_pqal_train.json'}"
    return (tokenizer, *prepared(source, tokenizer))


def conversation(row: QARow, template: QATemplate) -> list[dict[str, str]]:
    return [*template.prompt(row), {"role": "assistant", "content": template.answer(row)}]


def chat_ids(tokenizer, messages, *, generation_prompt: bool = False) -> list[int]:
    """The tokenizer's own ``apply_chat_template`` ids: independent of lorakit's tokenisation."""
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    return list(ids)


def prompt_length(example) -> int:
    return next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)


# --------------------------------------------------------------------------- the tokenizer


def test_loads_with_phi3_special_tokens(phi3):
    assert phi3.is_fast
    assert len(phi3) == 32064
    vocab = phi3.get_vocab()
    expected = {
        "<unk>": UNK,
        "<s>": BOS,
        "<|endoftext|>": EOS,
        "<|assistant|>": ASSISTANT,
        "<|system|>": SYSTEM,
        "<|end|>": END,
        "<|user|>": USER,
    }
    assert {name: vocab[name] for name in expected} == expected
    assert (phi3.bos_token_id, phi3.eos_token_id, phi3.pad_token_id) == (BOS, EOS, EOS)
    # Only the chat tokens swallow the whitespace after them; <s> and the eos do not.
    flags = {i: phi3.added_tokens_decoder[i].rstrip for i in (BOS, EOS, *SWALLOWING)}
    assert flags == {BOS: False, EOS: False, USER: True, END: True, ASSISTANT: True}


def test_llama_cpp_vector_files_split_as_llama_cpp_splits_them(vectors):
    # The files end with the separator: a naive str.split gives 47 pieces, the last one empty
    # and not a vector; llama.cpp's reader (and the .out file's lines) give 46.
    assert len(vectors) == N_VECTORS
    texts = [text for text, _ in vectors]
    assert texts[0] == "ied 4 ½ months" and vectors[0][1] == [
        474,
        287,
        29871,
        29946,
        29871,
        30226,
        7378,
    ]
    assert texts[2] == "" and vectors[2][1] == []  # the one empty text is a real vector
    assert texts[7:11] == ["\n", "\n\n", "\n\n\n", "\t\n"]
    assert texts[-1].startswith("\n \n\n \n\n\n \t \t\t \t\n") and texts[-1].endswith("We'Ve a'lL")
    assert "" not in texts[3:]


@pytest.mark.parametrize("index", range(N_VECTORS))
def test_reproduces_llama_cpp_vector(phi3_module, vectors, index):
    text, expected = vectors[index]
    assert phi3_module.encode(text, add_special_tokens=False) == expected
    # lorakit's own batch encoder (the Rust tokenizer, no special tokens) gives the same ids.
    assert _ids(phi3_module, [text]) == [expected]


def test_whitespace_after_chat_tokens_is_swallowed(phi3):
    def encode(text: str) -> list[int]:
        return phi3.encode(text, add_special_tokens=False)

    assert encode("Hello<|end|>") == [15043, END]
    assert encode("Hello<|end|>\n") == [15043, END]
    assert encode("<|user|>\nWhat") == encode("<|user|>What") == [USER, 1724]
    assert encode("<|end|>\n<|assistant|>\n") == [END, ASSISTANT]
    assert encode("<|assistant|>\nA. yes") == [ASSISTANT, 319, DOT, 4874]
    # ... and only there: a newline elsewhere, or after <s>, is a token.
    assert encode("Hello\n") == [15043, NEWLINE]
    assert encode("<s>\nWhat") == [BOS, SPACE, NEWLINE, 5618]


def test_chat_template_is_the_april_2024_one(phi3):
    messages = [
        {"role": "user", "content": "What is a fever?"},
        {"role": "assistant", "content": "A raised body temperature."},
    ]
    text = phi3.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<s><|user|>\nWhat is a fever?<|end|>\n<|assistant|>\nA raised body temperature.<|end|>\n"
    )
    prompt = phi3.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWhat is a fever?<|end|>\n<|assistant|>\n"
    assert text.startswith(prompt)


def test_pad_token_becomes_one_that_is_not_a_stop_token(phi3):
    assert phi3.pad_token_id == EOS  # as shipped: the pad is the eos
    assert stop_token_ids(phi3) == {EOS, END}
    assert ensure_pad_token(phi3) == UNK
    assert phi3.pad_token == "<unk>" and phi3.pad_token_id == UNK
    assert UNK not in stop_token_ids(phi3) and phi3.bos_token_id != UNK


# --------------------------------------------------------------------------- real rows


def check_examples(tokenizer, rows, examples, *, every: int = 1) -> None:
    """Every example's rendering, labels and split against Phi-3's real ids.

    The comparison with ``apply_chat_template`` and with the answer tokenised alone runs on
    every ``every``-th example (it tokenises again); the rest on all of them.
    """
    template = QATemplate()
    assert len(rows) == len(examples) > 0
    supervised = []
    for i, (row, example) in enumerate(zip(rows, examples, strict=True)):
        ids, labels = example.input_ids, example.labels
        n = prompt_length(example)
        assert ids[:2] == [BOS, USER], row.origin
        assert ids[n - 2 : n] == [END, ASSISTANT], row.origin  # the prompt ends "<|assistant|>\n"
        assert ids[-1] == END and ids.count(END) == 2, row.origin  # the user's and the answer's
        assert labels[:n] == [IGNORE_INDEX] * n, row.origin
        assert labels[n:] == ids[n:], row.origin  # every token after the prompt is learned
        assert EOS not in ids and SYSTEM not in ids, row.origin
        # The template's "\n" after <|user|>, <|end|> and <|assistant|> never reaches the ids.
        # (A "▁" may follow: the word-start mark of a text that begins with a digit.)
        followers = {ids[j + 1] for j in range(len(ids) - 1) if ids[j] in SWALLOWING}
        assert NEWLINE not in followers, row.origin
        supervised.append(ids[n:])
        if i % every == 0:
            messages = conversation(row, template)
            assert ids == chat_ids(tokenizer, messages), row.origin
            assert ids[:n] == chat_ids(tokenizer, messages[:-1], generation_prompt=True)
            answer = tokenizer.encode(template.answer(row) + "<|end|>", add_special_tokens=False)
            assert ids[n:] == answer, row.origin  # the answer's ids as if tokenised alone
    decoded = tokenizer.batch_decode(supervised)
    wanted = [template.answer(row) + "<|end|>" for row in rows]
    assert decoded == wanted


def test_medquad_rows(medquad):
    tokenizer, data, rows, examples = medquad
    report = data.report
    assert report.kind == "free_text"
    assert data.report.cleaning.rows_out == len(rows) > 12_000
    for part in report.tokenization.values():
        assert part.boundary_mismatches == part.truncated == part.zero_supervised == 0
    check_examples(tokenizer, rows, examples, every=5)
    # MedQuAD answers keep their line breaks: inside the answer a newline is a token.
    assert any(NEWLINE in e.input_ids[prompt_length(e) :] for e in examples)


def test_medquad_shortest_row_exact_ids(medquad):
    _, _, rows, examples = medquad
    ((row, example),) = [
        (r, e)
        for r, e in zip(rows, examples, strict=True)
        if r.origin.split(":")[0].endswith("2_GARD_QA/0006446.xml")
        and r.question == "Is Williams syndrome inherited ?"
    ]
    #          <s>  <|user|>  Is  ▁Will iams  ▁syndrome ▁inherited ▁?  <|end|> <|assistant|>
    prompt = [BOS, USER, 1317, 11648, 22898, 4871, 23878, 1577, END, ASSISTANT]
    answer = [1317, 11648, 22898, 4871, 23878, 29973, END]  # "Is Williams syndrome inherited?"
    assert row.answer == "Is Williams syndrome inherited?"
    assert example.input_ids == prompt + answer
    assert example.labels == [IGNORE_INDEX] * len(prompt) + answer


def test_medqa_rows(medqa, shared_data):
    tokenizer, _, rows, examples = medqa
    assert len(rows) == 50
    check_examples(tokenizer, rows, examples)
    # Row 2 of the file, rendered from the raw JSON without lorakit's template.
    lines = (shared_data / "medqa" / "us_4_options_sample.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    ((example,),) = [(e,) for r, e in zip(rows, examples, strict=True) if r.id == "2"]
    options = "\n".join(f"{k}. {v}" for k, v in sorted(record["options"].items()))
    assert record["answer_idx"] == "D" and record["answer"] == "Cross-linking of DNA"
    text = (
        f"<s><|user|>\n{record['question']}\n{options}<|end|>\n<|assistant|>\n"
        f"D. Cross-linking of DNA<|end|>\n"
    )
    assert example.input_ids == tokenizer.encode(text, add_special_tokens=False)
    n = prompt_length(example)
    assert example.input_ids[n:] == tokenizer.encode(
        "D. Cross-linking of DNA<|end|>", add_special_tokens=False
    )
    assert example.input_ids[n : n + 2] == [360, DOT] and example.input_ids[-1] == END  # ▁D .


def test_pubmedqa_rows_supervise_letter_decision_and_end(pubmedqa, shared_data):
    tokenizer, _, rows, examples = pubmedqa
    check_examples(tokenizer, rows, examples, every=3)
    raw = json.loads((shared_data / "pubmedqa" / "ori_pqal_train.json").read_text())
    #       ▁A      .    ▁yes        ▁B     .   ▁no        ▁C     .   ▁maybe
    ids = {"yes": [319, DOT, 4874], "no": [350, DOT, 694], "maybe": [315, DOT, 5505]}
    counts = {"yes": 0, "no": 0, "maybe": 0}
    for row, example in zip(rows, examples, strict=True):
        decision = raw[row.id]["final_decision"]
        assert example.input_ids[prompt_length(example) :] == [*ids[decision], END], row.origin
        counts[decision] += 1
        # The abstract's own line breaks reach the ids; only those after chat tokens do not.
        assert NEWLINE in example.input_ids
    assert counts == {"yes": 276, "no": 169, "maybe": 55}


def test_generation_prompt_is_the_training_prompt(pubmedqa, medqa):
    from lorakit.evaluate.generate import prompt_token_ids

    for tokenizer, _, rows, examples in (pubmedqa, medqa):
        prompts = prompt_token_ids(rows, tokenizer, QATemplate())
        assert prompts == [e.input_ids[: prompt_length(e)] for e in examples]


def test_truncation_cuts_the_answer_and_its_end_token(medquad, phi3):
    _, _, rows, examples = medquad
    row, full = max(zip(rows, examples, strict=True), key=lambda pair: len(pair[1]))
    assert len(full) > 4096
    (cut,), report = tokenize_rows([row], phi3, QATemplate(), TokenizeSpec(max_len=1024))
    n = prompt_length(cut)
    assert len(cut) == 1024 and cut.input_ids == full.input_ids[:1024]
    assert cut.labels[:n] == [IGNORE_INDEX] * n and cut.labels[n:] == cut.input_ids[n:]
    assert END not in cut.input_ids[n:]  # the cut answer never learns to stop
    assert (report.truncated, report.examples, report.length["max"]) == (1, 1, len(full))


def test_system_message_the_template_drops_is_an_error(phi3):
    # Phi-3's April 2024 template renders only user and assistant turns: a system message
    # would vanish without a word. lorakit refuses instead of training without it.
    row = QARow(question="What is a fever?", answer="A raised body temperature.")
    template = QATemplate(system="You are a careful medical assistant.")
    with pytest.raises(ConfigError, match="leaves the system message out") as info:
        tokenize_rows([row], phi3, template, TokenizeSpec())
    assert info.value.field == "tokenizer.chat_template"
    from lorakit.evaluate.generate import prompt_token_ids

    with pytest.raises(ConfigError, match="no system role"):
        prompt_token_ids([row], phi3, template)
    # Without the system message the same row tokenises.
    (example,), _ = tokenize_rows([row], phi3, QATemplate(), TokenizeSpec())
    assert example.input_ids[:3] == [BOS, USER, 1724]


def test_cli_inspect_loads_the_tokenizer_folder(shared_data, phi3_path):
    source = f"pubmedqa:{shared_data / 'pubmedqa' / 'ori_pqal_train.json'}"
    result = CliRunner().invoke(
        main, ["data", "inspect", source, "--tokenizer", str(phi3_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.output)["tokenization"]["all"]
    assert tokens["examples"] == 500 and tokens["boundary_mismatches"] == 0
    assert tokens["supervised_tokens"] == 4 * 500  # "<letter>. <decision><|end|>" each
    assert tokens["truncated"] == tokens["zero_supervised"] == 0


# --------------------------------------------------------------------------- the benchmark


@pytest.fixture(scope="module")
def train_throughput():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_lengths_are_lorakits_example_lengths(
    train_throughput, shared_data, phi3_path, medquad
):
    folder = shared_data / "medquad" / "8_NHLBI_QA_XML"
    data = train_throughput.tokenized_lengths(folder, phi3_path, max_len=256)
    from lorakit.data.pipeline import inspect_data

    spec = DataSpec(source=f"medquad:{folder}", tokenize=TokenizeSpec(max_len=256))
    report, examples = inspect_data(spec, load_phi3(phi3_path))
    assert data["lengths"] == [len(e) for e in examples]
    assert (data["rows_read"], data["examples"]) == (report.rows_read, len(examples))
    assert data["lengths"] == [min(n, 256) for n in data["untruncated"]]
    over = sum(n > 256 for n in data["untruncated"])
    assert data["truncated"] == report.tokenization["all"].truncated == over > 0
    # The uncut lengths are those of the MedQuAD examples checked above against Phi-3's own
    # apply_chat_template ids (same rows, same cleaning; all of MedQuAD there).
    checked = {e.origin: len(e) for e in medquad[3]}
    common = [
        (n, checked[e.origin])
        for n, e in zip(data["untruncated"], examples, strict=True)
        if e.origin in checked
    ]
    assert len(common) > 0.9 * len(examples)
    assert all(mine == theirs for mine, theirs in common)
    header = train_throughput.describe_lengths(data)
    assert str(phi3_path) in header and "cut to 256" in header and "chars/4" not in header


def test_benchmark_reads_lengths_files(train_throughput, tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text("[10, 20, 30]")
    data = train_throughput.read_lengths_file(plain)
    assert data["lengths"] == [10, 20, 30]
    assert train_throughput.describe_lengths(data) == "origin not recorded"
    bad = tmp_path / "bad.json"
    bad.write_text('{"lengths": []}')
    with pytest.raises(SystemExit, match="non-empty JSON list"):
        train_throughput.read_lengths_file(bad)


def test_benchmark_vs_seed_baseline(train_throughput):
    def result(name: str, rate: int | None = None) -> dict:
        if rate is None:
            return {"variant": name, "error": "exit code 1"}
        return {"variant": name, "real_tokens_per_s": rate}

    baseline, line = train_throughput.seed_baseline, train_throughput.baseline_line
    padded = [result("default", 9), result("seed+pad_to_multiple_of=64", 3), result("seed", 2)]
    assert baseline(padded) == padded[1]
    assert (
        line(baseline(padded)) == "vs seed: real tokens/s over variant seed+pad_to_multiple_of=64"
    )
    assert baseline([result("seed:sdpa", 4)])["variant"] == "seed:sdpa"
    failed = [result("seed"), result("seed+warmup=5", 3)]
    assert baseline(failed) == failed[0]  # the first one, though it failed
    assert line(baseline(failed)) == "vs seed: the baseline variant seed failed"
    assert baseline([result("default", 9), result("unsloth", 5)]) is None
    assert "no variant whose name starts with 'seed'" in line(None)
