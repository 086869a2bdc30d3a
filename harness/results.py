"""Run folders: atomic JSON writes, per-request JSONL appended as requests finish, status marks.

Layout (results/README.md): config.json, env.json, engine.json, engine.log, records.jsonl,
summary.json (canonical, versioned), report.md, plots/*.png.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from harness.config import jsonable
from harness.errors import HyperbenchError
from harness.summary_schema import SCHEMA_VERSION, Summary, parse_summary

# SCHEMA_VERSION is imported from here by the jobs that write summaries


def temp_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file next to `path` (to be renamed over it), opened for writing, with the
    mode open(path, "w") would leave: the file's own if it exists, else 0o666 & ~umask (the
    kernel applies the umask). Not mkstemp's 0o600: renamed into a run folder, that would be
    unreadable to the other users of a shared project folder."""
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        os.fchmod(fd, os.stat(path).st_mode & 0o7777)
    except FileNotFoundError:
        pass
    return fd, tmp


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HyperbenchError(f"{path} not found") from None
    except json.JSONDecodeError:
        raise HyperbenchError(f"{path} is not valid JSON") from None


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "run"


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, root: Path, name: str | None, engine: str, model: str) -> RunFolder:
        name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(engine)}-{slug(Path(model).name)}"
        path = Path(root) / name
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise HyperbenchError(f"run folder {path} already exists: choose another --run-name") from None
        except OSError as e:
            raise HyperbenchError(f"cannot create run folder {path}: {e.strerror}") from None
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        path = Path(path)
        if not (path / "summary.json").is_file():
            raise HyperbenchError(f"{path} is not a run folder (no summary.json)")
        return cls(path)

    @classmethod
    def open_to_resume(cls, path: Path, kind: str) -> tuple[RunFolder, dict]:
        """A cut run of `kind` and its summary, for `--resume`; one-line errors for a folder of
        another kind or one that is complete (nothing to do). A summary without a kind is bench's
        (bench wrote none before schema 1 carried it)."""
        folder = cls.open(path)
        summary = folder.summary()
        if summary.get("kind", "bench") != kind:
            raise HyperbenchError(f"{folder.path} is not a {kind} run (kind {summary.get('kind')!r})")
        if summary.get("status") == "complete":
            raise HyperbenchError(f"{folder.path} is complete: nothing to resume")
        return folder, summary

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: Any) -> None:
        try:
            atomic_write_json(self.path / name, data)
        except OSError as e:
            raise HyperbenchError(f"cannot write {self.path / name}: {e.strerror}") from None
        if name == "summary.json":  # checked once written: a shape error must not lose the results
            parse_summary(jsonable(data), str(self.path / name))

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def summary(self) -> dict:
        """summary.json, refused when another schema version wrote it: read with this version's
        meaning, it would look like an empty run (and `report` would overwrite its report)."""
        data = self.read_json("summary.json")
        parse_summary(data, str(self.path / "summary.json"))
        return data

    def typed_summary(self) -> Summary:
        """summary.json as the model of its kind (harness.summary_schema); the same one-line
        refusals as summary()."""
        return parse_summary(self.read_json("summary.json"), str(self.path / "summary.json"))

    def append_record(self, record: dict) -> None:
        # one line per finished request, flushed at once: a killed run keeps every finished record
        p = self.path / "records.jsonl"
        try:
            with open(p, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk mid-run: the run stops, marked, with what it kept
            self.drop_torn_record()  # the part of this line that fitted
            raise HyperbenchError(f"cannot write {p}: {e.strerror}") from None

    def drop_torn_record(self) -> None:
        """Cut a last line that a kill or a full disk left half-written, before appending more:
        after it, new records would be unreadable (`records` stops at the first torn line)."""
        p = self.path / "records.jsonl"
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return
        if data and not data.endswith(b"\n"):
            with open(p, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def records(self) -> list[dict]:
        p = self.path / "records.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line of a killed run
        return out
