/* Constant-time check of the native core, run by tests/test_native_ct.py under valgrind.
 *
 * Secrets (the scalar; the identifiers being hashed) are marked undefined for memcheck,
 * which then reports every conditional branch and every memory address that depends on
 * them. The core declassifies only what it publishes (X25519 results, before counting
 * all-zero ones). The results are printed so that the test can check them against
 * independent implementations: a run that computed nothing could not pass.
 *
 * With the argument "leak" the driver instead branches on a secret on purpose, to show
 * that the harness catches it.
 */
#include <stdio.h>
#include <string.h>
#include <valgrind/memcheck.h>

#include "native.h"

#define SECRET(p, n) VALGRIND_MAKE_MEM_UNDEFINED((p), (n))
#define PUBLIC(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#define N 5 /* four AVX2 lanes and a portable tail: four points, or the four maps of two
           * messages (one each under _NU_: four messages) */

static void print_hex(const char *label, const uint8_t *p, size_t n)
{
    printf("%s ", label);
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

static int leak(void)
{
    uint8_t secret[32] = {1};
    volatile int x = 0;
    SECRET(secret, sizeof secret);
    if (secret[0] & 1)
        x++;
    return x == 2;
}

static void x25519(const char *label, const uint8_t scalar[32], const uint8_t *points, size_t n,
                   int check, int avx2)
{
    uint8_t out[32 * (N + 1)];
    psi_counts counts;
    if (psi_x25519_batch(scalar, points, out, n, check, avx2, &counts) != 0) {
        printf("%s out of memory\n", label);
        return;
    }
    print_hex(label, out, 32 * n);
    printf("%s-counts %zu %zu %zu\n", label, counts.malformed, counts.off_curve, counts.low_order);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "leak") == 0)
        return leak();
    const int avx2 = psi_cpu_has_avx2();
    printf("avx2 %d\n", avx2);

    /* Identifiers are secret: hash them, both suites. */
    uint8_t msgs[N * 9], dst_prime[16] = "ctgrind-DST";
    size_t offsets[N + 1];
    dst_prime[11] = 11;
    for (int i = 0; i < N; i++) {
        memcpy(msgs + 9 * i, "identity", 8);
        msgs[9 * i + 8] = (uint8_t)('0' + i);
        offsets[i] = 9 * (size_t)i;
    }
    offsets[N] = 9 * N;
    uint8_t points[32 * (N + 1)], encoded[32 * N], portable[32 * N], encoded_portable[32 * N];
    SECRET(msgs, sizeof msgs);
    psi_hash_to_curve(msgs, offsets, N, dst_prime, 12, 2, avx2, points);
    psi_hash_to_curve(msgs, offsets, N, dst_prime, 12, 1, avx2, encoded);
    psi_hash_to_curve(msgs, offsets, N, dst_prime, 12, 2, 0, portable);
    psi_hash_to_curve(msgs, offsets, N, dst_prime, 12, 1, 0, encoded_portable);
    PUBLIC(points, sizeof points); /* printed, and later checked as received points */
    PUBLIC(encoded, sizeof encoded);
    PUBLIC(portable, sizeof portable);
    PUBLIC(encoded_portable, sizeof encoded_portable);
    print_hex("hash", points, 32 * N);
    print_hex("encode", encoded, 32 * N);
    print_hex("hash-portable", portable, 32 * N);
    print_hex("encode-portable", encoded_portable, 32 * N);

    /* The scalar is secret; the points are public (they come from the peer) except in
     * the last call, where the own hashed points are exponentiated before being sent. */
    uint8_t scalar[32];
    for (int i = 0; i < 32; i++)
        scalar[i] = (uint8_t)(7 * i + 1);
    SECRET(scalar, sizeof scalar);
    x25519("checked", scalar, points, N, 1, avx2);
    x25519("portable", scalar, points, N, 0, 0);
    memset(points + 32 * N, 0, 32); /* u = 0: a low-order point, an all-zero result */
    x25519("low-order", scalar, points, N + 1, 0, avx2);
    SECRET(points, sizeof points);
    x25519("secret-points", scalar, points, N, 0, avx2);
    return 0;
}
