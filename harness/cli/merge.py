"""How a command's config is put together, the same for every job: the YAML file, then the flags
over it (CLI > file > defaults), the engine table merged key by key and checked against the
chosen engine's own flags."""

from __future__ import annotations

from pathlib import Path

from harness.cli.options import check_engine_flags
from harness.config import build, load_yaml
from harness.errors import HyperbenchError

RESUME_ALONE = "--resume continues a run with its saved config: give no other options"


def refuse_with_resume(*given, message: str = RESUME_ALONE) -> None:
    """--resume reads the run's saved config: any other option given with it is an error."""
    if any(given):
        raise HyperbenchError(message)


def read_file(config_file: Path | None) -> dict:
    return load_yaml(config_file) if config_file else {}


def merge_engine(file_data: dict, cli_data: dict, engine_kind: str | None = None,
                 url: str | None = None) -> None:
    """--engine and --url into the flags' data, then the file's engine table under the flags' one
    (key by key: a flag overrides one engine setting, not the whole table); the engine kind
    defaults to hf and every engine flag must be one of that engine's."""
    if engine_kind:
        cli_data.setdefault("engine", {})["kind"] = engine_kind
    if url:
        cli_data.setdefault("target", {})["url"] = url
    file_engine = file_data.get("engine", {}) if isinstance(file_data.get("engine"), dict) else {}
    engine = {**file_engine, **cli_data.get("engine", {})}
    check_engine_flags(engine.setdefault("kind", "hf"), engine)
    cli_data["engine"] = engine


def build_with_engine(model, config_file: Path | None, cli_data: dict, engine_kind: str | None = None,
                      url: str | None = None):
    """The typed config of a job that runs one engine: file, flags and engine merged."""
    file_data = read_file(config_file)
    merge_engine(file_data, cli_data, engine_kind, url)
    return build(model, file_data, cli_data)
