#!/usr/bin/env bash
# Starts `make demo` as a user would and checks that POST /compute answers 11.
# Run from the repository root; stops only the process group it started.
set -euo pipefail
port="${1:-18765}"
log="$(mktemp)"
setsid make demo PORT="$port" >"$log" 2>&1 &
pid=$!
cleanup() {
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
deadline=$((SECONDS + 300))   # the first run installs the project into .venv
while true; do
    if answer=$(.venv/bin/python - "$port" 2>/dev/null <<'PY'
import json, sys, urllib.request
request = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/compute",
    data=json.dumps({"payload": [5, 6]}).encode(),
    headers={"Content-Type": "application/json"},
)
print(json.load(urllib.request.urlopen(request, timeout=5))["result"])
PY
    ); then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "make demo exited early:"; cat "$log"; exit 1
    fi
    if (( SECONDS > deadline )); then
        echo "make demo did not serve /compute in time:"; cat "$log"; exit 1
    fi
    sleep 0.5
done
if [[ "$answer" != "11" ]]; then
    echo "make demo answered $answer instead of 11"; cat "$log"; exit 1
fi
echo "make demo: POST /compute {\"payload\": [5, 6]} -> $answer"
