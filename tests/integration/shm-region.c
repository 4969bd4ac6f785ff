/* Makes a formatted shared-memory region for host tests of the UCX transport
 * (ucx-host.sh): shm-region PATH NODES KEY_HEX, sized as `vmhpc run --shm` sizes it
 * (rings of 2 MiB, a heap of at least 3 MiB per node). Prints the size. */
#include "shm/shm.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	char *error = NULL;
	unsigned nodes;
	size_t size;

	if (argc != 4) {
		fprintf(stderr, "usage: shm-region PATH NODES KEY_HEX\n");
		return 2;
	}
	nodes = (unsigned)strtoul(argv[2], NULL, 10);
	size = shm_region_size_for(nodes, 2u << 20);
	while (size && shm_region_heap_bytes_for(size, nodes) < (size_t)nodes * (3u << 20))
		size <<= 1;
	if (shm_region_create(argv[1], size, nodes, strtoull(argv[3], NULL, 16), &error) < 0) {
		fprintf(stderr, "shm-region: %s\n", error);
		free(error);
		return 1;
	}
	printf("%zu\n", size);
	return 0;
}
