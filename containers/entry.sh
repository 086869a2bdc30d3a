#!/bin/sh
# ENTRYPOINT prefix of every image. A CA bundle mounted at /etc/hyperbench/extra-ca.pem (compose
# mounts $HYPERBENCH_EXTRA_CA there; a corporate proxy's CA) is trusted, beside the system's, by
# pip (staging built-in models from the registry), httpx and requests (the hub). Then exec "$@".
if [ -s /etc/hyperbench/extra-ca.pem ]; then
    bundle="${TMPDIR:-/tmp}/hyperbench-ca-$(id -u).pem"
    cat /etc/ssl/certs/ca-certificates.crt /etc/hyperbench/extra-ca.pem > "$bundle"
    export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
fi
exec "$@"
