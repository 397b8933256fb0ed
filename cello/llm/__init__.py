"""Models and generation: tiny offline models and one generation interface over three backends.

    from cello.llm import SamplingParams, make_backend
    with make_backend("models/tiny") as backend:                  # or "http://127.0.0.1:8000/v1", "vllm:DIR"
        completions = backend.generate(conversations, SamplingParams(max_new_tokens=256))
        # completions[i] is the list of n completions of conversations[i]

    from cello.llm.tiny import build_tiny_model                     # `cello model tiny -o DIR`

Importing this package imports no torch, transformers or vllm; backends import them when built.
"""

from cello.config import BackendConfig, GenerationConfig, SamplingParams
from cello.llm.backends import BackendSpec, make_backend, parse_spec
from cello.llm.base import Backend, Conversation, Generation, Usage
from cello.llm.hf import TransformersBackend
from cello.llm.openai_http import OpenAIHTTPBackend
from cello.llm.vllm_engine import VLLMBackend

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendSpec",
    "Conversation",
    "Generation",
    "GenerationConfig",
    "OpenAIHTTPBackend",
    "SamplingParams",
    "TransformersBackend",
    "Usage",
    "VLLMBackend",
    "make_backend",
    "parse_spec",
]
