#!/usr/bin/env bash
# vmhpc image push/pull against a real OCI registry: Debian's docker-registry (CNCF
# distribution), started here on 127.0.0.1 with a temp config and storage folder and stopped
# on exit. Round trip with verify, only missing bytes moving (v2 after v1, re-push),
# interrupted pull and push resumed, a damaged blob refused, a manifest naming a blob the
# registry lacks refused, unknown names, a registry that is down, TLS by default (and with a
# registry's own CA, as docker keeps it in certs.d), and
# htpasswd (Basic) auth from VMHPC_REGISTRY_AUTH and from a docker config.json.
. "$(dirname "$0")/lib.sh"
set -e

command -v docker-registry >/dev/null || { echo "SKIP: docker-registry is not installed (scripts/install-deps.sh)"; exit 77; }
command -v htpasswd >/dev/null || { echo "SKIP: htpasswd is not installed (apache2-utils)"; exit 77; }

# No credentials from the machine's user: each check says where its credentials come from.
unset VMHPC_REGISTRY_AUTH
export DOCKER_CONFIG="$WORK/no-docker-config"

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_registry NAME [EXTRA-CONFIG]: a registry storing under $WORK/reg-NAME/data;
# prints nothing, leaves its port in $WORK/reg-NAME/port. Restarting uses the same port.
start_registry() {
	local name=$1 extra=${2:-} dir="$WORK/reg-$1" port pid i
	mkdir -p "$dir/data"
	if [ -f "$dir/port" ]; then port=$(cat "$dir/port"); else port=$(free_port); fi
	echo "$port" >"$dir/port"
	[ -f "$dir/config.yml" ] || cat >"$dir/config.yml" <<CONFIG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
$extra
CONFIG
	docker-registry serve "$dir/config.yml" >>"$dir/log" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/pid"
	on_exit "kill -9 $pid"
	for i in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
		kill -0 "$pid" 2>/dev/null || fail "registry $name exited: $(cat "$dir/log")"
		sleep 0.1
	done
	fail "registry $name does not listen on $port: $(cat "$dir/log")"
}

stop_registry() {
	local pid
	pid=$(cat "$WORK/reg-$1/pid")
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# Bytes the registry keeps (apparent sizes of every file under its storage).
registry_bytes() {
	find "$WORK/reg-$1/data" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'
}

# jget FILE KEY: a number or string from a --json output (KEY may be http.requests).
jget() {
	python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(str(v).lower() if isinstance(v, bool) else v)' "$1" "$2"
}

unique_bytes() { # NAME VERSION: compressed bytes only that version has, in $VMHPC_STORE
	"$VMHPC" image list --json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["name"] == sys.argv[1] and e["version"] == int(sys.argv[2]): print(e["unique_bytes"])' "$1" "$2"
}

chunk_files() { find "$1/chunks" -type f 2>/dev/null | wc -l; }

# at_most A B FACTOR: A <= FACTOR * B
at_most() { python3 -c 'import sys; sys.exit(0 if int(sys.argv[1]) <= float(sys.argv[3]) * int(sys.argv[2]) else 1)' "$@"; }

start_registry plain
REG="127.0.0.1:$(cat "$WORK/reg-plain/port")"
STORE1="$WORK/store"
STORE2="$WORK/store2"

small_spec small >"$WORK/small1.ini"
"$VMHPC" image build --level 1 "$WORK/small1.ini" >/dev/null
ok "built small:1"

# --- push v1, pull it into an empty store -----------------------------------------------
before=$(registry_bytes plain)
"$VMHPC" image push --insecure --json small:1 "$REG/vmhpc/small:1" >"$WORK/push1.json"
grew=$(($(registry_bytes plain) - before))
total1=$(jget "$WORK/push1.json" chunk_bytes)
[ "$(jget "$WORK/push1.json" chunks_uploaded)" = "$(jget "$WORK/push1.json" chunks)" ] || fail "first push skipped chunks: $(cat "$WORK/push1.json")"
at_most "$grew" "$total1" 1.1 || fail "push of v1 grew the registry by $grew bytes for $total1 bytes of chunks"
ok "push v1: $(jget "$WORK/push1.json" chunks) chunks, $total1 chunk bytes, registry grew $grew bytes, $(jget "$WORK/push1.json" http.requests) requests in $(jget "$WORK/push1.json" http.seconds) s"

VMHPC_STORE="$STORE2" "$VMHPC" image pull --insecure --json "$REG/vmhpc/small:1" >"$WORK/pull1.json"
[ "$(jget "$WORK/pull1.json" image):$(jget "$WORK/pull1.json" version)" = small:1 ] || fail "pull named $(cat "$WORK/pull1.json")"
[ "$(jget "$WORK/pull1.json" chunk_bytes_fetched)" = "$total1" ] || fail "pull v1 fetched $(jget "$WORK/pull1.json" chunk_bytes_fetched) of $total1"
VMHPC_STORE="$STORE2" "$VMHPC" image verify >/dev/null || fail "verify of the pulled store fails"
cmp "$STORE1/manifests/small/1.json" "$STORE2/manifests/small/1.json" || fail "the pulled manifest differs"
diff -r "$STORE1/chunks" "$STORE2/chunks" >/dev/null || fail "the pulled chunks differ from the pushed ones"
ok "pull v1 into an empty store: same manifest, same chunks, verify passes; $(jget "$WORK/pull1.json" http.requests) requests in $(jget "$WORK/pull1.json" http.seconds) s"

VMHPC_STORE="$STORE2" "$VMHPC" image pull --insecure "$REG/vmhpc/small:1" >"$WORK/pull1b.txt"
grep -q "already has it as small:1" "$WORK/pull1b.txt" || fail "a second pull added a version: $(cat "$WORK/pull1b.txt")"
grep -q "0 fetched (0 B)" "$WORK/pull1b.txt" || fail "a second pull fetched chunks: $(cat "$WORK/pull1b.txt")"
ok "pulling it again fetches no chunk and adds no version"

victim=$(find "$STORE2/chunks" -type f | head -n 1)
printf 'garbage' >"$victim"
VMHPC_STORE="$STORE2" "$VMHPC" image pull --insecure --json "$REG/vmhpc/small:1" >"$WORK/pull1c.json"
[ "$(jget "$WORK/pull1c.json" chunks_repaired)" = 1 ] && [ "$(jget "$WORK/pull1c.json" chunks_fetched)" = 1 ] ||
	fail "a damaged chunk here was not fetched again: $(cat "$WORK/pull1c.json")"
VMHPC_STORE="$STORE2" "$VMHPC" image verify >/dev/null || fail "verify after the repairing pull fails"
ok "a chunk damaged here is found by the next pull and fetched again (only it)"

before=$(registry_bytes plain)
"$VMHPC" image push --insecure --json small:1 "$REG/vmhpc/small:1" >"$WORK/push1b.json"
[ "$(jget "$WORK/push1b.json" chunk_bytes_uploaded)" = 0 ] || fail "re-push uploaded chunks: $(cat "$WORK/push1b.json")"
[ "$(jget "$WORK/push1b.json" metadata_bytes)" = 0 ] || fail "re-push uploaded metadata: $(cat "$WORK/push1b.json")"
[ "$(registry_bytes plain)" = "$before" ] || fail "re-push grew the registry"
ok "re-push moves 0 chunk bytes ($(jget "$WORK/push1b.json" http.bytes_sent) bytes sent, $(jget "$WORK/push1b.json" http.requests) HEADs)"

# --- version 2: only its own bytes move -----------------------------------------------------
head -c 3000000 /dev/urandom >"$WORK/extra.bin"
small_spec small "files = $WORK/extra.bin:/opt/extra.bin" >"$WORK/small2.ini"
"$VMHPC" image build --level 1 "$WORK/small2.ini" >/dev/null
unique2=$(unique_bytes small 2)
before=$(registry_bytes plain)
"$VMHPC" image push --insecure --json small:2 "$REG/vmhpc/small:2" >"$WORK/push2.json"
grew=$(($(registry_bytes plain) - before))
at_most "$grew" "$unique2" 1.1 || fail "push of v2 grew the registry by $grew bytes; v2 has $unique2 bytes of its own"
ok "push v2 after v1: registry grew $grew bytes for $unique2 bytes only v2 has ($(python3 -c "print('%.3f' % ($grew / $unique2))")x); $(jget "$WORK/push2.json" chunks_uploaded) of $(jget "$WORK/push2.json" chunks) chunks uploaded"

VMHPC_STORE="$STORE2" "$VMHPC" image pull --insecure --json "$REG/vmhpc/small:2" >"$WORK/pull2.json"
moved=$(jget "$WORK/pull2.json" http.bytes_received)
at_most "$moved" "$unique2" 1.1 || fail "pull of v2 received $moved bytes; v2 has $unique2 bytes of its own"
[ "$(jget "$WORK/pull2.json" version)" = 2 ] || fail "v2 was pulled as version $(jget "$WORK/pull2.json" version)"
cmp "$STORE1/manifests/small/2.json" "$STORE2/manifests/small/2.json" || fail "the pulled v2 manifest differs"
VMHPC_STORE="$STORE2" "$VMHPC" image verify >/dev/null || fail "verify after pulling v2 fails"
[ "$(jget "$WORK/pull2.json" patched)" = true ] || fail "pull of v2 did not go through its patch against v1: $(cat "$WORK/pull2.json")"
ok "pull v2 after v1: received $moved bytes (chunks $(jget "$WORK/pull2.json" chunk_bytes_fetched), its patch $(jget "$WORK/pull2.json" metadata_bytes)) for $unique2 bytes only v2 has ($(python3 -c "print('%.3f' % ($moved / $unique2))")x)"

# A patch that does not rebuild its version (here: one layer dropped, pushed under the
# patch's tag by anyone who may push) is refused, and the whole version is fetched.
[ "$(jget "$WORK/push2.json" patch_base)" = 1 ] || fail "push of v2 made no patch against v1: $(cat "$WORK/push2.json")"
base_id=$(sha256sum <"$STORE1/manifests/small/1.json" | cut -c1-16)
ptag="sha256-$(jget "$WORK/push2.json" digest | cut -d: -f2).$base_id.patch"
curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/vmhpc/small/manifests/$ptag" >"$WORK/patch.json" ||
	fail "no patch under $ptag"
python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); m["layers"]=m["layers"][1:]; sys.stdout.write(json.dumps(m))' "$WORK/patch.json" >"$WORK/forged.json"
curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$WORK/forged.json" \
	"http://$REG/v2/vmhpc/small/manifests/$ptag" >/dev/null || fail "could not put the forged patch"
STOREF="$WORK/store-forged"
VMHPC_STORE="$STOREF" "$VMHPC" image pull --insecure "$REG/vmhpc/small:1" >/dev/null || fail "pull v1 into store-forged"
VMHPC_STORE="$STOREF" "$VMHPC" image pull --insecure --json "$REG/vmhpc/small:2" >"$WORK/pullf.json" 2>"$WORK/pullf.err" ||
	fail "pull v2 with a forged patch: $(cat "$WORK/pullf.err")"
[ "$(jget "$WORK/pullf.json" patched)" = false ] || fail "a forged patch was used: $(cat "$WORK/pullf.json")"
grep -q "not through its patch" "$WORK/pullf.err" || fail "the forged patch was not reported: $(cat "$WORK/pullf.err")"
cmp "$STORE1/manifests/small/2.json" "$STOREF/manifests/small/2.json" || fail "v2 pulled past a forged patch differs"
VMHPC_STORE="$STOREF" "$VMHPC" image verify >/dev/null || fail "verify after pulling past a forged patch fails"
curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$WORK/patch.json" \
	"http://$REG/v2/vmhpc/small/manifests/$ptag" >/dev/null || fail "could not put the patch back"
ok "a forged patch is refused ($(grep -o 'not through its patch.*' "$WORK/pullf.err" | head -c 160)) and v2 comes whole, the same"

# --- the registry's versions as candidates of the image manager's matching -------------------
STORE4="$WORK/store4"
VMHPC_STORE="$STORE4" VMHPC_CACHE="$WORK/cache4" VMHPC_LOG=debug "$VMHPC" image match --registry "$REG/vmhpc/small" --insecure 'name == "small" && version >= 2' >"$WORK/match1.out" 2>"$WORK/match1.err" ||
	fail "match --registry: $(cat "$WORK/match1.err")"
[ "$(cut -f1 "$WORK/match1.out")" = "$REG/vmhpc/small:2 (small:2)" ] || fail "match --registry found: $(cat "$WORK/match1.out")"
grep -q "2 versions (0 other artifacts skipped), 0 configs from the cache" "$WORK/match1.err" || fail "first listing: $(cat "$WORK/match1.err")"
VMHPC_STORE="$STORE4" VMHPC_CACHE="$WORK/cache4" VMHPC_LOG=debug "$VMHPC" image match --registry "$REG/vmhpc/small" --insecure 'version >= 1' >"$WORK/match2.out" 2>"$WORK/match2.err" ||
	fail "match --registry again: $(cat "$WORK/match2.err")"
grep -q "2 configs from the cache" "$WORK/match2.err" || fail "second listing did not use the cache: $(cat "$WORK/match2.err")"
[ "$(wc -l <"$WORK/match2.out")" = 2 ] || fail "match over both tags: $(cat "$WORK/match2.out")"
set +e
VMHPC_STORE="$STORE4" VMHPC_CACHE="$WORK/cache4" "$VMHPC" image match --registry "$REG/vmhpc/small" --insecure 'has("libgfortran5")' >/dev/null 2>"$WORK/match3.err"
code=$?
set -e
[ "$code" = 1 ] || fail "no match over the registry: exit $code"
grep -q "^  $REG/vmhpc/small:[12] (small:[12]) fails 1 clause: has(\"libgfortran5\")" "$WORK/match3.err" || fail "no reasons for the registry's versions: $(cat "$WORK/match3.err")"
ok "image match --registry: the repository's tags are candidates, their configs cached, reasons named"

# --- interrupted pull: kill -9, then the registry stopped; each resumes ---------------------
STORE3="$WORK/store3"
VMHPC_STORE="$STORE3" "$VMHPC" image pull --insecure --max-rate 1M "$REG/vmhpc/small:1" >/dev/null 2>&1 &
pid=$!
for i in $(seq 200); do [ "$(chunk_files "$STORE3")" -ge 20 ] && break; sleep 0.05; done
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
got=$(chunk_files "$STORE3")
[ "$got" -ge 20 ] || fail "the throttled pull stored only $got chunks before the kill"
[ -z "$(VMHPC_STORE="$STORE3" versions)" ] || fail "a killed pull left a version: $(VMHPC_STORE="$STORE3" versions)"
ok "pull killed with -9 after $got chunks: no version in the store"

VMHPC_STORE="$STORE3" "$VMHPC" image pull --insecure --max-rate 1M "$REG/vmhpc/small:1" >"$WORK/pull3.out" 2>"$WORK/pull3.err" &
pid=$!
for i in $(seq 200); do [ "$(chunk_files "$STORE3")" -ge $((got + 20)) ] && break; sleep 0.05; done
stop_registry plain
if wait "$pid"; then fail "pull succeeded with its registry stopped"; fi
grep -q "$REG" "$WORK/pull3.err" || fail "the error does not name the registry: $(cat "$WORK/pull3.err")"
grep -q "no version was added" "$WORK/pull3.err" || fail "the error does not say nothing was added: $(cat "$WORK/pull3.err")"
[ -z "$(VMHPC_STORE="$STORE3" versions)" ] || fail "a pull cut off by the registry left a version"
ok "registry stopped mid-pull: $(tail -n 1 "$WORK/pull3.err" | cut -c1-200)"
expect_fail "pull with the registry down" "cannot reach registry $REG" \
	env VMHPC_STORE="$STORE3" "$VMHPC" image pull --insecure "$REG/vmhpc/small:1"
"$VMHPC" image match --registry "$REG/vmhpc/small" --insecure 'version >= 1' >"$WORK/match4.out" 2>"$WORK/match4.err" ||
	fail "match with the registry down: $(cat "$WORK/match4.err")"
grep -q "matching over the local store only" "$WORK/match4.err" || fail "match with the registry down does not say so: $(cat "$WORK/match4.err")"
[ "$(cut -f1 "$WORK/match4.out" | sort | tr '\n' ' ')" = "small:1 small:2 " ] || fail "match with the registry down: $(cat "$WORK/match4.out")"
ok "image match with the registry down matches over the local store and says so"

start_registry plain
had=$(chunk_files "$STORE3")
VMHPC_STORE="$STORE3" "$VMHPC" image pull --insecure --json "$REG/vmhpc/small:1" >"$WORK/pull3.json"
[ "$(jget "$WORK/pull3.json" chunks_present)" -ge "$had" ] || fail "the resumed pull re-fetched stored chunks: $(cat "$WORK/pull3.json")"
[ "$(($(jget "$WORK/pull3.json" chunks_present) + $(jget "$WORK/pull3.json" chunks_fetched)))" = "$(jget "$WORK/pull3.json" chunks)" ] || fail "resumed pull counts do not add up"
VMHPC_STORE="$STORE3" "$VMHPC" image verify >/dev/null || fail "verify after the resumed pull fails"
[ "$(VMHPC_STORE="$STORE3" versions)" = small:1 ] || fail "the resumed pull did not add small:1"
ok "the next pull resumes: $(jget "$WORK/pull3.json" chunks_present) chunks kept, $(jget "$WORK/pull3.json" chunks_fetched) fetched, verify passes"

# --- interrupted push: no tag until the end, the next push sends only the rest -------------
"$VMHPC" image push --insecure --max-rate 1M small:1 "$REG/other/small:1" >/dev/null 2>&1 &
pid=$!
layers="$WORK/reg-plain/data/docker/registry/v2/repositories/other/small/_layers/sha256"
for i in $(seq 400); do [ "$(ls "$layers" 2>/dev/null | wc -l)" -ge 20 ] && break; sleep 0.05; done
kill -9 "$pid" 2>/dev/null || fail "the throttled push ended before it could be killed"
wait "$pid" 2>/dev/null || true
expect_fail "pull of a push killed midway" "has no other/small:1" \
	env VMHPC_STORE="$WORK/store-empty" "$VMHPC" image pull --insecure "$REG/other/small:1"
"$VMHPC" image push --insecure --json small:1 "$REG/other/small:1" >"$WORK/push4.json"
up=$(jget "$WORK/push4.json" chunks_uploaded)
[ "$up" -gt 0 ] && [ "$up" -lt "$(jget "$WORK/push4.json" chunks)" ] || fail "resumed push uploaded $up of $(jget "$WORK/push4.json" chunks)"
ok "push killed midway leaves no tag; the next push uploads only $up of $(jget "$WORK/push4.json" chunks) chunks"

# --- bad names, no registry, TLS by default -------------------------------------------------
expect_fail "unknown tag" "has no vmhpc/small:9" \
	env VMHPC_STORE="$WORK/store-empty" "$VMHPC" image pull --insecure "$REG/vmhpc/small:9"
expect_fail "unknown repository" "has no nobody/here:1" \
	env VMHPC_STORE="$WORK/store-empty" "$VMHPC" image pull --insecure "$REG/nobody/here:1"
expect_fail "push of an unknown image" "no image" \
	"$VMHPC" image push --insecure nosuch:1 "$REG/vmhpc/nosuch:1"
expect_fail "a reference without a registry" "names no registry" \
	"$VMHPC" image pull --insecure small:1
expect_fail "a bad tag" "tag" "$VMHPC" image pull --insecure "$REG/vmhpc/small:-x"
expect_fail "a bad repository" "repository 'Vmhpc/Small'" "$VMHPC" image pull --insecure "$REG/Vmhpc/Small:1"
expect_fail "TLS by default" "needs --insecure" \
	env VMHPC_STORE="$WORK/store-empty" "$VMHPC" image pull "$REG/vmhpc/small:1"
port=$(free_port)
expect_fail "no registry at all" "cannot reach registry 127.0.0.1:$port" \
	env VMHPC_STORE="$WORK/store-empty" "$VMHPC" image pull --insecure "127.0.0.1:$port/vmhpc/small:1"
[ -z "$(VMHPC_STORE="$WORK/store-empty" versions)" ] || fail "a failed pull added a version"

# --- TLS with a site CA: the registry's certificate signed by a CA of the test's own ---------
# The CA goes where docker and podman keep a registry's (DIR/HOST:PORT/ca.crt); the system's
# store does not know it.
mkdir -p "$WORK/tls"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls/ca.key" -out "$WORK/tls/ca.crt" \
	-subj /CN=vmhpc-test-ca -days 1 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls/other.key" -out "$WORK/tls/other.crt" \
	-subj /CN=vmhpc-other-ca -days 1 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$WORK/tls/srv.key" -out "$WORK/tls/srv.csr" \
	-subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$WORK/tls/ext"
openssl x509 -req -in "$WORK/tls/srv.csr" -CA "$WORK/tls/ca.crt" -CAkey "$WORK/tls/ca.key" \
	-CAcreateserial -out "$WORK/tls/srv.crt" -days 1 -extfile "$WORK/tls/ext" 2>/dev/null
start_registry tls "  tls:
    certificate: $WORK/tls/srv.crt
    key: $WORK/tls/srv.key"
TLSREG="127.0.0.1:$(cat "$WORK/reg-tls/port")"
mkdir -p "$WORK/certs.d/$TLSREG" "$WORK/certs-wrong.d/$TLSREG" "$WORK/certs-none.d"
cp "$WORK/tls/ca.crt" "$WORK/certs.d/$TLSREG/ca.crt"
cp "$WORK/tls/other.crt" "$WORK/certs-wrong.d/$TLSREG/ca.crt"
VMHPC_CERTS_DIR="$WORK/certs.d" "$VMHPC" image push small:1 "$TLSREG/vmhpc/small:1" >/dev/null ||
	fail "push over TLS with the registry's CA in certs.d"
VMHPC_CERTS_DIR="$WORK/certs.d" VMHPC_STORE="$WORK/store-tls" "$VMHPC" image pull "$TLSREG/vmhpc/small:1" >/dev/null ||
	fail "pull over TLS with the registry's CA in certs.d"
VMHPC_STORE="$WORK/store-tls" "$VMHPC" image verify >/dev/null || fail "the TLS pull does not verify"
ok "TLS (no --insecure) with the registry's CA in \$VMHPC_CERTS_DIR/$TLSREG/ca.crt: push, pull, verify"
expect_fail "TLS, CA unknown" "needs that CA in \$VMHPC_CERTS_DIR/$TLSREG/ca.crt;" \
	env VMHPC_CERTS_DIR="$WORK/certs-none.d" VMHPC_STORE="$WORK/store-empty" "$VMHPC" image pull "$TLSREG/vmhpc/small:1"
expect_fail "TLS, another CA in certs.d" "(the one there did not verify it)" \
	env VMHPC_CERTS_DIR="$WORK/certs-wrong.d" VMHPC_STORE="$WORK/store-empty" "$VMHPC" image pull "$TLSREG/vmhpc/small:1"
[ -z "$(VMHPC_STORE="$WORK/store-empty" versions)" ] || fail "a refused TLS pull added a version"
stop_registry tls

# --- an independent OCI client copies the artifact; vmhpc pulls the copy -------------------
if command -v skopeo >/dev/null; then
	skopeo copy --src-tls-verify=false --dest-tls-verify=false \
		"docker://$REG/vmhpc/small:1" "docker://$REG/copied/small:1" >/dev/null 2>"$WORK/skopeo.err" ||
		fail "skopeo copy failed: $(cat "$WORK/skopeo.err")"
	VMHPC_STORE="$WORK/store-copy" "$VMHPC" image pull --insecure --json "$REG/copied/small:1" >"$WORK/pull-copy.json"
	[ "$(jget "$WORK/pull-copy.json" digest)" = "$(jget "$WORK/pull1.json" digest)" ] || fail "skopeo's copy has another manifest digest"
	cmp "$STORE1/manifests/small/1.json" "$WORK/store-copy/manifests/small/1.json" || fail "the copy's manifest differs"
	ok "skopeo copy keeps the manifest digest; vmhpc pulls the copy"
else
	echo "skopeo is missing: interoperability not checked"
fi

# --- a damaged blob in the registry is refused; nothing committed --------------------------
layer=$(VMHPC_STORE="$STORE2" "$VMHPC" image pull --insecure --json "$REG/vmhpc/small:1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
blobs="$WORK/reg-plain/data/docker/registry/v2/blobs/sha256"
oci_hex=${layer#sha256:}
digest=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["layers"][5]["digest"])' "$blobs/${oci_hex:0:2}/$oci_hex/data")
hex=${digest#sha256:}
blob="$blobs/${hex:0:2}/$hex/data"
cp "$blob" "$WORK/blob.orig"
python3 -c 'import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0xff; open(p, "wb").write(b)' "$blob"
STORE5="$WORK/store5"
expect_fail "a damaged blob" "its copy is damaged" \
	env VMHPC_STORE="$STORE5" "$VMHPC" image pull --insecure "$REG/vmhpc/small:1"
[ -z "$(VMHPC_STORE="$STORE5" versions)" ] || fail "a pull with a damaged blob added a version"
VMHPC_STORE="$STORE5" "$VMHPC" image verify >/dev/null || fail "the store of a refused pull does not verify"
ok "nothing of the damaged blob was stored, no version added, the store verifies"
cp "$WORK/blob.orig" "$blob"

# --- a manifest that names a blob the registry lacks: refused, nothing committed ------------
mv "$blob" "$WORK/blob.moved"
STORE6="$WORK/store6"
expect_fail "a manifest naming a missing blob" "404" \
	env VMHPC_STORE="$STORE6" "$VMHPC" image pull --insecure "$REG/vmhpc/small:1"
[ -z "$(VMHPC_STORE="$STORE6" versions)" ] || fail "a pull with a missing blob added a version"
VMHPC_STORE="$STORE6" "$VMHPC" image verify >/dev/null || fail "the store of a refused pull does not verify"
ok "a missing blob: no version added, the store verifies"
mv "$WORK/blob.moved" "$blob"

# --- htpasswd (Basic) auth -----------------------------------------------------------------
htpasswd -Bbn alice 's3cret:pass' >"$WORK/htpasswd" 2>/dev/null
start_registry auth "auth:
  htpasswd:
    realm: vmhpc-test
    path: $WORK/htpasswd"
AREG="127.0.0.1:$(cat "$WORK/reg-auth/port")"
expect_fail "push without credentials" "VMHPC_REGISTRY_AUTH=user:password" \
	"$VMHPC" image push --insecure small:1 "$AREG/vmhpc/small:1"
expect_fail "wrong password" "refused the credentials from VMHPC_REGISTRY_AUTH" \
	env VMHPC_REGISTRY_AUTH=alice:wrong "$VMHPC" image push --insecure small:1 "$AREG/vmhpc/small:1"
expect_fail "malformed VMHPC_REGISTRY_AUTH" "must be user:password" \
	env VMHPC_REGISTRY_AUTH=alice "$VMHPC" image push --insecure small:1 "$AREG/vmhpc/small:1"
VMHPC_REGISTRY_AUTH='alice:s3cret:pass' "$VMHPC" image push --insecure small:1 "$AREG/vmhpc/small:1" >/dev/null
ok "push with VMHPC_REGISTRY_AUTH"
expect_fail "pull without credentials" "needs credentials" \
	env VMHPC_STORE="$WORK/store6" "$VMHPC" image pull --insecure "$AREG/vmhpc/small:1"
mkdir -p "$WORK/docker"
printf '{"auths": {"other.example:5000": {"auth": "eDp5"}, "http://%s/v2/": {"auth": "%s"}}}\n' \
	"$AREG" "$(printf 'alice:s3cret:pass' | base64)" >"$WORK/docker/config.json"
DOCKER_CONFIG="$WORK/docker" VMHPC_STORE="$WORK/store6" "$VMHPC" image pull --insecure "$AREG/vmhpc/small:1" >/dev/null
[ "$(VMHPC_STORE="$WORK/store6" versions)" = small:1 ] || fail "pull with config.json did not add small:1"
ok "pull with the credentials of a docker config.json"
printf '{"auths": {"%s": {"auth": "!!"}}}\n' "$AREG" >"$WORK/docker/config.json"
expect_fail "a malformed config.json" "is not base64" \
	env DOCKER_CONFIG="$WORK/docker" VMHPC_STORE="$WORK/store6" "$VMHPC" image pull --insecure "$AREG/vmhpc/small:1"

# --- Bearer tokens: the registry's `auth: token`, with a token service of the test's own ----
if command -v openssl >/dev/null; then
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/token.key" -out "$WORK/token.pem" \
		-subj /CN=vmhpc-test-token -days 1 2>/dev/null
	openssl x509 -in "$WORK/token.pem" -outform DER -out "$WORK/token.der"
	python3 "$VMHPC_SOURCE_ROOT/tests/integration/token-server.py" "$WORK/token.port" \
		"$WORK/token.key" "$WORK/token.der" vmhpc-test-issuer 'carol:t0ken' &
	on_exit "kill $!"
	for i in $(seq 100); do [ -f "$WORK/token.port" ] && break; sleep 0.1; done
	[ -f "$WORK/token.port" ] || fail "the token service did not start"
	start_registry token "auth:
  token:
    realm: http://127.0.0.1:$(cat "$WORK/token.port")/token
    service: vmhpc-test-registry
    issuer: vmhpc-test-issuer
    rootcertbundle: $WORK/token.pem"
	TREG="127.0.0.1:$(cat "$WORK/reg-token/port")"
	expect_fail "Bearer without credentials" "token service of registry $TREG wants credentials" \
		"$VMHPC" image push --insecure small:1 "$TREG/vmhpc/small:1"
	expect_fail "Bearer with a wrong password" "refused the credentials from VMHPC_REGISTRY_AUTH" \
		env VMHPC_REGISTRY_AUTH=carol:nope "$VMHPC" image push --insecure small:1 "$TREG/vmhpc/small:1"
	VMHPC_REGISTRY_AUTH=carol:t0ken "$VMHPC" image push --insecure --json small:1 "$TREG/vmhpc/small:1" >"$WORK/push-token.json"
	VMHPC_REGISTRY_AUTH=carol:t0ken VMHPC_STORE="$WORK/store7" "$VMHPC" image pull --insecure --json "$TREG/vmhpc/small:1" >"$WORK/pull-token.json"
	VMHPC_STORE="$WORK/store7" "$VMHPC" image verify >/dev/null || fail "verify after the Bearer pull fails"
	ok "Bearer token dance: push ($(jget "$WORK/push-token.json" http.requests) requests) and pull ($(jget "$WORK/pull-token.json" http.requests) requests) with tokens from the realm"
else
	echo "openssl is missing: Bearer auth not tested"
fi

[ -z "$(leftovers)" ] || fail "temp files left: $(leftovers)"
finish
