/* Four SHA-512 compressions at once (FIPS 180-4, section 6.4.2), one per 64-bit lane of
 * the AVX2 registers: the rounds are the scalar file's, on vectors of four words.
 *
 * Hashing an identifier takes five compressions, and a batch has many identifiers of
 * similar length, so four of them take the same rounds side by side. AVX2 has no 64-bit
 * rotation: each is two shifts and an or, which still leaves the four lanes more than
 * twice as fast as one scalar compression after another.
 */
#include "native.h"

#if PSI_X86_64

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2")))

typedef uint64_t v4u __attribute__((vector_size(32)));

AVX2 static inline v4u broadcast(uint64_t x) { return (v4u)_mm256_set1_epi64x((long long)x); }

#define SHA512_WORD v4u
#define ROTR(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define SHA512_K(t) broadcast(psi_sha512_k[t])
#include "sha512_rounds.h"

AVX2 void psi_avx2_sha512_compress4(uint64_t state[8][4], const uint8_t *const blocks[4],
                                    unsigned active)
{
    v4u w[16];
    for (int t = 0; t < 16; t++)
        w[t] = (v4u){psi_load64_be(blocks[0] + 8 * t), psi_load64_be(blocks[1] + 8 * t),
                     psi_load64_be(blocks[2] + 8 * t), psi_load64_be(blocks[3] + 8 * t)};
    v4u s[8];
    for (int i = 0; i < 8; i++)
        memcpy(&s[i], state[i], sizeof s[i]);
    v4u a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], k = s[7];
    SHA512_ROUNDS();
    /* all ones in the lanes that take the block, zero in those that keep their state */
    const v4u take = {0 - (uint64_t)(active & 1), 0 - (uint64_t)(active >> 1 & 1),
                      0 - (uint64_t)(active >> 2 & 1), 0 - (uint64_t)(active >> 3 & 1)};
    const v4u sum[8] = {s[0] + a, s[1] + b, s[2] + c, s[3] + d,
                        s[4] + e, s[5] + f, s[6] + g, s[7] + k};
    for (int i = 0; i < 8; i++) {
        const v4u out = (sum[i] & take) | (s[i] & ~take);
        memcpy(state[i], &out, sizeof out);
    }
}

#endif
