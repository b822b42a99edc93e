#!/usr/bin/env bash
# Load benchmark of the CDS Hooks service. Prints figures; never asserts.
#
#     bench/load.sh [--workers N] [--duration 30s] [--connections 16] [--threads 2]
#                   [--engine-cache-size N]   (the service's engine_cache_size; 0 = off)
#                   [--patients N]            (N different synthetic patients, in turn)
#                   [--shared-accept]         (balance_connections = false: uvicorn's race)
#                   [--reuse-port]            (reuse_port = true: a SO_REUSEPORT socket per worker)
#                   [--no-metrics]            ([metrics] enabled = false: nothing recorded)
#                   [--metrics-out FILE]      (save a scrape of /metrics after the run)
#
# Starts `movement-cds serve` (bundled knowledge base) on 127.0.0.1, POSTs patient-view
# with a full prefetch built from examples/example-patient.json (patient, observations
# searchset, conditions searchset, careplan null) with wrk, prints requests/s, latency
# percentiles (wrk --latency), non-2xx counts and how wrk's connections were spread over
# the worker processes (ss), then stops the service. With --patients N the requests cycle
# through N seeded synthetic patients (fhir_adapters/_population.py) instead: every chart
# differs, so the engine-result cache rarely helps (N above engine_cache_size: never).
#
# AUTHENTICATION IS OFF for this run (--insecure-no-auth): every CDS Hooks JWT carries a
# single-use jti, so one token cannot be replayed by wrk, and minting a fresh signed token
# per request would measure the client, not the service. The JWT check itself (one ES384
# or RS384 signature verification per call) is not in these figures.
#
# Needs wrk (Debian/Ubuntu: apt-get install wrk); installs nothing itself.
set -euo pipefail

WORKERS=1
DURATION=30s
CONNECTIONS=16
THREADS=2
CACHE=512
PATIENTS=0
BALANCE=true
REUSE_PORT=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) WORKERS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --engine-cache-size) CACHE="$2"; shift 2 ;;
        --patients) PATIENTS="$2"; shift 2 ;;
        --shared-accept) BALANCE=false; shift ;;
        --reuse-port) BALANCE=false; REUSE_PORT=true; shift ;;
        --no-metrics) METRICS=false; shift ;;
        --metrics-out) METRICS_OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "load.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if ! command -v wrk >/dev/null 2>&1; then
    echo "load.sh: wrk not found; install it first (Debian/Ubuntu: apt-get install wrk)" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"

WORK="$(mktemp -d)"
SERVICE_PID=""
cleanup() {
    if [[ -n "$SERVICE_PID" ]] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$SERVICE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
PATH_PV="/cds-services/movement-cds-patient-view"

# The request bodies: a realistic full prefetch from the example patient, or from N
# synthetic patients (one body per line of bodies.jsonl).
"$PY" - "$WORK/body.json" "$WORK/bodies.jsonl" "$PATIENTS" <<'EOF'
import json, sys, uuid
from datetime import UTC, datetime
def of(res, t): return [r for r in res if r["resourceType"] == t]
def searchset(items):
    return {"resourceType": "Bundle", "type": "searchset", "total": len(items),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in items]}
def body(bundle):
    res = [e["resource"] for e in bundle["entry"]]
    patient = of(res, "Patient")[0]
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/load-test", "patientId": patient["id"]},
            "prefetch": {"patient": patient, "observations": searchset(of(res, "Observation")),
                         "conditions": searchset(of(res, "Condition")), "careplan": None}}
json.dump(body(json.load(open("examples/example-patient.json"))), open(sys.argv[1], "w"),
          separators=(",", ":"))
n = int(sys.argv[3])
if n:
    from fhir_adapters._population import synthetic_bundle
    now = datetime.now(UTC)
    with open(sys.argv[2], "w") as out:
        for i in range(n):
            out.write(json.dumps(body(synthetic_bundle(2026, i, now)), separators=(",", ":")))
            out.write("\n")
EOF

cat > "$WORK/service.toml" <<EOF
[service]
base_url = "$BASE"
engine_cache_size = $CACHE
balance_connections = $BALANCE
reuse_port = $REUSE_PORT

[auth]
required = false

[metrics]
enabled = ${METRICS:-true}
EOF

if [[ "$PATIENTS" -gt 0 ]]; then
cat > "$WORK/post.lua" <<EOF
local bodies = {}
for line in io.lines("$WORK/bodies.jsonl") do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json", ["Accept"] = "application/json"}
local counter = 0
function setup(thread) thread:set("id", counter); counter = counter + 1 end
local n = 0
function init(args) n = (id or 0) * 997 end  -- each thread starts elsewhere in the list
function request()
    n = n % #bodies + 1
    return wrk.format("POST", nil, headers, bodies[n])
end
EOF
else
cat > "$WORK/post.lua" <<EOF
local f = assert(io.open("$WORK/body.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
EOF
fi

echo "service: movement-cds serve --workers $WORKERS --insecure-no-auth on $BASE (auth OFF, engine_cache_size $CACHE)"
"$PY" -m movement_cds serve --config "$WORK/service.toml" --insecure-no-auth \
    --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!

# Ready = every worker has started (uvicorn logs "Application startup complete." once per
# worker process) and the service answers. Starting wrk when only the first worker is up
# gives it all the connections: wrk keeps them for the whole run, so the other core idles.
ready=""
for _ in $(seq 1 600); do  # up to 120 s: each worker loads and warms up the engine
    if ! kill -0 "$SERVICE_PID" 2>/dev/null; then
        echo "load.sh: the service exited:" >&2; cat "$WORK/service.log" >&2; exit 1
    fi
    started="$(grep -c 'Application startup complete' "$WORK/service.log" || true)"
    if [[ "$BALANCE" == true && "$WORKERS" -gt 1 ]]; then  # and registered with the balancer
        registered="$(grep -c 'balancer: worker [0-9]* ready' "$WORK/service.log" || true)"
        [[ "$registered" -ge "$WORKERS" ]] || started=0
    fi
    if [[ "$started" -ge "$WORKERS" ]] && "$PY" -c "import httpx,sys; sys.exit(httpx.get('$BASE/cds-services', timeout=1).status_code != 200)" 2>/dev/null; then
        ready=1; break
    fi
    sleep 0.2
done
[[ -n "$ready" ]] || { echo "load.sh: the service did not start in 120 s" >&2; exit 1; }
echo "service ready: $started of $WORKERS worker(s) started"

# One checked call first: the body must get 200 with cards, or the figures mean nothing.
"$PY" - "$BASE$PATH_PV" "$WORK/body.json" <<'EOF'
import httpx, sys
r = httpx.post(sys.argv[1], content=open(sys.argv[2], "rb").read(),
               headers={"Content-Type": "application/json"}, timeout=30)
if r.status_code != 200 or not r.json().get("cards"):
    sys.exit(f"load.sh: warm-up call got {r.status_code}: {r.text[:300]}")
print(f"warm-up call: 200, {len(r.json()['cards'])} cards, "
      f"request body {len(r.request.content)} bytes")
EOF

# How fast the machine is right now: a fixed CPU-bound loop (0.9 s on a quiet 2-vCPU
# machine here, up to 2 s in its slow minutes). Figures taken at different speeds differ.
CALIB="$("$PY" -c 'import json, time
d = {"a": [{"x": i, "y": str(i), "z": [1, 2, 3]} for i in range(2000)]}
t = time.perf_counter()
for _ in range(200):
    json.loads(json.dumps(d)); sorted(range(20000), key=lambda v: -v)
print(round(time.perf_counter() - t, 2))')"
echo "calibration: ${CALIB} s"

echo "wrk --latency -t$THREADS -c$CONNECTIONS -d$DURATION --timeout 10s -s post.lua $BASE$PATH_PV"
wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s \
    -s "$WORK/post.lua" "$BASE$PATH_PV" > "$WORK/wrk.out" &
WRK_PID=$!
SPLIT=""
if command -v ss >/dev/null 2>&1; then  # which worker took how many of wrk's connections
    sleep 2
    SPLIT="$(ss -tnp state established "( sport = :$PORT )" 2>/dev/null \
        | grep -o 'pid=[0-9]*' | sort | uniq -c | awk '{print $1}' | paste -sd/ -)"
fi
wait "$WRK_PID"
cat "$WORK/wrk.out"
if [[ -n "${METRICS_OUT:-}" ]]; then  # one scrape: every worker's counts (multiprocess)
    "$PY" -c "import sys, httpx; sys.stdout.write(httpx.get(sys.argv[1], timeout=10).text)" \
        "$BASE/metrics" > "$METRICS_OUT" || echo "could not read $BASE/metrics"
fi

echo "--- summary (workers=$WORKERS, balance_connections=$BALANCE, reuse_port=$REUSE_PORT, engine_cache_size=$CACHE, patients=$PATIENTS (0: the example patient only), auth OFF) ---"
echo "connections per worker: ${SPLIT:-unknown (no ss)}"
echo "calibration: ${CALIB} s"
grep -E "Requests/sec" "$WORK/wrk.out" || true
awk '/Latency Distribution/{on=1; next} on && /%/{print "latency p" $1 " " $2} on && !/%/{on=0}' \
    "$WORK/wrk.out" | sed 's/%//'
grep -E "Non-2xx or 3xx responses" "$WORK/wrk.out" || echo "Non-2xx or 3xx responses: 0"
grep -E "Socket errors" "$WORK/wrk.out" || echo "Socket errors: none"
