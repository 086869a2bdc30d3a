"""pass@k for HumanEval, as the `code_eval` metric computes it, with no hub download.

Each candidate program (prompt + completion, then the task's tests and `check(entry_point)`)
runs in its own Python process, isolated mode, in an empty temporary folder, with a wall-clock
limit, a CPU-time limit and a memory cap; its process group is killed when it ends. That is
damage control, not a sandbox: the model's code runs as the user who runs `score`, which is why
the task needs `--allow-code-execution` (lm-eval's confirm_run_unsafe_code).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from math import comb

TIMEOUT_S = 3.0  # code_eval's default
MEMORY_BYTES = 4 << 30


def _limits() -> None:  # in the child, before exec
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (int(TIMEOUT_S) + 1, int(TIMEOUT_S) + 1))


def passes(program: str, timeout: float = TIMEOUT_S) -> bool:
    """Does `program` exit 0 within `timeout` seconds?"""
    with tempfile.TemporaryDirectory(prefix="hyperbench-code-") as cwd:
        proc = subprocess.Popen([sys.executable, "-I", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
                                preexec_fn=_limits, text=True)  # fmt: skip
        try:
            proc.communicate(program, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it started
            except ProcessLookupError:
                pass
            proc.wait()
        return proc.returncode == 0


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of the Codex paper: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k(references: list[str], predictions: list[list[str]], k=None) -> dict[str, float]:
    """lm-eval calls this per item: references=[tests], predictions=[[candidate, ...]]."""
    ks = [k] if isinstance(k, int) else list(k or [1])
    counts = [(len(cands), sum(passes(cand + "\n" + ref) for cand in cands))
              for ref, cands in zip(references, predictions)]
    out = {}
    for kk in ks:
        vals = [estimate_pass_at_k(n, c, kk) for n, c in counts if n >= kk]
        out[f"pass@{kk}"] = sum(vals) / len(vals) if vals else 0.0
    return out


def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval's filter: each completion appended to its prompt (the function's signature)."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]
