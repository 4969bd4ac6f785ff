#!/usr/bin/env bash
# Where the default image's guest memory goes (issue 16): boots the default image (our own
# kernel) the way bench/boot.sh does (q35, 1 VCPU, PVH, pmem root, the control port, TCG),
# at MEM_MB (default 256), once per variant per round, variants interleaved, and reports the
# guest's MemTotal - MemAvailable at ready (vmhpc-init's READY frame) with QEMU's PSS; the
# first round also keeps the guest's /proc/meminfo, the largest slab caches and vmalloc
# users, so that a cut can be aimed before it is measured.
#
# A variant is NAME=EXTRA-KERNEL-ARGS, or NAME=@KERNEL-FILE[:EXTRA] for another vmlinux
# (e.g. one built from another fragment with `vmhpc kernel build --config`):
#   VARIANTS='base=;numaoff=numa=off' ROUNDS=3 bench/guest-mem.sh   (';' between variants)
# Output: one line per boot, then a table of medians; JSON in $OUT (default
# /tmp/guest-mem.json).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build=${BUILD:-build}
rounds=${ROUNDS:-3}
py=/usr/bin/python3

[ "$(id -u)" = 0 ] || { echo "guest-mem.sh: run as root" >&2; exit 1; }
work=$(mktemp -d /tmp/vmhpc-guest-mem.XXXXXX)
export VMHPC_STORE=$work/store WORK=$work
trap 'rm -rf "$work"' EXIT

# The bench's driver (VM, frames, QMP, host memory), taken from bench/boot.sh.
sed -n "/^cat >\"\$work\/driver.py\" <<'PYEOF'$/,/^PYEOF$/p" bench/boot.sh | sed '1d;$d' >"$work/driver.py"
grep -q '^def make_tiny' "$work/driver.py" || { echo "guest-mem.sh: no driver in bench/boot.sh" >&2; exit 1; }

"$repo/$build/vmhpc" image build --level 1 examples/tiny-mpi.ini >&2
for part in kernel initramfs root; do
	"$repo/$build/vmhpc" image cat tiny-mpi "$part" -o "$work/tiny.$part"
done

"$py" - "$work" "$rounds" "${MEM_MB:-256}" "${TB_MB:-64}" "${OUT:-/tmp/guest-mem.json}" \
	"${VARIANTS:-base=}" <<'EOF'
import json, os, re, statistics, sys, time
work, rounds, mem, tb, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.argv = [sys.argv[0]]
sys.path.insert(0, work)
import driver as d

variants = {}
for spec in os.environ.get("VARIANTS", "base=").split(";"):
    spec = spec.strip()
    if not spec:
        continue
    name, rest = spec.split("=", 1)
    v = {"extra": "", "label": name}
    if rest.startswith("@"):
        kern, _, rest = rest[1:].partition(":")
        v["kernel"] = kern
    # qemu:vser=OPTS sets the virtio-serial device's options (",max_ports=2"; "" for QEMU's 31)
    m = re.search(r"qemu:vser=(\S*)", rest)
    if m:
        v["vser"] = m.group(1)
        rest = rest.replace(m.group(0), "").strip()
    if rest:
        v["extra"] = " " + rest
    variants[name] = v
for v in variants.values():
    v["mem_mb"], v["tb_mb"] = mem, tb
cfg = {"tiny_kernel": f"{work}/tiny.kernel", "tiny_initrd": f"{work}/tiny.initramfs",
       "tiny_root": f"{work}/tiny.root", "variants": variants}
runs = {k: [] for k in variants}
detail = {}
try:
    for i in range(rounds):
        for k in variants:
            v = d.make_tiny(cfg, f"{k}{i}", "tcg", k)
            v.start()
            d.pump([v], lambda: v.ready_s is not None, 300, f"{k} ready")
            d.after_ready(v)
            d.sample_host(v)
            if i == 0:
                c = v.conn
                txt = c.exec_output(["cat", "/proc/meminfo"])
                detail[k] = {"meminfo": {m.group(1): int(m.group(2)) for m in
                             re.finditer(r"^(\w+):\s+(\d+) kB", txt, re.M)}}
                slab = c.exec_output(["cat", "/proc/slabinfo"])
                rows = []
                for line in slab.splitlines()[2:]:
                    f = line.split()
                    if len(f) > 14:  # name active num objsize objperslab pagesperslab : ... slabs
                        rows.append((int(f[14]) * int(f[5]) * 4, f[0], int(f[2]), int(f[3])))
                detail[k]["slab_top"] = sorted(rows, reverse=True)[:15]
                vm = c.exec_output(["cat", "/proc/vmallocinfo"])
                users = {}
                for line in vm.splitlines():
                    f = line.split()
                    if len(f) > 2 and "pages=" in line:
                        who = f[2]
                        users[who] = users.get(who, 0) + int(re.search(r"pages=(\d+)", line).group(1)) * 4
                detail[k]["vmalloc_top"] = sorted(((n, w) for w, n in users.items()), reverse=True)[:10]
                detail[k]["cmdline"] = c.exec_output(["cat", "/proc/cmdline"]).strip()
                detail[k]["dmesg_mem"] = [l for l in c.exec_output(["dmesg"]).splitlines()
                                          if re.search(r"Memory:|percpu|hash table|log_buf|Kernel/User|reserved|cma", l, re.I)]
            d.request_shutdown(v)
            d.pump([v], lambda: v.exit_s is not None, 120, f"{k} shutdown")
            d.finish_shutdown(v)
            r = v.res
            runs[k].append(r)
            d.log(f"{k}{i}: CPU to ready {r['ready_cpu_s']:.2f} s, guest used {r['guest_used_kb']} kB, "
                  f"MemTotal {r['mem_total_kb']} kB, PSS {r['pss_kb'] / 1024:.1f} MiB")
finally:
    d.kill_children()
json.dump({"runs": runs, "detail": detail, "variants": variants}, open(out, "w"), indent=1)
base = statistics.median(r["guest_used_kb"] for r in runs[list(variants)[0]])
print(f"| variant | kernel args added | guest used (median of {rounds}) | vs first | MemTotal | QEMU PSS | CPU to ready |")
print("|---|---|---|---|---|---|---|")
for k, rs in runs.items():
    u = statistics.median(r["guest_used_kb"] for r in rs)
    print(f"| {k} | `{variants[k]['extra'].strip() or '-'}` | {u / 1024:.2f} MiB "
          f"({min(r['guest_used_kb'] for r in rs) / 1024:.2f}-{max(r['guest_used_kb'] for r in rs) / 1024:.2f}) "
          f"| {(u - base) / 1024:+.2f} MiB | {statistics.median(r['mem_total_kb'] for r in rs) / 1024:.1f} MiB "
          f"| {statistics.median(r['pss_kb'] for r in rs) / 1024:.1f} MiB "
          f"| {statistics.median(r['ready_cpu_s'] for r in rs):.2f} s |")
EOF
