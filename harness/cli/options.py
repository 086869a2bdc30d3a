"""Derive click options from the pydantic config tree, so flags are never listed twice.

Every field of a section becomes `--field-name`; a flag the user gave is placed at its path in
the config dict, which then overlays the YAML file (CLI > file > defaults).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

import click
from pydantic import BaseModel

from harness.errors import HyperbenchError


def _unwrap(tp):
    """Strip Optional[...]."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_list(item_type):
    def parse(text: str):
        try:
            return [item_type(x.strip()) for x in str(text).split(",") if x.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list of {item_type.__name__}") from None

    return parse


def option_for(name: str, field, dest: str) -> click.Option:
    tp = _unwrap(field.annotation)
    flag = "--" + name.replace("_", "-")
    help_ = field.description or ""
    if field.default not in (None, [], ...) and not callable(field.default):
        help_ += f"  [default: {field.default}]"
    kw: dict = dict(default=None, help=help_, show_default=False)
    origin = typing.get_origin(tp)
    if tp is bool:
        return click.Option([f"{flag}/--no-{name.replace('_', '-')}", dest], **kw)
    if origin is typing.Literal:
        kw["type"] = click.Choice([str(a) for a in typing.get_args(tp)])
    elif origin is list:
        (item,) = typing.get_args(tp)
        kw["type"] = click.STRING
        kw["callback"] = lambda ctx, p, v, f=_parse_list(item): None if v is None else f(v)
        kw["metavar"] = f"{item.__name__.upper()},..."
    elif tp in (int, float):
        kw["type"] = tp
    elif tp is Path:
        kw["type"] = click.Path(path_type=Path)
    else:
        kw["type"] = click.STRING
    return click.Option([flag, dest], **kw)


def section_options(sections: dict[str, type[BaseModel]], skip: set[str] = frozenset(),
                    helps: dict[str, str] | None = None):
    """Options for every field of every section; dest is 'section__field'. `helps` replaces the
    help of a shared field whose use differs by command (Target.tokenizer: bench's prompts,
    score's loglikelihood)."""
    seen: dict[str, str] = {}
    opts = []
    for section, model in sections.items():
        for name, field in model.model_fields.items():
            if name in skip or name in seen:
                continue  # an engine field shared by several engines is declared once
            seen[name] = section
            opt = option_for(name, field, f"{section}__{name}")
            if helps and name in helps:
                opt.help = helps[name]
            opts.append(opt)
    return opts


def engine_fields() -> dict[str, set[str]]:
    """field name -> engines that have it (for 'not an option of engine X' errors)."""
    from backends import available_engines

    out: dict[str, set[str]] = {}
    for kind, cls in available_engines().items():
        for name in cls.model_fields:
            out.setdefault(name, set()).add(kind)
    return out


def engine_options():
    """One option per engine field; a Literal shared by engines offers the union of choices
    (the chosen engine's own config then validates the value)."""
    from backends import available_engines

    fields: dict[str, list] = {}
    for cls in available_engines().values():
        for name, field in cls.model_fields.items():
            if name != "kind":
                fields.setdefault(name, []).append(field)
    opts = []
    for name, flist in fields.items():
        opt = option_for(name, flist[0], f"engine__{name}")
        if len(flist) > 1 and len({f.description for f in flist}) > 1:
            # one flag, several engines: say what it means for each
            kinds = [k for k, c in available_engines().items() if name in c.model_fields]
            opt.help = "; ".join(
                f"{k}: {c.model_fields[name].description or ''} [default: {c.model_fields[name].default}]"
                for k, c in available_engines().items() if k in kinds)
        if isinstance(opt.type, click.Choice) and len(flist) > 1:
            choices = []
            for f in flist:
                tp = _unwrap(f.annotation)
                if typing.get_origin(tp) is typing.Literal:
                    choices += [str(a) for a in typing.get_args(tp) if str(a) not in choices]
            opt.type = click.Choice(choices)
        opts.append(opt)
    return opts


def collect(params: dict) -> dict:
    """{'workload__input_len': 5, ...} -> {'workload': {'input_len': 5}} for the flags given."""
    out: dict = {}
    for key, value in params.items():
        if value is None or "__" not in key:
            continue
        section, name = key.split("__", 1)
        out.setdefault(section, {})[name] = value
    return out


def check_engine_flags(kind: str, engine: dict) -> None:
    """An engine flag the chosen engine lacks is an error naming the engines that have it; an
    unknown engine kind is the first thing said (not that its flags belong to other engines)."""
    from backends import engine_class

    engine_class(kind if isinstance(kind, str) else repr(kind))  # 'unknown engine ...' wins
    owners = engine_fields()
    for name in engine:
        if name != "kind" and kind not in owners.get(name, {kind}):
            flag = "--" + name.replace("_", "-")
            raise HyperbenchError(f"{flag} is not an option of engine {kind} (it belongs to "
                                  f"{', '.join(sorted(owners[name]))})")


def parse_slo(text: str | None) -> dict:
    """'ttft=500,tpot=50,e2e=2000' (ms) -> SLO fields."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, _, val = part.partition("=")
        key = key.strip().lower()
        if key not in ("ttft", "tpot", "e2e"):
            raise HyperbenchError(f"--slo: unknown metric {key!r} (use ttft, tpot, e2e; values in ms)")
        try:
            out[f"{key}_ms"] = float(val)
        except ValueError:
            raise HyperbenchError(f"--slo: {part!r} needs a number of milliseconds") from None
    return out


def with_options(options):
    """Attach derived options to a command function (click reads __click_params__)."""

    def deco(f):
        f.__dict__.setdefault("__click_params__", []).extend(reversed(options))
        return f

    return deco
