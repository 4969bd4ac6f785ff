/* Accelerator probe: see accel.h and docs/vm.md ("The accelerator probe"). */
#include "vm/accel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/proc.h"
#include "vm/qemu.h"
#include "util/time.h"

/* Guest RAM for a probe boot: the kernel and a small initramfs fit easily. */
#define ACCEL_PROBE_MEM_MB 256
/* Console line kept for matching; longer lines are cut (the ready line is short). */
#define ACCEL_LINE_MAX 512
/* The TCG control boot gets this many times the KVM deadline (TCG is ~20x slower). */
#define ACCEL_TCG_TIMEOUT_FACTOR 3
/* A KVM probe guest boots without quiet: its kernel prints within milliseconds. */
#define ACCEL_KVM_SILENCE_MS  3000
#define ACCEL_CACHE_MAX_BYTES (64 * 1024)

const char *accel_to_string(enum accel accel)
{
	static const char *const names[_ACCEL_MAX] = {
	    [ACCEL_TCG] = "tcg",
	    [ACCEL_KVM] = "kvm",
	};

	return (unsigned)accel < _ACCEL_MAX ? names[accel] : NULL;
}

int accel_from_string(const char *s, enum accel *ret)
{
	for (int a = 0; a < _ACCEL_MAX; a++)
		if (s && strcmp(s, accel_to_string((enum accel)a)) == 0) {
			*ret = (enum accel)a;
			return 0;
		}
	return -EINVAL;
}

/* What the probe saw on QEMU's stdout + stderr, one line at a time. */
struct probe_watch {
	char line[ACCEL_LINE_MAX + 1];
	size_t len;
	bool ready;
	bool heard; /* the guest's kernel has printed its banner (the firmware's does not count) */
	char qemu_msg[ACCEL_LINE_MAX + 1]; /* QEMU's first message ("qemu-system-x86_64: ...") */
};

static void watch_line(struct probe_watch *w)
{
	w->line[w->len] = '\0';
	while (w->len > 0 && (w->line[w->len - 1] == '\r' || w->line[w->len - 1] == ' '))
		w->line[--w->len] = '\0';
	if (strstr(w->line, "Linux version"))
		w->heard = true;
	if (strstr(w->line, ACCEL_READY_LINE))
		w->ready = true;
	else if (!w->qemu_msg[0] && strncmp(w->line, "qemu", 4) == 0 && strstr(w->line, ": "))
		memcpy(w->qemu_msg, w->line, w->len + 1);
	w->len = 0;
}

static void watch_feed(struct probe_watch *w, const char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n') {
			watch_line(w);
			continue;
		}
		if (w->len < ACCEL_LINE_MAX)
			w->line[w->len++] = buf[i];
	}
}

int accel_probe(enum accel accel, const char *cpu, const char *kernel, const char *initrd,
		int timeout_ms, bool *ret_works, char **ret_detail)
{
	struct qemu_vm_config config = {
	    .name = "vmhpc-accel-probe",
	    .accel = accel,
	    .cpu = accel == ACCEL_KVM ? (cpu ? cpu : "host") : cpu,
	    .mem_mb = ACCEL_PROBE_MEM_MB,
	    .kernel = kernel,
	    .initrd = initrd,
	    /* panic=-1 + -no-reboot: a guest that panics ends QEMU at once. vmhpc.probe: the
	     * guest's init says ready at once and powers off (it would otherwise wait 10 s
	     * for a control port the probe has not got). Under KVM the kernel prints its
	     * banner within milliseconds (no quiet): a guest that has not is hung. */
	    .cmdline = accel == ACCEL_KVM ? "console=ttyS0 panic=-1 vmhpc.probe=1"
					  : "console=ttyS0 quiet panic=-1 vmhpc.probe=1",
	    .console_pipe = true,
	};
	_cleanup_qemu_vm_ struct qemu_vm *vm = NULL;
	struct probe_watch w = {0};
	int64_t start = time_now_ms(), deadline = start + (timeout_ms > 0 ? timeout_ms : 0);
	char *detail = NULL;
	bool eof = false, silent = false;
	int fd, r, status, n;

	r = qemu_vm_start(&config, &vm);
	if (r < 0)
		return r;
	fd = qemu_vm_console_fd(vm);
	while (!w.ready && !eof) {
		int64_t now = time_now_ms(), left = deadline - now;

		/* A KVM guest that has printed nothing by now never will: here, a CPU model
		 * KVM cannot run hangs in its first instructions, and waiting out the whole
		 * timeout cost every machine's first job 10 s. */
		if (accel == ACCEL_KVM && !w.heard && start + ACCEL_KVM_SILENCE_MS < deadline) {
			if (now - start >= ACCEL_KVM_SILENCE_MS) {
				silent = true;
				break;
			}
			left = start + ACCEL_KVM_SILENCE_MS - now;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		char buf[4096];
		ssize_t got;

		if (left <= 0)
			break;
		n = poll(&pfd, 1, (int)left);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n <= 0)
			continue;
		got = read(fd, buf, sizeof(buf));
		if (got < 0 && errno != EINTR && errno != EAGAIN)
			return -errno;
		if (got == 0)
			eof = true; /* QEMU exited (or closed its stdout and stderr) */
		else if (got > 0)
			watch_feed(&w, buf, (size_t)got);
	}
	if (w.len > 0)
		watch_line(&w);

	if (w.ready) {
		r = asprintf(&detail, "%s guest ready after %lld ms", accel_to_string(accel),
			     (long long)(time_now_ms() - start));
	} else if (silent) {
		r = asprintf(&detail, "%s guest printed nothing within %d ms (hung at its start)",
			     accel_to_string(accel), ACCEL_KVM_SILENCE_MS);
	} else if (eof && qemu_vm_wait(vm, 2000, &status) == 0) {
		r = asprintf(&detail, "QEMU (%s) exited with status %d after %lld ms%s%s",
			     accel_to_string(accel), status, (long long)(time_now_ms() - start),
			     w.qemu_msg[0] ? ": " : " without a ready line", w.qemu_msg);
	} else {
		r = asprintf(
		    &detail,
		    "%s guest printed no ready line within %d ms (hung in early boot?)%s%s",
		    accel_to_string(accel), timeout_ms, w.qemu_msg[0] ? "; QEMU said: " : "",
		    w.qemu_msg);
	}
	if (r < 0)
		return -ENOMEM;
	/* vm's cleanup kills and reaps QEMU whatever happened. */
	log_debug("accel: probe: %s", detail);
	*ret_works = w.ready;
	if (ret_detail)
		*ret_detail = detail;
	else
		free(detail);
	return 0;
}

/* ---- the cache ---- */

struct accel_key {
	char qemu[256];	  /* first line of `qemu --version` */
	char kernel[128]; /* uname -r */
	char kvm[16];	  /* "absent", "no-access", "rw" */
};

static void kvm_state(char *out, size_t size)
{
	struct stat st;

	if (stat("/dev/kvm", &st) < 0 || !S_ISCHR(st.st_mode))
		snprintf(out, size, "absent");
	else if (access("/dev/kvm", R_OK | W_OK) < 0)
		snprintf(out, size, "no-access");
	else
		snprintf(out, size, "rw");
}

static int key_compute(struct accel_key *k)
{
	char *const argv[] = {(char *)qemu_binary(), "--version", NULL};
	_cleanup_free_ char *out = NULL, *err = NULL;
	struct utsname u;
	int r, code;

	memset(k, 0, sizeof(*k));
	kvm_state(k->kvm, sizeof(k->kvm));
	if (uname(&u) < 0)
		return -errno;
	snprintf(k->kernel, sizeof(k->kernel), "%s", u.release);
	r = proc_run(argv, NULL, &out, &err, &code);
	if (r < 0)
		return r;
	if (code != 0)
		return code == 127 ? -ENOENT : -EIO;
	snprintf(k->qemu, sizeof(k->qemu), "%.*s", (int)strcspn(out, "\r\n"), out);
	return 0;
}

/* File name for a key: FNV-1a of its text. The file holds the whole key, compared on
 * read, so a collision only costs a probe. */
static char *cache_path(const char *cache_dir, const struct accel_key *k)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325);
	const char *parts[] = {k->qemu, "\n", k->kernel, "\n", k->kvm};
	char *path;

	for (size_t i = 0; i < ARRAY_SIZE(parts); i++)
		for (const char *p = parts[i]; *p; p++) {
			h ^= (unsigned char)*p;
			h *= UINT64_C(0x100000001b3);
		}
	if (asprintf(&path, "%s/accel-%016llx.json", cache_dir, (unsigned long long)h) < 0)
		return NULL;
	return path;
}

static bool key_equal(json_t *key, const struct accel_key *k)
{
	const char *q = json_string_value(json_object_get(key, "qemu"));
	const char *kr = json_string_value(json_object_get(key, "kernel"));
	const char *kv = json_string_value(json_object_get(key, "kvm"));

	return q && kr && kv && strcmp(q, k->qemu) == 0 && strcmp(kr, k->kernel) == 0 &&
	       strcmp(kv, k->kvm) == 0;
}

/* 0 and the cached answer, or -ENOENT when there is none usable (missing, damaged,
 * another key). */
static int cache_read(const char *path, const struct accel_key *k, enum accel *ret_accel,
		      char **ret_detail)
{
	_cleanup_free_ char *text = NULL;
	json_t *root;
	enum accel a;
	size_t len;
	int r;

	r = fs_read_file(path, ACCEL_CACHE_MAX_BYTES, &text, &len);
	if (r < 0)
		return -ENOENT;
	root = json_loadb(text, len, 0, NULL);
	if (!root)
		return -ENOENT;
	r = -ENOENT;
	if (key_equal(json_object_get(root, "key"), k) &&
	    accel_from_string(json_string_value(json_object_get(root, "accel")), &a) == 0) {
		const char *d = json_string_value(json_object_get(root, "detail"));
		const char *when = json_string_value(json_object_get(root, "probed"));

		*ret_accel = a;
		r = 0;
		if (ret_detail && asprintf(ret_detail, "%s (cached, probed %s)", d ? d : "",
					   when ? when : "?") < 0)
			r = -ENOMEM;
	}
	json_decref(root);
	return r;
}

static int cache_write(const char *cache_dir, const char *path, const struct accel_key *k,
		       enum accel a, const char *detail)
{
	char when[32];
	time_t t = time(NULL);
	struct tm tm;
	json_t *root;
	char *text;
	int r;

	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
	root =
	    json_pack("{s:{s:s,s:s,s:s},s:s,s:s,s:s}", "key", "qemu", k->qemu, "kernel", k->kernel,
		      "kvm", k->kvm, "accel", accel_to_string(a), "detail", detail, "probed", when);
	if (!root)
		return -ENOMEM;
	text = json_dumps(root, JSON_INDENT(2));
	json_decref(root);
	if (!text)
		return -ENOMEM;
	r = fs_mkdir_p(cache_dir, 0755);
	if (r >= 0)
		r = fs_write_atomic(path, text, strlen(text), 0644);
	free(text);
	return r;
}

static int answer(enum accel a, char *detail, enum accel *ret_accel, char **ret_detail)
{
	*ret_accel = a;
	if (ret_detail)
		*ret_detail = detail;
	else
		free(detail);
	return 0;
}

int accel_detect(const char *cache_dir, const char *kernel, const char *initrd,
		 enum accel *ret_accel, char **ret_detail)
{
	_cleanup_free_ char *path = NULL, *kvm_detail = NULL, *tcg_detail = NULL;
	struct accel_key k;
	bool works;
	char *detail;
	int r;

	r = key_compute(&k);
	if (r < 0)
		return r;
	if (strcmp(k.kvm, "rw") != 0) {
		if (asprintf(&detail, "/dev/kvm is %s",
			     strcmp(k.kvm, "absent") == 0 ? "absent"
							  : "not readable and writable by us") < 0)
			return -ENOMEM;
		return answer(ACCEL_TCG, detail, ret_accel, ret_detail);
	}
	path = cache_path(cache_dir, &k);
	if (!path)
		return -ENOMEM;
	{
		enum accel cached;
		char *cached_detail = NULL;

		r = cache_read(path, &k, &cached, ret_detail ? &cached_detail : NULL);
		if (r == -ENOMEM)
			return r;
		if (r == 0)
			return answer(cached, cached_detail, ret_accel, ret_detail);
	}

	r = accel_probe(ACCEL_KVM, "host", kernel, initrd, ACCEL_PROBE_TIMEOUT_MS_DEFAULT, &works,
			&kvm_detail);
	if (r < 0)
		return r;
	if (works) {
		r = cache_write(cache_dir, path, &k, ACCEL_KVM, kvm_detail);
		if (r < 0)
			log_debug("accel: cannot write %s: %s", path, strerror(-r));
		return answer(ACCEL_KVM, TAKE_PTR(kvm_detail), ret_accel, ret_detail);
	}

	/* KVM failed. Is it KVM, or this guest? A TCG boot of the same guest tells. */
	r = accel_probe(ACCEL_TCG, NULL, kernel, initrd,
			ACCEL_PROBE_TIMEOUT_MS_DEFAULT * ACCEL_TCG_TIMEOUT_FACTOR, &works,
			&tcg_detail);
	if (r < 0)
		return r;
	if (!works) {
		if (asprintf(&detail,
			     "inconclusive, not cached: the probe guest does not boot under TCG "
			     "either (%s; %s)",
			     kvm_detail, tcg_detail) < 0)
			return -ENOMEM;
		return answer(ACCEL_TCG, detail, ret_accel, ret_detail);
	}
	if (asprintf(&detail, "KVM unusable: %s; %s", kvm_detail, tcg_detail) < 0)
		return -ENOMEM;
	r = cache_write(cache_dir, path, &k, ACCEL_TCG, detail);
	if (r < 0)
		log_debug("accel: cannot write %s: %s", path, strerror(-r));
	return answer(ACCEL_TCG, detail, ret_accel, ret_detail);
}
