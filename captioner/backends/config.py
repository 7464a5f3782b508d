"""The backends' config sections (``type: hf`` | ``type: openai``): data only, importable without
torch or httpx, and by the backend modules without importing the package that builds them."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from densecap.config import StrictModel

__all__ = ["BackendConfig", "HFBackendConfig", "OpenAIBackendConfig"]


class HFBackendConfig(StrictModel):
    """A local transformers model, loaded with ``from_pretrained``."""

    type: Literal["hf"] = "hf"
    model: str = Field(min_length=1, description="hub id or local path")
    revision: str | None = None
    kind: Literal["auto", "vlm", "llm"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    attn_implementation: str | None = None
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    max_image_side: int | None = Field(None, ge=1)


class OpenAIBackendConfig(StrictModel):
    """An OpenAI-compatible chat-completions server (vLLM, SGLang, LMDeploy, a hosted API)."""

    type: Literal["openai"] = "openai"
    model: str = Field(min_length=1)
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (never "
                             "written anywhere; redacted from every error and log line)")
    max_in_flight: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0.0, le=3600.0, description=(
        "deadline of one request attempt, all of it: connect, send and the whole reply (a server that "
        "sends slowly is cut off here, not only one that goes silent). One request, retries included, takes "
        "at most (max_retries + 1) * timeout_s + max_retries * backoff_max_s (worst_case_s); a generate() "
        "call of N conversations at most ceil(N / max_in_flight) times that"))
    max_retries: int = Field(5, ge=0, le=20, description=(
        "further attempts after a 429, 5xx, timeout or connection error (401/403 and other 4xx: none)"))
    backoff_base_s: float = Field(1.0, ge=0.0, description="first backoff cap; doubles per attempt, full jitter")
    backoff_max_s: float = Field(30.0, ge=0.0, le=600.0, description=(
        "longest wait between attempts (a server's Retry-After included)"))
    max_reply_bytes: int | None = Field(None, ge=1024, description=(
        "largest reply read; reading stops beyond it and the request fails (not retried). Default: 64 bytes "
        "per token of max_new_tokens + 64 KiB. The text handed back is at most 16 characters per token of "
        "max_new_tokens: a longer answer (a server that ignores max_tokens) is cut there"))
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = 0
    jpeg_quality: int = Field(90, ge=1, le=100)
    max_image_side: int | None = Field(1024, ge=1)
    check_images: bool = Field(True, description=(
        "before the first request with images, check that the server passes them to the model: the same "
        "1-token request with and without an image must differ in prompt tokens (a text-only model that "
        "silently drops images is an error naming the model and server, not hours of captions made blind)"))

    @property
    def worst_case_s(self) -> float:
        """Longest one request can take, retries and backoff included:
        ``(max_retries + 1) * timeout_s + max_retries * backoff_max_s``."""
        return (self.max_retries + 1) * self.timeout_s + self.max_retries * self.backoff_max_s


BackendConfig = Annotated[Union[HFBackendConfig, OpenAIBackendConfig], Field(discriminator="type")]
