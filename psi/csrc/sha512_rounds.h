/* The 80 rounds of a SHA-512 compression (FIPS 180-4, section 6.4.2), shared by the
 * scalar file and the AVX2 one, which runs them on vectors of four words. An including
 * file defines SHA512_WORD (the type of a word: uint64_t or a vector of them), ROTR(x, n)
 * and SHA512_K(t) (round t's constant as a SHA512_WORD) before including this, and calls
 * SHA512_ROUNDS() with the message block's words in w[16] and the working variables in
 * a, b, c, d, e, f, g, k. The operators are C's, which GCC and Clang also apply lane by
 * lane to vectors. */
#ifndef PSI_SHA512_ROUNDS_H
#define PSI_SHA512_ROUNDS_H

/* One round with the working variables named by position, so that eight rounds in a row
 * rotate the names instead of moving eight values. */
#define SHA512_ROUND(a, b, c, d, e, f, g, h, t)                                              \
    do {                                                                                   \
        const SHA512_WORD t1 = h + (ROTR(e, 14) ^ ROTR(e, 18) ^ ROTR(e, 41)) +              \
                               ((e & f) ^ (~e & g)) + SHA512_K(t) + w[(t) & 15];            \
        const SHA512_WORD t2 = (ROTR(a, 28) ^ ROTR(a, 34) ^ ROTR(a, 39)) +                  \
                               ((a & b) ^ (a & c) ^ (b & c));                               \
        d += t1;                                                                           \
        h = t1 + t2;                                                                       \
    } while (0)

/* The message schedule, kept as a ring of its last 16 words. */
#define SHA512_SCHEDULE(t)                                                                 \
    do {                                                                                   \
        const SHA512_WORD w15 = w[((t) - 15) & 15], w2 = w[((t) - 2) & 15];                \
        w[(t) & 15] += (ROTR(w15, 1) ^ ROTR(w15, 8) ^ (w15 >> 7)) + w[((t) - 7) & 15] +     \
                       (ROTR(w2, 19) ^ ROTR(w2, 61) ^ (w2 >> 6));                          \
    } while (0)

#define SHA512_EIGHT_ROUNDS(t)                                                             \
    do {                                                                                   \
        SHA512_ROUND(a, b, c, d, e, f, g, k, (t) + 0);                                     \
        SHA512_ROUND(k, a, b, c, d, e, f, g, (t) + 1);                                     \
        SHA512_ROUND(g, k, a, b, c, d, e, f, (t) + 2);                                     \
        SHA512_ROUND(f, g, k, a, b, c, d, e, (t) + 3);                                     \
        SHA512_ROUND(e, f, g, k, a, b, c, d, (t) + 4);                                     \
        SHA512_ROUND(d, e, f, g, k, a, b, c, (t) + 5);                                     \
        SHA512_ROUND(c, d, e, f, g, k, a, b, (t) + 6);                                     \
        SHA512_ROUND(b, c, d, e, f, g, k, a, (t) + 7);                                     \
    } while (0)

#define SHA512_ROUNDS()                                                                    \
    do {                                                                                   \
        SHA512_EIGHT_ROUNDS(0);                                                            \
        SHA512_EIGHT_ROUNDS(8);                                                            \
        for (int t = 16; t < 80; t += 8) {                                                 \
            for (int i = 0; i < 8; i++)                                                    \
                SHA512_SCHEDULE(t + i);                                                    \
            SHA512_EIGHT_ROUNDS(t);                                                        \
        }                                                                                  \
    } while (0)

#endif
