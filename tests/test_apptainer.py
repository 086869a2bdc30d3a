"""Apptainer: definition files, the launcher's command lines, `hyperbench slurm`, and the images
under Apptainer's conditions.

Without Apptainer (the real thing is tests/test_apptainer_tier.py: SIFs built from the images,
engines started as instances), and fast:
- the definition files are parsed with spython (the Singularity/Apptainer recipe parser);
- the apptainer launcher's command lines are checked as data, and its engine flags are parsed
  back through `hyperbench serve`'s own options into the very engine config they came from;
- the generated SLURM script passes `bash -n` and carries a config `bench` accepts;
- an engine image is run the way Apptainer runs a SIF for an unprivileged user (read-only root
  filesystem, an arbitrary uid, the launcher's environment and binds) under Docker.
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
import yaml
from test_containers import docker as built_images  # noqa: F401 - fixture: the images, built once (cached)

REPO = Path(__file__).resolve().parents[1]
DEFS = REPO / "containers" / "apptainer"
ENGINES = ("hf", "llamacpp", "vllm")


# ---------------------------------------------------------------------------- definition files


@pytest.mark.parametrize("name", ["harness", *ENGINES])
def test_definition_file_parses(name):
    parsers = pytest.importorskip("spython.main.parse.parsers", reason="spython parses definition files")
    stages = parsers.SingularityParser(str(DEFS / f"{name}.def")).recipe
    recipe = stages["spython-base"]
    assert recipe.fromHeader == f"hyperbench/{name}:latest"
    assert "Bootstrap: docker-daemon" in (DEFS / f"{name}.def").read_text()
    runscript = recipe.cmd
    if name == "harness":
        assert runscript == 'exec /opt/hyperbench/entry.sh hyperbench "$@"'
    else:
        assert runscript == f'exec /opt/hyperbench/entry.sh /opt/hyperbench/serve.sh {name} "$@"'
    env = dict(line.split("=", 1) for line in recipe.environ if "=" in line and " " not in line.split("=", 1)[0])
    # the SIF is read-only: every writable cache lives under $HYPERBENCH_CACHE (the shell logic
    # of %environment runs for real in test_definition_environment_in_the_image); the hub is off
    assert env["HF_HOME"].startswith('"${HF_HOME:-$HYPERBENCH_CACHE')
    assert env["HF_HUB_OFFLINE"] == '"${HF_HUB_OFFLINE:-1}"'
    if name != "harness":
        assert env["TRITON_CACHE_DIR"].startswith('"${TRITON_CACHE_DIR:-$HYPERBENCH_CACHE')
    assert recipe.test  # %test: `hyperbench --version` inside the built SIF
    writers = pytest.importorskip("spython.main.parse.writers")
    assert f"FROM hyperbench/{name}:latest" in writers.DockerWriter(stages).convert()


def environment_section(name: str) -> str:
    text = (DEFS / f"{name}.def").read_text()
    return text.split("%environment\n", 1)[1].split("\n%", 1)[0]


@pytest.mark.container
@pytest.mark.timeout(3000)  # may be the first to build the images (tests/test_containers.py)
@pytest.mark.parametrize("name", ["harness", "vllm"])
def test_definition_environment_in_the_image(name, built_images):
    """%environment, run by a shell in the image after the image's own ENV, as Apptainer does:
    with the image read-only the caches leave /cache for $HOME; a cache given at run time wins;
    a writable /cache (bound by the user) is kept."""
    keys = ["HYPERBENCH_CACHE", "HF_HOME"] + (["TRITON_CACHE_DIR", "VLLM_CACHE_ROOT"] if name != "harness" else [])
    script = environment_section(name) + "\n" + "".join(f'echo "{k}=${k}"\n' for k in keys)

    def run(*opts) -> dict:
        r = subprocess.run([built_images.binary, "run", "--rm", "--user", "4242:4242", "-e", "HOME=/home/u", *opts,
                            "--entrypoint", "sh", f"hyperbench/{name}:latest", "-c", script],
                           env=built_images.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return dict(line.split("=", 1) for line in r.stdout.split())

    ro = run("--read-only")
    assert ro["HYPERBENCH_CACHE"] == "/home/u/.cache/hyperbench"
    assert all(ro[k].startswith("/home/u/.cache/hyperbench/") for k in keys[1:]), ro
    given = run("--read-only", "-e", "HYPERBENCH_CACHE=/scratch/c")
    assert given["HYPERBENCH_CACHE"] == "/scratch/c" and all(given[k].startswith("/scratch/c/") for k in keys[1:])
    writable = run()  # /cache is world-writable in the image: as if a writable folder were bound
    assert writable["HYPERBENCH_CACHE"] == "/cache" and writable["HF_HOME"] == "/cache/hf"


# ---------------------------------------------------------------------------- launcher commands


def engine_cfg(kind: str, **kw):
    from backends import engine_class

    return engine_class(kind)(model="smollm2-135m", **kw)


def parse_back(kind: str, args: list[str]) -> dict:
    """What `hyperbench serve KIND <args>` makes of the flags: its click options, collected into
    the engine dict exactly as the command does."""
    from harness.cli.serve import serve
    from harness.cli.options import collect

    ctx = serve.make_context("serve", [kind, *args])
    return {"kind": kind, **collect(ctx.params).get("engine", {})}


@pytest.mark.parametrize("kind,opts", [
    ("hf", {"quant": "int8", "dtype": "bfloat16", "max_batch_size": 4}),
    ("llamacpp", {"quant": "q8_0", "n_threads": 2, "flash_attn": True, "kv_cache_type": "q8_0"}),
    ("vllm", {"speculative": "ngram", "num_speculative_tokens": 3, "enable_prefix_caching": False}),
])  # fmt: skip
def test_serve_args_round_trip_through_serve(kind, opts):
    """The container launchers pass the engine config as `hyperbench serve` flags: parsed back by
    `serve` they give the same config (defaults and booleans included)."""
    from harness.launchers.containers import serve_args

    cfg = engine_cfg(kind, served_model_name="m", api_key="k", **opts)
    args = serve_args(cfg, "/models/x")
    assert "k" not in args and "--api-key" not in args  # the key travels in the environment
    back = parse_back(kind, args)
    again = type(cfg)(**{**back, "api_key": "k"})
    assert again.model_dump(exclude={"model"}) == cfg.model_dump(exclude={"model"})
    assert back["model"] == "/models/x"


def test_apptainer_commands(tmp_path, monkeypatch):
    from harness.launchers.apptainer import ApptainerLauncher

    monkeypatch.setenv("HYPERBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HYPERBENCH_SIF_DIR", str(tmp_path / "sif"))
    monkeypatch.setenv("HYPERBENCH_BINDS", "/scratch/data:/data:ro")
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    launcher = ApptainerLauncher(engine_cfg("vllm", api_key="secret"), str(model))
    assert launcher.sif == tmp_path / "sif" / "vllm.sif"
    cmds = launcher.commands(port=8123, gpu=True)
    start, exe, stop = cmds["start"], cmds["exec"], cmds["stop"]
    name = launcher.name
    assert start[1:4] == ["instance", "start", "--cleanenv"] and "--nv" in start
    assert start[-2:] == [str(launcher.sif), name]
    binds = [start[i + 1] for i, a in enumerate(start) if a == "--bind"]
    cache = (tmp_path / "cache").resolve()
    assert binds == [f"{model}:{model}:ro", f"{cache}:{cache}", "/scratch/data:/data:ro"]
    assert exe[1:3] == ["exec", "--cleanenv"] and f"instance://{name}" in exe
    i = exe.index(f"instance://{name}")
    assert exe[i + 1:i + 4] == ["/opt/hyperbench/entry.sh", "/opt/hyperbench/serve.sh", "vllm"]
    env = dict(exe[j + 1].split("=", 1) for j, a in enumerate(exe) if a == "--env")
    assert env["HYPERBENCH_HOST"] == "127.0.0.1" and env["HYPERBENCH_PORT"] == "8123"
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    for key in ("HYPERBENCH_CACHE", "HF_HOME", "TRITON_CACHE_DIR", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME"):
        assert env[key].startswith(str(cache)), key
    assert not any("secret" in a for a in start + exe)  # API key: APPTAINERENV_, not argv
    assert parse_back("vllm", exe[i + 4:])["model"] == str(model)
    assert stop[1:3] == ["instance", "stop"] and stop[-1] == name
    assert "--nv" not in launcher.commands(port=8123, gpu=False)["start"]


def test_apptainer_launcher_errors_name_the_fix(tmp_path, monkeypatch):
    from harness.errors import HyperbenchError
    from harness.launchers.apptainer import ApptainerLauncher

    monkeypatch.setenv("HYPERBENCH_SIF_DIR", str(tmp_path))
    launcher = ApptainerLauncher(engine_cfg("hf"), str(tmp_path))
    launcher.apptainer = None
    with pytest.raises(HyperbenchError, match="module load apptainer"):
        launcher.__enter__()
    launcher.apptainer = "/usr/bin/true"
    with pytest.raises(HyperbenchError, match=r"apptainer build .*hf.sif docker-daemon://hyperbench/hf:latest"):
        launcher.__enter__()


def test_hf_hub_snapshot_mounts_the_whole_repo(tmp_path):
    from harness.launchers.containers import model_root

    repo = tmp_path / "hub" / "models--org--name"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    assert model_root(str(snap)) == repo  # its files are symlinks into ../../blobs
    assert model_root(str(tmp_path)) == tmp_path


# ---------------------------------------------------------------------------- hyperbench slurm


def test_slurm_script(tmp_path):
    from harness.config import BenchConfig

    r = subprocess.run([sys.executable, "-m", "harness.cli", "slurm", "--engine", "vllm", "--model", "smollm2-135m",
                        "--concurrency", "1,8", "--output-len", "32", "--partition", "gpu", "--account", "proj1",
                        "--gpus", "2", "--time-limit", "02:00:00", "--modules", "apptainer,cuda",
                        "--venv", "/opt/hb", "--api-key", "s3cret"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    script = r.stdout
    job = tmp_path / "job.sbatch"
    job.write_text(script)
    assert subprocess.run(["bash", "-n", str(job)]).returncode == 0
    sbatch = [ln.split(None, 1)[1] for ln in script.splitlines() if ln.startswith("#SBATCH")]
    for want in ("--partition=gpu", "--account=proj1", "--gres=gpu:2", "--time=02:00:00", "--job-name=hyperbench-vllm"):
        assert want in sbatch
    assert "module load apptainer\nmodule load cuda" in script and "source /opt/hb/bin/activate" in script
    assert "HF_HUB_OFFLINE=1" in script and "s3cret" not in script
    config = script.split("<<'HYPERBENCH_CONFIG'\n", 1)[1].split("\nHYPERBENCH_CONFIG\n", 1)[0]
    cfg = BenchConfig(**yaml.safe_load(config))
    assert cfg.target.launcher == "apptainer" and cfg.load.concurrency == [1, 8]
    assert cfg.workload.output_len == 32
    engine = cfg.engine_config()
    assert engine.kind == "vllm" and engine.model == "smollm2-135m" and engine.api_key is None
    assert "gpu_memory_utilization" in cfg.engine  # fully resolved, not the cluster's defaults
    # the bench runs in the background of a shell that waits for it through scancel's SIGTERM
    assert '--run-name "${SLURM_JOB_NAME:-hyperbench}-${SLURM_JOB_ID:-local}" &\n' in script
    assert script.rstrip().endswith('exit "$status"')

    cpu = subprocess.run([sys.executable, "-m", "harness.cli", "slurm", "--engine", "llamacpp", "--gpus", "0"],
                         capture_output=True, text=True, timeout=120).stdout
    assert "--gres" not in cpu and "export HYPERBENCH_GPUS=none" in cpu


# ---------------------------------------------------------------------------- images as Apptainer runs them


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.mark.container
@pytest.mark.timeout(3000)  # may be the first to build the images (tests/test_containers.py)
def test_engine_image_runs_like_a_sif(tmp_path, built_images):
    """An engine image under Apptainer's conditions, emulated with Docker: read-only root
    filesystem, an unknown uid with no home, the model and the cache bound at host paths, the
    environment the apptainer launcher gives, serve.sh as the launcher execs it."""
    docker, env = built_images.binary, built_images.env
    from harness.launchers.apptainer import engine_env
    from harness.launchers.containers import serve_args
    from harness.models import resolve_model

    # the model at a path the unknown uid can traverse (as the submitting user's own folders are
    # on a cluster; the host's cache may sit under /root, 0700 in the image): hard links, no copy
    # of the bytes. A GGUF beside the weights: served as is, no conversion.
    model = tmp_path / "models" / "smollm2-135m"
    shutil.copytree(resolve_model("smollm2-135m").path, model, copy_function=_link_or_copy)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    port = 8000
    args = ["run", "-d", "--read-only", "--tmpfs", "/tmp", "--user", "4242:4242", "--network", "bridge"]
    for key, value in engine_env(cache, port).items():
        args += ["-e", f"{key}={value}"]
    args += ["-e", "HOME=/nonexistent", "-v", f"{model}:{model}:ro", "-v", f"{cache}:{cache}",
             "--entrypoint", "/opt/hyperbench/entry.sh", "hyperbench/llamacpp:latest",
             "/opt/hyperbench/serve.sh", "llamacpp", *serve_args(engine_cfg("llamacpp"), str(model))]
    r = subprocess.run([docker, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        ip = json.loads(subprocess.run([docker, "inspect", cid], env=env, capture_output=True, text=True).stdout
                        )[0]["NetworkSettings"]["IPAddress"]
        # the launcher's HYPERBENCH_HOST is 127.0.0.1 (Apptainer shares the host network); here
        # the server listens inside its own namespace, so probe from inside
        deadline = time.monotonic() + 180
        while True:
            probe = subprocess.run([docker, "exec", cid, "python", "/opt/hyperbench/healthcheck.py"], env=env,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            state = json.loads(subprocess.run([docker, "inspect", cid], env=env, capture_output=True,
                                              text=True).stdout)[0]["State"]
            logs = subprocess.run([docker, "logs", cid], env=env, capture_output=True, text=True)
            assert state["Running"], logs.stdout[-3000:] + logs.stderr[-3000:]
            assert time.monotonic() < deadline, "not healthy in 3 minutes"
            time.sleep(1)
        out = subprocess.run([docker, "exec", cid, "python", "-c",
                              "import urllib.request, json; print(json.load(urllib.request.urlopen("
                              f"'http://127.0.0.1:{port}/v1/models'))['data'][0]['id'])"],
                             env=env, capture_output=True, text=True)
        assert out.stdout.strip() == "smollm2-135m", out.stderr
        assert ip is not None
    finally:
        subprocess.run([docker, "rm", "-f", cid], env=env, capture_output=True)


def test_leftover_instances_are_those_of_dead_harnesses():
    """`apptainer instance list --json` as 1.4 prints it: only hyperbench's own names whose
    harness pid is gone are leftovers (the real reaping: test_apptainer_tier.py)."""
    from harness.launchers.apptainer import instance_name, leftover_instances

    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = instance_name("llamacpp")
    assert mine.startswith(f"hyperbench-llamacpp-{os.getpid()}-")
    listing = json.dumps({"instances": [
        {"instance": mine, "pid": 1, "img": "/x.sif"},
        {"instance": f"hyperbench-hf-{dead.pid}-0123abcd", "pid": 2, "img": "/hf.sif"},
        {"instance": f"someone-elses-{dead.pid}", "pid": 3, "img": "/y.sif"},
        {"instance": f"hyperbench-vllm-{dead.pid}-nothex!", "pid": 4, "img": "/v.sif"},
    ]})  # fmt: skip
    assert leftover_instances(listing) == [f"hyperbench-hf-{dead.pid}-0123abcd"]
    assert leftover_instances("") == [] and leftover_instances("not json") == []
