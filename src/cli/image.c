/* `vmhpc image VERB`: one function per verb, dispatched from one table. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/select.h"
#include "registry/listing.h"
#include "registry/reference.h"
#include "image/builder.h"
#include "image/index.h"
#include "store/catalog.h"
#include "store/check.h"
#include "store/manifest.h"
#include "store/transfer.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/humanize.h"
#include "util/log.h"
#include "vm/materialize.h"

struct verb {
	const char *name;
	int (*run)(struct cli_context *ctx, int argc, char **argv);
	const char *args;
	const char *summary;
};

static const struct verb *find_verb(const char *name);

/* s with every control character (C0, DEL, C1) written as \xNN, so that text from a
 * manifest or an error about one cannot drive the terminal. Returns s itself when it is
 * clean; else a copy that lives until 8 more calls (this is a one-shot CLI). */
static const char *printable(const char *s)
{
	static char *ring[8];
	static unsigned next;
	const unsigned char *p;
	char *out, *o;
	bool clean = true;

	if (!s)
		return "?";
	for (p = (const unsigned char *)s; *p && clean; p++)
		if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
			clean = false;
	if (clean)
		return s;
	out = malloc(strlen(s) * 4 + 1);
	if (!out)
		return "(unprintable)";
	for (p = (const unsigned char *)s, o = out; *p; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			o += sprintf(o, "\\x%02x", *p);
		} else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
			o += sprintf(o, "\\xc2\\x%02x", p[1]);
			p++;
		} else {
			*o++ = (char)*p;
		}
	}
	*o = '\0';
	free(ring[next % 8]);
	ring[next++ % 8] = out;
	return out;
}

/* Parses the options every verb shares (--json, --help); returns -1 to go on, else an exit
 * code. The verb's positional arguments start at optind. */
static int parse_common(struct cli_context *ctx, int argc, char **argv, const char *verb,
			bool allow_json)
{
	static const struct option options[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const struct verb *v = find_verb(verb);
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (c) {
		case 'j':
			if (!allow_json) {
				log_error("`vmhpc image %s` has no --json", v->name);
				return 2;
			}
			ctx->json = true;
			break;
		case 'h':
			printf("usage: vmhpc image %s %s\n  %s\n", v->name, v->args, v->summary);
			return 0;
		default:
			fprintf(stderr, "usage: vmhpc image %s %s\n", v->name, v->args);
			return 2;
		}
	}
	return -1;
}

static int want_args(int argc, int min, int max, const char *verb)
{
	int n = argc - optind;
	const struct verb *v = find_verb(verb);

	if (n < min || n > max) {
		log_error("`vmhpc image %s` takes %s; see --help", verb,
			  v ? v->args : "other arguments");
		return 2;
	}
	return -1;
}

static int load_ref(struct store *s, const char *ref, struct manifest **ret)
{
	_cleanup_free_ char *name = NULL, *error = NULL;
	uint32_t version;
	int r;

	r = manifest_parse_ref(ref, &name, &version, &error);
	if (r == 0)
		r = catalog_load(s, name, version, ret, &error);
	if (r < 0)
		log_error("%s", error ? printable(error) : strerror(-r));
	return r;
}

static int parse_size(const char *text, size_t *ret)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || end == text)
		return -EINVAL;
	if (*end == 'k' || *end == 'K')
		v <<= 10, end++;
	else if (*end == 'm' || *end == 'M')
		v <<= 20, end++;
	if (*end)
		return -EINVAL;
	*ret = (size_t)v;
	return 0;
}

/* Root building through sudo reads the spec's files with the invoking user's rights
 * (SUDO_UID/SUDO_GID and that user's groups): policy decided here, passed to the builder
 * as an option. *ret_groups (caller frees) backs id->groups. Returns 1 when id was filled,
 * 0 when the build uses its own rights, -errno on a malformed SUDO_UID/SUDO_GID. */
static int sudo_identity(struct fs_identity *id, gid_t **ret_groups)
{
	const char *u = getenv("SUDO_UID"), *g = getenv("SUDO_GID");
	unsigned long uid, gid;
	struct passwd *pw;
	gid_t *groups;
	char *end;
	int n = 64;

	*ret_groups = NULL;
	if (geteuid() != 0 || !u || !g)
		return 0;
	errno = 0;
	uid = strtoul(u, &end, 10);
	if (errno || end == u || *end || uid >= UINT32_MAX)
		return -EINVAL;
	gid = strtoul(g, &end, 10);
	if (errno || end == g || *end || gid >= UINT32_MAX)
		return -EINVAL;
	if (uid == 0)
		return 0; /* root through sudo: root's own rights */
	*id = (struct fs_identity){.uid = (uid_t)uid, .gid = (gid_t)gid};
	pw = getpwuid((uid_t)uid);
	if (!pw)
		return 1; /* no name to look groups up by: the primary group only */
	for (;;) {
		int want = n;

		groups = calloc((size_t)n, sizeof(*groups));
		if (!groups)
			return -ENOMEM;
		if (getgrouplist(pw->pw_name, (gid_t)gid, groups, &n) >= 0)
			break;
		free(groups);
		if (n <= want || n > 65536)
			return -E2BIG;
	}
	id->groups = groups;
	id->n_groups = (size_t)n;
	*ret_groups = groups;
	return 1;
}

/* A build through sudo reads with the acting user's rights (sudo_identity); logs and returns
 * -EINVAL on malformed SUDO_UID/SUDO_GID. identity and *groups back opts->source_identity. */
static int use_sudo_identity(struct builder_options *opts, struct fs_identity *identity,
			     gid_t **groups)
{
	int r = sudo_identity(identity, groups);

	if (r < 0) {
		log_error(
		    "SUDO_UID/SUDO_GID ('%s'/'%s') are not user and group numbers; unset them "
		    "or run through sudo",
		    getenv("SUDO_UID"), getenv("SUDO_GID"));
		return -EINVAL;
	}
	if (r > 0)
		opts->source_identity = identity;
	return 0;
}

/* What `build` and `update` both give the builder: its options (defaults until the verb
 * changes them), the helper binaries beside vmhpc, the sudo caller's identity and the store. */
struct build_setup {
	struct builder_options opts;
	char *init, *exec, *kconfig;
	struct fs_identity identity;
	gid_t *groups;
	struct store *s;
};

static void build_setup_init(const struct cli_context *ctx, struct build_setup *b)
{
	*b = (struct build_setup){.opts = {.cache_dir = ctx->cache_dir,
					   .compression_level = BUILDER_COMPRESSION_LEVEL_DEFAULT,
					   .progress = isatty(STDERR_FILENO)}};
	chunker_params_default(&b->opts.chunking);
}

/* Fills in the paths and the identity and opens the store; returns -1 to go on, else an exit
 * code (logged). b must not move afterwards: opts points into it. */
static int build_setup_open(struct cli_context *ctx, struct build_setup *b)
{
	b->init = cli_sibling_path("VMHPC_INIT", "vmhpc-init");
	b->exec = cli_sibling_path("VMHPC_EXEC", "vmhpc-exec");
	b->kconfig = cli_kernel_config_path();
	b->opts.init_path = b->init;
	b->opts.exec_path = b->exec;
	b->opts.kernel_config = b->kconfig;
	if (use_sudo_identity(&b->opts, &b->identity, &b->groups) < 0)
		return 2;
	if (cli_open_store(ctx, &b->s) < 0)
		return 1;
	return -1;
}

static void build_setup_done(struct build_setup *b)
{
	free(b->init);
	free(b->exec);
	free(b->kconfig);
	free(b->groups);
	store_close(b->s);
}

static int verb_build(struct cli_context *ctx, int argc, char **argv)
{
	static const struct option options[] = {
	    {"chunk-min", required_argument, NULL, 'n'},
	    {"chunk-avg", required_argument, NULL, 'a'},
	    {"chunk-max", required_argument, NULL, 'x'},
	    {"level", required_argument, NULL, 'l'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct build_setup setup;
	struct builder_options *opts = &setup.opts;
	struct builder_result res = {0};
	_cleanup_free_ char *error = NULL;
	char b[5][HUMANIZE_BYTES_LEN];
	int c, r, code = 2;

	build_setup_init(ctx, &setup);
	optind = 0;
	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		size_t *field = c == 'n'   ? &opts->chunking.min_bytes
				: c == 'a' ? &opts->chunking.avg_bytes
				: c == 'x' ? &opts->chunking.max_bytes
					   : NULL;

		if (c == 'l') {
			char *end;
			long level = strtol(optarg, &end, 10);

			if (*end || end == optarg || level < 1 || level > 19) {
				log_error("--level '%s' is not a zstd level from 1 to 19", optarg);
				return 2;
			}
			opts->compression_level = (int)level;
			continue;
		}
		if (c == 'h') {
			printf("usage: vmhpc image build [--level 1-19] [--chunk-min N] "
			       "[--chunk-avg N] "
			       "[--chunk-max N] SPEC\n"
			       "  builds an image version from SPEC (see docs/image-spec.md)\n");
			return 0;
		}
		if (!field)
			return 2;
		if (parse_size(optarg, field) < 0) {
			log_error("--chunk-%s '%s' is not a size (e.g. 65536, 64k, 1M)",
				  c == 'n'   ? "min"
				  : c == 'a' ? "avg"
					     : "max",
				  optarg);
			return 2;
		}
	}
	if (want_args(argc, 1, 1, "build") >= 0)
		return 2;
	if (chunker_params_validate(&opts->chunking) < 0) {
		log_error(
		    "chunk sizes %zu/%zu/%zu are not usable: min <= avg <= max, avg a power of "
		    "two, between %u bytes and %u MiB",
		    opts->chunking.min_bytes, opts->chunking.avg_bytes, opts->chunking.max_bytes,
		    CHUNKER_MIN_BYTES_LIMIT, CHUNKER_MAX_BYTES_LIMIT >> 20);
		return 2;
	}
	opts->spec_path = argv[optind];
	code = build_setup_open(ctx, &setup);
	if (code >= 0)
		goto out;
	code = 1;
	r = builder_build(setup.s, opts, &res, &error);
	if (r < 0) {
		log_error("%s", error ? error : strerror(-r));
		goto out;
	}
	printf("built %s:%u\n", res.name, res.version);
	printf("  kernel     %10s\n", humanize_bytes(res.plain_bytes[MANIFEST_PART_KERNEL], b[0]));
	printf("  initramfs  %10s\n",
	       humanize_bytes(res.plain_bytes[MANIFEST_PART_INITRAMFS], b[1]));
	printf("  root       %10s  (ext4; %s in %" PRIu64 " entries)\n",
	       humanize_bytes(res.plain_bytes[MANIFEST_PART_ROOT], b[2]),
	       humanize_bytes(res.root_content_bytes, b[3]), res.n_files);
	printf("  stored     %10s  (%s new in this build)\n",
	       humanize_bytes(res.stored_total_bytes, b[4]),
	       humanize_bytes(res.stored_new_bytes, b[0]));
	code = 0;
out:
	builder_result_done(&res);
	build_setup_done(&setup);
	return code;
}

/* Stored and unique bytes of each listed version. */
struct usage {
	uint64_t stored_bytes;
	uint64_t unique_bytes;
	struct manifest *m;
	char *error;
	struct store_chunk_ref *refs; /* the version's distinct chunks */
	size_t n_refs;
};

struct chunk_count {
	uint8_t id[STORE_ID_BYTES];
	uint32_t versions;
	uint64_t stored_bytes;
};

static int compare_count(const void *a, const void *b)
{
	return memcmp(a, b, STORE_ID_BYTES);
}

static struct chunk_count *find_count(struct chunk_count *counts, size_t n, const uint8_t *id)
{
	return bsearch(id, counts, n, sizeof(*counts), compare_count);
}

static int compute_usage(struct store *s, struct catalog_entry *entries, size_t n,
			 struct usage *usage)
{
	_cleanup_free_ struct chunk_count *counts = NULL;
	size_t n_counts = 0, out = 0;

	for (size_t i = 0; i < n; i++) {
		struct chunk_count *grown;

		if (catalog_load(s, entries[i].name, entries[i].version, &usage[i].m,
				 &usage[i].error) < 0)
			continue;
		if (manifest_distinct_chunks(usage[i].m, &usage[i].refs, &usage[i].n_refs) < 0)
			return -ENOMEM;
		grown = realloc(counts, (n_counts + usage[i].n_refs + 1) * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		counts = grown;
		for (size_t j = 0; j < usage[i].n_refs; j++) {
			memcpy(counts[n_counts].id, usage[i].refs[j].id, STORE_ID_BYTES);
			counts[n_counts].versions = 1;
			counts[n_counts++].stored_bytes = 0;
		}
	}
	if (n_counts > 0)
		qsort(counts, n_counts, sizeof(*counts), compare_count);
	for (size_t i = 0; i < n_counts; i++) {
		if (out > 0 && memcmp(counts[out - 1].id, counts[i].id, STORE_ID_BYTES) == 0) {
			counts[out - 1].versions++;
			continue;
		}
		counts[out] = counts[i];
		store_chunk_stored_bytes(s, counts[out].id, &counts[out].stored_bytes);
		out++;
	}
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < usage[i].n_refs; j++) {
			struct chunk_count *cc = find_count(counts, out, usage[i].refs[j].id);

			if (!cc)
				continue;
			usage[i].stored_bytes += cc->stored_bytes;
			if (cc->versions == 1)
				usage[i].unique_bytes += cc->stored_bytes;
		}
	}
	return 0;
}

static int verb_list(struct cli_context *ctx, int argc, char **argv)
{
	struct catalog_entry *entries = NULL;
	struct usage *usage = NULL;
	struct store *s = NULL;
	size_t n = 0;
	int r, code = parse_common(ctx, argc, argv, "list", true);

	if (code >= 0)
		return code;
	if (want_args(argc, 0, 0, "list") >= 0)
		return 2;
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	r = catalog_list(s, &entries, &n);
	usage = calloc(n + 1, sizeof(*usage));
	if (r == 0 && !usage)
		r = -ENOMEM;
	if (r == 0)
		r = compute_usage(s, entries, n, usage);
	if (r < 0) {
		log_error_errno(r, "listing the images in %s: %m", store_path(s));
		code = 1;
		goto out;
	}
	if (ctx->json) {
		json_t *arr = json_array();

		for (size_t i = 0; i < n; i++)
			json_array_append_new(
			    arr,
			    json_pack("{s:s, s:i, s:I, s:I, s:I, s:s?}", "name", entries[i].name,
				      "version", (int)entries[i].version, "stored_bytes",
				      (json_int_t)usage[i].stored_bytes, "unique_bytes",
				      (json_int_t)usage[i].unique_bytes, "created",
				      (json_int_t)(usage[i].m ? usage[i].m->created_s : 0), "error",
				      usage[i].error));
		json_dumpf(arr, stdout, JSON_INDENT(2));
		putchar('\n');
		json_decref(arr);
	} else {
		printf("%-24s %7s %10s %10s  %s\n", "NAME", "VERSION", "STORED", "UNIQUE",
		       "CREATED");
		for (size_t i = 0; i < n; i++) {
			char b1[HUMANIZE_BYTES_LEN], b2[HUMANIZE_BYTES_LEN], t[HUMANIZE_TIME_LEN];

			if (!usage[i].m) {
				printf("%-24s %7u %10s %10s  damaged: %s\n", entries[i].name,
				       entries[i].version, "-", "-", printable(usage[i].error));
				continue;
			}
			printf("%-24s %7u %10s %10s  %s\n", entries[i].name, entries[i].version,
			       humanize_bytes(usage[i].stored_bytes, b1),
			       humanize_bytes(usage[i].unique_bytes, b2),
			       humanize_time((time_t)usage[i].m->created_s, t));
		}
	}
	code = 0;
out:
	for (size_t i = 0; usage && i < n; i++) {
		manifest_free(usage[i].m);
		free(usage[i].error);
		free(usage[i].refs);
	}
	free(usage);
	catalog_entries_free(entries, n);
	store_close(s);
	return code;
}

static void print_string_map(const char *title, json_t *obj)
{
	const char *key;
	json_t *value;

	if (!json_is_object(obj) || json_object_size(obj) == 0)
		return;
	printf("%s:\n", title);
	json_object_foreach(obj, key, value)
	{
		if (json_is_string(value))
			printf("  %-32s %s\n", printable(key), printable(json_string_value(value)));
		else if (json_is_object(value))
			printf(
			    "  %-32s %s %s (%s)\n", printable(key),
			    printable(json_string_value(json_object_get(value, "file")) ?: ""),
			    printable(json_string_value(json_object_get(value, "version")) ?: ""),
			    printable(json_string_value(json_object_get(value, "source")) ?: ""));
		else
			printf("  %-32s -\n", printable(key));
	}
}

static int verb_show(struct cli_context *ctx, int argc, char **argv)
{
	struct manifest *m = NULL;
	struct store *s = NULL;
	int code = parse_common(ctx, argc, argv, "show", true);

	if (code >= 0)
		return code;
	if (want_args(argc, 1, 1, "show") >= 0)
		return 2;
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	if (load_ref(s, argv[optind], &m) < 0) {
		store_close(s);
		return 1;
	}
	if (ctx->json) {
		json_t *parts = json_object();

		for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
			json_object_set_new(
			    parts, manifest_part_kind_to_string((enum manifest_part_kind)p),
			    json_pack("{s:I, s:I}", "size_bytes",
				      (json_int_t)m->parts[p].size_bytes, "chunks",
				      (json_int_t)m->parts[p].n_chunks));
		json_t *out = json_pack("{s:s, s:i, s:I, s:s, s:s, s:O, s:o}", "name", m->name,
					"version", (int)m->version, "created",
					(json_int_t)m->created_s, "owner", m->owner, "boot_args",
					m->boot_args, "metadata", m->metadata, "parts", parts);
		json_dumpf(out, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
		putchar('\n');
		json_decref(out);
	} else {
		char t[HUMANIZE_TIME_LEN], b[HUMANIZE_BYTES_LEN];
		json_t *md = m->metadata;

		printf("image      %s:%u\n", m->name, m->version);
		/* The manifest parser refuses control characters; printable() keeps this
		 * safe even if one slipped through. */
		printf("created    %s by %s\n", humanize_time((time_t)m->created_s, t),
		       printable(m->owner));
		printf("os         %s\n", printable(json_string_value(json_object_get(md, "os"))));
		printf("arch       %s\n",
		       printable(json_string_value(json_object_get(md, "arch"))));
		printf("kernel     %s\n",
		       printable(json_string_value(json_object_get(md, "kernel_release"))));
		printf("boot args  %s\n", *m->boot_args ? printable(m->boot_args) : "(none)");
		if (json_string_value(json_object_get(md, "description")))
			printf("about      %s\n",
			       printable(json_string_value(json_object_get(md, "description"))));
		printf("parts:\n");
		for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
			printf("  %-10s %10s in %zu chunks\n",
			       manifest_part_kind_to_string((enum manifest_part_kind)p),
			       humanize_bytes(m->parts[p].size_bytes, b), m->parts[p].n_chunks);
		print_string_map("packages", json_object_get(md, "packages"));
		print_string_map("libraries", json_object_get(md, "libraries"));
		print_string_map("files from this machine", json_object_get(md, "host_files"));
	}
	manifest_free(m);
	store_close(s);
	return 0;
}

/* A version belongs to who built it. In a store shared through sudo (root's, used for many
 * users), the user sudo acts for may remove only their own versions; root itself (not
 * through sudo) may remove all, and a user's own store is all theirs. Logs and returns
 * -EPERM when refused; 0 (also when the version is missing: the caller says so). */
static int check_owner(struct store *s, const char *name, uint32_t version)
{
	const char *sudo_uid = getenv("SUDO_UID");
	struct manifest *m = NULL;
	struct passwd *pw;
	int r = 0;

	if (geteuid() != 0 || !sudo_uid || catalog_load(s, name, version, &m, NULL) < 0)
		return 0;
	pw = getpwuid((uid_t)strtoul(sudo_uid, NULL, 10));
	if (!pw || strcmp(pw->pw_name, m->owner) != 0) {
		log_error("%s:%u belongs to %s, not to %s for whom sudo runs this; ask its "
			  "owner, or remove it as root without sudo",
			  name, version, printable(m->owner), pw ? pw->pw_name : sudo_uid);
		r = -EPERM;
	}
	manifest_free(m);
	return r;
}

static int verb_rm(struct cli_context *ctx, int argc, char **argv)
{
	_cleanup_free_ char *name = NULL, *error = NULL;
	struct store *s = NULL;
	uint32_t version;
	int r, code = parse_common(ctx, argc, argv, "rm", false);

	if (code >= 0)
		return code;
	if (want_args(argc, 1, 1, "rm") >= 0)
		return 2;
	if (manifest_parse_ref(argv[optind], &name, &version, &error) < 0) {
		log_error("%s", error);
		return 2;
	}
	if (version == 0) {
		log_error("say which version of '%s' to remove: `vmhpc image rm %s:VERSION` (see "
			  "`vmhpc image list`)",
			  name, name);
		return 2;
	}
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	r = check_owner(s, name, version);
	if (r < 0) {
		store_close(s);
		return 1;
	}
	r = catalog_remove(s, name, version);
	if (r == -ENOENT)
		log_error("there is no image %s:%u; see `vmhpc image list`", name, version);
	else if (r < 0)
		log_error_errno(r, "removing %s:%u from %s: %m", name, version, store_path(s));
	else
		printf("removed %s:%u (its chunks go with `vmhpc image gc`)\n", name, version);
	store_close(s);
	return r < 0 ? 1 : 0;
}

/* Checks this node's cached copies of every version's parts (`vmhpc run` keeps them in
 * CACHE/node) and removes damaged ones, which the next run writes again from the store.
 * Returns the number repaired or -errno (logged). */
static int verify_node_cache(const struct cli_context *ctx, struct store *s)
{
	_cleanup_free_ char *node = fs_path_join(ctx->cache_dir, "node");
	struct catalog_entry *entries = NULL;
	size_t n = 0;
	int r, repaired = 0;

	if (!node)
		return -ENOMEM;
	if (!fs_exists(node))
		return 0;
	r = catalog_list(s, &entries, &n);
	if (r < 0)
		return log_error_errno(r, "listing the images in %s: %m", store_path(s));
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *error = NULL;
		struct manifest *m = NULL;
		unsigned damaged = 0;

		if (catalog_load(s, entries[i].name, entries[i].version, &m, NULL) < 0)
			continue; /* reported by the store's check */
		r = materialize_check(m, node, true, &damaged, &error);
		manifest_free(m);
		if (r < 0) {
			log_error("%s", error ? error : strerror(-r));
			break;
		}
		if (damaged > 0)
			printf("node cache %s: %u damaged part%s of %s:%u removed; the next run "
			       "writes %s again\n",
			       node, damaged, damaged == 1 ? "" : "s", entries[i].name,
			       entries[i].version, damaged == 1 ? "it" : "them");
		repaired += (int)damaged;
	}
	catalog_entries_free(entries, n);
	return r < 0 ? r : repaired;
}

static int verb_verify(struct cli_context *ctx, int argc, char **argv)
{
	struct check_verify_result res = {0};
	struct store *s = NULL;
	char b[HUMANIZE_BYTES_LEN];
	int r, code = parse_common(ctx, argc, argv, "verify", false);

	if (code >= 0)
		return code;
	if (want_args(argc, 0, 0, "verify") >= 0)
		return 2;
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	r = check_verify(s, &res);
	if (r < 0) {
		log_error_errno(r, "verifying %s: %m", store_path(s));
		store_close(s);
		return 1;
	}
	for (size_t i = 0; i < res.n_problems; i++) {
		const struct check_problem *p = &res.problems[i];

		if (p->kind == CHECK_MANIFEST_DAMAGED)
			printf("manifest %s\n", printable(p->detail));
		else
			printf("chunk %s: %s; %s%s\n", p->id_hex,
			       check_problem_kind_to_string(p->kind),
			       *p->images ? "breaks " : "used by no image", p->images);
	}
	r = verify_node_cache(ctx, s);
	if (r < 0) {
		check_verify_result_done(&res);
		store_close(s);
		return 1;
	}
	printf("checked %" PRIu64 " chunks (%s) of %zu image versions: %zu problem%s\n",
	       res.chunks_checked, humanize_bytes(res.plain_bytes_checked, b), res.n_images,
	       res.n_problems, res.n_problems == 1 ? "" : "s");
	if (res.n_problems > 0)
		fprintf(stderr, "vmhpc: the store has damage: remove the broken versions with "
				"`vmhpc image rm`, or rebuild or import them again\n");
	code = res.n_problems > 0 ? 1 : 0;
	check_verify_result_done(&res);
	store_close(s);
	return code;
}

static int verb_gc(struct cli_context *ctx, int argc, char **argv)
{
	struct check_gc_result res = {0};
	_cleanup_free_ char *error = NULL;
	struct store *s = NULL;
	char b[HUMANIZE_BYTES_LEN];
	int r, code = parse_common(ctx, argc, argv, "gc", false);

	if (code >= 0)
		return code;
	if (want_args(argc, 0, 0, "gc") >= 0)
		return 2;
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	builder_clean_stale(s);
	r = check_gc(s, &res, &error);
	if (r < 0)
		log_error("gc of %s: %s", store_path(s), error ? error : strerror(-r));
	else
		printf("removed %" PRIu64 " unused chunks (%s); %" PRIu64 " chunks in use\n",
		       res.chunks_removed, humanize_bytes(res.bytes_freed, b), res.chunks_kept);
	store_close(s);
	return r < 0 ? 1 : 0;
}

/* Opens where a verb writes its bytes. A regular file (or a new one) is written to a new
 * temp file beside it (random name, O_EXCL: a link planted at the temp name is never
 * followed) and renamed by close_output() only when complete; a device or pipe such as
 * /dev/null is written in place (renaming onto it would replace it). Without a path:
 * stdout. *ret_tmp (caller frees) is the temp path, or NULL. */
static int open_output(const char *path, char **ret_tmp, int *ret_fd)
{
	struct stat sb;
	int fd, r;

	*ret_tmp = NULL;
	if (!path) {
		*ret_fd = STDOUT_FILENO;
		return 0;
	}
	if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)) {
		fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
		if (fd < 0)
			return log_error_errno(-errno, "cannot write %s: %m", path);
		*ret_fd = fd;
		return 0;
	}
	/* 0600: an image may hold files only its builder could read (docs/store.md). */
	r = fs_open_temp_beside(path, 0600, ret_tmp, ret_fd);
	if (r < 0)
		return log_error_errno(r, "cannot write %s (a temp file beside it): %m", path);
	return 0;
}

/* Finishes what open_output() began: on success (r == 0) makes the file durable and gives
 * it its name; on failure removes the temp file. Returns r or the new error. */
static int close_output(int fd, const char *tmp, const char *path, int r)
{
	if (fd == STDOUT_FILENO || fd < 0)
		return r;
	if (tmp && r == 0 && (fsync(fd) < 0 || rename(tmp, path) < 0))
		r = log_error_errno(-errno, "cannot write %s: %m", path);
	close(fd);
	if (tmp && r < 0)
		unlink(tmp);
	return r;
}

static int verb_export(struct cli_context *ctx, int argc, char **argv)
{
	static const struct option options[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	_cleanup_free_ char *name = NULL, *error = NULL, *tmp = NULL;
	const char *output = NULL;
	struct store *s = NULL;
	uint32_t version;
	int c, fd = STDOUT_FILENO, r;

	optind = 0;
	while ((c = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
		if (c == 'o')
			output = optarg;
		else if (c == 'h') {
			printf(
			    "usage: vmhpc image export NAME[:VERSION] [-o FILE]\n"
			    "  writes one image version as a tar stream (to stdout without -o)\n");
			return 0;
		} else
			return 2;
	}
	if (want_args(argc, 1, 1, "export") >= 0)
		return 2;
	if (manifest_parse_ref(argv[optind], &name, &version, &error) < 0) {
		log_error("%s", error);
		return 2;
	}
	if (!output && isatty(STDOUT_FILENO)) {
		log_error("refusing to write a tar stream to a terminal; use -o FILE or a pipe");
		return 2;
	}
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	r = open_output(output, &tmp, &fd);
	if (r < 0) {
		store_close(s);
		return 1;
	}
	r = transfer_export(s, name, version, fd, &error);
	if (r < 0)
		log_error("%s", error ? error : strerror(-r));
	r = close_output(fd, tmp, output, r);
	store_close(s);
	return r < 0 ? 1 : 0;
}

static int verb_import(struct cli_context *ctx, int argc, char **argv)
{
	_cleanup_free_ char *name = NULL, *error = NULL;
	_cleanup_close_ int fd = -1;
	struct store *s = NULL;
	uint32_t version = 0;
	int r, code = parse_common(ctx, argc, argv, "import", false);

	if (code >= 0)
		return code;
	if (want_args(argc, 0, 1, "import") >= 0)
		return 2;
	if (optind < argc) {
		fd = open(argv[optind], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			log_error_errno(-errno, "cannot read %s: %m", argv[optind]);
			return 1;
		}
	} else if (isatty(STDIN_FILENO)) {
		log_error("give a file made by `vmhpc image export`, or pipe one in");
		return 2;
	}
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	r = transfer_import(s, fd >= 0 ? fd : STDIN_FILENO, &name, &version, &error);
	if (r < 0)
		log_error("%s", error ? printable(error) : strerror(-r));
	else
		printf("imported %s:%u\n", name, version);
	store_close(s);
	return r < 0 ? 1 : 0;
}

static void mode_string(const char *type, int mode, char out[11])
{
	static const char rwx[] = "rwxrwxrwx";

	out[0] = type[0] == 'd' ? 'd' : type[0] == 'l' ? 'l' : '-';
	for (int i = 0; i < 9; i++)
		out[i + 1] = (mode & (0400 >> i)) ? rwx[i] : '-';
	if (mode & 04000)
		out[3] = out[3] == 'x' ? 's' : 'S';
	if (mode & 01000)
		out[9] = out[9] == 'x' ? 't' : 'T';
	out[10] = '\0';
}

static bool under(const char *path, const char *prefix)
{
	size_t n = strlen(prefix);

	if (strcmp(prefix, "/") == 0)
		return true;
	while (n > 1 && prefix[n - 1] == '/')
		n--;
	return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

static int verb_ls(struct cli_context *ctx, int argc, char **argv)
{
	_cleanup_free_ char *error = NULL;
	struct manifest *m = NULL;
	struct store *s = NULL;
	struct image_index *index = NULL;
	json_t *out = NULL;
	const char *prefix;
	size_t shown = 0;
	int r, code = parse_common(ctx, argc, argv, "ls", true);

	if (code >= 0)
		return code;
	if (want_args(argc, 1, 2, "ls") >= 0)
		return 2;
	prefix = optind + 1 < argc ? argv[optind + 1] : "/";
	if (prefix[0] != '/') {
		log_error("path '%s' must be absolute (as in the image), e.g. /usr/bin", prefix);
		return 2;
	}
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	code = 1;
	if (load_ref(s, argv[optind], &m) < 0)
		goto out;
	r = image_index_load(s, m, &index, &error);
	if (r < 0) {
		log_error("%s", error ? error : strerror(-r));
		goto out;
	}
	out = json_array();
	for (size_t i = 0; i < image_index_count(index); i++) {
		const struct image_index_entry *e = image_index_at(index, i);
		char mode[11];

		if (!under(e->path, prefix))
			continue;
		shown++;
		if (ctx->json) {
			json_t *o =
			    json_pack("{s:s, s:s, s:i, s:I}", "path", e->path, "type", e->type,
				      "mode", (int)e->mode, "size", (json_int_t)e->size_bytes);

			if (o && e->target)
				json_object_set_new(o, "target", json_string(e->target));
			if (o && e->source)
				json_object_set_new(o, "source", json_string(e->source));
			json_array_append_new(out, o);
			continue;
		}
		mode_string(e->type, (int)e->mode, mode);
		/* Paths come from the image, which may be someone else's: no terminal control. */
		printf("%s %10" PRIu64 " %s%s%s  [%s]\n", mode, e->size_bytes, printable(e->path),
		       e->target ? " -> " : "", e->target ? printable(e->target) : "",
		       printable(e->source));
	}
	if (ctx->json) {
		json_dumpf(out, stdout, JSON_INDENT(1));
		putchar('\n');
	}
	if (shown == 0 && strcmp(prefix, "/") != 0) {
		log_error("%s:%u has no %s; try `vmhpc image ls %s:%u /`", m->name, m->version,
			  prefix, m->name, m->version);
		goto out;
	}
	code = 0;
out:
	json_decref(out);
	image_index_free(index);
	manifest_free(m);
	store_close(s);
	return code;
}

static int verb_cat(struct cli_context *ctx, int argc, char **argv)
{
	static const struct option options[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	_cleanup_free_ char *tmp = NULL;
	const char *output = NULL;
	struct manifest *m = NULL;
	struct store *s = NULL;
	int c, fd = STDOUT_FILENO, r, part = -1;

	optind = 0;
	while ((c = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
		if (c == 'o')
			output = optarg;
		else if (c == 'h') {
			printf("usage: vmhpc image cat NAME[:VERSION] kernel|initramfs|root|index "
			       "[-o FILE]\n"
			       "  writes one part's bytes, verified chunk by chunk\n");
			return 0;
		} else
			return 2;
	}
	if (want_args(argc, 2, 2, "cat") >= 0)
		return 2;
	for (int p = 0; p < _MANIFEST_PART_KIND_MAX; p++)
		if (strcmp(argv[optind + 1],
			   manifest_part_kind_to_string((enum manifest_part_kind)p)) == 0)
			part = p;
	if (part < 0) {
		log_error("unknown part '%s'; use kernel, initramfs, root or index",
			  argv[optind + 1]);
		return 2;
	}
	if (!output && isatty(STDOUT_FILENO)) {
		log_error("refusing to write binary data to a terminal; use -o FILE or a pipe");
		return 2;
	}
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	r = load_ref(s, argv[optind], &m);
	if (r == 0)
		r = open_output(output, &tmp, &fd);
	if (r == 0) {
		r = store_write_part(s, &m->parts[part], fd);
		if (r < 0)
			log_error_errno(r, "reading the %s of %s:%u: %m; run `vmhpc image verify`",
					argv[optind + 1], m->name, m->version);
		r = close_output(fd, tmp, output, r);
	}
	manifest_free(m);
	store_close(s);
	return r < 0 ? 1 : 0;
}

/* `vmhpc image match [--rank R] [--name NAME] [--json] EXPR`: the versions that satisfy EXPR,
 * best first; exit 1 with the reasons when none does. */
/* The registry's versions for `image match --registry`; NULL listing (with a warning) when
 * the registry cannot be read: matching goes on over the store. */
static int load_remote(const struct cli_context *ctx, const char *text, bool insecure,
		       struct listing *ret, char **ret_prefix)
{
	_cleanup_free_ char *error = NULL, *cache = NULL;
	struct reference *ref = NULL;
	struct oci_client *c = NULL;
	int r;

	r = reference_parse(text, &ref, &error);
	if (r < 0) {
		log_error("--registry %s: %s", text, error);
		return r;
	}
	if (asprintf(ret_prefix, "%s/%s", ref->registry, ref->repository) < 0) {
		reference_free(ref);
		return -ENOMEM;
	}
	cache = fs_path_join(ctx->cache_dir, "registry-configs");
	r = cli_registry_client(ref, insecure, &c);
	if (r == 0)
		r = listing_load(c, ref->repository, cache, ret, &error);
	if (r < 0)
		log_warning("--registry %s: %s; matching over the local store only", *ret_prefix,
			    error ? printable(error) : strerror(-r));
	else
		log_debug("%s: %zu versions (%zu other artifacts skipped), %zu configs from the "
			  "cache",
			  *ret_prefix, ret->n, ret->skipped, ret->configs_cached);
	oci_client_free(c);
	reference_free(ref);
	return r < 0 ? 1 : 0;
}

/* `vmhpc image match [--rank R] [--name NAME] [--registry REF [--insecure]] [--json] EXPR`:
 * the versions that satisfy EXPR, best first; exit 1 with the reasons when none does. */
static int verb_match(struct cli_context *ctx, int argc, char **argv)
{
	static const struct option options[] = {
	    {"rank", required_argument, NULL, 'r'},
	    {"name", required_argument, NULL, 'n'},
	    {"registry", required_argument, NULL, 'R'},
	    {"insecure", no_argument, NULL, 'k'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const struct verb *v = find_verb("match");
	const char *rank = NULL, *name = NULL, *registry = NULL;
	_cleanup_free_ char *error = NULL, *prefix = NULL;
	struct select_result res = {0};
	struct listing remote = {0};
	bool insecure = false, have_remote = false;
	struct store *s = NULL;
	int c, r, code = 1;

	optind = 0;
	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (c) {
		case 'r':
			rank = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'R':
			registry = optarg;
			break;
		case 'k':
			insecure = true;
			break;
		case 'j':
			ctx->json = true;
			break;
		case 'h':
			printf("usage: vmhpc image match %s\n  %s\n  --registry REGISTRY/REPO: its "
			       "tags "
			       "are candidates too (--insecure: plain HTTP)\n  EXPR: "
			       "docs/matching.md, "
			       "e.g. 'os == \"debian-12\" && mpich >= \"4.0.2\" && "
			       "has(\"libgfortran5\")'\n",
			       v->args, v->summary);
			return 0;
		default:
			fprintf(stderr, "usage: vmhpc image match %s\n", v->args);
			return 2;
		}
	}
	if (want_args(argc, 1, 1, "match") >= 0)
		return 2;
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	if (registry) {
		r = load_remote(ctx, registry, insecure, &remote, &prefix);
		if (r < 0) {
			code = 2;
			goto out;
		}
		have_remote = r == 0;
	}
	r = select_images_with(s, name, have_remote ? &remote : NULL, prefix, argv[optind], rank,
			       &res, &error);
	if (r < 0) {
		select_log_error(argv[optind], error ? error : strerror(-r));
		code = r == -EINVAL ? 2 : 1;
		goto out;
	}
	if (ctx->json) {
		json_t *out = json_array();

		for (size_t i = 0; i < res.n; i++) {
			json_t *e = json_pack("{s:s, s:i, s:b, s:i, s:s}", "name",
					      res.cands[i].name, "version",
					      (int)res.cands[i].version, "match", i < res.n_match,
					      "failing", res.failing[i], "why", res.why[i]);

			if (res.cands[i].where)
				json_object_set_new(e, "registry", json_string(res.cands[i].where));
			json_array_append_new(out, e);
		}
		json_dumpf(out, stdout, JSON_INDENT(2));
		putchar('\n');
		json_decref(out);
	} else if (res.n_match == 0) {
		select_print_no_match(&res, argv[optind], 20);
	}
	for (size_t i = 0; i < res.n_match && !ctx->json; i++) {
		const struct match_candidate *m = &res.cands[i];
		char t[HUMANIZE_TIME_LEN], b[HUMANIZE_BYTES_LEN], label[512];

		printf("%s\tos %s, kernel %s, %s, %s by %s\n",
		       printable(select_label(m, label, sizeof(label))),
		       printable(json_string_value(json_object_get(m->metadata, "os"))),
		       printable(json_string_value(json_object_get(m->metadata, "kernel_release"))),
		       humanize_bytes(m->size_bytes, b), humanize_time((time_t)m->created_s, t),
		       printable(m->owner));
	}
	code = res.n_match ? 0 : 1;
out:
	select_result_done(&res);
	listing_done(&remote);
	store_close(s);
	return code;
}

/* Prints the packages that differ between two versions' metadata: added, removed, changed.
 * Returns how many differ. */
static size_t print_package_changes(const json_t *from, const json_t *to)
{
	const json_t *a = json_object_get(from, "packages"), *b = json_object_get(to, "packages");
	const char *k;
	json_t *v;
	size_t n = 0;

	json_object_foreach((json_t *)a, k, v)
	{
		const char *now = json_string_value(json_object_get(b, k));

		if (!now)
			printf("  - %-32s %s\n", printable(k), printable(json_string_value(v)));
		else if (strcmp(now, json_string_value(v) ? json_string_value(v) : "") != 0)
			printf("  ~ %-32s %s -> %s\n", printable(k),
			       printable(json_string_value(v)), printable(now));
		else
			continue;
		n++;
	}
	json_object_foreach((json_t *)b, k, v)
	{
		if (json_object_get(a, k))
			continue;
		printf("  + %-32s %s\n", printable(k), printable(json_string_value(v)));
		n++;
	}
	return n;
}

/* Bytes of to's chunks that from lacks: what a node holding from must fetch to run to. */
static int bytes_to_fetch(struct store *s, const struct manifest *from, const struct manifest *to,
			  uint64_t *ret_plain, uint64_t *ret_stored, uint64_t *ret_total_stored,
			  size_t *ret_chunks)
{
	struct store_chunk_ref *fa = NULL, *tb = NULL;
	size_t na = 0, nb = 0, i = 0;
	int r;

	*ret_plain = *ret_stored = *ret_total_stored = 0;
	*ret_chunks = 0;
	r = manifest_distinct_chunks(from, &fa, &na);
	if (r == 0)
		r = manifest_distinct_chunks(to, &tb, &nb);
	/* Both sorted by id: one merge walk. */
	for (size_t j = 0; r == 0 && j < nb; j++) {
		uint64_t stored = 0;
		int c = 1;

		while (i < na && (c = memcmp(fa[i].id, tb[j].id, STORE_ID_BYTES)) < 0)
			i++;
		if (store_chunk_stored_bytes(s, tb[j].id, &stored) < 0)
			stored = tb[j].size_bytes;
		*ret_total_stored += stored;
		if (i < na && c == 0)
			continue;
		*ret_plain += tb[j].size_bytes;
		*ret_stored += stored;
		(*ret_chunks)++;
	}
	free(fa);
	free(tb);
	return r;
}

/* Prints the files that differ between two indexes (at most limit lines); returns how many. */
static size_t print_file_changes(const struct image_index *a, const struct image_index *b,
				 size_t limit)
{
	size_t i = 0, j = 0, n = 0, na = image_index_count(a), nb = image_index_count(b);
	char sz[HUMANIZE_BYTES_LEN];

	while (i < na || j < nb) {
		const struct image_index_entry *x = i < na ? image_index_at(a, i) : NULL,
					       *y = j < nb ? image_index_at(b, j) : NULL;
		int c = !x ? 1 : !y ? -1 : strcmp(x->path, y->path);
		char mark;
		const struct image_index_entry *e;

		if (c < 0) {
			mark = '-', e = x, i++;
		} else if (c > 0) {
			mark = '+', e = y, j++;
		} else {
			i++, j++;
			if (x->size_bytes == y->size_bytes && x->mode == y->mode &&
			    strcmp(x->type, y->type) == 0 &&
			    strcmp(x->target ? x->target : "", y->target ? y->target : "") == 0 &&
			    strcmp(x->source ? x->source : "", y->source ? y->source : "") == 0)
				continue;
			mark = '~', e = y;
		}
		if (n++ < limit)
			printf("  %c %s  (%s%s%s)\n", mark, printable(e->path),
			       humanize_bytes(e->size_bytes, sz), e->source ? ", " : "",
			       e->source ? printable(e->source) : "");
	}
	if (n > limit)
		printf("  ... and %zu more\n", n - limit);
	return n;
}

/* `vmhpc image diff A B`: packages, files and bytes that differ, and what a node holding A
 * must fetch to run B. */
static int verb_diff(struct cli_context *ctx, int argc, char **argv)
{
	struct manifest *a = NULL, *b = NULL;
	struct image_index *ia = NULL, *ib = NULL;
	_cleanup_free_ char *error = NULL;
	struct store *s = NULL;
	uint64_t plain, stored, total;
	size_t chunks, n;
	char b1[HUMANIZE_BYTES_LEN], b2[HUMANIZE_BYTES_LEN], b3[HUMANIZE_BYTES_LEN];
	int code = parse_common(ctx, argc, argv, "diff", false);

	if (code >= 0)
		return code;
	if (want_args(argc, 2, 2, "diff") >= 0)
		return 2;
	if (cli_open_store(ctx, &s) < 0)
		return 1;
	code = 1;
	if (load_ref(s, argv[optind], &a) < 0 || load_ref(s, argv[optind + 1], &b) < 0)
		goto out;
	if (image_index_load(s, a, &ia, &error) < 0 || image_index_load(s, b, &ib, &error) < 0) {
		log_error("%s", error);
		goto out;
	}
	printf("%s:%u -> %s:%u\n", printable(a->name), a->version, printable(b->name), b->version);
	printf("packages:\n");
	n = print_package_changes(a->metadata, b->metadata);
	if (n == 0)
		printf("  (the same)\n");
	printf("files (- only in %s:%u, + only in %s:%u, ~ changed):\n", printable(a->name),
	       a->version, printable(b->name), b->version);
	n = print_file_changes(ia, ib, 60);
	if (n == 0)
		printf("  (the same)\n");
	if (bytes_to_fetch(s, a, b, &plain, &stored, &total, &chunks) < 0) {
		log_error("reading the chunk lists of %s:%u and %s:%u: out of memory", a->name,
			  a->version, b->name, b->version);
		goto out;
	}
	printf("bytes: a node holding %s:%u fetches %zu chunks, %s stored (%s plain), of %s:%u's "
	       "%s stored (%.1f%%)\n",
	       printable(a->name), a->version, chunks, humanize_bytes(stored, b1),
	       humanize_bytes(plain, b2), printable(b->name), b->version, humanize_bytes(total, b3),
	       total ? 100.0 * (double)stored / (double)total : 0.0);
	code = 0;
out:
	image_index_free(ia);
	image_index_free(ib);
	manifest_free(a);
	manifest_free(b);
	store_close(s);
	return code;
}

/* `vmhpc image update NAME[:VERSION]`: rebuilds the version (default: the newest) from the spec
 * it recorded with the package versions apt offers now; a new version only when something
 * changed, and what changed. */
static int verb_update(struct cli_context *ctx, int argc, char **argv)
{
	struct build_setup setup;
	struct builder_result res = {0};
	_cleanup_free_ char *error = NULL;
	struct manifest *old = NULL, *now = NULL;
	struct store *s;
	uint64_t plain, stored, total;
	size_t chunks;
	char b1[HUMANIZE_BYTES_LEN], b2[HUMANIZE_BYTES_LEN];
	int r, code = parse_common(ctx, argc, argv, "update", false);

	if (code >= 0)
		return code;
	if (want_args(argc, 1, 1, "update") >= 0)
		return 2;
	build_setup_init(ctx, &setup);
	code = build_setup_open(ctx, &setup);
	if (code >= 0)
		goto out;
	s = setup.s;
	code = 1;
	if (load_ref(s, argv[optind], &old) < 0)
		goto out;
	setup.opts.update_of = old;
	r = builder_build(s, &setup.opts, &res, &error);
	if (r < 0) {
		log_error("updating %s:%u: %s", old->name, old->version,
			  error ? error : strerror(-r));
		goto out;
	}
	if (res.unchanged) {
		printf(
		    "%s:%u is up to date: rebuilt from its recorded spec with what apt offers now, "
		    "every part came out the same; no new version\n",
		    printable(old->name), old->version);
		code = 0;
		goto out;
	}
	if (catalog_load(s, res.name, res.version, &now, NULL) < 0 ||
	    bytes_to_fetch(s, old, now, &plain, &stored, &total, &chunks) < 0) {
		log_error("updated %s:%u as %s:%u, but cannot read it back", old->name,
			  old->version, res.name, res.version);
		goto out;
	}
	printf("updated %s:%u -> %s:%u\npackages:\n", printable(old->name), old->version,
	       printable(res.name), res.version);
	if (print_package_changes(old->metadata, now->metadata) == 0)
		printf("  (the same versions; files from this machine changed)\n");
	printf("stored %s new of %s (%.1f%%): what a node holding %s:%u fetches\n",
	       humanize_bytes(stored, b1), humanize_bytes(total, b2),
	       total ? 100.0 * (double)stored / (double)total : 0.0, printable(old->name),
	       old->version);
	code = 0;
out:
	builder_result_done(&res);
	manifest_free(old);
	manifest_free(now);
	build_setup_done(&setup);
	return code;
}

static const struct verb verbs[] = {
    {"build", verb_build, "[--chunk-avg N ...] SPEC", "build an image version from a spec"},
    {"list", verb_list, "[--json]", "list image versions with stored and unique sizes"},
    {"show", verb_show, "[--json] NAME[:VERSION]", "show an image version's metadata"},
    {"match", verb_match,
     "[--rank newest|smallest|FIELD] [--name NAME] [--registry REGISTRY/REPO [--insecure]] "
     "[--json] EXPR",
     "the versions whose metadata satisfy EXPR, best first; why not when none"},
    {"diff", verb_diff, "A B",
     "packages, files and bytes that differ; what a node holding A fetches for B"},
    {"update", verb_update, "NAME[:VERSION]",
     "rebuild from the recorded spec with today's packages; a new version if anything changed"},
    {"rm", verb_rm, "NAME:VERSION", "remove an image version (chunks stay until gc)"},
    {"verify", verb_verify, "", "re-hash every chunk; report damage and what it breaks"},
    {"gc", verb_gc, "", "remove chunks no image version uses"},
    {"export", verb_export, "NAME[:VERSION] [-o FILE]", "write an image version as a tar stream"},
    {"import", verb_import, "[FILE]", "add an image version from an export"},
    {"push", cli_image_push, "NAME[:VERSION] REGISTRY/REPO[:TAG]",
     "send a version to an OCI registry (only what it lacks)"},
    {"pull", cli_image_pull, "REGISTRY/REPO[:TAG]",
     "add a version from an OCI registry (only missing chunks)"},
    {"ls", verb_ls, "[--json] NAME[:VERSION] [PATH]", "list the files of an image's root"},
    {"cat", verb_cat, "NAME[:VERSION] PART [-o FILE]",
     "write one part (kernel, initramfs, root, index)"},
};

static const struct verb *find_verb(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
		if (strcmp(verbs[i].name, name) == 0)
			return &verbs[i];
	return NULL;
}

int cli_image_main(struct cli_context *ctx, int argc, char **argv)
{
	const struct verb *v;

	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		FILE *f = argc < 2 ? stderr : stdout;

		fprintf(f, "usage: vmhpc image VERB [ARGS]\n\n");
		for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
			fprintf(f, "  %-7s %-34s %s\n", verbs[i].name, verbs[i].args,
				verbs[i].summary);
		return argc < 2 ? 2 : 0;
	}
	v = find_verb(argv[1]);
	if (!v) {
		log_error("unknown verb 'image %s'; see `vmhpc image --help`", argv[1]);
		return 2;
	}
	return v->run(ctx, argc - 1, argv + 1);
}
