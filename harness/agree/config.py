"""agree's config: the settings, the engine specs (`kind[:quant][:option=value...]`) turned into
engine configs at full precision, and the prompts (built-in or a file) with their tokenizer."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.config import BenchConfig, Output, Target
from harness.errors import HyperbenchError

# What "full precision" means for engine fields that exist in several engines; set on every
# engine that has the field, unless its spec or an engine flag sets it.
FULL_PRECISION = {"dtype": "float32", "kv_cache_type": "f32"}

# Built-in prompts: plain English, code, numbers, lists, dialogue; the first N are used.
PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "The three primary colors are",
    "To make a cup of tea, first",
    "Q: What is 12 times 7?\nA:",
    "The largest planet in our solar system is",
    "import numpy as np\n\narr = np.array([1, 2, 3])\nprint(",
    "Photosynthesis is the process by which plants",
    "Dear hiring manager, I am writing to apply for",
    "The French Revolution began in the year",
    "List of fruits: apple, banana,",
    "In machine learning, overfitting means that",
    "SELECT name, age FROM users WHERE",
    "The quick brown fox jumps over the lazy dog. The lazy dog",
    "User: Can you recommend a good book?\nAssistant:",
    "The human heart has four chambers:",
    "Monday, Tuesday, Wednesday,",
    "A haiku about autumn leaves:\n",
    "The speed of light in a vacuum is approximately",
    "for (int i = 0; i < n; i++) {",
    "Shakespeare wrote many plays, including",
    "The main ingredients of bread are",
    "Translate to French: 'Good morning, how are you?'\n",
    "The Great Wall of China was built to",
    "1, 1, 2, 3, 5, 8, 13,",
    "Here is a short summary of the theory of evolution:",
    "The mitochondria is known as the",
    "How to change a flat tire: Step 1.",
    "Mount Everest is located in",
    "<html>\n  <head>\n    <title>",
    "The difference between weather and climate is",
    "A good night's sleep helps the body",
    "The Pythagorean theorem states that",
    "Breaking news: scientists have discovered",
    "My favourite thing about summer is",
    "The periodic table organizes elements by",
    "git commit -m \"",
    "Recipe for pancakes. Ingredients:",
    "The moon orbits the Earth every",
    "Artificial intelligence can help doctors by",
    "In 1969, astronauts landed on",
    "The opposite of hot is cold, and the opposite of up is",
    "Once the meeting was over, she walked to the window and",
    "Rain forms when water vapour in the air",
    "Python lists are different from tuples because",
    "The best way to learn a new language is",
)


class AgreeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: int = Field(32, ge=1, description="Prompts every engine answers (the built-in set has 48).")
    max_tokens: int = Field(32, ge=1, description="Greedy tokens generated per prompt.")
    top_logprobs: int = Field(20, ge=1, le=20, description="K of the top-K next-token distributions "
                              "(vLLM caps it at 20).")
    dataset: Path | None = Field(None, description="JSONL prompt file instead of the built-in prompts.")
    seed: int = Field(0, description="Seed of the prompt sample drawn from --dataset.")
    reference: str | None = Field(None, description="The engine spec the others are measured against "
                                  "(default: the first of --engines).")


class AgreeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engines: list[str] = Field(description="Engine specs: kind[:quant][:option=value...].")
    engine: dict = Field(default_factory=dict, description="Engine options shared by every engine that has them.")
    agree: AgreeSettings = Field(default_factory=AgreeSettings)
    target: Target = Field(default_factory=Target)
    output: Output = Field(default_factory=Output)

    @field_validator("engines")
    @classmethod
    def _engines(cls, v):
        if len(v) < 2:
            raise ValueError("agree needs at least two engines (a reference and a variant)")
        if len(set(v)) != len(v):
            raise ValueError("an engine is listed twice")
        return v

    def reference(self) -> str:
        return self.agree.reference or self.engines[0]


def build_config(file_data: dict, cli_data: dict) -> AgreeConfig:
    from harness.config import build

    cfg = build(AgreeConfig, file_data, cli_data)
    if cfg.reference() not in cfg.engines:
        raise HyperbenchError(f"--reference {cfg.reference()} is not one of --engines ({', '.join(cfg.engines)})")
    if not cfg.target.launcher_class.can_restart:
        raise HyperbenchError("agree starts each engine itself: use --launcher process, docker or apptainer")
    return cfg


# ---------------------------------------------------------------------------- engines


_OPTION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=(.*)", re.S)


def parse_spec(spec: str) -> dict:
    """'llamacpp:q8_0:kv_cache_type=f16' -> {'kind': 'llamacpp', 'quant': 'q8_0', 'kv_cache_type': 'f16'}.

    Once an `option=` part starts, the ':'-parts after it that are not `option=` themselves are
    its value: 'hf:speculative=draft:tiny-llama' -> {'kind': 'hf', 'speculative': 'draft:tiny-llama'}
    (a quant goes before the options)."""
    kind, *parts = spec.strip().split(":")
    out: dict = {"kind": kind.strip()}
    key = None  # the option whose value is being read
    for part in parts:
        if m := _OPTION.fullmatch(part):
            key = m.group(1).replace("-", "_")
            out[key] = m.group(2).strip()
        elif key is not None:
            out[key] += ":" + part.strip()
        elif "quant" in out:
            raise HyperbenchError(f"engine spec {spec!r}: two quantizations ({out['quant']}, {part.strip()})")
        elif part.strip():
            out["quant"] = part.strip()
    return out


def engine_dicts(cfg: AgreeConfig) -> list[tuple[str, dict]]:
    """(label, engine config dict) per spec: its own settings > shared flags > full precision."""
    from backends import engine_class

    out, used = [], set()
    for spec in cfg.engines:
        own = parse_spec(spec)
        fields = engine_class(own["kind"]).model_fields
        for key in own:
            if key not in fields:
                raise HyperbenchError(f"engine spec {spec!r}: {own['kind']} has no option {key!r}")
        shared = {k: v for k, v in cfg.engine.items() if k in fields and k not in own}
        used |= shared.keys()
        defaults = {k: v for k, v in FULL_PRECISION.items() if k in fields and _allowed(fields[k], v)}
        out.append((spec, {**defaults, **shared, **own}))
    unused = set(cfg.engine) - used - {"kind"}
    if unused:
        raise HyperbenchError(f"--{sorted(unused)[0].replace('_', '-')} is an option of none of "
                              f"the engines compared ({', '.join(cfg.engines)})")
    return out


def _allowed(field, value) -> bool:
    import typing

    args = typing.get_args(field.annotation)
    return not args or value in args


def check_engines(cfg: AgreeConfig, engines: list[tuple[str, dict]]) -> list:
    """Every engine config valid (and installed, for the process launcher) before anything runs."""
    from backends import engine_class

    typed = []
    for label, e in engines:
        try:
            engine = BenchConfig(engine=e, target=cfg.target).engine_config()
            engine.check()
        except HyperbenchError as err:  # which spec it is, with the engine's own reason
            raise HyperbenchError(f"{label}: {err}") from None
        if cfg.target.launcher_class.uses_host_install:
            ok, why = engine_class(e["kind"]).installed()
            if not ok:
                raise HyperbenchError(f"engine {e['kind']} ({label}) is not installed here: {why}")
        typed.append(engine)
    return typed


# ---------------------------------------------------------------------------- prompts


def prompt_texts(s: AgreeSettings) -> list[str]:
    if s.dataset is not None:
        from harness.bench.workload import file_prompts

        return file_prompts(s.dataset, s.prompts, s.seed)
    if s.prompts > len(PROMPTS):
        raise HyperbenchError(f"--prompts {s.prompts}: the built-in set has {len(PROMPTS)}; "
                              "give --dataset FILE for more")
    return list(PROMPTS[: s.prompts])


def tokenizer_source(cfg: AgreeConfig) -> str:
    from harness.models import resolve_model

    if cfg.target.tokenizer:
        return cfg.target.tokenizer
    resolved = resolve_model(cfg.engine.get("model", "smollm2-135m"))
    if resolved.path is None:
        raise HyperbenchError(f"{resolved.gguf} has no tokenizer folder beside it: pass --tokenizer DIR "
                              "(the HF folder of the same model)")
    return str(resolved.path)
