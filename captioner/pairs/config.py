"""Config and prompt file of ``captioner pairs``: :class:`PairsConfig`, the pairs prompt file
(:func:`load_pairs_prompts`) and the conversation that asks the writer for a short prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from captioner.backends import BackendConfig, HFBackendConfig, OpenAIBackendConfig
from captioner.backends.base import Message
from captioner.prompts import load_prompts
from densecap.config import StrictModel
from densecap.errors import ConfigError

__all__ = ["DEFAULT_WRITER", "PAIRS_SCHEMA", "PairsConfig", "build_request", "default_sft_system", "load_pairs_prompts"]

DEFAULT_WRITER = "Qwen/Qwen2.5-7B-Instruct"

# Keys of a pairs prompt file, with the placeholders each may use (``examples`` is checked apart).
PAIRS_SCHEMA: dict[str, dict[str, set[str]]] = {
    "pairs": {
        "system": {"min_words", "max_words"},
        "user": {"caption"},
        "retry": {"reason", "min_words", "max_words"},
        "sft_system": set(),
    }
}


# ---------------------------------------------------------------------------------------- config


class PairsConfig(StrictModel):
    """Config of ``captioner pairs`` (configs/pairs/*.yaml)."""

    writer: BackendConfig = Field(default_factory=lambda: HFBackendConfig(model=DEFAULT_WRITER))
    prompts: str = Field("pairs-v1", description="built-in prompt name or path to a prompt YAML file")
    batch_size: int = Field(16, ge=1, description="captions per model call (and per durable write)")
    max_new_tokens: int = Field(64, ge=1, description="token budget of one answer")
    min_words: int = Field(4, ge=1, description="fewest words of a short prompt")
    max_words: int = Field(20, ge=1, description="most words of a short prompt")
    max_retries: int = Field(2, ge=0, description="times a refused answer is asked again, with the reason")
    reject_first_sentence: bool = Field(
        True, description="refuse a prompt that is the caption's first sentence word for word (copied, not summarised)"
    )
    seed: int = Field(0, description="sampling seed of the writer (replaces writer.seed); greedy decoding needs none")
    retry_failed: bool = Field(False, description="on a rerun, try again the captions listed in PAIRS.errors.jsonl")
    fsync: bool = Field(True, description="fsync every line written (safe against power loss)")

    @model_validator(mode="after")
    def _check_window(self) -> PairsConfig:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")
        return self

    def writer_config(self) -> HFBackendConfig | OpenAIBackendConfig:
        """The writer's backend config with ``seed`` applied."""
        return self.writer.model_copy(update={"seed": self.seed})


# --------------------------------------------------------------------------------------- prompts


def load_pairs_prompts(name_or_path: str | Path = "pairs-v1") -> dict[str, Any]:
    """Load and check a pairs prompt file; errors name the file and the key."""
    data = load_prompts(name_or_path, schema=PAIRS_SCHEMA)
    where = data["_path"]
    p = data["pairs"]
    if "{caption}" not in p["user"]:
        raise ConfigError(f"{where}: pairs.user must contain {{caption}} (the dense caption to shorten)")
    examples = p.get("examples") or []
    if not isinstance(examples, list):
        raise ConfigError(f"{where}: pairs.examples must be a list of mappings with 'caption' and 'prompt'")
    for i, ex in enumerate(examples):
        ok = (
            isinstance(ex, dict)
            and set(ex) == {"caption", "prompt"}
            and all(isinstance(ex[k], str) and ex[k].strip() for k in ("caption", "prompt"))
        )
        if not ok:
            raise ConfigError(
                f"{where}: pairs.examples[{i}] must be a mapping with exactly the non-empty strings 'caption' and 'prompt'"
            )
    p["examples"] = examples
    return data


def default_sft_system(prompts: str | Path = "pairs-v1") -> str:
    """The expander's instruction (the system turn of SFT data) of a pairs prompt file."""
    return load_pairs_prompts(prompts)["pairs"]["sft_system"].strip()


def build_request(caption: str, prompts: dict[str, Any], min_words: int = 4, max_words: int = 20) -> list[Message]:
    """The conversation asking for the short prompt of ``caption``: system, few-shot turns, the caption."""
    p = prompts["pairs"]
    messages = [Message.system(p["system"].format(min_words=min_words, max_words=max_words).strip())]
    for ex in p["examples"]:
        messages.append(Message.user(p["user"].format(caption=ex["caption"].strip())))
        messages.append(Message.assistant(ex["prompt"].strip()))
    messages.append(Message.user(p["user"].format(caption=caption.strip())))
    return messages
