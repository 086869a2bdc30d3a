"""Model registry and offline staging (see registry.py)."""

from harness.models.registry import (BUILTIN_MODELS, ResolvedModel, build_tiny_llama, cache_dir,
                                     ensure_smollm2, ensure_tiny_llama, resolve_model)

__all__ = ["BUILTIN_MODELS", "ResolvedModel", "build_tiny_llama", "cache_dir", "ensure_smollm2",
           "ensure_tiny_llama", "resolve_model"]
