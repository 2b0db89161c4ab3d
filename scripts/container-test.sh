#!/usr/bin/env bash
# Build the container image and run the gateway in it against a real backend.
#
# Run as root (CI does) with podman, buildah and mmdebstrap installed:
#     apt-get install -y podman buildah mmdebstrap
#     make container-test
#
# No image registry is reachable on the machines this runs on, so the base
# image is made from Debian's packages with mmdebstrap and imported into
# podman; it is kept between runs (delete it with `podman rmi $BASE_IMAGE`).
# `podman run` does not work there either: the gateway is started with
# `buildah run --isolation chroot`, which shares the host's network namespace,
# so the gateway in the image reaches a demo backend on the host's loopback
# and the checks below reach the gateway the same way.
#
# Checked: the gateway starts from the image's own ENTRYPOINT as the image's
# own (non-root) user, with its configuration from a mounted file, the
# backend's authkey from a mounted secret file and the API key hashes from the
# environment; /healthz, /readyz, POST /compute answering 11 (and 401 without
# the key); the process serving the port runs with a non-zero uid inside the
# image's root; the image's HEALTHCHECK command passes against it; SIGTERM
# stops it cleanly.  Then, with nothing mounted: `<image> --demo` serves the
# demo backend (POST /compute answering 11) and stops cleanly on SIGTERM, and
# `<image>` alone exits 2 saying what to mount.  Every process and container
# started here is removed on exit, whatever the outcome.
#
# Environment: PYTHON (default .venv/bin/python, with the project installed),
# IMAGE (default localhost/connbridge:test), BASE_IMAGE (default
# localhost/connbridge-base:bookworm), DEBIAN_SUITE (default bookworm),
# STARTUP_TIMEOUT seconds (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-localhost/connbridge:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/connbridge-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-60}

log() { printf 'container-test: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: mmdebstrap --mode=root and rootful podman need it"
for tool in podman buildah mmdebstrap; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y podman buildah mmdebstrap"
done
[ -x "$PYTHON" ] || die "$PYTHON is missing: run 'make install' first"

WORK=$(mktemp -d /tmp/connbridge-container-test.XXXXXX)
BACKEND_PID=
GATEWAY_PID=
CTR=
CTR_BARE=
IMAGE_BUILT=

# Every child of $1, then $1 itself: `buildah run` starts the gateway through
# helper processes, and a signal to buildah alone need not reach it.
tree() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        tree "$child"
    done
    echo "$1"
}

# Ask processes to stop, wait up to $1 seconds, then kill what is left.
stop_pids() {
    local grace=$1 deadline pid alive
    shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while :; do
        alive=
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ -z "$alive" ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && break
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$GATEWAY_PID" ]; then
        # shellcheck disable=SC2046  # one pid per word
        stop_pids 15 $(tree "$GATEWAY_PID")
        wait "$GATEWAY_PID" 2>/dev/null || true
    fi
    if [ -n "$BACKEND_PID" ]; then
        stop_pids 5 "$BACKEND_PID"
        wait "$BACKEND_PID" 2>/dev/null || true
    fi
    for ctr in $CTR $CTR_BARE; do
        buildah rm "$ctr" >/dev/null 2>&1 || log "could not remove working container $ctr"
    done
    if [ "$status" -ne 0 ]; then
        # The build's log only when the build is what failed.
        [ -n "$IMAGE_BUILT" ] && rm -f "$WORK/build.log"
        for f in build.log backend.log gateway.log demo.log; do
            if [ -s "$WORK/$f" ]; then
                log "--- last lines of $f ---"
                tail -n 40 "$WORK/$f" >&2
            fi
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- base image: Debian with python3 and venv, made here, cached --------------
if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE exists (cached)"
else
    log "making base image $BASE_IMAGE from Debian $DEBIAN_SUITE"
    start=$SECONDS
    # merged-usr hook: the /usr merge without the usrmerge package (and the
    # perl it pulls in).  The path excludes drop documentation and
    # translations; they stay in force for anything installed later.
    mmdebstrap --mode=root --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$DEBIAN_SUITE" "$WORK/base.tar" >"$WORK/build.log" 2>&1 \
        || die "mmdebstrap failed"
    podman import --quiet "$WORK/base.tar" "$BASE_IMAGE" >/dev/null
    rm -f "$WORK/base.tar"
    log "base image made in $((SECONDS - start))s"
fi

# -- the image ---------------------------------------------------------------
build_args=(--isolation chroot --format docker --layers=false
            --build-arg "BASE_IMAGE=$BASE_IMAGE" --tag "$IMAGE")
# Behind a TLS-intercepting proxy pip needs the host's CA bundle, which a
# fresh image lacks: mount the bundle pip is configured with on this host.
ca_bundle=${PIP_CERT:-$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)}
if [ -z "$ca_bundle" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    ca_bundle=/etc/ssl/certs/ca-certificates.crt
fi
if [ -n "$ca_bundle" ] && [ -f "$ca_bundle" ]; then
    build_args+=(--volume "$(dirname "$ca_bundle"):/host-certs:ro"
                 --build-arg "PIP_CERT=/host-certs/$(basename "$ca_bundle")")
fi
# (HTTP_PROXY, HTTPS_PROXY and NO_PROXY reach the build by podman's default.)
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "building $IMAGE"
start=$SECONDS
podman build "${build_args[@]}" . >"$WORK/build.log" 2>&1 || die "podman build failed"
log "image built in $((SECONDS - start))s"
IMAGE_BUILT=1
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true  # the previous run's image, now untagged
fi

image_user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
image_uid=${image_user%%:*}
case "$image_uid" in
    '' | 0 | root) die "the image runs as root (USER is '$image_user')" ;;
    *[!0-9]*) die "the image's USER '$image_user' is not numeric: cannot check it" ;;
esac
image_gid=${image_user#*:}
[ "$image_gid" = "$image_user" ] && image_gid=$image_uid
mapfile -d '' -t entrypoint < <(podman image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE" \
    | "$PYTHON" -c 'import json, sys; sys.stdout.write("".join(a + "\0" for a in json.load(sys.stdin)))')
[ "${#entrypoint[@]}" -gt 0 ] || die "the image has no ENTRYPOINT"
healthcheck=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")

# -- a demo backend on the host's loopback -----------------------------------
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
authkey=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
CONTAINER_TEST_AUTHKEY=$authkey "$PYTHON" -m connbridge.demo --address 127.0.0.1:0 \
    --authkey-env CONTAINER_TEST_AUTHKEY --ready-file "$WORK/backend.address" \
    </dev/null >"$WORK/backend.log" 2>&1 &
BACKEND_PID=$!
deadline=$((SECONDS + 15))
until [ -s "$WORK/backend.address" ]; do
    kill -0 "$BACKEND_PID" 2>/dev/null || die "the demo backend exited"
    [ "$SECONDS" -lt "$deadline" ] || die "the demo backend did not listen within 15s"
    sleep 0.05
done
backend_address=$(cat "$WORK/backend.address")
log "demo backend (pid $BACKEND_PID) on $backend_address"

# -- configuration: a file, a secret file and the environment ----------------
api_key=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')
api_key_sha256=$(printf '%s' "$api_key" | sha256sum | cut -d' ' -f1)
cat >"$WORK/connbridge.toml" <<EOF
[gateway]
default_backend = "adder"

[backends.adder]
address = "$backend_address"
authkey_file = "/run/secrets/connbridge/adder-authkey"
call_timeout = 5.0
max_connections = 2
EOF
printf '%s\n' "$authkey" >"$WORK/adder-authkey"
# The mounts keep the host's owners: the image's user must be able to read them.
chown "$image_uid:$image_gid" "$WORK/connbridge.toml" "$WORK/adder-authkey"
chmod 0444 "$WORK/connbridge.toml"
chmod 0400 "$WORK/adder-authkey"
gateway_port=$(free_port)

# -- the gateway in the image ------------------------------------------------
CTR=$(buildah from --pull=never --quiet "$IMAGE")
log "starting '${entrypoint[*]} --port $gateway_port' in $CTR as $image_user"
buildah run --isolation chroot --user "$image_user" \
    --volume "$WORK/connbridge.toml:/etc/connbridge/connbridge.toml:ro" \
    --volume "$WORK/adder-authkey:/run/secrets/connbridge/adder-authkey:ro" \
    --env "CONNBRIDGE_AUTH__KEYS=[{\"name\": \"container-test\", \"sha256\": \"$api_key_sha256\"}]" \
    "$CTR" -- "${entrypoint[@]}" --port "$gateway_port" \
    </dev/null >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!

# -- checks --------------------------------------------------------------------
GATEWAY_URL="http://127.0.0.1:$gateway_port" API_KEY=$api_key IMAGE_UID=$image_uid \
IMAGE_GID=$image_gid LAUNCHER_PID=$GATEWAY_PID STARTUP_TIMEOUT=$STARTUP_TIMEOUT WORK=$WORK \
"$PYTHON" - <<'EOF' || die "checks failed"
import json
import os
import sys
import time
import urllib.error
import urllib.request

url = os.environ["GATEWAY_URL"]
port = int(url.rsplit(":", 1)[1])


def fail(message):
    sys.exit(f"container-test: {message}")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def request(method, path, body=None, key=None, timeout=10.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


# Poll /healthz until it answers, the gateway exits or the deadline passes.
timeout = float(os.environ["STARTUP_TIMEOUT"])
deadline = time.monotonic() + timeout
while True:
    try:
        if request("GET", "/healthz", timeout=2.0)[0] == 200:
            break
    except OSError:
        pass
    if not alive(int(os.environ["LAUNCHER_PID"])):
        fail("the gateway exited before answering /healthz")
    if time.monotonic() > deadline:
        fail(f"/healthz did not answer 200 within {timeout:g}s")
    time.sleep(0.2)
print("container-test: /healthz 200", file=sys.stderr)

status, body = request("GET", "/readyz")
if status != 200:
    fail(f"/readyz answered {status}: {body[:500]!r}")
print("container-test: /readyz 200: the backend is reachable from the image", file=sys.stderr)

status, body = request("POST", "/compute", {"payload": [5, 6]})
if status != 401:
    fail(f"POST /compute without a key answered {status}, expected 401: {body[:500]!r}")
status, body = request("POST", "/compute", {"payload": [5, 6]}, key=os.environ["API_KEY"])
if status != 200 or json.loads(body).get("result") != 11:
    fail(f"POST /compute answered {status}: {body[:500]!r}")
print("container-test: POST /compute [5, 6] -> 11 (401 without the API key)", file=sys.stderr)


# The process that owns the listening socket, found through /proc: the
# socket's inode in /proc/net/tcp*, then the process holding that inode.
def listening_sockets(port):
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(f"socket:[{inode}]")
    return found


def holders(sockets):
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in fds):
                pids.add(int(pid))
        except OSError:  # exited meanwhile
            continue
    return pids


sockets = listening_sockets(port)
pids = holders(sockets) if sockets else set()
if not pids:
    fail(f"no process found listening on port {port}")
for pid in sorted(pids):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    uids, gids = fields["Uid"].split(), fields["Gid"].split()
    if "0" in uids or "0" in gids:
        fail(f"the gateway (pid {pid}) runs as root: uids {uids}, gids {gids}")
    if set(uids) != {os.environ["IMAGE_UID"]} or set(gids) != {os.environ["IMAGE_GID"]}:
        fail(f"the gateway (pid {pid}) runs as uids {uids}, gids {gids}: not the image's user")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")
    if not any(b"connbridge-gateway" in arg for arg in cmdline):
        fail(f"pid {pid} listening on port {port} is not the gateway: {cmdline!r}")
    if os.readlink(f"/proc/{pid}/root") == "/":
        fail(f"the gateway (pid {pid}) runs in the host's root, not the image's")
    print(f"container-test: the gateway (pid {pid}) runs as uid {uids[0]}, gid {gids[0]}, "
          "in the image's root", file=sys.stderr)
with open(os.path.join(os.environ["WORK"], "gateway.pids"), "w") as f:
    f.write(" ".join(map(str, sorted(pids))) + "\n")
EOF
read -r -a gateway_pids <"$WORK/gateway.pids"

# -- the image's HEALTHCHECK, run in the image as it would be -----------------
# Its command, written for the default port 8000, aimed at port $1.
healthcheck_for() {
    printf '%s' "$healthcheck" | "$PYTHON" -c '
import json, sys
test = (json.load(sys.stdin) or {}).get("Test") or ["NONE"]
if test[0] != "CMD" or not any(":8000/healthz" in arg for arg in test):
    sys.exit(f"the HEALTHCHECK is not an exec-form probe of :8000/healthz: {test}")
sys.stdout.write("".join(arg.replace(":8000/", f":{sys.argv[1]}/") + "\0" for arg in test[1:]))
' "$1"
}
run_healthcheck() {
    local -a command
    mapfile -d '' -t command < <(healthcheck_for "$1")
    [ "${#command[@]}" -gt 0 ] || die "the image has no usable HEALTHCHECK"
    timeout 30 buildah run --isolation chroot --user "$image_user" "$CTR" -- "${command[@]}" \
        >>"$WORK/gateway.log" 2>&1
}
run_healthcheck "$gateway_port" || die "the HEALTHCHECK command failed against a healthy gateway"
if run_healthcheck "$(free_port)"; then
    die "the HEALTHCHECK command passed with no gateway listening"
fi
log "the image's HEALTHCHECK passes against the gateway and fails with nothing listening"

# -- SIGTERM stops it cleanly --------------------------------------------------
kill -TERM "${gateway_pids[@]}"
deadline=$((SECONDS + 30))
while kill -0 "$GATEWAY_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
done
kill -0 "$GATEWAY_PID" 2>/dev/null && die "the gateway did not stop within 30s of SIGTERM"
rc=0
wait "$GATEWAY_PID" || rc=$?
GATEWAY_PID=
[ "$rc" -eq 0 ] || die "the gateway exited with status $rc after SIGTERM"
log "SIGTERM: the gateway stopped with status 0"

# -- nothing mounted: `<image> --demo`, and `<image>` alone --------------------
# A fresh working container: the first one has the mount points left in it.
CTR_BARE=$(buildah from --pull=never --quiet "$IMAGE")
demo_port=$(free_port)
log "starting '${entrypoint[*]} --port $demo_port --demo' with nothing mounted in $CTR_BARE"
buildah run --isolation chroot --user "$image_user" \
    "$CTR_BARE" -- "${entrypoint[@]}" --port "$demo_port" --demo \
    </dev/null >"$WORK/demo.log" 2>&1 &
GATEWAY_PID=$!
GATEWAY_URL="http://127.0.0.1:$demo_port" LAUNCHER_PID=$GATEWAY_PID WORK=$WORK \
STARTUP_TIMEOUT=$STARTUP_TIMEOUT "$PYTHON" - <<'EOF' || die "--demo checks failed"
import json
import os
import sys
import time
import urllib.request

url = os.environ["GATEWAY_URL"]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


timeout = float(os.environ["STARTUP_TIMEOUT"])
deadline = time.monotonic() + timeout
while True:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2.0) as resp:
            if resp.status == 200:
                break
    except OSError:
        pass
    if not alive(int(os.environ["LAUNCHER_PID"])):
        sys.exit("container-test: the gateway exited before answering /healthz with --demo")
    if time.monotonic() > deadline:
        sys.exit(f"container-test: /healthz did not answer 200 within {timeout:g}s with --demo")
    time.sleep(0.2)
req = urllib.request.Request(
    url + "/compute",
    data=json.dumps({"payload": [5, 6]}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(req, timeout=10) as resp:
    body = json.loads(resp.read())
if resp.status != 200 or body.get("result") != 11 or body.get("backend") != "demo":
    sys.exit(f"container-test: POST /compute with --demo answered {resp.status}: {body!r}")
print("container-test: --demo, nothing mounted: /healthz 200, POST /compute [5, 6] -> 11",
      file=sys.stderr)

# The gateway's pid: the holder of the listening socket (see the first checks).
port = int(url.rsplit(":", 1)[1])
inodes = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table) as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
pids = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
            pids.add(pid)
    except OSError:
        continue
if not pids:
    sys.exit(f"container-test: no process found listening on port {port} with --demo")
with open(os.path.join(os.environ["WORK"], "demo.pids"), "w") as f:
    f.write(" ".join(sorted(pids)) + "\n")
EOF
# SIGTERM to the gateway itself (the process holding the port), as above.
read -r -a demo_gateway <"$WORK/demo.pids"
[ "${#demo_gateway[@]}" -gt 0 ] || die "--demo: no connbridge-gateway process found under buildah"
kill -TERM "${demo_gateway[@]}"
deadline=$((SECONDS + 30))
while kill -0 "$GATEWAY_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
done
kill -0 "$GATEWAY_PID" 2>/dev/null && die "the gateway with --demo did not stop within 30s of SIGTERM"
rc=0
wait "$GATEWAY_PID" || rc=$?
GATEWAY_PID=
[ "$rc" -eq 0 ] || die "the gateway with --demo exited with status $rc after SIGTERM"
grep -q "serving the demo backend on 0.0.0.0 without API keys" "$WORK/demo.log" \
    || die "--demo on 0.0.0.0 without keys logged no warning"
log "--demo: stopped with status 0 on SIGTERM"

rc=0
timeout 60 buildah run --isolation chroot --user "$image_user" "$CTR_BARE" -- "${entrypoint[@]}" \
    </dev/null >"$WORK/demo.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || die "with nothing mounted and no --demo the gateway exited $rc, expected 2"
grep -q "mount a configuration file at /etc/connbridge/connbridge.toml" "$WORK/demo.log" \
    || die "with nothing mounted the error does not say what to mount"
log "nothing mounted, no --demo: exit 2: $(head -n 1 "$WORK/demo.log")"

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")
log "image $IMAGE: $((size / 1000000)) MB ($((base_size / 1000000)) MB of it the base image)"
log "PASS"
