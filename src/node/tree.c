#include "node/tree.h"

#include <errno.h>
#include <string.h>

/* Every shape, the default first. */
static const struct node_tree_ops *const shapes[] = {&node_tree_chain, &node_tree_binomial};

int node_tree_parent(size_t rank, size_t n)
{
	size_t bit = 1;

	if (rank >= n)
		return -EINVAL;
	if (rank == 0)
		return NODE_TREE_REGISTRY;
	while (bit <= rank / 2)
		bit <<= 1;
	return (int)(rank & ~bit);
}

int node_tree_children(size_t rank, size_t n, size_t *ret, size_t max)
{
	size_t bit = 1, count = 0, k;
	size_t tmp[64];

	if (rank >= n)
		return -EINVAL;
	while (bit <= rank)
		bit <<= 1;
	/* bit is now the smallest power of two above rank; children are rank + bit, rank +
	 * 2*bit, ...; the last one added roots the largest subtree, so reverse. */
	for (k = 0; bit < n && rank + bit < n && k < 64; bit <<= 1)
		tmp[k++] = rank + bit;
	for (size_t i = 0; i < k; i++) {
		if (count < max)
			ret[count] = tmp[k - 1 - i];
		count++;
	}
	return (int)count;
}

const struct node_tree_ops node_tree_binomial = {
    .name = "binomial",
    .parent = node_tree_parent,
};

const struct node_tree_ops *node_tree_find(const char *name)
{
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
		if (name && strcmp(shapes[i]->name, name) == 0)
			return shapes[i];
	return NULL;
}

const struct node_tree_ops *node_tree_default(void)
{
	return shapes[0];
}

int node_tree_live_parent(const struct node_tree_ops *ops, size_t rank, size_t n, const bool *dead)
{
	int p;

	if (rank >= n)
		return -EINVAL;
	p = ops->parent(rank, n);
	/* Parents have lower ranks, so this ends. */
	while (p >= 0 && dead[p])
		p = ops->parent((size_t)p, n);
	return p;
}
