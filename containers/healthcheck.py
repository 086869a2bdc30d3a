"""HEALTHCHECK of the engine images: GET /health on the serving port answers 200 (stdlib only:
it runs every few seconds, so it must start fast)."""

import os
import sys
import urllib.request

port = os.environ.get("HYPERBENCH_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:  # any failure is "unhealthy"; the reason shows in `docker inspect`
    print(f"unhealthy: {e}")
    sys.exit(1)
