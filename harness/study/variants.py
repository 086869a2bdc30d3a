"""Variant specs (`hf:int8`, `llamacpp:q8_0:kv_cache_type=f16`) and what each variant can run.

The spec syntax is agree's (harness.agree.config.parse_spec), so a variant means the same in both.
Unlike agree, a study runs a variant as the user would deploy it: its own spec, then the shared
engine flags, then the engine's defaults (no full-precision override).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HyperbenchError
from harness.results import slug


@dataclass
class Variant:
    spec: str  # as the user wrote it: the variant's label everywhere
    engine: dict  # engine config dict: spec > shared flags
    prompt_logprobs: bool  # can it score loglikelihood tasks (echo + logprobs)?

    @property
    def name(self) -> str:
        """Folder-safe name: 'llamacpp:q8_0' -> 'llamacpp-q8_0'."""
        return slug(self.spec.replace(":", "-").replace("=", "-"))


def parse_variants(specs: list[str], shared: dict, launcher) -> list[Variant]:
    """Every variant valid (known engine, its options, installed where the launcher (its class)
    runs engines from this machine's install)
    before any cell runs; an option of no variant is an error, not silently dropped."""
    from backends import engine_class
    from harness.agree.config import parse_spec
    from harness.config import BenchConfig

    if not specs:
        raise HyperbenchError("no variants to study: give --variants, e.g. hf,hf:int8,llamacpp:q8_0")
    out, used = [], set()
    for spec in specs:
        own = parse_spec(spec)
        try:
            cls = engine_class(own["kind"])
        except HyperbenchError as e:
            raise HyperbenchError(f"variant {spec!r}: {e}") from None
        for key in own:
            if key not in cls.model_fields:
                raise HyperbenchError(f"variant {spec!r}: engine {own['kind']} has no option {key!r}")
        common = {k: v for k, v in shared.items() if k in cls.model_fields and k not in own}
        used |= common.keys()
        engine = {**common, **own}
        try:
            typed = BenchConfig(engine=engine).engine_config()
            typed.check()
        except HyperbenchError as e:
            raise HyperbenchError(f"variant {spec!r}: {e}") from None
        if launcher.uses_host_install:
            ok, why = cls.installed()
            if not ok:
                raise HyperbenchError(f"variant {spec!r}: engine {own['kind']} is not installed here: {why}")
        out.append(Variant(spec, engine, typed.capabilities().prompt_logprobs))
    unused = set(shared) - used - {"kind"}
    if unused:
        raise HyperbenchError(f"--{sorted(unused)[0].replace('_', '-')} is an option of none of the "
                              f"variants ({', '.join(specs)})")
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise HyperbenchError(f"two variants have the same folder name: {', '.join(specs)}")
    return out
