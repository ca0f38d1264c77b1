"""Test helpers: a tiny Phi-3 checkpoint built locally, and an isolated plugin manager.

Nothing here downloads anything. :func:`build_tiny_phi3` trains a small byte-fallback BPE
tokenizer on an embedded corpus of plain health text, gives it Phi-3's special tokens and chat
template, builds a two-layer :class:`~transformers.Phi3ForCausalLM` with random weights and
saves both with ``save_pretrained``. Code under test then loads the folder through
``AutoTokenizer.from_pretrained`` and ``AutoModelForCausalLM.from_pretrained``, the same path a
real checkpoint such as ``microsoft/Phi-3-mini-4k-instruct`` takes::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from lorakit.testing import tiny_phi3_path

    path = tiny_phi3_path()  # built once, then cached
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)

The checkpoint mirrors the real one where it matters to the data and training code:

* the tokenizer class is ``LlamaTokenizer`` (SentencePiece-style BPE with ``▁`` for spaces and
  ``<0x..>`` byte fallback, so any text, including non-ASCII, encodes without ``<unk>``);
* ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``; the 11 chat tokens ``<|endoftext|>``,
  ``<|assistant|>``, ``<|placeholder1|>`` ... ``<|user|>`` follow the base vocabulary in
  Phi-3's order, and all but ``<|endoftext|>`` strip the whitespace to their right;
* ``<s>`` is added at the start of every encoded text; eos is ``<|endoftext|>`` and pad is
  ``<|endoftext|>`` too, as the real checkpoint ships it (pad equal to a stop id);
* the chat template is Phi-3-mini-4k-instruct's; ``generation_config.json`` stops on
  ``<|endoftext|>``, ``<|assistant|>`` and ``<|end|>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit import __version__

if TYPE_CHECKING:
    import pluggy

__all__ = [
    "LLAMA3_CHAT_TEMPLATE",
    "PHI3_CHAT_TEMPLATE",
    "PHI3_SPECIAL_TOKENS",
    "QWEN2_CHAT_TEMPLATE",
    "TINY_FAMILIES",
    "build_tiny_family",
    "build_tiny_phi3",
    "isolated_plugin_manager",
    "tiny_model_path",
    "tiny_phi3_path",
]

PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|assistant|>\n' }}"
    "{% else %}"
    "{{ eos_token }}"
    "{% endif %}"
)
"""Phi-3-mini-4k-instruct's chat template (``tokenizer_config.json``), verbatim."""

PHI3_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
)
"""Phi-3's added chat tokens, in id order (32000 ... 32010 in the real checkpoint)."""

_BASE_SPECIALS = ("<unk>", "<s>", "</s>")
_STOP_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|end|>")
_VOCAB_SIZE = 3000  # the base vocabulary the trainer aims for (the corpus may give fewer)

_CORPUS = """\
Diabetes is a chronic disease that occurs when the pancreas does not produce enough insulin, or
when the body cannot effectively use the insulin it produces. Insulin is a hormone that regulates
blood sugar. Raised blood sugar, called hyperglycemia, is a common effect of uncontrolled diabetes
and over time leads to serious damage to the nerves, the kidneys, the eyes and the blood vessels.
Type 1 diabetes is characterized by deficient insulin production and requires daily
administration of insulin. Type 2 diabetes results from the body's ineffective use of insulin.
Most people with type 2 diabetes are overweight or do not get enough physical activity.
Symptoms of diabetes include excessive excretion of urine, thirst, constant hunger, weight loss,
vision changes and fatigue. These symptoms may occur suddenly.

High blood pressure, also called hypertension, is a condition in which the force of the blood
against the artery walls is too high. Blood pressure is measured in millimeters of mercury and
written as two numbers: the systolic pressure over the diastolic pressure. Many people with high
blood pressure have no symptoms at all, which is why it is sometimes called a silent killer.
Untreated hypertension raises the risk of heart attack, stroke, heart failure and kidney disease.
Treatment includes a diet low in salt, regular exercise, limiting alcohol, not smoking, and
medicines such as diuretics, ACE inhibitors, angiotensin receptor blockers and calcium channel
blockers.

Asthma is a long-term disease of the airways of the lungs. The airways become inflamed and
narrow, which causes wheezing, shortness of breath, chest tightness and coughing. Symptoms often
get worse at night or early in the morning. Common triggers include dust mites, pollen, mold,
animal dander, tobacco smoke, air pollution, cold air, exercise and respiratory infections.
Inhaled corticosteroids reduce inflammation and prevent attacks; short-acting bronchodilators
relieve symptoms quickly during an attack.

Influenza, or the flu, is a contagious respiratory illness caused by influenza viruses. Symptoms
include fever, chills, cough, sore throat, runny or stuffy nose, muscle or body aches, headaches
and fatigue. Most people recover within a few days to less than two weeks, but some develop
complications such as pneumonia. Older adults, young children, pregnant women and people with
chronic medical conditions are at higher risk. The best way to prevent the flu is to get a flu
vaccine every year. Antiviral drugs can shorten the illness when started early.

Anemia is a condition in which the blood does not have enough healthy red blood cells or
hemoglobin to carry adequate oxygen to the tissues. Iron deficiency is the most common cause.
Other causes include vitamin B12 or folate deficiency, chronic disease, blood loss and inherited
disorders such as sickle cell disease and thalassemia. People with anemia may feel tired and
weak, look pale, and have shortness of breath, dizziness, cold hands and feet, or an irregular
heartbeat. Treatment depends on the cause and may include iron supplements or changes in diet.

Osteoporosis is a disease that weakens bones, making them fragile and more likely to break. It
develops slowly over several years and is often only diagnosed when a fall or sudden impact
causes a fracture. The most common injuries are broken wrists, broken hips and broken spinal
bones. Getting enough calcium and vitamin D, staying active with weight-bearing exercise, and
avoiding smoking help keep bones healthy. A bone density scan measures bone strength.

Pneumonia is an infection that inflames the air sacs in one or both lungs. The air sacs may fill
with fluid or pus, causing cough with phlegm, fever, chills and difficulty breathing. Bacteria,
viruses and fungi can cause pneumonia. It is most serious for infants and young children, people
older than sixty-five, and people with health problems or weakened immune systems. Bacterial
pneumonia is treated with antibiotics; vaccines help prevent some types.

Migraine is a neurological condition that causes intense, throbbing headaches, usually on one
side of the head. An attack can last from four hours to three days. Many people also have nausea,
vomiting, and sensitivity to light and sound. Some people have a warning symptom known as an aura,
such as flashes of light or blind spots, before or with the headache. Pain relievers, triptans
and preventive medicines can help, as can avoiding known triggers such as lack of sleep.

Chronic kidney disease means that the kidneys are damaged and cannot filter blood the way they
should. The main risk factors are diabetes, high blood pressure, heart disease and a family
history of kidney failure. Early kidney disease usually has no symptoms. Blood and urine tests
check how well the kidneys work. Controlling blood sugar and blood pressure slows the damage. If
the kidneys fail, treatment with dialysis or a kidney transplant is needed.

Heart failure is a condition in which the heart muscle does not pump blood as well as it should.
Coronary artery disease and high blood pressure gradually leave the heart too weak or stiff to
fill and pump efficiently. Signs include shortness of breath, fatigue, swelling in the legs,
ankles and feet, rapid or irregular heartbeat, and persistent cough. Medicines, a low sodium
diet, and sometimes devices or surgery improve symptoms and help people live longer.

Depression is a common and serious mood disorder. It causes persistent feelings of sadness and
loss of interest in activities once enjoyed, and it can affect how a person feels, thinks, sleeps,
eats and works. Depression is treatable: psychotherapy, antidepressant medicines, or both help
most people. Anyone with thoughts of self-harm should seek help from a doctor or an emergency
service right away.

Vaccines train the immune system to recognize and fight specific germs. They contain weakened or
inactivated parts of a particular organism, or instructions to make a harmless protein, that
trigger an immune response in the body. Vaccination protects the person who gets the vaccine and
helps protect the community. Common side effects are mild, such as a sore arm or a low fever, and
go away within a few days.

Antibiotics are medicines that fight infections caused by bacteria. They do not work against
viruses, such as those that cause colds and the flu. Taking antibiotics when they are not needed
contributes to antibiotic resistance, when bacteria change and the medicines no longer work
against them. Always take antibiotics exactly as prescribed and finish the full course.

Cholesterol is a waxy substance found in the blood. The body needs cholesterol to build healthy
cells, but high levels of low-density lipoprotein, or LDL, increase the risk of heart disease.
High-density lipoprotein, or HDL, carries cholesterol to the liver for removal. A blood test
called a lipid panel measures cholesterol and triglycerides. Diet, exercise, weight control and
statin medicines lower LDL cholesterol.

Stroke happens when the blood supply to part of the brain is interrupted or reduced, preventing
brain tissue from getting oxygen and nutrients. Brain cells begin to die in minutes. Warning signs
include sudden numbness or weakness of the face, arm or leg, especially on one side of the body,
confusion, trouble speaking, trouble seeing, trouble walking and a severe headache. A stroke is a
medical emergency: call for help immediately, because prompt treatment reduces brain damage.

Hepatitis means inflammation of the liver. Viral hepatitis is caused by hepatitis viruses A, B, C,
D and E. Hepatitis A spreads through contaminated food or water; hepatitis B and C spread through
blood and other body fluids. Chronic hepatitis B and C can lead to cirrhosis and liver cancer.
Vaccines prevent hepatitis A and B, and antiviral medicines can cure most cases of hepatitis C.

Arthritis is inflammation of one or more joints, causing pain and stiffness that usually worsen
with age. Osteoarthritis causes cartilage to break down. Rheumatoid arthritis is an autoimmune
disorder in which the immune system attacks the lining of the joints. Exercise, physical therapy,
weight loss, pain relievers and anti-inflammatory drugs relieve symptoms.

Dosage and safety: the recommended dose of acetaminophen for adults is usually 500 to 1000 mg
every 4 to 6 hours, not more than 3000 to 4000 mg in 24 hours. Ibuprofen, aspirin and naproxen
are nonsteroidal anti-inflammatory drugs (NSAIDs). Tell your doctor about all prescription and
over-the-counter medicines, vitamins and herbal supplements you take, such as St. John's wort,
ginkgo, garlic or echinacea, because they may interact with other drugs. Store medicines at room
temperature, away from heat, moisture and direct light, and out of the reach of children.

What is the outlook? The prognosis depends on the cause, the stage at diagnosis and the response
to treatment. How many people are affected? About 1 in 10 adults has the condition. Who should
get tested? Adults aged 45 or older, and younger adults with risk factors, should ask their
health care provider about screening. What are the genetic changes related to this condition?
Mutations in a single gene, inherited in an autosomal dominant or autosomal recessive pattern,
cause some rare diseases; genetic testing and counseling can help families understand the risk.
How is it diagnosed? A physical exam, a medical history, blood tests, imaging such as X-ray,
CT scan, MRI or ultrasound, and sometimes a biopsy confirm the diagnosis.

You are a careful medical assistant. Answer the question clearly and accurately, and say when a
patient should see a doctor. Which vitamin deficiency causes scurvy? Vitamin C. Which organ makes
insulin? The pancreas. Is a fever above 38 degrees Celsius normal? No: a normal body temperature is
about 37 degrees, and a temperature above normal is a fever. Does exercise lower blood pressure?
Yes, regular exercise lowers blood pressure in most adults. Can children take aspirin? Children and
teenagers should not take aspirin because of the risk of Reye syndrome. Who is at risk of type 2
diabetes? People who are overweight, inactive, older than 45, or have a family history. Are these
symptoms serious? Sudden chest pain, trouble breathing and confusion need urgent care.

Cancer is a disease in which some of the body's cells grow uncontrollably and spread to other parts
of the body. Tumors can be benign or malignant. Breast cancer, lung cancer, prostate cancer and
colorectal cancer are among the most common types. Risk factors include smoking, alcohol, obesity,
radiation and certain infections. Screening tests such as mammograms, colonoscopy and the Pap test
find some cancers early, when treatment is more likely to work. Treatment may include surgery,
chemotherapy, radiation therapy, immunotherapy, targeted therapy and hormone therapy. Clinical
trials are research studies that test new treatments in people.

The thyroid gland makes hormones that control metabolism. Hypothyroidism means the gland is
underactive; symptoms include tiredness, weight gain, feeling cold, dry skin and constipation.
Hyperthyroidism means the gland is overactive and causes weight loss, a fast heartbeat, nervousness
and sweating. A blood test measures thyroid stimulating hormone (TSH). Kidney stones are hard
deposits of minerals and salts that form inside the kidneys; drinking plenty of water helps prevent
them. Celiac disease is an immune reaction to eating gluten, a protein found in wheat, barley and
rye. Glaucoma is a group of eye conditions that damage the optic nerve, often because of high
pressure in the eye, and is a leading cause of blindness in people over sixty.

Symptoms - frequency: 80%-99% of people have fatigue; 30%-79% have fever; 5%-29% have a rash.
Treatment options: (1) lifestyle changes; (2) medication; (3) surgery. Call 911 or go to the
nearest emergency room if you have chest pain, trouble breathing, or fainting.
"""


def _train_base_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train the BPE vocabulary and merges of the tiny tokenizer on :data:`_CORPUS`.

    Ids follow Llama/Phi-3's layout: ``<unk>``, ``<s>``, ``</s>``, then the 256 byte-fallback
    tokens ``<0x00>`` ... ``<0xFF>``, then every printable ASCII character (space as ``▁``),
    then the learned merges.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    alphabet = [c for c in string.printable if c not in string.whitespace] + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        initial_alphabet=alphabet,
        special_tokens=[],
        show_progress=False,
    )
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Words start with "▁" as in SentencePiece; merges never cross a word or a line.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    lines = [line.strip() for line in _CORPUS.splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]

    vocab: dict[str, int] = {}
    for token in (*_BASE_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *alphabet):
        vocab.setdefault(token, len(vocab))
    for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [
        tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in model["merges"]
    ]
    return vocab, [(a, b) for a, b in merges]


def _build_tokenizer() -> Any:
    """A transformers ``LlamaTokenizer`` configured like Phi-3-mini-4k-instruct's."""
    from tokenizers import AddedToken, normalizers
    from transformers import LlamaTokenizer

    vocab, merges = _train_base_vocab()
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    # Phi-3's tokenizer.json keeps the older Llama pipeline: a normalizer that puts "▁" before
    # every piece of text between special tokens and turns spaces into "▁", and no
    # pre-tokenizer. transformers loads a phi3 checkpoint's tokenizer.json as it is.
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.pre_tokenizer = None
    # As in the real checkpoint, "</s>" is an added token that is not special.
    tokenizer.add_tokens([AddedToken("</s>", special=False, normalized=False, rstrip=True)])
    tokenizer.add_tokens(
        [
            AddedToken(
                token,
                special=True,
                normalized=False,
                lstrip=False,
                rstrip=token != "<|endoftext|>",
                single_word=False,
            )
            for token in PHI3_SPECIAL_TOKENS
        ],
        special_tokens=True,
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    return tokenizer


def build_tiny_phi3(directory: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny Phi-3 checkpoint (model, tokenizer, generation config) in ``directory``.

    The model is a :class:`~transformers.Phi3ForCausalLM` with hidden size 64, 2 layers,
    4 attention heads, intermediate size 128 and one embedding row per token of the tokenizer,
    initialised with random weights from ``seed``. Building takes a few seconds on a CPU and
    never touches the network.

    Args:
        directory: the folder to write; created if missing. Existing files of the same names
            are overwritten.
        seed: the seed of the random weights; the tokenizer does not depend on it.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`, ready for ``from_pretrained``.
    """
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    tokenizer.save_pretrained(path)

    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in PHI3_SPECIAL_TOKENS}
    bos_id = int(tokenizer.bos_token_id)
    eot_id = ids["<|endoftext|>"]
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        sliding_window=2047,
        bos_token_id=bos_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        tie_word_embeddings=False,
        # Wide enough that a 64-wide model's logits are not near-uniform, so a short
        # LoRA run visibly lowers the loss.
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=[ids[token] for token in _STOP_TOKENS],
        pad_token_id=eot_id,
    )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a library prints nothing
    try:
        model.save_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return path


QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
"""Qwen2.5-Instruct's ChatML template without its tool-calling branches (its default system
message kept)."""

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)
"""Llama-3.2-Instruct's header format without its date and tool-calling preamble."""

TINY_FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2": {
        # As in Qwen2.5: <|endoftext|> (pad and a stop token), ChatML, and unused pads.
        "specials": (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_pad|>",
            "<|fim_pad|>",
        ),
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "stops": ("<|im_end|>", "<|endoftext|>"),
        "template": QWEN2_CHAT_TEMPLATE,
    },
    "llama3": {
        "specials": (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",  # Llama 3.2's documented pad for fine-tuning
            "<|reserved_special_token_0|>",
        ),
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": None,  # Llama 3 ships no pad token; lorakit picks one that is not a stop token
        "stops": ("<|eot_id|>", "<|end_of_text|>"),
        "template": LLAMA3_CHAT_TEMPLATE,
    },
}
"""The tiny checkpoints of other families: special tokens, bos/eos/pad and chat template as
their instruct releases ship them (Qwen2.5-1.5B-Instruct, Llama-3.2-1B-Instruct)."""


def _byte_level_tokenizer(family: str) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style, as Qwen2 and Llama 3 use) trained on the
    embedded corpus, with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = TINY_FAMILIES[family]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(spec["specials"]),
        show_progress=False,
    )
    lines = [line.strip() for line in _CORPUS.splitlines() if line.strip()]
    backend.train_from_iterator(lines, trainer=trainer)
    if spec["bos"] is not None:  # Llama 3 adds <|begin_of_text|> to every encoded text
        bos = spec["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, backend.token_to_id(bos))],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tokenizer.chat_template = spec["template"]
    return tokenizer


def build_tiny_family(family: str, directory: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny checkpoint of another family (``qwen2`` or ``llama3``) in ``directory``:
    its tokenizer, a two-layer model of its architecture (hidden 64, grouped-query attention,
    tied embeddings as the small instruct releases have) and its generation config."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny {family!r}; families: {', '.join(TINY_FAMILIES)}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _byte_level_tokenizer(family)
    tokenizer.save_pretrained(path)
    spec = TINY_FAMILIES[family]
    stops = [int(tokenizer.convert_tokens_to_ids(t)) for t in spec["stops"]]
    bos = None if spec["bos"] is None else int(tokenizer.convert_tokens_to_ids(spec["bos"]))
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "initializer_range": 0.2,
        "bos_token_id": bos,
        "eos_token_id": stops[0],
    }
    config: Any = Qwen2Config(**common) if family == "qwen2" else LlamaConfig(**common)
    cls: Any = Qwen2ForCausalLM if family == "qwen2" else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=stops)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return path


def tiny_model_path(name: str) -> Path:
    """A built-in tiny checkpoint by name (``tiny-phi3``, ``tiny-qwen2``, ``tiny-llama3``),
    built once and cached like :func:`tiny_phi3_path`."""
    if name == "tiny-phi3":
        return tiny_phi3_path()
    family = name.removeprefix("tiny-")
    if family not in TINY_FAMILIES:
        raise ValueError(f"no built-in {name!r}")
    return _cached(f"{name}-{__version__}-{_fingerprint()}", lambda p: build_tiny_family(family, p))


def _cached(folder: str, build: Any) -> Path:
    final = cache_dir() / folder
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process renamed its complete build into place first: use that one.
            if not (final / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fingerprint() -> str:
    """A short hash of this module's source, so a changed builder never reuses an old cache."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def cache_dir() -> Path:
    """The folder lorakit caches built test artefacts in.

    ``$LORAKIT_CACHE`` when set, else ``~/.cache/lorakit``.
    """
    root = os.environ.get("LORAKIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lorakit"


def tiny_phi3_path() -> Path:
    """The tiny Phi-3 checkpoint of :func:`build_tiny_phi3`, built once and cached.

    It lives in ``<cache>/tiny-phi3-<lorakit version>-<builder hash>`` (see :func:`cache_dir`).
    The checkpoint is built in a temporary folder beside it and renamed into place, so a
    half-built folder is never used, and concurrent callers (parallel test workers) all end up
    with the same complete folder.

    Returns:
        The cached checkpoint folder.
    """
    return _cached(f"tiny-phi3-{__version__}-{_fingerprint()}", build_tiny_phi3)


def isolated_plugin_manager(*plugins: object) -> pluggy.PluginManager:
    """A plugin manager with the built-in plugins and ``plugins`` only.

    Installed entry points and ``LORAKIT_DISABLE_PLUGINS`` are ignored, so a test sees the
    same plugins on every machine.

    Args:
        plugins: plugin objects or modules to register besides the built-ins.
    """
    from lorakit.plugins import make_plugin_manager

    return make_plugin_manager(entry_points=False, plugins=plugins, disabled=())


PHI3_MINI_CONFIG: dict[str, Any] = {
    "vocab_size": 32064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "original_max_position_embeddings": 4096,
    "sliding_window": 2047,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 32000,
    "pad_token_id": 32000,
    "tie_word_embeddings": False,
}
"""Phi-3-mini-4k-instruct's architecture (``config.json``), for full-size models with random
weights in GPU tests and benchmarks: ``Phi3ForCausalLM(Phi3Config(**PHI3_MINI_CONFIG))``."""
