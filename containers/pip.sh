#!/bin/sh
# `pip <install|wheel> ...` with the image's constraints and, when the build was given one, an
# extra CA bundle (BuildKit secret `extra_ca`: a corporate proxy's CA, or a CI machine's bundle).
# The secret is mounted for one RUN only and the combined bundle is deleted at its end: it is in
# no layer.   Env: PIP_CONSTRAINTS (default /opt/hyperbench/constraints.txt), PYTHON (python).
set -eu
bundle=""
if [ -s /run/secrets/extra_ca ]; then
    bundle="$(mktemp)"
    cat /etc/ssl/certs/ca-certificates.crt /run/secrets/extra_ca > "$bundle" 2>/dev/null \
        || cat /run/secrets/extra_ca > "$bundle"
    export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
fi
cmd="$1"
shift
status=0
"${PYTHON:-python}" -m pip "$cmd" --no-input --progress-bar off \
    -c "${PIP_CONSTRAINTS:-/opt/hyperbench/constraints.txt}" "$@" || status=$?
[ -z "$bundle" ] || rm -f "$bundle"
exit $status
