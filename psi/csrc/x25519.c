/* Batched X25519 (RFC 7748) and the checks on received points.
 *
 * One scalar, many points: the AVX2 file runs four ladders at a time; the portable
 * radix-2^51 ladder below takes CPUs without AVX2 and the last n mod 4 points. Every
 * ladder leaves a projective (X : Z); a single inversion, shared by the batch with
 * Montgomery's trick, turns them all into affine u-coordinates.
 */
#include <stdlib.h>
#include <string.h>

#include "ct.h"
#include "native.h"

int psi_cpu_has_avx2(void)
{
#if PSI_X86_64
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

void psi_wipe(void *p, size_t n)
{
    memset(p, 0, n);
    /* The compiler may drop a memset of memory that is not read again; an empty asm
     * that could read the memory keeps it (glibc's explicit_bzero does the same, but
     * is not everywhere). A byte at a time through a volatile pointer took several
     * percent of hashing an identifier. */
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

/* p - 1, canonical: what the Legendre symbol of a non-square comes out as. */
static const uint8_t P_MINUS_1[32] = {
    0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
};

/* Whether the 256-bit little-endian integer is at least p = 2^255 - 19. Points are
 * public, so this may return early. */
static int noncanonical(const uint8_t s[32])
{
    if (s[31] != 0x7f)
        return s[31] > 0x7f;
    for (int i = 30; i > 0; i--)
        if (s[i] != 0xff)
            return 0;
    return s[0] >= 0xed;
}

/* g(u) = u^3 + A u^2 + u = ((u + A) u + 1) u, for the whole 256-bit value of s. */
static void curve_rhs(fe51 g, const uint8_t s[32])
{
    fe51 u, t;
    fe51_frombytes(u, s);
    u[0] += 19 * (uint64_t)(s[31] >> 7); /* 2^255 = 19 (mod p) */
    fe51_copy(t, u);
    t[0] += 486662;
    fe51_mul(t, t, u);
    t[0] += 1;
    fe51_mul(g, t, u);
}

static uint8_t twist_bit(const fe51 legendre)
{
    uint8_t s[32];
    fe51_tobytes(s, legendre);
    return memcmp(s, P_MINUS_1, 32) == 0 ? PSI_TWIST : 0;
}

void psi_classify(const uint8_t *points, uint8_t *status, size_t n, int avx2)
{
    size_t i = 0;
#if PSI_X86_64
    if (avx2) {
        fe51 g[4], chi[4];
        for (; i + 4 <= n; i += 4) {
            for (int j = 0; j < 4; j++)
                curve_rhs(g[j], points + 32 * (i + j));
            psi_avx2_legendre(chi, g);
            for (int j = 0; j < 4; j++)
                status[i + j] = twist_bit(chi[j]);
        }
    }
#else
    (void)avx2;
#endif
    for (; i < n; i++) {
        fe51 g, chi;
        curve_rhs(g, points + 32 * i);
        fe51_legendre(chi, g);
        status[i] = twist_bit(chi);
    }
    for (i = 0; i < n; i++)
        status[i] |= noncanonical(points + 32 * i) ? PSI_NONCANONICAL : 0;
}

/* The Montgomery ladder of RFC 7748 section 5 on one point; the scalar is clamped. The
 * swap is a mask derived from the scalar's bits: no branch and no index depends on it. */
static void ladder51(fe51 x2, fe51 z2, const uint8_t k[32], const fe51 x1)
{
    fe51 x3, z3, a, aa, b, bb, e, c, d, da, cb, t;
    fe51_one(x2);
    fe51_zero(z2);
    fe51_copy(x3, x1);
    fe51_one(z3);
    uint64_t swap = 0;
    for (int pos = 254; pos >= 0; pos--) {
        const uint64_t bit = (k[pos >> 3] >> (pos & 7)) & 1;
        swap ^= bit;
        fe51_cswap(x2, x3, 0 - swap);
        fe51_cswap(z2, z3, 0 - swap);
        swap = bit;
        fe51_add(a, x2, z2);
        fe51_sq(aa, a);
        fe51_sub(b, x2, z2);
        fe51_sq(bb, b);
        fe51_sub(e, aa, bb);
        fe51_add(c, x3, z3);
        fe51_sub(d, x3, z3);
        fe51_mul(da, d, a);
        fe51_mul(cb, c, b);
        fe51_add(t, da, cb);
        fe51_sq(x3, t);
        fe51_sub(t, da, cb);
        fe51_sq(t, t);
        fe51_mul(z3, x1, t);
        fe51_mul(x2, aa, bb);
        fe51_mul_small(t, e, 121665);
        fe51_add(t, aa, t);
        fe51_mul(z2, e, t);
    }
    fe51_cswap(x2, x3, 0 - swap);
    fe51_cswap(z2, z3, 0 - swap);
}

void psi_batch_to_bytes(uint8_t *out, fe51 *x, fe51 *z, fe51 *prefix, size_t n)
{
    fe51 acc, one, zero, inv, t;
    fe51_one(one);
    fe51_zero(zero);
    fe51_one(acc);
    for (size_t i = 0; i < n; i++) {
        /* A zero Z would zero the whole product: take 1 instead, and X = 0 so that the
         * point still encodes as 0. */
        const uint64_t is_zero = fe51_iszero_mask(z[i]);
        fe51_cmov(z[i], one, is_zero);
        fe51_cmov(x[i], zero, is_zero);
        fe51_copy(prefix[i], acc);
        fe51_mul(acc, acc, z[i]);
    }
    fe51_invert(inv, acc);
    for (size_t i = n; i-- > 0;) {
        fe51_mul(t, inv, prefix[i]); /* 1 / z[i] */
        fe51_mul(inv, inv, z[i]);
        fe51_mul(t, t, x[i]);
        fe51_tobytes(out + 32 * i, t);
    }
    psi_wipe(acc, sizeof acc);
    psi_wipe(inv, sizeof inv);
    psi_wipe(t, sizeof t);
}

static void check_points(const uint8_t *points, size_t n, int avx2, psi_counts *counts)
{
    for (size_t i = 0; i < n; i++)
        counts->malformed += noncanonical(points + 32 * i);
    if (counts->malformed)
        return;
    uint8_t status[256];
    for (size_t start = 0; start < n; start += sizeof status) {
        const size_t m = n - start < sizeof status ? n - start : sizeof status;
        psi_classify(points + 32 * start, status, m, avx2);
        for (size_t i = 0; i < m; i++)
            counts->off_curve += (status[i] & PSI_TWIST) != 0;
    }
}

/* (X : Z) of each point's ladder: four at a time on the AVX2 path, the rest one by one. */
static void ladders(fe51 *xs, fe51 *zs, const uint8_t k[32], const uint8_t *points, size_t n,
                    int avx2)
{
    size_t i = 0;
#if PSI_X86_64
    if (avx2) {
        fe51 u[4];
        for (; i + 4 <= n; i += 4) {
            for (int j = 0; j < 4; j++)
                fe51_frombytes(u[j], points + 32 * (i + j));
            psi_avx2_ladder(xs + i, zs + i, k, u);
        }
    }
#else
    (void)avx2;
#endif
    for (; i < n; i++) {
        fe51 u;
        fe51_frombytes(u, points + 32 * i);
        ladder51(xs[i], zs[i], k, u);
    }
}

int psi_x25519_batch(const uint8_t scalar[32], const uint8_t *points, uint8_t *out, size_t n,
                     int check, int avx2, psi_counts *counts)
{
    counts->malformed = counts->off_curve = counts->low_order = 0;
    if (check) {
        check_points(points, n, avx2, counts);
        if (counts->malformed || counts->off_curve)
            return 0;
    }
    if (n == 0)
        return 0;
    const size_t block = n < PSI_BLOCK ? n : PSI_BLOCK;
    fe51 *scratch = malloc(3 * block * sizeof(fe51));
    if (scratch == NULL)
        return -1;
    fe51 *xs = scratch, *zs = scratch + block, *prefix = scratch + 2 * block;
    uint8_t k[32];
    memcpy(k, scalar, 32);
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    for (size_t start = 0; start < n; start += block) {
        const size_t m = n - start < block ? n - start : block;
        const uint8_t *u = points + 32 * start;
        ladders(xs, zs, k, u, m, avx2);
        psi_batch_to_bytes(out + 32 * start, xs, zs, prefix, m);
    }
    psi_wipe(k, sizeof k);
    psi_wipe(scratch, 3 * block * sizeof(fe51));
    free(scratch);
    /* The results go to the peer; whether one is all zero is public. */
    PSI_DECLASSIFY(out, 32 * n);
    for (size_t i = 0; i < n; i++) {
        uint8_t acc = 0;
        for (int j = 0; j < 32; j++)
            acc |= out[32 * i + j];
        counts->low_order += acc == 0;
    }
    return 0;
}
