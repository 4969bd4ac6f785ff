/* The node daemon's pure parts: hostlists, the binomial tree and its re-parenting, the
 * cache's eviction policy, and the frame header (with a fuzz loop). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "node/client.h"
#include "node/hostlist.h"
#include "node/meta.h"
#include "store/delta.h"
#include "node/allowlist.h"
#include "node/pace.h"
#include "node/policy.h"
#include "node/proto.h"
#include "node/tree.h"
#include "util/cleanup.h"

static void expect_hosts(const char *text, const char *joined)
{
	char **hosts = NULL, *error = NULL, buf[4096] = "";
	size_t n = 0;

	assert_int_equal(hostlist_expand(text, &hosts, &n, &error), 0);
	assert_null(error);
	for (size_t i = 0; i < n; i++) {
		if (i)
			strcat(buf, " ");
		strcat(buf, hosts[i]);
	}
	assert_string_equal(buf, joined);
	hostlist_free(hosts, n);
}

static void expect_bad(const char *text, const char *needle)
{
	char **hosts = NULL, *error = NULL;
	size_t n = 0;

	assert_true(hostlist_expand(text, &hosts, &n, &error) < 0);
	assert_non_null(error);
	if (!strstr(error, needle))
		fail_msg("%s: %s", text, error);
	free(error);
}

static void test_hostlist(void **state)
{
	expect_hosts("n1", "n1");
	expect_hosts("n[1-4]", "n1 n2 n3 n4");
	expect_hosts("n[1-2,7],login", "n1 n2 n7 login");
	expect_hosts("m[01-03]", "m01 m02 m03");
	expect_hosts("m[08-11]", "m08 m09 m10 m11");
	expect_hosts("rack[1-2]-a,x", "rack1-a rack2-a x");
	expect_hosts("a,b[3],c", "a b3 c");
	expect_bad("", "empty");
	expect_bad("n[1-4", "without");
	expect_bad("n1-4]", "brackets do not match");
	expect_bad("n[4-1]", "backwards");
	expect_bad("n[a-b]", "decimal");
	expect_bad("n[1-2][3]", "one bracket");
	expect_bad("n1,,n2", "empty name");
	expect_bad("n1,", "ends with a comma");
	expect_bad("n1,n1", "twice");
	expect_bad("n[1-99999]", "more than");
	expect_bad("n/1", "not allowed");
	expect_bad("n[1,]", "empty range");
}

static void test_tree(void **state)
{
	size_t ch[16];
	bool dead[16] = {false};

	assert_int_equal(node_tree_parent(0, 8), NODE_TREE_REGISTRY);
	assert_int_equal(node_tree_parent(1, 8), 0);
	assert_int_equal(node_tree_parent(2, 8), 0);
	assert_int_equal(node_tree_parent(3, 8), 1);
	assert_int_equal(node_tree_parent(4, 8), 0);
	assert_int_equal(node_tree_parent(5, 8), 1);
	assert_int_equal(node_tree_parent(6, 8), 2);
	assert_int_equal(node_tree_parent(7, 8), 3);
	assert_int_equal(node_tree_parent(8, 8), -EINVAL);
	assert_int_equal(node_tree_children(0, 8, ch, 16), 3);
	assert_int_equal(ch[0], 4);
	assert_int_equal(ch[1], 2);
	assert_int_equal(ch[2], 1);
	assert_int_equal(node_tree_children(1, 8, ch, 16), 2);
	assert_int_equal(ch[0], 5);
	assert_int_equal(ch[1], 3);
	assert_int_equal(node_tree_children(3, 8, ch, 16), 1);
	assert_int_equal(ch[0], 7);
	assert_int_equal(node_tree_children(7, 8, ch, 16), 0);
	assert_int_equal(node_tree_children(0, 1, ch, 16), 0);
	assert_int_equal(node_tree_children(2, 5, ch, 16), 0);
	assert_int_equal(node_tree_children(0, 5, ch, 1), 3); /* count beyond max */

	/* Every node but the root has exactly one parent, and parent/children agree. */
	for (size_t n = 1; n <= 16; n++) {
		size_t seen[16] = {0};

		for (size_t r = 0; r < n; r++) {
			int k = node_tree_children(r, n, ch, 16);

			for (int i = 0; i < k; i++) {
				assert_int_equal(node_tree_parent(ch[i], n), (int)r);
				seen[ch[i]]++;
			}
		}
		for (size_t r = 1; r < n; r++)
			assert_int_equal(seen[r], 1);
	}
	/* Re-parenting: 3's parent 1 dies: 3 hangs from 0; 7 keeps 3. */
	dead[1] = true;
	assert_int_equal(node_tree_live_parent(&node_tree_binomial, 3, 8, dead), 0);
	assert_int_equal(node_tree_live_parent(&node_tree_binomial, 7, 8, dead), 3);
	dead[3] = true;
	assert_int_equal(node_tree_live_parent(&node_tree_binomial, 7, 8, dead), 0);
	dead[0] = true;
	assert_int_equal(node_tree_live_parent(&node_tree_binomial, 7, 8, dead),
			 NODE_TREE_REGISTRY);
	assert_int_equal(node_tree_live_parent(&node_tree_binomial, 6, 8, dead), 2);
}

/* The chain, the shapes' table, and re-parenting through the ops. */
static void test_chain(void **state)
{
	const struct node_tree_ops *chain = node_tree_find("chain");
	bool dead[16] = {false};

	(void)state;
	assert_non_null(chain);
	assert_ptr_equal(chain, &node_tree_chain);
	assert_ptr_equal(node_tree_default(), &node_tree_chain);
	assert_ptr_equal(node_tree_find("binomial"), &node_tree_binomial);
	assert_null(node_tree_find("central")); /* not a shape: no tree at all */
	assert_null(node_tree_find("Chain"));
	assert_null(node_tree_find(""));
	assert_null(node_tree_find(NULL));
	assert_int_equal(chain->parent(0, 8), NODE_TREE_REGISTRY);
	assert_int_equal(chain->parent(0, 1), NODE_TREE_REGISTRY);
	assert_int_equal(chain->parent(8, 8), -EINVAL);
	assert_int_equal(node_tree_binomial.parent(8, 8), -EINVAL);
	/* Every shape: each rank's parent is lower (no cycles); out-degree 1 in the chain,
	 * so every uplink carries one copy. */
	for (size_t n = 1; n <= 16; n++) {
		size_t children[16] = {0};

		for (size_t r = 1; r < n; r++) {
			int p = chain->parent(r, n);
			int q = node_tree_binomial.parent(r, n);

			assert_int_equal(p, (int)r - 1);
			assert_true(q >= 0 && q < (int)r);
			children[p]++;
		}
		for (size_t r = 0; r < n; r++)
			assert_true(children[r] <= 1);
	}
	/* Re-parenting to the nearest live predecessor. */
	dead[3] = true;
	assert_int_equal(node_tree_live_parent(chain, 4, 8, dead), 2);
	assert_int_equal(node_tree_live_parent(chain, 5, 8, dead), 4);
	dead[2] = true;
	assert_int_equal(node_tree_live_parent(chain, 4, 8, dead), 1);
	dead[0] = dead[1] = true;
	assert_int_equal(node_tree_live_parent(chain, 4, 8, dead), NODE_TREE_REGISTRY);
	assert_int_equal(node_tree_live_parent(chain, 0, 8, dead), NODE_TREE_REGISTRY);
	assert_int_equal(node_tree_live_parent(chain, 9, 8, dead), -EINVAL);
}

static void test_policy(void **state)
{
	struct node_policy_image imgs[4] = {
	    {.bytes = 100, .last_used = 5},
	    {.bytes = 200, .last_used = 1, .pinned = true},
	    {.bytes = 300, .last_used = 3},
	    {.bytes = 50, .last_used = 2},
	};
	size_t v[4], n = 9;
	uint64_t pinned = 0;

	/* Fits: nothing evicted. */
	assert_int_equal(node_policy_pick(imgs, 4, 650, 100, 1000, v, &n, &pinned), 0);
	assert_int_equal(n, 0);
	assert_int_equal(pinned, 200);
	/* Needs 100 freed: the LRU unpinned (3, last_used 2) frees 50, then 2 (300). */
	assert_int_equal(node_policy_pick(imgs, 4, 650, 450, 1000, v, &n, NULL), 0);
	assert_int_equal(n, 2);
	assert_int_equal(v[0], 3);
	assert_int_equal(v[1], 2);
	/* The pinned image (1, least recently used) is never chosen, even if that fails. */
	assert_int_equal(node_policy_pick(imgs, 4, 650, 900, 1000, v, &n, &pinned), -ENOSPC);
	assert_int_equal(n, 0);
	/* Everything pinned: cache full. */
	for (int i = 0; i < 4; i++)
		imgs[i].pinned = true;
	assert_int_equal(node_policy_pick(imgs, 4, 650, 400, 1000, v, &n, &pinned), -ENOSPC);
	assert_int_equal(pinned, 650);
	/* An image larger than the whole cache. */
	assert_int_equal(node_policy_pick(imgs, 0, 0, 2000, 1000, v, &n, NULL), -ENOSPC);
}

static void test_proto_header(void **state)
{
	uint8_t h[NODE_PROTO_HEADER_BYTES];
	enum node_msg_type type;
	uint32_t len;

	for (int t = 1; t < _NODE_MSG_TYPE_MAX; t++) {
		assert_non_null(node_msg_type_to_string(t));
		node_proto_header_encode(t, 1234, h);
		assert_int_equal(node_proto_header_decode(h, NODE_PROTO_MAX_PAYLOAD, &type, &len),
				 0);
		assert_int_equal(type, t);
		assert_int_equal(len, 1234);
	}
	assert_null(node_msg_type_to_string(_NODE_MSG_TYPE_MAX));
	node_proto_header_encode(NODE_MSG_CHUNK, 5000, h);
	assert_int_equal(node_proto_header_decode(h, 4096, &type, &len), -EMSGSIZE);
	node_proto_header_encode(NODE_MSG_CHUNK, NODE_PROTO_MAX_PAYLOAD + 1, h);
	assert_int_equal(node_proto_header_decode(h, UINT32_MAX, &type, &len), -EMSGSIZE);
	memcpy(h, "GET /metrics", NODE_PROTO_HEADER_BYTES);
	assert_int_equal(node_proto_header_decode(h, UINT32_MAX, &type, &len), -EBADMSG);
	node_proto_header_encode(NODE_MSG_END, 0, h);
	h[6] = 1; /* flags must be 0 */
	assert_int_equal(node_proto_header_decode(h, UINT32_MAX, &type, &len), -EBADMSG);
}

/* Random headers and random mutations of good ones: the decoder never accepts a type out of
 * range or a length beyond the limit, and never crashes. */
static void test_proto_fuzz(void **state)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (int i = 0; i < 200000; i++) {
		uint8_t h[NODE_PROTO_HEADER_BYTES];
		enum node_msg_type type = 0;
		uint32_t len = 0, max = (i % 3) ? 65536 : NODE_PROTO_MAX_PAYLOAD;
		int r;

		if (i % 2) {
			node_proto_header_encode(
			    (enum node_msg_type)(1 + i % (_NODE_MSG_TYPE_MAX - 1)), (uint32_t)x, h);
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			h[x % NODE_PROTO_HEADER_BYTES] ^= (uint8_t)(x >> 8);
		} else
			for (size_t k = 0; k < sizeof(h); k++) {
				x ^= x << 13, x ^= x >> 7, x ^= x << 17;
				h[k] = (uint8_t)x;
			}
		r = node_proto_header_decode(h, max, &type, &len);
		if (r == 0) {
			assert_true(type >= 1 && type < _NODE_MSG_TYPE_MAX);
			assert_true(len <= max);
		} else
			assert_true(r == -EBADMSG || r == -EMSGSIZE);
	}
}

/* Frames through a socket pair: whole, a truncated one, a silent peer. */
static void test_proto_io(void **state)
{
	int sv[2];
	char *payload = NULL;
	size_t len;
	enum node_msg_type type;
	static char big[300000];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	memset(big, 'x', sizeof(big));
	if (fork() == 0) {
		node_proto_send(sv[1], NODE_MSG_CHUNK, big, sizeof(big), 5000);
		node_proto_send(sv[1], NODE_MSG_END, NULL, 0, 5000);
		_exit(0);
	}
	assert_int_equal(
	    node_proto_recv(sv[0], NODE_PROTO_MAX_PAYLOAD, 5000, &type, &payload, &len), 0);
	assert_int_equal(type, NODE_MSG_CHUNK);
	assert_int_equal(len, sizeof(big));
	assert_memory_equal(payload, big, len);
	free(payload);
	assert_int_equal(node_proto_recv(sv[0], 100, 5000, &type, &payload, &len), 0);
	assert_int_equal(type, NODE_MSG_END);
	assert_int_equal(len, 0);
	free(payload);
	/* Silent: times out. */
	assert_int_equal(node_proto_recv(sv[0], 100, 100, &type, &payload, &len), -ETIMEDOUT);
	/* Truncated frame, then EOF. */
	{
		uint8_t h[NODE_PROTO_HEADER_BYTES];

		node_proto_header_encode(NODE_MSG_CHUNK, 10, h);
		assert_int_equal(write(sv[1], h, sizeof(h)), (ssize_t)sizeof(h));
		assert_int_equal(write(sv[1], "abc", 3), 3);
		close(sv[1]);
		assert_int_equal(node_proto_recv(sv[0], 100, 5000, &type, &payload, &len),
				 -ECONNRESET);
	}
	close(sv[0]);
}

static char payload_src[700000];

/* The payload size of frame i in test_proto_reader: up to 40000 bytes, and one frame
 * larger than the reader's buffer. */
static size_t frame_size(uint32_t i)
{
	return (i * 7919u) % 40000 + (i == 1000 ? sizeof(payload_src) - 40000 : 0);
}

/* Many frames, some sent in parts with sendv, read back through a reader: every frame
 * whole and in order whatever the reads cut (small frames share a read, a large one spans
 * several); then a silent peer and a truncated frame, as node_proto_recv. */
static void test_proto_reader(void **state)
{
	int sv[2];
	char *payload = NULL;
	size_t len;
	enum node_msg_type type;
	struct node_proto_reader *rd;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	for (size_t i = 0; i < sizeof(payload_src); i++)
		payload_src[i] = (char)(i * 7);
	if (fork() == 0) {
		for (uint32_t i = 0; i < 2000; i++) {
			size_t n = frame_size(i);
			struct iovec iov[2] = {{.iov_base = &i, .iov_len = 4},
					       {.iov_base = payload_src, .iov_len = n}};

			if (i % 3)
				node_proto_sendv(sv[1], NODE_MSG_CHUNK, iov, 2, 5000);
			else {
				char *f = malloc(n + 4);

				memcpy(f, &i, 4);
				memcpy(f + 4, payload_src, n);
				node_proto_send(sv[1], NODE_MSG_CHUNK, f, n + 4, 5000);
				free(f);
			}
		}
		node_proto_send(sv[1], NODE_MSG_END, NULL, 0, 5000);
		_exit(0);
	}
	rd = node_proto_reader_new(sv[0]);
	assert_non_null(rd);
	for (uint32_t i = 0; i < 2000; i++) {
		size_t n = frame_size(i);
		uint32_t got;

		assert_int_equal(
		    node_proto_reader_recv(rd, NODE_PROTO_MAX_PAYLOAD, 5000, &type, &payload, &len),
		    0);
		assert_int_equal(type, NODE_MSG_CHUNK);
		assert_int_equal(len, n + 4);
		memcpy(&got, payload, 4);
		assert_int_equal(got, i);
		assert_memory_equal(payload + 4, payload_src, n);
		free(payload);
	}
	assert_int_equal(node_proto_reader_recv(rd, 100, 5000, &type, &payload, &len), 0);
	assert_int_equal(type, NODE_MSG_END);
	free(payload);
	assert_int_equal(node_proto_reader_recv(rd, 100, 100, &type, &payload, &len), -ETIMEDOUT);
	{
		uint8_t h[NODE_PROTO_HEADER_BYTES];

		node_proto_header_encode(NODE_MSG_CHUNK, 10, h);
		assert_int_equal(write(sv[1], h, sizeof(h)), (ssize_t)sizeof(h));
		assert_int_equal(write(sv[1], "abc", 3), 3);
		close(sv[1]);
		assert_int_equal(node_proto_reader_recv(rd, 100, 5000, &type, &payload, &len),
				 -ECONNRESET);
	}
	node_proto_reader_free(rd);
	close(sv[0]);
}

static void test_allowlist(void **state)
{
	static const char *const site[] = {"registry.site:5000", "Mirror.Site", NULL};
	static const char *const none[] = {NULL};
	char *error = NULL;

	(void)state;
	assert_int_equal(node_allowlist_check(site, "registry.site:5000/a/b:1", &error), 0);
	assert_int_equal(node_allowlist_check(site,
					      "mirror.site/a@sha256:"
					      "0123456789abcdef0123456789abcdef"
					      "0123456789abcdef0123456789abcdef",
					      &error),
			 0);
	/* The same host on another port, or without the port, is another registry. */
	assert_int_equal(node_allowlist_check(site, "registry.site/a/b:1", &error), -EPERM);
	assert_non_null(strstr(error, "registry registry.site is not one this node pulls from"));
	assert_non_null(strstr(error, "registry.site:5000, Mirror.Site"));
	free(error);
	error = NULL;
	assert_int_equal(node_allowlist_check(site, "registry.site:5001/a:1", &error), -EPERM);
	free(error);
	error = NULL;
	assert_int_equal(node_allowlist_check(site, "evil.example/registry.site/a:1", &error),
			 -EPERM);
	free(error);
	error = NULL;
	assert_int_equal(node_allowlist_check(site, "no-registry", &error), -EINVAL);
	assert_non_null(error);
	free(error);
	error = NULL;
	/* No list: every registry. */
	assert_int_equal(node_allowlist_check(NULL, "any.where:1/a:1", &error), 0);
	assert_int_equal(node_allowlist_check(none, "any.where:1/a:1", &error), 0);
	assert_null(error);
}

static void test_pace(void **state)
{
	struct node_pace p;
	int64_t t = 100500; /* mid-second: the first second counted began before the start */

	(void)state;
	node_pace_start(&p, t);
	/* 2 MB/s for 6 s, in 100 ms steps. */
	for (int i = 0; i < 60; i++, t += 100) {
		node_pace_add(&p, t, 200000);
		/* Not before 5 s (window 4 + 1): a start is not a pace. */
		if (t - 100500 < 5000)
			assert_false(node_pace_below(&p, t, 4, 1000000000));
	}
	assert_false(node_pace_below(&p, t, 4, 1000000));
	assert_true(node_pace_below(&p, t, 4, 3000000));
	/* Then a trickle: 50 kB/s for 5 s. */
	for (int i = 0; i < 50; i++, t += 100)
		node_pace_add(&p, t, 5000);
	assert_true(node_pace_below(&p, t, 4, 1000000));
	assert_false(node_pace_below(&p, t, 4, 40000));
	/* Silence: nothing arrived for 20 s, longer than the slots remember. */
	t += 20000;
	assert_true(node_pace_below(&p, t, 4, 1));
	/* Out-of-range windows say nothing. */
	assert_false(node_pace_below(&p, t, 0, 1));
	assert_false(node_pace_below(&p, t, NODE_PACE_SLOTS, 1));
}

/* A daemon's own failures begin with its name; callers that name the node drop it. */
static void test_error_past_name(void **state)
{
	(void)state;
	assert_string_equal(node_error_past_name("n1", "node n1: registry R is not one"),
			    "registry R is not one");
	/* Another node's name, a longer name sharing the prefix, or no ": " stay whole. */
	assert_string_equal(node_error_past_name("n1", "node n2: gone"), "node n2: gone");
	assert_string_equal(node_error_past_name("n1", "node n12: gone"), "node n12: gone");
	assert_string_equal(node_error_past_name("n1", "node n1 gone"), "node n1 gone");
	assert_string_equal(node_error_past_name("n1", "timed out"), "timed out");
}

/* A manifest-like text of n entries with random hex ids, seeded; one with change set
 * differs in every 50th entry and has extra more. */
static char *fake_manifest(size_t n, uint64_t seed, bool change, size_t extra)
{
	size_t cap = (n + extra) * 100 + 64, len = 0;
	char *t = malloc(cap);
	uint64_t x = 0x2545f4914f6cdd1dull;

	len += (size_t)sprintf(t + len, "{\n \"parts\": [\n");
	for (size_t i = 0; i < n + extra; i++) {
		uint64_t a, b;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		a = x;
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		b = x;
		if (i >= n || (change && i % 50 == 0))
			a ^= seed, b ^= seed * 3;
		len += (size_t)sprintf(t + len, "  [\"%016llx%016llx%016llx%016llx\", %zu],\n",
				       (unsigned long long)a, (unsigned long long)b,
				       (unsigned long long)(a * 7), (unsigned long long)(b * 5),
				       (size_t)(a % 65536));
	}
	sprintf(t + len, " ]\n}\n");
	return t;
}

/* META documents and payloads: round trips with and without a base, a difference that is a
 * fraction of the whole, and every way a payload can be wrong. */
static void test_meta(void **state)
{
	uint64_t sizes[3] = {70770, 0, 123}, *got = NULL;
	_cleanup_free_ char *old = fake_manifest(1000, 11, false, 0);
	_cleanup_free_ char *new = fake_manifest(1000, 11, true, 10);
	char *doc = NULL, *payload = NULL, *out = NULL, *alone = NULL;
	size_t doc_len, len, out_len, alone_len, mlen, n;
	uint8_t id[STORE_ID_BYTES];

	(void)state;
	assert_int_equal(node_meta_join(new, strlen(new), sizes, 3, &doc, &doc_len), 0);
	assert_int_equal(node_meta_split(doc, doc_len, &mlen, &got, &n), 0);
	assert_int_equal(mlen, strlen(new));
	assert_int_equal(n, 3);
	assert_memory_equal(got, sizes, sizeof(sizes));
	free(got);
	assert_int_equal(node_meta_split(new, strlen(new), &mlen, &got, &n), -EBADMSG);

	/* Alone and against the old version: both decode to the document. */
	assert_int_equal(delta_encode(doc, doc_len, NULL, 0, &alone, &alone_len), 0);
	assert_int_equal(delta_base(alone, alone_len, id), 0);
	assert_int_equal(delta_decode(alone, alone_len, NULL, 0, &out, &out_len), 0);
	assert_int_equal(out_len, doc_len);
	assert_memory_equal(out, doc, doc_len);
	free(out);
	assert_int_equal(delta_encode(doc, doc_len, old, strlen(old), &payload, &len), 0);
	assert_int_equal(delta_base(payload, len, id), 1);
	assert_int_equal(delta_decode(payload, len, old, strlen(old), &out, &out_len), 0);
	assert_memory_equal(out, doc, doc_len);
	free(out);
	/* ~1/50 of the entries changed: the difference is a small part of the whole. */
	print_message("META: document %zu bytes, alone %zu, against the old version %zu\n", doc_len,
		      alone_len, len);
	assert_true(len * 5 < alone_len);
	assert_true(alone_len < doc_len);

	/* A base is needed and missing, or not the one named; none is named and one given. */
	assert_int_equal(delta_decode(payload, len, NULL, 0, &out, &out_len), -EINVAL);
	assert_int_equal(delta_decode(payload, len, new, strlen(new), &out, &out_len), -EINVAL);
	assert_int_equal(delta_decode(alone, alone_len, old, strlen(old), &out, &out_len), -EINVAL);
	/* Short, truncated, a flipped byte in the frame or in the document's id, a length that
	 * lies: never a document. */
	assert_int_equal(delta_base(payload, DELTA_HEADER_BYTES - 1, id), -EBADMSG);
	assert_int_equal(delta_decode(alone, alone_len - 1, NULL, 0, &out, &out_len), -EBADMSG);
	for (size_t k = STORE_ID_BYTES; k < alone_len; k += 97) {
		alone[k] ^= 0x20;
		assert_int_not_equal(delta_decode(alone, alone_len, NULL, 0, &out, &out_len), 0);
		alone[k] ^= 0x20;
	}
	alone[2 * STORE_ID_BYTES + 7] = 0x7f;
	assert_int_equal(delta_decode(alone, alone_len, NULL, 0, &out, &out_len), -EBADMSG);
	free(alone);
	free(payload);
	free(doc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hostlist),	    cmocka_unit_test(test_tree),
	    cmocka_unit_test(test_chain),	    cmocka_unit_test(test_policy),
	    cmocka_unit_test(test_proto_header),    cmocka_unit_test(test_proto_fuzz),
	    cmocka_unit_test(test_proto_io),	    cmocka_unit_test(test_proto_reader),
	    cmocka_unit_test(test_allowlist),	    cmocka_unit_test(test_pace),
	    cmocka_unit_test(test_error_past_name), cmocka_unit_test(test_meta),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
