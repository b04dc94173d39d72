/*
 * CPU-time benchmark of the MD5 kernels in native/md5_core.h against libcrypto's MD5, interleaved:
 *
 *     cc -O2 -I native bench/native/md5bench.c -lcrypto -o /tmp/md5bench && /tmp/md5bench [MiB] [reps]
 *
 * Thread CPU time (CLOCK_THREAD_CPUTIME_ID) rather than wall time, because other jobs share this machine;
 * every rep runs all variants back to back and the ratios are taken per rep (median reported).
 * Streams of 4 MiB updates, as the copy pipeline does; "zeros" hashes a buffer of zeros,
 * "update_zeros" hashes the same count without a buffer.
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/md5.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "md5_core.h"

#define STEP_BYTES (4u << 20)

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static unsigned char digest_sink[16];

enum { INPUT_RANDOM, INPUT_ZEROS, INPUT_UPDATE_ZEROS };

static double run_openssl(const unsigned char *buf, size_t buf_bytes, size_t total)
{
    MD5_CTX c;
    double t0 = cpu_now();
    MD5_Init(&c);
    for (size_t done = 0; done < total; done += STEP_BYTES)
        MD5_Update(&c, buf + done % buf_bytes, STEP_BYTES);
    MD5_Final(digest_sink, &c);
    return total / (cpu_now() - t0) / (1 << 20);
}

static double run_native(const md5_kernel *k, int input, const unsigned char *buf, size_t buf_bytes,
                         size_t total)
{
    md5_state s;
    double t0 = cpu_now();
    md5_init(&s);
    for (size_t done = 0; done < total; done += STEP_BYTES) {
        if (input == INPUT_UPDATE_ZEROS)
            md5_update_zeros(&s, k, STEP_BYTES);
        else
            md5_update(&s, k, buf + done % buf_bytes, STEP_BYTES);
    }
    md5_final(&s, k, digest_sink);
    return total / (cpu_now() - t0) / (1 << 20);
}

int main(int argc, char **argv)
{
    size_t total = (size_t)(argc > 1 ? atoi(argv[1]) : 128) << 20;
    int reps = argc > 2 ? atoi(argv[2]) : 11;
    size_t buf_bytes = 64u << 20;
    unsigned char *rnd = malloc(buf_bytes), *zero = calloc(1, buf_bytes);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < buf_bytes; i += 8) { /* xorshift64: incompressible enough for MD5 */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(rnd + i, &x, 8);
    }
    const md5_kernel *ks[2];
    int nk = 0;
#ifdef MD5_HAVE_AVX512
    if (avx512_usable())
        ks[nk++] = &AVX512_KERNEL;
#endif
    ks[nk++] = &SCALAR_KERNEL;

    double *ossl_rnd = calloc(reps, sizeof(double)), *ossl_zero = calloc(reps, sizeof(double));
    double *nat[2][3], *ratio[2][3];
    for (int k = 0; k < nk; k++)
        for (int in = 0; in < 3; in++) {
            nat[k][in] = calloc(reps, sizeof(double));
            ratio[k][in] = calloc(reps, sizeof(double));
        }
    for (int i = 0; i < reps; i++) {
        ossl_rnd[i] = run_openssl(rnd, buf_bytes, total);
        ossl_zero[i] = run_openssl(zero, buf_bytes, total);
        for (int k = 0; k < nk; k++) {
            nat[k][INPUT_RANDOM][i] = run_native(ks[k], INPUT_RANDOM, rnd, buf_bytes, total);
            nat[k][INPUT_ZEROS][i] = run_native(ks[k], INPUT_ZEROS, zero, buf_bytes, total);
            nat[k][INPUT_UPDATE_ZEROS][i] = run_native(ks[k], INPUT_UPDATE_ZEROS, NULL, buf_bytes, total);
            ratio[k][INPUT_RANDOM][i] = nat[k][INPUT_RANDOM][i] / ossl_rnd[i];
            ratio[k][INPUT_ZEROS][i] = nat[k][INPUT_ZEROS][i] / ossl_zero[i];
            ratio[k][INPUT_UPDATE_ZEROS][i] = nat[k][INPUT_UPDATE_ZEROS][i] / ossl_zero[i];
        }
    }
    qsort(ossl_rnd, reps, sizeof(double), cmp);
    qsort(ossl_zero, reps, sizeof(double), cmp);
    printf("%-8s %-13s %9s %9s %18s\n", "impl", "input", "best", "median", "vs openssl (med)");
    printf("%-8s %-13s %9.1f %9.1f %18s\n", "openssl", "random", ossl_rnd[reps - 1], ossl_rnd[reps / 2], "1.000");
    printf("%-8s %-13s %9.1f %9.1f %18s\n", "openssl", "zeros", ossl_zero[reps - 1], ossl_zero[reps / 2], "1.000");
    static const char *inputs[3] = {"random", "zeros", "update_zeros"};
    for (int k = 0; k < nk; k++)
        for (int in = 0; in < 3; in++) {
            qsort(nat[k][in], reps, sizeof(double), cmp);
            qsort(ratio[k][in], reps, sizeof(double), cmp);
            printf("%-8s %-13s %9.1f %9.1f %18.3f\n", ks[k]->name, inputs[in], nat[k][in][reps - 1],
                   nat[k][in][reps / 2], ratio[k][in][reps / 2]);
        }
    printf("(MiB/s of thread CPU time, %zu MiB per run, %d reps)\n", total >> 20, reps);
    return 0;
}
