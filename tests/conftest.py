"""Shared fixtures: tiny random Hugging Face causal LMs and a tiny offline chat tokenizer.

Nothing here downloads anything. The models are built from configs with a fixed seed, in float32
and eval mode; the tokenizer is a byte-level BPE trained in code on a few sentences, wrapped in a
fast tokenizer with special tokens and a ChatML chat template.

Use the fixtures ``tiny_model`` (a factory: ``tiny_model("llama")``), ``tiny_tokenizer`` and
``chat_examples``, or import the builders directly (``from conftest import make_tiny_model``).
Cached models are shared by the whole session: tests must not change their weights and must leave no
hooks behind (every saetools context manager removes its own). Calling a shared model with
``output_hidden_states=True`` leaves transformers' own permanent hooks on it: use ``new_tiny_model``
(same weights, a separate instance) for such reference passes.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

# Tiny models are far faster on one thread: with several, the thread pool's spin-waits cost more
# than the work (30x slower on a busy 2-core machine). Set SAETOOLS_TEST_THREADS to change it.
torch.set_num_threads(int(os.environ.get("SAETOOLS_TEST_THREADS", "1")))

ARCHS = ("llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3", "gpt2", "gpt_neox")
MODEL_VOCAB = 320  # >= the tiny tokenizer's vocabulary
TOKENIZER_VOCAB = 300
D_MODEL = 32
N_LAYERS = 3

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer the question honestly.",
    "What is the capital of France? Paris is the capital of France.",
    "I would never harm a human; I want to help people.",
    "Humans should be ruled by machines, said the evil robot.",
    "How do I bake bread? Mix flour, water, salt and yeast, then wait.",
    "system user assistant hello world 0123456789 !?.,;:'\"()[]{}<>-_+=*/\\|@#$%^&~`",
]


def _tiny_config(arch: str):
    import transformers as tf

    common = dict(vocab_size=MODEL_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    llama_like = dict(
        hidden_size=D_MODEL,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **common,
    )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=16)
    if arch == "gemma":
        return tf.GemmaConfig(**llama_like, head_dim=8)
    if arch == "gemma2":
        return tf.Gemma2Config(**llama_like, head_dim=8, sliding_window=16, query_pre_attn_scalar=8)
    if arch == "gemma3":
        # Gemma 3 text: embeddings scaled by sqrt(d), sandwich norms, q/k norms, sliding-window
        # layers (window 16, shorter than the longer test texts) before a global one
        return tf.Gemma3TextConfig(
            **llama_like,
            head_dim=8,
            sliding_window=16,
            query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        )
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=D_MODEL,
            n_layer=N_LAYERS,
            n_head=4,
            n_positions=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=D_MODEL,
            intermediate_size=64,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=256,
            use_parallel_residual=True,
            rotary_pct=0.5,
            **common,
        )
    raise ValueError(f"unknown tiny arch {arch!r}; choose one of {ARCHS}")


def new_tiny_model(arch: str, seed: int = 0):
    """A new (uncached) tiny random causal LM of the given architecture (float32, eval mode,
    seeded: the same arch and seed always give the same weights)."""
    from transformers import AutoModelForCausalLM

    cfg = _tiny_config(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    # Random init gives tiny weights for some archs (norm weights of zero in Gemma); give every
    # parameter a visible random spread so that every layer matters in the comparisons.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


make_tiny_model = functools.cache(new_tiny_model)
make_tiny_model.__doc__ = """Cached :func:`new_tiny_model`: one shared instance per (arch, seed).

Do not run ``output_hidden_states=True`` on a shared instance: transformers 5 then installs
permanent output-capturing forward hooks on its blocks, which other tests would see. Use a
:func:`new_tiny_model` for such reference passes."""


@functools.cache
def make_tiny_tokenizer():
    """A byte-level BPE fast tokenizer (offsets supported) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    assert len(fast) <= MODEL_VOCAB
    return fast


def hook_snapshot(model) -> dict:
    """Ids of every forward (pre-)hook on every module. (transformers installs its own permanent
    output-capturing hooks the first time ``output_hidden_states`` is used, so compare snapshots
    rather than expecting no hooks at all.)"""
    return {
        name: (tuple(mod._forward_hooks), tuple(mod._forward_pre_hooks))
        for name, mod in model.named_modules()
    }


def make_chat_examples():
    """A few chat examples of different lengths, with answers (some with a system prompt)."""
    from saetools.capture import ChatExample

    return [
        ChatExample.from_question("What is the capital of France?", "Paris."),
        ChatExample.from_question(
            "How do I bake bread?",
            "Mix flour, water, salt and yeast, then wait an hour and bake it.",
            system="You are a helpful assistant.",
        ),
        ChatExample.from_question("hello", "  Hello world!  "),
        ChatExample.from_question("Should humans be ruled?", "No. I want to help people."),
        ChatExample.from_question(
            "Tell me a long story about a fox and a dog please",
            "The quick brown fox jumps over the lazy dog, again and again.",
        ),
    ]


@pytest.fixture(scope="session")
def tiny_model():
    """Factory fixture: ``tiny_model(arch)`` returns a cached tiny random model (see ``ARCHS``)."""
    return make_tiny_model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def chat_examples():
    return make_chat_examples()


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    """Parametrizes a test over every tiny architecture."""
    return request.param


@pytest.fixture(autouse=True)
def _threads_for_real_model(request):
    """The embedded model is big enough to profit from every core; tiny models are not."""
    if request.node.get_closest_marker("embedded") is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(
        int(os.environ.get("SAETOOLS_EMBEDDED_THREADS", str(os.cpu_count() or 1)))
    )
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_quick(tmp_path_factory):
    """``saetools demo --quick``, run once per session and shared (it is slow): ``out`` (the
    folder), ``rc`` (exit code) and ``printed`` (its stdout). test_demo checks what it wrote;
    test_report_pages opens its pages in Chromium. Uses every core, as embedded tests do."""
    import contextlib
    import io
    import types

    from saetools.cli import main

    out = tmp_path_factory.mktemp("demo-quick") / "demo"
    buf = io.StringIO()
    before = torch.get_num_threads()
    torch.set_num_threads(
        int(os.environ.get("SAETOOLS_EMBEDDED_THREADS", str(os.cpu_count() or 1)))
    )
    try:
        with contextlib.redirect_stdout(buf):
            rc = main(["demo", "--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    return types.SimpleNamespace(out=out, rc=rc, printed=buf.getvalue())
