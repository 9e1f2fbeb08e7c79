/* GF(2^255 - 19) in five 51-bit limbs (radix 2^51), portable C with 128-bit products.
 *
 * An element is h0 + h1 2^51 + h2 2^102 + h3 2^153 + h4 2^204, limbs unsigned. "Carried"
 * means every limb is below 2^51 + 2^15, which is what fe51_mul, fe51_sq, fe51_mul_small
 * and fe51_carry return. fe51_add of two carried elements and fe51_sub with a carried
 * subtrahend stay below 2^53 per limb, well inside what the multiplications accept
 * (products of 2^53 by 19 * 2^53, five of them summed, fit in 128 bits, and the last
 * carry times 19 fits in 64).
 *
 * Every function is straight-line: no branch and no memory index depends on a limb.
 */
#ifndef PSI_FE51_H
#define PSI_FE51_H

#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the native core loads and stores little-endian words directly"
#endif

typedef uint64_t fe51[5];
typedef unsigned __int128 psi_u128;

#define FE51_MASK ((uint64_t)0x7ffffffffffff)

static inline uint64_t load64_le(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void store64_le(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static inline void fe51_copy(fe51 h, const fe51 f) { memcpy(h, f, sizeof(fe51)); }

static inline void fe51_zero(fe51 h) { memset(h, 0, sizeof(fe51)); }

static inline void fe51_one(fe51 h)
{
    fe51_zero(h);
    h[0] = 1;
}

static inline void fe51_set_small(fe51 h, uint64_t v)
{
    fe51_zero(h);
    h[0] = v;
}

static inline void fe51_add(fe51 h, const fe51 f, const fe51 g)
{
    for (int i = 0; i < 5; i++)
        h[i] = f[i] + g[i];
}

/* f - g + 2p, so that no limb goes negative for a carried g. */
static inline void fe51_sub(fe51 h, const fe51 f, const fe51 g)
{
    h[0] = f[0] + 0xfffffffffffdaULL - g[0];
    for (int i = 1; i < 5; i++)
        h[i] = f[i] + 0xffffffffffffeULL - g[i];
}

static inline void fe51_neg(fe51 h, const fe51 f)
{
    fe51 zero;
    fe51_zero(zero);
    fe51_sub(h, zero, f);
}

/* One pass of carries; the top carry wraps around times 19 (2^255 = 19 mod p). */
static inline void fe51_carry(fe51 h)
{
    uint64_t c;
    c = h[0] >> 51; h[0] &= FE51_MASK; h[1] += c;
    c = h[1] >> 51; h[1] &= FE51_MASK; h[2] += c;
    c = h[2] >> 51; h[2] &= FE51_MASK; h[3] += c;
    c = h[3] >> 51; h[3] &= FE51_MASK; h[4] += c;
    c = h[4] >> 51; h[4] &= FE51_MASK; h[0] += 19 * c;
    c = h[0] >> 51; h[0] &= FE51_MASK; h[1] += c;
}

static inline void fe51_reduce_wide(fe51 h, psi_u128 r0, psi_u128 r1, psi_u128 r2,
                                    psi_u128 r3, psi_u128 r4)
{
    r1 += (uint64_t)(r0 >> 51);
    r2 += (uint64_t)(r1 >> 51);
    r3 += (uint64_t)(r2 >> 51);
    r4 += (uint64_t)(r3 >> 51);
    uint64_t c = (uint64_t)(r4 >> 51);
    h[0] = ((uint64_t)r0 & FE51_MASK) + 19 * c;
    h[1] = ((uint64_t)r1 & FE51_MASK) + (h[0] >> 51);
    h[0] &= FE51_MASK;
    h[2] = (uint64_t)r2 & FE51_MASK;
    h[3] = (uint64_t)r3 & FE51_MASK;
    h[4] = (uint64_t)r4 & FE51_MASK;
}

static inline void fe51_mul(fe51 h, const fe51 f, const fe51 g)
{
    const uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    const uint64_t g0 = g[0], g1 = g[1], g2 = g[2], g3 = g[3], g4 = g[4];
    const uint64_t g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    psi_u128 r0 = (psi_u128)f0 * g0 + (psi_u128)f1 * g4_19 + (psi_u128)f2 * g3_19 +
                  (psi_u128)f3 * g2_19 + (psi_u128)f4 * g1_19;
    psi_u128 r1 = (psi_u128)f0 * g1 + (psi_u128)f1 * g0 + (psi_u128)f2 * g4_19 +
                  (psi_u128)f3 * g3_19 + (psi_u128)f4 * g2_19;
    psi_u128 r2 = (psi_u128)f0 * g2 + (psi_u128)f1 * g1 + (psi_u128)f2 * g0 +
                  (psi_u128)f3 * g4_19 + (psi_u128)f4 * g3_19;
    psi_u128 r3 = (psi_u128)f0 * g3 + (psi_u128)f1 * g2 + (psi_u128)f2 * g1 +
                  (psi_u128)f3 * g0 + (psi_u128)f4 * g4_19;
    psi_u128 r4 = (psi_u128)f0 * g4 + (psi_u128)f1 * g3 + (psi_u128)f2 * g2 +
                  (psi_u128)f3 * g1 + (psi_u128)f4 * g0;
    fe51_reduce_wide(h, r0, r1, r2, r3, r4);
}

static inline void fe51_sq(fe51 h, const fe51 f)
{
    const uint64_t f0 = f[0], f1 = f[1], f2 = f[2], f3 = f[3], f4 = f[4];
    const uint64_t f0_2 = 2 * f0, f1_2 = 2 * f1;
    const uint64_t f1_38 = 38 * f1, f2_38 = 38 * f2, f3_38 = 38 * f3;
    const uint64_t f3_19 = 19 * f3, f4_19 = 19 * f4;
    psi_u128 r0 = (psi_u128)f0 * f0 + (psi_u128)f1_38 * f4 + (psi_u128)f2_38 * f3;
    psi_u128 r1 = (psi_u128)f0_2 * f1 + (psi_u128)f2_38 * f4 + (psi_u128)f3_19 * f3;
    psi_u128 r2 = (psi_u128)f0_2 * f2 + (psi_u128)f1 * f1 + (psi_u128)f3_38 * f4;
    psi_u128 r3 = (psi_u128)f0_2 * f3 + (psi_u128)f1_2 * f2 + (psi_u128)f4_19 * f4;
    psi_u128 r4 = (psi_u128)f0_2 * f4 + (psi_u128)f1_2 * f3 + (psi_u128)f2 * f2;
    fe51_reduce_wide(h, r0, r1, r2, r3, r4);
}

static inline void fe51_sq_n(fe51 h, const fe51 f, int n)
{
    fe51_sq(h, f);
    for (int i = 1; i < n; i++)
        fe51_sq(h, h);
}

/* f * s for s below 2^32. */
static inline void fe51_mul_small(fe51 h, const fe51 f, uint32_t s)
{
    fe51_reduce_wide(h, (psi_u128)f[0] * s, (psi_u128)f[1] * s, (psi_u128)f[2] * s,
                     (psi_u128)f[3] * s, (psi_u128)f[4] * s);
}

/* Swap f and g when mask is all ones, leave them when it is zero. */
static inline void fe51_cswap(fe51 f, fe51 g, uint64_t mask)
{
    for (int i = 0; i < 5; i++) {
        uint64_t t = mask & (f[i] ^ g[i]);
        f[i] ^= t;
        g[i] ^= t;
    }
}

/* h = g when mask is all ones, else h unchanged. */
static inline void fe51_cmov(fe51 h, const fe51 g, uint64_t mask)
{
    for (int i = 0; i < 5; i++)
        h[i] ^= mask & (h[i] ^ g[i]);
}

/* u-coordinate from 32 bytes; the top bit is ignored, as RFC 7748 prescribes. Values
 * in [p, 2^255) are kept as they are: they are congruent to their reduction. */
static inline void fe51_frombytes(fe51 h, const uint8_t s[32])
{
    const uint64_t w0 = load64_le(s), w1 = load64_le(s + 8), w2 = load64_le(s + 16),
                   w3 = load64_le(s + 24);
    h[0] = w0 & FE51_MASK;
    h[1] = ((w0 >> 51) | (w1 << 13)) & FE51_MASK;
    h[2] = ((w1 >> 38) | (w2 << 26)) & FE51_MASK;
    h[3] = ((w2 >> 25) | (w3 << 39)) & FE51_MASK;
    h[4] = (w3 >> 12) & FE51_MASK;
}

/* Canonical 32-byte little-endian encoding (the unique representative below p). */
static inline void fe51_tobytes(uint8_t s[32], const fe51 f)
{
    fe51 h;
    fe51_copy(h, f);
    fe51_carry(h);
    fe51_carry(h);
    /* Now h < 2^255 + 2^15 < 2p, so h >= p exactly when h + 19 reaches 2^255. */
    uint64_t q = (h[0] + 19) >> 51;
    q = (h[1] + q) >> 51;
    q = (h[2] + q) >> 51;
    q = (h[3] + q) >> 51;
    q = (h[4] + q) >> 51;
    h[0] += 19 * q;
    h[1] += h[0] >> 51; h[0] &= FE51_MASK;
    h[2] += h[1] >> 51; h[1] &= FE51_MASK;
    h[3] += h[2] >> 51; h[2] &= FE51_MASK;
    h[4] += h[3] >> 51; h[3] &= FE51_MASK;
    h[4] &= FE51_MASK; /* drops 2^255, which together with the +19 subtracts p */
    store64_le(s, h[0] | (h[1] << 51));
    store64_le(s + 8, (h[1] >> 13) | (h[2] << 38));
    store64_le(s + 16, (h[2] >> 26) | (h[3] << 25));
    store64_le(s + 24, (h[3] >> 39) | (h[4] << 12));
}

/* All ones when f = 0 mod p, else zero. */
static inline uint64_t fe51_iszero_mask(const fe51 f)
{
    uint8_t s[32];
    fe51_tobytes(s, f);
    uint64_t acc = 0;
    for (int i = 0; i < 32; i++)
        acc |= s[i];
    return 0 - ((acc - 1) >> 63); /* acc == 0 gives all ones */
}

/* All ones when f = g mod p, else zero. */
static inline uint64_t fe51_eq_mask(const fe51 f, const fe51 g)
{
    fe51 d;
    fe51_sub(d, f, g);
    return fe51_iszero_mask(d);
}

/* The low bit of the canonical encoding (sgn0 of RFC 9380 for this field). */
static inline uint64_t fe51_parity(const fe51 f)
{
    uint8_t s[32];
    fe51_tobytes(s, f);
    return s[0] & 1;
}

/* f^(2^252 - 3): the square-root exponent (p - 5) / 8; an inverse and a Legendre symbol
 * are a few operations away from it. The chain is the usual one for this prime:
 * 2^5 - 1, 2^10 - 1, 2^20 - 1, 2^40 - 1, 2^50 - 1, 2^100 - 1, 2^200 - 1, 2^250 - 1. */
static inline void fe51_pow22523(fe51 out, const fe51 z)
{
    fe51 z2, z9, z11, t, a, b, c;
    fe51_sq(z2, z);              /* z^2 */
    fe51_sq_n(t, z2, 2);         /* z^8 */
    fe51_mul(z9, t, z);          /* z^9 */
    fe51_mul(z11, z9, z2);       /* z^11 */
    fe51_sq(t, z11);             /* z^22 */
    fe51_mul(a, t, z9);          /* z^(2^5 - 1) */
    fe51_sq_n(t, a, 5);
    fe51_mul(a, t, a);           /* z^(2^10 - 1) */
    fe51_sq_n(t, a, 10);
    fe51_mul(b, t, a);           /* z^(2^20 - 1) */
    fe51_sq_n(t, b, 20);
    fe51_mul(t, t, b);           /* z^(2^40 - 1) */
    fe51_sq_n(t, t, 10);
    fe51_mul(a, t, a);           /* z^(2^50 - 1) */
    fe51_sq_n(t, a, 50);
    fe51_mul(b, t, a);           /* z^(2^100 - 1) */
    fe51_sq_n(t, b, 100);
    fe51_mul(c, t, b);           /* z^(2^200 - 1) */
    fe51_sq_n(t, c, 50);
    fe51_mul(t, t, a);           /* z^(2^250 - 1) */
    fe51_sq_n(t, t, 2);          /* z^(2^252 - 4) */
    fe51_mul(out, t, z);         /* z^(2^252 - 3) */
}

/* 1 / z = z^(p - 2), with p - 2 = 8 (2^252 - 3) + 3; 0 maps to 0. */
static inline void fe51_invert(fe51 out, const fe51 z)
{
    fe51 t, z3;
    fe51_pow22523(t, z);
    fe51_sq_n(t, t, 3);
    fe51_sq(z3, z);
    fe51_mul(z3, z3, z);
    fe51_mul(out, t, z3);
}

/* z^((p - 1) / 2), with (p - 1) / 2 = 4 (2^252 - 3) + 2: 1, p - 1 or 0. */
static inline void fe51_legendre(fe51 out, const fe51 z)
{
    fe51 t, z2;
    fe51_pow22523(t, z);
    fe51_sq_n(t, t, 2);
    fe51_sq(z2, z);
    fe51_mul(out, t, z2);
}

#endif
