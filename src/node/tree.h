/* The distribution shape over a job's nodes: which node each node fetches from. Ranks are
 * positions in the expanded hostlist; rank 0 pulls from the registry. A shape is one file
 * behind a struct node_tree_ops (tree.c: the binomial tree; chain.c: the pipelined chain,
 * the default); every node computes the same shape from the same list, so nothing
 * coordinates. docs/node.md says which one when and why. Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define NODE_TREE_REGISTRY (-1) /* "parent" of the root: the registry */

struct node_tree_ops {
	const char *name; /* as given to `vmhpc node fetch --scheme` and in requests */
	/* The parent of rank among n nodes; NODE_TREE_REGISTRY for rank 0; -EINVAL when rank
	 * is out of range. Every rank but 0 has a parent of lower rank (so no cycles). */
	int (*parent)(size_t rank, size_t n);
};

extern const struct node_tree_ops node_tree_binomial; /* tree.c */
extern const struct node_tree_ops node_tree_chain;    /* chain.c */

/* The shape called name ("chain", "binomial"); NULL when there is none. */
const struct node_tree_ops *node_tree_find(const char *name);
/* The shape used when a request names none: the chain (docs/node.md). */
const struct node_tree_ops *node_tree_default(void);
/* Re-parenting: the nearest ancestor of rank in ops' shape that is not dead[] (dead has n
 * entries); NODE_TREE_REGISTRY when every ancestor is dead, so the node pulls from the
 * registry itself. A dead node's subtree thus hangs from the dead node's nearest live
 * ancestor; -EINVAL when rank is out of range. */
int node_tree_live_parent(const struct node_tree_ops *ops, size_t rank, size_t n, const bool *dead);

/* The binomial tree itself: rank r's parent is r with its highest set bit cleared; its
 * children are r + 2^k for every 2^k > r. */
int node_tree_parent(size_t rank, size_t n);
/* The binomial children of rank, largest subtree first, into ret (room for max); returns
 * how many there are (may exceed max: only max are written) or -EINVAL. */
int node_tree_children(size_t rank, size_t n, size_t *ret, size_t max);
