"""Request traces replayed on their own schedule: Mooncake-style JSONL (`timestamp` in ms,
`input_length`, `output_length`, `hash_ids`) and BurstGPT-style CSV (`Timestamp` in s,
`Request tokens`, `Response tokens`).

Each record becomes a token-id prompt of exactly its input length, sent at its timestamp times
the time scale. Records that share a Mooncake hash id share that block of their prompt (blocks of
MOONCAKE_BLOCK tokens, as the trace defines them), so a trace's prefix reuse reaches the engine's
prefix cache as it did in production.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.adapter import GenRequest
from harness.config import Workload
from harness.errors import HyperbenchError
from harness.bench.workload import _read_rows

MOONCAKE_BLOCK = 512  # tokens per hash id in the Mooncake traces
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


@dataclass
class TraceEntry:
    at_s: float  # scheduled send, seconds from the trace's start (before the time scale)
    input_len: int
    output_len: int
    hash_ids: list[int] = field(default_factory=list)


def load_trace(path: Path) -> list[TraceEntry]:
    """The entries of a trace file, checked: timestamps present, >= 0 and in order (a replay that
    sorted them silently would not be the trace), lengths >= 1."""
    path = Path(path)
    if not path.is_file():
        raise HyperbenchError(f"trace {path} does not exist")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    if not rows:
        raise HyperbenchError(f"trace {path} has no records")
    start = rows[0][1].at_s
    prev = None
    out = []
    for where, e in rows:
        if not math.isfinite(e.at_s) or e.at_s < 0:
            raise HyperbenchError(f"{where}: timestamp {e.at_s:g} is negative or not a number")
        if prev is not None and e.at_s < prev:
            raise HyperbenchError(f"{where}: timestamp goes back in time (records must be sorted by timestamp)")
        if e.input_len < 1 or e.output_len < 1:
            raise HyperbenchError(f"{where}: input and output lengths must be >= 1")
        prev = e.at_s
        out.append(TraceEntry(e.at_s - start, e.input_len, e.output_len, e.hash_ids))
    return out


def _jsonl_rows(path: Path) -> list[tuple[str, TraceEntry]]:
    rows = []
    for where, d in _read_rows(path):  # JSONL (or a JSON array), each row with its FILE:LINE
        if not isinstance(d, dict):
            raise HyperbenchError(f"{where}: expected a JSON object")
        missing = [k for k in ("timestamp", "input_length", "output_length") if k not in d]
        if missing:
            raise HyperbenchError(f"{where}: missing {', '.join(missing)}")
        hash_ids = d.get("hash_ids") or []
        try:
            entry = TraceEntry(float(d["timestamp"]) / 1000.0, int(d["input_length"]), int(d["output_length"]),
                               [int(h) for h in hash_ids])
        except (TypeError, ValueError):
            raise HyperbenchError(f"{where}: timestamp, lengths and hash_ids must be numbers") from None
        rows.append((where, entry))
    return rows


def _csv_rows(path: Path) -> list[tuple[str, TraceEntry]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in BURSTGPT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise HyperbenchError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(a BurstGPT CSV has {', '.join(BURSTGPT_COLUMNS)})")
        rows = []
        for lineno, row in enumerate(reader, 2):
            where = f"{path}:{lineno}"
            try:
                entry = TraceEntry(float(row["Timestamp"]), int(float(row["Request tokens"])),
                                   int(float(row["Response tokens"])))
            except (TypeError, ValueError):
                raise HyperbenchError(f"{where}: Timestamp and token counts must be numbers") from None
            rows.append((where, entry))
    return rows


def trace_requests(entries: list[TraceEntry], w: Workload, tokenizer) -> list[GenRequest]:
    """One request per entry, its prompt exactly `input_len` ordinary token ids; `at_s` is the
    entry's send time. A hash id always gives the same block of ids (seeded by the workload seed
    and the id), so entries with a common hash-id prefix have a common prompt prefix."""
    if tokenizer is None:
        raise HyperbenchError("a trace needs the model's tokenizer for its prompts: pass --tokenizer DIR")
    special = set(tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    rng = np.random.default_rng([w.seed, 2])  # the filler after the hashed blocks
    blocks: dict[int, list[int]] = {}

    def block(h: int) -> list[int]:
        if h not in blocks:
            blocks[h] = np.random.default_rng([w.seed, 3, h]).choice(vocab, size=MOONCAKE_BLOCK).tolist()
        return blocks[h]

    reqs = []
    for e in entries:
        ids: list[int] = []
        for h in e.hash_ids:
            if len(ids) >= e.input_len:
                break
            ids += block(h)
        ids = ids[:e.input_len]
        ids += rng.choice(vocab, size=e.input_len - len(ids)).tolist()
        reqs.append(GenRequest(prompt=[int(i) for i in ids], max_tokens=e.output_len,
                               sampling={"temperature": w.temperature, "seed": w.seed},
                               fixed_output=w.fixed_output, at_s=e.at_s))
    return reqs
