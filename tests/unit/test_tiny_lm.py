"""The tiny test model: a real Llama that the Auto classes load, a tokenizer trained here that
round-trips text, a deterministic build, and a cache that makes the second build free."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmops_dev.tiny_lm import STAMP, build_tiny_lm


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm", seed=0)


def test_loads_with_the_auto_classes_and_generates(built: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built)
    model = AutoModelForCausalLM.from_pretrained(built)
    assert model.config.model_type == "llama"
    assert 1000 <= len(tokenizer) <= 2000
    assert model.config.vocab_size == len(tokenizer)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tokenizer, name) is not None, name
    ids = tokenizer("The quick brown fox", return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == tokenizer.bos_token_id
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 12  # EOS never wins: all 12 tokens come
    assert not set(out[0, ids["input_ids"].shape[1] :].tolist()) & set(model.generation_config.eos_token_id)


def test_tokenizer_round_trips_text_and_has_a_chat_template(built: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built)
    for text in ("Hello, world!", "café naïve 日本語 🙂 → ½", "  spaces\tand\nnewlines  ", "kubernetes 1234"):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_same_seed_same_build_and_the_cache_is_reused(built: Path, tmp_path: Path) -> None:
    again = build_tiny_lm(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    other = build_tiny_lm(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (built / "model.safetensors").read_bytes()

    stamp_mtime = (again / STAMP).stat().st_mtime_ns
    assert build_tiny_lm(tmp_path / "again", seed=0) == tmp_path / "again"
    assert (again / STAMP).stat().st_mtime_ns == stamp_mtime  # reused, not rebuilt
    build_tiny_lm(tmp_path / "again", seed=1)  # another seed: rebuilt in place
    assert (again / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()


def test_logits_of_eos_are_exactly_zero(built: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(built)
    for eos in model.generation_config.eos_token_id:
        assert torch.count_nonzero(model.lm_head.weight[eos]) == 0
