"""Real images, real containers: the compose stack and the docker launcher end to end.

Builds the CPU images (harness, hf, llamacpp) with compose, then:
- the image rules: non-root user, health checks, no build secret left in any layer;
- a compose stack of hf + llamacpp serving the tiny model: the wire-contract suite
  (tests/contract) pointed at each engine's address on the compose network, `bench --url` from
  the harness container, no published ports, engines running as non-root;
- an engine started with HYPERBENCH_API_KEY rejects requests without the key;
- `docker compose run harness bench --engine hf` (the engine in-process in the harness image);
- `compare` through the docker launcher (the harness container starts and removes the engine
  containers through the mounted socket): one report with both engines;
- an engine container killed mid-bench: finished records kept, run marked incomplete, no
  container left behind.

Needs Docker with Compose v2 (scripts/containers_setup.sh makes both on a bare Debian machine;
the test skips with the reason when they are missing). Built images are cached by BuildKit, so a
second run rebuilds nothing. Set HYPERBENCH_KEEP_STACK=1 to leave the test stack up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the first test builds the images (a cold build of all four: ~10-15 min on 2 cores)
pytestmark = [pytest.mark.container, pytest.mark.timeout(3000)]

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "compose" / "docker-compose.yml"
LAUNCHER_FILE = REPO / "compose" / "docker-compose.launcher.yml"
PROJECT = "hyperbench-test"
API_KEY = "test-secret-key"
IMAGES = ("harness", "hf", "llamacpp", "vllm")
ENGINES = ("hf", "llamacpp", "vllm")
SMALL = ["--input-len", "16", "--output-len", "8", "--num-requests", "4", "--warmup", "1"]


# ---------------------------------------------------------------------------- docker plumbing


def docker_setup() -> tuple[str, dict] | str:
    """(docker binary, environment) for compose v2 with BuildKit, or the reason there is none."""
    cache = Path(os.environ.get("HYPERBENCH_CACHE") or Path.home() / ".cache" / "hyperbench")
    config = os.environ.get("HYPERBENCH_DOCKER_CONFIG") or str(cache / "docker")
    env = {**os.environ, "DOCKER_BUILDKIT": "1", "COMPOSE_DOCKER_CLI_BUILD": "1"}
    if (Path(config) / "cli-plugins" / "docker-compose").is_file():
        env["DOCKER_CONFIG"] = config  # the private plugins of scripts/containers_setup.sh
    # Debian's client is the one those plugins are tested with; elsewhere whatever is on PATH
    docker = "/usr/bin/docker" if Path("/usr/bin/docker").is_file() else shutil.which("docker")
    if docker is None:
        return "no docker CLI (run scripts/containers_setup.sh)"
    for args, what in ((["info"], "no Docker daemon answers"), (["compose", "version"], "no Compose v2")):
        try:
            r = subprocess.run([docker, *args], env=env, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{what}: {e}"
        if r.returncode != 0:
            return f"{what} ({(r.stderr.strip().splitlines() or ['?'])[-1][:200]}): run scripts/containers_setup.sh"
    # no registry here: the local debootstrap base (containers_setup.sh), CPU torch from the context
    base = subprocess.run([docker, "image", "inspect", "hyperbench/base:bookworm"], env=env, capture_output=True)
    if base.returncode == 0 and "HYPERBENCH_BASE_IMAGE" not in os.environ:
        env["HYPERBENCH_BASE_IMAGE"] = "hyperbench/base:bookworm"
        env.setdefault("HYPERBENCH_TORCH_INDEX_URL", "")
    if "HYPERBENCH_EXTRA_CA" not in env and Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        env["HYPERBENCH_EXTRA_CA"] = "/etc/ssl/certs/ca-certificates.crt"  # a proxy's CA, if any
    env.update(HYPERBENCH_NETWORK=PROJECT, HYPERBENCH_UID="1000", HYPERBENCH_GID="1000",
               DOCKER_GID=str(Path("/var/run/docker.sock").stat().st_gid)
               if Path("/var/run/docker.sock").exists() else "0")
    env.setdefault("HF_HUB_OFFLINE", "1")  # staging built-ins takes the registry, never the hub
    env.pop("HYPERBENCH_API_KEY", None)
    return docker, env


class Docker:
    def __init__(self, binary: str, env: dict, results: Path):
        self.binary = binary
        self.env = {**env, "HYPERBENCH_RESULTS": str(results)}
        self.results = results

    def run(self, *args, timeout=600, check=True, env=None) -> subprocess.CompletedProcess:
        r = subprocess.run([self.binary, *map(str, args)], env={**self.env, **(env or {})},
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))} -> {r.returncode}\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def compose(self, *args, overlays=(), **kw) -> subprocess.CompletedProcess:
        files = [a for f in (COMPOSE_FILE, *overlays) for a in ("-f", f)]
        return self.run("compose", "-p", PROJECT, *files, *args, **kw)

    def harness(self, *args, overlays=(), **kw) -> subprocess.CompletedProcess:
        return self.compose("run", "--rm", "-T", "harness", *args, overlays=overlays, **kw)


@pytest.fixture(scope="module")
def docker(tmp_path_factory) -> Docker:
    setup = docker_setup()
    if isinstance(setup, str):
        pytest.skip(setup)
    results = tmp_path_factory.mktemp("container-results")
    results.chmod(0o777)  # the harness container runs as uid 1000
    d = Docker(*setup, results)
    start = time.monotonic()
    d.compose("build", timeout=2400)  # the README's `docker compose -f compose/docker-compose.yml build`
    print(f"\n[containers] compose build {' '.join(IMAGES)}: {time.monotonic() - start:.0f} s", file=sys.stderr)
    yield d
    d.compose("--profile", "engines", "down", "--remove-orphans", check=False, timeout=120)


def summary_of(docker: Docker, name: str) -> dict:
    return json.loads((docker.results / name / "summary.json").read_text())


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize("image", IMAGES)
def test_image_runs_as_non_root_with_healthcheck_and_no_secret(docker, image):
    attrs = json.loads(docker.run("image", "inspect", f"hyperbench/{image}:latest").stdout)[0]
    cfg = attrs["Config"]
    assert cfg["User"] == "hyperbench"
    health = (cfg.get("Healthcheck") or {}).get("Test") or ["NONE"]
    if image == "harness":
        assert health == ["NONE"]  # a one-shot CLI: nothing to probe
    else:
        assert "healthcheck.py" in " ".join(health)
        assert set(cfg.get("ExposedPorts") or {}) == {"8000/tcp"}
    assert not any(e.startswith(("PIP_CERT=", "SSL_CERT_FILE=")) for e in cfg.get("Env") or [])
    # the extra-CA build secret is mounted for one RUN only: no file of it in the image
    r = docker.run("run", "--rm", "--entrypoint", "sh", f"hyperbench/{image}:latest", "-c",
                   "id -u; ls /run/secrets 2>/dev/null | wc -l; ls /tmp")
    uid, secrets, *tmp = r.stdout.split()
    assert uid == "1000" and secrets == "0" and not [t for t in tmp if t.endswith(".pem")]


def test_compose_files_are_valid_for_compose(docker):
    """Compose itself reads the base file with each overlay (the GPU one cannot run here)."""
    gpu = json.loads(docker.compose("--profile", "engines", "config", "--format", "json",
                                    overlays=[REPO / "compose" / "docker-compose.gpu.yml"]).stdout)
    for engine in ("hf", "llamacpp", "vllm"):
        svc = gpu["services"][engine]
        assert svc["image"] == f"hyperbench/{engine}:cuda" and svc["build"]["args"]["VARIANT"] == "cuda"
        dev = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and dev["count"] == -1  # all
        assert not svc.get("ports")
    launcher = json.loads(docker.compose("config", "--format", "json", overlays=[LAUNCHER_FILE]).stdout)
    mounts = [v["target"] for v in launcher["services"]["harness"]["volumes"]]
    assert "/var/run/docker.sock" in mounts and "/workspace/results" in mounts
    # a plain `build` builds all four images; `docker compose` from the repository root is the same stack
    base = docker.compose("config", "--services").stdout.split()
    assert {"harness", "hf-image", "llamacpp-image", "vllm-image"} == set(base)
    r = subprocess.run([docker.binary, "compose", "config", "--services"], cwd=REPO, env=docker.env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and set(r.stdout.split()) == set(base), r.stderr


# ---------------------------------------------------------------------------- a compose stack


def seed_tiny_model(docker: Docker) -> str:
    """Put the host's tiny-llama (and its f32 GGUF) in the cache volume, byte for byte, so the
    contract suite's reference forward pass on the host runs the very weights the containers
    serve. (The llamacpp image has no torch to convert with; the harness image would, but it
    would download llama.cpp's converter first.)"""
    from backends.llamacpp.gguf import ensure_gguf
    from harness.models import resolve_model

    model = resolve_model("tiny-llama").path
    gguf = ensure_gguf(model, "f32")
    inside = f"/cache/models/{model.name}"
    script = (f"rm -rf {inside} && mkdir -p /cache/models /cache/gguf/{gguf.parent.name} && "
              f"cp -r /src/model {inside} && cp /src/gguf /cache/gguf/{gguf.parent.name}/f32.gguf && "
              f"chown 1000:1000 /cache/models /cache/gguf && chown -R 1000:1000 {inside} /cache/gguf/{gguf.parent.name} && "
              f"chmod -R a+rX {inside} /cache/gguf")
    docker.run("run", "--rm", "--user", "0:0", "--entrypoint", "sh", "-v", "hyperbench-cache:/cache",
               "-v", f"{model}:/src/model:ro", "-v", f"{gguf}:/src/gguf:ro", "hyperbench/harness:latest",
               "-c", script)
    return str(model)


def profiles() -> list[str]:
    return [a for e in ENGINES for a in ("--profile", e)]


@pytest.fixture(scope="module")
def stack(docker, tmp_path_factory):
    """hf, llamacpp and vllm serving tiny-llama in float32 on the compose network, no API key."""
    host_model = seed_tiny_model(docker)
    override = tmp_path_factory.mktemp("compose") / "tiny.yml"
    override.write_text(
        "services:\n"
        "  hf:\n    command: [--model, tiny-llama, --served-model-name, tiny, --dtype, float32, --device, cpu]\n"
        "  llamacpp:\n    command: [--model, tiny-llama, --served-model-name, tiny, --quant, f32]\n"
        "  vllm:\n    command: [--model, tiny-llama, --served-model-name, tiny, --dtype, float32, --enforce-eager]\n"
        "  stage:\n    command: [tiny-llama]\n"
    )
    start = time.monotonic()
    docker.compose(*profiles(), "up", "-d", "--wait", overlays=[override], timeout=900)
    print(f"\n[containers] stack healthy in {time.monotonic() - start:.0f} s", file=sys.stderr)
    yield {"override": override, "model_path": host_model}
    if os.environ.get("HYPERBENCH_KEEP_STACK") != "1":
        docker.compose(*profiles(), "down", overlays=[override], check=False, timeout=120)


def service_container(docker: Docker, service: str) -> dict:
    cid = docker.compose("ps", "-q", service).stdout.strip()
    assert cid, f"no container for {service}"
    return json.loads(docker.run("inspect", cid).stdout)[0]


def test_engines_publish_no_port_and_run_as_non_root(docker, stack):
    for service in ENGINES:
        c = service_container(docker, service)
        assert not any(c["HostConfig"].get("PortBindings") or {}), c["HostConfig"].get("PortBindings")
        assert not any(v for v in (c["NetworkSettings"].get("Ports") or {}).values()), "a port is published"
        assert c["State"]["Health"]["Status"] == "healthy"
        assert docker.compose("exec", "-T", service, "id", "-u").stdout.strip() == "1000"
        assert c["HostConfig"]["Init"] is True
        assert c["HostConfig"]["CapDrop"] == ["ALL"] and "no-new-privileges:true" in c["HostConfig"]["SecurityOpt"]


@pytest.mark.parametrize("service", ENGINES)
def test_wire_contract_through_compose_network(docker, stack, service, tmp_path):
    """tests/contract/test_wire_contract.py, unchanged, against the engine container's address on
    the compose network (nothing published: the host reaches it on the network's bridge)."""
    c = service_container(docker, service)
    ip = c["NetworkSettings"]["Networks"][PROJECT]["IPAddress"]
    (tmp_path / "conftest.py").write_text(
        "import os\nfrom dataclasses import dataclass\nfrom pathlib import Path\nimport pytest\n\n"
        "@dataclass\nclass Server:\n    kind: str\n    base_url: str\n    model: str\n    model_path: Path\n"
        "    log_path: Path\n\n"
        "@pytest.fixture(scope='module')\ndef engine_server():\n"
        "    return Server(os.environ['HB_KIND'], os.environ['HB_URL'], 'tiny', Path(os.environ['HB_MODEL']),"
        " Path('/dev/null'))\n"
    )
    (tmp_path / "test_wire_contract.py").symlink_to(REPO / "tests" / "contract" / "test_wire_contract.py")
    env = {**os.environ, "HB_KIND": service, "HB_URL": f"http://{ip}:8000/v1", "HB_MODEL": stack["model_path"],
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                        "--rootdir", str(tmp_path), str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=900)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    print(f"\n[containers] contract suite vs {service} container: {tail}", file=sys.stderr)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in tail


@pytest.mark.parametrize("service", ENGINES)
def test_compose_run_harness_bench_url(docker, stack, service):
    name = f"url-{service}"
    r = docker.harness("bench", "--url", f"http://{service}:8000/v1", "--model", "tiny-llama",
                       "--served-model-name", "tiny", "--concurrency", "1,2", *SMALL, "--run-name", name)
    assert "(complete)" in r.stdout, r.stdout + r.stderr
    s = summary_of(docker, name)
    assert s["status"] == "complete" and s["engine_info"]["engine"] == service
    assert [p["completed"] for p in s["points"]] == [4, 4]
    assert all(p["output_tokens"] == 4 * 8 for p in s["points"])
    records = (docker.results / name / "records.jsonl").read_text().splitlines()
    assert len(records) == 8


def test_api_key_rejected_without_the_key(docker, stack):
    cname = f"{PROJECT}-keyed-llamacpp"
    docker.run("rm", "-f", cname, check=False)
    docker.compose("run", "-d", "--name", cname, "-e", f"HYPERBENCH_API_KEY={API_KEY}", "llamacpp",
                   "--model", "tiny-llama", "--served-model-name", "tiny", "--quant", "f32",
                   overlays=[stack["override"]])
    try:
        probe = (
            "import httpx, sys, time\n"
            f"url = 'http://{cname}:8000'\n"
            "for _ in range(240):\n"
            "    try:\n"
            "        if httpx.get(url + '/health', timeout=2).status_code == 200: break\n"
            "    except httpx.HTTPError: pass\n"
            "    time.sleep(0.5)\n"
            "no = httpx.get(url + '/v1/models', timeout=10).status_code\n"
            "bad = httpx.get(url + '/v1/models', headers={'Authorization': 'Bearer wrong'}, timeout=10).status_code\n"
            f"ok = httpx.get(url + '/v1/models', headers={{'Authorization': 'Bearer {API_KEY}'}}, timeout=10).status_code\n"
            "print(no, bad, ok)\n"
        )
        r = docker.compose("run", "--rm", "-T", "--entrypoint", "python", "harness", "-c", probe)
        assert r.stdout.split()[-3:] == ["401", "401", "200"], r.stdout + r.stderr
        # and the harness gets through with it
        r = docker.harness("bench", "--url", f"http://{cname}:8000/v1", "--model", "tiny-llama",
                           "--served-model-name", "tiny", "--api-key", API_KEY, *SMALL, "--run-name", "keyed")
        assert summary_of(docker, "keyed")["status"] == "complete", r.stdout + r.stderr
        env = " ".join(json.loads(docker.run("inspect", cname).stdout)[0]["Config"]["Cmd"] or [])
        assert API_KEY not in env  # the key travels in the environment, not the command line
    finally:
        docker.run("rm", "-f", cname, check=False)


# ---------------------------------------------------------------------------- the harness image


def test_compose_run_harness_bench_engine_hf_in_process(docker):
    """The issue's `docker compose run harness bench --engine hf --model smollm2-135m`: the real
    model, staged into the cache volume on first use."""
    r = docker.harness("bench", "--engine", "hf", "--model", "smollm2-135m", "--concurrency", "1", *SMALL,
                       "--run-name", "hf-in-harness", timeout=900)
    s = summary_of(docker, "hf-in-harness")
    assert s["status"] == "complete", r.stdout + r.stderr
    assert s["points"][0]["completed"] == 4 and s["engine_info"]["engine"] == "hf"


# ---------------------------------------------------------------------------- docker launcher


def launcher_containers(docker: Docker) -> list[str]:
    return docker.run("ps", "-aq", "--filter", "label=hyperbench.launcher=docker").stdout.split()


def test_bench_docker_launcher_from_the_host(docker, stack, tmp_path):
    """`hyperbench bench --launcher docker` run on the host (not in the harness container): the
    engine container publishes its port on 127.0.0.1 only, gets the host's model folder
    bind-mounted read-only, and is removed at the end."""
    before = launcher_containers(docker)
    env = {**docker.env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "--launcher", "docker", "--engine", "hf",
                             "--model", "tiny-llama", "--dtype", "float32", "--device", "cpu", "--concurrency", "1",
                             *SMALL, "--results-dir", str(tmp_path), "--run-name", "host"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    bound = None
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and bound is None and time.monotonic() < deadline:
            for cid in set(launcher_containers(docker)) - set(before):
                c = json.loads(docker.run("inspect", cid, check=False).stdout or "[{}]")[0]
                bound = (c.get("HostConfig") or {}).get("PortBindings") or None
                mounts = c.get("Mounts") or []
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert bound is not None, "the engine container was never seen running"
    assert [b["HostIp"] for b in bound["8000/tcp"]] == ["127.0.0.1"]  # loopback only
    model = [m for m in mounts if m["Type"] == "bind"]
    assert len(model) == 1 and model[0]["Destination"].startswith("/mnt/hyperbench/model/") and not model[0]["RW"]
    s = json.loads((tmp_path / "host" / "summary.json").read_text())
    assert s["status"] == "complete" and s["points"][0]["completed"] == 4
    assert s["engine_info"]["engine"] == "hf"
    log = (tmp_path / "host" / "engine.log").read_text()
    # stopped by SIGTERM through tini (0 or 143), not killed after the grace period (137)
    assert "stopped, exit code" in log and "exit code 137" not in log
    assert launcher_containers(docker) == before


def test_compare_through_docker_launcher(docker):
    """The issue's `docker compose run harness compare --engines hf,llamacpp,vllm --model
    smollm2-135m --concurrency 1,8`: the harness container starts, benches and removes each
    engine's container in turn; one report with all three."""
    before = launcher_containers(docker)
    start = time.monotonic()
    r = docker.harness("compare", "--engines", ",".join(ENGINES), "--model", "smollm2-135m", "--concurrency", "1,8",
                       "--input-len", "16", "--output-len", "8", "--num-requests", "8", "--warmup", "1",
                       "--enforce-eager", "--run-name", "cmp", overlays=[LAUNCHER_FILE], timeout=1500)
    print(f"\n[containers] compare {','.join(ENGINES)} via docker launcher: {time.monotonic() - start:.0f} s",
          file=sys.stderr)
    folder = docker.results / "cmp"
    data = json.loads((folder / "compare.json").read_text())
    labels = [run["label"] for run in data["runs"]]
    assert [label.split(":")[0] for label in labels] == list(ENGINES), r.stdout + r.stderr
    assert data["workload_mismatch"] == {}
    for run in data["runs"]:
        assert run["status"] == "complete", run
        assert [p["completed"] for p in run["points"]] == [8, 8]
        assert all(p["output_tokens"] == 8 * 8 for p in run["points"])
    report = (folder / "report.md").read_text()
    for point in ("## concurrency=1", "## concurrency=8"):
        section = report.split(point)[1].split("##")[0]
        assert all(f"| {label} | 8/8 |" in section for label in labels), section
    assert (folder / "plots" / "compare_throughput.png").is_file()
    assert (folder / "plots" / "compare_latency.png").is_file()
    # each engine ran in its own image, its log streamed into its run folder, then removed
    for engine in ENGINES:
        log = (folder / "runs" / engine / "engine.log").read_text()
        assert f"hyperbench/{engine}:latest" in log and "stopped, exit code" in log
    assert launcher_containers(docker) == before


def test_engine_container_killed_mid_bench(docker):
    """Kill the engine container while the harness benches it: records finished before the kill
    are kept, the run says incomplete with the reason, and the container is gone."""
    name = "killed"
    before = set(launcher_containers(docker))
    args = ["compose", "-p", PROJECT, "-f", COMPOSE_FILE, "-f", LAUNCHER_FILE, "run", "--rm", "-T", "harness",
            "bench", "--launcher", "docker", "--engine", "llamacpp", "--model", "smollm2-135m", "--concurrency", "1",
            "--input-len", "16", "--output-len", "16", "--num-requests", "60", "--run-name", name]
    # (60: the kill comes after 3; bench sends the rest of the point's requests to the dead engine,
    # each failing at once, before it stops: more would only cost time)
    proc = subprocess.Popen([docker.binary, *map(str, args)], env=docker.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    records = docker.results / name / "records.jsonl"
    try:
        deadline = time.monotonic() + 600
        while not (records.exists() and len(records.read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no records after 10 minutes"
            time.sleep(0.5)
        victims = [c for c in launcher_containers(docker) if c not in before]
        assert len(victims) == 1
        docker.run("kill", victims[0])
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a hung harness: its `compose run` container outlives the CLI
            proc.kill()
            stale = docker.run("ps", "-q", "--filter", f"name={PROJECT}-harness-run").stdout.split()
            docker.run("rm", "-f", *stale, check=False)
    assert proc.returncode == 2, out
    assert "engine" in out and "exited" in out  # the death is named, with the container's last lines
    s = summary_of(docker, name)
    assert s["status"] == "incomplete", s
    assert "died" in s["reason"] or "exited" in s["reason"]
    kept = [json.loads(line) for line in records.read_text().splitlines()]
    assert sum(1 for r in kept if r["error"] is None) >= 3
    assert set(launcher_containers(docker)) <= before
