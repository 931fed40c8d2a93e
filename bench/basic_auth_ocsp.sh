#!/usr/bin/env bash
# OCSP latency on an edge while it checks EST Basic passwords (argon2id, 64 MiB): wrk's p50/p90/p99 of
# one cached GET at a paced ~1,900 req/s, alone, then with a Basic enrollment every 0.66 s beside it.
# The figures behind README "EST" (password checks at workers.nice). 127.0.0.1 only, about 60 s.
#
#   bench/basic_auth_ocsp.sh [SOURCE_TREE]   # default: this checkout; another tree (a worktree of an
#                                           # older commit) runs that code with this checkout's venv
# Needs wrk, curl, openssl and taskset (server on CPU 0, wrk on CPU 1).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=$(cd "${1:-$here}" && pwd)
py="$here/.venv/bin/python"
work=$(mktemp -d /var/tmp/pki-edge-basic-XXXXXX)
data="$work/data"
http=18701 tls=18702
trap 'kill "$up" 2>/dev/null; wait "$up" 2>/dev/null; rm -rf "$work"' EXIT
pe() { (cd "$src" && PYTHONPATH="$src" "$py" -m signer.cli --data "$data" "$@"); }

pe ca create tlsca >/dev/null
pe ca create root >/dev/null
pe issue tlsca --cn localhost --san DNS:localhost --san IP:127.0.0.1 --out "$work" >/dev/null 2>&1
pe issue root --cn device --out "$work" >/dev/null 2>&1
pe ca show tlsca >"$work/tlsca.pem"
pe ca show root >"$work/root.pem"
echo pw | pe est user add root user --password-stdin >/dev/null
(cd "$src" && PYTHONPATH="$src" exec taskset -c 0 "$py" -m signer.cli --data "$data" up --port $http \
  --tls-port $tls --tls-cert "$work/localhost.pem" --tls-key "$work/localhost.key" >"$work/up.log" 2>&1) &
up=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$http/readyz" && break; sleep 0.2; done
sleep 2  # the device's first responses signed
request=$(openssl ocsp -issuer "$work/root.pem" -cert "$work/device.pem" -reqout - -no_nonce 2>/dev/null | base64 -w0)
export OCSP_PATH="/ocsp/$(printf %s "$request" | sed 's#/#%2F#g; s#+#%2B#g; s#=#%3D#g')"
cat >"$work/one.lua" <<'LUA'
request = function() return wrk.format("GET", os.getenv("OCSP_PATH")) end
delay = function() return math.random(0, 16) end
LUA
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/d.key" -out "$work/d.csr" \
  -subj /CN=device-basic 2>/dev/null
sed '/REQUEST/d' "$work/d.csr" >"$work/d.b64"
for mode in alone with-basic-enrollments; do
  if [ "$mode" != alone ]; then
    (end=$((SECONDS + 22)); while [ $SECONDS -lt $end ]; do
      curl -s -o /dev/null -w "%{http_code}\n" --cacert "$work/tlsca.pem" -u user:pw -H "Content-Type: application/pkcs10" \
        --data-binary @"$work/d.b64" "https://localhost:$tls/.well-known/est/root/simpleenroll" >>"$work/codes"
      sleep 0.66
    done) &
    enrolling=$!
    sleep 1
  fi
  printf '%-24s ' "$mode"
  taskset -c 1 wrk -t1 -c16 -d20s --latency -s "$work/one.lua" "http://127.0.0.1:$http" |
    awk '/^ +(50|90|99)%/ {sub(/%/, "", $1); printf "p%s %s  ", $1, $2} /Requests\/sec/ {printf "%s req/s", $2} END {print ""}'
  if [ "$mode" != alone ]; then wait "$enrolling"; fi
done
echo "enrollments: $(sort "$work/codes" | uniq -c | tr -s ' ' | tr '\n' ' ')"
