#!/usr/bin/env bash
# A test cluster on one machine: N "physical nodes" as network namespaces, each joined by a
# veth pair to a bridge in the host's namespace, one `vmhpc node` per namespace with its own
# cache folder; a docker-registry in a "front-end" namespace on the same bridge; a munged
# (temp key and socket) that all of them reach through its unix socket. Everything is torn down on exit, even on failure: namespaces, links,
# processes, temp folders.
#
# Sourced by tests/integration/node-*.sh and bench/distribution.sh:
#   . tests/cluster/cluster.sh
#   cluster_up 4 [RATE]       # n1..n4; RATE (e.g. 100mbit) shapes each node's link both ways
#   cluster_fetch REF n[1-4]  # vmhpc node fetch through the cluster's peers and munged
#   cluster_node_kill n2 / cluster_node_start n2 [EXTRA-ARGS] (each node may pull from
#   the cluster's registry only, unless CL_ANY_REGISTRY=1)
# CL_TMPFS=SIZE (e.g. 4G) puts the cluster's folder, so every node's cache and the registry's
# storage, on a tmpfs of its own: benchmarks use it to tell what one shared disk costs (real
# nodes have a disk each).
# Run directly (`tests/cluster/cluster.sh 4 [RATE]`) it builds a cluster, prints how to use
# it and waits for Ctrl-C.
#
# Needs root, iproute2, munged, docker-registry; $VMHPC is the vmhpc binary.

: "${VMHPC:?set VMHPC to the vmhpc binary}"
CL_ID=""
CL_CLAIM=""
CL_REG_PORT=5000
CL_REG_PID=""

# Takes a cluster id (20..219) whose namespaces and bridge do not exist, claimed with an
# atomic mkdir that every run of this file respects: two test clusters on one machine (two
# sessions, a test beside a benchmark) never tear down each other's namespaces. The claim
# goes with cluster_down.
cluster_pick_id() {
	local id
	for id in $(seq 20 219 | shuf); do
		mkdir -p /run/vmhpc-test-ids # each time: another run's cluster_down may remove it
		ip netns list | grep -q "^vh$id-" && continue
		ip link show "vhb$id" >/dev/null 2>&1 && continue
		mkdir "/run/vmhpc-test-ids/$id" 2>/dev/null || continue
		CL_ID=$id
		CL_CLAIM="/run/vmhpc-test-ids/$id"
		CL_NET="10.$((200 + CL_ID % 50)).$CL_ID"
		CL_BR="vhb$CL_ID"
		CL_FRONT="$CL_NET.1"
		CL_REGISTRY="$CL_FRONT:$CL_REG_PORT"
		return 0
	done
	cluster_log "no free cluster id in 20..219 (see /run/vmhpc-test-ids)"
	return 1
}
CL_PIDS=()
CL_NODES=()
CL_DIR=""
CL_RATE=""

cluster_log() { echo "cluster: $*" >&2; }

cluster_down() {
	# Runs from EXIT traps, often under `set -e`: nothing here may stop it half-way.
	local p n pid
	for p in "${CL_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	for p in "${CL_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	for n in "${CL_NODES[@]}"; do
		pid=$(cat "$CL_DIR/$n.pid" 2>/dev/null || true)
		if [ -n "$pid" ]; then
			kill -9 "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
		ip netns del "vh$CL_ID-$n" 2>/dev/null || true
		ip link del "vh${CL_ID}$n" 2>/dev/null || true
	done
	ip netns del "vh$CL_ID-front" 2>/dev/null || true
	ip link del "vh${CL_ID}fe" 2>/dev/null || true
	[ -z "${CL_BR:-}" ] || ip link del "$CL_BR" 2>/dev/null || true
	if [ -n "$CL_DIR" ] && mountpoint -q "$CL_DIR"; then
		umount "$CL_DIR" 2>/dev/null || umount -l "$CL_DIR" || true
	fi
	if [ -n "$CL_DIR" ]; then rm -rf "$CL_DIR" || true; fi
	if [ -n "$CL_CLAIM" ]; then
		rmdir "$CL_CLAIM" 2>/dev/null || true
		rmdir /run/vmhpc-test-ids 2>/dev/null || true # when no other cluster holds an id
	fi
	CL_CLAIM=""
	CL_PIDS=()
	CL_NODES=()
	return 0
}

# Waits until something listens on host:port (from namespace ns, or the host's if "").
cluster_wait_port() {
	local ns=$1 host=$2 port=$3 i
	for i in $(seq 100); do
		if [ -n "$ns" ]; then
			ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null && return 0
		else
			bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null && return 0
		fi
		sleep 0.1
	done
	return 1
}

cluster_node_start() { # NAME [EXTRA-ARGS...]
	local n=$1 i=${1#n} ns="vh$CL_ID-$1" pid list=(--registry "$CL_REGISTRY")
	shift
	[ -z "${CL_ANY_REGISTRY:-}" ] || list=()
	ip netns exec "$ns" "$VMHPC" node --foreground --cache "$CL_DIR/cache-$n" \
		--cache-max "${CL_CACHE_MAX:-2G}" --listen "$CL_NET.$((10 + i)):7420" \
		--socket "$CL_DIR/$n.sock" --name "$n" --peers "$CL_DIR/peers" \
		--munge-socket "$CL_DIR/munge.sock" --insecure \
		--peer-timeout-ms "${CL_PEER_TIMEOUT_MS:-3000}" \
		"${list[@]}" "$@" >>"$CL_DIR/$n.log" 2>&1 &
	pid=$!
	echo "$pid" >"$CL_DIR/$n.pid"
	cluster_wait_port "$ns" "$CL_NET.$((10 + i))" 7420 || {
		cat "$CL_DIR/$n.log" >&2
		return 1
	}
}

cluster_node_kill() { # NAME [SIGNAL]
	local pid
	pid=$(cat "$CL_DIR/$1.pid")
	kill "-${2:-9}" "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cluster_up() { # N [RATE]
	local n=$1 i ns
	CL_RATE=${2:-}
	cluster_pick_id || return 1
	CL_DIR=$(mktemp -d /tmp/vmhpc-cluster.XXXXXX)
	if [ -n "${CL_TMPFS:-}" ]; then
		mount -t tmpfs -o "size=$CL_TMPFS" vmhpc-cluster "$CL_DIR" || return 1
	fi
	chmod 755 "$CL_DIR"
	# munged with a key of its own, on a socket of its own.
	dd if=/dev/urandom of="$CL_DIR/munge.key" bs=1024 count=1 status=none
	chmod 600 "$CL_DIR/munge.key"
	munged -F -f --socket="$CL_DIR/munge.sock" --key-file="$CL_DIR/munge.key" \
		--pid-file="$CL_DIR/munged.pid" --seed-file="$CL_DIR/munge.seed" \
		--log-file="$CL_DIR/munged.log" >/dev/null 2>&1 &
	CL_PIDS+=($!)
	# The switch: a bridge, where the host (the CLI, pushes) has .254. The front-end, with
	# the registry, is a namespace of its own on it with .1, so that its link is shaped
	# like every node's: a registry that every node pulls from shares one link, as a real
	# one does.
	ip link add "$CL_BR" type bridge
	ip addr add "$CL_NET.254/24" dev "$CL_BR"
	ip link set "$CL_BR" up
	ip netns add "vh$CL_ID-front"
	ip link add "vh${CL_ID}fe" type veth peer name eth0 netns "vh$CL_ID-front"
	ip link set "vh${CL_ID}fe" master "$CL_BR" up
	ip -n "vh$CL_ID-front" addr add "$CL_FRONT/24" dev eth0
	ip -n "vh$CL_ID-front" link set eth0 up
	ip -n "vh$CL_ID-front" link set lo up
	if [ -n "$CL_RATE" ]; then
		ip netns exec "vh$CL_ID-front" tc qdisc add dev eth0 root tbf rate "$CL_RATE" burst 64kb latency 100ms
		tc qdisc add dev "vh${CL_ID}fe" root tbf rate "$CL_RATE" burst 64kb latency 100ms
	fi
	mkdir -p "$CL_DIR/registry"
	cat >"$CL_DIR/registry.yml" <<CONFIG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $CL_DIR/registry
http:
  addr: $CL_REGISTRY
CONFIG
	if [ "${CL_REGISTRY_AUTH:-}" = token ]; then
		cluster_token_start || return 1
	fi
	ip netns exec "vh$CL_ID-front" docker-registry serve "$CL_DIR/registry.yml" >"$CL_DIR/registry.log" 2>&1 &
	CL_REG_PID=$!
	CL_PIDS+=($!)
	: >"$CL_DIR/peers"
	for i in $(seq 1 "$n"); do
		ns="vh$CL_ID-n$i"
		CL_NODES+=("n$i")
		ip netns add "$ns"
		ip link add "vh${CL_ID}n$i" type veth peer name eth0 netns "$ns"
		ip link set "vh${CL_ID}n$i" master "$CL_BR" up
		ip -n "$ns" addr add "$CL_NET.$((10 + i))/24" dev eth0
		ip -n "$ns" link set eth0 up
		ip -n "$ns" link set lo up
		if [ -n "$CL_RATE" ]; then
			# Both ways: the node's upload (its eth0) and its download (the host side).
			ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$CL_RATE" burst 64kb latency 100ms
			tc qdisc add dev "vh${CL_ID}n$i" root tbf rate "$CL_RATE" burst 64kb latency 100ms
		fi
		echo "n$i $CL_NET.$((10 + i)):7420" >>"$CL_DIR/peers"
	done
	for i in $(seq 50); do [ -S "$CL_DIR/munge.sock" ] && break; sleep 0.1; done
	[ -S "$CL_DIR/munge.sock" ] || { cluster_log "munged did not start: $(cat "$CL_DIR/munged.log")"; return 1; }
	cluster_wait_port "" "$CL_FRONT" "$CL_REG_PORT" || { cluster_log "registry: $(cat "$CL_DIR/registry.log")"; return 1; }
	for i in $(seq 1 "$n"); do cluster_node_start "n$i" || return 1; done
}

# CL_REGISTRY_AUTH=token: the registry wants Bearer tokens from a token service of the
# test's own (tests/integration/token-server.py) in the front-end namespace, whose users are
# CL_TOKEN_USERS (USER:PASSWORD[=REPO-PREFIX,...] each; default one user "node" with every
# right, whose credentials the node daemons and cluster_push are given).
CL_NODE_AUTH=node:node-secret
cluster_token_start() {
	local i
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$CL_DIR/token.key" -out "$CL_DIR/token.pem" \
		-subj /CN=vmhpc-cluster-token -days 1 2>/dev/null || return 1
	openssl x509 -in "$CL_DIR/token.pem" -outform DER -out "$CL_DIR/token.der" || return 1
	# shellcheck disable=SC2086 # one word a user
	ip netns exec "vh$CL_ID-front" env TOKEN_BIND="$CL_FRONT" python3 "$(dirname "${BASH_SOURCE[0]}")/../integration/token-server.py" \
		"$CL_DIR/token.port" "$CL_DIR/token.key" "$CL_DIR/token.der" vmhpc-cluster-issuer \
		"$CL_NODE_AUTH" ${CL_TOKEN_USERS:-} >"$CL_DIR/token.log" 2>&1 &
	CL_PIDS+=($!)
	for i in $(seq 100); do [ -f "$CL_DIR/token.port" ] && break; sleep 0.1; done
	[ -f "$CL_DIR/token.port" ] || { cluster_log "token service: $(cat "$CL_DIR/token.log")"; return 1; }
	cat >>"$CL_DIR/registry.yml" <<CONFIG
auth:
  token:
    realm: http://$CL_FRONT:$(cat "$CL_DIR/token.port")/token
    service: vmhpc-cluster-registry
    issuer: vmhpc-cluster-issuer
    rootcertbundle: $CL_DIR/token.pem
CONFIG
	export VMHPC_REGISTRY_AUTH=$CL_NODE_AUTH
}

# A lure in the front-end: a registry a user might run to collect the site's password
# (tests/integration/lure-registry.py). Sets LURE (HOST:PORT) and LURE_LOG (each request it
# got, with its Authorization header or AUTH=-).
cluster_lure_start() {
	local i
	LURE_LOG="$CL_DIR/lure.log"
	: >"$LURE_LOG"
	ip netns exec "vh$CL_ID-front" python3 "$(dirname "${BASH_SOURCE[0]}")/../integration/lure-registry.py" \
		"$CL_FRONT" "$CL_DIR/lure.port" "$LURE_LOG" 2>"$CL_DIR/lure.err" &
	CL_PIDS+=($!)
	for i in $(seq 100); do [ -f "$CL_DIR/lure.port" ] && break; sleep 0.1; done
	[ -f "$CL_DIR/lure.port" ] || { cluster_log "lure: $(cat "$CL_DIR/lure.err")"; return 1; }
	LURE="$CL_FRONT:$(cat "$CL_DIR/lure.port")"
}

# The registry down (a fault to test) and up again, on the same folder and address.
cluster_registry_stop() {
	kill -9 "$CL_REG_PID" 2>/dev/null || true
	wait "$CL_REG_PID" 2>/dev/null || true
}
cluster_registry_start() {
	ip netns exec "vh$CL_ID-front" docker-registry serve "$CL_DIR/registry.yml" >>"$CL_DIR/registry.log" 2>&1 &
	CL_REG_PID=$!
	CL_PIDS+=($!)
	cluster_wait_port "" "$CL_FRONT" "$CL_REG_PORT"
}

# Empties every node's cache (daemons stopped, folders removed, daemons started again).
cluster_reset_caches() {
	local n
	for n in "${CL_NODES[@]}"; do cluster_node_kill "$n" TERM; done
	for n in "${CL_NODES[@]}"; do rm -rf "$CL_DIR/cache-$n"; done
	for n in "${CL_NODES[@]}"; do cluster_node_start "$n" || return 1; done
}

cluster_fetch() { # REF HOSTLIST [ARGS...]
	local ref=$1 nodes=$2
	shift 2
	"$VMHPC" node fetch --image "$ref" --nodes "$nodes" --peers "$CL_DIR/peers" \
		--munge-socket "$CL_DIR/munge.sock" "$@"
}

cluster_push() { # NAME:VER TAG
	"$VMHPC" image push --insecure "$1" "$CL_REGISTRY/vmhpc/$2" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -eu
	trap cluster_down EXIT
	trap 'exit 130' INT TERM
	cluster_up "${1:-4}" "${2:-}"
	echo "cluster of ${1:-4} nodes up in $CL_DIR; registry $CL_REGISTRY; peers:"
	cat "$CL_DIR/peers"
	echo "e.g.: $VMHPC node fetch --image $CL_REGISTRY/vmhpc/IMG:TAG --nodes n[1-${1:-4}] --peers $CL_DIR/peers --munge-socket $CL_DIR/munge.sock"
	echo "Ctrl-C tears it down."
	while :; do sleep 3600; done
fi
