#include "cli/run-options.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

static const char usage[] =
    "usage: vmhpc run [OPTIONS] [--] PROGRAM [ARGS...]\n"
    "  Boots small VMs from an image, runs PROGRAM across them with MPI (mpiexec in VM 0),\n"
    "  streams its output, returns its exit code and tears everything down. PROGRAM is a\n"
    "  path in the job folder (./ring) or a program in the image (hostname).\n"
    "\n"
    "options (default in brackets):\n"
    "  --vms N            how many VMs to boot, 1 to 64 [2]\n"
    "  --vcpus V          virtual CPUs per VM, 1 to 64 [1]\n"
    "  --mem SIZE         memory per VM, e.g. 512M or 2G, 64M to 256G [256M]\n"
    "  -n RANKS           MPI ranks, at most VMs x VCPUs without --oversubscribe\n"
    "                     [VMs x VCPUs]\n"
    "  --image NAME[:VER] the image to boot; without :VER its newest version\n"
    "                     [tiny-mpi, built on first use]\n"
    "  --require EXPR     boot the newest version whose metadata satisfies EXPR, e.g.\n"
    "                     'mpich >= \"4.0.2\" && has(\"libgfortran5\")' (docs/matching.md);\n"
    "                     with --image NAME only NAME's versions [none]\n"
    "  --time DURATION    stop the job after 90s, 10m, 2h or 1d and exit 124 [no limit]\n"
    "  --workdir DIR      the job folder shared into every VM at the same path [.]\n"
    "  --no-share         share no folder: PROGRAM must be in the image [share]\n"
    "  --oversubscribe    allow more virtual CPUs than cores, and more ranks than\n"
    "                     virtual CPUs [refuse]\n"
    "  --label            prefix each output line with [rank@vm] [off]\n"
    "  --shm, --no-shm    a shared-memory channel between the VMs (docs/bypass.md)\n"
    "                     [on for 2+ VMs of an image with [image] bypass = ivshmem]\n"
    "  --json             print the closing report as one JSON object [table]\n"
    "  --accel kvm|tcg    how QEMU runs the guests [kvm when a probe boot shows it works,\n"
    "                     else tcg]\n"
    "  -h, --help         print this help\n"
    "\n"
    "environment: VMHPC_STORE (image store), VMHPC_RUN_DIR (job state), VMHPC_LOG\n"
    "(error|warning|info|debug). Exit code: PROGRAM's (mpiexec's), 124 on --time, 128+N\n"
    "when interrupted by signal N, 2 for a bad option or a request this machine cannot\n"
    "take (VCPUs, ranks, memory, an expression), 1 otherwise.\n"
    "More: docs/runtime.md and docs/mpi.md.\n";

static int parse_uint(const char *text, unsigned min, unsigned max, unsigned *ret)
{
	char *end;
	unsigned long v;

	if (!text[0] || text[0] == '-' || text[0] == '+')
		return -EINVAL;
	errno = 0;
	v = strtoul(text, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*ret = (unsigned)v;
	return 0;
}

int run_parse_duration(const char *text, unsigned *ret_s)
{
	char *end;
	unsigned long v, mult = 1;

	if (!text[0] || text[0] < '0' || text[0] > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(text, &end, 10);
	if (errno)
		return -EINVAL;
	if (*end && end[1])
		return -EINVAL;
	switch (*end) {
	case '\0':
	case 's':
		break;
	case 'm':
		mult = 60;
		break;
	case 'h':
		mult = 3600;
		break;
	case 'd':
		mult = 86400;
		break;
	default:
		return -EINVAL;
	}
	if (v == 0 || v > RUN_MAX_TIME_S / mult)
		return -EINVAL;
	*ret_s = (unsigned)(v * mult);
	return 0;
}

int run_parse_mem(const char *text, unsigned *ret_mb)
{
	char *end;
	unsigned long v;

	if (!text[0] || text[0] < '0' || text[0] > '9')
		return -EINVAL;
	errno = 0;
	v = strtoul(text, &end, 10);
	if (errno)
		return -EINVAL;
	if ((*end == 'G' || *end == 'g') && !end[1]) {
		if (v > RUN_MAX_MEM_MB / 1024)
			return -EINVAL;
		v *= 1024;
	} else if (!((*end == 'M' || *end == 'm') && !end[1]) && *end) {
		return -EINVAL;
	}
	if (v < RUN_MIN_MEM_MB || v > RUN_MAX_MEM_MB)
		return -EINVAL;
	*ret_mb = (unsigned)v;
	return 0;
}

int run_options_parse(int argc, char **argv, struct run_options *ret, char **ret_error)
{
	/* One option a line (clang-format packs a table this long into columns). */
	/* clang-format off */
	static const struct option options[] = {
	    {"vms", required_argument, NULL, 'N'},
	    {"vcpus", required_argument, NULL, 'c'},
	    {"mem", required_argument, NULL, 'm'},
	    {"image", required_argument, NULL, 'i'},
	    {"require", required_argument, NULL, 'R'},
	    {"time", required_argument, NULL, 't'},
	    {"workdir", required_argument, NULL, 'w'},
	    {"no-share", no_argument, NULL, 'S'},
	    {"oversubscribe", no_argument, NULL, 'o'},
	    {"label", no_argument, NULL, 'l'},
	    {"shm", no_argument, NULL, 'M'},
	    {"no-shm", no_argument, NULL, 'H'},
	    {"json", no_argument, NULL, 'j'},
	    {"accel", required_argument, NULL, 'a'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	/* clang-format on */
	struct run_options o = {
	    .vms = 2,
	    .vcpus = 1,
	    .mem_mb = 256,
	    .image = "tiny-mpi",
	    .share = true,
	    .shm = RUN_SHM_AUTO,
	};
	int c;

	optind = 0;
	opterr = 0;
	/* '+': stop at PROGRAM, whose own options are not ours. */
	while ((c = getopt_long(argc, argv, "+n:h", options, NULL)) != -1) {
		switch (c) {
		case 'N':
			if (parse_uint(optarg, 1, RUN_MAX_VMS, &o.vms) < 0)
				return error_set(ret_error, -EINVAL,
						 "--vms '%s': give a whole number from 1 to %d",
						 optarg, RUN_MAX_VMS);
			break;
		case 'c':
			if (parse_uint(optarg, 1, RUN_MAX_VCPUS, &o.vcpus) < 0)
				return error_set(ret_error, -EINVAL,
						 "--vcpus '%s': give a whole number from 1 to %d",
						 optarg, RUN_MAX_VCPUS);
			break;
		case 'm':
			if (run_parse_mem(optarg, &o.mem_mb) < 0)
				return error_set(
				    ret_error, -EINVAL,
				    "--mem '%s': give a size such as 256M or 1G, from %dM to %dG",
				    optarg, RUN_MIN_MEM_MB, RUN_MAX_MEM_MB / 1024);
			break;
		case 'n':
			if (parse_uint(optarg, 1, RUN_MAX_VMS * RUN_MAX_VCPUS, &o.ranks) < 0)
				return error_set(
				    ret_error, -EINVAL,
				    "-n '%s': give the number of MPI ranks (1 or more)", optarg);
			break;
		case 'i':
			o.image = optarg;
			o.image_given = true;
			break;
		case 'R':
			o.require = optarg;
			break;
		case 't':
			if (run_parse_duration(optarg, &o.time_limit_s) < 0)
				return error_set(
				    ret_error, -EINVAL,
				    "--time '%s': give a duration such as 90s, 10m or 2h", optarg);
			break;
		case 'w':
			o.workdir = optarg;
			break;
		case 'S':
			o.share = false;
			break;
		case 'o':
			o.oversubscribe = true;
			break;
		case 'l':
			o.label = true;
			break;
		case 'M':
			o.shm = 1;
			break;
		case 'H':
			o.shm = 0;
			break;
		case 'j':
			o.json = true;
			break;
		case 'a':
			if (strcmp(optarg, "kvm") != 0 && strcmp(optarg, "tcg") != 0)
				return error_set(ret_error, -EINVAL, "--accel '%s': use kvm or tcg",
						 optarg);
			o.accel = optarg;
			break;
		case 'h':
			fputs(usage, stdout);
			return 1;
		default:
			return error_set(ret_error, -EINVAL,
					 "unknown option '%s'; see `vmhpc run --help`",
					 argv[optind - 1]);
		}
	}
	if (o.workdir && !o.share)
		return error_set(ret_error, -EINVAL, "--workdir and --no-share exclude each other");
	if (optind < argc && strcmp(argv[optind], "--") == 0)
		optind++;
	if (optind >= argc)
		return error_set(
		    ret_error, -EINVAL,
		    "no program to run; write `vmhpc run [OPTIONS] -- PROGRAM [ARGS]`");
	o.argc = argc - optind;
	o.argv = argv + optind;
	if (o.ranks == 0)
		o.ranks = o.vms * o.vcpus;
	*ret = o;
	return 0;
}

bool run_shm_wanted(int shm, unsigned vms, const json_t *image_metadata)
{
	const char *bypass = json_string_value(json_object_get(image_metadata, "bypass"));

	if (shm != RUN_SHM_AUTO)
		return shm != 0;
	return vms >= 2 && bypass && strcmp(bypass, "ivshmem") == 0;
}
