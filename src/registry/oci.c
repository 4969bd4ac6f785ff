#include "registry/oci.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "registry/certs.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/log.h"
#include "util/time.h"

/* An error body or a token answer is small; anything bigger is cut off. */
#define SMALL_BODY_MAX	 (64u * 1024)
#define TOKEN_MAX_BYTES	 (64u * 1024)
#define HEADER_VALUE_MAX 8192

struct oci_client {
	CURL *curl;
	char *registry;
	char *base; /* "https://registry" */
	bool insecure, push;
	char *ca_file;		/* the registry's own CA (certs.h); NULL: the system's */
	const char *default_ca; /* libcurl's own bundle, for requests elsewhere (a token realm) */
	uint64_t max_rate_bytes;
	struct auth_credentials credentials; /* user NULL: anonymous */
	char *authorization;		     /* "Basic ..." or "Bearer ...", sent once known */
	struct oci_stats stats;
	double started_s; /* for --max-rate over the whole session */
	char curl_error[CURL_ERROR_SIZE];
};

struct response {
	long status;
	char *data;
	size_t len, cap, max;
	bool too_big;
	char *location, *www_authenticate, *content_type, *digest;
};

static void response_done(struct response *r)
{
	free(r->data);
	free(r->location);
	free(r->www_authenticate);
	free(r->content_type);
	free(r->digest);
	*r = (struct response){0};
}

void oci_digest(const void *data, size_t len, char out[OCI_DIGEST_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[SHA256_DIGEST_LENGTH];

	SHA256(data, len, md);
	memcpy(out, "sha256:", 7);
	for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
		out[7 + 2 * i] = hex[md[i] >> 4];
		out[8 + 2 * i] = hex[md[i] & 15];
	}
	out[OCI_DIGEST_LEN] = '\0';
}

int oci_client_new(const char *registry, const struct oci_options *options, struct oci_client **ret)
{
	static bool curl_ready;
	struct oci_client *c;

	if (!curl_ready) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			return -ENOMEM;
		curl_ready = true;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->curl = curl_easy_init();
	c->registry = strdup(registry);
	c->insecure = options->insecure;
	c->push = options->push;
	c->max_rate_bytes = options->max_rate_bytes;
	c->started_s = time_now_s();
	if (asprintf(&c->base, "%s://%s", c->insecure ? "http" : "https", registry) < 0)
		c->base = NULL;
	if (!c->insecure)
		c->ca_file = certs_find_ca(registry);
	if (c->curl)
		curl_easy_getinfo(c->curl, CURLINFO_CAINFO, &c->default_ca);
	if (options->credentials && options->credentials->user) {
		c->credentials.user = strdup(options->credentials->user);
		c->credentials.password = strdup(options->credentials->password);
		c->credentials.source = strdup(
		    options->credentials->source ? options->credentials->source : "the caller");
		if (!c->credentials.user || !c->credentials.password || !c->credentials.source) {
			oci_client_free(c);
			return -ENOMEM;
		}
	}
	if (!c->curl || !c->registry || !c->base) {
		oci_client_free(c);
		return -ENOMEM;
	}
	*ret = c;
	return 0;
}

struct oci_client *oci_client_free(struct oci_client *c)
{
	if (!c)
		return NULL;
	if (c->curl)
		curl_easy_cleanup(c->curl);
	auth_credentials_done(&c->credentials);
	if (c->authorization)
		explicit_bzero(c->authorization, strlen(c->authorization));
	free(c->authorization);
	free(c->registry);
	free(c->base);
	free(c->ca_file);
	free(c);
	return NULL;
}

const struct oci_stats *oci_client_stats(const struct oci_client *c)
{
	return &c->stats;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct response *r = userdata;
	size_t n = size * nmemb;

	if (r->len + n > r->max) {
		r->too_big = true;
		return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
	}
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 65536;
		char *p;

		while (cap < r->len + n + 1)
			cap *= 2;
		if (cap > r->max + 1)
			cap = r->max + 1;
		p = realloc(r->data, cap);
		if (!p)
			return 0;
		r->data = p;
		r->cap = cap;
	}
	memcpy(r->data + r->len, ptr, n);
	r->len += n;
	r->data[r->len] = '\0';
	return n;
}

static void keep_header(char **slot, const char *value, size_t len)
{
	while (len > 0 &&
	       (value[len - 1] == '\r' || value[len - 1] == '\n' || value[len - 1] == ' '))
		len--;
	if (len > HEADER_VALUE_MAX)
		return;
	free(*slot);
	*slot = strndup(value, len);
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata)
{
	struct response *r = userdata;
	size_t n = size * nitems;
	static const struct {
		const char *name;
		size_t offset;
	} wanted[] = {
	    {"location:", offsetof(struct response, location)},
	    {"www-authenticate:", offsetof(struct response, www_authenticate)},
	    {"content-type:", offsetof(struct response, content_type)},
	    {"docker-content-digest:", offsetof(struct response, digest)},
	};

	if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
		/* A new response (after a redirect): forget the previous one's headers. */
		for (size_t i = 0; i < ARRAY_SIZE(wanted); i++) {
			char **slot = (char **)((char *)r + wanted[i].offset);

			free(*slot);
			*slot = NULL;
		}
		return n;
	}
	for (size_t i = 0; i < ARRAY_SIZE(wanted); i++) {
		size_t k = strlen(wanted[i].name);
		const char *v;

		if (n <= k || strncasecmp(buf, wanted[i].name, k) != 0)
			continue;
		v = buf + k;
		while (v < buf + n && (*v == ' ' || *v == '\t'))
			v++;
		keep_header((char **)((char *)r + wanted[i].offset), v, (size_t)(buf + n - v));
	}
	return n;
}

/* curl's own limit works within one transfer, but a chunk blob is over before it bites:
 * so the session as a whole is held to max_rate_bytes each way as well. */
static void throttle(const struct oci_client *c)
{
	uint64_t most = c->stats.bytes_sent > c->stats.bytes_received ? c->stats.bytes_sent
								      : c->stats.bytes_received;
	double due_s, ahead_s;

	if (!c->max_rate_bytes)
		return;
	due_s = (double)most / (double)c->max_rate_bytes;
	ahead_s = due_s - (time_now_s() - c->started_s);
	if (ahead_s > 0) {
		struct timespec ts = {.tv_sec = (time_t)ahead_s,
				      .tv_nsec = (long)((ahead_s - (double)(time_t)ahead_s) * 1e9)};

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}

struct request {
	const char *method; /* GET, HEAD, POST, PUT */
	const char *url;
	const char *content_type; /* of the body */
	const char *accept;
	const void *body;
	size_t body_len;
	size_t max_response_bytes;
	const char *authorization; /* overrides the client's */
};

/* One HTTP exchange on the client's handle (its connection is kept). Returns 0 with
 * resp->status set, or a transport error with *ret_error. */
static int perform(struct oci_client *c, const struct request *q, struct response *resp,
		   char **ret_error)
{
	struct curl_slist *headers = NULL;
	_cleanup_free_ char *auth_line = NULL, *type_line = NULL, *accept_line = NULL;
	const char *authorization = q->authorization ? q->authorization : c->authorization;
	curl_off_t down = 0;
	CURLcode rc;
	int r = 0;

	*resp = (struct response){.max = q->max_response_bytes ? q->max_response_bytes
							       : SMALL_BODY_MAX};
	/* Reset keeps the connection cache: the next request reuses the connection. */
	curl_easy_reset(c->curl);
	curl_easy_setopt(c->curl, CURLOPT_URL, q->url);
	curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, c->curl_error);
	curl_easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c->curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, 10L);
	/* A registry that stops sending for a minute is gone. */
	curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, 60L);
	curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "vmhpc/0.1");
	/* The registry's own CA for the registry only: a token service elsewhere is checked
	 * against the system's. Chosen per request: a redirect that libcurl follows within it
	 * (blobs sent to an object store) keeps the registry's CA (docs/registry.md, Limit). */
	if (c->ca_file) {
		bool to_registry = strncmp(q->url, c->base, strlen(c->base)) == 0 &&
				   strchr("/?", q->url[strlen(c->base)]) != NULL;

		curl_easy_setopt(c->curl, CURLOPT_CAINFO, to_registry ? c->ca_file : c->default_ca);
	}
	curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, resp);
	curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, resp);
	if (c->max_rate_bytes) {
		curl_easy_setopt(c->curl, CURLOPT_MAX_RECV_SPEED_LARGE,
				 (curl_off_t)c->max_rate_bytes);
		curl_easy_setopt(c->curl, CURLOPT_MAX_SEND_SPEED_LARGE,
				 (curl_off_t)c->max_rate_bytes);
	}
	if (strcmp(q->method, "HEAD") == 0) {
		curl_easy_setopt(c->curl, CURLOPT_NOBODY, 1L);
	} else if (strcmp(q->method, "GET") == 0) {
		/* Registries may send blobs from elsewhere (S3); curl drops our Authorization
		 * when a redirect leaves the host. */
		curl_easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 1L);
		curl_easy_setopt(c->curl, CURLOPT_MAXREDIRS, 5L);
	} else {
		curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, q->method);
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, q->body ? q->body : "");
		curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
		/* No "Expect: 100-continue": it costs a round trip per upload. */
		headers = curl_slist_append(headers, "Expect:");
		if (asprintf(&type_line, "Content-Type: %s",
			     q->content_type ? q->content_type : "application/octet-stream") < 0)
			return -ENOMEM;
		headers = curl_slist_append(headers, type_line);
	}
	if (q->accept) {
		if (asprintf(&accept_line, "Accept: %s", q->accept) < 0)
			return -ENOMEM;
		headers = curl_slist_append(headers, accept_line);
	}
	if (authorization && *authorization) {
		if (asprintf(&auth_line, "Authorization: %s", authorization) < 0)
			return -ENOMEM;
		headers = curl_slist_append(headers, auth_line);
	}
	curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
	c->curl_error[0] = '\0';
	rc = curl_easy_perform(c->curl);
	c->stats.requests++;
	c->stats.bytes_sent += q->body_len;
	if (curl_easy_getinfo(c->curl, CURLINFO_SIZE_DOWNLOAD_T, &down) == CURLE_OK && down > 0)
		c->stats.bytes_received += (uint64_t)down;
	curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &resp->status);
	curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(headers);
	throttle(c);
	if (auth_line)
		explicit_bzero(auth_line, strlen(auth_line));
	if (rc == CURLE_OK)
		return 0;
	if (rc == CURLE_WRITE_ERROR && resp->too_big)
		return error_set(ret_error, -EFBIG,
				 "registry %s sent more than %zu bytes for %s %s", c->registry,
				 resp->max, q->method, q->url);
	switch (rc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
		r = -EHOSTUNREACH;
		error_set(ret_error, r,
			  "cannot reach registry %s (%s); check that it runs and that the "
			  "address is right",
			  c->registry, *c->curl_error ? c->curl_error : curl_easy_strerror(rc));
		break;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
		r = -EPROTO;
		error_set(ret_error, r,
			  "TLS with registry %s failed (%s); a registry whose certificate a CA of "
			  "its own signed needs that CA in %s/%s/ca.crt%s; a registry that speaks "
			  "plain HTTP (on loopback, say) needs --insecure",
			  c->registry, *c->curl_error ? c->curl_error : curl_easy_strerror(rc),
			  getenv("VMHPC_CERTS_DIR") ? "$VMHPC_CERTS_DIR" : "/etc/vmhpc/certs.d",
			  c->registry, c->ca_file ? " (the one there did not verify it)" : "");
		break;
	default:
		r = -EIO;
		error_set(ret_error, r, "%s %s: %s; the registry %s went away or broke the answer",
			  q->method, q->url,
			  *c->curl_error ? c->curl_error : curl_easy_strerror(rc), c->registry);
	}
	return r;
}

/* Asks the realm of a Bearer challenge for a token; sets c->authorization. */
static int fetch_token(struct oci_client *c, const struct auth_challenge *ch, char **ret_error)
{
	_cleanup_free_ char *url = NULL, *basic = NULL, *scope = NULL;
	struct response resp = {0};
	const char *token;
	json_t *root = NULL;
	char *service_q = NULL, *scope_q = NULL;
	int r;

	if (!c->insecure && strncmp(ch->realm, "https://", 8) != 0)
		return error_set(ret_error, -EPROTO,
				 "registry %s sends for tokens to %s, which is not HTTPS; use "
				 "--insecure only if you trust that network",
				 c->registry, ch->realm);
	if (ch->scope) {
		size_t n = strlen(ch->scope);

		/* A push needs pull and push on the repository: ask once for both, rather than
		 * a new token at the first upload. */
		if (c->push && n > 5 && strcmp(ch->scope + n - 5, ":pull") == 0)
			r = asprintf(&scope, "%s,push", ch->scope);
		else
			r = asprintf(&scope, "%s", ch->scope);
		if (r < 0)
			return -ENOMEM;
	}
	service_q = ch->service ? curl_easy_escape(c->curl, ch->service, 0) : NULL;
	scope_q = scope ? curl_easy_escape(c->curl, scope, 0) : NULL;
	r = asprintf(&url, "%s%sservice=%s&scope=%s", ch->realm, strchr(ch->realm, '?') ? "&" : "?",
		     service_q ? service_q : "", scope_q ? scope_q : "");
	curl_free(service_q);
	curl_free(scope_q);
	if (r < 0)
		return -ENOMEM;
	if (c->credentials.user && !(basic = auth_basic_header(&c->credentials)))
		return -ENOMEM;
	r = perform(c,
		    &(struct request){.method = "GET",
				      .url = url,
				      .max_response_bytes = TOKEN_MAX_BYTES,
				      .authorization = basic ? basic : ""},
		    &resp, ret_error);
	if (basic)
		explicit_bzero(basic, strlen(basic));
	if (r < 0)
		goto out;
	if (resp.status == 401 || resp.status == 403) {
		r = error_set(ret_error, -EACCES,
			      c->credentials.user
				  ? "the token service of registry %s refused the credentials from "
				    "%s"
				  : "the token service of registry %s wants credentials: set "
				    "VMHPC_REGISTRY_AUTH=user:password%s",
			      c->registry,
			      c->credentials.user ? c->credentials.source
						  : " or log in (auths in ~/.docker/config.json)");
		goto out;
	}
	root =
	    resp.status == 200 ? json_loadb(resp.data ? resp.data : "", resp.len, 0, NULL) : NULL;
	token = json_string_value(json_object_get(root, "token"));
	if (!token)
		token = json_string_value(json_object_get(root, "access_token"));
	if (!token || !*token || strlen(token) > TOKEN_MAX_BYTES || strpbrk(token, "\r\n")) {
		r = error_set(ret_error, -EPROTO,
			      "the token service %s of registry %s answered %ld without a token",
			      ch->realm, c->registry, resp.status);
		goto out;
	}
	free(c->authorization);
	c->authorization = NULL;
	r = asprintf(&c->authorization, "Bearer %s", token) < 0 ? -ENOMEM : 0;
out:
	json_decref(root);
	response_done(&resp);
	return r;
}

/* Answers a 401: Basic with our credentials, or a Bearer token. */
static int authenticate(struct oci_client *c, const struct response *resp, char **ret_error)
{
	struct auth_challenge ch = {0};
	int r;

	if (!resp->www_authenticate || auth_challenge_parse(resp->www_authenticate, &ch) < 0)
		return error_set(ret_error, -EACCES,
				 "registry %s refuses access (401) without a challenge vmhpc "
				 "understands (%s)",
				 c->registry,
				 resp->www_authenticate ? resp->www_authenticate : "none");
	if (ch.scheme == AUTH_SCHEME_BEARER) {
		r = fetch_token(c, &ch, ret_error);
	} else if (!c->credentials.user) {
		r = error_set(
		    ret_error, -EACCES,
		    "registry %s needs credentials: set VMHPC_REGISTRY_AUTH=user:password "
		    "or add \"%s\" to the auths of ~/.docker/config.json (as `docker login` "
		    "does)",
		    c->registry, c->registry);
	} else {
		free(c->authorization);
		c->authorization = auth_basic_header(&c->credentials);
		r = c->authorization ? 0 : -ENOMEM;
	}
	auth_challenge_done(&ch);
	return r;
}

/* perform() with the 401 dance: at most one new authorization per request. */
static int request(struct oci_client *c, const struct request *q, struct response *resp,
		   char **ret_error)
{
	int r = perform(c, q, resp, ret_error);

	if (r < 0 || resp->status != 401)
		return r;
	r = authenticate(c, resp, ret_error);
	if (r < 0)
		return r;
	response_done(resp);
	r = perform(c, q, resp, ret_error);
	if (r == 0 && resp->status == 401)
		return error_set(ret_error, -EACCES,
				 "registry %s refused the credentials from %s: a wrong user or "
				 "password, or one without the right to this repository",
				 c->registry, c->credentials.source ? c->credentials.source : "?");
	return r;
}

/* The registry's own words from an error body: {"errors":[{"code":..,"message":..}]}. */
static char *registry_says(const struct response *resp)
{
	json_t *root = resp->data ? json_loadb(resp->data, resp->len, 0, NULL) : NULL;
	json_t *e = json_array_get(json_object_get(root, "errors"), 0);
	const char *code = json_string_value(json_object_get(e, "code"));
	const char *msg = json_string_value(json_object_get(e, "message"));
	char *s = NULL;

	if (code && asprintf(&s, "%s%s%s", code, msg ? ": " : "", msg ? msg : "") < 0)
		s = NULL;
	json_decref(root);
	return s;
}

static int status_error(struct oci_client *c, const char *what, const struct response *resp,
			char **ret_error)
{
	_cleanup_free_ char *says = registry_says(resp);
	int r = resp->status == 404   ? -ENOENT
		: resp->status == 403 ? -EACCES
		: resp->status == 413 ? -EFBIG
		: resp->status >= 500 ? -EIO
				      : -EPROTO;

	return error_set(ret_error, r, "registry %s answered %s with %ld%s%s", c->registry, what,
			 resp->status, says ? " " : "", says ? says : "");
}

int oci_ping(struct oci_client *c, char **ret_error)
{
	_cleanup_free_ char *url = NULL;
	struct response resp;
	int r;

	if (asprintf(&url, "%s/v2/", c->base) < 0)
		return -ENOMEM;
	r = request(c, &(struct request){.method = "GET", .url = url}, &resp, ret_error);
	if (r == 0 && resp.status != 200)
		r = status_error(c, "GET /v2/", &resp, ret_error);
	response_done(&resp);
	return r;
}

int oci_tags_list(struct oci_client *c, const char *repo, char ***ret_tags, size_t *ret_n,
		  char **ret_error)
{
	_cleanup_free_ char *url = NULL;
	struct response resp;
	json_t *doc = NULL, *tags, *t;
	char **out = NULL;
	size_t i, n = 0;
	int r;

	/* One page as large as we accept: a repository of image versions has hundreds. */
	if (asprintf(&url, "%s/v2/%s/tags/list?n=%d", c->base, repo, OCI_TAGS_MAX) < 0)
		return -ENOMEM;
	r = request(c,
		    &(struct request){.method = "GET",
				      .url = url,
				      .accept = "application/json",
				      .max_response_bytes = OCI_MANIFEST_MAX_BYTES},
		    &resp, ret_error);
	if (r < 0)
		goto out;
	if (resp.status != 200) {
		r = status_error(c, "GET of the tag list", &resp, ret_error);
		goto out;
	}
	doc = json_loadb(resp.data ? resp.data : "", resp.len, 0, NULL);
	tags = json_object_get(doc, "tags");
	if (!doc || !(json_is_array(tags) || json_is_null(tags))) {
		r = error_set(ret_error, -EBADMSG,
			      "registry %s sent a tag list for %s that is not "
			      "{\"tags\": [...]}",
			      c->registry, repo);
		goto out;
	}
	out = calloc(json_array_size(tags) + 1, sizeof(*out));
	if (!out) {
		r = -ENOMEM;
		goto out;
	}
	json_array_foreach(tags, i, t)
	{
		if (!json_is_string(t) || n >= OCI_TAGS_MAX)
			continue;
		out[n] = strdup(json_string_value(t));
		if (!out[n++]) {
			r = -ENOMEM;
			goto out;
		}
	}
	*ret_tags = TAKE_PTR(out);
	*ret_n = n;
	r = 0;
out:
	for (size_t k = 0; out && k < n; k++)
		free(out[k]);
	free(out);
	json_decref(doc);
	response_done(&resp);
	return r;
}

int oci_blob_exists(struct oci_client *c, const char *repo, const char *digest, bool *ret_exists,
		    char **ret_error)
{
	_cleanup_free_ char *url = NULL;
	struct response resp;
	int r;

	if (asprintf(&url, "%s/v2/%s/blobs/%s", c->base, repo, digest) < 0)
		return -ENOMEM;
	r = request(c, &(struct request){.method = "HEAD", .url = url}, &resp, ret_error);
	if (r == 0) {
		if (resp.status == 200)
			*ret_exists = true;
		else if (resp.status == 404)
			*ret_exists = false;
		else
			r = status_error(c, "HEAD of a blob", &resp, ret_error);
	}
	response_done(&resp);
	return r;
}

int oci_blob_get(struct oci_client *c, const char *repo, const char *digest, size_t max_bytes,
		 void **ret_data, size_t *ret_len, char **ret_error)
{
	_cleanup_free_ char *url = NULL;
	char got[OCI_DIGEST_LEN + 1];
	struct response resp;
	int r;

	if (asprintf(&url, "%s/v2/%s/blobs/%s", c->base, repo, digest) < 0)
		return -ENOMEM;
	r = request(c,
		    &(struct request){.method = "GET", .url = url, .max_response_bytes = max_bytes},
		    &resp, ret_error);
	if (r < 0)
		goto out;
	if (resp.status != 200) {
		r = status_error(c, "GET of a blob", &resp, ret_error);
		goto out;
	}
	oci_digest(resp.data ? resp.data : "", resp.len, got);
	if (strcmp(got, digest) != 0) {
		r = error_set(ret_error, -EBADMSG,
			      "registry %s sent bytes for blob %s of %s that hash to %s: its copy "
			      "is damaged",
			      c->registry, digest, repo, got);
		goto out;
	}
	*ret_data = resp.data ? TAKE_PTR(resp.data) : calloc(1, 1);
	*ret_len = resp.len;
	r = *ret_data ? 0 : -ENOMEM;
out:
	response_done(&resp);
	return r;
}

int oci_blob_put(struct oci_client *c, const char *repo, const char *digest, const void *data,
		 size_t len, char **ret_error)
{
	_cleanup_free_ char *url = NULL, *put_url = NULL;
	struct response resp;
	int r;

	if (asprintf(&url, "%s/v2/%s/blobs/uploads/", c->base, repo) < 0)
		return -ENOMEM;
	r = request(c, &(struct request){.method = "POST", .url = url}, &resp, ret_error);
	if (r < 0)
		goto out;
	if (resp.status != 202 || !resp.location) {
		r = status_error(c, "the start of an upload", &resp, ret_error);
		goto out;
	}
	/* Location may be absolute or a path on the registry. */
	r = asprintf(&put_url, "%s%s%sdigest=%s", resp.location[0] == '/' ? c->base : "",
		     resp.location, strchr(resp.location, '?') ? "&" : "?", digest);
	if (r < 0) {
		r = -ENOMEM;
		goto out;
	}
	response_done(&resp);
	r = request(
	    c, &(struct request){.method = "PUT", .url = put_url, .body = data, .body_len = len},
	    &resp, ret_error);
	if (r == 0 && resp.status != 201)
		r = status_error(c, "the upload of a blob", &resp, ret_error);
out:
	response_done(&resp);
	return r;
}

int oci_manifest_get(struct oci_client *c, const char *repo, const char *reference,
		     const char *media_type, char **ret_data, size_t *ret_len, char **ret_error)
{
	_cleanup_free_ char *url = NULL;
	struct response resp;
	int r;

	if (asprintf(&url, "%s/v2/%s/manifests/%s", c->base, repo, reference) < 0)
		return -ENOMEM;
	r = request(c,
		    &(struct request){.method = "GET",
				      .url = url,
				      .accept = media_type,
				      .max_response_bytes = OCI_MANIFEST_MAX_BYTES},
		    &resp, ret_error);
	if (r < 0)
		goto out;
	if (resp.status != 200) {
		r = status_error(c, "GET of a manifest", &resp, ret_error);
		goto out;
	}
	if (strncmp(reference, "sha256:", 7) == 0) {
		char got[OCI_DIGEST_LEN + 1];

		oci_digest(resp.data ? resp.data : "", resp.len, got);
		if (strcmp(got, reference) != 0) {
			r = error_set(ret_error, -EBADMSG,
				      "registry %s sent a manifest for %s@%s that hashes to %s",
				      c->registry, repo, reference, got);
			goto out;
		}
	}
	*ret_data = resp.data ? TAKE_PTR(resp.data) : strdup("");
	*ret_len = resp.len;
	r = *ret_data ? 0 : -ENOMEM;
out:
	response_done(&resp);
	return r;
}

int oci_manifest_put(struct oci_client *c, const char *repo, const char *tag,
		     const char *media_type, const void *data, size_t len, char **ret_error)
{
	_cleanup_free_ char *url = NULL;
	struct response resp;
	int r;

	if (asprintf(&url, "%s/v2/%s/manifests/%s", c->base, repo, tag) < 0)
		return -ENOMEM;
	r = request(c,
		    &(struct request){.method = "PUT",
				      .url = url,
				      .content_type = media_type,
				      .body = data,
				      .body_len = len},
		    &resp, ret_error);
	if (r == 0 && resp.status != 201)
		r = status_error(c, "the upload of the manifest", &resp, ret_error);
	response_done(&resp);
	return r;
}

int oci_manifest_head(struct oci_client *c, const char *repo, const char *reference,
		      const char *media_type, char ret_digest[OCI_DIGEST_LEN + 1], char **ret_error)
{
	_cleanup_free_ char *url = NULL;
	struct response resp;
	int r;

	if (asprintf(&url, "%s/v2/%s/manifests/%s", c->base, repo, reference) < 0)
		return -ENOMEM;
	r = request(c, &(struct request){.method = "HEAD", .url = url, .accept = media_type}, &resp,
		    ret_error);
	if (r == 0 && resp.status == 404)
		r = -ENOENT;
	else if (r == 0 && resp.status != 200)
		r = status_error(c, "HEAD of a manifest", &resp, ret_error);
	else if (r == 0 && (!resp.digest || strlen(resp.digest) != OCI_DIGEST_LEN))
		r = -ENODATA;
	if (r == 0)
		memcpy(ret_digest, resp.digest, OCI_DIGEST_LEN + 1);
	response_done(&resp);
	return r;
}
