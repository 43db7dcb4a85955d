#!/usr/bin/env bash
# Hosts on one machine for the cluster test: each host is a network namespace with its own
# address on a private bridge, its own hostname and its own /srv/aesop (a folder of the
# state directory bind-mounted in a private mount namespace), running sshd with a generated
# key. Ansible reaches them over SSH exactly as it reaches servers.
#
#   deploy/test/hosts.sh up STATE NAME...     create the hosts (10.231.0.11, .12, ... in order)
#   deploy/test/hosts.sh add STATE NAME       one more host, the next address
#   deploy/test/hosts.sh down STATE           remove every host, the bridge and the route
#   deploy/test/hosts.sh kill STATE NAME      power off: every process of the host, SIGKILL
#   deploy/test/hosts.sh boot STATE NAME      power on again: sshd (its services stay off)
#   deploy/test/hosts.sh link STATE NAME up|down
#
# Ansible and the checks run in the control namespace aesop-h-ctl (10.231.0.2):
#   ip netns exec aesop-h-ctl ansible-playbook ...
#
# Before any namespace exists the test subnet is routed to "unreachable" in the root
# namespace, so that no test packet can leave the machine. Only what this script created
# (names starting with aesop-h-) is ever removed.
set -euo pipefail

SUBNET=10.231.0.0/24
PREFIX=10.231.0
BRIDGE=aesop-h-br
NS_PREFIX=aesop-h-
# The control host: where Ansible and the test's checks run (the root namespace cannot reach
# the test subnet by design).
CONTROL=aesop-h-ctl
CONTROL_ADDR=$PREFIX.2

die() { echo "hosts: error: $*" >&2; exit 1; }

ns_of() { echo "$NS_PREFIX$1"; }
veth_of() { echo "ah-$1"; }   # the root side; the host side is eth0

# Address of host NAME: recorded at creation, in the order hosts were added.
address_of() {
  local state="$1" name="$2"
  awk -v n="$name" '$1 == n {print $2}' "$state/hosts" 2>/dev/null
}

network_up() {
  ip route show table main | grep -qF "unreachable $SUBNET" || ip route add unreachable "$SUBNET"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip link set "$BRIDGE" up
  fi
  if ! ip netns list | grep -qw "$CONTROL"; then
    ip netns add "$CONTROL"
    ip link add ah-ctl type veth peer name eth0 netns "$CONTROL"
    ip link set ah-ctl master "$BRIDGE" up
    ip netns exec "$CONTROL" ip link set lo up
    ip netns exec "$CONTROL" ip addr add "$CONTROL_ADDR/24" dev eth0
    ip netns exec "$CONTROL" ip link set eth0 up
  fi
}

keys() {
  local state="$1"
  mkdir -p "$state/ssh"
  [[ -f "$state/ssh/id_ed25519" ]] || ssh-keygen -q -t ed25519 -N "" -f "$state/ssh/id_ed25519"
  [[ -f "$state/ssh/host_ed25519" ]] || ssh-keygen -q -t ed25519 -N "" -f "$state/ssh/host_ed25519"
  cp "$state/ssh/id_ed25519.pub" "$state/ssh/authorized_keys"
}

add_host() {
  local state="$1" name="$2" ns veth n addr
  [[ "$name" =~ ^[a-z0-9]{1,10}$ ]] || die "host name '$name' must be 1-10 of [a-z0-9]"
  ns="$(ns_of "$name")"; veth="$(veth_of "$name")"
  [[ -z "$(address_of "$state" "$name")" ]] || die "host $name exists already"
  n=11
  [[ ! -f "$state/hosts" ]] || n=$(($(wc -l <"$state/hosts") + 11))
  addr="$PREFIX.$n"
  echo "$name $addr" >>"$state/hosts"
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$BRIDGE" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr add "$addr/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  mkdir -p "$state/host/$name/srv" "$state/host/$name/log"
  boot "$state" "$name"
}

# sshd in the host's namespaces: a private mount namespace with the host's /srv/aesop, its
# own hostname. Its pid is recorded; every process of the host descends from it.
boot() {
  local state="$1" name="$2" ns addr dir i
  ns="$(ns_of "$name")"; addr="$(address_of "$state" "$name")"; dir="$state/host/$name"
  [[ -n "$addr" ]] || die "no host $name"
  cat >"$dir/sshd_config" <<CFG
ListenAddress $addr
Port 22
HostKey $state/ssh/host_ed25519
AuthorizedKeysFile $state/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
PidFile $dir/sshd.pid
Subsystem sftp internal-sftp
CFG
  mkdir -p /run/sshd /srv/aesop
  rm -f "$dir/sshd.pid"
  # shellcheck disable=SC2016  # expanded by the inner bash
  ip netns exec "$ns" unshare --mount --uts --propagation private bash -c '
    hostname "$1" && mount --bind "$2/srv" /srv/aesop && exec /usr/sbin/sshd -f "$2/sshd_config" -E "$2/log/sshd.log"' \
    _ "$name" "$dir" </dev/null >>"$dir/log/sshd.out" 2>&1
  for ((i = 0; i < 50; i++)); do
    [[ -s "$dir/sshd.pid" ]] && ip netns exec "$CONTROL" timeout 1 bash -c "exec 3<>/dev/tcp/$addr/22" 2>/dev/null && return 0
    sleep 0.1
  done
  die "host $name: sshd did not start; see $dir/log"
}

kill_host() {
  local ns pids
  ns="$(ns_of "$2")"
  ip netns list | grep -qw "$ns" || return 0
  pids="$(ip netns pids "$ns" | tr '\n' ' ')"
  [[ -z "${pids// }" ]] || kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [[ -z "$(ip netns pids "$ns")" ]] && return 0
    sleep 0.1
  done
  die "host $2: processes survived SIGKILL: $(ip netns pids "$ns" | tr '\n' ' ')"
}

down_all() {
  local state="$1" name ns
  if [[ -f "$state/hosts" ]]; then
    while read -r name _; do kill_host "$state" "$name" || true; done <"$state/hosts"
  fi
  for ns in $(ip netns list | awk '{print $1}' | grep "^$NS_PREFIX" || true); do
    [[ "$ns" == "$CONTROL" ]] || kill_host "$state" "${ns#"$NS_PREFIX"}" || true
    ip netns del "$ns"
  done
  for name in $(ip -o link show 2>/dev/null | awk -F'[ :@]+' '{print $2}' | grep '^ah-' || true); do
    ip link del "$name" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  ip route del unreachable "$SUBNET" 2>/dev/null || true
  rm -f "$state/hosts"
}

cmd="${1:-}"; state="${2:-}"
[[ -n "$cmd" && -n "$state" ]] || die "usage: hosts.sh up|add|down|kill|boot|link STATE [NAME...]"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
shift 2
case "$cmd" in
  up)
    network_up; keys "$state"
    for name in "$@"; do add_host "$state" "$name"; done ;;
  add) network_up; add_host "$state" "$1" ;;
  down) down_all "$state" ;;
  kill) kill_host "$state" "$1" ;;
  boot) boot "$state" "$1" ;;
  link)
    [[ "$2" == up || "$2" == down ]] || die "link takes up or down"
    ip netns exec "$(ns_of "$1")" ip link set eth0 "$2" ;;
  *) die "unknown command '$cmd'" ;;
esac
