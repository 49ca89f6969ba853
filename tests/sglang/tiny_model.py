"""A tiny random-weight Llama for SGLang on a CPU: ``python tiny_model.py DIR`` (in .venv-sglang).

2 layers, hidden 64, vocabulary 1024; SGLang loads it with ``--load-format dummy`` (random
weights, no weight file). The tokenizer is a byte-level BPE trained here, offline, with the
``tokenizers`` package on a generated corpus, so nothing is downloaded. Any text encodes
(byte-level), and the same text always encodes to the same ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VOCAB_SIZE = 1024
SPECIAL = ["<unk>", "<s>", "</s>"]
WORDS = ("scheduler batch request token prefill decode rank stage pipeline micro queue "
         "trace span export model layer tensor kernel cache memory thread process server").split()


def corpus(lines: int = 2000) -> list[str]:
    """Deterministic text: no randomness, so the trained vocabulary is the same on every run."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] + str((i + j) % 10) for j in range(12))
            for i in range(lines)]


def write_tokenizer(directory: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 2048, "add_bos_token": False,
    }))
    return tokenizer.get_vocab_size()


def write_model(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(directory)
    assert vocab <= VOCAB_SIZE, vocab
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "head_dim": 32, "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": SPECIAL.index("<s>"), "eos_token_id": SPECIAL.index("</s>"),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}))
    return directory


if __name__ == "__main__":
    print(write_model(Path(sys.argv[1])))
