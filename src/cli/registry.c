/* `vmhpc image push` and `vmhpc image pull`: image versions to and from an OCI registry
 * (docs/registry.md). The policy lives here: where credentials come from, plain HTTP only
 * when asked, what is printed; the protocol is src/registry/. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "registry/auth.h"
#include "registry/oci.h"
#include "registry/pull.h"
#include "registry/push.h"
#include "registry/reference.h"
#include "store/catalog.h"
#include "store/manifest.h"
#include "util/cleanup.h"
#include "util/humanize.h"
#include "util/log.h"
#include "util/time.h"

struct registry_args {
	bool insecure;
	bool json;
	uint64_t max_rate_bytes;
	int first_arg; /* optind after the options */
};

/* Text from a registry, printed: control characters become '?'. */
static void log_registry_error(const char *what, const char *error, int r)
{
	_cleanup_free_ char *clean = strdup(error ? error : strerror(-r));

	if (!clean) {
		log_error("%s: %s", what, strerror(-r));
		return;
	}
	for (unsigned char *p = (unsigned char *)clean; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			*p = '?';
	log_error("%s: %s", what, clean);
}

static int parse_rate(const char *text, uint64_t *ret)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || end == text || text[0] == '-')
		return -EINVAL;
	if (*end == 'k' || *end == 'K')
		v <<= 10, end++;
	else if (*end == 'm' || *end == 'M')
		v <<= 20, end++;
	if (*end || v == 0)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* Returns -1 to go on, else an exit code. */
static int parse_args(int argc, char **argv, const char *verb, const char *usage,
		      struct registry_args *ret)
{
	static const struct option options[] = {
	    {"insecure", no_argument, NULL, 'k'},
	    {"max-rate", required_argument, NULL, 'r'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;

	*ret = (struct registry_args){0};
	optind = 0;
	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (c) {
		case 'k':
			ret->insecure = true;
			break;
		case 'j':
			ret->json = true;
			break;
		case 'r':
			if (parse_rate(optarg, &ret->max_rate_bytes) < 0) {
				log_error(
				    "--max-rate '%s' is not bytes per second (e.g. 500k, 10M)",
				    optarg);
				return 2;
			}
			break;
		case 'h':
			printf(
			    "usage: vmhpc image %s %s\n"
			    "  --insecure      plain HTTP (a registry on loopback); TLS otherwise\n"
			    "  --max-rate N    at most N bytes per second (k, M suffixes)\n"
			    "  --json          print what moved as JSON\n"
			    "credentials: $VMHPC_REGISTRY_AUTH=user:password, else the registry's "
			    "entry in\n"
			    "  the auths of $DOCKER_CONFIG/config.json or ~/.docker/config.json\n",
			    verb, usage);
			return 0;
		default:
			fprintf(stderr, "usage: vmhpc image %s %s\n", verb, usage);
			return 2;
		}
	}
	ret->first_arg = optind;
	return -1;
}

/* A client of ref's registry with the user's credentials for it (if any). */
static int open_client(const struct reference *ref, const struct registry_args *args, bool push,
		       struct oci_client **ret)
{
	struct auth_credentials cred = {0};
	_cleanup_free_ char *error = NULL;
	int r;

	r = auth_credentials_find(ref->registry, &cred, &error);
	if (r < 0 && r != -ENOENT) {
		log_error("credentials for %s: %s", ref->registry, error ? error : strerror(-r));
		return r;
	}
	if (r == 0)
		log_debug("credentials for %s from %s", ref->registry, cred.source);
	r = oci_client_new(ref->registry,
			   &(struct oci_options){.insecure = args->insecure,
						 .push = push,
						 .credentials = cred.user ? &cred : NULL,
						 .max_rate_bytes = args->max_rate_bytes},
			   ret);
	auth_credentials_done(&cred);
	if (r < 0)
		log_error_errno(r, "starting an HTTP client: %m");
	return r;
}

int cli_registry_client(const struct reference *ref, bool insecure, struct oci_client **ret)
{
	return open_client(ref, &(struct registry_args){.insecure = insecure}, false, ret);
}

static void print_traffic(const struct oci_client *c, double seconds)
{
	const struct oci_stats *st = oci_client_stats(c);
	char b[2][HUMANIZE_BYTES_LEN];

	printf("  http       %" PRIu64 " requests, %s sent, %s received in %.2f s\n", st->requests,
	       humanize_bytes(st->bytes_sent, b[0]), humanize_bytes(st->bytes_received, b[1]),
	       seconds);
}

static json_t *traffic_json(const struct oci_client *c, double seconds)
{
	const struct oci_stats *st = oci_client_stats(c);

	return json_pack("{s:I, s:I, s:I, s:f}", "requests", (json_int_t)st->requests, "bytes_sent",
			 (json_int_t)st->bytes_sent, "bytes_received",
			 (json_int_t)st->bytes_received, "seconds", seconds);
}

static void print_json(json_t *o)
{
	json_dumpf(o, stdout, JSON_INDENT(1));
	putchar('\n');
	json_decref(o);
}

int cli_image_push(struct cli_context *ctx, int argc, char **argv)
{
	static const char usage[] = "[--insecure] [--max-rate N] [--json] NAME[:VERSION] "
				    "REGISTRY/REPOSITORY[:TAG]";
	struct registry_args args;
	_cleanup_free_ char *name = NULL, *error = NULL, *where = NULL;
	struct reference *ref = NULL;
	struct oci_client *c = NULL;
	struct manifest *m = NULL;
	struct store *s = NULL;
	struct push_stats st = {0};
	uint32_t version;
	char b[3][HUMANIZE_BYTES_LEN];
	double t0 = time_now_s();
	int r, code = parse_args(argc, argv, "push", usage, &args);

	if (code >= 0)
		return code;
	if (argc - args.first_arg != 2) {
		log_error("`vmhpc image push` takes %s; see --help", usage);
		return 2;
	}
	if (manifest_parse_ref(argv[args.first_arg], &name, &version, &error) < 0 ||
	    reference_parse(argv[args.first_arg + 1], &ref, &error) < 0) {
		log_error("%s", error);
		reference_free(ref);
		return 2;
	}
	if (ref->digest) {
		log_error("push to a tag, not a digest: REGISTRY/REPOSITORY[:TAG]");
		reference_free(ref);
		return 2;
	}
	where = reference_to_string(ref);
	code = 1;
	if (cli_open_store(ctx, &s) < 0)
		goto out;
	r = catalog_load(s, name, version, &m, &error);
	if (r < 0) {
		log_error("%s", error ? error : strerror(-r));
		goto out;
	}
	if (open_client(ref, &args, true, &c) < 0)
		goto out;
	r = push_image(s, m, c, ref->repository, ref->tag, &st, &error);
	if (r < 0) {
		char what[256];

		snprintf(what, sizeof(what), "push of %s:%u to %s", m->name, m->version,
			 where ? where : "?");
		log_registry_error(what, error, r);
		if (r != -EACCES && r != -EPROTO)
			fprintf(stderr, "vmhpc: nothing was tagged; what was uploaded stays in the "
					"registry and the next push sends only the rest\n");
		goto out;
	}
	if (st.patch_error) {
		log_warning("%s:%u is pushed, its patch is not (%s): pullers that hold an earlier "
			    "version fetch its whole manifest",
			    m->name, m->version, st.patch_error);
		free(st.patch_error);
	}
	if (args.json) {
		print_json(json_pack(
		    "{s:s, s:i, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:i, s:I, s:o}", "image",
		    m->name, "version", (int)m->version, "reference", where, "digest", st.digest,
		    "chunks", (json_int_t)st.chunks, "chunks_uploaded",
		    (json_int_t)st.chunks_uploaded, "chunk_bytes", (json_int_t)st.chunk_bytes,
		    "chunk_bytes_uploaded", (json_int_t)st.chunk_bytes_uploaded, "metadata_bytes",
		    (json_int_t)st.metadata_bytes, "patch_base", (int)st.patch_base, "patch_bytes",
		    (json_int_t)st.patch_bytes, "http", traffic_json(c, time_now_s() - t0)));
	} else {
		printf("pushed %s:%u to %s\n", m->name, m->version, where);
		printf("  chunks     %zu (%s), %zu uploaded (%s), %zu already there\n", st.chunks,
		       humanize_bytes(st.chunk_bytes, b[0]), st.chunks_uploaded,
		       humanize_bytes(st.chunk_bytes_uploaded, b[1]),
		       st.chunks - st.chunks_uploaded);
		printf("  metadata   %s uploaded (config and manifest)\n",
		       humanize_bytes(st.metadata_bytes, b[2]));
		if (st.patch_base)
			printf("  patch      against %s:%u, %s uploaded\n", m->name, st.patch_base,
			       humanize_bytes(st.patch_bytes, b[0]));
		print_traffic(c, time_now_s() - t0);
		printf("  digest     %s\n", st.digest);
	}
	code = 0;
out:
	oci_client_free(c);
	manifest_free(m);
	reference_free(ref);
	store_close(s);
	return code;
}

int cli_image_pull(struct cli_context *ctx, int argc, char **argv)
{
	static const char usage[] = "[--insecure] [--max-rate N] [--json] "
				    "REGISTRY/REPOSITORY[:TAG|@DIGEST]";
	struct registry_args args;
	_cleanup_free_ char *error = NULL, *where = NULL;
	struct pull_result res = {0};
	struct reference *ref = NULL;
	struct oci_client *c = NULL;
	struct store *s = NULL;
	char b[3][HUMANIZE_BYTES_LEN];
	double t0 = time_now_s();
	int r, code = parse_args(argc, argv, "pull", usage, &args);

	if (code >= 0)
		return code;
	if (argc - args.first_arg != 1) {
		log_error("`vmhpc image pull` takes %s; see --help", usage);
		return 2;
	}
	if (reference_parse(argv[args.first_arg], &ref, &error) < 0) {
		log_error("%s", error);
		return 2;
	}
	where = reference_to_string(ref);
	code = 1;
	if (cli_open_store(ctx, &s) < 0)
		goto out;
	if (open_client(ref, &args, false, &c) < 0)
		goto out;
	r = pull_image(s, c, ref->repository, reference_target(ref), &res, &error);
	if (r < 0) {
		char what[256];

		snprintf(what, sizeof(what), "pull of %s", where ? where : "?");
		if (r == -ENOENT && !error)
			error = strdup("not found");
		log_registry_error(what, error, r);
		goto out;
	}
	if (args.json) {
		print_json(json_pack(
		    "{s:s, s:i, s:b, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:o}",
		    "image", res.name, "version", (int)res.version, "added", res.added, "reference",
		    where, "digest", res.digest, "chunks", (json_int_t)res.chunks, "chunks_fetched",
		    (json_int_t)res.chunks_fetched, "chunks_present",
		    (json_int_t)res.chunks_present, "chunks_repaired",
		    (json_int_t)res.chunks_repaired, "chunk_bytes", (json_int_t)res.chunk_bytes,
		    "chunk_bytes_fetched", (json_int_t)res.chunk_bytes_fetched, "metadata_bytes",
		    (json_int_t)res.metadata_bytes, "patched", res.patched, "http",
		    traffic_json(c, time_now_s() - t0)));
	} else {
		if (res.added)
			printf("pulled %s as %s:%u\n", where, res.name, res.version);
		else
			printf("pulled %s: the store already has it as %s:%u\n", where, res.name,
			       res.version);
		printf("  chunks     %zu (%s), %zu fetched (%s), %zu already here", res.chunks,
		       humanize_bytes(res.chunk_bytes, b[0]), res.chunks_fetched,
		       humanize_bytes(res.chunk_bytes_fetched, b[1]), res.chunks_present);
		if (res.chunks_repaired)
			printf(", %zu damaged here and fetched again", res.chunks_repaired);
		printf("\n  metadata   %s fetched (%s)\n", humanize_bytes(res.metadata_bytes, b[2]),
		       res.patched ? "its patch against a version this store holds"
				   : "manifest and config");
		print_traffic(c, time_now_s() - t0);
		printf("  digest     %s\n", res.digest);
	}
	code = 0;
out:
	pull_result_done(&res);
	oci_client_free(c);
	reference_free(ref);
	store_close(s);
	return code;
}
