"""An engine's pydantic spec as its server's command line, both ways: the one source of settings.

The harness turns a spec into flags (`spec_flags`, used by `EngineConfig.server_command` and
the container launchers); an in-house server builds its parser from the same spec
(`add_spec_arguments`) and validates what it was given with it (`spec_from_args`). Names,
choices, defaults, help and range checks are then stated once, in the spec. Light on purpose:
no engine imports.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from harness.errors import HyperbenchError

# spec fields that are not engine settings of the server's own flags: the model, its name and the
# key travel as --model / --served-model-name / the environment
NOT_SETTINGS = frozenset({"kind", "model", "served_model_name", "api_key"})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def spec_flags(values: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    """Flags for `values` ({field: value}); a value equal to its entry in `defaults` is left out
    (the server's parser has the same default), and so is None (the engine's own choice)."""
    out: list[str] = []
    for name, value in values.items():
        if value is None or (defaults is not None and name in defaults and value == defaults[name]):
            continue
        if isinstance(value, bool):
            out.append(flag(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out += [flag(name), ",".join(str(v) for v in value)]
        else:
            out += [flag(name), str(value)]
    return out


def _argument(annotation) -> dict[str, Any]:
    """argparse keywords for a field's type: a Literal is choices, a bool is --x / --no-x."""
    kinds = [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
    if len(kinds) != 1:
        raise TypeError(f"no command-line form for {annotation}")
    kind = kinds[0]
    if get_origin(kind) is Literal:
        return {"choices": list(get_args(kind))}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in (int, float, str):
        return {"type": kind}
    if kind is Path:  # a folder or file: the spec makes it a Path
        return {"type": str}
    raise TypeError(f"no command-line form for {annotation}")


def add_spec_arguments(parser: argparse.ArgumentParser, spec: type[BaseModel]) -> None:
    """One flag per engine setting of `spec`, with its type, choices, default and description."""
    for name, field in spec.model_fields.items():
        if name in NOT_SETTINGS:
            continue
        parser.add_argument(flag(name), dest=name, default=field.default, help=field.description,
                            **_argument(field.annotation))


def spec_from_args(spec: type[BaseModel], args: argparse.Namespace):
    """The spec of what the server was given; a value out of range is one line naming its flag."""
    values = {n: getattr(args, n) for n in spec.model_fields if n not in NOT_SETTINGS}
    try:
        return spec(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = f"{flag(str(err['loc'][0]))}: " if err["loc"] else ""
        raise HyperbenchError(where + err["msg"]) from None
