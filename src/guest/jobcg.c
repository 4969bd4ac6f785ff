#include "guest/jobcg.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#define CGROUP_ROOT "/sys/fs/cgroup"

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;
	int saved;

	if (fd < 0)
		return -errno;
	n = write(fd, text, strlen(text));
	saved = errno;
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -(n < 0 ? saved : EIO);
}

int jobcg_setup(void)
{
	int r;

	if (mount("cgroup2", CGROUP_ROOT, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 &&
	    errno != EBUSY)
		return -errno;
	/* Children of the root get the memory controller: memory.peak and memory.events. */
	r = write_text(CGROUP_ROOT "/cgroup.subtree_control", "+memory");
	if (r < 0)
		return r;
	if (mkdir(JOBCG_DIR, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int jobcg_enter(void)
{
	return write_text(JOBCG_DIR "/cgroup.procs", "0");
}

/* The first number in a file after key ("" for the file's first number). */
static uint64_t read_number(const char *path, const char *key)
{
	FILE *f = fopen(path, "re");
	char line[256];
	uint64_t v = 0;
	size_t klen = strlen(key);

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, klen) == 0 && (klen == 0 || line[klen] == ' ')) {
			if (sscanf(line + klen, " %" SCNu64, &v) != 1)
				v = 0;
			break;
		}
	}
	fclose(f);
	return v;
}

uint64_t jobcg_mem_peak_kb(void)
{
	return read_number(JOBCG_DIR "/memory.peak", "") / 1024;
}

uint64_t jobcg_oom_kills(void)
{
	return read_number("/proc/vmstat", "oom_kill");
}
