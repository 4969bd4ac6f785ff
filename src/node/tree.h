/* The distribution tree over a job's nodes: a binomial tree on their ranks (the order of the
 * expanded hostlist), rank 0 at the root, which pulls from the registry. Rank r's parent is
 * r with its highest set bit cleared; its children are r + 2^k for every 2^k > r. Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define NODE_TREE_REGISTRY (-1) /* "parent" of the root: the registry */

/* The parent of rank in a tree of n nodes; NODE_TREE_REGISTRY for rank 0. -EINVAL when rank
 * is out of range. */
int node_tree_parent(size_t rank, size_t n);
/* The children of rank, largest subtree first, into ret (room for max); returns how many
 * there are (may exceed max: only max are written) or -EINVAL. */
int node_tree_children(size_t rank, size_t n, size_t *ret, size_t max);
/* Re-parenting: the nearest ancestor of rank that is not dead[] (dead has n entries);
 * NODE_TREE_REGISTRY when every ancestor is dead, so the node pulls from the registry
 * itself. A dead node's subtree thus hangs from the dead node's nearest live ancestor. */
int node_tree_live_parent(size_t rank, size_t n, const bool *dead);
