"""Models by name: the registry (registry.py) turns a built-in name, a folder, a .gguf or a hub id
into a local model; tiny.py builds tiny-llama, staging.py stages smollm2-135m from a PyPI
package, hub.py downloads from the hub, cache.py is where builds land."""

from harness.models.cache import ResolvedModel, cache_dir
from harness.models.registry import BUILTIN_MODELS, resolve_model
from harness.models.staging import ensure_smollm2
from harness.models.tiny import build_tiny_llama, ensure_tiny_llama

__all__ = ["BUILTIN_MODELS", "ResolvedModel", "build_tiny_llama", "cache_dir", "ensure_smollm2",
           "ensure_tiny_llama", "resolve_model"]
