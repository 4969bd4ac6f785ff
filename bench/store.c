/* bench-store: how fast is the put path, and how close is it to what the machine can do?
 *
 * Measures, in one run and on the same bytes: the chunker alone, chunker + SHA-256, the
 * whole put (chunk, hash, zstd, write into a fresh store), a second put that finds every
 * chunk present, reading the part back; and beside them the reference limits of the same
 * machine: memcpy, `sha256sum FILE` and `zstd -3 -c FILE`. Every figure is the best of a
 * few runs, because a shared VM's noise only ever makes things slower. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/magic.h>
#include <openssl/crypto.h>
#include <zstd.h>

#include "store/chunker.h"
#include "store/store.h"
#include "util/cleanup.h"
#include "util/fsutil.h"
#include "util/time.h"

#define BENCH_RUNS	      3
#define BENCH_SIZE_MB_DEFAULT 256
#define BENCH_SIZE_MB_MAX     (64u * 1024)
#define BENCH_MB	      1000000.0 /* rates and sizes are in decimal MB, like `dd` and disk vendors */

extern char **environ;

struct bench_row {
	const char *name;
	double seconds; /* best of the runs */
	char note[128];
};

static uint64_t bench_prng(uint64_t *state)
{
	uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

	z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
	return z ^ (z >> 31);
}

/* Bytes that compress about like executables and libraries do (~2:1 under zstd -3): blocks
 * of 4-64 KiB, about 25% of them random (like packed data and already-compressed sections),
 * the rest "code": a stream of tokens from a 256-entry vocabulary of 2-12-byte words
 * picked with a skew (like common opcodes and relocations), with an occasional short run
 * of zeros (padding). Nothing repeats at chunk scale, so dedup does not flatter the put. */
static void bench_generate(uint8_t *data, size_t len)
{
	uint8_t vocab[256][12], vocab_len[256];
	uint64_t seed = UINT64_C(0x62656e6368), v;
	size_t pos = 0;

	for (size_t i = 0; i < 256; i++) {
		v = bench_prng(&seed);
		vocab_len[i] = (uint8_t)(2 + v % 11);
		for (size_t j = 0; j < 12; j++)
			vocab[i][j] = (uint8_t)bench_prng(&seed);
	}
	while (pos < len) {
		size_t block = 4096 + (size_t)(bench_prng(&seed) % (60 * 1024));
		size_t end = pos + block < len ? pos + block : len;

		if (bench_prng(&seed) % 100 < 25) {
			for (; pos + 8 <= end; pos += 8) {
				v = bench_prng(&seed);
				memcpy(data + pos, &v, 8);
			}
			for (; pos < end; pos++)
				data[pos] = (uint8_t)bench_prng(&seed);
			continue;
		}
		while (pos < end) {
			uint64_t r = bench_prng(&seed);
			/* The smaller of two uniform draws: low indexes are far more common. */
			size_t a = r & 0xff, b = (r >> 8) & 0xff, w = a < b ? a : b;
			size_t n = vocab_len[w];

			if ((r >> 16) % 512 == 0) {
				n = 16 + (r >> 32) % 240;
				if (n > end - pos)
					n = end - pos;
				memset(data + pos, 0, n);
			} else {
				if (n > end - pos)
					n = end - pos;
				memcpy(data + pos, vocab[w], n);
			}
			pos += n;
		}
	}
}

static double bench_memcpy(const uint8_t *data, size_t len)
{
	_cleanup_free_ uint8_t *dst = malloc(len);
	double best = 1e30;

	if (!dst)
		return -1;
	memset(dst, 1, len); /* fault the pages in outside the timing */
	for (int run = 0; run < BENCH_RUNS; run++) {
		double t = time_now_s();

		memcpy(dst, data, len);
		/* Keep the copy from being optimised away. */
		__asm__ volatile("" : : "r"(dst) : "memory");
		t = time_now_s() - t;
		if (t < best)
			best = t;
	}
	return best;
}

static double bench_chunker(const uint8_t *data, size_t len, bool hash, size_t *ret_chunks)
{
	struct chunker_params p;
	double best = 1e30;

	chunker_params_default(&p);
	for (int run = 0; run < BENCH_RUNS; run++) {
		double t = time_now_s();
		size_t pos = 0, n = 0;
		uint8_t id[STORE_ID_BYTES], acc = 0;

		while (pos < len) {
			size_t c = chunker_next(&p, data + pos, len - pos);

			if (hash) {
				store_id_compute(data + pos, c, id);
				acc ^= id[0];
			}
			pos += c;
			n++;
		}
		__asm__ volatile("" : : "r"(acc));
		t = time_now_s() - t;
		if (t < best)
			best = t;
		*ret_chunks = n;
	}
	return best;
}

/* One put of path into a store at store_dir that does not exist yet (or, with fresh false,
 * the store as it is). Returns the seconds taken or a negative errno. */
static int bench_put(const char *store_dir, const char *path, bool fresh,
		     struct store_put_stats *ret_stats, double *ret_seconds, double *ret_sync_s)
{
	struct store *s = NULL;
	struct store_part part = {0};
	struct store_put_stats stats = {0};
	_cleanup_close_ int fd = -1;
	double t;
	int r;

	if (fresh) {
		r = fs_rm_rf(store_dir);
		if (r < 0)
			return r;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* Opening a store is part of every real put; it is in the timing. */
	t = time_now_s();
	r = store_open(store_dir, &s);
	if (r < 0)
		return r;
	r = store_put_fd(s, fd, NULL, &part, &stats, NULL, NULL);
	t = time_now_s() - t;
	if (r >= 0 && ret_sync_s) {
		/* Once per manifest, not per chunk: reported apart from the put. */
		double ts = time_now_s();

		r = store_sync(s);
		*ret_sync_s = time_now_s() - ts;
	}
	store_part_done(&part);
	store_close(s);
	if (r < 0)
		return r;
	*ret_stats = stats;
	*ret_seconds = t;
	return 0;
}

static int bench_read_back(const char *store_dir, const char *path, double *ret_seconds)
{
	struct store *s = NULL;
	struct store_part part = {0};
	_cleanup_close_ int fd = -1, out = -1;
	double t;
	int r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	out = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || out < 0)
		return -errno;
	r = store_open(store_dir, &s);
	if (r < 0)
		return r;
	/* All chunks are present: this put only builds the part list. */
	r = store_put_fd(s, fd, NULL, &part, NULL, NULL, NULL);
	if (r >= 0) {
		t = time_now_s();
		r = store_write_part(s, &part, out);
		*ret_seconds = time_now_s() - t;
	}
	store_part_done(&part);
	store_close(s);
	return r;
}

/* Runs argv with stdout on /dev/null and returns its wall time, or a negative errno (or
 * -ECHILD when it ran but failed). */
static double bench_tool(char *const argv[])
{
	posix_spawn_file_actions_t fa;
	double best = 1e30;

	if (posix_spawn_file_actions_init(&fa) != 0)
		return -ENOMEM;
	posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
	for (int run = 0; run < BENCH_RUNS; run++) {
		double t = time_now_s();
		pid_t pid;
		int status, r;

		r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
		if (r != 0) {
			posix_spawn_file_actions_destroy(&fa);
			return -r;
		}
		while (waitpid(pid, &status, 0) < 0)
			if (errno != EINTR) {
				posix_spawn_file_actions_destroy(&fa);
				return -errno;
			}
		t = time_now_s() - t;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			posix_spawn_file_actions_destroy(&fa);
			return -ECHILD;
		}
		if (t < best)
			best = t;
	}
	posix_spawn_file_actions_destroy(&fa);
	return best;
}

static void bench_cpu_model(char *out, size_t size)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/cpuinfo", "re");
	char line[512];

	snprintf(out, size, "unknown CPU");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');

		if (strncmp(line, "model name", 10) != 0 || !colon)
			continue;
		colon++;
		colon += strspn(colon, " \t");
		colon[strcspn(colon, "\n")] = '\0';
		snprintf(out, size, "%s", colon);
		return;
	}
}

static const char *bench_fs_kind(const char *dir)
{
	struct statfs sf;

	if (statfs(dir, &sf) < 0)
		return "unknown filesystem";
	switch (sf.f_type) {
	case TMPFS_MAGIC:
		return "tmpfs, so no disk in the figures";
	case EXT4_SUPER_MAGIC:
		return "ext4";
	case XFS_SUPER_MAGIC:
		return "xfs";
	case BTRFS_SUPER_MAGIC:
		return "btrfs";
	case OVERLAYFS_SUPER_MAGIC:
		return "overlayfs";
	default:
		return "other filesystem";
	}
}

static void bench_print_row(const struct bench_row *row, size_t len)
{
	if (row->seconds < 0) {
		printf("  %-44s %10s %9s   %s\n", row->name, "n/a", "", row->note);
		return;
	}
	printf("  %-44s %10.0f %9.3f   %s\n", row->name, (double)len / BENCH_MB / row->seconds,
	       row->seconds, row->note);
}

static void bench_usage(FILE *f)
{
	fprintf(f,
		"usage: bench-store [--size-mb N] [--file PATH] [--dir DIR]\n"
		"  --size-mb N  generate N MB (10^6 bytes) of binary-like test data (default %d)\n"
		"  --file PATH  measure on the bytes of PATH instead\n"
		"  --dir DIR    put the store and temp file under DIR (default /dev/shm)\n",
		BENCH_SIZE_MB_DEFAULT);
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
	    {"size-mb", required_argument, NULL, 's'},
	    {"file", required_argument, NULL, 'f'},
	    {"dir", required_argument, NULL, 'd'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	unsigned long size_mb = BENCH_SIZE_MB_DEFAULT;
	const char *file = NULL, *parent = NULL;
	_cleanup_free_ char *work = NULL, *store_dir = NULL, *data_path = NULL;
	_cleanup_free_ uint8_t *data = NULL;
	struct bench_row rows[9];
	size_t n_rows = 0, len, n_chunks = 0;
	struct store_put_stats stats = {0}, stats2 = {0};
	double t, sync_s = 0, best;
	char cpu[256], date[64], source[256];
	struct utsname un;
	time_t now = time(NULL);
	int opt, r, ret = EXIT_FAILURE;

	while ((opt = getopt_long(argc, argv, "s:f:d:h", options, NULL)) >= 0) {
		char *end;

		switch (opt) {
		case 's':
			errno = 0;
			size_mb = strtoul(optarg, &end, 10);
			if (errno || *end || size_mb == 0 || size_mb > BENCH_SIZE_MB_MAX) {
				fprintf(stderr, "bench-store: --size-mb wants 1..%u, not \"%s\"\n",
					BENCH_SIZE_MB_MAX, optarg);
				return EXIT_FAILURE;
			}
			break;
		case 'f':
			file = optarg;
			break;
		case 'd':
			parent = optarg;
			break;
		case 'h':
			bench_usage(stdout);
			return EXIT_SUCCESS;
		default:
			bench_usage(stderr);
			return EXIT_FAILURE;
		}
	}
	if (optind < argc) {
		bench_usage(stderr);
		return EXIT_FAILURE;
	}
	if (!parent)
		parent = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	r = fs_mkdtemp(parent, "bench-store-", &work);
	if (r < 0) {
		fprintf(stderr, "bench-store: making a directory in %s: %s\n", parent,
			strerror(-r));
		return EXIT_FAILURE;
	}
	store_dir = fs_path_join(work, "store");
	if (!store_dir)
		goto out;

	if (file) {
		char *buf = NULL;

		r = fs_read_file(file, (size_t)BENCH_SIZE_MB_MAX * 1000000, &buf, &len);
		if (r < 0) {
			fprintf(stderr, "bench-store: reading %s: %s\n", file, strerror(-r));
			goto out;
		}
		data = (uint8_t *)buf;
		data_path = strdup(file);
		snprintf(source, sizeof(source), "the bytes of %s", file);
	} else {
		len = (size_t)size_mb * 1000000;
		data = malloc(len);
		data_path = fs_path_join(work, "data");
		if (!data || !data_path) {
			fprintf(stderr, "bench-store: out of memory for %zu bytes\n", len);
			goto out;
		}
		bench_generate(data, len);
		r = fs_write_atomic(data_path, data, len, 0644);
		if (r < 0) {
			fprintf(stderr, "bench-store: writing %s: %s\n", data_path, strerror(-r));
			goto out;
		}
		snprintf(source, sizeof(source),
			 "generated binary-like data (25%% random blocks, 75%% low-entropy "
			 "tokens; aimed at ~2:1 under zstd -3)");
	}
	if (!data_path)
		goto out;

	bench_cpu_model(cpu, sizeof(cpu));
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M %Z", localtime(&now));
	if (uname(&un) < 0)
		snprintf(un.release, sizeof(un.release), "?");
	printf("bench-store: %.0f MB (%zu bytes) of %s\n", (double)len / BENCH_MB, len, source);
	if (file)
		printf("store under %s (%s); input read from %s (%s)\n", work, bench_fs_kind(work),
		       file, bench_fs_kind(file));
	else
		printf("store and input file under %s (%s)\n", work, bench_fs_kind(work));
	printf("machine: %s, %ld CPUs online, Linux %s, zstd %s, %s, %s\n", cpu,
	       sysconf(_SC_NPROCESSORS_ONLN), un.release, ZSTD_versionString(),
	       OpenSSL_version(OPENSSL_VERSION), date);
	printf("best of %d runs each; MB = 10^6 bytes; MB/s counts input (plain) bytes\n\n",
	       BENCH_RUNS);

	rows[n_rows++] = (struct bench_row){"memcpy (for scale)", bench_memcpy(data, len), ""};

	t = bench_chunker(data, len, false, &n_chunks);
	rows[n_rows] = (struct bench_row){"chunker alone (1 core)", t, ""};
	snprintf(rows[n_rows].note, sizeof(rows[n_rows].note), "%zu chunks, mean %.1f KB", n_chunks,
		 (double)len / (double)(n_chunks ? n_chunks : 1) / 1000);
	n_rows++;

	rows[n_rows++] = (struct bench_row){"chunker + SHA-256 (1 core)",
					    bench_chunker(data, len, true, &n_chunks), ""};

	best = 1e30;
	for (int run = 0; run < BENCH_RUNS; run++) {
		double run_sync_s = 0;

		r = bench_put(store_dir, data_path, true, &stats, &t, &run_sync_s);
		if (r < 0) {
			fprintf(stderr, "bench-store: put into %s: %s\n", store_dir, strerror(-r));
			goto out;
		}
		if (t < best) {
			best = t;
			sync_s = run_sync_s;
		}
	}
	rows[n_rows] = (struct bench_row){"put into fresh store (chunk+hash+zstd+write)", best, ""};
	snprintf(rows[n_rows].note, sizeof(rows[n_rows].note),
		 "%llu new chunks, %.1f MB stored, ratio %.2f:1",
		 (unsigned long long)stats.new_chunks, (double)stats.new_stored_bytes / BENCH_MB,
		 stats.new_stored_bytes ? (double)stats.plain_bytes / (double)stats.new_stored_bytes
					: 0.0);
	n_rows++;

	best = 1e30;
	for (int run = 0; run < BENCH_RUNS; run++) {
		r = bench_put(store_dir, data_path, false, &stats2, &t, NULL);
		if (r < 0) {
			fprintf(stderr, "bench-store: second put into %s: %s\n", store_dir,
				strerror(-r));
			goto out;
		}
		if (t < best)
			best = t;
	}
	rows[n_rows] = (struct bench_row){"put again (every chunk present)", best, ""};
	snprintf(rows[n_rows].note, sizeof(rows[n_rows].note), "%llu reused, %llu new",
		 (unsigned long long)stats2.reused_chunks, (unsigned long long)stats2.new_chunks);
	n_rows++;

	best = 1e30;
	for (int run = 0; run < BENCH_RUNS; run++) {
		r = bench_read_back(store_dir, data_path, &t);
		if (r < 0) {
			fprintf(stderr, "bench-store: reading back from %s: %s\n", store_dir,
				strerror(-r));
			goto out;
		}
		if (t < best)
			best = t;
	}
	rows[n_rows++] = (struct bench_row){"write_part (read+unzstd+verify)", best, ""};

	{
		char *sha_argv[] = {"sha256sum", data_path, NULL};
		char *zstd_argv[] = {"zstd", "-q", "-3", "-c", data_path, NULL};

		t = bench_tool(sha_argv);
		rows[n_rows] = (struct bench_row){"reference: sha256sum FILE", t, ""};
		if (t < 0)
			snprintf(rows[n_rows].note, sizeof(rows[n_rows].note), "did not run: %s",
				 strerror((int)-t));
		n_rows++;
		t = bench_tool(zstd_argv);
		rows[n_rows] = (struct bench_row){"reference: zstd -3 -c FILE >/dev/null", t,
						  "zstd CLI, default -T1 (+1 I/O thread)"};
		if (t < 0)
			snprintf(rows[n_rows].note, sizeof(rows[n_rows].note), "did not run: %s",
				 strerror((int)-t));
		n_rows++;
	}

	printf("  %-44s %10s %9s   %s\n", "step", "MB/s", "seconds", "notes");
	for (size_t i = 0; i < n_rows; i++)
		bench_print_row(&rows[i], len);
	printf("\nstore_sync (one syncfs after the put, not in the put figure): %.1f ms\n",
	       sync_s * 1000);
	ret = EXIT_SUCCESS;
out:
	if (work) {
		r = fs_rm_rf(work);
		if (r < 0) {
			fprintf(stderr, "bench-store: removing %s: %s\n", work, strerror(-r));
			ret = EXIT_FAILURE;
		}
	}
	return ret;
}
