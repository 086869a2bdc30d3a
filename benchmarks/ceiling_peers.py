"""The peer load generators benchmarks/client_ceiling.py runs beside hyperbench's client: `vllm bench
serve`, GuideLLM and AIPerf, each its own CLI in its own venv (scripts/install_vllm_cpu.sh,
scripts/install_client_peers.sh), run as a subprocess the way a user runs it, with its defaults
except where the comparison needs a setting.

Every peer gets the same work: /v1/completions, streamed, a synthetic prompt of ~8 tokens, exactly
`out_tokens` output tokens (max_tokens with ignore_eos; the synthetic engine emits max_tokens
whatever the rest says), the tiny model's local tokenizer, and either a constant rate or a fixed
number of streams. Its CPU is the subprocess tree's (RUSAGE_CHILDREN around the run) minus that of
a one-request run of the same load shape (rate, or that many streams): its import and start-up,
which for GuideLLM includes its spawned worker processes (one per stream up to 10, and 10 at a
constant rate; each imports GuideLLM), for AIPerf its service processes and workers. Its TTFT p50
and counts come from its own result file.

- vLLM: `--request-rate R --burstiness 1e6` (gamma gaps whose spread is 1/1000 of the mean: a
  constant rate); streams: `--max-concurrency S --request-rate inf`. Through
  benchmarks/vllm_bench_serve.py (the vllm-cpu venv's `vllm` command cannot start there).
- GuideLLM 0.8.1 (`guidellm run` with a scenario file; 0.8 has no `--rate-type`/`--rate` flags any
  more): profile `constant` with rate [R], or `concurrent` with streams [S]; constraint
  max_requests n. Results: benchmarks.json (metrics.time_to_first_token_ms.successful).
- AIPerf 0.13.0 (`aiperf profile`): `--request-rate R --arrival-pattern constant`, or
  `--concurrency S`; `--request-count n`, `--use-server-token-count`. Results:
  profile_export_aiperf.json. Run *without* HF_HUB_OFFLINE: in offline mode 0.13.0 looks a local
  tokenizer path up as a hub repo id in the hub cache and fails ("Repo id must be in the form
  'repo_name'"); online, an absolute path is loaded from disk and the hub is not asked.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.models import cache_dir

PROMPT_TOKENS = 8


class PeerClient:
    """One peer's CLI as a subprocess; subclasses say its command line and read its result file."""

    name = ""  # how the tables call it
    env_set: dict[str, str] = {"HF_HUB_OFFLINE": "1"}  # the subprocess's environment, plus these
    env_unset: tuple[str, ...] = ()  # and less these

    def __init__(self, exe: str, tokenizer: str):
        self.exe, self.tokenizer = exe, tokenizer
        self.base_cpu: dict[str, float] = {}  # a one-request run's CPU, by load shape
        self._tmp = tempfile.TemporaryDirectory(prefix=f"ceiling-{type(self).__name__.lower()}-")  # gone at exit
        self.tmp = Path(self._tmp.name)

    def command(self, endpoint, out: Path, n: int, out_tokens: int, rate: float | None,
                streams: int | None) -> list[str]:
        raise NotImplementedError

    def result(self, out: Path) -> tuple[int, float, int]:
        """Completed requests, TTFT p50 ms, output tokens, from the run's result file."""
        raise NotImplementedError

    def run(self, endpoint, n: int, out_tokens: int, rate: float | None = None, streams: int | None = None) -> dict:
        """n requests at a constant `rate` (req/s) or over `streams` concurrent streams; the first
        run of a load shape is preceded by a one-request run of that shape, whose CPU is taken off."""
        shape = self.calibrate(endpoint, rate, streams)
        cpu, completed, ttft_p50, tokens = self._run(endpoint, n, out_tokens, rate, streams)
        return {"failed": n - completed, "median_ttft_ms": ttft_p50, "cpu_s": cpu,
                "cpu_us_per_token": 1e6 * max(cpu - self.base_cpu[shape], 0) / max(tokens, 1)}

    def calibrate(self, endpoint, rate: float | None = None, streams: int | None = None) -> str:
        """A one-request run of this load shape, once (its CPU, by shape); returns the shape."""
        shape = "rate" if rate is not None else f"streams={streams}"
        if shape not in self.base_cpu:
            self.base_cpu[shape] = self._run(endpoint, 1, 1, rate, streams)[0]
        return shape

    def _run(self, endpoint, n, out_tokens, rate, streams) -> tuple[float, int, float, int]:
        out = self.tmp / "run"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        env = {k: v for k, v in {**os.environ, **self.env_set}.items() if k not in self.env_unset}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = subprocess.run(self.command(endpoint, out, n, out_tokens, rate, streams), capture_output=True,
                             text=True, timeout=900, env=env, cwd=out)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise RuntimeError(f"{self.name} exited {res.returncode}: {(res.stderr or res.stdout)[-1500:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return (cpu, *self.result(out))


class VLLMBenchServe(PeerClient):
    name = "vllm bench serve"
    env_set = {"HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu"}

    def command(self, endpoint, out, n, out_tokens, rate, streams):
        args = ["--backend", "openai", "--base-url", endpoint.base_url.removesuffix("/v1"), "--model",
                endpoint.model, "--tokenizer", self.tokenizer, "--dataset-name", "random", "--random-input-len",
                str(PROMPT_TOKENS), "--random-output-len", str(out_tokens), "--num-prompts", str(n), "--ignore-eos",
                "--seed", "0", "--disable-tqdm", "--save-result", "--result-dir", str(out),
                "--result-filename", "r.json", "--request-rate", "inf" if rate is None else str(rate)]
        if rate is not None:
            args += ["--burstiness", "1e6"]  # gamma gaps of shape 1e6: a constant rate
        if streams:
            args += ["--max-concurrency", str(streams)]
        return [self.exe, str(Path(__file__).resolve().with_name("vllm_bench_serve.py")), *args]

    def result(self, out):
        r = json.loads((out / "r.json").read_text())
        return r.get("completed", 0), r.get("median_ttft_ms"), r.get("total_output_tokens") or 0


class GuideLLM(PeerClient):
    name = "GuideLLM"

    def command(self, endpoint, out, n, out_tokens, rate, streams):
        profile = {"kind": "constant", "rate": [rate]} if rate is not None else {"kind": "concurrent",
                                                                                 "streams": [streams]}
        spec = {"backend": {"kind": "openai_http", "target": endpoint.base_url.removesuffix("/v1"),
                            "model": endpoint.model, "request_format": "/v1/completions"},
                "profile": profile, "constraints": [{"kind": "max_requests", "count": n}],
                "tokenizer": {"kind": "huggingface_auto", "model": self.tokenizer},
                "data": [{"kind": "synthetic_text", "prompt_tokens": PROMPT_TOKENS, "output_tokens": out_tokens}],
                "seed": {"kind": "static", "value": 0},
                "outputs": [{"kind": "json", "path": str(out / "benchmarks.json")}]}
        (out / "scenario.json").write_text(json.dumps({"spec": spec}))
        return [self.exe, "run", "--scenario", str(out / "scenario.json"), "--disable-console"]

    def result(self, out):
        m = json.loads((out / "benchmarks.json").read_text())["benchmarks"][0]["metrics"]
        return (m["request_totals"]["successful"], m["time_to_first_token_ms"]["successful"]["median"],
                int(m["output_token_count"]["successful"]["total_sum"]))


class AIPerf(PeerClient):
    name = "AIPerf"
    env_set = {}
    env_unset = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # see the module docstring

    def command(self, endpoint, out, n, out_tokens, rate, streams):
        load = ["--request-rate", str(rate), "--arrival-pattern", "constant"] if rate is not None else [
            "--concurrency", str(streams)]
        return [self.exe, "profile", "--model", endpoint.model, "--url", endpoint.base_url.removesuffix("/v1"),
                "--endpoint-type", "completions", "--streaming", "--tokenizer", self.tokenizer, *load,
                "--request-count", str(n), "--isl", str(PROMPT_TOKENS), "--osl", str(out_tokens),
                "--extra-inputs", "ignore_eos:true", "--use-server-token-count", "--random-seed", "0",
                "--ui", "none", "--no-gpu-telemetry", "--artifact-dir", str(out)]

    def result(self, out):
        r = json.loads((out / "profile_export_aiperf.json").read_text())
        count = (r.get("request_count") or {}).get("avg", 0)
        return int(count), (r.get("time_to_first_token") or {}).get("p50"), int(r["total_output_tokens"]["avg"])


def _venv_exe(env: str, default: str, command: str) -> str | None:
    exe = Path(os.environ.get(env) or cache_dir() / default) / "bin" / command
    return str(exe) if exe.is_file() else None


def find_peers(tokenizer: str) -> tuple[list[PeerClient], list[str]]:
    """The peers whose venv is here, and one line for each that is not."""
    from backends.vllm.spec import vllm_python

    found, missing = [], []
    for cls, exe, how in [
        (VLLMBenchServe, vllm_python(), "bash scripts/install_vllm_cpu.sh"),
        (GuideLLM, _venv_exe("HYPERBENCH_GUIDELLM_VENV", "venv-guidellm", "guidellm"),
         "bash scripts/install_client_peers.sh guidellm"),
        (AIPerf, _venv_exe("HYPERBENCH_AIPERF_VENV", "venv-aiperf", "aiperf"),
         "bash scripts/install_client_peers.sh aiperf")]:
        if exe:
            found.append(cls(exe, tokenizer))
        else:
            missing.append(f"{cls.name}: not measured (no venv: {how}).")
    return found, missing
