/* RFC 9380 hashing to curve25519: expand_message_xmd with SHA-512 (section 5.3.1),
 * hash_to_field (5.2), the Elligator 2 map in the straight-line form of appendix G.2.1,
 * and clear_cofactor, for the suites curve25519_XMD:SHA-512_ELL2_RO_ (two field
 * elements, two maps, one addition) and _NU_ (one).
 *
 * Only u-coordinates leave: the sum of the two mapped points is taken in fraction form
 * straight to a projective u, the cofactor 8 is cleared with three x-only doublings,
 * and one inversion per batch makes every u affine. With AVX2, four messages are
 * expanded at a time, their SHA-512 compressions side by side in the vector lanes, and
 * four maps share each exponentiation. Identifiers are the caller's own data, so all of
 * this runs without a branch or an index that depends on them (their lengths, like any
 * hash's, are public).
 */
#include <stdlib.h>
#include <string.h>

#include "native.h"

#define CURVE_A 486662 /* the Montgomery coefficient, J in RFC 9380 */

/* c2 = 2^((p + 3) / 8) and c3 = sqrt(-1) = 2^((p - 1) / 4), little-endian. */
static const uint8_t C2[32] = {
    0xb1, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad, 0x06, 0x18, 0x43, 0x2f,
    0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b,
};
static const uint8_t C3[32] = {
    0xb0, 0xa0, 0x0e, 0x4a, 0x27, 0x1b, 0xee, 0xc4, 0x78, 0xe4, 0x2f, 0xad, 0x06, 0x18, 0x43, 0x2f,
    0xa7, 0xd7, 0xfb, 0x3d, 0x99, 0x00, 0x4d, 0x2b, 0x0b, 0xdf, 0xc1, 0x4f, 0x80, 0x24, 0x83, 0x2b,
};

/* The SHA-512 state after the all-zero block Z_pad that starts every b_0. */
static void zpad_state(psi_sha512 *c)
{
    static const uint8_t zeros[128];
    psi_sha512_init(c);
    psi_sha512_update(c, zeros, sizeof zeros);
}

static void expand(const psi_sha512 *zpad, const uint8_t *msg, size_t msg_len,
                   const uint8_t *dst_prime, size_t dst_prime_len, uint8_t *out, size_t len)
{
    const size_t ell = (len + 63) / 64;
    const uint8_t len_and_zero[3] = {(uint8_t)(len >> 8), (uint8_t)len, 0};
    uint8_t b0[64], bi[64];
    psi_sha512 c = *zpad;
    psi_sha512_update(&c, msg, msg_len);
    psi_sha512_update(&c, len_and_zero, 3);
    psi_sha512_update(&c, dst_prime, dst_prime_len);
    psi_sha512_final(&c, b0);
    memset(bi, 0, sizeof bi); /* b_0 xor (no b_0) = b_0 for the first block */
    for (size_t i = 1; i <= ell; i++) {
        const uint8_t index = (uint8_t)i;
        for (int j = 0; j < 64; j++)
            bi[j] ^= b0[j];
        psi_sha512_init(&c);
        psi_sha512_update(&c, bi, 64);
        psi_sha512_update(&c, &index, 1);
        psi_sha512_update(&c, dst_prime, dst_prime_len);
        psi_sha512_final(&c, bi);
        const size_t take = len - 64 * (i - 1) < 64 ? len - 64 * (i - 1) : 64;
        memcpy(out + 64 * (i - 1), bi, take);
    }
    psi_wipe(b0, sizeof b0);
    psi_wipe(bi, sizeof bi);
}

#if PSI_X86_64
/* The most blocks of a lane's input to one hash in expand4: any b_i (64 + 1 + a DST' of
 * at most 256 bytes, padded) and b_0 for the messages of a few hundred bytes that
 * identifiers are. A group with a longer message is expanded one message at a time. */
#define LANE_BLOCKS 4

/* Pads the len bytes at buf, the end of a message whose first `before` bytes are
 * compressed already (FIPS 180-4 section 5.1.2); returns the blocks. */
static size_t pad(uint8_t *buf, size_t len, uint64_t before)
{
    const size_t blocks = (len + 17 + 127) / 128;
    const uint64_t total = before + len;
    uint8_t *end = buf + 128 * blocks;
    buf[len] = 0x80;
    memset(buf + len + 1, 0, (size_t)(end - buf) - len - 1 - 16);
    psi_store64_be(end - 16, total >> 61); /* the length in bits, 128-bit */
    psi_store64_be(end - 8, total << 3);
    return blocks;
}

/* Hashes of four inputs of `blocks[lane]` padded blocks at bufs[lane], from the
 * chaining value h, into digest[lane]. */
static void hash4(uint8_t digest[4][64], uint8_t bufs[4][LANE_BLOCKS * 128],
                  const size_t blocks[4], const uint64_t h[8])
{
    uint64_t state[8][4];
    size_t most = 0;
    for (int w = 0; w < 8; w++)
        for (int lane = 0; lane < 4; lane++)
            state[w][lane] = h[w];
    for (int lane = 0; lane < 4; lane++)
        most = blocks[lane] > most ? blocks[lane] : most;
    for (size_t j = 0; j < most; j++) {
        const uint8_t *block[4];
        unsigned active = 0;
        for (int lane = 0; lane < 4; lane++) { /* lengths are public */
            const int takes = j < blocks[lane];
            active |= (unsigned)takes << lane;
            block[lane] = bufs[lane] + (takes ? 128 * j : 0);
        }
        psi_avx2_sha512_compress4(state, block, active);
    }
    for (int lane = 0; lane < 4; lane++)
        for (int w = 0; w < 8; w++)
            psi_store64_be(digest[lane] + 8 * w, state[w][lane]);
    psi_wipe(state, sizeof state);
}

/* expand for four messages at once, their hashes in the AVX2 lanes; out receives len
 * bytes per message. Returns -1, having done nothing, when a message is too long for
 * the lanes' buffers. */
static int expand4(const psi_sha512 *zpad, const uint8_t *const msg[4], const size_t msg_len[4],
                   const uint8_t *dst_prime, size_t dst_prime_len, uint8_t *out, size_t len)
{
    for (int lane = 0; lane < 4; lane++)
        if (msg_len[lane] + 3 + dst_prime_len + 17 > LANE_BLOCKS * 128)
            return -1;
    const size_t ell = (len + 63) / 64;
    const uint8_t len_and_zero[3] = {(uint8_t)(len >> 8), (uint8_t)len, 0};
    uint8_t bufs[4][LANE_BLOCKS * 128], b0[4][64], bi[4][64];
    size_t blocks[4];
    psi_sha512 iv;
    psi_sha512_init(&iv);
    for (int lane = 0; lane < 4; lane++) { /* b_0 = H(Z_pad || msg || l_i_b || 0 || DST') */
        uint8_t *p = bufs[lane];
        memcpy(p, msg[lane], msg_len[lane]);
        memcpy(p + msg_len[lane], len_and_zero, 3);
        memcpy(p + msg_len[lane] + 3, dst_prime, dst_prime_len);
        blocks[lane] = pad(p, msg_len[lane] + 3 + dst_prime_len, 128);
    }
    hash4(b0, bufs, blocks, zpad->h);
    memset(bi, 0, sizeof bi);
    for (size_t i = 1; i <= ell; i++) { /* b_i = H((b_0 xor b_(i-1)) || i || DST') */
        for (int lane = 0; lane < 4; lane++) {
            uint8_t *p = bufs[lane];
            for (int j = 0; j < 64; j++)
                p[j] = b0[lane][j] ^ bi[lane][j];
            p[64] = (uint8_t)i;
            memcpy(p + 65, dst_prime, dst_prime_len);
            blocks[lane] = pad(p, 65 + dst_prime_len, 0);
        }
        hash4(bi, bufs, blocks, iv.h);
        const size_t take = len - 64 * (i - 1) < 64 ? len - 64 * (i - 1) : 64;
        for (int lane = 0; lane < 4; lane++)
            memcpy(out + lane * len + 64 * (i - 1), bi[lane], take);
    }
    psi_wipe(bufs, sizeof bufs);
    psi_wipe(b0, sizeof b0);
    psi_wipe(bi, sizeof bi);
    return 0;
}
#endif

int psi_expand_message_xmd(const uint8_t *msg, size_t msg_len, const uint8_t *dst_prime,
                           size_t dst_prime_len, uint8_t *out, size_t len)
{
    if (len == 0 || len > 255 * 64)
        return -1;
    psi_sha512 zpad;
    zpad_state(&zpad);
    expand(&zpad, msg, msg_len, dst_prime, dst_prime_len, out, len);
    return 0;
}

/* OS2IP of 48 bytes, mod p: with the integer hi 2^256 + lo, 2^256 = 38 and the top bit
 * of lo, 2^255, = 19 (mod p). */
static void fe51_from_uniform(fe51 h, const uint8_t b[PSI_H2C_L])
{
    uint8_t lo[32];
    for (int i = 0; i < 32; i++)
        lo[i] = b[47 - i];
    uint64_t hi0 = 0, hi1 = 0; /* hi = hi1 2^64 + hi0 */
    for (int i = 0; i < 8; i++) {
        hi1 = (hi1 << 8) | b[i];
        hi0 = (hi0 << 8) | b[8 + i];
    }
    fe51_frombytes(h, lo);
    h[0] += 19 * (uint64_t)(lo[31] >> 7);
    h[0] += 38 * (hi0 & FE51_MASK);
    h[1] += 38 * (((hi0 >> 51) | (hi1 << 13)) & FE51_MASK);
    h[2] += 38 * (hi1 >> 38);
    fe51_carry(h);
    psi_wipe(lo, sizeof lo);
}

/* Elligator 2 (RFC 9380 appendix G.2.1), in two halves around its one exponentiation
 * (step 16), so that four maps can take it together in the AVX2 lanes. Step numbers are
 * the appendix's. */
typedef struct {
    fe51 u, tv1, xd, x1n, gxd, gx1, tv3;
} map_state;

/* Steps 1-15; pow receives tv2, whose 2^252 - 3 power step 16 takes. */
static void map_start(map_state *s, fe51 pow, const fe51 u)
{
    fe51 tv2, t;
    fe51_copy(s->u, u);
    fe51_sq(s->tv1, u);                             /* 1 */
    fe51_add(s->tv1, s->tv1, s->tv1);               /* 2: 2 u^2 */
    fe51_carry(s->tv1);
    fe51_one(t);
    fe51_add(s->xd, s->tv1, t);                     /* 3: never 0, as -1/2 is not a square */
    fe51_set_small(t, CURVE_A);
    fe51_neg(s->x1n, t);                            /* 4: x1 = -J / xd */
    fe51_sq(tv2, s->xd);                            /* 5 */
    fe51_mul(s->gxd, tv2, s->xd);                   /* 6 */
    fe51_mul_small(s->gx1, s->tv1, CURVE_A);        /* 7 */
    fe51_mul(s->gx1, s->gx1, s->x1n);               /* 8 */
    fe51_add(s->gx1, s->gx1, tv2);                  /* 9 */
    fe51_mul(s->gx1, s->gx1, s->x1n);               /* 10: g(x1) gxd */
    fe51_sq(s->tv3, s->gxd);                        /* 11 */
    fe51_sq(tv2, s->tv3);                           /* 12 */
    fe51_mul(s->tv3, s->tv3, s->gxd);               /* 13 */
    fe51_mul(s->tv3, s->tv3, s->gx1);               /* 14 */
    fe51_mul(pow, tv2, s->tv3);                     /* 15 */
}

/* Steps 17-38, from step 16's power: the point (xn / xd, y). */
static void map_finish(fe51 xn, fe51 xd, fe51 y, const map_state *s, const fe51 pow)
{
    fe51 c2, c3, tv2, x2n, gx2, y11, y12, y1, y21, y22, y2, t;
    fe51_frombytes(c2, C2);
    fe51_frombytes(c3, C3);
    fe51_mul(y11, pow, s->tv3);                     /* 17 */
    fe51_mul(y12, y11, c3);                         /* 18 */
    fe51_sq(tv2, y11);                              /* 19 */
    fe51_mul(tv2, tv2, s->gxd);                     /* 20 */
    const uint64_t e1 = fe51_eq_mask(tv2, s->gx1);  /* 21 */
    fe51_copy(y1, y12);
    fe51_cmov(y1, y11, e1);                         /* 22 */
    fe51_mul(x2n, s->x1n, s->tv1);                  /* 23 */
    fe51_mul(y21, y11, s->u);                       /* 24 */
    fe51_mul(y21, y21, c2);                         /* 25 */
    fe51_mul(y22, y21, c3);                         /* 26 */
    fe51_mul(gx2, s->gx1, s->tv1);                  /* 27 */
    fe51_sq(tv2, y21);                              /* 28 */
    fe51_mul(tv2, tv2, s->gxd);                     /* 29 */
    const uint64_t e2 = fe51_eq_mask(tv2, gx2);     /* 30 */
    fe51_copy(y2, y22);
    fe51_cmov(y2, y21, e2);                         /* 31 */
    fe51_sq(tv2, y1);                               /* 32 */
    fe51_mul(tv2, tv2, s->gxd);                     /* 33 */
    const uint64_t e3 = fe51_eq_mask(tv2, s->gx1);  /* 34 */
    fe51_copy(xn, x2n);
    fe51_cmov(xn, s->x1n, e3);                      /* 35 */
    fe51_copy(xd, s->xd);
    fe51_copy(y, y2);
    fe51_cmov(y, y1, e3);                           /* 36 */
    const uint64_t e4 = 0 - fe51_parity(y);         /* 37 */
    fe51_neg(t, y);
    fe51_cmov(y, t, e3 ^ e4);                       /* 38 */
    fe51_carry(y);
}

/* x-only doubling, with the ladder's formulas. */
static void dbl(fe51 x, fe51 z)
{
    fe51 s, d, aa, bb, e, t;
    fe51_add(s, x, z);
    fe51_sub(d, x, z);
    fe51_sq(aa, s);
    fe51_sq(bb, d);
    fe51_sub(e, aa, bb);
    fe51_mul(x, aa, bb);
    fe51_mul_small(t, e, 121665);
    fe51_add(t, aa, t);
    fe51_mul(z, e, t);
}

/* Projective u of Q0 + Q1 for Q0 = (x0n / x0d, y0), Q1 = (x1n / x1d, y1):
 * lambda = (y1 - y0) / (x1 - x0) = num / den and u = lambda^2 - J - x0 - x1, all over
 * den^2 x0d x1d. Equal u-coordinates make den zero: then the sum is the identity (Z = 0
 * already) or, for Q0 = Q1, the doubling of Q0, chosen without a branch. */
static void add(fe51 x, fe51 z, const fe51 x0n, const fe51 x0d, const fe51 y0,
                const fe51 x1n, const fe51 x1d, const fe51 y1)
{
    fe51 a, b, den, dd, num, den2, s, t;
    fe51_mul(a, x1n, x0d);
    fe51_mul(b, x0n, x1d);
    fe51_sub(den, a, b);
    fe51_carry(den);
    fe51_mul(dd, x0d, x1d);
    fe51_sub(t, y1, y0);
    fe51_mul(num, t, dd);
    fe51_sq(den2, den);
    fe51_mul_small(s, dd, CURVE_A);
    fe51_add(s, s, a);
    fe51_add(s, s, b);
    fe51_mul(s, s, den2);
    fe51_sq(t, num);
    fe51_mul(t, t, dd);
    fe51_sub(x, t, s);
    fe51_carry(x);
    fe51_mul(z, den2, dd);
    const uint64_t same = fe51_iszero_mask(den) & fe51_eq_mask(y0, y1);
    fe51_copy(a, x0n);
    fe51_copy(b, x0d);
    dbl(a, b);
    fe51_cmov(x, a, same);
    fe51_cmov(z, b, same);
}

/* Maps per group: the exponentiations of a group's maps run in the four AVX2 lanes. */
#define MAPS 4

/* The projective u of k messages' points from their field elements (count per message,
 * 48 bytes each, in order), k count <= MAPS. */
static void points_from_uniform(fe51 *x, fe51 *z, const uint8_t *uniform, int k, int count,
                                int avx2)
{
    map_state s[MAPS];
    fe51 pow[MAPS], xn[MAPS], xd[MAPS], y[MAPS];
    const int maps = k * count;
    for (int j = 0; j < maps; j++) {
        fe51 u;
        fe51_from_uniform(u, uniform + j * PSI_H2C_L);
        map_start(&s[j], pow[j], u);
    }
#if PSI_X86_64
    if (avx2 && maps == MAPS)
        psi_avx2_pow22523(pow, pow);
    else
#endif
        for (int j = 0; j < maps; j++)
            fe51_pow22523(pow[j], pow[j]);
    for (int j = 0; j < maps; j++)
        map_finish(xn[j], xd[j], y[j], &s[j], pow[j]);
    for (int i = 0; i < k; i++) {
        if (count == 2) {
            add(x[i], z[i], xn[2 * i], xd[2 * i], y[2 * i], xn[2 * i + 1], xd[2 * i + 1],
                y[2 * i + 1]);
        } else {
            fe51_copy(x[i], xn[i]);
            fe51_copy(z[i], xd[i]);
        }
        for (int d = 0; d < 3; d++) /* clear the cofactor 8 */
            dbl(x[i], z[i]);
    }
#if !PSI_X86_64
    (void)avx2;
#endif
}

int psi_hash_uniform_to_curve(const uint8_t *uniform, size_t n, int count, int avx2,
                              uint8_t *out)
{
    if (n == 0)
        return 0;
    const size_t block = n < PSI_BLOCK ? n : PSI_BLOCK;
    fe51 *scratch = malloc(3 * block * sizeof(fe51));
    if (scratch == NULL)
        return -1;
    const size_t group = MAPS / count;
    for (size_t start = 0; start < n; start += block) {
        const size_t m = n - start < block ? n - start : block;
        for (size_t i = 0; i < m; i += group) {
            const int k = m - i < group ? (int)(m - i) : (int)group;
            points_from_uniform(scratch + i, scratch + block + i,
                                uniform + (start + i) * count * PSI_H2C_L, k, count, avx2);
        }
        psi_batch_to_bytes(out + 32 * start, scratch, scratch + block, scratch + 2 * block, m);
    }
    psi_wipe(scratch, 3 * block * sizeof(fe51));
    free(scratch);
    return 0;
}

int psi_hash_to_curve(const uint8_t *msgs, const size_t *offsets, size_t n,
                      const uint8_t *dst_prime, size_t dst_prime_len, int count, int avx2,
                      uint8_t *out)
{
    if (n == 0)
        return 0;
    /* A block's messages are expanded, then mapped as expanded bytes are. */
    const size_t block = n < PSI_BLOCK ? n : PSI_BLOCK, width = (size_t)count * PSI_H2C_L;
    uint8_t *uniform = malloc(block * width);
    if (uniform == NULL)
        return -1;
    psi_sha512 zpad;
    zpad_state(&zpad);
    int rc = 0;
    for (size_t start = 0; start < n && rc == 0; start += block) {
        const size_t m = n - start < block ? n - start : block;
        for (size_t i = 0; i < m;) {
#if PSI_X86_64
            if (avx2 && m - i >= 4) {
                const uint8_t *group[4];
                size_t lens[4];
                for (int lane = 0; lane < 4; lane++) {
                    group[lane] = msgs + offsets[start + i + lane];
                    lens[lane] = offsets[start + i + lane + 1] - offsets[start + i + lane];
                }
                if (expand4(&zpad, group, lens, dst_prime, dst_prime_len, uniform + i * width,
                            width) == 0) {
                    i += 4;
                    continue;
                }
            }
#endif
            const size_t j = start + i;
            expand(&zpad, msgs + offsets[j], offsets[j + 1] - offsets[j], dst_prime, dst_prime_len,
                   uniform + i * width, width);
            i++;
        }
        rc = psi_hash_uniform_to_curve(uniform, m, count, avx2, out + 32 * start);
    }
    psi_wipe(uniform, block * width);
    free(uniform);
    return rc;
}
