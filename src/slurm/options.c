/* Parsing and checking the plugin's option values (options.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "slurm/options.h"

static int fail(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (err && err_len) {
		va_start(ap, fmt);
		vsnprintf(err, err_len, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* A decimal number of at most 9 digits (no sign, no blanks); -EINVAL else. */
static int parse_digits(const char *s, const char **ret_end, unsigned long *ret)
{
	unsigned long v = 0;
	const char *p = s;

	while (*p >= '0' && *p <= '9' && p - s < 9)
		v = v * 10 + (unsigned long)(*p++ - '0');
	if (p == s || (*p >= '0' && *p <= '9'))
		return -EINVAL;
	*ret_end = p;
	*ret = v;
	return 0;
}

int slurmopt_parse_count(const char *option, const char *value, unsigned max, unsigned *ret,
			 char *err, size_t err_len)
{
	const char *end;
	unsigned long v;

	if (!value || parse_digits(value, &end, &v) < 0 || *end)
		return fail(err, err_len, "%s=%s: give a whole number from 1 to %u", option,
			    value ? value : "", max);
	if (v < 1 || v > max)
		return fail(err, err_len, "%s=%s: give a whole number from 1 to %u", option, value,
			    max);
	*ret = (unsigned)v;
	return 0;
}

int slurmopt_parse_mem_mb(const char *value, unsigned *ret_mb, char *err, size_t err_len)
{
	const char *end;
	unsigned long v;

	if (!value || parse_digits(value, &end, &v) < 0)
		goto bad;
	if (*end == 'G' || *end == 'g') {
		v *= 1024;
		end++;
	} else if (*end == 'M' || *end == 'm') {
		end++;
	}
	if (*end)
		goto bad;
	if (v < SLURMOPT_MIN_MEM_MB)
		return fail(err, err_len,
			    "--vm-mem=%s is below what a guest needs; give at least %uM", value,
			    SLURMOPT_MIN_MEM_MB);
	if (v > SLURMOPT_MAX_MEM_MB)
		return fail(err, err_len, "--vm-mem=%s: at most %uG per VM", value,
			    SLURMOPT_MAX_MEM_MB / 1024);
	*ret_mb = (unsigned)v;
	return 0;
bad:
	return fail(err, err_len,
		    "--vm-mem=%s: give the memory of each VM in megabytes, e.g. 512M or 2G",
		    value ? value : "");
}

int slurmopt_parse_shm(const char *value, int *ret, char *err, size_t err_len)
{
	static const struct {
		const char *word;
		int v;
	} words[] = {{"on", 1}, {"off", 0}, {"auto", SLURMOPT_SHM_AUTO}};

	for (size_t i = 0; value && i < sizeof(words) / sizeof(words[0]); i++)
		if (strcmp(value, words[i].word) == 0) {
			*ret = words[i].v;
			return 0;
		}
	return fail(err, err_len,
		    "--vm-shm=%s: give on, off or auto (the default: the channel when the image "
		    "carries it and a node has 2 VMs or more)",
		    value ? value : "");
}

int slurmopt_check_image(const char *value, char *err, size_t err_len)
{
	if (!value || !*value)
		return fail(err, err_len,
			    "--vm-image: give an image in a registry, e.g. "
			    "registry.example.org/team/app:3");
	if (strlen(value) > SLURMOPT_MAX_IMAGE_LEN)
		return fail(err, err_len, "--vm-image: longer than %u characters",
			    SLURMOPT_MAX_IMAGE_LEN);
	for (const char *p = value; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			return fail(err, err_len, "--vm-image=%s: a reference has no blanks",
				    value);
	if (value[0] == '-' || value[0] == '/' || !strchr(value, '/'))
		return fail(err, err_len,
			    "--vm-image=%s: give REGISTRY/REPOSITORY[:TAG], e.g. "
			    "registry.example.org/team/app:3 (`vmhpc image push` puts it there)",
			    value);
	return 0;
}

int slurmopt_cpus_on_node(const char *list, unsigned index, unsigned *ret)
{
	const char *p = list;
	unsigned long seen = 0;

	if (!p)
		return -EINVAL;
	while (*p) {
		unsigned long cpus, reps = 1;

		if (parse_digits(p, &p, &cpus) < 0)
			return -EINVAL;
		if (*p == '(') {
			if (p[1] != 'x' || parse_digits(p + 2, &p, &reps) < 0 || *p != ')' ||
			    reps == 0)
				return -EINVAL;
			p++;
		}
		if (*p == ',')
			p++;
		else if (*p)
			return -EINVAL;
		if (index < seen + reps) {
			*ret = (unsigned)cpus;
			return 0;
		}
		seen += reps;
	}
	return -EINVAL;
}
