#!/bin/sh
# The runtime every hyperbench image shares, on any Debian or Ubuntu base (a plain Debian, a
# CUDA runtime image, a vLLM image): python3 in a virtualenv at /opt/venv, a non-root user
# `hyperbench` (uid 1000), and the mount points of the compose volumes.
#   setup-runtime.sh [extra apt packages...]
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates libgomp1 "$@" >/dev/null
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# --system-site-packages: on a vLLM (or other Python) base image, what it installed stays visible
python3 -m venv --system-site-packages /opt/venv
# uid 1000 is taken on some bases (ubuntu:24.04 has "ubuntu"): hand it over
other="$(getent passwd 1000 | cut -d: -f1 || true)"
if [ -n "$other" ] && [ "$other" != hyperbench ]; then userdel --remove "$other" 2>/dev/null || userdel "$other"; fi
id hyperbench >/dev/null 2>&1 || useradd --uid 1000 --user-group --create-home --shell /bin/bash hyperbench
# /cache is the shared model/wheel cache volume: writable by any uid (compose may run the
# harness as the host user, Apptainer always runs as the caller), sticky like /tmp
mkdir -p /cache /models /data /workspace/results
chmod 1777 /cache /workspace/results
chown hyperbench:hyperbench /models /data /workspace
