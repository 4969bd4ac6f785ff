/* The node daemon. Why threads beside the event loop: the store, the registry client
 * (libcurl easy handles) and MUNGE are blocking APIs, and a relay must wait for chunks
 * from upstream while it writes them downstream. So the main thread runs one poll loop
 * (accepting on the unix socket and the TCP port, signals through a signalfd), and each
 * accepted connection and each image being fetched gets its own thread, which blocks with
 * timeouts. All shared state is under one mutex; one condition variable wakes every waiter
 * when anything changes (a chunk arrived, a fetch ended). Each thread opens its own struct
 * store (a store is single-threaded). */
#include "node/node.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "node/allowlist.h"
#include "node/auth.h"
#include "node/client.h"
#include "node/hostlist.h"
#include "node/meta.h"
#include "store/delta.h"
#include "node/pace.h"
#include "node/policy.h"
#include "node/proto.h"
#include "node/trace.h"
#include "node/tree.h"
#include "registry/artifact.h"
#include "registry/auth.h"
#include "registry/oci.h"
#include "registry/patch.h"
#include "registry/reference.h"
#include "store/catalog.h"
#include "store/manifest.h"
#include "store/transfer.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/sock.h"
#include "util/time.h"

#define MAX_CONNECTIONS 256
#define MAX_SOURCES	64
#define KEEPALIVE_MS	1000
/* A node that cannot say within this time whether it holds an image does not. */
#define HOLDER_QUERY_MS 500
/* A parent that fed less than --peer-min-rate over this many seconds, while the node that
 * would replace it holds at least SLOW_GAP_CHUNKS more of the image than this node, is too
 * slow (docs/node.md): with 64 KiB chunks that is 2 MiB it could have passed on. */
#define PACE_WINDOW_S	 4
#define SLOW_GAP_CHUNKS	 32
#define REQUEST_MAX	 (1u << 20)
#define PRESENT_WAIT_MS	 (24 * 3600 * 1000)
#define MAX_JOBS_PER_IMG 1024
/* What a fetch keeps in memory of the chunks its feeds still have to send (below). */
#define STASH_MAX_BYTES (64u << 20)

/* A chunk's compressed bytes held for the feeds that want it: buf[off, off + len). */
struct stashed {
	char *buf;
	size_t off, len;
};

struct fetch {
	char *ref;
	char **hosts;
	size_t n_hosts;
	const struct node_tree_ops *tree; /* NULL: central, every node pulls from the registry */
	struct manifest *m;
	struct store_chunk_ref *refs; /* distinct chunks, ascending id */
	uint64_t *sizes;	      /* compressed bytes of each */
	bool *have;		      /* verified and stored here */
	size_t n;
	/* Forwarding from memory: a chunk that arrives while a feed wants it (pending > 0)
	 * is kept until every such feed has sent it, so that a relay does not read back from
	 * its store what it has just written (open, stat, read, close: a quarter of a relay's
	 * system calls); beyond STASH_MAX_BYTES, or for a feed that asks later, the store. */
	uint16_t *pending;
	struct stashed *stash;
	uint64_t stash_bytes;
	/* What the children get (docs/node.md "Protocol"): the META document (manifest, NUL,
	 * sizes), and the payload it came in from this node's parent, passed on as it is to a
	 * child that holds the same base. */
	char *doc, *wire;
	size_t doc_len, wire_len;
	bool done, failed;
	char *error;
	char *name;
	uint32_t version;
	uint64_t bytes_received;
	size_t chunks_received;
	char *source;
	int users;
	struct fetch *next;
};

struct cached {
	char *ref, *name;
	uint32_t version;
	uint64_t bytes;
	int64_t last_used;
	char **jobs;
	size_t n_jobs;
	/* The SHA-256 of its manifest's text, once computed: what a feed's META may be a
	 * difference from (base_text_of). */
	uint8_t text_id[STORE_ID_BYTES];
	bool text_id_known;
};

struct counter {
	char name[64];
	uint64_t bytes;
};

/* A Slurm job's phases on this node, as `vmhpc slurm epilog` reports them at release. */
enum job_phase {
	JOB_PHASE_DISTRIBUTION,
	JOB_PHASE_BOOT,
	JOB_PHASE_RUN,
	JOB_PHASE_SHUTDOWN,
	JOB_PHASE_MAX
};
static const char *const job_phase_name[JOB_PHASE_MAX] = {"distribution", "boot", "run",
							  "shutdown"};
static const char *const job_phase_key[JOB_PHASE_MAX] = {"distribution_s", "boot_s", "run_s",
							 "shutdown_s"};

#define TIMINGS_MAX_KB ((json_int_t)1 << 30) /* a TiB */

struct job_timings {
	char job[16];
	double seconds[JOB_PHASE_MAX];
	uint64_t guest_used_kb, host_pss_kb;
};

struct daemon {
	const struct node_options *o;
	char *store_dir, *state_path;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_cond_t ended; /* a fetch ended: what `present` waits for, not every chunk */
	struct fetch *fetches;
	struct cached *images;
	size_t n_images;
	int64_t clock;
	unsigned connections;
	/* metrics */
	uint64_t hits, misses, distributions, errors, evictions, refused;
	struct counter received[MAX_SOURCES], sent[MAX_SOURCES];
	/* Slurm jobs' timings, given with their release (docs/slurm.md): sums over the jobs,
	 * and the last job's own. */
	uint64_t jobs;
	double job_seconds[JOB_PHASE_MAX];
	struct job_timings last_job;
};

static struct daemon D = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void count(struct counter *table, const char *name, uint64_t bytes)
{
	for (size_t i = 0; i < MAX_SOURCES; i++) {
		if (table[i].name[0] == 0)
			snprintf(table[i].name, sizeof(table[i].name), "%s", name);
		if (strcmp(table[i].name, name) == 0) {
			table[i].bytes += bytes;
			return;
		}
	}
}

static void wake(void)
{
	pthread_cond_broadcast(&D.cond);
}

/* Waits on cond for at most ms (lock held). */
static void wait_on_ms(pthread_cond_t *cond, int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(cond, &D.lock, &ts);
}

static void wait_ms(int ms)
{
	wait_on_ms(&D.cond, ms);
}

/* json_dumps of v, which it consumes (json_pack's results were leaked where they were
 * dumped in place). */
static char *dumps_take(json_t *v, size_t flags)
{
	char *text = v ? json_dumps(v, flags) : NULL;

	json_decref(v);
	return text;
}

/* ---- the cache's state on disk (lock held) ---- */

static int state_save(void)
{
	json_t *arr = json_array();
	_cleanup_free_ char *text = NULL;

	for (size_t i = 0; i < D.n_images; i++) {
		struct cached *c = &D.images[i];
		json_t *jobs = json_array();

		for (size_t j = 0; j < c->n_jobs; j++)
			json_array_append_new(jobs, json_string(c->jobs[j]));
		json_array_append_new(
		    arr, json_pack("{s:s, s:s, s:i, s:I, s:I, s:o}", "ref", c->ref, "name", c->name,
				   "version", (int)c->version, "bytes", (json_int_t)c->bytes,
				   "last_used", (json_int_t)c->last_used, "jobs", jobs));
	}
	text = dumps_take(
	    json_pack("{s:i, s:I, s:o}", "format", 1, "clock", (json_int_t)D.clock, "images", arr),
	    JSON_INDENT(1));
	if (!text)
		return -ENOMEM;
	return fs_write_atomic(D.state_path, text, strlen(text), 0600);
}

static void cached_free(struct cached *c)
{
	free(c->ref);
	free(c->name);
	for (size_t j = 0; j < c->n_jobs; j++)
		free(c->jobs[j]);
	free(c->jobs);
}

static struct cached *cached_find(const char *ref)
{
	for (size_t i = 0; i < D.n_images; i++)
		if (strcmp(D.images[i].ref, ref) == 0)
			return &D.images[i];
	return NULL;
}

static int cached_add(const char *ref, const char *name, uint32_t version, uint64_t bytes)
{
	struct cached *n = realloc(D.images, (D.n_images + 1) * sizeof(*n));

	if (!n)
		return -ENOMEM;
	D.images = n;
	n[D.n_images] = (struct cached){.ref = strdup(ref),
					.name = strdup(name),
					.version = version,
					.bytes = bytes,
					.last_used = ++D.clock};
	D.n_images++;
	return 0;
}

static uint64_t manifest_stored_bytes(struct store *s, const struct manifest *m)
{
	struct store_chunk_ref *refs = NULL;
	uint64_t total = 0, b;
	size_t n = 0;

	if (manifest_distinct_chunks(m, &refs, &n) < 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (store_chunk_stored_bytes(s, refs[i].id, &b) == 0)
			total += b;
	free(refs);
	return total;
}

/* Loads state.json and reconciles it with the store's catalog: a version the catalog has
 * but the state lacks (a kill between commit and state save) is adopted as least recently
 * used; a state entry whose version is gone is dropped. */
static int state_load(struct store *s)
{
	_cleanup_free_ char *text = NULL;
	struct catalog_entry *entries = NULL;
	json_t *root = NULL, *img;
	size_t len, n = 0, i;
	int r;

	r = fs_read_file(D.state_path, 64u << 20, &text, &len);
	if (r < 0 && r != -ENOENT)
		return log_error_errno(r, "reading the node state %s: %m", D.state_path);
	if (r == 0) {
		root = json_loadb(text, len, 0, NULL);
		if (!json_is_object(root))
			log_warning("node state %s is damaged; rebuilding it from the cache",
				    D.state_path);
		D.clock = json_integer_value(json_object_get(root, "clock"));
		json_array_foreach(json_object_get(root, "images"), i, img)
		{
			const char *ref = json_string_value(json_object_get(img, "ref"));
			const char *name = json_string_value(json_object_get(img, "name"));
			int version = (int)json_integer_value(json_object_get(img, "version"));
			struct manifest *m = NULL;
			json_t *job;
			size_t j;

			if (!ref || !name || version <= 0 ||
			    catalog_load(s, name, (uint32_t)version, &m, NULL) < 0) {
				log_warning(
				    "node state: dropping %s, its version is not in the cache",
				    ref ? ref : "?");
				continue;
			}
			manifest_free(m);
			if (cached_add(
				ref, name, (uint32_t)version,
				(uint64_t)json_integer_value(json_object_get(img, "bytes"))) < 0)
				return log_error_errno(-ENOMEM, "loading the node state: %m");
			D.images[D.n_images - 1].last_used =
			    json_integer_value(json_object_get(img, "last_used"));
			json_array_foreach(json_object_get(img, "jobs"), j, job)
			{
				struct cached *c = &D.images[D.n_images - 1];
				char **nj = realloc(c->jobs, (c->n_jobs + 1) * sizeof(*nj));

				if (!nj || !json_is_string(job))
					continue;
				c->jobs = nj;
				c->jobs[c->n_jobs++] = strdup(json_string_value(job));
			}
		}
		json_decref(root);
	}
	r = catalog_list(s, &entries, &n);
	if (r < 0)
		return log_error_errno(r, "listing the cache %s: %m", D.store_dir);
	for (i = 0; i < n; i++) {
		bool known = false;
		char ref[128];

		for (size_t k = 0; k < D.n_images; k++)
			if (strcmp(D.images[k].name, entries[i].name) == 0 &&
			    D.images[k].version == entries[i].version)
				known = true;
		if (known)
			continue;
		snprintf(ref, sizeof(ref), "local:%s:%u", entries[i].name, entries[i].version);
		if (cached_add(ref, entries[i].name, entries[i].version, 0) == 0)
			D.images[D.n_images - 1].last_used = 0;
	}
	catalog_entries_free(entries, n);
	return state_save();
}

/* ---- eviction (lock held) ---- */

static int cmp_id(const void *a, const void *b)
{
	return memcmp(a, b, STORE_ID_BYTES);
}

struct idset {
	uint8_t (*ids)[STORE_ID_BYTES];
	size_t n;
};

static int idset_add_manifest(struct idset *set, const struct store_chunk_ref *refs, size_t n)
{
	uint8_t(*ni)[STORE_ID_BYTES] = realloc(set->ids, (set->n + n + 1) * STORE_ID_BYTES);

	if (!ni)
		return -ENOMEM;
	set->ids = ni;
	for (size_t i = 0; i < n; i++)
		memcpy(set->ids[set->n++], refs[i].id, STORE_ID_BYTES);
	return 0;
}

static bool idset_has(const struct idset *set, const uint8_t id[STORE_ID_BYTES])
{
	return set->n && bsearch(id, set->ids, set->n, STORE_ID_BYTES, cmp_id);
}

static int chunks_of(struct store *s, const struct cached *c, struct store_chunk_ref **ret,
		     size_t *ret_n)
{
	struct manifest *m = NULL;
	int r = catalog_load(s, c->name, c->version, &m, NULL);

	if (r < 0)
		return r;
	r = manifest_distinct_chunks(m, ret, ret_n);
	manifest_free(m);
	return r;
}

/* The chunks of every cached image but skip, and of every fetch in flight. */
static int protected_set(struct store *s, size_t skip, struct idset *ret)
{
	struct idset set = {0};

	for (size_t i = 0; i < D.n_images; i++) {
		struct store_chunk_ref *refs = NULL;
		size_t n = 0;

		if (i == skip || chunks_of(s, &D.images[i], &refs, &n) < 0)
			continue;
		idset_add_manifest(&set, refs, n);
		free(refs);
	}
	for (struct fetch *f = D.fetches; f; f = f->next)
		if (f->refs)
			idset_add_manifest(&set, f->refs, f->n);
	if (set.n)
		qsort(set.ids, set.n, STORE_ID_BYTES, cmp_id);
	*ret = set;
	return 0;
}

static uint64_t store_bytes(struct store *s);

struct sum_ctx {
	struct store *s;
	uint64_t total;
};

static int sum_one(const uint8_t id[STORE_ID_BYTES], void *userdata)
{
	struct sum_ctx *c = userdata;
	uint64_t b;

	if (store_chunk_stored_bytes(c->s, id, &b) == 0)
		c->total += b;
	return 0;
}

static uint64_t store_bytes(struct store *s)
{
	struct sum_ctx c = {.s = s};

	store_foreach_chunk(s, sum_one, &c);
	return c.total;
}

/* What evicting image i would free: its chunks nobody else needs. */
static uint64_t unique_bytes(struct store *s, size_t i)
{
	struct store_chunk_ref *refs = NULL;
	struct idset prot = {0};
	uint64_t total = 0, b;
	size_t n = 0;

	if (chunks_of(s, &D.images[i], &refs, &n) < 0)
		return 0;
	protected_set(s, i, &prot);
	for (size_t k = 0; k < n; k++)
		if (!idset_has(&prot, refs[k].id) &&
		    store_chunk_stored_bytes(s, refs[k].id, &b) == 0)
			total += b;
	free(prot.ids);
	free(refs);
	return total;
}

static void evict(struct store *s, size_t i)
{
	struct store_chunk_ref *refs = NULL;
	struct idset prot = {0};
	size_t n = 0;

	log_info("evicting %s (%s:%u) from the node cache", D.images[i].ref, D.images[i].name,
		 D.images[i].version);
	if (chunks_of(s, &D.images[i], &refs, &n) == 0) {
		protected_set(s, i, &prot);
		/* The version goes first: a crash in between leaves unnamed chunks (gc's work),
		 * never a version that names missing chunks. */
		catalog_remove(s, D.images[i].name, D.images[i].version);
		for (size_t k = 0; k < n; k++)
			if (!idset_has(&prot, refs[k].id))
				store_remove_chunk(s, refs[k].id);
	}
	free(prot.ids);
	free(refs);
	cached_free(&D.images[i]);
	memmove(&D.images[i], &D.images[i + 1], (D.n_images - i - 1) * sizeof(*D.images));
	D.n_images--;
	D.evictions++;
}

/* Makes room for need more bytes; *ret_error names the pinned images when it cannot. */
static int make_room(struct store *s, uint64_t need, char **ret_error)
{
	for (int round = 0; round < 8; round++) {
		uint64_t used = store_bytes(s), pinned = 0;
		struct node_policy_image *imgs;
		size_t *victims, nv = 0;
		int r;

		if (used + need <= D.o->cache_max_bytes)
			return 0;
		imgs = calloc(D.n_images + 1, sizeof(*imgs));
		victims = calloc(D.n_images + 1, sizeof(*victims));
		if (!imgs || !victims) {
			free(imgs);
			free(victims);
			return -ENOMEM;
		}
		for (size_t i = 0; i < D.n_images; i++)
			imgs[i] = (struct node_policy_image){.bytes = unique_bytes(s, i),
							     .last_used = D.images[i].last_used,
							     .pinned = D.images[i].n_jobs > 0};
		r = node_policy_pick(imgs, D.n_images, used, need, D.o->cache_max_bytes, victims,
				     &nv, &pinned);
		free(imgs);
		if (r < 0 || nv == 0) {
			_cleanup_free_ char *names = NULL;

			free(victims);
			/* The message gives what pinned images hold, shared chunks included. */
			pinned = 0;
			for (size_t i = 0; i < D.n_images; i++)
				if (D.images[i].n_jobs)
					pinned += D.images[i].bytes;
			for (size_t i = 0; i < D.n_images; i++) {
				char *nn = NULL;

				if (!D.images[i].n_jobs)
					continue;
				if (asprintf(&nn, "%s%s%s:%u (job %s)", names ? names : "",
					     names ? ", " : "", D.images[i].name,
					     D.images[i].version, D.images[i].jobs[0]) < 0)
					break;
				free(names);
				names = nn;
			}
			return error_set(
			    ret_error, -ENOSPC,
			    "node cache full: %llu bytes needed, %llu of %llu used, "
			    "%llu by images pinned by running jobs (%s); release a job "
			    "or raise --cache-max",
			    (unsigned long long)need, (unsigned long long)used,
			    (unsigned long long)D.o->cache_max_bytes, (unsigned long long)pinned,
			    names ? names : "none");
		}
		/* Evict from the highest index down so that earlier indices stay valid. */
		for (size_t a = 0; a < nv; a++)
			for (size_t b = a + 1; b < nv; b++)
				if (victims[b] > victims[a]) {
					size_t t = victims[a];
					victims[a] = victims[b];
					victims[b] = t;
				}
		for (size_t a = 0; a < nv; a++)
			evict(s, victims[a]);
		free(victims);
		state_save();
	}
	return error_set(ret_error, -ENOSPC, "node cache: could not make room for %llu bytes",
			 (unsigned long long)need);
}

/* ---- fetches ---- */

static void fetch_unref(struct fetch *f)
{
	if (!f || --f->users > 0)
		return;
	free(f->ref);
	hostlist_free(f->hosts, f->n_hosts);
	manifest_free(f->m);
	free(f->refs);
	free(f->sizes);
	free(f->have);
	for (size_t i = 0; f->stash && i < f->n; i++)
		free(f->stash[i].buf);
	free(f->stash);
	free(f->pending);
	free(f->doc);
	free(f->wire);
	free(f->error);
	free(f->name);
	free(f->source);
	free(f);
}

/* Sets f's manifest (lock not held on entry); the same version again is fine. */
static int fetch_set_manifest(struct fetch *f, struct store *s, const char *manifest_text,
			      size_t len, const uint64_t *sizes, size_t n_sizes, char **ret_error)
{
	struct manifest *m = NULL;
	struct store_chunk_ref *refs = NULL;
	_cleanup_free_ char *why = NULL, *doc = NULL;
	uint64_t need = 0;
	size_t n = 0, doc_len = 0;
	bool *have;
	int r;

	r = manifest_from_json(manifest_text, len, &m, &why);
	if (r < 0)
		return error_set(ret_error, -EBADMSG, "the image's manifest: %s", why);
	r = manifest_distinct_chunks(m, &refs, &n);
	if (r < 0 || n != n_sizes) {
		manifest_free(m);
		free(refs);
		return error_set(ret_error, -EBADMSG,
				 "the image's manifest names %zu chunks, its "
				 "sizes %zu",
				 n, n_sizes);
	}
	pthread_mutex_lock(&D.lock);
	if (f->m) {
		bool same = f->n == n && memcmp(f->refs, refs, n * sizeof(*refs)) == 0;

		pthread_mutex_unlock(&D.lock);
		manifest_free(m);
		free(refs);
		return same ? 0
			    : error_set(ret_error, -EBADMSG,
					"a peer offers another version of %s than first seen",
					f->ref);
	}
	pthread_mutex_unlock(&D.lock);
	/* The children may have the manifest now, before this node re-hashes what it holds
	 * (~0.15 s for tiny-mpi's 850 chunks): they re-hash theirs meanwhile. A relay has
	 * published its parent's META already (fetch_from_peer). */
	if (!f->doc) {
		r = node_meta_join(manifest_text, len, sizes, n, &doc, &doc_len);
		if (r < 0) {
			manifest_free(m);
			free(refs);
			return r;
		}
		pthread_mutex_lock(&D.lock);
		if (!f->doc) {
			f->doc = TAKE_PTR(doc);
			f->doc_len = doc_len;
			wake();
		}
		pthread_mutex_unlock(&D.lock);
	}
	have = calloc(n + 1, sizeof(*have));
	if (!have) {
		manifest_free(m);
		free(refs);
		return -ENOMEM;
	}
	/* What is here already counts only once re-hashed. */
	for (size_t i = 0; i < n; i++) {
		void *plain = NULL;
		size_t plen;

		if (store_has_chunk(s, refs[i].id) &&
		    store_get_chunk(s, refs[i].id, &plain, &plen) == 0)
			have[i] = true;
		else
			need += sizes[i];
		free(plain);
	}
	pthread_mutex_lock(&D.lock);
	f->m = m;
	f->refs = refs;
	f->n = n;
	f->have = have;
	f->pending = calloc(n + 1, sizeof(*f->pending));
	f->stash = calloc(n + 1, sizeof(*f->stash));
	f->sizes = malloc((n + 1) * sizeof(*sizes));
	if (f->sizes)
		memcpy(f->sizes, sizes, n * sizeof(*sizes));
	r = make_room(s, need, ret_error);
	wake();
	pthread_mutex_unlock(&D.lock);
	return r;
}

/* Chunk i is stored and verified. *buf holds its compressed bytes at off (len of them):
 * taken (and *buf set to NULL) when a feed is waiting for the chunk. */
static void fetch_mark(struct fetch *f, size_t i, char **buf, size_t off, size_t len,
		       const char *source)
{
	pthread_mutex_lock(&D.lock);
	f->have[i] = true;
	f->bytes_received += len;
	f->chunks_received++;
	count(D.received, source, len);
	if (f->pending && f->pending[i] > 0 && !f->stash[i].buf &&
	    f->stash_bytes + len <= STASH_MAX_BYTES) {
		f->stash[i] = (struct stashed){.buf = TAKE_PTR(*buf), .off = off, .len = len};
		f->stash_bytes += len;
	}
	wake();
	pthread_mutex_unlock(&D.lock);
}

/* A feed no longer owes chunk i (sent, or the feed ended); the last one frees the stash
 * (lock held). */
static void fetch_release(struct fetch *f, size_t i)
{
	if (!f->pending || f->pending[i] == 0 || --f->pending[i] > 0 || !f->stash[i].buf)
		return;
	f->stash_bytes -= f->stash[i].len;
	free(f->stash[i].buf);
	f->stash[i] = (struct stashed){0};
}

static int open_registry(const char *ref_text, struct reference **ret_ref, struct oci_client **ret,
			 char **ret_error)
{
	struct auth_credentials cred = {0};
	struct reference *ref = NULL;
	int r;

	r = reference_parse(ref_text, &ref, ret_error);
	if (r < 0)
		return r;
	r = auth_credentials_find(ref->registry, &cred, ret_error);
	if (r < 0 && r != -ENOENT) {
		reference_free(ref);
		return r;
	}
	r = oci_client_new(ref->registry,
			   &(struct oci_options){.insecure = D.o->insecure,
						 .credentials = cred.user ? &cred : NULL},
			   ret);
	auth_credentials_done(&cred);
	if (r < 0) {
		reference_free(ref);
		return error_set(ret_error, r, "starting an HTTP client: %s", strerror(-r));
	}
	*ret_ref = ref;
	return 0;
}

/* The message for a chunk that could not be stored here: the store refuses what does not
 * verify (-EBADMSG, -EINVAL); anything else is this node's disk, named with its cache. */
static int store_failed(int r, const char *ref, const char *from, char **ret_error)
{
	if (r == -EBADMSG || r == -EINVAL)
		return error_set(ret_error, r, "a chunk of %s from %s does not verify", ref, from);
	if (r == -ENOSPC || r == -EDQUOT)
		return error_set(ret_error, r,
				 "the node cache %s is out of disk space (%s) while storing %s; "
				 "free space on its filesystem or lower --cache-max",
				 D.o->cache_dir, strerror(-r), ref);
	return error_set(ret_error, r, "storing a chunk of %s in the node cache %s: %s", ref,
			 D.o->cache_dir, strerror(-r));
}

/* Chunk blobs are fetched over REGISTRY_STREAMS connections at once: a registry answers
 * each small blob GET in a few ms (docs/registry.md), and one request at a time leaves the
 * link idle meanwhile. 16, not 4: a relaying root's requests and ACKs queue behind the
 * chunks it sends on its own uplink (up to the switch's buffer, 100 ms in the test
 * cluster), and each blob's round trip then takes that long; it takes about a
 * bandwidth-delay product of blobs in flight to keep the download going (bench/RESULTS.md). */
#define REGISTRY_STREAMS 16

struct registry_job {
	struct fetch *f;
	const struct artifact *a;
	size_t next; /* next chunk index to claim (under D.lock) */
	int error;
	char *error_text;
};

static void *registry_worker(void *arg)
{
	struct registry_job *job = arg;
	struct fetch *f = job->f;
	struct reference *ref = NULL;
	struct oci_client *c = NULL;
	struct store *s = NULL;
	char *error = NULL;
	int r;

	r = open_registry(f->ref, &ref, &c, &error);
	if (r == 0) {
		r = store_open(D.store_dir, &s);
		if (r < 0)
			error_set(&error, r, "opening the cache: %s", strerror(-r));
	}
	while (r == 0) {
		_cleanup_free_ void *data = NULL;
		size_t i, len = 0;

		pthread_mutex_lock(&D.lock);
		while (job->next < f->n && f->have[job->next])
			job->next++;
		i = job->next++;
		if (job->error)
			i = f->n;
		pthread_mutex_unlock(&D.lock);
		if (i >= f->n)
			break;
		node_trace("chunk-get", "%zu", i);
		r = oci_blob_get(c, ref->repository, job->a->chunks[i].digest,
				 job->a->chunks[i].size_bytes, &data, &len, &error);
		if (r < 0)
			break;
		node_trace("chunk-got", "%zu %zu", i, len);
		/* store_put_compressed_chunk decompresses and hashes: nothing unverified is
		 * stored, and only stored chunks are marked (and so forwarded). */
		r = store_put_compressed_chunk(s, f->refs[i].id, data, len, NULL);
		if (r < 0) {
			store_failed(r, f->ref, "the registry", &error);
			break;
		}
		fetch_mark(f, i, (char **)&data, 0, len, "registry");
		node_trace("chunk-stored", "%zu registry", i);
	}
	pthread_mutex_lock(&D.lock);
	if (r < 0 && !job->error) {
		job->error = r;
		job->error_text = error;
		error = NULL;
	}
	pthread_mutex_unlock(&D.lock);
	free(error);
	store_close(s);
	oci_client_free(c);
	reference_free(ref);
	return NULL;
}

/* ---- META bases: versions both ends hold, that a META may be a difference from ---- */

/* At most this many offered per feed: each costs the child a manifest's load and hash. */
#define META_BASES_MAX 3

struct meta_base {
	char *ref, *text;
	size_t len;
	uint8_t id[STORE_ID_BYTES];
};

static void meta_bases_free(struct meta_base *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(b[i].ref);
		free(b[i].text);
	}
}

/* What a child offers for one feed. */
struct meta_offer {
	struct meta_base b[META_BASES_MAX];
	size_t n;
};

static void meta_offer_done(struct meta_offer *o)
{
	meta_bases_free(o->b, o->n);
}

/* A cached version's manifest as this node writes it (lock not held): both ends of a feed
 * make it the same way from the same version, so its SHA-256 names it on both. */
static int base_text_of(struct store *s, const char *ref, struct meta_base *ret)
{
	_cleanup_free_ char *name = NULL;
	struct manifest *m = NULL;
	struct cached *c;
	uint32_t version;
	int r;

	pthread_mutex_lock(&D.lock);
	c = cached_find(ref);
	name = c ? strdup(c->name) : NULL;
	version = c ? c->version : 0;
	pthread_mutex_unlock(&D.lock);
	if (!name)
		return -ENOENT;
	r = catalog_load(s, name, version, &m, NULL);
	if (r < 0)
		return r;
	*ret = (struct meta_base){.ref = strdup(ref)};
	r = manifest_to_json(m, &ret->text);
	manifest_free(m);
	if (r < 0 || !ret->ref) {
		meta_bases_free(ret, 1);
		return r < 0 ? r : -ENOMEM;
	}
	ret->len = strlen(ret->text);
	store_id_compute(ret->text, ret->len, ret->id);
	pthread_mutex_lock(&D.lock);
	c = cached_find(ref);
	if (c && c->version == version) {
		memcpy(c->text_id, ret->id, STORE_ID_BYTES);
		c->text_id_known = true;
	}
	pthread_mutex_unlock(&D.lock);
	return 0;
}

/* How much of a reference names its repository (what comes before its tag or digest). */
static size_t repository_len(const char *ref)
{
	const char *at = strchr(ref, '@'), *slash = strrchr(ref, '/'), *colon;

	if (at)
		return (size_t)(at - ref);
	colon = strrchr(slash ? slash : ref, ':');
	return colon ? (size_t)(colon - ref) : strlen(ref);
}

/* The bases a child offers its parent for ref, loaded into out (caller frees with
 * meta_bases_free): cached versions of ref's repository, then of any, most recently used
 * first. Returns how many. */
static size_t meta_bases_offer(struct store *s, const char *ref, struct meta_base *out)
{
	char *pick[META_BASES_MAX];
	size_t n_pick = 0, n = 0, rlen = repository_len(ref);

	pthread_mutex_lock(&D.lock);
	for (int same_repo = 1; same_repo >= 0; same_repo--)
		while (n_pick < META_BASES_MAX) {
			struct cached *best = NULL;

			for (size_t i = 0; i < D.n_images; i++) {
				struct cached *c = &D.images[i];
				bool same = repository_len(c->ref) == rlen &&
					    strncmp(c->ref, ref, rlen) == 0,
				     taken = strcmp(c->ref, ref) == 0;

				for (size_t k = 0; k < n_pick && !taken; k++)
					taken = strcmp(pick[k], c->ref) == 0;
				if (!taken && same == same_repo &&
				    (!best || c->last_used > best->last_used))
					best = c;
			}
			if (!best || !(pick[n_pick] = strdup(best->ref)))
				break;
			n_pick++;
		}
	pthread_mutex_unlock(&D.lock);
	for (size_t k = 0; k < n_pick; k++) {
		if (base_text_of(s, pick[k], &out[n]) == 0)
			n++;
		free(pick[k]);
	}
	return n;
}

/* The first of a child's offered bases ([{"ref", "id"}]) that this node holds with the same
 * text: 0 with it in *ret (caller frees with meta_bases_free), -ENOENT when none. */
static int meta_base_find(struct store *s, json_t *offered, struct meta_base *ret)
{
	json_t *b;
	size_t i;

	json_array_foreach(offered, i, b)
	{
		const char *ref = json_string_value(json_object_get(b, "ref"));
		const char *hex = json_string_value(json_object_get(b, "id"));
		uint8_t id[STORE_ID_BYTES];
		struct cached *c;
		bool differs;

		if (i >= META_BASES_MAX || !ref || !hex || store_id_from_hex(hex, id) < 0)
			continue;
		pthread_mutex_lock(&D.lock);
		c = cached_find(ref);
		differs = !c || (c->text_id_known && memcmp(c->text_id, id, STORE_ID_BYTES) != 0);
		pthread_mutex_unlock(&D.lock);
		if (differs || base_text_of(s, ref, ret) < 0)
			continue;
		if (memcmp(ret->id, id, STORE_ID_BYTES) == 0)
			return 0;
		meta_bases_free(ret, 1);
	}
	return -ENOENT;
}

/* The version ref names rebuilt from its patch against a version this node holds
 * (registry/patch.h), when the registry has one: a few KB instead of the version's whole
 * OCI manifest and config (~230 KB for tiny-mpi). 0 with the artifact and config, else
 * -ENOENT (no base here, no patch there, or one that does not rebuild the version: then the
 * whole version is fetched, as without patches). */
static int fetch_patch(struct fetch *f, struct store *s, struct oci_client *c,
		       const struct reference *ref, struct artifact **ret_a, char **ret_config,
		       size_t *ret_config_len)
{
	_cleanup_(meta_offer_done) struct meta_offer offer = {0};
	char digest[OCI_DIGEST_LEN + 1];

	offer.n = meta_bases_offer(s, f->ref, offer.b);
	if (offer.n == 0)
		return -ENOENT;
	if (ref->digest)
		snprintf(digest, sizeof(digest), "%s", ref->digest);
	else if (oci_manifest_head(c, ref->repository, ref->tag, OCI_MEDIA_TYPE_MANIFEST, digest,
				   NULL) < 0)
		return -ENOENT;
	for (size_t i = 0; i < offer.n; i++) {
		_cleanup_free_ char *error = NULL;
		int r = patch_pull(s, c, ref->repository, digest, offer.b[i].text, offer.b[i].len,
				   ret_a, ret_config, ret_config_len, &error);

		if (r == 0) {
			node_trace("registry-patch", "%s against %s", f->ref, offer.b[i].ref);
			return 0;
		}
		if (r != -ENOENT)
			log_warning("fetching %s: not through its patch against %s (%s); fetching "
				    "its whole manifest",
				    f->ref, offer.b[i].ref, error ? error : strerror(-r));
	}
	return -ENOENT;
}

static int fetch_from_registry(struct fetch *f, struct store *s, char **ret_error)
{
	_cleanup_free_ char *oci_json = NULL, *config = NULL, *why = NULL;
	struct reference *ref = NULL;
	struct oci_client *c = NULL;
	struct artifact *a = NULL;
	uint64_t *sizes = NULL;
	size_t oci_len = 0, config_len = 0, n_workers = 0;
	struct registry_job job = {0};
	pthread_t workers[REGISTRY_STREAMS];
	int r;

	r = open_registry(f->ref, &ref, &c, ret_error);
	if (r < 0)
		return r;
	if (fetch_patch(f, s, c, ref, &a, &config, &config_len) < 0) {
		r = oci_manifest_get(c, ref->repository, reference_target(ref),
				     OCI_MEDIA_TYPE_MANIFEST, &oci_json, &oci_len, ret_error);
		if (r < 0)
			goto out;
		node_trace("registry-manifest", "%s", f->ref);
		r = artifact_parse(oci_json, oci_len, &a, &why);
		if (r < 0) {
			r = error_set(ret_error, r, "the manifest of %s: %s", f->ref, why);
			goto out;
		}
		r = oci_blob_get(c, ref->repository, a->config.digest, a->config.size_bytes,
				 (void **)&config, &config_len, ret_error);
		if (r < 0)
			goto out;
	}
	sizes = calloc(a->n_chunks + 1, sizeof(*sizes));
	if (!sizes) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < a->n_chunks; i++)
		sizes[i] = a->chunks[i].size_bytes;
	node_trace("registry-config", "%s", f->ref);
	r = fetch_set_manifest(f, s, config, config_len, sizes, a->n_chunks, ret_error);
	node_trace("manifest-set", "%s %zu chunks", f->ref, a->n_chunks);
	if (r < 0)
		goto out;
	job.f = f;
	job.a = a;
	for (size_t w = 0; w < REGISTRY_STREAMS && w < f->n; w++)
		if (pthread_create(&workers[n_workers], NULL, registry_worker, &job) == 0)
			n_workers++;
	for (size_t w = 0; w < n_workers; w++)
		pthread_join(workers[w], NULL);
	if (job.error) {
		r = error_set(ret_error, job.error, "%s",
			      job.error_text ? job.error_text : "fetch");
		goto out;
	}
	pthread_mutex_lock(&D.lock);
	for (size_t i = 0; i < f->n; i++)
		if (!f->have[i])
			r = -EIO;
	pthread_mutex_unlock(&D.lock);
	if (r < 0)
		r = error_set(ret_error, r, "%s: not every chunk arrived", f->ref);
out:
	free(job.error_text);
	free(sizes);
	artifact_free(a);
	oci_client_free(c);
	reference_free(ref);
	return r;
}

/* How many of f's distinct chunks this node holds (lock held). */
static size_t fetch_held(const struct fetch *f)
{
	size_t n = 0;

	for (size_t i = 0; f->have && i < f->n; i++)
		n += f->have[i];
	return n;
}

/* Asks node peer (a name of the job's hostlist) whether it holds ref: cached, or, while it
 * fetches it, how many of its chunks it holds. 0, or -errno when it did not answer within
 * HOLDER_QUERY_MS. */
static int peer_has(const char *peer, const char *ref, bool *ret_cached, size_t *ret_held)
{
	_cleanup_free_ char *addr = NULL, *error = NULL;
	json_t *req, *reply = NULL;
	int r;

	r = node_peer_address(D.o->peers_file, peer, NODE_DEFAULT_PORT, &addr, NULL);
	if (r < 0)
		return r;
	req = json_pack("{s:s, s:s}", "op", "has", "ref", ref);
	r = req ? node_client_peer(addr, D.o->munge_socket, req, HOLDER_QUERY_MS, &reply, &error)
		: -ENOMEM;
	json_decref(req);
	if (r == 0) {
		*ret_cached = json_is_true(json_object_get(reply, "cached"));
		*ret_held = (size_t)json_integer_value(json_object_get(reply, "held"));
	}
	json_decref(reply);
	return r;
}

/* Whether the parent feeding f is too slow (see PACE_WINDOW_S): it fed less than the
 * minimum rate, and alt, the node that would replace it, holds SLOW_GAP_CHUNKS more. On
 * yes, *ret_error says so. */
static bool parent_too_slow(struct fetch *f, const struct node_pace *pace, const char *peer,
			    const char *alt, char **ret_error)
{
	size_t mine, theirs = 0;
	bool cached = false;
	int r;

	if (!alt || D.o->peer_min_rate_bytes == 0 ||
	    !node_pace_below(pace, time_now_ms(), PACE_WINDOW_S, D.o->peer_min_rate_bytes))
		return false;
	r = peer_has(alt, f->ref, &cached, &theirs);
	pthread_mutex_lock(&D.lock);
	mine = fetch_held(f);
	if (r == 0 && cached)
		theirs = f->n;
	pthread_mutex_unlock(&D.lock);
	node_trace("pace-check", "%s %s %zu %s %zu", f->ref, peer, mine, alt, theirs);
	if (r < 0 || theirs < mine + SLOW_GAP_CHUNKS)
		return false;
	error_set(ret_error, -EPIPE,
		  "%s: too slow: less than %llu bytes/s over %d s, while %s holds %zu chunks "
		  "more than this node",
		  peer, (unsigned long long)D.o->peer_min_rate_bytes, PACE_WINDOW_S, alt,
		  theirs - mine);
	return true;
}

static void reader_freep(struct node_proto_reader **rd)
{
	node_proto_reader_free(*rd);
}

/* Returns 0, a local error, or -EPIPE when the peer is the problem (dead, slow, lying).
 * alt: the node that would replace the peer (NULL: the registry), asked how far it is when
 * the peer feeds slowly. cached_only: the peer must serve the image from its cache, not fetch it
 * first (a holder asked in place of the registry, which may have lost it since it said so: fetching
 * it could ask this node, which waits on it). */
static int fetch_from_peer(struct fetch *f, struct store *s, const char *peer, bool cached_only,
			   const char *alt, char **ret_error)
{
	_cleanup_free_ char *addr = NULL, *payload = NULL, *doc = NULL;
	_cleanup_close_ int fd = -1;
	_cleanup_(reader_freep) struct node_proto_reader *rd = NULL;
	_cleanup_(meta_offer_done) struct meta_offer offer = {0};
	enum node_msg_type type;
	json_t *req, *want;
	struct node_pace pace;
	int64_t last_check_ms;
	bool published = false;
	size_t len, doc_len = 0;
	int r, timeout = D.o->peer_timeout_ms;

	r = node_peer_address(D.o->peers_file, peer, NODE_DEFAULT_PORT, &addr, ret_error);
	if (r < 0)
		return -EPIPE;
	offer.n = meta_bases_offer(s, f->ref, offer.b);
	node_trace("parent-connect", "%s", peer);
	r = node_connect_tcp(addr, timeout, &fd, ret_error);
	if (r < 0)
		return -EPIPE;
	node_trace("parent-connected", "%s", peer);
	req = json_pack("{s:s, s:s, s:s?, s:s, s:b, s:o, s:o}", "op", "feed", "ref", f->ref, "from",
			D.o->name, "scheme", f->tree ? f->tree->name : "central", "cached_only",
			cached_only, "nodes", json_array(), "bases", json_array());
	for (size_t i = 0; i < f->n_hosts; i++)
		json_array_append_new(json_object_get(req, "nodes"), json_string(f->hosts[i]));
	for (size_t i = 0; i < offer.n; i++) {
		char hex[STORE_ID_HEX_LEN + 1];

		store_id_to_hex(offer.b[i].id, hex);
		json_array_append_new(json_object_get(req, "bases"),
				      json_pack("{s:s, s:s}", "ref", offer.b[i].ref, "id", hex));
	}
	r = node_send_signed(fd, D.o->munge_socket, req, timeout, ret_error);
	json_decref(req);
	if (r < 0)
		return r == -EACCES ? r : -EPIPE;
	node_trace("feed-asked", "%s", peer);
	rd = node_proto_reader_new(fd);
	if (!rd)
		return -ENOMEM;
	do {
		free(payload);
		payload = NULL;
		r = node_proto_reader_recv(rd, NODE_PROTO_MAX_PAYLOAD, timeout, &type, &payload,
					   &len);
	} while (r == 0 && type == NODE_MSG_REPLY && strstr(payload, "keepalive"));
	if (r == -ETIMEDOUT)
		return error_set(ret_error, -EPIPE,
				 "%s: no whole frame within %d ms (silent or too slow)", peer,
				 timeout);
	if (r < 0)
		return error_set(ret_error, -EPIPE, "%s: %s", peer, strerror(-r));
	if (type == NODE_MSG_META_JSON)
		return error_set(ret_error, -EPIPE,
				 "%s runs an older vmhpc node (it sent the manifest as JSON); run "
				 "one vmhpc version on every node",
				 peer);
	if (type != NODE_MSG_META)
		return error_set(ret_error, -EPIPE, "%s: %s", peer,
				 type == NODE_MSG_ERROR || type == NODE_MSG_REPLY ? payload
										  : "no manifest");
	{
		uint8_t base_id[STORE_ID_BYTES];
		const struct meta_base *base = NULL;
		int has_base = delta_base(payload, len, base_id);

		for (size_t i = 0; has_base > 0 && i < offer.n; i++)
			if (memcmp(offer.b[i].id, base_id, STORE_ID_BYTES) == 0)
				base = &offer.b[i];
		node_trace("meta-received", "%s %zu bytes, base %s", peer, len,
			   base ? base->ref : "none");
		r = has_base < 0 || (has_base > 0 && !base)
			? -EBADMSG
			: delta_decode(payload, len, base ? base->text : NULL, base ? base->len : 0,
				       &doc, &doc_len);
		if (r == -ENOMEM)
			return r;
		if (r < 0)
			return error_set(
			    ret_error, -EPIPE, "%s sent a manifest that does not decode (%s)", peer,
			    has_base > 0 && !base ? "against a base this node did not offer"
						  : strerror(-r));
	}
	/* The children get the META now, before this node parses the manifest and re-hashes
	 * what it holds already: otherwise every hop of a chain adds that time before the last
	 * node can ask for its first chunk (~0.1 s a hop, docs/node.md); decoding took ~1 ms.
	 * It holds no chunk, only the manifest that the children check as this node does; a
	 * manifest that turns out bad is withdrawn below, and a child that got it fails on it
	 * too. */
	pthread_mutex_lock(&D.lock);
	if (!f->doc && !f->m) {
		f->doc = malloc(doc_len + 1);
		f->wire = malloc(len);
		if (f->doc && f->wire) {
			memcpy(f->doc, doc, doc_len + 1);
			f->doc_len = doc_len;
			memcpy(f->wire, payload, len);
			f->wire_len = len;
			published = true;
			wake();
		} else {
			free(f->doc);
			free(f->wire);
			f->doc = f->wire = NULL;
		}
	}
	pthread_mutex_unlock(&D.lock);
	{
		_cleanup_free_ uint64_t *sizes = NULL;
		size_t manifest_len, n;

		r = node_meta_split(doc, doc_len, &manifest_len, &sizes, &n);
		if (r == -EBADMSG)
			r = error_set(ret_error, -EBADMSG, "%s sent a bad manifest", peer);
		else if (r == 0)
			r = fetch_set_manifest(f, s, doc, manifest_len, sizes, n, ret_error);
		if (r < 0 && published) {
			pthread_mutex_lock(&D.lock);
			if (!f->m) {
				free(f->doc);
				free(f->wire);
				f->doc = f->wire = NULL;
			}
			pthread_mutex_unlock(&D.lock);
		}
		if (r == -EBADMSG)
			return -EPIPE;
		if (r < 0)
			return r;
	}
	want = json_array();
	pthread_mutex_lock(&D.lock);
	for (size_t i = 0; i < f->n; i++)
		if (!f->have[i])
			json_array_append_new(want, json_integer((json_int_t)i));
	pthread_mutex_unlock(&D.lock);
	{
		_cleanup_free_ char *wt = json_dumps(want, JSON_COMPACT);

		json_decref(want);
		node_trace("manifest-set", "%s", f->ref);
		r = node_proto_send(fd, NODE_MSG_WANT, wt, strlen(wt), timeout);
		if (r < 0)
			return error_set(ret_error, -EPIPE, "%s: %s", peer, strerror(-r));
		node_trace("want-sent", "%s %zu bytes", peer, strlen(wt));
	}
	node_pace_start(&pace, time_now_ms());
	last_check_ms = time_now_ms();
	for (;;) {
		uint32_t idx;

		free(payload);
		payload = NULL;
		if (time_now_ms() - last_check_ms >= 1000) {
			last_check_ms = time_now_ms();
			if (parent_too_slow(f, &pace, peer, alt, ret_error))
				return -EPIPE;
		}
		r = node_proto_reader_recv(rd, NODE_PROTO_MAX_PAYLOAD, timeout, &type, &payload,
					   &len);
		if (r == -ETIMEDOUT)
			return error_set(ret_error, -EPIPE,
					 "%s: no whole frame within %d ms (silent or too slow)",
					 peer, timeout);
		if (r < 0)
			return error_set(ret_error, -EPIPE, "%s: %s", peer, strerror(-r));
		if (type == NODE_MSG_REPLY)
			continue; /* keepalive */
		if (type == NODE_MSG_END) {
			node_trace("end-received", "%s", peer);
			break;
		}
		if (type != NODE_MSG_CHUNK || len < 4)
			return error_set(ret_error, -EPIPE, "%s: %s", peer,
					 type == NODE_MSG_ERROR ? payload : "unexpected frame");
		memcpy(&idx, payload, 4);
		node_pace_add(&pace, time_now_ms(), len);
		node_trace("chunk-received", "%u %s %zu", idx, peer, len);
		if (idx >= f->n)
			return error_set(ret_error, -EPIPE, "%s sent chunk %u of %zu", peer, idx,
					 f->n);
		r = store_put_compressed_chunk(s, f->refs[idx].id, payload + 4, len - 4, NULL);
		if (r == -EBADMSG || r == -EINVAL)
			return error_set(ret_error, -EPIPE, "%s sent a chunk that does not verify",
					 peer);
		if (r < 0)
			return store_failed(r, f->ref, peer, ret_error);
		fetch_mark(f, idx, &payload, 4, len - 4, peer);
		node_trace("chunk-stored", "%u %s", idx, peer);
	}
	pthread_mutex_lock(&D.lock);
	for (size_t i = 0; i < f->n; i++)
		if (!f->have[i])
			r = -EPIPE;
	pthread_mutex_unlock(&D.lock);
	if (r < 0)
		return error_set(ret_error, -EPIPE, "%s ended before sending every chunk", peer);
	return 0;
}

struct holder_query {
	pthread_t thread;
	bool started;
	const char *peer, *ref;
	bool holds;
};

static void *holder_query_thread(void *arg)
{
	struct holder_query *q = arg;
	size_t held;

	if (peer_has(q->peer, q->ref, &q->holds, &held) < 0)
		q->holds = false;
	return NULL;
}

/* The first node of the job, in hostlist order, that says it holds f's image in its
 * cache: asked, all at once, by a node that would otherwise pull from the registry, so
 * that a job whose image some of its nodes hold (an earlier job on them) is rooted there
 * and the registry is not asked at all. A node that does not answer within
 * HOLDER_QUERY_MS does not hold it; -1 when none does. */
static int find_holder(struct fetch *f, int rank, const bool *dead)
{
	struct holder_query *q = calloc(f->n_hosts + 1, sizeof(*q));
	int holder = -1;

	if (!q)
		return -1;
	for (size_t i = 0; i < f->n_hosts; i++) {
		if ((int)i == rank || dead[i])
			continue;
		q[i].peer = f->hosts[i];
		q[i].ref = f->ref;
		q[i].started = pthread_create(&q[i].thread, NULL, holder_query_thread, &q[i]) == 0;
	}
	for (size_t i = 0; i < f->n_hosts; i++) {
		if (q[i].started)
			pthread_join(q[i].thread, NULL);
		if (q[i].holds && holder < 0)
			holder = (int)i;
	}
	free(q);
	return holder;
}

static void *fetch_thread(void *arg)
{
	struct fetch *f = arg;
	_cleanup_free_ char *error = NULL, *dead_list = NULL;
	struct store *s = NULL;
	bool *dead = calloc(f->n_hosts + 1, sizeof(bool)), asked_holders = false;
	int rank = -1, holder = -1, r;

	for (size_t i = 0; i < f->n_hosts; i++)
		if (D.o->name && strcmp(f->hosts[i], D.o->name) == 0)
			rank = (int)i;
	r = store_open(D.store_dir, &s);
	if (r < 0 || !dead) {
		error_set(&error, r ? r : -ENOMEM, "opening the cache %s: %s", D.store_dir,
			  strerror(-r));
		goto out;
	}
	for (;;) {
		int src = !f->tree || rank <= 0
			      ? NODE_TREE_REGISTRY
			      : node_tree_live_parent(f->tree, (size_t)rank, f->n_hosts, dead);
		char *e = NULL, *nl = NULL;

		/* The root of a tree (or of what is left of it) takes the image from a node of
		 * the job that holds it, if one does, rather than from the registry. Not with
		 * "central", where every node is to pull from the registry. */
		if (src < 0 && f->tree && rank >= 0 && f->n_hosts > 1 && !asked_holders) {
			asked_holders = true;
			holder = find_holder(f, rank, dead);
			node_trace("holders-asked", "%s %d", f->ref, holder);
		}
		if (src < 0 && holder >= 0 && !dead[holder])
			src = holder;

		free(f->source);
		f->source = strdup(src < 0 ? "registry" : f->hosts[src]);
		node_trace("fetch-start", "%s from %s", f->ref, f->source);
		if (src < 0) {
			r = fetch_from_registry(f, s, &error);
			if (r < 0 && dead_list) {
				char *inner = TAKE_PTR(error);

				error_set(&error, r, "no path left for %s: %s; registry: %s",
					  f->ref, dead_list, inner);
				free(inner);
			}
			break;
		}
		{
			/* Who would take over from src: its subtree's next parent. */
			int alt;

			dead[src] = true;
			alt = node_tree_live_parent(f->tree, (size_t)rank, f->n_hosts, dead);
			dead[src] = false;
			if (src == holder)
				alt = NODE_TREE_REGISTRY;
			r = fetch_from_peer(f, s, f->hosts[src], holder >= 0 && src == holder,
					    alt >= 0 ? f->hosts[alt] : NULL, &e);
		}
		if (r != -EPIPE) {
			error = e;
			break;
		}
		dead[src] = true;
		log_warning("fetching %s: parent %s failed (%s); re-parenting", f->ref,
			    f->hosts[src], e ? e : "?");
		if (asprintf(&nl, "%s%s%s (%s)", dead_list ? dead_list : "", dead_list ? "; " : "",
			     f->hosts[src], e ? e : "failed") >= 0) {
			free(dead_list);
			dead_list = nl;
		}
		free(e);
	}
	if (r == 0) {
		struct manifest *m = f->m;
		bool added = false;

		node_trace("commit-start", "%s", f->ref);
		r = transfer_commit_received(s, m, &added);
		node_trace("commit-end", "%s %d", f->ref, r);
		if (r == -ENOSPC || r == -EDQUOT)
			store_failed(r, f->ref, "this node", &error);
		else if (r < 0)
			error_set(&error, r, "saving %s in the node cache %s: %s", f->ref,
				  D.o->cache_dir, strerror(-r));
	}
out:
	pthread_mutex_lock(&D.lock);
	for (struct fetch **p = &D.fetches; *p; p = &(*p)->next)
		if (*p == f) {
			*p = f->next;
			break;
		}
	if (r == 0) {
		f->name = strdup(f->m->name);
		f->version = f->m->version;
		if (!cached_find(f->ref))
			cached_add(f->ref, f->m->name, f->m->version,
				   manifest_stored_bytes(s, f->m));
		state_save();
		D.distributions++;
		f->done = true;
	} else {
		D.errors++;
		f->failed = true;
		f->error = TAKE_PTR(error);
		if (!f->error)
			f->error = strdup(strerror(-r));
	}
	wake();
	pthread_cond_broadcast(&D.ended);
	fetch_unref(f);
	pthread_mutex_unlock(&D.lock);
	store_close(s);
	free(dead);
	return NULL;
}

/* The fetch of ref (lock held): joins one in flight, or starts one. NULL with *ret_hit
 * when the cache has it. */
static struct fetch *fetch_get(const char *ref, char **hosts, size_t n_hosts,
			       const struct node_tree_ops *tree, bool *ret_hit)
{
	struct fetch *f;
	pthread_t t;
	pthread_attr_t attr;

	*ret_hit = false;
	if (cached_find(ref)) {
		*ret_hit = true;
		return NULL;
	}
	for (f = D.fetches; f; f = f->next)
		if (strcmp(f->ref, ref) == 0) {
			f->users++;
			return f;
		}
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->ref = strdup(ref);
	f->tree = tree;
	f->hosts = calloc(n_hosts + 1, sizeof(char *));
	for (size_t i = 0; i < n_hosts; i++)
		f->hosts[i] = strdup(hosts[i]);
	f->n_hosts = n_hosts;
	f->users = 2; /* the thread and the caller */
	f->next = D.fetches;
	D.fetches = f;
	D.misses++;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, fetch_thread, f) != 0) {
		D.fetches = f->next;
		f->users = 1;
		fetch_unref(f);
		f = NULL;
	}
	pthread_attr_destroy(&attr);
	return f;
}

/* ---- requests ---- */

static json_t *reply_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *reply_error(const char *fmt, ...)
{
	char buf[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return json_pack("{s:b, s:s}", "ok", 0, "error", buf);
}

static int parse_nodes(json_t *req, char ***ret_hosts, size_t *ret_n, char **ret_error)
{
	json_t *nodes = json_object_get(req, "nodes"), *v;
	size_t i;

	if (json_is_string(nodes))
		return hostlist_expand(json_string_value(nodes), ret_hosts, ret_n, ret_error);
	*ret_hosts = calloc(json_array_size(nodes) + 1, sizeof(char *));
	*ret_n = 0;
	json_array_foreach(nodes, i, v) if (json_is_string(v))(*ret_hosts)[(*ret_n)++] =
	    strdup(json_string_value(v));
	return 0;
}

/* The request's "scheme": a shape of tree.h, or "central" (*ret_tree NULL); the default
 * shape when it names none. "central": true is the older spelling of "scheme": "central". */
static int parse_scheme(json_t *req, const struct node_tree_ops **ret_tree, char **ret_error)
{
	const char *scheme = json_string_value(json_object_get(req, "scheme"));

	if (json_is_true(json_object_get(req, "central")) ||
	    (scheme && strcmp(scheme, "central") == 0)) {
		*ret_tree = NULL;
		return 0;
	}
	*ret_tree = scheme ? node_tree_find(scheme) : node_tree_default();
	if (!*ret_tree)
		return error_set(ret_error, -EINVAL,
				 "unknown distribution scheme \"%.64s\" (chain, binomial, central)",
				 scheme);
	return 0;
}

static json_t *do_present(json_t *req)
{
	const char *ref = json_string_value(json_object_get(req, "ref"));
	const char *job = json_string_value(json_object_get(req, "job"));
	const struct node_tree_ops *tree = NULL;
	_cleanup_free_ char *error = NULL;
	char **hosts = NULL;
	size_t n_hosts = 0;
	struct fetch *f;
	struct cached *c;
	bool hit;
	double t0 = time_now_s();
	json_t *reply;

	if (!ref)
		return reply_error("present: give \"ref\", an image in a registry");
	if (node_allowlist_check(D.o->registries, ref, &error) < 0)
		return reply_error("%s%s: %s", D.o->name ? "node " : "node",
				   D.o->name ? D.o->name : "", error);
	if (parse_scheme(req, &tree, &error) < 0)
		return reply_error("present %s: %s", ref, error);
	if (parse_nodes(req, &hosts, &n_hosts, &error) < 0)
		return reply_error("present %s: nodes: %s", ref, error);
	pthread_mutex_lock(&D.lock);
	f = fetch_get(ref, hosts, n_hosts, tree, &hit);
	hostlist_free(hosts, n_hosts);
	if (hit)
		D.hits++;
	if (!f && !hit) {
		pthread_mutex_unlock(&D.lock);
		return reply_error("present %s: out of memory or threads", ref);
	}
	while (f && !f->done && !f->failed)
		wait_on_ms(&D.ended, KEEPALIVE_MS);
	if (f && f->failed) {
		reply =
		    reply_error("%s%s%s: %s", D.o->name ? "node " : "", D.o->name ? D.o->name : "",
				D.o->name ? "" : "node", f->error ? f->error : "failed");
		fetch_unref(f);
		pthread_mutex_unlock(&D.lock);
		return reply;
	}
	c = cached_find(ref);
	if (!c) {
		fetch_unref(f);
		pthread_mutex_unlock(&D.lock);
		return reply_error("present %s: evicted while it arrived; try again", ref);
	}
	c->last_used = ++D.clock;
	if (job && *job) {
		bool pinned = false;

		for (size_t j = 0; j < c->n_jobs; j++)
			pinned |= strcmp(c->jobs[j], job) == 0;
		if (!pinned && c->n_jobs < MAX_JOBS_PER_IMG) {
			char **nj = realloc(c->jobs, (c->n_jobs + 1) * sizeof(*nj));

			if (nj) {
				c->jobs = nj;
				c->jobs[c->n_jobs++] = strdup(job);
			}
		}
	}
	state_save();
	node_trace("present-reply", "%s", ref);
	/* "store": where the prolog's runtime finds the version (it opens the store itself). */
	reply =
	    json_pack("{s:b, s:s?, s:s, s:s, s:i, s:I, s:I, s:s, s:f}", "ok", 1, "node", D.o->name,
		      "store", D.store_dir, "name", c->name, "version", (int)c->version,
		      "bytes_received", (json_int_t)(f ? f->bytes_received : 0), "chunks_received",
		      (json_int_t)(f ? f->chunks_received : 0), "source",
		      f ? (f->source ? f->source : "?") : "cache", "seconds", time_now_s() - t0);
	fetch_unref(f);
	pthread_mutex_unlock(&D.lock);
	return reply;
}

/* A job's timings as `vmhpc slurm epilog` gives them with its release: phases in seconds and
 * memory in KiB; a value that is missing, negative or absurd (a day, a TiB) is left out. The
 * job, a metric's label value, must be a Slurm job id (digits). */
static void note_job_timings(const char *job, json_t *t)
{
	struct job_timings *last = &D.last_job;
	json_int_t guest_kb, host_kb;
	size_t len = strlen(job);

	if (!json_is_object(t) || len == 0 || len >= sizeof(last->job) ||
	    strspn(job, "0123456789") != len)
		return;
	*last = (struct job_timings){0};
	snprintf(last->job, sizeof(last->job), "%s", job);
	for (int i = 0; i < JOB_PHASE_MAX; i++) {
		json_t *v = json_object_get(t, job_phase_key[i]);
		double x = json_number_value(v);

		if (json_is_number(v) && x >= 0 && x < 86400)
			last->seconds[i] = x;
		D.job_seconds[i] += last->seconds[i];
	}
	guest_kb = json_integer_value(json_object_get(t, "guest_used_kb"));
	host_kb = json_integer_value(json_object_get(t, "host_pss_kb"));
	if (guest_kb > 0 && guest_kb < TIMINGS_MAX_KB)
		last->guest_used_kb = (uint64_t)guest_kb;
	if (host_kb > 0 && host_kb < TIMINGS_MAX_KB)
		last->host_pss_kb = (uint64_t)host_kb;
	D.jobs++;
}

static json_t *do_release(json_t *req)
{
	const char *job = json_string_value(json_object_get(req, "job"));
	int released = 0;

	if (!job)
		return reply_error("release: give \"job\"");
	pthread_mutex_lock(&D.lock);
	note_job_timings(job, json_object_get(req, "timings"));
	for (size_t i = 0; i < D.n_images; i++) {
		struct cached *c = &D.images[i];

		for (size_t j = 0; j < c->n_jobs; j++)
			if (strcmp(c->jobs[j], job) == 0) {
				free(c->jobs[j]);
				c->jobs[j] = c->jobs[--c->n_jobs];
				released++;
				break;
			}
	}
	state_save();
	pthread_mutex_unlock(&D.lock);
	return json_pack("{s:b, s:i}", "ok", 1, "released", released);
}

/* The Slurm jobs' timings (lock held). */
static void job_metrics(FILE *f)
{
	const struct job_timings *last = &D.last_job;

	fprintf(f,
		"# HELP vmhpc_node_jobs_total Slurm jobs with VMs here whose timings the "
		"epilog reported.\n# TYPE vmhpc_node_jobs_total counter\n"
		"vmhpc_node_jobs_total %llu\n"
		"# HELP vmhpc_node_job_seconds_total Those jobs' time in each phase, summed.\n"
		"# TYPE vmhpc_node_job_seconds_total counter\n",
		(unsigned long long)D.jobs);
	for (int i = 0; i < JOB_PHASE_MAX; i++)
		fprintf(f, "vmhpc_node_job_seconds_total{phase=\"%s\"} %.3f\n", job_phase_name[i],
			D.job_seconds[i]);
	if (!D.jobs)
		return;
	fprintf(f, "# HELP vmhpc_node_last_job_seconds The last job's time in each phase.\n"
		   "# TYPE vmhpc_node_last_job_seconds gauge\n");
	for (int i = 0; i < JOB_PHASE_MAX; i++)
		fprintf(f, "vmhpc_node_last_job_seconds{job=\"%s\",phase=\"%s\"} %.3f\n", last->job,
			job_phase_name[i], last->seconds[i]);
	fprintf(
	    f,
	    "# HELP vmhpc_node_last_job_guest_used_bytes Memory its guests used at boot, summed "
	    "over its VMs here.\n# TYPE vmhpc_node_last_job_guest_used_bytes gauge\n"
	    "vmhpc_node_last_job_guest_used_bytes{job=\"%s\"} %llu\n"
	    "# HELP vmhpc_node_last_job_host_pss_bytes Host memory (PSS) of its QEMUs here.\n"
	    "# TYPE vmhpc_node_last_job_host_pss_bytes gauge\n"
	    "vmhpc_node_last_job_host_pss_bytes{job=\"%s\"} %llu\n",
	    last->job, (unsigned long long)last->guest_used_kb * 1024, last->job,
	    (unsigned long long)last->host_pss_kb * 1024);
}

static char *metrics_text(void)
{
	struct store *s = NULL;
	uint64_t bytes = 0, pinned = 0;
	char *out = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&out, &size);

	if (!f)
		return NULL;
	if (store_open(D.store_dir, &s) == 0) {
		bytes = store_bytes(s);
		store_close(s);
	}
	pthread_mutex_lock(&D.lock);
	for (size_t i = 0; i < D.n_images; i++)
		pinned += D.images[i].n_jobs > 0;
	fprintf(f,
		"# HELP vmhpc_node_cache_bytes Compressed chunk bytes in the node cache.\n"
		"# TYPE vmhpc_node_cache_bytes gauge\nvmhpc_node_cache_bytes %llu\n"
		"# TYPE vmhpc_node_cache_max_bytes gauge\nvmhpc_node_cache_max_bytes %llu\n"
		"# TYPE vmhpc_node_cache_images gauge\nvmhpc_node_cache_images %zu\n"
		"# TYPE vmhpc_node_cache_images_pinned gauge\nvmhpc_node_cache_images_pinned "
		"%llu\n"
		"# TYPE vmhpc_node_cache_hits_total counter\nvmhpc_node_cache_hits_total %llu\n"
		"# TYPE vmhpc_node_cache_misses_total counter\nvmhpc_node_cache_misses_total "
		"%llu\n"
		"# TYPE vmhpc_node_evictions_total counter\nvmhpc_node_evictions_total %llu\n"
		"# TYPE vmhpc_node_distributions_total counter\nvmhpc_node_distributions_total "
		"%llu\n"
		"# TYPE vmhpc_node_errors_total counter\nvmhpc_node_errors_total %llu\n"
		"# TYPE vmhpc_node_requests_refused_total counter\n"
		"vmhpc_node_requests_refused_total %llu\n",
		(unsigned long long)bytes, (unsigned long long)D.o->cache_max_bytes, D.n_images,
		(unsigned long long)pinned, (unsigned long long)D.hits,
		(unsigned long long)D.misses, (unsigned long long)D.evictions,
		(unsigned long long)D.distributions, (unsigned long long)D.errors,
		(unsigned long long)D.refused);
	fprintf(f, "# TYPE vmhpc_node_received_bytes_total counter\n");
	for (size_t i = 0; i < MAX_SOURCES && D.received[i].name[0]; i++)
		fprintf(f, "vmhpc_node_received_bytes_total{source=\"%s\"} %llu\n",
			D.received[i].name, (unsigned long long)D.received[i].bytes);
	fprintf(f, "# TYPE vmhpc_node_sent_bytes_total counter\n");
	for (size_t i = 0; i < MAX_SOURCES && D.sent[i].name[0]; i++)
		fprintf(f, "vmhpc_node_sent_bytes_total{peer=\"%s\"} %llu\n", D.sent[i].name,
			(unsigned long long)D.sent[i].bytes);
	job_metrics(f);
	pthread_mutex_unlock(&D.lock);
	fclose(f);
	return out;
}

/* Sends a keepalive when nothing went to the child for KEEPALIVE_MS (*last_s: when
 * something last did): a wake-up with nothing to send is not a reason, and there is one
 * per chunk that arrives while the feed is busy. */
static int feed_keepalive(int fd, double *last_s, int timeout_ms)
{
	double now = time_now_s();

	if (now - *last_s < KEEPALIVE_MS / 1000.0)
		return 0;
	*last_s = now;
	return node_proto_send(fd, NODE_MSG_REPLY, "{\"keepalive\":1}", 15, timeout_ms);
}

/* The META payload for a child that offered bases (caller frees): the one this node got
 * from its parent when it is against one of them, else doc encoded against the first of
 * them this node holds too, else the parent's when it is against none, else doc alone. */
static int meta_for_child(struct store *s, json_t *offered, const char *doc, size_t doc_len,
			  const char *wire, size_t wire_len, char **ret, size_t *ret_len)
{
	struct meta_base base;
	uint8_t wire_base[STORE_ID_BYTES];
	int wire_has_base = wire ? delta_base(wire, wire_len, wire_base) : -ENOENT;
	bool pass_on = false;
	json_t *b;
	size_t i;
	int r;

	json_array_foreach(offered, i, b)
	{
		const char *hex = json_string_value(json_object_get(b, "id"));
		uint8_t id[STORE_ID_BYTES];

		if (wire_has_base > 0 && i < META_BASES_MAX && hex &&
		    store_id_from_hex(hex, id) == 0 && memcmp(id, wire_base, STORE_ID_BYTES) == 0)
			pass_on = true;
	}
	if (!pass_on && meta_base_find(s, offered, &base) == 0) {
		r = delta_encode(doc, doc_len, base.text, base.len, ret, ret_len);
		meta_bases_free(&base, 1);
		return r;
	}
	/* Against a base the child holds, or against none when this node holds none of its
	 * bases: what came from the parent is what this node would make. */
	if (pass_on || wire_has_base == 0) {
		*ret = malloc(wire_len);
		if (!*ret)
			return -ENOMEM;
		memcpy(*ret, wire, wire_len);
		*ret_len = wire_len;
		return 0;
	}
	return delta_encode(doc, doc_len, NULL, 0, ret, ret_len);
}

/* Feeds a child: META, then every chunk it wants as soon as it is here and verified. */
static void do_feed(int fd, json_t *req, const char *peer)
{
	const char *ref = json_string_value(json_object_get(req, "ref"));
	_cleanup_free_ char *error = NULL;
	struct store *s = NULL;
	char **hosts = NULL;
	size_t n_hosts = 0, n_want = 0, sent = 0;
	bool hit, *want = NULL, *owed = NULL;
	double last_sent_s = time_now_s();
	struct fetch *f = NULL;
	uint32_t *order = NULL;
	const struct node_tree_ops *tree = NULL;
	int timeout = D.o->peer_timeout_ms, r;

	if (!ref || parse_scheme(req, &tree, &error) < 0 ||
	    parse_nodes(req, &hosts, &n_hosts, &error) < 0 || store_open(D.store_dir, &s) < 0) {
		node_proto_send(fd, NODE_MSG_ERROR, "bad feed request", 16, timeout);
		goto out;
	}
	/* A peer is root on a node of the site, but its list may differ from this node's. */
	if (node_allowlist_check(D.o->registries, ref, &error) < 0) {
		node_proto_send(fd, NODE_MSG_ERROR, error, strlen(error), timeout);
		goto out;
	}
	pthread_mutex_lock(&D.lock);
	if (json_is_true(json_object_get(req, "cached_only")) && !cached_find(ref)) {
		pthread_mutex_unlock(&D.lock);
		if (asprintf(&error, "%s does not hold %s any more", D.o->name ? D.o->name : "?",
			     ref) >= 0)
			node_proto_send(fd, NODE_MSG_ERROR, error, strlen(error), timeout);
		goto out;
	}
	f = fetch_get(ref, hosts, n_hosts, tree, &hit);
	if (hit) {
		/* Serve the cached version through a finished fetch of its own. */
		struct cached *c = cached_find(ref);
		struct manifest *m = NULL;
		_cleanup_free_ char *text = NULL;

		c->last_used = ++D.clock;
		f = calloc(1, sizeof(*f));
		if (f && catalog_load(s, c->name, c->version, &m, NULL) == 0 &&
		    manifest_distinct_chunks(m, &f->refs, &f->n) == 0 &&
		    manifest_to_json(m, &text) == 0 &&
		    (f->sizes = calloc(f->n + 1, sizeof(*f->sizes))) &&
		    (f->have = calloc(f->n + 1, sizeof(bool)))) {
			f->users = 1;
			f->m = m;
			f->done = true;
			for (size_t i = 0; i < f->n; i++) {
				f->have[i] = true;
				store_chunk_stored_bytes(s, f->refs[i].id, &f->sizes[i]);
			}
			if (node_meta_join(text, strlen(text), f->sizes, f->n, &f->doc,
					   &f->doc_len) < 0)
				f->failed = true;
		} else {
			if (f) {
				free(f->refs);
				free(f->sizes);
			}
			manifest_free(m);
			free(f);
			f = NULL;
		}
	}
	pthread_mutex_unlock(&D.lock);
	if (!f) {
		node_proto_send(fd, NODE_MSG_ERROR, "cannot serve it", 15, timeout);
		goto out;
	}
	/* Wait for the manifest, keeping the child's timeout at bay. */
	for (;;) {
		_cleanup_free_ char *doc = NULL, *wire = NULL, *payload = NULL;
		size_t doc_len = 0, wire_len = 0, len = 0;
		bool failed;

		pthread_mutex_lock(&D.lock);
		if (!f->doc && !f->failed)
			wait_ms(KEEPALIVE_MS);
		failed = f->failed;
		if (f->doc && (doc = malloc(f->doc_len + 1))) {
			memcpy(doc, f->doc, f->doc_len + 1);
			doc_len = f->doc_len;
			if (f->wire && (wire = malloc(f->wire_len))) {
				memcpy(wire, f->wire, f->wire_len);
				wire_len = f->wire_len;
			}
		}
		pthread_mutex_unlock(&D.lock);
		if (failed) {
			node_proto_send(fd, NODE_MSG_ERROR, f->error ? f->error : "failed",
					strlen(f->error ? f->error : "failed"), timeout);
			goto out;
		}
		if (doc) {
			r = meta_for_child(s, json_object_get(req, "bases"), doc, doc_len, wire,
					   wire_len, &payload, &len);
			if (r < 0) {
				node_proto_send(fd, NODE_MSG_ERROR, "cannot encode the manifest",
						26, timeout);
				goto out;
			}
			r = node_proto_send(fd, NODE_MSG_META, payload, len, timeout);
			if (r < 0)
				goto out;
			node_trace("meta-sent", "%s %zu bytes", peer, len);
			break;
		}
		if (feed_keepalive(fd, &last_sent_s, timeout) < 0)
			goto out;
	}
	{
		_cleanup_free_ char *payload = NULL;
		enum node_msg_type type;
		json_t *arr, *v;
		size_t len, i;

		r = node_proto_recv(fd, NODE_PROTO_MAX_PAYLOAD, timeout, &type, &payload, &len);
		if (r < 0 || type != NODE_MSG_WANT)
			goto out;
		node_trace("want-received", "%s", peer);
		/* A relay sent the META before it parsed it: the chunk table comes after. */
		for (;;) {
			bool ready, failed;

			pthread_mutex_lock(&D.lock);
			if (!f->have && !f->failed)
				wait_ms(KEEPALIVE_MS);
			ready = f->have != NULL;
			failed = f->failed;
			pthread_mutex_unlock(&D.lock);
			if (ready)
				break;
			if (failed) {
				node_proto_send(fd, NODE_MSG_ERROR, f->error, strlen(f->error),
						timeout);
				goto out;
			}
			if (feed_keepalive(fd, &last_sent_s, timeout) < 0)
				goto out;
		}
		arr = json_loadb(payload, len, 0, NULL);
		want = calloc(f->n + 1, sizeof(bool));
		owed = calloc(f->n + 1, sizeof(bool));
		order = calloc(f->n + 1, sizeof(*order));
		if (!want || !owed || !order) {
			json_decref(arr);
			goto out;
		}
		pthread_mutex_lock(&D.lock);
		json_array_foreach(arr, i, v)
		{
			json_int_t k = json_integer_value(v);

			if (k >= 0 && (size_t)k < f->n && !want[k]) {
				want[k] = owed[k] = true;
				n_want++;
				/* Chunks still to come are kept in memory for this feed. */
				if (f->pending && !f->have[k] && f->pending[k] < UINT16_MAX)
					f->pending[k]++;
				else
					owed[k] = false;
			}
		}
		pthread_mutex_unlock(&D.lock);
		json_decref(arr);
	}
	while (sent < n_want) {
		size_t ready = 0;
		bool failed;

		pthread_mutex_lock(&D.lock);
		for (size_t i = 0; i < f->n; i++)
			if (want[i] && f->have[i]) {
				order[ready++] = (uint32_t)i;
				want[i] = false;
			}
		failed = f->failed;
		if (!ready && !failed)
			wait_ms(KEEPALIVE_MS);
		pthread_mutex_unlock(&D.lock);
		if (!ready && failed) {
			node_proto_send(fd, NODE_MSG_ERROR, f->error, strlen(f->error), timeout);
			goto out;
		}
		if (!ready && feed_keepalive(fd, &last_sent_s, timeout) < 0)
			goto out;
		for (size_t k = 0; k < ready; k++) {
			_cleanup_free_ char *buf = NULL;
			size_t i = order[k], off = 0, len = 0;
			struct iovec iov[2];

			/* From memory when it was kept for us (the last feed to want it takes
			 * it), from the store otherwise. */
			pthread_mutex_lock(&D.lock);
			if (owed[i] && f->stash[i].buf) {
				struct stashed *st = &f->stash[i];

				len = st->len;
				if (f->pending[i] == 1) {
					buf = TAKE_PTR(st->buf);
					off = st->off;
					f->stash_bytes -= len;
					*st = (struct stashed){0};
				} else if ((buf = malloc(len + 1)))
					memcpy(buf, st->buf + st->off, len);
			}
			pthread_mutex_unlock(&D.lock);
			if (!buf) {
				void *data = NULL;

				r = store_get_compressed_chunk(s, f->refs[i].id, &data, &len);
				if (r < 0) {
					node_proto_send(fd, NODE_MSG_ERROR, "chunk unreadable here",
							21, timeout);
					goto out;
				}
				buf = data;
			}
			iov[0] = (struct iovec){.iov_base = &order[k], .iov_len = 4};
			iov[1] = (struct iovec){.iov_base = buf + off, .iov_len = len};
			node_trace("chunk-send", "%zu %s", i, peer);
			r = node_proto_sendv(fd, NODE_MSG_CHUNK, iov, 2, timeout);
			if (r < 0)
				goto out;
			node_trace("chunk-sent", "%zu %s", i, peer);
			last_sent_s = time_now_s();
			pthread_mutex_lock(&D.lock);
			count(D.sent, peer, len);
			if (owed[i]) {
				owed[i] = false;
				fetch_release(f, i);
			}
			pthread_mutex_unlock(&D.lock);
			sent++;
		}
	}
	node_proto_send(fd, NODE_MSG_END, NULL, 0, timeout);
	node_trace("end-sent", "%s", peer);
out:
	free(want);
	free(order);
	hostlist_free(hosts, n_hosts);
	if (f) {
		pthread_mutex_lock(&D.lock);
		for (size_t i = 0; owed && i < f->n; i++)
			if (owed[i])
				fetch_release(f, i);
		fetch_unref(f);
		pthread_mutex_unlock(&D.lock);
	}
	free(owed);
	store_close(s);
}

struct conn {
	int fd;
	bool local;
	char peer[64];
};

static bool uid_allowed(uid_t uid)
{
	return uid == 0 || (D.o->slurm_uid != (uid_t)-1 && uid == D.o->slurm_uid);
}

static void refuse(int fd, const char *why)
{
	_cleanup_free_ char *text = NULL;
	json_t *reply = reply_error("refused: %s", why);

	pthread_mutex_lock(&D.lock);
	D.refused++;
	pthread_mutex_unlock(&D.lock);
	log_warning("refused a request: %s", why);
	text = json_dumps(reply, JSON_COMPACT);
	json_decref(reply);
	node_proto_send(fd, NODE_MSG_REPLY, text, strlen(text), 5000);
}

static void *conn_thread(void *arg)
{
	struct conn *c = arg;
	_cleanup_free_ char *payload = NULL, *body = NULL, *error = NULL, *text = NULL;
	enum node_msg_type type;
	char peek[4];
	json_t *req = NULL, *reply = NULL;
	const char *op;
	size_t len;
	int r;

	r = (int)recv(c->fd, peek, 4, MSG_PEEK | MSG_WAITALL);
	if (r == 4 && !c->local && memcmp(peek, "GET ", 4) == 0) {
		/* Prometheus scrapes GET /metrics; nothing else is served over HTTP. */
		char buf[1024];
		_cleanup_free_ char *m = NULL, *resp = NULL;

		r = (int)recv(c->fd, buf, sizeof(buf) - 1, 0);
		m = metrics_text();
		if (m && asprintf(&resp,
				  "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
				  "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
				  strlen(m), m) >= 0)
			fs_write_all(c->fd, resp, strlen(resp));
		goto out;
	}
	node_trace("conn", "%s", c->local ? "local" : c->peer);
	r = node_proto_recv(c->fd, REQUEST_MAX, 10000, &type, &payload, &len);
	if (r < 0)
		goto out;
	node_trace("request", "%u %zu bytes", (unsigned)type, len);
	if (c->local) {
		struct ucred cred;
		socklen_t cl = sizeof(cred);

		if (type != NODE_MSG_REQUEST ||
		    getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
		    !uid_allowed(cred.uid)) {
			refuse(c->fd, "only root or the Slurm user may use the node's socket");
			goto out;
		}
		body = TAKE_PTR(payload);
	} else {
		uid_t uid;
		gid_t gid;

		if (type != NODE_MSG_REQUEST_MUNGE) {
			refuse(c->fd, "peers must send a MUNGE credential");
			goto out;
		}
		r = node_auth_decode(D.o->munge_socket, payload, &body, &len, &uid, &gid, &error);
		if (r < 0) {
			refuse(c->fd, error ? error : "bad MUNGE credential");
			goto out;
		}
		if (!uid_allowed(uid)) {
			refuse(c->fd, "the credential's uid is neither root nor the Slurm user");
			goto out;
		}
		node_trace("auth", "%s uid %u", c->peer, (unsigned)uid);
	}
	req = json_loads(body, 0, NULL);
	op = json_string_value(json_object_get(req, "op"));
	if (!op)
		reply = reply_error("a request is a JSON object with \"op\"");
	else if (strcmp(op, "present") == 0)
		reply = do_present(req);
	else if (strcmp(op, "release") == 0)
		reply = do_release(req);
	else if (strcmp(op, "has") == 0) {
		const char *ref = json_string_value(json_object_get(req, "ref"));
		size_t held = 0;

		pthread_mutex_lock(&D.lock);
		for (struct fetch *f = D.fetches; ref && f; f = f->next)
			if (strcmp(f->ref, ref) == 0)
				held = fetch_held(f);
		reply = json_pack("{s:b, s:b, s:I}", "ok", 1, "cached", ref && cached_find(ref),
				  "held", (json_int_t)held);
		pthread_mutex_unlock(&D.lock);
	} else if (strcmp(op, "metrics") == 0) {
		_cleanup_free_ char *m = metrics_text();

		reply = json_pack("{s:b, s:s}", "ok", 1, "metrics", m ? m : "");
	} else if (strcmp(op, "feed") == 0 && !c->local) {
		const char *from = json_string_value(json_object_get(req, "from"));
		char label[64];

		/* The peer's own name, when it gives one, labels the metric; its address
		 * otherwise. */
		snprintf(label, sizeof(label), "%s", from && strlen(from) < 40 ? from : c->peer);
		for (char *q = label; *q; q++)
			if (!isalnum((unsigned char)*q) && *q != '-' && *q != '.' && *q != '_')
				*q = '_';
		do_feed(c->fd, req, label);
		goto out;
	} else
		reply = reply_error("unknown op \"%s\" (present, release, has, metrics)", op);
	text = json_dumps(reply, JSON_COMPACT);
	if (text)
		node_proto_send(c->fd, NODE_MSG_REPLY, text, strlen(text), 10000);
out:
	json_decref(req);
	json_decref(reply);
	close(c->fd);
	pthread_mutex_lock(&D.lock);
	D.connections--;
	pthread_mutex_unlock(&D.lock);
	free(c);
	return NULL;
}

static int listen_tcp(const char *addr, int *ret_fd)
{
	_cleanup_free_ char *host = strdup(addr);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	_cleanup_close_ int fd = -1;
	char *colon = host ? strrchr(host, ':') : NULL;
	int one = 1;

	if (!colon)
		return -EINVAL;
	*colon = 0;
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		return -EINVAL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 128) < 0)
		return -errno;
	*ret_fd = TAKE_FD(fd);
	return 0;
}

/* Anyone may connect: every request is checked by its SO_PEERCRED uid. */
static int listen_unix(const char *path, int *ret_fd)
{
	return sock_listen_unix(path, SOCK_STREAM, 0666, 64, ret_fd);
}

static void accept_one(int lfd, bool local)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof(sa);
	struct conn *c;
	pthread_t t;
	pthread_attr_t attr;
	int fd =
	    accept4(lfd, local ? NULL : (struct sockaddr *)&sa, local ? NULL : &sl, SOCK_CLOEXEC);

	if (fd < 0)
		return;
	pthread_mutex_lock(&D.lock);
	if (D.connections >= MAX_CONNECTIONS) {
		pthread_mutex_unlock(&D.lock);
		close(fd);
		return;
	}
	D.connections++;
	pthread_mutex_unlock(&D.lock);
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->fd = fd;
	c->local = local;
	if (!local)
		inet_ntop(AF_INET, &sa.sin_addr, c->peer, sizeof(c->peer));
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, conn_thread, c) != 0) {
		close(fd);
		free(c);
		pthread_mutex_lock(&D.lock);
		D.connections--;
		pthread_mutex_unlock(&D.lock);
	}
	pthread_attr_destroy(&attr);
}

int node_daemon_run(const struct node_options *o)
{
	_cleanup_close_ int tcp_fd = -1, unix_fd = -1, sig_fd = -1;
	struct store *s = NULL;
	pthread_condattr_t ca;
	sigset_t mask;
	int r;

	D.o = o;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&D.cond, &ca);
	pthread_cond_init(&D.ended, &ca);
	D.store_dir = fs_path_join(o->cache_dir, "store");
	D.state_path = fs_path_join(o->cache_dir, "state.json");
	if (!D.store_dir || !D.state_path)
		return log_error_errno(-ENOMEM, "starting the node daemon: %m");
	node_trace_open(o->name);
	r = fs_mkdir_p(o->cache_dir, 0700);
	if (r < 0)
		return log_error_errno(r, "creating the node cache %s: %m", o->cache_dir);
	r = store_open(D.store_dir, &s);
	if (r < 0)
		return log_error_errno(r, "opening the node cache %s: %m", D.store_dir);
	/* No writer of ours lives yet: temp files are a killed daemon's leftovers. */
	store_clean_tmp(s, true);
	r = state_load(s);
	store_close(s);
	if (r < 0)
		return r;
	r = listen_tcp(o->listen, &tcp_fd);
	if (r < 0)
		return log_error_errno(r, "listening on %s (give --listen IPV4:PORT): %m",
				       o->listen);
	r = listen_unix(o->socket_path, &unix_fd);
	if (r < 0)
		return log_error_errno(r, "listening on the socket %s: %m", o->socket_path);
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	sig_fd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sig_fd < 0)
		return log_error_errno(-errno, "signalfd: %m");
	if (!o->registries || !o->registries[0])
		log_warning("node %s: no --registry list: jobs may make this node pull from any "
			    "registry they name",
			    o->name ? o->name : "?");
	log_info("node %s: cache %s (max %llu bytes), listening on %s and %s",
		 o->name ? o->name : "?", o->cache_dir, (unsigned long long)o->cache_max_bytes,
		 o->listen, o->socket_path);
	for (;;) {
		struct pollfd p[3] = {{.fd = tcp_fd, .events = POLLIN},
				      {.fd = unix_fd, .events = POLLIN},
				      {.fd = sig_fd, .events = POLLIN}};

		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return log_error_errno(-errno, "poll: %m");
		}
		if (p[2].revents) {
			struct signalfd_siginfo si;

			if (read(sig_fd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo != SIGPIPE)
				break;
		}
		if (p[0].revents)
			accept_one(tcp_fd, false);
		if (p[1].revents)
			accept_one(unix_fd, true);
	}
	log_info("node %s: stopping", o->name ? o->name : "?");
	unlink(o->socket_path);
	return 0;
}
