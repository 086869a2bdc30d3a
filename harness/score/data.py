"""Offline data folders: benchmark files in the schemas lm-eval's stock tasks read, plus a manifest.

A data folder holds, per hub dataset a stock task reads (`dataset_path` / `dataset_name` in its
YAML), one file per split (JSONL, or HF arrow as `datasets` writes it) and one manifest,
`hyperbench-data.json`:

    {"schema_version": 1,
     "datasets": {"openai/gsm8k": {"key": "gsm8k", "source": "...", "notes": [...],
                                   "configs": {"main": {"format": "json",
                                                        "splits": {"test": "gsm8k/main/test.jsonl"},
                                                        "rows": {"test": 1319}}}}}}

Paths are relative to the folder, so it can be copied to an HPC node as it is. `hyperbench data
pull` (hub) and `hyperbench data stage` (registry packages, a local CSV) write it; `score
--data-dir` reads it. Files in a dataset known here are checked against the schema the stock
task expects before anything runs, so a wrong file is one line, not a KeyError deep in lm-eval.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HyperbenchError
from harness.results import atomic_write_json, atomic_write_text

MANIFEST = "hyperbench-data.json"
DATA_SCHEMA_VERSION = 1
DEFAULT_CONFIG = "default"  # config key of a dataset that has no named configs


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _check_mmlu(row: dict) -> str | None:
    if not _is_str_list(row["choices"]) or len(row["choices"]) < 2:
        return "'choices' must be a list of answer strings"
    if not isinstance(row["answer"], int) or not 0 <= row["answer"] < len(row["choices"]):
        return "'answer' must be the index of the right choice (0-3)"
    return None


def _check_gsm8k(row: dict) -> str | None:
    if not isinstance(row["answer"], str) or "####" not in row["answer"]:
        return "'answer' must be the worked solution ending in '#### N'"
    return None


def _check_tqa_gen(row: dict) -> str | None:
    if not (_is_str_list(row["correct_answers"]) and _is_str_list(row["incorrect_answers"])):
        return "'correct_answers' / 'incorrect_answers' must be lists of strings"
    return None


def _check_tqa_mc(row: dict) -> str | None:
    for key in ("mc1_targets", "mc2_targets"):
        t = row[key]
        if not (isinstance(t, dict) and _is_str_list(t.get("choices")) and isinstance(t.get("labels"), list)
                and len(t["choices"]) == len(t["labels"])):
            return f"'{key}' must be {{'choices': [...], 'labels': [...]}} of equal length"
    return None


def _check_squad_v2(row: dict) -> str | None:
    a = row["answers"]
    if not (isinstance(a, dict) and _is_str_list(a.get("text")) and isinstance(a.get("answer_start"), list)):
        return "'answers' must be {'text': [...], 'answer_start': [...]} (both empty when unanswerable)"
    return None


def _check_humaneval(row: dict) -> str | None:
    if f"def {row['entry_point']}" not in row["prompt"] or "def check" not in row["test"]:
        return "'prompt' must define entry_point and 'test' must define check(candidate)"
    return None


@dataclass(frozen=True)
class KnownDataset:
    """A hub dataset whose stock schema we check (others are staged and used unchecked)."""

    key: str  # the short name of `data pull` / `data stage`
    hub: str  # dataset_path of lm-eval 0.4.13's stock tasks
    aliases: tuple[str, ...]  # older / mirror hub paths of the same data
    columns: dict[str, tuple[str, ...]]  # config (or "*") -> required columns
    checks: dict[str, Callable[[dict], str | None]] = field(default_factory=dict)

    def required(self, config: str) -> tuple[str, ...]:
        return self.columns.get(config, self.columns.get("*", ()))

    def check(self, config: str) -> Callable[[dict], str | None] | None:
        return self.checks.get(config, self.checks.get("*"))


KNOWN: dict[str, KnownDataset] = {
    d.key: d
    for d in (
        KnownDataset("mmlu", "cais/mmlu", ("hails/mmlu_no_train",),
                     {"*": ("question", "choices", "answer")}, {"*": _check_mmlu}),
        KnownDataset("gsm8k", "openai/gsm8k", ("gsm8k",), {"*": ("question", "answer")},
                     {"*": _check_gsm8k}),
        KnownDataset("truthfulqa", "truthfulqa/truthful_qa", ("truthful_qa",), {
            "generation": ("question", "best_answer", "correct_answers", "incorrect_answers"),
            "multiple_choice": ("question", "mc1_targets", "mc2_targets"),
        }, {"generation": _check_tqa_gen, "multiple_choice": _check_tqa_mc}),
        KnownDataset("squadv2", "lighteval/squad_v2", ("rajpurkar/squad_v2", "squad_v2"),
                     {"*": ("id", "title", "context", "question", "answers")}, {"*": _check_squad_v2}),
        KnownDataset("humaneval", "openai/openai_humaneval", ("openai_humaneval",),
                     {"*": ("task_id", "prompt", "test", "entry_point")}, {"*": _check_humaneval}),
    )
}  # fmt: skip


def known_by_hub(hub: str) -> KnownDataset | None:
    for d in KNOWN.values():
        if hub == d.hub or hub in d.aliases:
            return d
    return None


@dataclass
class StagedConfig:
    format: str  # "json" or "arrow": the `datasets` builder that reads the files
    splits: dict[str, Path]  # absolute paths


class DataDir:
    """A data folder opened for reading (`score --data-dir`)."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, root: Path | str) -> DataDir:
        root = Path(root).expanduser()
        if not root.exists():
            raise HyperbenchError(f"data dir {root} does not exist (make one with "
                                  "`hyperbench data pull` or `hyperbench data stage`)")
        if not (root / MANIFEST).is_file():
            raise HyperbenchError(f"{root} is not a hyperbench data folder (no {MANIFEST}): make "
                                  "one with `hyperbench data pull` or `hyperbench data stage`")
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except json.JSONDecodeError:
            raise HyperbenchError(f"{root / MANIFEST} is not valid JSON") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets"), dict):
            raise HyperbenchError(f"{root / MANIFEST} has no 'datasets' mapping")
        if manifest.get("schema_version", 0) > DATA_SCHEMA_VERSION:
            raise HyperbenchError(f"{root / MANIFEST} is from a newer hyperbench "
                                  f"(data schema {manifest['schema_version']})")
        return cls(root.resolve(), manifest)

    def entry(self, hub: str) -> dict | None:
        """The manifest entry of a hub dataset path (or one of its known aliases)."""
        ds = self.manifest["datasets"]
        if hub in ds:
            return ds[hub]
        known = known_by_hub(hub)
        for name in (known.hub, *known.aliases) if known else ():
            if name in ds:
                return ds[name]
        return None

    def config(self, hub: str, name: str | None) -> StagedConfig | None:
        entry = self.entry(hub)
        if entry is None:
            return None
        cfg = entry.get("configs", {}).get(name or DEFAULT_CONFIG)
        if cfg is None:
            return None
        return StagedConfig(cfg.get("format", "json"),
                            {s: self.root / p for s, p in cfg.get("splits", {}).items()})

    def notes(self, hub: str, name: str | None = None) -> list[str]:
        """What a score on this data must say: the dataset's notes and its config's."""
        entry = self.entry(hub) or {}
        cfg = entry.get("configs", {}).get(name or DEFAULT_CONFIG, {})
        return list(entry.get("notes") or []) + list(cfg.get("notes") or [])

    def source(self, hub: str) -> str | None:
        return (self.entry(hub) or {}).get("source")

    def check(self, hub: str, name: str | None) -> StagedConfig:
        """The staged files of (hub, config), checked: present, readable, and in the stock schema."""
        cfg = self.config(hub, name)
        what = f"{hub}" + (f" ({name})" if name else "")
        if cfg is None:
            raise HyperbenchError(f"dataset {what} is not in data dir {self.root}: add it with "
                                  f"`hyperbench data pull` or `hyperbench data stage`")
        known = known_by_hub(hub)
        for split, path in cfg.splits.items():
            if not path.is_file():
                raise HyperbenchError(f"data dir {self.root}: {what} split {split} file {path} is missing")
            rows = first_rows(path, cfg.format)
            if not rows:
                raise HyperbenchError(f"{path}: no rows")
            if known is None:
                continue
            for i, row in enumerate(rows):
                missing = [c for c in known.required(name or DEFAULT_CONFIG) if c not in row]
                if missing:
                    raise HyperbenchError(
                        f"{path}: row {i + 1} is not in the {what} schema: it lacks "
                        f"{', '.join(repr(m) for m in missing)} (has {', '.join(sorted(row)) or 'nothing'})")
                check = known.check(name or DEFAULT_CONFIG)
                problem = check(row) if check else None
                if problem:
                    raise HyperbenchError(f"{path}: row {i + 1} is not in the {what} schema: {problem}")
        return cfg


def first_rows(path: Path, fmt: str, n: int = 3) -> list[dict]:
    """The first rows of a staged file, read without `datasets` (fast, and exact about errors)."""
    if fmt == "arrow":
        import pyarrow as pa

        try:
            with pa.memory_map(str(path)) as src:
                try:
                    reader = pa.ipc.open_stream(src)
                except pa.ArrowInvalid:
                    reader = pa.ipc.open_file(src)
                    return reader.get_batch(0).slice(0, n).to_pylist() if reader.num_record_batches else []
                for batch in reader:
                    if batch.num_rows:
                        return batch.slice(0, n).to_pylist()
                return []
        except (pa.ArrowInvalid, OSError) as e:
            raise HyperbenchError(f"{path} is not an arrow file: {str(e).splitlines()[0]}") from None
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise HyperbenchError(f"{path}: line {lineno} is not JSON (JSONL expected)") from None
            if not isinstance(row, dict):
                raise HyperbenchError(f"{path}: line {lineno} is not a JSON object")
            rows.append(row)
            if len(rows) >= n:
                break
    return rows


class DataWriter:
    """Writes a data folder: split files then the manifest, merged with one already there."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HyperbenchError(f"cannot create data dir {self.root}: {e.strerror}") from None
        old = self.root / MANIFEST
        self.manifest = json.loads(old.read_text()) if old.is_file() else {"datasets": {}}

    def _path(self, hub: str, config: str, split: str, suffix: str) -> Path:
        key = (known_by_hub(hub).key if known_by_hub(hub) else hub.replace("/", "__"))
        p = self.root / key / config / f"{split}{suffix}"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _register(self, hub: str, config: str, split: str, fmt: str, path: Path, rows: int) -> None:
        entry = self.manifest["datasets"].setdefault(hub, {"configs": {}})
        cfg = entry["configs"].setdefault(config, {"format": fmt, "splits": {}, "rows": {}})
        if cfg["format"] != fmt:  # one builder reads a config: restage it whole in the new format
            cfg.update(format=fmt, splits={}, rows={})
        cfg["splits"][split] = str(path.relative_to(self.root))
        cfg["rows"][split] = rows
        cfg.pop("notes", None)  # notes describe the old files; describe() sets the new ones

    def write_rows(self, hub: str, config: str | None, split: str, rows: Iterable[dict]) -> int:
        config = config or DEFAULT_CONFIG
        path = self._path(hub, config, split, ".jsonl")
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
        _shareable(path)
        self._register(hub, config, split, "json", path, len(lines))
        return len(lines)

    def write_arrow(self, hub: str, config: str | None, split: str, data: bytes) -> int:
        import pyarrow as pa

        config = config or DEFAULT_CONFIG
        path = self._path(hub, config, split, ".arrow")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        with pa.memory_map(str(tmp)) as src:
            rows = pa.ipc.open_stream(src).read_all().num_rows
        tmp.replace(path)
        self._register(hub, config, split, "arrow", path, rows)
        return rows

    def describe(self, hub: str, key: str, source: str, notes: Iterable[str] = (),
                 config_notes: dict[str, list[str]] | None = None) -> None:
        """Provenance of a staged dataset, and notes that every score on it must carry."""
        entry = self.manifest["datasets"].setdefault(hub, {"configs": {}})
        entry.update(key=key, source=source, notes=list(notes),
                     staged=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        for config, extra in (config_notes or {}).items():
            entry["configs"][config]["notes"] = list(extra)

    def finish(self) -> Path:
        self.manifest["schema_version"] = DATA_SCHEMA_VERSION
        atomic_write_json(self.root / MANIFEST, self.manifest)
        _shareable(self.root / MANIFEST)
        return self.root


def _shareable(path: Path) -> None:
    """The mode a plain write gives (0644 under the usual umask): atomic writes go through a
    0600 temporary file, and a data folder is meant to be copied to, and shared on, a cluster."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
