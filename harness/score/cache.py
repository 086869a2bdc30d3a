"""Per-request results of a score run, appended to the run folder as each request finishes.

`requests.jsonl` is both the raw record of what the engine answered (raw records are kept)
and the resume cache: a resumed run reads it and sends only requests it does not hold. The key
is the request as lm-eval states it (kind, args) plus its occurrence number among identical
requests, so a task's `repeats` of one sampled prompt stay distinct. The run folder holds one
resolved config (engine, model, quantization, sampling), so keys need not repeat it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any


def request_key(kind: str, args: tuple, occurrence: int = 0) -> str:
    blob = json.dumps([kind, list(args), occurrence], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class RequestCache:
    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._results: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.hits: Counter = Counter()
        self.sent: Counter = Counter()
        if self.path and self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a killed run's torn last line: cut it, so
                text = text[: text.rfind("\n") + 1]  # the next record starts a line of its own
                self.path.write_text(text)
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a killed run
                if "key" in rec and "result" in rec:
                    self._results[rec["key"]] = rec["result"]
        self.loaded = len(self._results)

    def get(self, kind: str, key: str) -> Any | None:
        if key in self._results:
            self.hits[kind] += 1
            return self._results[key]
        return None

    def put(self, kind: str, key: str, result: Any, record: dict | None = None) -> None:
        self._results[key] = result
        self.sent[kind] += 1
        if self.path is None:
            return
        line = json.dumps({"kind": kind, "key": key, "result": result, **(record or {})})
        with self._lock, open(self.path, "a") as f:  # one line per finished request
            f.write(line + "\n")
            f.flush()

    def stats(self) -> dict:
        kinds = sorted(set(self.hits) | set(self.sent))
        return {k: {"cached": self.hits[k], "sent": self.sent[k]} for k in kinds}
