#!/usr/bin/env bash
# make cluster-test: hosts up, the playbooks' inputs fetched, bench/cluster.py in the control
# namespace; every host, the bridge and the route removed afterwards, also on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
STATE="$ROOT/.stack/cluster"
HOSTS="bash $ROOT/deploy/test/hosts.sh"
cleanup() { $HOSTS down "$STATE" || true; }
trap cleanup EXIT INT TERM
$HOSTS down "$STATE"
rm -rf "$STATE"
# Jars, wheels and code for the hosts, fetched here (the hosts and the control namespace have
# no way out of the machine).
(cd "$ROOT/deploy/ansible" && "$ROOT/.venv/bin/ansible-playbook" -i localhost, fetch.yml \
  -e ansible_python_interpreter="$ROOT/.venv/bin/python" >"$ROOT/.stack/deploy-fetch.log" 2>&1) \
  || { tail -n 20 "$ROOT/.stack/deploy-fetch.log" >&2; echo "cluster: fetching failed" >&2; exit 1; }
$HOSTS up "$STATE" z1 z2 z3 k1 k2 k3 w1 w2 db mon
db="$(awk '$1 == "db" {print $2}' "$STATE/hosts")"
kafka="$(awk '$1 ~ /^k/ {printf "%s%s:9092", sep, $2; sep=","}' "$STATE/hosts")"
ip netns exec aesop-h-ctl env AESOP_TEST_ROOT_NETNS="/proc/$$/ns/net" AESOP_TEST_MYSQL="$db:3306:aesop:aesop-test" \
  AESOP_TEST_KAFKA="$kafka" "$ROOT/.venv/bin/python" -m bench.cluster --state "$STATE" "$@"
