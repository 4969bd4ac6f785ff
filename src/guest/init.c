/* vmhpc-init: PID 1 inside every vmhpc guest, linked statically so the boot initramfs
 * needs nothing else. This first slice brings the guest to a shell-less ready state:
 * mounts the kernel file systems, loads the modules the image lists, reports ready on
 * the console, reaps every child, and powers off on SIGTERM/SIGUSR2 (what QEMU's
 * system_powerdown and a shutdown request become). PID 1 never returns: it syncs and
 * calls reboot(RB_POWER_OFF). The VM runtime issue extends it (root, network, exec). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODULES_LIST "/etc/vmhpc/modules"

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	fputs("vmhpc-init: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void mount_or_warn(const char *src, const char *target, const char *type,
			  unsigned long flags, const char *data)
{
	mkdir(target, 0755);
	if (mount(src, target, type, flags, data) < 0 && errno != EBUSY)
		say("mounting %s on %s: %s", type, target, strerror(errno));
}

static void load_modules(void)
{
	FILE *f = fopen(MODULES_LIST, "re");
	char line[4096];

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		int fd;

		line[strcspn(line, "\n")] = '\0';
		if (!line[0])
			continue;
		fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			say("module %s: %s", line, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			say("loading %s: %s", line, strerror(errno));
		close(fd);
	}
	fclose(f);
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

int main(void)
{
	sigset_t all;

	if (getpid() != 1) {
		say("must run as PID 1 inside a vmhpc guest");
		return 1;
	}
	/* Signals are taken synchronously in the loop below, never by handlers. */
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);

	mount_or_warn("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_warn("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_or_warn("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_or_warn("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m");
	load_modules();
	say("ready");

	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(&all, &info);

		if (sig == SIGCHLD) {
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
		} else if (sig == SIGTERM || sig == SIGUSR2 || sig == SIGINT || sig == SIGPWR) {
			say("powering off");
			power_off();
		}
	}
}
