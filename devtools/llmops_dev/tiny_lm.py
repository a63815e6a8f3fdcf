"""A tiny, real-architecture causal language model for tests and local runs of the generation server.

Nothing is downloaded: the tokenizer (byte-level BPE) is trained here on text generated from the
word lists below, and the model is a randomly initialised ``LlamaForCausalLM`` small enough to
build in about a second and to generate hundreds of tokens a second on one CPU core. Its output
is gibberish, but it exercises everything a real model does: a KV cache, rotary positions, left
padding, multi-byte characters split over byte tokens, special tokens, a chat template.

The build is a pure function of ``seed`` (and of ``BUILDER_VERSION``): the same seed gives the
same weights and the same tokenizer, so tests can compare outputs across processes.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

# Bump when the output changes (vocabulary, sizes, template, ...): cached builds are then redone.
BUILDER_VERSION = 1
STAMP = "llmops-tiny-lm.json"

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IM_START, IM_END]
VOCAB_SIZE = 1536

# ChatML, as many instruction-tuned models use: the server's chat endpoint renders messages with it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "by",
    "at",
    "be",
    "this",
    "from",
    "are",
    "or",
    "have",
    "not",
    "but",
    "model",
    "token",
    "batch",
    "cache",
    "query",
    "answer",
    "document",
    "server",
    "request",
    "stream",
    "queue",
    "cluster",
    "node",
    "pod",
    "kubernetes",
    "operator",
    "embedding",
    "vector",
    "search",
    "retrieval",
    "generation",
    "context",
    "prompt",
    "latency",
    "throughput",
    "memory",
    "compute",
    "tensor",
    "layer",
    "attention",
    "head",
    "position",
    "rotary",
    "window",
    "padding",
    "sequence",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "river",
    "mountain",
    "forest",
    "city",
    "ocean",
    "light",
    "dark",
    "small",
    "large",
    "first",
    "second",
    "third",
    "last",
    "next",
    "early",
    "late",
    "fast",
    "slow",
    "open",
    "close",
    "read",
    "write",
    "send",
    "receive",
    "wait",
    "question",
    "what",
    "where",
    "when",
    "why",
    "how",
    "which",
    "who",
    "many",
    "much",
    "more",
    "most",
    "less",
    "least",
    "very",
    "only",
    "also",
]
# Accents, CJK, Cyrillic, Greek and emoji: multi-byte characters, some of which the BPE merges
# never learn, so that generation has to go through byte tokens that are half a character.
_UNICODE = [
    "café",
    "naïve",
    "façade",
    "Zürich",
    "résumé",
    "Ελλάδα",
    "привет",
    "мир",
    "日本語",
    "東京",
    "中文",
    "한국어",
    "🙂",
    "🚀",
    "✓",
    "→",
    "½",
    "ünïcødé",
]
# Made-up words from syllables: enough distinct pairs for the BPE trainer to fill its vocabulary.
_SYLLABLES = [c + v for c in "bklmnrstz" for v in "aeiou"] + ["sh", "th", "ch", "st", "tr", "pl", "gr"]


def corpus(seed: int) -> list[str]:
    """A few KB of deterministic pseudo-text: lines of words, numbers, punctuation and unicode."""
    rng = random.Random(seed)  # noqa: S311 (seeded pseudo-text, not secrets)
    lines = []
    for _ in range(600):
        words = [
            rng.choice(_WORDS) if rng.random() < 0.6 else "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4)))
            for _ in range(rng.randint(4, 14))
        ]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(_UNICODE))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] + rng.choice([".", "?", "!", ",", ":"]))
    return lines


def _build_tokenizer(seed: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: any text can be encoded
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    # Like Llama's tokenizers: a BOS token in front when add_special_tokens is on.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def _is_complete(out_dir: Path, seed: int) -> bool:
    stamp = out_dir / STAMP
    if not stamp.is_file():
        return False
    try:
        data = json.loads(stamp.read_text())
    except ValueError:
        return False
    return bool(data == {"builder_version": BUILDER_VERSION, "seed": seed})


def build_tiny_lm(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny model and its tokenizer to ``out_dir`` (``save_pretrained`` layout: load it with
    ``AutoModelForCausalLM`` and ``AutoTokenizer``) and return ``out_dir``.

    A directory that already holds a complete build of the same builder version and seed is
    returned at once. The build happens in a sibling temporary directory that is renamed into
    place, so an interrupted build never looks complete."""
    out_dir = Path(out_dir)
    if _is_complete(out_dir, seed):
        return out_dir

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    tokenizer = _build_tokenizer(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}  # type: ignore[attr-defined]
    eos_ids = [ids[EOS], ids[IM_END]]  # a chat turn ends at <|im_end|>, plain text at </s>
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as most current models have
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=eos_ids,
        pad_token_id=ids[PAD],
    )
    with torch.random.fork_rng(devices=[]):  # seeded, without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        # A random model gives every token a logit near 0, so sampling (and, rarely, greedy
        # decoding) would sometimes end a sequence at once. Tests need generations that run to
        # max_new_tokens or to a stop sequence: with zero rows the EOS logits are exactly 0, below
        # the largest of ~1500 random logits at every step, so greedy decoding never picks them.
        for eos in eos_ids:
            model.lm_head.weight[eos].zero_()
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=ids[BOS], eos_token_id=eos_ids, pad_token_id=ids[PAD], do_sample=False
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no "Writing model shards" bar
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
        (tmp / STAMP).write_text(json.dumps({"builder_version": BUILDER_VERSION, "seed": seed}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if not bars_were_off:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    return out_dir
