"""vLLM's speculative-decoding counters, read from its Prometheus /metrics and differenced.

The counters (vLLM 0.32, vllm/v1/spec_decode/metrics.py) are cumulative since start-up, one
series per engine core:

    vllm:spec_decode_num_drafts_total            speculative steps that proposed tokens
    vllm:spec_decode_num_draft_tokens_total      tokens proposed
    vllm:spec_decode_num_accepted_tokens_total   proposed tokens the target model accepted
    vllm:spec_decode_num_accepted_tokens_per_pos_total{position="i"}

so a run's numbers are the difference of two snapshots taken around it (the warm-up and earlier
sweep points must not count): backends.base.speculative_delta, with vLLM's own definitions.
"""

from __future__ import annotations

import re

import httpx

from harness.errors import EngineError

# our counter name (backends.base.SPEC_COUNTERS) -> vLLM's metric
COUNTERS = {
    "drafts": "vllm:spec_decode_num_drafts",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens",
}
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str):
    """Prometheus text exposition -> (name, labels, value) per sample line."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        yield m["name"], dict(_LABEL.findall(m["labels"] or "")), value


def parse_spec_counters(text: str) -> dict | None:
    """Speculative counters summed over engine cores; None when the server exposes none
    (speculative decoding off). Accepts counter names with or without the `_total` suffix."""
    wanted = {name: key for key, name in COUNTERS.items()}
    totals: dict = {key: 0.0 for key in COUNTERS}
    per_pos: dict[int, float] = {}
    seen = False
    for name, labels, value in parse_samples(text):
        base = name.removesuffix("_total")
        if name.endswith("_created"):
            continue
        if base in wanted:
            totals[wanted[base]] += value
            seen = True
        elif base == PER_POSITION and "position" in labels:
            pos = int(labels["position"])
            per_pos[pos] = per_pos.get(pos, 0.0) + value
    if not seen:
        return None
    totals["accepted_per_position"] = [per_pos[i] for i in sorted(per_pos)]
    return totals


def fetch_spec_counters(base_url: str, api_key: str | None = None, timeout: float = 10) -> dict | None:
    """GET <root>/metrics of a vLLM server (base_url ends in /v1) and parse the counters."""
    root = base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(root + "/metrics", timeout=timeout, headers=headers)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise EngineError(f"cannot read speculative-decoding counters from {root}/metrics: {e}") from None
    return parse_spec_counters(r.text)
