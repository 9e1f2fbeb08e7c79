/* Internal interface between the C files of psi._native (and the constant-time test
 * driver). The Python binding is module.c; nothing here touches Python. */
#ifndef PSI_NATIVE_H
#define PSI_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PSI_X86_64 1
#else
#define PSI_X86_64 0
#endif

#include "fe51.h"

/* Bits of a received point's status. */
#define PSI_NONCANONICAL 1 /* the 256-bit integer is not below p */
#define PSI_TWIST 2        /* u^3 + A u^2 + u is not a square: a point of the twist */

typedef struct {
    size_t malformed, off_curve, low_order;
} psi_counts;

/* Points per shared inversion: bounds the scratch memory of a call (120 bytes a point)
 * whatever its size, and one inversion costs under 0.1% of this many ladders. A multiple
 * of four, so that only a call's last block has points for the portable tail. */
#define PSI_BLOCK 1024

int psi_cpu_has_avx2(void);

/* status[i] for each 32-byte point: a combination of PSI_NONCANONICAL and PSI_TWIST.
 * The twist test uses the whole 256-bit integer reduced mod p. */
void psi_classify(const uint8_t *points, uint8_t *status, size_t n, int avx2);

/* X25519(scalar, point) for n points into out (32 n bytes). With check, nothing is
 * computed unless every point is canonical (else counts->malformed) and on the curve
 * (else counts->off_curve); all-zero results are counted in counts->low_order.
 * Returns 0, or -1 when memory runs out. */
int psi_x25519_batch(const uint8_t scalar[32], const uint8_t *points, uint8_t *out, size_t n,
                     int check, int avx2, psi_counts *counts);

/* out[i] = x[i] / z[i] encoded, one inversion for the batch; z[i] = 0 gives 0 (RFC 7748's
 * x * z^(p - 2)). x and z are overwritten; prefix is scratch of n elements. */
void psi_batch_to_bytes(uint8_t *out, fe51 *x, fe51 *z, fe51 *prefix, size_t n);

/* Overwrites memory that held secret-derived values, in a way the compiler keeps. */
void psi_wipe(void *p, size_t n);

#if PSI_X86_64
/* x25519_avx2.c: only called when psi_cpu_has_avx2(). */
void psi_avx2_ladder(fe51 x2[4], fe51 z2[4], const uint8_t clamped[32], const fe51 u[4]);
void psi_avx2_legendre(fe51 out[4], const fe51 z[4]);
void psi_avx2_pow22523(fe51 out[4], const fe51 z[4]);
#endif

/* sha512.c (FIPS 180-4) */
typedef struct {
    uint64_t h[8];
    uint64_t total; /* bytes hashed so far */
    uint8_t buf[128];
    size_t used;
} psi_sha512;

extern const uint64_t psi_sha512_k[80]; /* the round constants */

/* SHA-512's words are big-endian. */
static inline uint64_t psi_load64_be(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void psi_store64_be(uint8_t *p, uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

void psi_sha512_init(psi_sha512 *c);
void psi_sha512_update(psi_sha512 *c, const uint8_t *data, size_t len);
void psi_sha512_final(psi_sha512 *c, uint8_t out[64]);

#if PSI_X86_64
/* sha512_avx2.c: four compressions side by side, only called when psi_cpu_has_avx2().
 * state[w][lane] is word w of a lane's chaining value, blocks[lane] its 128-byte block;
 * lanes whose bit is clear in active keep their state. */
void psi_avx2_sha512_compress4(uint64_t state[8][4], const uint8_t *const blocks[4],
                               unsigned active);
#endif

/* hash_to_curve.c (RFC 9380, suites curve25519_XMD:SHA-512_ELL2_RO_ and _NU_) */
#define PSI_H2C_L 48 /* bytes of uniform output per field element */

/* dst_prime is DST || I2OSP(len(DST), 1), at most 256 bytes. Returns -1 when len is
 * outside 1..255 * 64. */
int psi_expand_message_xmd(const uint8_t *msg, size_t msg_len, const uint8_t *dst_prime,
                           size_t dst_prime_len, uint8_t *out, size_t len);

/* Message i is msgs[offsets[i] .. offsets[i + 1]); count is 2 (hash_to_curve) or 1
 * (encode_to_curve). out receives 32 n bytes. With avx2 (only when psi_cpu_has_avx2()),
 * the maps' exponentiations run four at a time. Returns 0, or -1 when memory runs out. */
int psi_hash_to_curve(const uint8_t *msgs, const size_t *offsets, size_t n,
                      const uint8_t *dst_prime, size_t dst_prime_len, int count, int avx2,
                      uint8_t *out);

/* The same from already expanded bytes: 48 count bytes per message. */
int psi_hash_uniform_to_curve(const uint8_t *uniform, size_t n, int count, int avx2,
                              uint8_t *out);

#endif
