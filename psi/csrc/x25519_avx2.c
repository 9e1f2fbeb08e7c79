/* Four X25519 Montgomery ladders at once, one per 64-bit lane of the AVX2 registers.
 *
 * Field elements are held in radix 2^25.5: ten limbs of alternately 26 and 25 bits,
 * f = f0 + f1 2^26 + f2 2^51 + f3 2^77 + ... + f9 2^230, and each of the ten vectors of
 * an fe4 holds one limb of four independent elements. vpmuludq multiplies the low 32
 * bits of each lane into a 64-bit product, which is why limbs must stay below 2^32 even
 * after the factors 2 and 19 of the schoolbook product are folded in. This is the
 * representation of the AVX2 Curve25519 papers (Faz-Hernandez and Lopez; Chou's
 * Sandy2x), used here across lanes instead of within one ladder: the batch has many
 * points and one scalar, so the four ladders take identical, public, control flow and a
 * single broadcast swap mask.
 *
 * Bounds. "Carried" means limbs below 2^26 (even) and 2^25 (odd) apart from a small
 * excess in limbs 1 and 5; fe4_mul, fe4_sq and fe4_mul_small return carried elements.
 * fe4_add of two carried elements stays below 2^27 / 2^26; fe4_sub (which adds 2p)
 * with a carried subtrahend below 1.5 * 2^27 / 1.5 * 2^26. With those inputs every
 * multiplier operand (an even limb times 19, an odd one times 4) is below 2^32 and
 * every accumulated column below 2^63.
 */
#include "native.h"

#if PSI_X86_64

#include <immintrin.h>

#include "fe51.h"

#define AVX2 __attribute__((target("avx2")))

typedef uint64_t v4u __attribute__((vector_size(32)));

typedef struct {
    v4u v[10];
} fe4;

#define M26 ((uint64_t)0x3ffffff)
#define M25 ((uint64_t)0x1ffffff)

AVX2 static inline v4u MUL(v4u a, v4u b) { return (v4u)_mm256_mul_epu32((__m256i)a, (__m256i)b); }

AVX2 static inline v4u broadcast(uint64_t x) { return (v4u)_mm256_set1_epi64x((long long)x); }

AVX2 static inline v4u times19(v4u c) { return c + (c << 1) + (c << 4); }

/* Carries of ten 64-bit column sums, in two interleaved chains (from limb 0 and from
 * limb 4) so that the dependency chain is half as long; the carry out of limb 9 wraps
 * around times 19, and limb 0 carries once more. */
AVX2 static inline void fe4_reduce(fe4 *out, v4u h0, v4u h1, v4u h2, v4u h3, v4u h4, v4u h5,
                                   v4u h6, v4u h7, v4u h8, v4u h9)
{
    v4u c;
#define CARRY(a, b, bits, mask) c = h##a >> bits; h##a &= mask; h##b += c
    CARRY(0, 1, 26, M26); CARRY(4, 5, 26, M26);
    CARRY(1, 2, 25, M25); CARRY(5, 6, 25, M25);
    CARRY(2, 3, 26, M26); CARRY(6, 7, 26, M26);
    CARRY(3, 4, 25, M25); CARRY(7, 8, 25, M25);
    CARRY(4, 5, 26, M26); CARRY(8, 9, 26, M26);
    c = h9 >> 25; h9 &= M25; h0 += times19(c);
    CARRY(0, 1, 26, M26);
#undef CARRY
    out->v[0] = h0; out->v[1] = h1; out->v[2] = h2; out->v[3] = h3; out->v[4] = h4;
    out->v[5] = h5; out->v[6] = h6; out->v[7] = h7; out->v[8] = h8; out->v[9] = h9;
}

AVX2 static inline void fe4_add(fe4 *h, const fe4 *f, const fe4 *g)
{
    for (int i = 0; i < 10; i++)
        h->v[i] = f->v[i] + g->v[i];
}

/* Limb i of 2p: 2^27 - 38, then alternately 2^26 - 2 and 2^27 - 2. */
static inline uint64_t two_p(int i) { return i == 0 ? 0x7ffffda : (i & 1) ? 0x3fffffe : 0x7fffffe; }

/* f - g + 2p, so that no limb goes negative for a carried g. */
AVX2 static inline void fe4_sub(fe4 *h, const fe4 *f, const fe4 *g)
{
    for (int i = 0; i < 10; i++)
        h->v[i] = f->v[i] + two_p(i) - g->v[i];
}

/* Operand scanning: row i adds f_i times every limb of g into the ten column sums. The
 * columns stay in registers and g is read from memory; ROW_DONE stops the compiler from
 * hoisting every product to the top (which spills most of them to the stack and makes
 * the whole ladder almost twice as slow). Odd limbs times odd limbs land one bit above
 * their column (25.5 i + 25.5 j rounds up twice), hence f_2; columns past 2^255 wrap
 * around times 19, hence g19. */
#define ROW_DONE()                                                                         \
    __asm__ volatile("" : "+x"(h0), "+x"(h1), "+x"(h2), "+x"(h3), "+x"(h4), "+x"(h5),      \
                     "+x"(h6), "+x"(h7), "+x"(h8), "+x"(h9) : "r"(scratch) : "memory")

AVX2 __attribute__((noinline)) static void fe4_mul(fe4 *out, const fe4 *in, const fe4 *g)
{
    const v4u k19 = broadcast(19);
    const v4u *const F = in->v, *const G = g->v;
    v4u g19[10], f, f_2, h0, h1, h2, h3, h4, h5, h6, h7, h8, h9;
    const void *scratch = g19;
    for (int j = 1; j < 10; j++)
        g19[j] = MUL(G[j], k19);
    f = F[0];
    h0 = MUL(f, G[0]); h1 = MUL(f, G[1]); h2 = MUL(f, G[2]); h3 = MUL(f, G[3]); h4 = MUL(f, G[4]);
    h5 = MUL(f, G[5]); h6 = MUL(f, G[6]); h7 = MUL(f, G[7]); h8 = MUL(f, G[8]); h9 = MUL(f, G[9]);
    ROW_DONE();
    f = F[1]; f_2 = f + f;
    h0 += MUL(f_2, g19[9]); h1 += MUL(f, G[0]); h2 += MUL(f_2, G[1]); h3 += MUL(f, G[2]);
    h4 += MUL(f_2, G[3]);
    h5 += MUL(f, G[4]); h6 += MUL(f_2, G[5]); h7 += MUL(f, G[6]); h8 += MUL(f_2, G[7]);
    h9 += MUL(f, G[8]);
    ROW_DONE();
    f = F[2];
    h0 += MUL(f, g19[8]); h1 += MUL(f, g19[9]); h2 += MUL(f, G[0]); h3 += MUL(f, G[1]);
    h4 += MUL(f, G[2]);
    h5 += MUL(f, G[3]); h6 += MUL(f, G[4]); h7 += MUL(f, G[5]); h8 += MUL(f, G[6]);
    h9 += MUL(f, G[7]);
    ROW_DONE();
    f = F[3]; f_2 = f + f;
    h0 += MUL(f_2, g19[7]); h1 += MUL(f, g19[8]); h2 += MUL(f_2, g19[9]); h3 += MUL(f, G[0]);
    h4 += MUL(f_2, G[1]);
    h5 += MUL(f, G[2]); h6 += MUL(f_2, G[3]); h7 += MUL(f, G[4]); h8 += MUL(f_2, G[5]);
    h9 += MUL(f, G[6]);
    ROW_DONE();
    f = F[4];
    h0 += MUL(f, g19[6]); h1 += MUL(f, g19[7]); h2 += MUL(f, g19[8]); h3 += MUL(f, g19[9]);
    h4 += MUL(f, G[0]);
    h5 += MUL(f, G[1]); h6 += MUL(f, G[2]); h7 += MUL(f, G[3]); h8 += MUL(f, G[4]);
    h9 += MUL(f, G[5]);
    ROW_DONE();
    f = F[5]; f_2 = f + f;
    h0 += MUL(f_2, g19[5]); h1 += MUL(f, g19[6]); h2 += MUL(f_2, g19[7]); h3 += MUL(f, g19[8]);
    h4 += MUL(f_2, g19[9]);
    h5 += MUL(f, G[0]); h6 += MUL(f_2, G[1]); h7 += MUL(f, G[2]); h8 += MUL(f_2, G[3]);
    h9 += MUL(f, G[4]);
    ROW_DONE();
    f = F[6];
    h0 += MUL(f, g19[4]); h1 += MUL(f, g19[5]); h2 += MUL(f, g19[6]); h3 += MUL(f, g19[7]);
    h4 += MUL(f, g19[8]);
    h5 += MUL(f, g19[9]); h6 += MUL(f, G[0]); h7 += MUL(f, G[1]); h8 += MUL(f, G[2]);
    h9 += MUL(f, G[3]);
    ROW_DONE();
    f = F[7]; f_2 = f + f;
    h0 += MUL(f_2, g19[3]); h1 += MUL(f, g19[4]); h2 += MUL(f_2, g19[5]); h3 += MUL(f, g19[6]);
    h4 += MUL(f_2, g19[7]);
    h5 += MUL(f, g19[8]); h6 += MUL(f_2, g19[9]); h7 += MUL(f, G[0]); h8 += MUL(f_2, G[1]);
    h9 += MUL(f, G[2]);
    ROW_DONE();
    f = F[8];
    h0 += MUL(f, g19[2]); h1 += MUL(f, g19[3]); h2 += MUL(f, g19[4]); h3 += MUL(f, g19[5]);
    h4 += MUL(f, g19[6]);
    h5 += MUL(f, g19[7]); h6 += MUL(f, g19[8]); h7 += MUL(f, g19[9]); h8 += MUL(f, G[0]);
    h9 += MUL(f, G[1]);
    ROW_DONE();
    f = F[9]; f_2 = f + f;
    h0 += MUL(f_2, g19[1]); h1 += MUL(f, g19[2]); h2 += MUL(f_2, g19[3]); h3 += MUL(f, g19[4]);
    h4 += MUL(f_2, g19[5]);
    h5 += MUL(f, g19[6]); h6 += MUL(f_2, g19[7]); h7 += MUL(f, g19[8]); h8 += MUL(f_2, g19[9]);
    h9 += MUL(f, G[0]);
    fe4_reduce(out, h0, h1, h2, h3, h4, h5, h6, h7, h8, h9);
}

/* The same for f^2: each cross product appears twice (f_2), odd times odd once more
 * (f_4), and 55 products instead of 100. */
AVX2 __attribute__((noinline)) static void fe4_sq(fe4 *out, const fe4 *in)
{
    const v4u k19 = broadcast(19);
    const v4u *const F = in->v;
    v4u f19[10], f, f_2, f_4, h0, h1, h2, h3, h4, h5, h6, h7, h8, h9;
    const void *scratch = f19;
    for (int j = 5; j < 10; j++)
        f19[j] = MUL(F[j], k19);
    f = F[0]; f_2 = f + f;
    h0 = MUL(f, f); h1 = MUL(f_2, F[1]); h2 = MUL(f_2, F[2]); h3 = MUL(f_2, F[3]);
    h4 = MUL(f_2, F[4]); h5 = MUL(f_2, F[5]); h6 = MUL(f_2, F[6]); h7 = MUL(f_2, F[7]);
    h8 = MUL(f_2, F[8]); h9 = MUL(f_2, F[9]);
    ROW_DONE();
    f = F[1]; f_2 = f + f; f_4 = f_2 + f_2;
    h2 += MUL(f_2, f); h3 += MUL(f_2, F[2]); h4 += MUL(f_4, F[3]); h5 += MUL(f_2, F[4]);
    h6 += MUL(f_4, F[5]); h7 += MUL(f_2, F[6]); h8 += MUL(f_4, F[7]); h9 += MUL(f_2, F[8]);
    h0 += MUL(f_4, f19[9]);
    ROW_DONE();
    f = F[2]; f_2 = f + f;
    h4 += MUL(f, f); h5 += MUL(f_2, F[3]); h6 += MUL(f_2, F[4]); h7 += MUL(f_2, F[5]);
    h8 += MUL(f_2, F[6]); h9 += MUL(f_2, F[7]); h0 += MUL(f_2, f19[8]); h1 += MUL(f_2, f19[9]);
    ROW_DONE();
    f = F[3]; f_2 = f + f; f_4 = f_2 + f_2;
    h6 += MUL(f_2, f); h7 += MUL(f_2, F[4]); h8 += MUL(f_4, F[5]); h9 += MUL(f_2, F[6]);
    h0 += MUL(f_4, f19[7]); h1 += MUL(f_2, f19[8]); h2 += MUL(f_4, f19[9]);
    ROW_DONE();
    f = F[4]; f_2 = f + f;
    h8 += MUL(f, f); h9 += MUL(f_2, F[5]); h0 += MUL(f_2, f19[6]); h1 += MUL(f_2, f19[7]);
    h2 += MUL(f_2, f19[8]); h3 += MUL(f_2, f19[9]);
    ROW_DONE();
    f = F[5]; f_2 = f + f; f_4 = f_2 + f_2;
    h0 += MUL(f_2, f19[5]); h1 += MUL(f_2, f19[6]); h2 += MUL(f_4, f19[7]); h3 += MUL(f_2, f19[8]);
    h4 += MUL(f_4, f19[9]);
    ROW_DONE();
    f = F[6]; f_2 = f + f;
    h2 += MUL(f, f19[6]); h3 += MUL(f_2, f19[7]); h4 += MUL(f_2, f19[8]); h5 += MUL(f_2, f19[9]);
    ROW_DONE();
    f = F[7]; f_2 = f + f; f_4 = f_2 + f_2;
    h4 += MUL(f_2, f19[7]); h5 += MUL(f_2, f19[8]); h6 += MUL(f_4, f19[9]);
    ROW_DONE();
    f = F[8]; f_2 = f + f;
    h6 += MUL(f, f19[8]); h7 += MUL(f_2, f19[9]);
    ROW_DONE();
    f = F[9]; f_2 = f + f;
    h8 += MUL(f_2, f19[9]);
    fe4_reduce(out, h0, h1, h2, h3, h4, h5, h6, h7, h8, h9);
}

AVX2 static inline void fe4_sq_n(fe4 *h, const fe4 *f, int n)
{
    fe4_sq(h, f);
    for (int i = 1; i < n; i++)
        fe4_sq(h, h);
}

/* f * s for a small s: 121665 times a limb below 2^28 is far from overflowing a lane. */
AVX2 static inline void fe4_mul_small(fe4 *out, const fe4 *f, uint32_t s)
{
    const v4u k = broadcast(s);
    fe4_reduce(out, MUL(f->v[0], k), MUL(f->v[1], k), MUL(f->v[2], k), MUL(f->v[3], k),
               MUL(f->v[4], k), MUL(f->v[5], k), MUL(f->v[6], k), MUL(f->v[7], k),
               MUL(f->v[8], k), MUL(f->v[9], k));
}

AVX2 static inline void fe4_cswap(fe4 *f, fe4 *g, v4u mask)
{
    for (int i = 0; i < 10; i++) {
        v4u t = mask & (f->v[i] ^ g->v[i]);
        f->v[i] ^= t;
        g->v[i] ^= t;
    }
}

/* The start of a ladder step: swap (x2, z2) with (x3, z3) under mask, and return
 * x2 + z2, x2 - z2, x3 + z3 and x3 - z3; the swapped inputs themselves are not needed
 * again, since the step overwrites all four. */
AVX2 static inline void fe4_swap_sums(fe4 *a, fe4 *b, fe4 *c, fe4 *d, const fe4 *x2,
                                      const fe4 *z2, const fe4 *x3, const fe4 *z3, v4u mask)
{
    for (int i = 0; i < 10; i++) {
        const v4u tx = mask & (x2->v[i] ^ x3->v[i]), tz = mask & (z2->v[i] ^ z3->v[i]);
        const v4u xa = x2->v[i] ^ tx, xb = x3->v[i] ^ tx, za = z2->v[i] ^ tz, zb = z3->v[i] ^ tz;
        a->v[i] = xa + za;
        b->v[i] = xa + two_p(i) - za;
        c->v[i] = xb + zb;
        d->v[i] = xb + two_p(i) - zb;
    }
}

AVX2 static inline void fe4_set_small(fe4 *h, uint64_t x)
{
    h->v[0] = broadcast(x);
    for (int i = 1; i < 10; i++)
        h->v[i] = broadcast(0);
}

/* Lane j of h takes f[j]; a 51-bit limb splits exactly into a 26-bit and a 25-bit one. */
AVX2 static inline void fe4_from_fe51(fe4 *h, const fe51 f[4])
{
    for (int k = 0; k < 5; k++) {
        h->v[2 * k] = (v4u){f[0][k] & M26, f[1][k] & M26, f[2][k] & M26, f[3][k] & M26};
        h->v[2 * k + 1] = (v4u){f[0][k] >> 26, f[1][k] >> 26, f[2][k] >> 26, f[3][k] >> 26};
    }
}

AVX2 static inline void fe4_to_fe51(fe51 h[4], const fe4 *f)
{
    for (int k = 0; k < 5; k++) {
        const v4u w = f->v[2 * k] + (f->v[2 * k + 1] << 26);
        for (int j = 0; j < 4; j++)
            h[j][k] = w[j];
    }
}

/* The chain of fe51_pow22523, four lanes at once. */
AVX2 static void fe4_pow22523(fe4 *out, const fe4 *z)
{
    fe4 z2, z9, z11, t, a, b, c;
    fe4_sq(&z2, z);
    fe4_sq_n(&t, &z2, 2);
    fe4_mul(&z9, &t, z);
    fe4_mul(&z11, &z9, &z2);
    fe4_sq(&t, &z11);
    fe4_mul(&a, &t, &z9);
    fe4_sq_n(&t, &a, 5);
    fe4_mul(&a, &t, &a);
    fe4_sq_n(&t, &a, 10);
    fe4_mul(&b, &t, &a);
    fe4_sq_n(&t, &b, 20);
    fe4_mul(&t, &t, &b);
    fe4_sq_n(&t, &t, 10);
    fe4_mul(&a, &t, &a);
    fe4_sq_n(&t, &a, 50);
    fe4_mul(&b, &t, &a);
    fe4_sq_n(&t, &b, 100);
    fe4_mul(&c, &t, &b);
    fe4_sq_n(&t, &c, 50);
    fe4_mul(&t, &t, &a);
    fe4_sq_n(&t, &t, 2);
    fe4_mul(out, &t, z);
}

AVX2 void psi_avx2_pow22523(fe51 out[4], const fe51 z[4])
{
    fe4 zz, t;
    fe4_from_fe51(&zz, z);
    fe4_pow22523(&t, &zz);
    fe4_to_fe51(out, &t);
}

AVX2 void psi_avx2_legendre(fe51 out[4], const fe51 z[4])
{
    fe4 zz, t, z2;
    fe4_from_fe51(&zz, z);
    fe4_pow22523(&t, &zz);
    fe4_sq_n(&t, &t, 2);
    fe4_sq(&z2, &zz);
    fe4_mul(&t, &t, &z2);
    fe4_to_fe51(out, &t);
}

AVX2 void psi_avx2_ladder(fe51 x2_out[4], fe51 z2_out[4], const uint8_t k[32], const fe51 u[4])
{
    fe4 x1, x2, z2, x3, z3, a, b, c, d, aa, bb, e, da, cb, t;
    fe4_from_fe51(&x1, u);
    fe4_set_small(&x2, 1);
    fe4_set_small(&z2, 0);
    x3 = x1;
    fe4_set_small(&z3, 1);
    uint64_t swap = 0;
    for (int pos = 254; pos >= 0; pos--) {
        const uint64_t bit = (k[pos >> 3] >> (pos & 7)) & 1;
        swap ^= bit;
        const v4u mask = broadcast(0 - swap);
        swap = bit;
        /* RFC 7748 section 5, with independent products next to each other so that
         * one's final carries overlap the next one's multiplications */
        fe4_swap_sums(&a, &b, &c, &d, &x2, &z2, &x3, &z3, mask);
        fe4_sq(&aa, &a);
        fe4_sq(&bb, &b);
        fe4_mul(&da, &d, &a);
        fe4_mul(&cb, &c, &b);
        fe4_sub(&e, &aa, &bb);
        fe4_mul(&x2, &aa, &bb);
        fe4_mul_small(&t, &e, 121665);
        fe4_add(&t, &aa, &t);
        fe4_add(&a, &da, &cb);
        fe4_sub(&b, &da, &cb);
        fe4_sq(&x3, &a);
        fe4_sq(&b, &b);
        fe4_mul(&z2, &e, &t);
        fe4_mul(&z3, &x1, &b);
    }
    const v4u mask = broadcast(0 - swap);
    fe4_cswap(&x2, &x3, mask);
    fe4_cswap(&z2, &z3, mask);
    fe4_to_fe51(x2_out, &x2);
    fe4_to_fe51(z2_out, &z2);
}

#endif
