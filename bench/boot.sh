#!/usr/bin/env bash
# The boot benchmark (issue 10, "Benchmark"): the tiny default image and a full Debian 12
# guest with systemd, side by side in one run, under the same QEMU, accelerator, machine
# type (q35), VCPUs (1) and memory (512 MB) -- the paper's management-overhead table.
#
# For each guest, median of $BOOTS boots (default 3), tiny and Debian alternating so that
# the machine's background load hits both alike:
#   ready     QEMU start -> the ready line on the serial console (tiny: "vmhpc-init: ready";
#             Debian: "VMHPC-BENCH-READY ...", written by a unit once systemd's boot job
#             queue is empty, i.e. `systemctl is-system-running --wait` returned)
#   shutdown  request -> QEMU process gone (tiny: SHUTDOWN over vmhpc-init's control port,
#             as `vmhpc run` does: vmhpc-init ignores the ACPI power button, checked on the
#             first boot; Debian: QMP system_powerdown, handled by systemd-logind)
#   guest     MemTotal - MemAvailable as the guest reports it at ready (tiny: the READY frame
#             vmhpc-init sends on the control port; Debian: the ready line)
#   host      QEMU's Rss and Pss from /proc/PID/smaps_rollup right after ready
# then 4 VMs of one image booted together (4 tiny guests share one root file; 4 Debian
# guests each need their own writable copy of the disk image): sum of PSS; and the image
# size as stored (tiny: `vmhpc image list --json`; Debian: zstd -19 of the ext4 image, and
# `vmhpc image build bench/debian-full.ini`, the same tree in vmhpc's store).
#
# Needs root (debootstrap, chroot). The Debian tree, its ext4 image and its compressed
# size are cached under $BENCH_CACHE (default /var/cache/vmhpc/bench) so reruns skip them.
# Every QEMU it starts is killed and every temp file removed on exit, even on failure.
#
# The machine is shared: before each measurement the driver waits (QUIET_WAIT_S, default
# 180 s) until other work uses at most QUIET_CORES (0.3) cores, and records what it saw.
# QEMU's CPU time to ready is reported beside the wall clock: it moves less with load.
#
# Environment: BUILD (build dir, default build), BOOTS (3), ACCEL (tcg|kvm: skip the
# probe), BENCH_CACHE, QUIET_CORES, QUIET_WAIT_S, SKIP_VMHPC_DEBIAN=1 (skip building
# debian-full.ini into the store), SKIP_RUN=1 (skip the `vmhpc run` figures), KERNELS=1 (also
# the guest kernel variants of issue 16, interleaved with the rest: the default image (our own
# kernel) with each option on its own -- tb-size=16, uncompressed initramfs, free page
# reporting, 256 MiB, 256 MiB with tb-size=32 -- and the same image on Debian's kernel: PVH,
# bzImage, cryptomgr.notests; KERNEL_VARIANTS=own256,own32,deb picks some of them;
# docs/kernel.md).
# `boot.sh --prepare` only builds the caches.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build=${BUILD:-build}
boots=${BOOTS:-3}
cache=${BENCH_CACHE:-/var/cache/vmhpc/bench}
deb=$cache/debian12
mirror=http://deb.debian.org/debian
py=/usr/bin/python3
[ -x "$py" ] || py=python3

if [ "$(id -u)" != 0 ]; then
	echo "boot.sh: run as root (debootstrap and chroot build the Debian guest)" >&2
	exit 1
fi

work=$(mktemp -d /tmp/vmhpc-bench-boot.XXXXXX)
export VMHPC_STORE=/tmp/bench-store-$$
export WORK=$work
drv=""
bgpid=""
tree_tmp=""

# Kills the QEMUs this run started (listed by the driver as it starts them), only those:
# a pid is killed only while its process is still a qemu-system binary.
kill_listed() {
	local pid comm
	[ -f "$work/pids" ] || return 0
	while read -r pid; do
		[ -n "$pid" ] || continue
		comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
		case $comm in qemu-system*) kill -KILL "$pid" 2>/dev/null || true ;; esac
	done <"$work/pids"
	while read -r pid; do
		for _ in $(seq 50); do
			comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
			case $comm in qemu-system*) sleep 0.1 ;; *) break ;; esac
		done
	done <"$work/pids"
}

# Removes a (possibly half-made) Debian tree. An interrupted debootstrap may have left mounts
# in it (proc, sys, bound device nodes): unmount them first, and never delete through one.
remove_tree() {
	local t=${1%/}
	[ -e "$t" ] || return 0
	awk -v t="$t/" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r |
		xargs -r -n1 umount -l
	rm -rf --one-file-system "$t"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$drv" ] && kill -0 "$drv" 2>/dev/null; then
		kill -TERM "$drv" 2>/dev/null || true
		wait "$drv" 2>/dev/null || true
	fi
	if [ -n "$bgpid" ]; then
		kill -TERM -- "-$bgpid" 2>/dev/null || kill -TERM "$bgpid" 2>/dev/null || true
		wait "$bgpid" 2>/dev/null || true
	fi
	kill_listed
	[ -n "$tree_tmp" ] && remove_tree "$tree_tmp"
	rm -rf "$work" "$VMHPC_STORE"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '== %s\n' "$*" >&2; }

# Runs a long command (debootstrap, zstd, image builds) in its own process group and waits
# for it: a signal to this script interrupts the wait, and cleanup ends that group by id.
long() {
	setsid "$@" &
	bgpid=$!
	local rc=0
	wait "$bgpid" || rc=$?
	bgpid=""
	return "$rc"
}

# Runs the driver in the background and waits for it: a trapped signal interrupts `wait`
# at once (it would not interrupt a foreground child), and the trap then ends everything.
driver() {
	"$py" "$work/driver.py" "$@" &
	drv=$!
	wait "$drv"
	drv=""
}

# ---- the Debian guest: debootstrap, configure, ext4 image (all cached) ----

# Runs a command chrooted into $1 in a private mount namespace with /proc, /sys and /dev:
# the mounts vanish with the namespace, whatever happens.
in_chroot() {
	local dir=$1
	shift
	long unshare --mount --propagation private --fork sh -c '
		d=$1; shift
		mount -t proc proc "$d/proc" && mount -t sysfs sys "$d/sys" &&
		mount --rbind /dev "$d/dev" && exec chroot "$d" "$@"' sh "$dir" "$@"
}

configure_tree() {
	local t=$1
	# As Debian ships it today: with the point release and security updates, which also
	# makes its kernel the one the tiny image takes from apt (linux-image-cloud-amd64).
	cat >"$t/etc/apt/sources.list" <<-EOF
		deb $mirror bookworm main
		deb $mirror bookworm-updates main
		deb http://deb.debian.org/debian-security bookworm-security main
	EOF
	# Nothing may start services inside the chroot.
	printf '#!/bin/sh\nexit 101\n' >"$t/usr/sbin/policy-rc.d"
	chmod 755 "$t/usr/sbin/policy-rc.d"
	in_chroot "$t" env DEBIAN_FRONTEND=noninteractive apt-get -q update
	in_chroot "$t" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
		--no-install-recommends -o Dpkg::Options::=--force-confold dist-upgrade
	# One kernel, the newest installed, as a fresh install would have (dpkg also lists
	# packages it only knows of, e.g. -unsigned: only "installed" ones count).
	local installed newest old
	installed=$(chroot "$t" dpkg-query -W -f '${Package} ${Status}\n' 'linux-image-6*' |
		awk '$NF == "installed" { print $1 }' | sort -V)
	newest=$(echo "$installed" | tail -n1)
	old=$(echo "$installed" | grep -vxF "$newest" || true)
	if [ -n "$old" ]; then
		# shellcheck disable=SC2086
		in_chroot "$t" env DEBIAN_FRONTEND=noninteractive apt-get -q -y purge $old
	fi
	if ! [ -e "$t/boot/vmlinuz-${newest#linux-image-}" ]; then
		echo "boot.sh: no kernel left in the Debian tree ($newest); remove $deb and rerun" >&2
		return 1
	fi
	if ! ls "$t"/boot/initrd.img-* >/dev/null 2>&1; then
		in_chroot "$t" update-initramfs -c -k all
	fi
	in_chroot "$t" apt-get clean
	rm -rf "$t"/var/lib/apt/lists/* "$t/usr/sbin/policy-rc.d"
	# A machine id, so that every boot of a copy is an ordinary boot, not systemd's first
	# boot (presets, machine-id commit): the full guest gets its fastest path.
	tr -d '-' </proc/sys/kernel/random/uuid >"$t/etc/machine-id"
	echo debian-bench >"$t/etc/hostname"
	printf '127.0.0.1 localhost\n127.0.1.1 debian-bench\n' >"$t/etc/hosts"
	echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$t/etc/fstab"
	# The ready report: a Type=simple service (its start job is done once it runs, so it
	# is not itself part of the boot it waits for) that waits until systemd's job queue is
	# empty -- every unit of the boot transaction, getty on ttyS0 included, has started --
	# and writes one line with the guest's memory to the serial port.
	cat >"$t/usr/local/sbin/vmhpc-bench-ready" <<-'EOF'
		#!/bin/sh
		# vmhpc boot benchmark: report on ttyS0 when the boot is finished.
		systemctl is-system-running --wait >/dev/null 2>&1
		state=$(systemctl is-system-running 2>/dev/null)
		line="VMHPC-BENCH-READY state=$state"
		while read -r key value unit; do
			case $key in
			MemTotal:|MemFree:|MemAvailable:|Buffers:|Cached:|AnonPages:|Shmem:|Slab:|KernelStack:|PageTables:|Percpu:)
				line="$line ${key%:}=$value" ;;
			esac
		done </proc/meminfo
		read -r up idle </proc/uptime
		echo "$line uptime=$up END" >/dev/ttyS0
	EOF
	chmod 755 "$t/usr/local/sbin/vmhpc-bench-ready"
	cat >"$t/etc/systemd/system/vmhpc-bench-ready.service" <<-'EOF'
		[Unit]
		Description=vmhpc boot benchmark: report ready on ttyS0
		After=getty.target systemd-user-sessions.service

		[Service]
		Type=simple
		ExecStart=/usr/local/sbin/vmhpc-bench-ready

		[Install]
		WantedBy=multi-user.target
	EOF
	mkdir -p "$t/etc/systemd/system/multi-user.target.wants"
	ln -sf /etc/systemd/system/vmhpc-bench-ready.service \
		"$t/etc/systemd/system/multi-user.target.wants/vmhpc-bench-ready.service"
}

prepare_debian() {
	mkdir -p "$deb"
	if [ ! -f "$deb/tree.ok" ] || [ ! -d "$deb/tree" ]; then
		if ! command -v debootstrap >/dev/null; then
			say "installing debootstrap"
			apt-get install -y -q debootstrap >&2
		fi
		rm -f "$deb/tree.ok" "$deb/debian.ext4" "$deb/debian.ext4.zst-bytes"
		remove_tree "$deb/tree"
		tree_tmp=$deb/tree.tmp
		remove_tree "$tree_tmp"
		say "debootstrap bookworm into $tree_tmp (minutes; cached afterwards)"
		long debootstrap --variant=minbase --include=systemd-sysv,linux-image-cloud-amd64,udev,dbus \
			bookworm "$tree_tmp" "$mirror" >&2
		configure_tree "$tree_tmp"
		mv "$tree_tmp" "$deb/tree"
		tree_tmp=""
		date -u +%FT%TZ >"$deb/tree.ok"
	fi
	if [ ! -f "$deb/debian.ext4" ] || [ "$deb/tree.ok" -nt "$deb/debian.ext4" ]; then
		local mb
		# The tree plus a quarter plus 256 MB free: room for logs and the journal.
		mb=$(($(du -sxm "$deb/tree" | cut -f1) * 5 / 4 + 256))
		say "mke2fs -t ext4 -d tree ($mb MB)"
		rm -f "$deb/debian.ext4.tmp"
		long mke2fs -q -t ext4 -L debian-bench -d "$deb/tree" "$deb/debian.ext4.tmp" "${mb}M" >&2
		mv "$deb/debian.ext4.tmp" "$deb/debian.ext4"
		rm -f "$deb/debian.ext4.zst-bytes"
	fi
	if [ ! -f "$deb/debian.ext4.zst-bytes" ]; then
		say "zstd -19 of the ext4 image (minutes; cached afterwards)"
		long sh -c 'zstd -19 -T0 -q -c "$1" | wc -c >"$1.zst-bytes.tmp"' sh "$deb/debian.ext4"
		mv "$deb/debian.ext4.zst-bytes.tmp" "$deb/debian.ext4.zst-bytes"
	fi
}

# ---- the driver: boots, timing, memory (Python, stdlib only) ----
cat >"$work/driver.py" <<'PYEOF'
import ctypes, json, os, re, select, signal, socket, statistics, struct, subprocess, sys, time

WORK = os.environ["WORK"]
MEM_MB = 512
TB_MB = 64
# The control port's virtio-serial device as `vmhpc run` has it (src/vm/qemu.c).
VSER = ",max_ports=2"
libc = ctypes.CDLL(None, use_errno=True)
children = []


def pdeathsig():
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: QEMU dies with the driver


def kill_children():
    for p in children:
        if p.poll() is None:
            p.kill()
    for p in children:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass


signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- vmhpc-init's frames (src/guest/frame.h): 'V' 'H' type flags len32 payload ----
F_HELLO, F_WELCOME, F_EXEC, F_STDOUT, F_STDERR, F_EXIT, F_SHUTDOWN, F_READY, F_ERROR, F_SETUP = (
    1, 2, 3, 6, 7, 8, 10, 12, 13, 14)


def frame(t, payload=b""):
    return b"VH" + bytes([t, 0]) + struct.pack(">I", len(payload)) + payload


class FrameConn:
    def __init__(self, path, deadline):
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.buf = b""

    def recv(self, timeout):
        end = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 8:
                n = struct.unpack(">I", self.buf[4:8])[0]
                if self.buf[:2] != b"VH":
                    raise RuntimeError("bad frame magic from the guest")
                if len(self.buf) >= 8 + n:
                    t, p = self.buf[2], self.buf[8:8 + n]
                    self.buf = self.buf[8 + n:]
                    return t, p
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the guest")
            self.s.settimeout(left)
            d = self.s.recv(65536)
            if not d:
                raise EOFError("control port closed")
            self.buf += d

    def send(self, t, payload=b""):
        self.s.sendall(frame(t, payload))

    def exec_output(self, argv, timeout=30):
        p = struct.pack(">IIIII", 0, 0, 0, len(argv), 0)
        for s in ["/"] + argv:
            b = s.encode()
            p += struct.pack(">I", len(b)) + b
        self.send(F_EXEC, p)
        out = b""
        while True:
            t, d = self.recv(timeout)
            if t == F_STDOUT:
                out += d
            elif t == F_EXIT:
                return out.decode(errors="replace")
            elif t == F_ERROR:
                raise RuntimeError(d.decode(errors="replace"))


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r

    def close(self):
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass


def host_memory(pid, image_files):
    """Rss/Pss from smaps_rollup; Pss split by mapping from smaps: guest RAM (the anonymous
    mapping of the RAM size), TCG's code buffer (anonymous and executable), the image's
    files mapped (the tiny root through pmem; kernel/initrd files where QEMU maps them),
    the rest of QEMU (its heap, the ROM copy of -kernel, libraries)."""
    roll = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                roll[m.group(1)] = int(m.group(2))
    split = {"ram": 0, "tcg": 0, "files": 0, "other": 0}
    ram_rss = 0
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
            if m:
                size = int(m.group(2), 16) - int(m.group(1), 16)
                perms, path = m.group(3), m.group(4).strip()
                if path and path in image_files:
                    cur = "files"
                elif not path and size >= MEM_MB * 2**20:
                    cur = "ram"
                elif not path and "x" in perms:
                    cur = "tcg"
                else:
                    cur = "other"
                continue
            m = re.match(r"(Pss|Rss):\s+(\d+) kB", line)
            if m and cur:
                if m.group(1) == "Pss":
                    split[cur] += int(m.group(2))
                elif cur == "ram":
                    ram_rss += int(m.group(2))
    return {"rss_kb": roll.get("Rss", 0), "pss_kb": roll.get("Pss", 0),
            "pss_split_kb": split, "ram_rss_kb": ram_rss}


def cpu_seconds(pid):
    """User + system CPU time of a process so far: under TCG, what a boot costs whatever
    else the machine runs (the wall-clock figures move with the load)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class VM:
    def __init__(self, kind, name, argv, marker, files, ctl=None, token=None):
        self.kind, self.name, self.argv, self.marker = kind, name, argv, marker
        self.ctl, self.token, self.files = ctl, token, files
        self.qmp_path = f"{WORK}/{name}.qmp"
        self.argv = argv + ["-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                            "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]
        self.console = b""
        self.ready_s = None
        self.ready_cpu_s = None
        self.ready_line = None
        self.exit_s = None
        self.res = {}

    def start(self):
        self.logf = open(f"{WORK}/{self.name}.console", "wb")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, preexec_fn=pdeathsig)
        children.append(self.p)
        with open(f"{WORK}/pids", "a") as f:
            f.write(f"{self.p.pid}\n")
        self.fd = self.p.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.pidfd = os.pidfd_open(self.p.pid)
        if self.ctl:
            # vmhpc-init takes its token in SETUP on the control port (not from the command
            # line) and mounts its root only then: sent as soon as QEMU's socket is up, on
            # the connection HELLO uses later.
            self.conn = FrameConn(self.ctl, time.monotonic() + 10)
            self.conn.send(F_SETUP, bytes.fromhex(self.token))

    def feed(self):
        try:
            d = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        if not d:
            return False
        self.logf.write(d)
        self.logf.flush()
        self.console += d
        if self.ready_s is None:
            i = self.console.find(self.marker)
            if i >= 0:
                end = self.console.find(b"\n", i)
                if self.kind == "debian" and self.console.find(b"END", i) < 0:
                    return True  # the line is not whole yet
                self.ready_s = time.monotonic() - self.t0
                self.ready_cpu_s = cpu_seconds(self.p.pid)
                self.ready_line = self.console[i:end if end >= 0 else None].decode(errors="replace")
        return True

    def tail(self, n=15):
        return "\n".join(self.console.decode(errors="replace").splitlines()[-n:])

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def pump(vms, until, timeout, what):
    """Reads every VM's console and watches their exits until until() or timeout."""
    end = time.monotonic() + timeout
    while not until():
        left = end - time.monotonic()
        if left <= 0:
            for v in vms:
                log(f"--- {v.name} console, last lines:\n{v.tail()}")
            raise TimeoutError(f"{what}: not within {timeout} s")
        fds = [v.fd for v in vms if v.fd is not None] + [v.pidfd for v in vms if v.exit_s is None]
        r, _, _ = select.select(fds, [], [], min(left, 0.2))
        now = time.monotonic()
        for v in vms:
            if v.fd is not None and v.fd in r and not v.feed():
                v.fd = None
            if v.exit_s is None and v.pidfd in r:
                v.p.wait()
                v.exit_s = now
                if v.fd is not None:
                    while v.feed():
                        pass
                    v.fd = None
                if v.ready_s is None:
                    raise RuntimeError(f"{v.name}: QEMU exited ({v.p.returncode}) before ready:\n{v.tail()}")


def tiny_argv(accel, kernel, initrd, root, ctl, token, extra="", tb_mb=None, mem_mb=None,
              devices=(), vser=VSER):
    return ["qemu-system-x86_64", "-machine", "q35", "-accel", accel_opt(accel, tb_mb),
            *cpu_opt(accel), *[a for d in devices for a in ("-device", d)],
            "-m", f"{mem_mb or MEM_MB}M,slots=1,maxmem=2G", "-smp", "1", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            # no_timer_check as `vmhpc run` has it: under TCG on a loaded host the kernel's
            # IO-APIC timer check can fail and panic ("IO-APIC + timer doesn't work!"; seen
            # with 4 VMs at a load average of 15). noapictimer under TCG, as `vmhpc run`
            # has it too: no APIC timer calibration (docs/kernel.md).
            # percpu_alloc=page as `vmhpc run` has it too (docs/kernel.md: no 4 MiB array
            # beside a second percpu chunk).
            "-append", f"console=ttyS0 swiotlb=noforce no_timer_check"
                       f"{' noapictimer' if accel == 'tcg' else ''} panic=-1 percpu_alloc=page quiet vmhpc.root=pmem "
                       f"vmhpc.token={token}{extra}",
            "-object", f"memory-backend-file,id=pm0,mem-path={root},share=on,readonly=on,"
                       f"size={os.path.getsize(root)}",
            "-device", "virtio-pmem-pci,memdev=pm0",
            "-chardev", f"socket,id=ctl,path={ctl},server=on,wait=off",
            "-device", f"virtio-serial-pci,id=vser0{vser}",
            "-device", "virtserialport,bus=vser0.0,chardev=ctl,name=org.vmhpc.control"]


def debian_argv(accel, kernel, initrd, disk):
    return ["qemu-system-x86_64", "-machine", "q35", "-accel", accel_opt(accel),
            *cpu_opt(accel),
            "-m", f"{MEM_MB}M", "-smp", "1", "-nodefaults", "-no-user-config",
            "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", "root=/dev/vda rw console=ttyS0 quiet panic=-1",
            # cache=none: the disk's pages live in the guest only (counted in QEMU's PSS),
            # not also in the host's page cache where no PSS would show them.
            "-drive", f"file={disk},format=raw,if=none,id=d0,cache=none,aio=threads",
            "-device", "virtio-blk-pci,drive=d0"]


def accel_opt(accel, tb_mb=None):
    return f"tcg,tb-size={tb_mb or TB_MB}" if accel == "tcg" else "kvm"


def cpu_opt(accel):
    return ["-cpu", "host"] if accel == "kvm" else []


def new_token():
    return os.urandom(32).hex()


def make_tiny(cfg, name, accel, variant="tiny"):
    """A vmhpc-init guest; variant picks its kernel, initramfs, root and TCG buffer (the
    default image, or one of the kernel variants in cfg["variants"])."""
    tok = new_token()
    ctl = f"{WORK}/{name}.ctl"
    v = cfg["variants"].get(variant, {}) if variant != "tiny" else {}
    kernel = v.get("kernel", cfg["tiny_kernel"])
    initrd = v.get("initrd", cfg["tiny_initrd"])
    root = v.get("root", cfg["tiny_root"])
    return VM("tiny", name, tiny_argv(accel, kernel, initrd, root, ctl, tok,
                                      extra=v.get("extra", ""), tb_mb=v.get("tb_mb"),
                                      mem_mb=v.get("mem_mb"), devices=v.get("devices", ()),
                                      vser=v.get("vser", VSER)),
              b"vmhpc-init: ready", [root, kernel, initrd], ctl=ctl, token=tok)


def make_debian(cfg, name, accel):
    disk = f"{WORK}/{name}.ext4"
    # Its own writable copy per VM (sparse; reflinked where the file system can).
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", cfg["deb_image"], disk], check=True)
    return VM("debian", name, debian_argv(accel, cfg["deb_kernel"], cfg["deb_initrd"], disk),
              b"VMHPC-BENCH-READY", [cfg["deb_kernel"], cfg["deb_initrd"]])


def after_ready(v, first=False):
    """Guest memory, QMP, host memory: right after the ready line."""
    if v.kind == "tiny":
        # HELLO at once; the guest sends READY (its memory and uptime) when the host
        # connects and/or before its answer to HELLO (docs/guest.md): skip everything
        # until WELCOME, keep the first READY.
        c = v.conn
        c.send(F_HELLO, bytes.fromhex(v.token))
        info = None
        while True:
            t, p = c.recv(15)
            if t == F_READY and len(p) == 24 and info is None:
                info = struct.unpack(">QQQ", p)
            elif t == F_WELCOME:
                break
            elif t == F_ERROR:
                raise RuntimeError(f"{v.name}: HELLO refused: {p.decode(errors='replace')}")
        if info is None:
            raise RuntimeError(f"{v.name}: no READY frame on the control port")
        total, avail, up = info
        v.res.update(mem_total_kb=total, mem_available_kb=avail, guest_used_kb=total - avail,
                     guest_uptime_s=up / 1000)
        v.conn = c
    else:
        f = dict(kv.split("=", 1) for kv in v.ready_line.split()[1:] if "=" in kv)
        total, avail = int(f["MemTotal"]), int(f["MemAvailable"])
        v.res.update(mem_total_kb=total, mem_available_kb=avail, guest_used_kb=total - avail,
                     guest_uptime_s=float(f["uptime"]), systemd_state=f.get("state"),
                     meminfo={k: int(x) for k, x in f.items() if k not in ("state", "uptime")})
    v.qmp = Qmp(v.qmp_path)
    v.res["ready_s"] = v.ready_s
    v.res["ready_cpu_s"] = v.ready_cpu_s


def sample_host(v):
    v.res.update(host_memory(v.p.pid, v.files))


def settle(cfg, kind):
    """A variant with settle_s is sampled that long after ready (free page reporting works
    in the background: the guest reports free 2 MiB blocks ~2 s after they are freed)."""
    time.sleep(cfg["variants"].get(kind, {}).get("settle_s", 0))


def extras_first_tiny(v):
    """First tiny boot only, after the figures are taken: the guest's whole meminfo (for
    the breakdown) and whether the ACPI power button does anything."""
    txt = v.conn.exec_output(["cat", "/proc/meminfo"])
    v.res["meminfo"] = {m.group(1): int(m.group(2))
                        for m in re.finditer(r"^(\w+):\s+(\d+) kB", txt, re.M)}
    v.qmp.cmd("system_powerdown")
    time.sleep(3)
    v.res["acpi_powerdown_ignored"] = v.p.poll() is None


def request_shutdown(v):
    v.t_shut = time.monotonic()
    if v.kind == "tiny":
        v.conn.send(F_SHUTDOWN)
    else:
        v.qmp.cmd("system_powerdown")


def finish_shutdown(v):
    v.res["shutdown_s"] = v.exit_s - v.t_shut
    v.res["qemu_exit"] = v.p.returncode
    v.qmp.close()
    if v.kind == "debian":
        os.unlink(f"{WORK}/{v.name}.ext4")


def boot_one(cfg, kind, i, accel):
    name = f"{kind}{i}"
    v = make_debian(cfg, name, accel) if kind == "debian" else make_tiny(cfg, name, accel, kind)
    v.start()
    pump([v], lambda: v.ready_s is not None, 300 if kind == "tiny" else 900, f"{name} ready")
    after_ready(v)
    settle(cfg, kind)
    sample_host(v)
    if kind == "tiny" and i == 0:
        extras_first_tiny(v)
    request_shutdown(v)
    pump([v], lambda: v.exit_s is not None, 120, f"{name} shutdown")
    finish_shutdown(v)
    r = v.res
    log(f"   {name}: ready {r['ready_s']:.2f} s (guest uptime {r['guest_uptime_s']:.2f} s, "
        f"QEMU CPU {r['ready_cpu_s']:.2f} s), "
        f"shutdown {r['shutdown_s']:.2f} s, guest used {r['guest_used_kb'] / 1024:.1f} MiB, "
        f"QEMU RSS {r['rss_kb'] / 1024:.1f} MiB PSS {r['pss_kb'] / 1024:.1f} MiB")
    return r


def boot_many(cfg, kind, n, accel):
    vms = [make_debian(cfg, f"{kind}4x{i}", accel) if kind == "debian"
           else make_tiny(cfg, f"{kind}4x{i}", accel, kind) for i in range(n)]
    for v in vms:
        v.start()
    pump(vms, lambda: all(v.ready_s is not None for v in vms), 600 if kind == "tiny" else 1800,
         f"{n} {kind} VMs ready")
    for v in vms:
        after_ready(v)
    settle(cfg, kind)
    for v in vms:  # all samples taken together, every VM up
        sample_host(v)
    for v in vms:
        request_shutdown(v)
    pump(vms, lambda: all(v.exit_s is not None for v in vms), 300, f"{n} {kind} VMs shutdown")
    for v in vms:
        finish_shutdown(v)
    out = {"vms": [v.res for v in vms],
           "pss_sum_kb": sum(v.res["pss_kb"] for v in vms),
           "rss_sum_kb": sum(v.res["rss_kb"] for v in vms),
           "guest_used_sum_kb": sum(v.res["guest_used_kb"] for v in vms),
           "ready_max_s": max(v.res["ready_s"] for v in vms),
           "shutdown_all_s": max(v.exit_s for v in vms) - min(v.t_shut for v in vms)}
    log(f"   {n} x {kind}: slowest ready {out['ready_max_s']:.2f} s, "
        f"sum PSS {out['pss_sum_kb'] / 1024:.1f} MiB, sum RSS {out['rss_sum_kb'] / 1024:.1f} MiB, "
        f"guest used {out['guest_used_sum_kb'] / 1024:.1f} MiB in all")
    return out


def probe_accel(cfg):
    """KVM only where a probe boot of the tiny guest reaches ready (here /dev/kvm exists but
    -cpu host aborts and other CPU models hang): a deadline catches both."""
    if os.environ.get("ACCEL"):
        return os.environ["ACCEL"], "set by ACCEL"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        return "tcg", f"/dev/kvm: {e.strerror}"
    v = make_tiny(cfg, "kvmprobe", "kvm")
    v.start()
    try:
        pump([v], lambda: v.ready_s is not None, 20, "KVM probe")
        return "kvm", f"probe boot ready in {v.ready_s:.2f} s"
    except TimeoutError:
        return "tcg", "KVM probe boot (-cpu host) hung: no ready line within 20 s"
    except RuntimeError as e:
        msg = next((l for l in v.tail().splitlines() if l.startswith("qemu")), str(e).splitlines()[0])
        return "tcg", f"KVM probe boot (-cpu host) failed: {msg.strip()}"
    finally:
        v.kill()


def busy_cores(window_s=2.0):
    """Cores busy machine-wide over window_s (from /proc/stat), while none of ours runs."""
    def snap():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    t1, i1 = snap()
    time.sleep(window_s)
    t2, i2 = snap()
    return (1 - (i2 - i1) / max(1, t2 - t1)) * os.cpu_count()


def wait_quiet():
    """The machine is shared: wait (up to QUIET_WAIT_S, default 180 s) until others use
    at most QUIET_CORES (default 0.3) cores, then go anyway; returns what was seen."""
    limit = float(os.environ.get("QUIET_CORES", "0.3"))
    end = time.monotonic() + float(os.environ.get("QUIET_WAIT_S", "180"))
    while True:
        b = busy_cores()
        if b <= limit or time.monotonic() >= end:
            return b


def main():
    cfg = json.load(open(sys.argv[1]))
    out = {}
    accel, why = probe_accel(cfg)
    out["accel"], out["accel_why"] = accel, why
    log(f"== accelerator: {accel} ({why})")
    boots = cfg["boots"]
    variants = list(cfg["variants"])
    kinds = ["tiny", *variants, "debian"]
    runs = {k: [] for k in kinds}
    for i in range(boots):
        for kind in kinds:
            b = wait_quiet()
            log(f"== boot {i + 1}/{boots}: {kind} (other load: {b:.2f} cores busy)")
            r = boot_one(cfg, kind, i, accel)
            r["busy_cores_before"] = b
            runs[kind].append(r)
    out["runs"] = runs
    out["four"] = {}
    for kind in ["tiny", *[k for k in variants if cfg["variants"][k].get("four")], "debian"]:
        b = wait_quiet()
        log(f"== 4 {kind} VMs together (other load: {b:.2f} cores busy)")
        out["four"][kind] = boot_many(cfg, kind, 4, accel)
        out["four"][kind]["busy_cores_before"] = b
    json.dump(out, open(f"{WORK}/results.json", "w"), indent=1)


# ---- the report ----
def med(rs, key):
    return statistics.median(r[key] for r in rs)


def rng(rs, key, scale=1.0, fmt="%.2f"):
    vals = sorted(r[key] * scale for r in rs)
    return (fmt % vals[0]) + "-" + (fmt % vals[-1])


def report():
    res = json.load(open(f"{WORK}/results.json"))
    cfg = json.load(open(sys.argv[2]))
    sizes = json.load(open(f"{WORK}/sizes.json"))
    t, d = res["runs"]["tiny"], res["runs"]["debian"]
    ft, fd = res["four"]["tiny"], res["four"]["debian"]
    MiB = 1 / 1024
    m = lambda rs, k: med(rs, k) * MiB
    print(f"## Boot and shutdown (`bench/boot.sh`, {cfg['date']}, {cfg['cpu']}, {cfg['cores']} cores)")
    print()
    print(f"Accelerator **{res['accel']}** ({res['accel_why']}); {cfg['qemu']}; q35, 1 VCPU, "
          f"{MEM_MB} MB, `-accel tcg,tb-size={TB_MB}` for both; kernel {cfg['tiny_kernel_release']} "
          f"(tiny) / {cfg['deb_kernel_release']} (Debian). Median of {len(t)} boots, range in brackets.")
    print()
    print("| | tiny-mpi (vmhpc-init) | Debian 12 + systemd | paper: ttylinux domU | paper: RHEL AS4 domU | goal |")
    print("|---|---|---|---|---|---|")
    rt, rd = med(t, "ready_s"), med(d, "ready_s")
    print(f"| boot to ready | **{rt:.2f} s** ({rng(t, 'ready_s')}) | **{rd:.2f} s** ({rng(d, 'ready_s')}) "
          f"| 5.3 s | 24.1 s | tiny >= 10x faster: **{rd / rt:.1f}x** |")
    ct, cd = med(t, "ready_cpu_s"), med(d, "ready_cpu_s")
    print(f"| QEMU CPU time (user + sys) to ready | {ct:.2f} s ({rng(t, 'ready_cpu_s')}) | {cd:.2f} s "
          f"({rng(d, 'ready_cpu_s')}) | | | ratio **{cd / ct:.1f}x** (moves less with load) |")
    st, sd = med(t, "shutdown_s"), med(d, "shutdown_s")
    print(f"| shutdown | **{st:.2f} s** ({rng(t, 'shutdown_s')}) | **{sd:.2f} s** ({rng(d, 'shutdown_s')}) "
          f"| 5.0 s | 13.2 s | tiny <= 0.5 s: **{'met' if st <= 0.5 else 'missed'}** |")
    gt, gd = m(t, "guest_used_kb"), m(d, "guest_used_kb")
    print(f"| guest memory used after boot (MemTotal - MemAvailable) | **{gt:.1f} MiB** "
          f"({rng(t, 'guest_used_kb', MiB, '%.1f')}) | **{gd:.1f} MiB** ({rng(d, 'guest_used_kb', MiB, '%.1f')}) "
          f"| 23.6 MB | 77.1 MB | <= 16 MB: **{'met' if gt * 1.048576 <= 16 else 'missed'}** |")
    print(f"| QEMU host RSS per VM | {m(t, 'rss_kb'):.1f} MiB | {m(d, 'rss_kb'):.1f} MiB | | | |")
    print(f"| QEMU host PSS per VM | {m(t, 'pss_kb'):.1f} MiB | {m(d, 'pss_kb'):.1f} MiB | | | |")
    lt = 4 * (ft["guest_used_sum_kb"] / 4 + 10 * 1024) * MiB
    ld = 4 * (fd["guest_used_sum_kb"] / 4 + 10 * 1024) * MiB
    print(f"| 4 VMs of one image booted together: sum of PSS | **{ft['pss_sum_kb'] * MiB:.1f} MiB** "
          f"(limit 4 x (used + 10 MB) = {lt:.1f} MiB: **{'met' if ft['pss_sum_kb'] * MiB < lt else 'missed'}**) "
          f"| **{fd['pss_sum_kb'] * MiB:.1f} MiB** (limit {ld:.1f} MiB: "
          f"**{'met' if fd['pss_sum_kb'] * MiB < ld else 'missed'}**; 4 disk copies) | | | < 4 x (guest used + 10 MB) |")
    print(f"| 4 VMs: slowest ready / all shut down (2 cores, 4 VCPUs) | {ft['ready_max_s']:.2f} s / "
          f"{ft['shutdown_all_s']:.2f} s | {fd['ready_max_s']:.2f} s / {fd['shutdown_all_s']:.2f} s | | | |")
    ts, dz = sizes.get("tiny_stored_bytes"), sizes.get("deb_zstd_bytes")
    dv = sizes.get("deb_vmhpc_stored_bytes")
    dvs = f"; in vmhpc's store: {dv / 1e6:.1f} MB" if dv else ""
    print(f"| image as stored | **{ts / 1e6:.1f} MB** (vmhpc store, zstd -19 chunks) | "
          f"**{dz / 1e6:.1f} MB** (zstd -19 of the {sizes['deb_ext4_bytes'] / 1e6:.0f} MB ext4 image{dvs}) "
          f"| ~30 MB | | |")
    print()
    print("Host PSS split (MiB): guest RAM / TCG code buffer / image files mapped / rest of QEMU")
    for name, rs in (("tiny", t), ("debian", d)):
        r = sorted(rs, key=lambda r: r["pss_kb"])[len(rs) // 2]
        s = r["pss_split_kb"]
        print(f"- {name}, one VM (median boot): {s['ram'] * MiB:.1f} / {s['tcg'] * MiB:.1f} / "
              f"{s['files'] * MiB:.1f} / {s['other'] * MiB:.1f}")
    for name, f4 in (("tiny", ft), ("debian", fd)):
        tot = {k: sum(v["pss_split_kb"][k] for v in f4["vms"]) * MiB for k in ("ram", "tcg", "files", "other")}
        print(f"- 4 x {name}, summed: {tot['ram']:.1f} / {tot['tcg']:.1f} / {tot['files']:.1f} / {tot['other']:.1f}")
    if cfg.get("tiny_note"):
        print(f"\nNote: {cfg['tiny_note']}.")
    print()
    mi = t[0].get("meminfo", {})
    keys = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "AnonPages", "Shmem",
            "Slab", "KernelStack", "PageTables", "Percpu")
    dm = d[0].get("meminfo", {})
    print("Guest /proc/meminfo at ready (kB), first boot of each: "
          + "; ".join(f"{k} {mi.get(k, '?')} / {dm.get(k, '?')}" for k in keys))
    print()
    print(f"Tiny: ACPI power button (QMP system_powerdown) ignored by vmhpc-init: "
          f"{t[0].get('acpi_powerdown_ignored')}. Debian systemd state at ready: "
          f"{', '.join(sorted(set(str(r.get('systemd_state')) for r in d)))}. Cores busy with other "
          f"work just before each boot (of {cfg['cores']}): tiny "
          f"{', '.join('%.2f' % r['busy_cores_before'] for r in t)}; Debian "
          f"{', '.join('%.2f' % r['busy_cores_before'] for r in d)}; 4 x tiny "
          f"{ft['busy_cores_before']:.2f}; 4 x Debian {fd['busy_cores_before']:.2f}.")
    if cfg["variants"]:
        kernel_report(res, cfg, sizes)
    if sizes.get("deb_vmhpc_error"):
        print(f"\n`vmhpc image build bench/debian-full.ini`: {sizes['deb_vmhpc_error']}")
    if sizes.get("run"):
        print()
        for label, r in sizes["run"].items():
            print(f"`vmhpc run` {label}: {r}")


def kernel_report(res, cfg, sizes):
    """The kernel variants (issue 16) beside the default image and full Debian."""
    MiB = 1 / 1024
    d = res["runs"]["debian"]
    rd, cd = med(d, "ready_s"), med(d, "ready_cpu_s")
    print()
    print(f"### Kernel variants (same QEMU, interleaved, median of {len(d)} boots)")
    print()
    print("| variant | ready | QEMU CPU to ready | vs full Debian (wall / CPU) | guest used | QEMU PSS, 1 VM | 4 VMs: sum of PSS (limit) |")
    print("|---|---|---|---|---|---|---|")
    labels = {"tiny": "default image: " + cfg.get("tiny_label", "tiny-mpi")}
    labels.update({k: v["label"] for k, v in cfg["variants"].items()})
    for k in ["tiny", *cfg["variants"], "debian"]:
        rs = res["runs"][k]
        r, c = med(rs, "ready_s"), med(rs, "ready_cpu_s")
        f4 = res["four"].get(k)
        four = ""
        if f4:
            lim = 4 * (f4["guest_used_sum_kb"] / 4 + 10 * 1024) * MiB + 64
            four = (f"{f4['pss_sum_kb'] * MiB:.1f} MiB ({lim:.1f} MiB: "
                    f"**{'met' if f4['pss_sum_kb'] * MiB <= lim else 'missed'}**)")
        print(f"| {labels.get(k, 'Debian 12 + systemd')} | {r:.2f} s ({rng(rs, 'ready_s')}) "
              f"| {c:.2f} s ({rng(rs, 'ready_cpu_s')}) | {rd / r:.1f}x / {cd / c:.1f}x "
              f"| {med(rs, 'guest_used_kb') * MiB:.1f} MiB ({rng(rs, 'guest_used_kb', MiB, '%.1f')}) "
              f"| {med(rs, 'pss_kb') * MiB:.1f} MiB | {four} |")
    for k, v in cfg["variants"].items():
        if v.get("stored_bytes"):
            print(f"\n{v['label']}: image stored {v['stored_bytes'] / 1e6:.1f} MB.", end="")
    print()


if __name__ == "__main__":
    try:
        if sys.argv[1] == "report":
            report()
        else:
            main()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        kill_children()
PYEOF

# ---- the run ----
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
cores=$(nproc)
say "machine: $cpu, $cores cores; $(date -u +%F); $(qemu-system-x86_64 --version | head -n1)"

prepare_debian
if [ "${1:-}" = --prepare ]; then
	say "Debian guest cached in $deb"
	exit 0
fi

# The binaries, copied once: others may rebuild $build while this runs.
mkdir -p "$work/bin"
for b in vmhpc vmhpc-init vmhpc-exec; do
	cp "$repo/$build/$b" "$work/bin/$b"
done
vmhpc=$work/bin/vmhpc

say "vmhpc image build examples/tiny-mpi.ini (store $VMHPC_STORE)"
long "$vmhpc" image build examples/tiny-mpi.ini >&2
for part in kernel initramfs root; do
	"$vmhpc" image cat tiny-mpi "$part" -o "$work/tiny.$part"
done
tiny_meta() {
	"$vmhpc" image show --json "$1" | "$py" -c "import json,sys; print(json.load(sys.stdin)['metadata'].get('$2', ''))"
}
stored_of() {
	"$vmhpc" image list --json | "$py" -c \
		'import json,sys; print(sorted([v for v in json.load(sys.stdin) if v["name"] == sys.argv[1]], key=lambda v: v["version"])[-1]["stored_bytes"])' "$1"
}
tiny_pkg=$(tiny_meta tiny-mpi kernel_package)
# vmhpc-init reports READY (with the guest's memory) and takes SHUTDOWN on a virtio-serial
# port, which a Debian kernel needs virtio_console in the boot initramfs for. If the default
# spec names a Debian kernel without it, the benchmark measures the default image plus that
# one module. (Our own kernel, `[kernel] source`, has it built in.)
tiny_note=""
if [ "${tiny_pkg#linux-source-}" = "$tiny_pkg" ] &&
	! zstd -dc "$work/tiny.initramfs" | cpio -t 2>/dev/null | grep -q '/virtio_console\.ko'; then
	tiny_note="examples/tiny-mpi.ini lacks virtio_console (vmhpc-init's control port): measured with it added"
	say "$tiny_note"
	sed 's/^modules = /modules = virtio_console /' examples/tiny-mpi.ini >"$work/tiny-mpi.ini"
	long "$vmhpc" image build "$work/tiny-mpi.ini" >&2
	for part in kernel initramfs root; do
		"$vmhpc" image cat tiny-mpi "$part" -o "$work/tiny.$part"
	done
fi
tiny_stored=$(stored_of tiny-mpi)
tiny_rel=$(tiny_meta tiny-mpi kernel_release)
tiny_label="$tiny_pkg $tiny_rel, $(tiny_meta tiny-mpi kernel_boot)"

# Kernel variants (issue 16, docs/kernel.md), KERNELS=1: the default image (our own kernel,
# `[kernel] source`) with each option of issue 16 on its own, and the same image on Debian's
# kernel package (examples/tiny-mpi-debian.ini: its PVH vmlinux, its bzImage, and with
# cryptomgr.notests), all interleaved with the default and full Debian.
variants_json="{}"
if [ "${KERNELS:-0}" = 1 ]; then
	say "vmhpc image build examples/tiny-mpi-debian.ini (the default image on Debian's kernel)"
	long "$vmhpc" image build examples/tiny-mpi-debian.ini >&2
	for part in kernel initramfs root; do
		"$vmhpc" image cat tiny-mpi-debian "$part" -o "$work/deb.$part"
	done
	dk_pkg=$(tiny_meta tiny-mpi-debian kernel_package)
	dk_rel=$(tiny_meta tiny-mpi-debian kernel_release)
	dk_bz=$(ls /var/cache/vmhpc/unpacked/"$dk_pkg"_*/boot/vmlinuz-"$dk_rel" | head -n1)
	dk_stored=$(stored_of tiny-mpi-debian)
	# The initramfs as QEMU gets it is zstd-compressed cpio; the kernel unpacks either.
	zstd -dc "$work/tiny.initramfs" >"$work/tiny.initramfs.cpio"
	variants_json=$("$py" -c '
import json, os, sys
w, bz, drel, dstored, rel, irdz, ird = sys.argv[1:8]
deb = {"kernel": f"{w}/deb.kernel", "initrd": f"{w}/deb.initramfs", "root": f"{w}/deb.root"}
bal = "virtio-balloon-pci,free-page-reporting=on"
variants = {
    "own16": {"label": f"own kernel {rel}, tb-size=16", "tb_mb": 16, "four": True},
    "ownraw": {"label": f"own kernel {rel}, uncompressed initramfs ({int(ird) // 1024} KiB, "
                        f"zstd {int(irdz) // 1024} KiB)",
               "initrd": f"{w}/tiny.initramfs.cpio", "four": False},
    "ownwait": {"label": f"own kernel {rel}, sampled 6 s after ready", "settle_s": 6,
                "four": False},
    "ownbal": {"label": f"own kernel {rel}, free page reporting, sampled 6 s after ready",
               "devices": [bal], "settle_s": 6, "four": False},
    "own16bal": {"label": f"own kernel {rel}, tb-size=16 + free page reporting, sampled 6 s after ready",
                 "tb_mb": 16, "devices": [bal], "settle_s": 6, "four": True},
    "own256": {"label": f"own kernel {rel}, 256 MiB", "mem_mb": 256, "four": True},
    "own32": {"label": f"own kernel {rel}, 256 MiB, tb-size=32", "mem_mb": 256, "tb_mb": 32,
              "four": True},
    "deb": {"label": f"Debian kernel {drel}, PVH", **deb, "four": False,
            "stored_bytes": int(dstored)},
    "debbz": {"label": f"Debian kernel {drel}, bzImage", **deb, "kernel": bz, "four": False},
    "debnotests": {"label": f"Debian kernel {drel}, PVH, cryptomgr.notests", **deb,
                   "extra": " cryptomgr.notests", "four": False},
}
# KERNEL_VARIANTS=own256,own32,deb picks some (default: all)
pick = [k for k in os.environ.get("KERNEL_VARIANTS", "").split(",") if k]
print(json.dumps({k: v for k, v in variants.items() if not pick or k in pick}))' "$work" "$dk_bz" "$dk_rel" "$dk_stored" "$tiny_rel" \
		"$(stat -c %s "$work/tiny.initramfs")" "$(stat -c %s "$work/tiny.initramfs.cpio")")
fi

deb_kernel=$(ls "$deb"/tree/boot/vmlinuz-* | sort -V | tail -n1)
deb_rel=${deb_kernel##*/vmlinuz-}
deb_initrd=$deb/tree/boot/initrd.img-$deb_rel

"$py" - "$work/config.json" "$variants_json" <<EOF
import json, sys
json.dump({"boots": $boots, "tiny_kernel": "$work/tiny.kernel", "tiny_initrd": "$work/tiny.initramfs",
           "tiny_root": "$work/tiny.root", "deb_kernel": "$deb_kernel", "deb_initrd": "$deb_initrd",
           "deb_image": "$deb/debian.ext4", "cpu": "$cpu", "cores": $cores,
           "date": "$(date -u +%F)", "qemu": "$(qemu-system-x86_64 --version | head -n1)",
           "tiny_kernel_release": "$tiny_rel", "deb_kernel_release": "$deb_rel",
           "tiny_note": "$tiny_note", "variants": json.loads(sys.argv[2]),
           "tiny_label": "$tiny_label"},
          open(sys.argv[1], "w"))
EOF

say "boots: $boots of each, alternating, then 4 VMs of each image together"
driver "$work/config.json"

# Sizes, after the boots (zstd and the store build are heavy: never during a measurement).
deb_vmhpc="" deb_vmhpc_err=""
if [ "${SKIP_VMHPC_DEBIAN:-0}" != 1 ]; then
	say "vmhpc image build bench/debian-full.ini (the Debian tree in vmhpc's store)"
	sed "s|^tree = .*|tree = $deb/tree|" bench/debian-full.ini >"$work/debian-full.ini"
	if long "$vmhpc" image build "$work/debian-full.ini" >"$work/deb-build.log" 2>&1; then
		cat "$work/deb-build.log" >&2
		deb_vmhpc=$("$vmhpc" image list --json | "$py" -c \
			'import json,sys; print(sorted([v for v in json.load(sys.stdin) if v["name"] == "debian-full"], key=lambda v: v["version"])[-1]["stored_bytes"])')
	else
		deb_vmhpc_err=$(tail -n3 "$work/deb-build.log" | tr '\n' ' ')
		say "failed: $deb_vmhpc_err"
	fi
fi

# `vmhpc run`'s own figures, when it works (it is being written alongside this benchmark).
# It uses the newest tiny-mpi in the bench's store: the one measured above.
run_json="{}"
if [ "${SKIP_RUN:-0}" != 1 ]; then
	mkdir -p "$work/job"
	: >"$work/run.tsv"
	for spec in "1 VM:--vms 1" "4 VMs:--vms 4 --oversubscribe"; do
		label=${spec%%:*}
		say "vmhpc run ${spec#*:} -n 1 --json -- true"
		rc=0
		# shellcheck disable=SC2086
		cd "$work/job"
		long timeout 600 "$vmhpc" run ${spec#*:} -n 1 --json -- true >/dev/null 2>"$work/run.err" ||
			rc=$?
		cd "$repo"
		if [ "$rc" = 0 ] && grep -q '^{' "$work/run.err"; then
			printf '%s\t%s\n' "$label" "$(grep '^{' "$work/run.err" | tail -n1)" >>"$work/run.tsv"
		else
			printf '%s\tfailed (exit %s): %s\n' "$label" "$rc" \
				"$(grep -v '^{' "$work/run.err" | head -n2 | tr '\n' ' ')" >>"$work/run.tsv"
		fi
	done
	run_json=$("$py" -c '
import json, sys
out = {}
for line in open(sys.argv[1]):
    label, text = line.rstrip("\n").split("\t", 1)
    try:
        j = json.loads(text)
        out[label] = "accel %s, boot (slowest VM) %.2f s, shutdown %.2f s; per VM: %s; sum of PSS %.1f MiB" % (
            j["accel"], j["boot_s"], j["shutdown_s"],
            "; ".join("ready_s %.2f, guest_used_kb %d, host_pss_kb %d" % (
                v["ready_s"], v["guest_used_kb"], v["host_pss_kb"]) for v in j["vm"]),
            j["host_pss_total_kb"] / 1024)
    except (ValueError, KeyError):
        out[label] = text
print(json.dumps(out))' "$work/run.tsv")
fi

TINY_STORED=$tiny_stored DEB_ZSTD=$(cat "$deb/debian.ext4.zst-bytes") \
	DEB_EXT4=$(stat -c %s "$deb/debian.ext4") DEB_VMHPC=$deb_vmhpc DEB_VMHPC_ERR=$deb_vmhpc_err \
	RUN_JSON=$run_json "$py" - "$work/sizes.json" <<'EOF'
import json, os, sys
e = os.environ
json.dump({"tiny_stored_bytes": int(e["TINY_STORED"]), "deb_zstd_bytes": int(e["DEB_ZSTD"]),
           "deb_ext4_bytes": int(e["DEB_EXT4"]),
           "deb_vmhpc_stored_bytes": int(e["DEB_VMHPC"]) if e["DEB_VMHPC"] else None,
           "deb_vmhpc_error": e["DEB_VMHPC_ERR"] or None,
           "run": json.loads(e["RUN_JSON"] or "{}")}, open(sys.argv[1], "w"))
EOF

echo
"$py" "$work/driver.py" report "$work/config.json"
