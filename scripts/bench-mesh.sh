#!/usr/bin/env bash
# Added latency of the Trellis mesh against a direct path and against a pair
# of haproxy instances doing the same mTLS hop, measured side by side in one
# run (the machine is noisy: compare within a run, report ratios).
#
#   oha -> nginx                                                  (direct)
#   oha -> trellis-proxy A -> mTLS 1.3 -> trellis-proxy B -> nginx (trellis)
#   oha -> haproxy A       -> mTLS 1.3 -> haproxy B       -> nginx (haproxy)
#
# The Trellis proxies get their certificates and endpoints from the real
# control plane (`trellis-mesh identity` and `destination`) running against
# the Kubernetes emulator, with service account tokens from TokenRequest.
# Everything listens on 127.0.0.1. Usage: scripts/bench-mesh.sh [rounds] [seconds] [rate]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
seconds=${2:-30}
rate=${3:-2000}
source "$root/scripts/target-dir.sh"
tools=$HOME/.cache/trellis-tools
work=${TRELLIS_BENCH_DIR:-$HOME/.cache/trellis-bench-mesh}

if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy nginx-light openssl
fi
[ -x "$tools/bin/oha" ] || cargo install oha --version 1.16.0 --locked --root "$tools"
command -v kubectl >/dev/null || { echo "bench-mesh.sh: kubectl is needed to set up the emulated cluster" >&2; exit 1; }
cargo build --release --locked -p trellis-proxy -p trellis-mesh -p kube-emulator \
  --bin trellis-proxy --bin trellis-mesh --bin kube-emulator --manifest-path "$root/Cargo.toml"
bin=$CARGO_TARGET_DIR/release

rm -rf "$work" && mkdir -p "$work"/{pki,run,results}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in "$work"/run/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
start() { # name, command...: runs in the background, logs to run/<name>.log
  local name=$1; shift
  "$@" >"$work/run/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/run/$name.pid"
}
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "bench-mesh.sh: $what did not come up; logs in $work/run" >&2; exit 1
}

# --- PKI: one trust anchor; the mesh issuer and haproxy's leaves chain to it.
pki=$work/pki
openssl ecparam -name prime256v1 -genkey -noout -out "$pki/anchor.key"
openssl req -x509 -new -key "$pki/anchor.key" -sha256 -days 30 -subj /CN=root.cluster.local \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out "$pki/anchor.crt"
sign() { # name, extensions
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$1.key"
  openssl req -new -key "$pki/$1.key" -subj "/CN=$1" -out "$pki/$1.csr"
  printf '%s\n' "$2" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/anchor.crt" -CAkey "$pki/anchor.key" -CAcreateserial -days 30 -sha256 \
    -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}
sign issuer "basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign"
sign proxy-a "subjectAltName=DNS:proxy-a.mesh.local
extendedKeyUsage=clientAuth"
sign proxy-b "subjectAltName=DNS:proxy-b.mesh.local,IP:127.0.0.1
extendedKeyUsage=serverAuth"
cat "$pki/proxy-a.crt" "$pki/proxy-a.key" >"$pki/proxy-a.pem"
cat "$pki/proxy-b.crt" "$pki/proxy-b.key" >"$pki/proxy-b.pem"

# --- origin: the same nginx for all three paths.
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/run/nginx-master.pid;
error_log $work/run/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "hello from the bench origin\n"; } }
}
NGINX
start nginx nginx -c "$work/nginx.conf"

# --- haproxy pair (the configuration of baselines-measured-here.md).
haproxy_common="global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse safe"
cat >"$work/haproxy-a.cfg" <<HA
$haproxy_common
frontend fe_plain
    bind 127.0.0.1:10000
    default_backend be_mtls
backend be_mtls
    server proxy_b 127.0.0.1:10443 ssl verify required crt $pki/proxy-a.pem ca-file $pki/anchor.crt sni str(proxy-b.mesh.local) verifyhost proxy-b.mesh.local ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3
HA
cat >"$work/haproxy-b.cfg" <<HB
$haproxy_common
frontend fe_mtls
    bind 127.0.0.1:10443 ssl crt $pki/proxy-b.pem ca-file $pki/anchor.crt verify required ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3
    default_backend be_origin
backend be_origin
    server origin 127.0.0.1:18080
HB
start haproxy-a haproxy -db -f "$work/haproxy-a.cfg"
start haproxy-b haproxy -db -f "$work/haproxy-b.cfg"

# --- the emulated cluster: issuer Secret, two meshed pods, the origin Service.
start kube-emulator "$bin/kube-emulator" --port 0 --kubeconfig "$work/kubeconfig"
wait_for "the Kubernetes emulator" test -s "$work/kubeconfig"
export KUBECONFIG=$work/kubeconfig
kubectl create namespace trellis >/dev/null
kubectl create namespace bench >/dev/null
kubectl -n trellis create secret generic trellis-identity-issuer --from-file=tls.crt="$pki/issuer.crt" \
  --from-file=tls.key="$pki/issuer.key" --from-file=ca.crt="$pki/anchor.crt" >/dev/null
kubectl -n bench create serviceaccount client >/dev/null
kubectl -n bench create serviceaccount server >/dev/null
pod() { # name, service account, proxy inbound port
  cat <<POD
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: bench, annotations: {trellis.io/proxy-version: bench}}
spec:
  serviceAccountName: $2
  initContainers:
  - {name: trellis-proxy, image: trellis-proxy, restartPolicy: Always, ports: [{name: trellis-proxy, containerPort: $3}]}
  containers:
  - {name: app, image: app}
POD
}
{ pod client-0 client 14143; echo ---; pod server-0 server 24143; } | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<K8S
apiVersion: v1
kind: Service
metadata: {name: origin, namespace: bench}
spec: {clusterIP: 10.96.0.80, ports: [{name: http, port: 80, targetPort: 18080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: origin-1, namespace: bench, labels: {kubernetes.io/service-name: origin}}
addressType: IPv4
ports: [{name: http, port: 18080, protocol: TCP}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {ready: true}
  zone: us-east-1a
  targetRef: {kind: Pod, namespace: bench, name: server-0}
K8S
kubectl -n bench create token client --audience identity.trellis.io --duration 24h >"$work/client.token"
kubectl -n bench create token server --audience identity.trellis.io --duration 24h >"$work/server.token"

mesh_env=(TRELLIS_MESH_TRUST_DOMAIN=cluster.local TRELLIS_MESH_NAMESPACE=trellis TRELLIS_MESH_LOG=warn)
start identity env "${mesh_env[@]}" TRELLIS_MESH_GRPC_ADDR=127.0.0.1:18090 TRELLIS_MESH_ADMIN_ADDR=127.0.0.1:19990 \
  "$bin/trellis-mesh" identity
start destination env "${mesh_env[@]}" TRELLIS_MESH_GRPC_ADDR=127.0.0.1:18086 TRELLIS_MESH_ADMIN_ADDR=127.0.0.1:19991 \
  "$bin/trellis-mesh" destination
wait_for "trellis-mesh identity" curl -sf http://127.0.0.1:19990/ready
wait_for "trellis-mesh destination" curl -sf http://127.0.0.1:19991/ready

proxy() { # name, service account, inbound, outbound, admin
  start "trellis-$1" env TRELLIS_PROXY_IDENTITY="spiffe://cluster.local/ns/bench/sa/$2" \
    TRELLIS_PROXY_TRUST_ANCHORS="$(cat "$pki/anchor.crt")" \
    TRELLIS_PROXY_IDENTITY_SVC_ADDR=127.0.0.1:18090 \
    TRELLIS_PROXY_IDENTITY_SVC_NAME=spiffe://cluster.local/ns/trellis/sa/trellis-identity \
    TRELLIS_PROXY_DESTINATION_SVC_ADDR=127.0.0.1:18086 \
    TRELLIS_PROXY_DESTINATION_SVC_NAME=spiffe://cluster.local/ns/trellis/sa/trellis-destination \
    TRELLIS_PROXY_TOKEN_PATH="$work/$2.token" TRELLIS_PROXY_ZONE=us-east-1a \
    TRELLIS_PROXY_INBOUND_ADDR="127.0.0.1:$3" TRELLIS_PROXY_OUTBOUND_ADDR="127.0.0.1:$4" \
    TRELLIS_PROXY_ADMIN_ADDR="127.0.0.1:$5" TRELLIS_PROXY_INBOUND_POLICY=all-authenticated TRELLIS_PROXY_LOG=warn \
    "$bin/trellis-proxy"
  wait_for "trellis-proxy $1" curl -sf "http://127.0.0.1:$5/ready"
}
proxy a client 14143 14140 14191
proxy b server 24143 24140 24191

authority=origin.bench.svc.cluster.local
echo "== checks"
curl -sf http://127.0.0.1:18080/ >/dev/null
curl -sf http://127.0.0.1:10000/ >/dev/null
curl -sf --connect-to "$authority:80:127.0.0.1:14140" "http://$authority/" >/dev/null
curl -s http://127.0.0.1:24191/metrics | grep -q 'client_id="spiffe://cluster.local/ns/bench/sa/client"' \
  || { echo "bench-mesh.sh: proxy B did not see proxy A's identity" >&2; exit 1; }

oha_run() { # path, output
  case $1 in
    direct) target=(http://127.0.0.1:18080/) ;;
    haproxy) target=(http://127.0.0.1:10000/) ;;
    trellis) target=(--connect-to "$authority:80:127.0.0.1:14140" "http://$authority/") ;;
  esac
  "$tools/bin/oha" -z "${2}s" -q "$rate" -c 10 --latency-correction --no-tui --output-format json "${target[@]}"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
proxies_of() { case $1 in trellis) echo "trellis-a trellis-b" ;; haproxy) echo "haproxy-a haproxy-b" ;; *) echo "" ;; esac; }

echo "== $rounds rounds x 3 paths, ${seconds}s at $rate req/s, 10 connections"
for round in $(seq 1 "$rounds"); do
  case $((round % 3)) in 1) order="direct trellis haproxy" ;; 2) order="trellis haproxy direct" ;; 0) order="haproxy direct trellis" ;; esac
  for path in $order; do
    oha_run "$path" 3 >/dev/null   # warm-up at the same rate
    sleep 1
    declare -A before=() peak=()
    for p in $(proxies_of "$path"); do pid=$(cat "$work/run/$p.pid"); before[$p]=$(cpu_ticks "$pid"); peak[$p]=0; done
    oha_run "$path" "$seconds" >"$work/results/r$round-$path.json" &
    oha_pid=$!
    while kill -0 "$oha_pid" 2>/dev/null; do
      for p in $(proxies_of "$path"); do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/run/$p.pid")/status")
        [ "$rss" -gt "${peak[$p]}" ] && peak[$p]=$rss
      done
      sleep 0.5
    done
    wait "$oha_pid"
    for p in $(proxies_of "$path"); do
      pid=$(cat "$work/run/$p.pid")
      echo "{\"process\": \"$p\", \"cpu_ticks\": $(( $(cpu_ticks "$pid") - before[$p] )), \"rss_kb\": ${peak[$p]}}" \
        >>"$work/results/r$round-$path.procs.jsonl"
    done
    unset before peak
    echo "round $round: $path done"
    sleep 3
  done
done

python3 - "$work/results" "$rounds" "$seconds" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys, pathlib
res, rounds, seconds, hz = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keys = [("p50", "p50"), ("p99", "p99"), ("p99.9", "p99.9")]
def pct(d, k):
    return d["latencyPercentiles"][k] * 1000.0
rows = {}
for path in ("direct", "trellis", "haproxy"):
    runs = [json.loads((res / f"r{r}-{path}.json").read_text()) for r in range(1, rounds + 1)]
    rows[path] = {k: statistics.median(pct(d, src) for d in runs) for k, src in keys}
    rows[path]["rps"] = statistics.median(d["summary"]["requestsPerSec"] for d in runs)
    rows[path]["ok"] = min(d["summary"]["successRate"] for d in runs)
print(f"| path | p50 ms | p99 ms | p99.9 ms | req/s | success |")
print("|---|---|---|---|---|---|")
for path, r in rows.items():
    print(f"| {path} | {r['p50']:.3f} | {r['p99']:.3f} | {r['p99.9']:.3f} | {r['rps']:.0f} | {r['ok']*100:.2f}% |")
print()
print("| added over direct | p50 ms | p99 ms | p99.9 ms |")
print("|---|---|---|---|")
for path in ("trellis", "haproxy"):
    print(f"| {path} | " + " | ".join(f"+{rows[path][k] - rows['direct'][k]:.3f}" for k, _ in keys) + " |")
added = {p: {k: rows[p][k] - rows["direct"][k] for k, _ in keys} for p in ("trellis", "haproxy")}
print()
print("ratio trellis/haproxy of added latency: " + ", ".join(
    f"{k} {added['trellis'][k] / added['haproxy'][k]:.2f}" if added['haproxy'][k] > 0 else f"{k} n/a" for k, _ in keys))
# Rounds are interleaved, so each round compares the paths under the same machine state; the
# medians above hide how often each side won.
print()
print("| round | trellis added p99 ms | haproxy added p99 ms | ratio |")
print("|---|---|---|---|")
lower = 0
for r in range(1, rounds + 1):
    p99 = {path: pct(json.loads((res / f"r{r}-{path}.json").read_text()), "p99") for path in rows}
    t, h = p99["trellis"] - p99["direct"], p99["haproxy"] - p99["direct"]
    lower += t < h
    print(f"| {r} | +{t:.3f} | +{h:.3f} | {t / h:.2f} |" if h > 0 else f"| {r} | +{t:.3f} | +{h:.3f} | n/a |")
print(f"\ntrellis had the lower added p99 in {lower} of {rounds} rounds")
print()
print("| process | CPU s per run (median) | % of one core | peak RSS KiB (max over runs) |")
print("|---|---|---|---|")
for path in ("trellis", "haproxy"):
    procs = {}
    for r in range(1, rounds + 1):
        for line in (res / f"r{r}-{path}.procs.jsonl").read_text().splitlines():
            p = json.loads(line)
            procs.setdefault(p["process"], []).append(p)
    for name, ps in procs.items():
        cpu = statistics.median(p["cpu_ticks"] for p in ps) / hz
        print(f"| {name} | {cpu:.2f} | {100 * cpu / seconds:.1f}% | {max(p['rss_kb'] for p in ps)} |")
PY
