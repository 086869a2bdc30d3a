#!/usr/bin/env bash
# Make this machine able to run Apptainer, for the HPC tier of the tests (tests/test_apptainer.py).
#
# Debian bookworm has no apptainer package; sid's (1.4.5) needs trixie's libc. So, cached under
# $HYPERBENCH_CACHE/apptainer (a second run takes about a second):
#   1. root/: a debootstrapped Debian trixie with sid's apptainer (trixie pinned above sid, so
#      only apptainer and what it needs come from sid). Its apptainer.conf says
#      `root default capabilities = no`: this sandbox lacks one capability of root's default set.
#   2. bin/apptainer: a wrapper that runs root/'s apptainer as if that root were the machine's:
#      apptainer reads the mount table, so a chroot does not do. The wrapper enters a private
#      mount namespace, binds the host's own data folders (every top-level
#      folder but the system's: /work, /root, /tmp, wherever the checkout is; /var/tmp; the
#      docker socket for docker-daemon:// builds) into root/, and pivot_roots there.
#      Instance state lives in $HOME/.apptainer (the host's /root): instances started by one call
#      are listed, joined and stopped by the next.
# A cluster node with apptainer installed needs none of this.
#
# Exit status: 0 ready (prints `export PATH=<bin>:$PATH`); 3 this machine cannot (not root, no
# apt, no debootstrap mirror, no mount namespaces): scripts/test.sh then lets the apptainer tests
# skip with the reason; any other status is a real failure.
#
# Env: HYPERBENCH_CACHE, DEBIAN_MIRROR (http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}"
DIR="$CACHE/apptainer"
ROOT="$DIR/root"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "apptainer_setup: $*" >&2; }
cannot() { log "$*"; exit 3; }
t0=$(date +%s)

[[ "$(id -u)" == 0 ]] || cannot "needs root (a node without root has apptainer from its admins: put it on PATH)"
unshare -m true 2>/dev/null || cannot "no mount namespaces here (unshare -m failed)"

# 1. the trixie root with sid's apptainer ----------------------------------------------------
if [[ ! -x "$ROOT/usr/bin/apptainer" ]]; then
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || cannot "needs apt to install debootstrap"
        apt-get install -y -qq debootstrap >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; } \
            || cannot "apt-get install debootstrap failed"
    fi
    rm -rf "$ROOT.tmp" && mkdir -p "$DIR"
    log "debootstrap trixie into $ROOT (about half a minute)"
    debootstrap --variant=minbase trixie "$ROOT.tmp" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
        || { tail -5 "$DIR/debootstrap.log" >&2; cannot "debootstrap trixie from $MIRROR failed"; }
    cat > "$ROOT.tmp/etc/apt/sources.list" <<EOF
deb $MIRROR trixie main
deb $MIRROR sid main
EOF
    cat > "$ROOT.tmp/etc/apt/preferences.d/trixie-first" <<EOF
Package: *
Pin: release n=trixie
Pin-Priority: 700

Package: *
Pin: release n=sid
Pin-Priority: 100
EOF
    log "apt-get install apptainer (sid) in the root"
    # the sid list is a dated snapshot: its Valid-Until may have passed
    chroot "$ROOT.tmp" sh -c 'export DEBIAN_FRONTEND=noninteractive
        apt-get -qq -o Acquire::Check-Valid-Until=false update &&
        apt-get install -y -qq --no-install-recommends -t sid apptainer squashfs-tools ca-certificates &&
        apt-get clean' >"$DIR/apt.log" 2>&1 || { tail -20 "$DIR/apt.log" >&2; exit 1; }
    cp -L /etc/resolv.conf "$ROOT.tmp/etc/resolv.conf" 2>/dev/null || true  # apt in the chroot
    sed -i 's/^root default capabilities = .*/root default capabilities = no/' \
        "$ROOT.tmp/etc/apptainer/apptainer.conf"
    mkdir -p "$ROOT.tmp/oldroot"
    mv "$ROOT.tmp" "$ROOT"
fi

# apptainer binds the "host's" hosts and resolv.conf into every container: the root's are that host
for f in hosts resolv.conf; do
    [[ -s "$ROOT/etc/$f" ]] || cp -L "/etc/$f" "$ROOT/etc/$f" 2>/dev/null || touch "$ROOT/etc/$f"
done

# 2. the wrapper ------------------------------------------------------------------------------
mkdir -p "$DIR/bin"
cat > "$DIR/bin/apptainer.tmp" <<'EOF'
#!/bin/bash
# apptainer from a Debian trixie root (scripts/apptainer_setup.sh), run in a private mount
# namespace where that root is / and the host's data folders are bound at their own paths.
ROOT="$(cd "$(dirname "$(readlink -f "$0")")/../root" && pwd)"
if [[ "${1:-}" != --in-namespace ]]; then
    exec unshare -m --fork -- "$0" --in-namespace "$PWD" "$@"
fi
shift; cwd="$1"; shift
set -e
mount --make-rprivate /
mount --bind "$ROOT" "$ROOT"
# every top-level folder of the host that is data, not system (a checkout may live anywhere:
# /work, /check, /scratch...), then /var/tmp and the kernel's file systems
for d in /*/ /var/tmp/ /dev/ /sys/ /proc/; do
    d="${d%/}"
    [[ -d "$d" && ! -L "$d" ]] || continue
    case "$d" in
        /bin|/boot|/etc|/lib|/lib32|/lib64|/libx32|/sbin|/usr|/var|/run|/opt|/media|/mnt|/lost+found|/oldroot) continue ;;
    esac
    mkdir -p "$ROOT$d" && mount --rbind "$d" "$ROOT$d"
done
for sock in /run/docker.sock /run/munge; do  # docker-daemon:// builds; munge for srun inside
    [[ -e "$sock" ]] || continue
    if [[ -d "$sock" ]]; then mkdir -p "$ROOT$sock"; else touch "$ROOT$sock"; fi
    mount --bind "$sock" "$ROOT$sock"
done
cd "$ROOT"
pivot_root . oldroot
umount -l /oldroot
set +e
cd "$cwd" 2>/dev/null || cd /
# HYPERBENCH_APPTAINER_USER=uid:gid: apptainer as that user (user namespaces, no privilege), as on
# a cluster node where users are not root
if [[ -n "${HYPERBENCH_APPTAINER_USER:-}" ]]; then
    exec setpriv --reuid="${HYPERBENCH_APPTAINER_USER%%:*}" --regid="${HYPERBENCH_APPTAINER_USER##*:}" \
        --clear-groups env HOME="${HYPERBENCH_APPTAINER_HOME:-/tmp}" /usr/bin/apptainer "$@"
fi
exec /usr/bin/apptainer "$@"
EOF
chmod 755 "$DIR/bin/apptainer.tmp" && mv "$DIR/bin/apptainer.tmp" "$DIR/bin/apptainer"
"$DIR/bin/apptainer" --version >/dev/null || { log "the wrapped apptainer does not run"; exit 1; }

log "ready in $(( $(date +%s) - t0 )) s ($("$DIR/bin/apptainer" --version))"
echo "export PATH=$DIR/bin:\$PATH"
