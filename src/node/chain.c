/* The pipelined chain: rank r fetches from rank r - 1, in hostlist order. Each node's
 * uplink carries one copy of the image (the binomial root's carries log2(N) copies), so N
 * nodes take about one link's time plus N - 1 hops of one chunk each (bench/RESULTS.md).
 * Hostlist order is the order Slurm lists a job's nodes, usually the machine's physical
 * order, so consecutive hops tend to stay under one switch. A dead node's successor
 * re-parents to the nearest live predecessor (node_tree_live_parent). */
#include "node/tree.h"

#include <errno.h>

static int chain_parent(size_t rank, size_t n)
{
	if (rank >= n)
		return -EINVAL;
	return rank == 0 ? NODE_TREE_REGISTRY : (int)(rank - 1);
}

const struct node_tree_ops node_tree_chain = {
    .name = "chain",
    .parent = chain_parent,
};
