/* A UCT transport for UCX 1.13 over the job's shared-memory region (docs/bypass.md): an
 * "mm" mapper, as UCX's own posix and sysv transports are, whose memory is the region's
 * heap instead of shm_open or shmget segments. UCX's mm base (its FIFOs, active messages,
 * flow control, exported by Debian's libuct.so.0) runs unchanged in that memory, so two
 * processes in two VMs that map the same ivshmem BAR talk without a syscall on the path.
 *
 * Built out of UCX's tree against the headers of Debian's source package (the mm base's
 * headers are not in libucx-dev) by scripts/build-uct-ivshmem.sh, and loaded by Debian's
 * UCX under a module name its build fixed (libuct_cma.so.0). When VMHPC_SHM is not set, or
 * names a region that is not this job's, the transport lists no resource and UCX uses its
 * other transports (TCP between VMs).
 *
 * Differences from posix/sysv, and why:
 *  - a segment's id is its offset in the region: attaching a peer's segment is pointer
 *    arithmetic in our own mapping of the same BAR, no syscall;
 *  - the mapper's part of the interface address is the region's key, so only processes of
 *    the same job's region are reachable (the mm base's own test, the same "system id",
 *    fails between two VMs: each has its own boot id);
 *  - the FIFO's owner pid is 1: the mm endpoint checks that the owner process is alive
 *    through /proc of its own OS (ucs_sys_get_proc_create_time), which knows nothing of a
 *    pid in another VM, and would refuse to connect; pid 1 exists in every VM and never
 *    changes start time. A peer's death is detected by the launcher (hydra ends the job). */
#include <uct/sm/mm/base/mm_iface.h>
#include <uct/sm/mm/base/mm_md.h>
#include <ucs/debug/log.h>
#include <ucs/debug/memtrack_int.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/shm.h"

/* The region, mapped once per process at the first query. */
static struct {
	pthread_once_t once;
	ucs_status_t status;
	uint8_t *base;
	size_t size_bytes;
	uint64_t key;
	unsigned node; /* $VMHPC_SHM_NODE: whose blocks of the heap ours are */
	uint64_t heap_offset, heap_bytes;
} region = {.once = PTHREAD_ONCE_INIT, .status = UCS_ERR_UNSUPPORTED};

typedef struct {
	uint64_t offset;    /* the segment's offset in the region */
	uintptr_t owner_va; /* its address in the owner's mapping */
} UCS_S_PACKED uct_ivshmem_packed_rkey_t;

typedef struct {
	uint64_t key; /* the region's: reachable means "maps the same region" */
} UCS_S_PACKED uct_ivshmem_iface_addr_t;

typedef struct uct_ivshmem_md_config {
	uct_mm_md_config_t super;
} uct_ivshmem_md_config_t;

static ucs_config_field_t uct_ivshmem_md_config_table[] = {
    {"MM_", "", NULL, ucs_offsetof(uct_ivshmem_md_config_t, super),
     UCS_CONFIG_TYPE_TABLE(uct_mm_md_config_table)},
    {NULL}};

/* Receive buffers grow 64 at a time (~0.5 MiB), not UCX's 512 (~4 MiB): they come out of
 * a heap of a few MiB per VM. */
static ucs_config_field_t uct_ivshmem_iface_config_table[] = {
    {"MM_", "RX_BUFS_GROW=64", NULL, 0, UCS_CONFIG_TYPE_TABLE(uct_mm_iface_config_table)}, {NULL}};

/* This VM's node: vmhpc.shm_node= on the kernel command line, which only this VM's own
 * runtime wrote. Not $VMHPC_SHM_NODE first: hydra passes the launcher's environment, that
 * of the first VM, to every rank. The environment serves host processes (tests). */
static unsigned node_of_this_vm(void)
{
	char line[4096], *p;
	const char *env = getenv(SHM_ENV_NODE);
	FILE *f = fopen("/proc/cmdline", "re");
	size_t n = 0;

	if (f) {
		n = fread(line, 1, sizeof(line) - 1, f);
		fclose(f);
	}
	line[n] = '\0';
	p = strstr(line, "vmhpc.shm_node=");
	if (p)
		return (unsigned)strtoul(p + strlen("vmhpc.shm_node="), NULL, 10);
	return env ? (unsigned)strtoul(env, NULL, 10) : 0;
}

/* This VM's key: the file vmhpc-init wrote (SHM_KEY_FILE), not $VMHPC_SHM_KEY first, for
 * the reason node_of_this_vm gives: under hydra every rank has the launching VM's
 * environment, and in a job across nodes each node's region has a key of its own
 * (shm_group_key). The environment serves host processes (tests). NULL when neither. */
static const char *key_of_this_vm(char *buf, size_t size)
{
	FILE *f = fopen(SHM_KEY_FILE, "re");

	if (f) {
		bool ok = fgets(buf, (int)size, f) != NULL;

		fclose(f);
		if (ok) {
			buf[strcspn(buf, "\n")] = '\0';
			if (*buf)
				return buf;
		}
	}
	return getenv(SHM_ENV_KEY);
}

static void region_map(void)
{
	char key_buf[64];
	const char *path = getenv(SHM_ENV_PATH), *key = key_of_this_vm(key_buf, sizeof(key_buf));
	char *error = NULL, *end = NULL;
	struct stat st;
	void *base;
	int fd;

	if (!path || !*path || !key || !*key)
		return; /* no channel in this VM: UCX uses its other transports */
	region.key = strtoull(key, &end, 16);
	if (!end || *end) {
		ucs_warn("vmhpc ivshmem: %s=%s is not a hexadecimal key; MPI between VMs uses "
			 "TCP",
			 SHM_ENV_KEY, key);
		return;
	}
	region.node = node_of_this_vm();
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ucs_warn("vmhpc ivshmem: cannot open the shared-memory region %s (%m); MPI "
			 "between VMs uses TCP",
			 path);
		if (fd >= 0)
			close(fd);
		return;
	}
	base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (base == MAP_FAILED) {
		ucs_warn("vmhpc ivshmem: cannot map the shared-memory region %s (%m); MPI between "
			 "VMs uses TCP",
			 path);
		return;
	}
	if (shm_region_check(base, (size_t)st.st_size, region.key, &error) < 0 ||
	    shm_region_heap(base, (size_t)st.st_size, &region.heap_offset, &region.heap_bytes) <
		0) {
		ucs_warn("vmhpc ivshmem: %s refused: %s; MPI between VMs uses TCP", path,
			 error ? error : "no heap");
		free(error);
		munmap(base, (size_t)st.st_size);
		return;
	}
	region.base = base;
	region.size_bytes = (size_t)st.st_size;
	region.status = UCS_OK;
}

static ucs_status_t region_get(void)
{
	pthread_once(&region.once, region_map);
	return region.status;
}

static int offset_ok(uint64_t offset, size_t length)
{
	return offset >= region.heap_offset && length <= region.size_bytes &&
	       offset <= region.size_bytes - length;
}

static ucs_status_t uct_ivshmem_md_query(uct_md_h md, uct_md_attr_t *md_attr)
{
	uct_mm_md_query(md, md_attr, region.heap_bytes);
	md_attr->rkey_packed_size = sizeof(uct_ivshmem_packed_rkey_t);
	return UCS_OK;
}

static ucs_status_t uct_ivshmem_mem_alloc(uct_md_h tl_md, size_t *length_p, void **address_p,
					  ucs_memory_type_t mem_type, unsigned flags,
					  const char *alloc_name, uct_mem_h *memh_p)
{
	size_t length = ucs_align_up_pow2(*length_p, SHM_HEAP_BLOCK_BYTES);
	ucs_status_t status;
	uct_mm_seg_t *seg;
	uint64_t offset;
	int r;

	if (mem_type != UCS_MEMORY_TYPE_HOST || (flags & UCT_MD_MEM_FLAG_FIXED) ||
	    region_get() != UCS_OK)
		return UCS_ERR_UNSUPPORTED;
	r = shm_region_alloc(region.base, region.size_bytes, region.node, length, &offset);
	if (r < 0) {
		ucs_diag(
		    "vmhpc ivshmem: no room for %zu bytes (%s) in the region's heap of %" PRIu64
		    " bytes",
		    length, alloc_name, region.heap_bytes);
		return UCS_ERR_NO_MEMORY;
	}
	status = uct_mm_seg_new(region.base + offset, length, &seg);
	if (status != UCS_OK)
		return status;
	seg->seg_id = offset;
	*address_p = seg->address;
	*length_p = length;
	*memh_p = seg;
	return UCS_OK;
}

static ucs_status_t uct_ivshmem_mem_free(uct_md_h tl_md, uct_mem_h memh)
{
	uct_mm_seg_t *seg = memh;

	shm_region_free(region.base, region.size_bytes, region.node, seg->seg_id, seg->length);
	ucs_free(seg);
	return UCS_OK;
}

static ucs_status_t uct_ivshmem_mkey_pack(uct_md_h md, uct_mem_h memh,
					  const uct_md_mkey_pack_params_t *params,
					  void *rkey_buffer)
{
	uct_ivshmem_packed_rkey_t *packed = rkey_buffer;
	const uct_mm_seg_t *seg = memh;

	packed->offset = seg->seg_id;
	packed->owner_va = (uintptr_t)seg->address;
	return UCS_OK;
}

static ucs_status_t uct_ivshmem_query(int *attach_shm_file_p)
{
	*attach_shm_file_p = 0;
	return region_get();
}

static size_t uct_ivshmem_iface_addr_length(uct_mm_md_t *md)
{
	return sizeof(uct_ivshmem_iface_addr_t);
}

static ucs_status_t uct_ivshmem_iface_addr_pack(uct_mm_md_t *md, void *buffer)
{
	((uct_ivshmem_iface_addr_t *)buffer)->key = region.key;
	return UCS_OK;
}

static ucs_status_t uct_ivshmem_mem_attach(uct_mm_md_t *md, uct_mm_seg_id_t seg_id, size_t length,
					   const void *iface_addr, uct_mm_remote_seg_t *rseg)
{
	const uct_ivshmem_iface_addr_t *addr = iface_addr;

	if (region.status != UCS_OK || addr->key != region.key || !offset_ok(seg_id, length)) {
		ucs_error("vmhpc ivshmem: segment at %" PRIu64 " (%zu bytes) of region %016" PRIx64
			  " is not in this job's region",
			  (uint64_t)seg_id, length, addr->key);
		return UCS_ERR_SHMEM_SEGMENT;
	}
	rseg->address = region.base + seg_id;
	rseg->cookie = NULL;
	return UCS_OK;
}

static void uct_ivshmem_mem_detach(uct_mm_md_t *md, const uct_mm_remote_seg_t *rseg) {}

static int uct_ivshmem_is_reachable(uct_mm_md_t *md, uct_mm_seg_id_t seg_id, const void *iface_addr)
{
	const uct_ivshmem_iface_addr_t *addr = iface_addr;

	return region.status == UCS_OK && addr->key == region.key && offset_ok(seg_id, 1);
}

static ucs_status_t uct_ivshmem_rkey_unpack(uct_component_t *component, const void *rkey_buffer,
					    uct_rkey_t *rkey_p, void **handle_p)
{
	const uct_ivshmem_packed_rkey_t *packed = rkey_buffer;

	if (region_get() != UCS_OK || !offset_ok(packed->offset, 1))
		return UCS_ERR_UNREACHABLE;
	*handle_p = NULL;
	uct_mm_md_make_rkey(region.base + packed->offset, packed->owner_va, rkey_p);
	return UCS_OK;
}

static ucs_status_t uct_ivshmem_rkey_release(uct_component_t *component, uct_rkey_t rkey,
					     void *handle)
{
	return UCS_OK;
}

static uct_mm_md_mapper_ops_t uct_ivshmem_md_ops = {
    .super =
	{
	    .close = uct_mm_md_close,
	    .query = uct_ivshmem_md_query,
	    .mem_alloc = uct_ivshmem_mem_alloc,
	    .mem_free = uct_ivshmem_mem_free,
	    .mem_advise = (uct_md_mem_advise_func_t)ucs_empty_function_return_unsupported,
	    .mem_reg = (uct_md_mem_reg_func_t)ucs_empty_function_return_unsupported,
	    .mem_dereg = (uct_md_mem_dereg_func_t)ucs_empty_function_return_unsupported,
	    .mem_query = (uct_md_mem_query_func_t)ucs_empty_function_return_unsupported,
	    .mkey_pack = uct_ivshmem_mkey_pack,
	    .is_sockaddr_accessible =
		(uct_md_is_sockaddr_accessible_func_t)ucs_empty_function_return_zero_int,
	    .detect_memory_type =
		(uct_md_detect_memory_type_func_t)ucs_empty_function_return_unsupported,
	},
    .query = uct_ivshmem_query,
    .iface_addr_length = uct_ivshmem_iface_addr_length,
    .iface_addr_pack = uct_ivshmem_iface_addr_pack,
    .mem_attach = uct_ivshmem_mem_attach,
    .mem_detach = uct_ivshmem_mem_detach,
    .is_reachable = uct_ivshmem_is_reachable,
};

UCT_MM_COMPONENT_DEFINE(ivshmem, &uct_ivshmem_md_ops, uct_ivshmem_rkey_unpack,
			uct_ivshmem_rkey_release, "IVSHMEM_")

/* The mm base's reachability without its "same system id" test (see the top). */
static int uct_ivshmem_iface_is_reachable(const uct_iface_h tl_iface,
					  const uct_device_addr_t *dev_addr,
					  const uct_iface_addr_t *tl_iface_addr)
{
	const uct_mm_iface_addr_t *addr = (const void *)tl_iface_addr;

	return uct_ivshmem_is_reachable(NULL, addr->fifo_seg_id, addr + 1);
}

static ucs_status_t uct_ivshmem_iface_open(uct_md_h md, uct_worker_h worker,
					   const uct_iface_params_t *params,
					   const uct_iface_config_t *config, uct_iface_h *iface_p)
{
	ucs_status_t status;
	uct_mm_iface_t *iface;
	uct_mm_seg_t *seg;

	status = UCS_CLASS_NEW_FUNC_NAME(uct_mm_iface_t)(md, worker, params, config, iface_p);
	if (status != UCS_OK)
		return status;
	iface = ucs_derived_of(*iface_p, uct_mm_iface_t);
	seg = iface->recv_fifo_mem.memh;
	if (iface->recv_fifo_mem.method != UCT_ALLOC_METHOD_MD || seg == NULL) {
		/* The FIFO is not in the region (the heap is used up): peers could not reach it. */
		ucs_diag("vmhpc ivshmem: the receive FIFO is not in the region");
		uct_iface_close(*iface_p);
		return UCS_ERR_NO_MEMORY;
	}
	iface->recv_fifo_ctl->pid = 1;
	(*iface_p)->ops.iface_is_reachable = uct_ivshmem_iface_is_reachable;
	return UCS_OK;
}

/* A device of our own, "region": on the mm base's device ("memory"), UCP's worker drops an
 * interface that another on the same device matches in capabilities and performance
 * (ucp_worker_select_best_ifaces), without asking whether that one reaches the same peers:
 * it would keep posix or sysv, which cannot cross VMs, and close ours. */
static ucs_status_t uct_ivshmem_query_tl_devices(uct_md_h md, uct_tl_device_resource_t **devices_p,
						 unsigned *num_devices_p)
{
	return uct_single_device_resource(md, "region", UCT_DEVICE_TYPE_SHM,
					  UCS_SYS_DEVICE_ID_UNKNOWN, devices_p, num_devices_p);
}

uct_tl_t UCT_TL_NAME(ivshmem) = {
    .name = "ivshmem",
    .query_devices = uct_ivshmem_query_tl_devices,
    .iface_open = uct_ivshmem_iface_open,
    .config =
	{
	    .name = "ivshmem transport",
	    .prefix = "IVSHMEM_",
	    .table = uct_ivshmem_iface_config_table,
	    .size = sizeof(uct_mm_iface_config_t),
	},
};

UCT_SINGLE_TL_INIT(&uct_ivshmem_component.super, ivshmem, ctor, , )
