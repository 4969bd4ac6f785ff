/* Job tokens and VNIs derived from the job id (token.h). */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "slurm/token.h"
#include "util/cleanup.h"
#include "util/error.h"

int slurmtoken_derive(const char *key_path, uint32_t job_id, char ret_hex[SLURMTOKEN_HEX_LEN + 1],
		      char **ret_error)
{
	_cleanup_close_ int fd = open(key_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	unsigned char key[256], mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	char msg[64];
	struct stat st;
	ssize_t n;

	if (fd < 0)
		return error_set(ret_error, -errno,
				 "job key %s: %s; create it on every node with `head -c 32 "
				 "/dev/urandom > %s; chmod 600 %s` (the same file everywhere)",
				 key_path, strerror(errno), key_path, key_path);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 077))
		return error_set(ret_error, -EPERM,
				 "job key %s: must be a regular file owned by root with mode "
				 "0600 (chmod 600 %s)",
				 key_path, key_path);
	n = read(fd, key, sizeof(key));
	if (n < SLURMTOKEN_MIN_KEY)
		return error_set(ret_error, -EINVAL, "job key %s: at least %d bytes are needed",
				 key_path, SLURMTOKEN_MIN_KEY);
	snprintf(msg, sizeof(msg), "vmhpc-job-token:%u", job_id);
	if (!HMAC(EVP_sha256(), key, (int)n, (const unsigned char *)msg, strlen(msg), mac,
		  &mac_len) ||
	    mac_len != 32) {
		explicit_bzero(key, sizeof(key));
		return error_set(ret_error, -EIO, "job key %s: HMAC failed", key_path);
	}
	explicit_bzero(key, sizeof(key));
	for (unsigned i = 0; i < 32; i++)
		snprintf(ret_hex + 2 * i, 3, "%02x", mac[i]);
	explicit_bzero(mac, sizeof(mac));
	return 0;
}

uint32_t slurmtoken_vni(uint32_t job_id)
{
	uint32_t v = job_id % 0xffffffu;

	return v + 1;
}
