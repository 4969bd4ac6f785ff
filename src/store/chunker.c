#include "store/chunker.h"

#include <errno.h>

/* The gear table: 256 pseudo-random 64-bit words, one per byte value. They are the first
 * 256 outputs of splitmix64 seeded with 0x766d687063676561 ("vmhpcgea"), written out as a
 * literal so that chunk boundaries (and so chunk ids, and dedup between stores) can never
 * change with a compiler, a libc or start-up order. Changing one word re-chunks every
 * image ever stored. */
/* clang-format off */
static const uint64_t chunker_gear[256] = {
	0xc65aede30ad0bf21u, 0x0247bb66c0042df7u, 0x4605880ce6c235b4u,
	0x06864a8c4a170737u, 0x21a1bf8157f89cdcu, 0x41ed0979920a2e26u,
	0x3596e2822638f72eu, 0xe9465b25404ca35eu, 0x709c8de5d14da928u,
	0x9f172c6b62c56a82u, 0x306014aa259e9886u, 0x5e0346aa8c1650bbu,
	0x9e86df65145ab1b9u, 0xca1df380ab1ca787u, 0x4037e67e5b1a115fu,
	0x9b9be043d903e239u, 0xfa1231982bef8d6fu, 0xe10cc44a4d7a5ed6u,
	0x75041dcd8009c834u, 0x7da089f127d1668eu, 0x52956021f01b7161u,
	0x53e9fdcd3694d40cu, 0xb8aad1041c05b98au, 0x5e0c3266adf2f959u,
	0xc3742803e5e49cf5u, 0xc7fc236185284ae0u, 0xc75af17e47e668b1u,
	0x0d9eed7094b4dba5u, 0x8c7396fd7c113cfbu, 0x558f935c0a61652bu,
	0x4d87ab94be7c3b1bu, 0x33e4bcb7f6191ba3u, 0xdeaf64f4d763431du,
	0x9499c62946a82fabu, 0x3bf6aa26d59bddfcu, 0x9aa9fa67c5beb5aau,
	0x0349261ad792fb94u, 0xc1e97e248997f830u, 0x759af5ac8580f700u,
	0x376ae8564c95d400u, 0x1075d7d832933b4au, 0x86db23a2270fdcccu,
	0xa66bd63a723653a4u, 0x549e4e077c14974du, 0x86bc14da5649b7f0u,
	0x220efe829df378ebu, 0x96c8751b61c29c9au, 0x75ce74e39cbeb6f8u,
	0xc08192b7c28dc783u, 0xf2c9998cb9332d79u, 0x8f52690651e9dff6u,
	0xbf8d3007eea3045du, 0x4106635b96c109a6u, 0x4ff76503715fad02u,
	0xcaea3b6008371b62u, 0x28b63cd8176e2f78u, 0x7dbe328e0c6213dcu,
	0x64c81e901292f243u, 0xf3955b4e9716aebau, 0xfaff7cf9ee536ef8u,
	0xd3b8a21f2335429cu, 0xd42ea7ad955b3a56u, 0xfe997fdea6d08e32u,
	0xc757df0c17877a6fu, 0x124a70ce2dd20a65u, 0x5b88a9463f7ee017u,
	0x91abd135039a53bdu, 0xbc388e659753aea6u, 0x0fc8cb656494ea40u,
	0x65be5d46a2d8d6f4u, 0x75f0dfab839cbe65u, 0x0190cfe38edf5c00u,
	0x7da93666b0eedccfu, 0x4e6bbbb80417747au, 0xf5210a6f22e7d282u,
	0x5ab19437468bb30cu, 0xc4a3550c338d271bu, 0x5107d0db05554361u,
	0x81f466388b9f3c1bu, 0xbcccfe74bf65848bu, 0x8d454e3f55fe9f84u,
	0x2dd6dab2ceb616b0u, 0xd284ccc530911302u, 0xe922f513471ba3ebu,
	0x43a3abe9618dd464u, 0x3e9d06f8e3c38446u, 0x7ebf0c8d55a60a83u,
	0x48a368d4ee87e2a8u, 0x86cdc7b56fd7f92du, 0x2ec81a22df2858eau,
	0x3ac90eab7d59f962u, 0x877486b8ecdf7d83u, 0xae964bfc5bf5fc9cu,
	0x4b6ba82a9c24c8a8u, 0x4787201a41ce4ad3u, 0x199c7bb93a8bc99du,
	0xa5202eb95baa9a00u, 0x6a2dd0d553841ddeu, 0xa052ecfbfb10bcdfu,
	0x25c3e641df7fca37u, 0xce9de3c3b9da7624u, 0xecfacc3b20d2874du,
	0xc2c0ca1837931c9cu, 0x9f3d28d35dfb7006u, 0xc20f9134d2fa827cu,
	0x72a9a47e2163f545u, 0x22634ac00dad7dadu, 0xec5a9ffa103aac87u,
	0x2a80ec220b654676u, 0x404a2af3f1615a40u, 0x26264d6642dbd7d5u,
	0xd0820b209d444bb3u, 0xdb81446732244aa0u, 0x1455fd6a98ac173fu,
	0x0527fb8bc885daaau, 0x80ef5719632d137bu, 0xbf92533cbddd8648u,
	0x7539c094fa02ecfeu, 0x9fb00df5ac7aaf2bu, 0x91f5f3214c1e56f4u,
	0x548a46b76309835fu, 0xca4e2c7a7b0a1036u, 0x8d60749ee24680c1u,
	0x4916bbe93fc36ed8u, 0x1e3f4444fd75b538u, 0x98e517499f62d50cu,
	0xb073fc876121a75du, 0x99da19103a5b48d8u, 0x4d08c2d0a58d7e9cu,
	0x13275ecb6311316cu, 0xf71896a5baf1c9ecu, 0x86ae837a8d34bb34u,
	0xecbc33b6655f44d0u, 0xcba522a9fb2c5706u, 0xc42df8137b1826dau,
	0x507e5be104eb2951u, 0x3ea29e88d1fe1d29u, 0x16a8d36607544c8cu,
	0xc1473875b2416b43u, 0x1d63dbb4be103286u, 0x399a0e0cfcce6a32u,
	0xd6b055dae3108596u, 0x2a0e126eb25a7878u, 0x2a7733ef10261607u,
	0xed8b2b62da1a61efu, 0x6255257667f53b79u, 0x9cbd2964fc0bfb7bu,
	0xd0e2fff20ed3c562u, 0xe70dd958150246d6u, 0x09c7ff33bf0c12d2u,
	0x2826a44f6ddaaba7u, 0x8feac35ebcbdbb10u, 0x8958d2960f6a4c9du,
	0xa140200803b5d47fu, 0x2b253f2b658a5d9bu, 0xbb2a0a1b9044abb6u,
	0x17da391375fc6e43u, 0xae9e0a93a1052a0fu, 0x13b448e1f531fd29u,
	0xa6bf236f8644c9b3u, 0x7ac53ff3a3ce7122u, 0x4ef9f644af2597bdu,
	0x95efbc5aab7b65c7u, 0x6994b3d46f1f4268u, 0xe75b4e35d0c19d9du,
	0x7811c042ce363560u, 0x71a7f8303f6184afu, 0x7659b7c52fd2cb15u,
	0xd5ed1d40dd8504f5u, 0x8557186ed63aa4f7u, 0x3797096964ff2c8eu,
	0x2b9495687a92d7ffu, 0x5b4f2e48b39e1730u, 0x14d87e6bd67541f9u,
	0x1c1b4918d57c6f06u, 0xf31039e9fd1efa66u, 0xa2b0b4786532e9e6u,
	0x875baf8112c6238bu, 0xb2e8669ec1d93877u, 0x2dfa8678166786eau,
	0xd4f7492cecb30053u, 0x1d0f6b4e404ded56u, 0x57bfcd3b48b90723u,
	0x84d39f42cd4192e2u, 0x29800d5371d00108u, 0x336b04ad8f3531bfu,
	0x436711310f35c767u, 0xf8fb6690d6f6d13du, 0xdbdfa658786efa18u,
	0x85c048c3ee0e3f5cu, 0x7905be542e7e3076u, 0x4b09216a235f6393u,
	0x48f867ec5a2b6453u, 0xc8892ad9c64c3094u, 0x5d2d78ade38988a3u,
	0x1f833606cfa75236u, 0x99c0ddc0f4457010u, 0x60855f2c3d6a8cb5u,
	0x873162f83c32a7d4u, 0x321d75ac914a1e2eu, 0x0b9931d1b581446fu,
	0xbdd803698f5b543du, 0x43987ba6fef93f97u, 0x9b1acbb131e44267u,
	0x9eeeb61f237bd0deu, 0xb0327bd62edf4f99u, 0x7e8fb317f5ada06bu,
	0x172158fc981e71b9u, 0x5f91f4136b79568cu, 0xfaf10b65040bd5c9u,
	0x57ea7b8be447348cu, 0xec84f9cb5be274dau, 0x3b487f7ca8d08b3bu,
	0x632cad2451ded080u, 0xc3c5eba7b3c2464bu, 0x7bfd34440bc9acc8u,
	0xb4b7611c2fff8cb7u, 0x2c1c0e3244f47d32u, 0x366c52f5229f98aeu,
	0xe495217d0a8e77f2u, 0xbda1f85c4d0c966au, 0x75c5d93b98a948d8u,
	0x663dc14b0eb265e8u, 0x3666c2462e68c916u, 0x2167eaa203972c2au,
	0x39baf5d40969f599u, 0xc3b163498e2901e5u, 0x75c1eb72eeb45ce5u,
	0xa274d424069b7aefu, 0xbe8edbb5527ccfbfu, 0x20dc5bb31301ac50u,
	0xb83ad8872240ebc5u, 0xc1de5630a5324661u, 0xefefe523eb922054u,
	0xdc477b122beb9402u, 0xd0ea8126559fdb20u, 0x6ebe0178c1a2e5e1u,
	0x13959ed898ca111bu, 0x13ba17b79619abd4u, 0x6f60882980fba0dbu,
	0x60b1f4557c42cbfbu, 0xd1c6276dd3176f63u, 0x833dd96aa00c46e0u,
	0x6993896c23bc255eu, 0xc46411706e12c2b8u, 0x94ed7ced7a59feddu,
	0x77f60caad6e24676u, 0x65edb6265eead221u, 0x22c5897d5aff146au,
	0xb10f8d99a476b2a6u, 0x1ff40269aa53da34u, 0x97fb2063b532e1e2u,
	0x20a6f92c19cffabfu, 0xbf93a01be6f2d03bu, 0xc4cdbe951503ea3au,
	0x2058e3ef685cf73fu,
};
/* clang-format on */

void chunker_params_default(struct chunker_params *p)
{
	p->min_bytes = CHUNKER_MIN_BYTES_DEFAULT;
	p->avg_bytes = CHUNKER_AVG_BYTES_DEFAULT;
	p->max_bytes = CHUNKER_MAX_BYTES_DEFAULT;
}

int chunker_params_validate(const struct chunker_params *p)
{
	if (!p)
		return -EINVAL;
	if (p->min_bytes < CHUNKER_MIN_BYTES_LIMIT || p->max_bytes > CHUNKER_MAX_BYTES_LIMIT)
		return -EINVAL;
	if (p->min_bytes > p->avg_bytes || p->avg_bytes > p->max_bytes)
		return -EINVAL;
	if ((p->avg_bytes & (p->avg_bytes - 1)) != 0)
		return -EINVAL;
	return 0;
}

/* A mask of `bits` one-bits just below bit 63. The high bits of a gear hash mix the most
 * bytes (bit k depends on the last k+1 bytes), so the cut decision looks at a ~64-byte
 * window. Bit 63 is left out so that FastCDC's two-bytes-per-iteration loop, which tests
 * the mask shifted left by one, stays an exact drop-in for the loop below. */
static uint64_t chunker_mask(unsigned bits)
{
	return ((UINT64_C(1) << bits) - 1) << (63 - bits);
}

static unsigned chunker_log2(size_t v)
{
	unsigned r = 0;

	while (v > 1) {
		v >>= 1;
		r++;
	}
	return r;
}

/* Looks for the first i in [start, end) where the hash after byte i has no bit of mask set,
 * returning i + 1, or 0 when there is none. *fp carries the hash from one call to the next.
 *
 * The hash chain h = 2h + G[b] is one LEA per byte; unrolled by four, the loop runs at
 * about the latency of that chain (2-3 GB/s on one Zen core, see bench-store). FastCDC's
 * "two bytes per iteration" form tests (h << 2) + (G[a] << 1) against mask << 1 for the
 * odd byte; it gives the same cuts but puts a shift and an add on the chain, and measured
 * no faster here. */
static inline size_t chunker_scan(const uint8_t *data, size_t start, size_t end, uint64_t mask,
				  uint64_t *fp)
{
	const uint8_t *p = data + start, *e = data + end;
	uint64_t h = *fp;

#define CHUNKER_STEP(k)                                                                            \
	do {                                                                                       \
		h = (h << 1) + chunker_gear[p[k]];                                                 \
		if (__builtin_expect(!(h & mask), 0))                                              \
			return (size_t)(p - data) + (k) + 1;                                       \
	} while (0)

	for (; e - p >= 4; p += 4) {
		CHUNKER_STEP(0);
		CHUNKER_STEP(1);
		CHUNKER_STEP(2);
		CHUNKER_STEP(3);
	}
	for (; p < e; p++)
		CHUNKER_STEP(0);
#undef CHUNKER_STEP
	*fp = h;
	return 0;
}

size_t chunker_next(const struct chunker_params *p, const uint8_t *data, size_t len)
{
	/* Normalized chunking: before avg_bytes a cut needs two more zero bits (4x rarer),
	 * after it two fewer (4x likelier), which pulls chunk sizes toward avg_bytes. */
	const unsigned bits = chunker_log2(p->avg_bytes);
	const uint64_t mask_strict = chunker_mask(bits + 2);
	const uint64_t mask_loose = chunker_mask(bits > 2 ? bits - 2 : 1);
	size_t normal = p->avg_bytes;
	uint64_t fp = 0;
	size_t cut;

	if (len <= p->min_bytes)
		return len;
	if (len > p->max_bytes)
		len = p->max_bytes;
	if (normal > len)
		normal = len;

	/* No cut can fall inside the first min_bytes, so those bytes are not hashed at all. */
	cut = chunker_scan(data, p->min_bytes, normal, mask_strict, &fp);
	if (cut)
		return cut;
	cut = chunker_scan(data, normal, len, mask_loose, &fp);
	if (cut)
		return cut;
	return len;
}
