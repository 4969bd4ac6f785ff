/* The job's shared-memory device in the guest (shmdev.h, docs/bypass.md). */
#include "guest/shmdev.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/shm.h"

static bool read_hex_file(const char *dir, const char *name, unsigned long *ret)
{
	char path[600], buf[32];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	*ret = strtoul(buf, NULL, 16);
	return true;
}

int shmdev_setup(struct shmdev *d, const char *sysfs_pci, bool have_node, unsigned node,
		 unsigned group, const uint8_t *token, size_t token_bytes, const char **ret_message)
{
	const char *root = sysfs_pci ? sysfs_pci : "/sys/bus/pci/devices";
	struct dirent *de;
	struct stat st;
	DIR *dir;
	int fd;

	memset(d, 0, sizeof(*d));
	if (!have_node)
		return 0;
	dir = opendir(root);
	while (dir && (de = readdir(dir))) {
		char dev[400];
		unsigned long vendor, device;

		if (de->d_name[0] == '.')
			continue;
		snprintf(dev, sizeof(dev), "%s/%s", root, de->d_name);
		if (read_hex_file(dev, "vendor", &vendor) &&
		    read_hex_file(dev, "device", &device) && vendor == 0x1af4 && device == 0x1110) {
			snprintf(d->resource, sizeof(d->resource), "%s/resource2", dev);
			break;
		}
	}
	if (dir)
		closedir(dir);
	if (!d->resource[0]) {
		*ret_message =
		    "no shared-memory device (PCI 1af4:1110) in this VM: MPI between VMs "
		    "uses TCP";
		return -ENODEV;
	}
	fd = open(d->resource, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= 0) {
		if (fd >= 0)
			close(fd);
		*ret_message = "the shared-memory device's BAR 2 cannot be opened: MPI between VMs "
			       "uses TCP";
		d->resource[0] = 0;
		return -ENODEV;
	}
	d->size_bytes = (size_t)st.st_size;
	d->base = mmap(NULL, d->size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (d->base == MAP_FAILED)
		d->base = NULL;
	d->key = shm_group_key(token, token_bytes, group);
	d->node = node;
	if (d->base && shm_region_check(d->base, d->size_bytes, d->key, NULL) < 0) {
		*ret_message = "the shared-memory device holds no region of this job: MPI between "
			       "VMs uses TCP";
		munmap(d->base, d->size_bytes);
		d->base = NULL;
		d->resource[0] = 0;
		return -EPROTO;
	}
	d->present = true;
	snprintf(d->env[0], sizeof(d->env[0]), "%s=%s", SHM_ENV_PATH, d->resource);
	snprintf(d->env[1], sizeof(d->env[1]), "%s=%016llx", SHM_ENV_KEY,
		 (unsigned long long)d->key);
	snprintf(d->env[2], sizeof(d->env[2]), "%s=%u", SHM_ENV_NODE, node);
	d->ucx = shmdev_is_ucx_transport(SHMDEV_UCX_MODULE) == 1;
	return 0;
}

int shmdev_is_ucx_transport(const char *path)
{
	static const char mark[] = "uct_ivshmem_init";
	char *buf;
	struct stat st;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC), found = 0;

	if (fd < 0)
		return 0;
	/* A module is tens of KiB; anything much larger is not ours. */
	if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size > (16 << 20) ||
	    !(buf = malloc((size_t)st.st_size))) {
		close(fd);
		return 0;
	}
	n = read(fd, buf, (size_t)st.st_size);
	close(fd);
	if (n > 0)
		found = memmem(buf, (size_t)n, mark, sizeof(mark) - 1) != NULL;
	free(buf);
	return found;
}

char *shmdev_ucx_tls(const struct shmdev *d, const char *entry)
{
	const char *list;
	char *out;

	if (!d || !d->present || !d->ucx || strncmp(entry, "UCX_TLS=", 8) != 0)
		return NULL;
	list = entry + 8;
	if (!*list || *list == '^' || strstr(list, "ivshmem") || strcmp(list, "all") == 0)
		return NULL;
	if (asprintf(&out, "UCX_TLS=ivshmem,%s", list) < 0)
		return NULL;
	return out;
}

void shmdev_give(const struct shmdev *d, uid_t uid, gid_t gid)
{
	if (!d || !d->present || uid == 0)
		return;
	/* One job, one user: the user of the latest command holds the BAR. */
	if (chown(d->resource, uid, gid) == 0)
		chmod(d->resource, 0600);
}

void shmdev_reap(const struct shmdev *d)
{
	if (d && d->present && d->base)
		shm_region_reap(d->base, d->size_bytes, d->node);
}
