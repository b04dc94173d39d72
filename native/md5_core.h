/*
 * The MD5 core (RFC 1321) without Python: compression of data blocks and of zero blocks, streaming
 * update, update of n zero bytes, finalisation. Static functions, included by md5.c (the Python module)
 * and by md5bench.c (a cycle-level benchmark against libcrypto).
 *
 * Scheduling: MD5 is one dependency chain, the register written by a step is needed by the next one,
 * so its speed is the latency of one step times 64 per block. Each step is arranged so that only the
 * last operations wait for b (the newest register):
 *   a + W[k] + T[i] is formed first (a was written four steps earlier, W and T are known);
 *   scalar kernel:
 *     F: (c ^ d) is formed before b arrives, then & b, ^ d     -> 2 ops on b, then add, rotate, add
 *     G: (b & d) | (c & ~d); the terms have no common bit, so | is +; c & ~d joins the early sum and
 *        only b & d waits for b                                 -> 1 op on b
 *     H: c ^ d early, then ^ b                                  -> 1 op on b
 *     I: ~d early, then | b, ^ c                                -> 2 ops on b
 *     i.e. 4 or 5 dependent single-cycle operations per step: 4.5 cycles per byte at best;
 *   AVX-512 kernel: one vpternlogd for any of F, G, H, I     -> 4 cycles per byte at best.
 */
#ifndef ZSAGENT_MD5_CORE_H
#define ZSAGENT_MD5_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BLOCK_BYTES 64
#define DIGEST_BYTES 16

typedef struct {
    uint32_t h[4];       /* chaining value A, B, C, D */
    uint64_t length;     /* bytes hashed so far (the message length is this modulo 2**64) */
    unsigned char tail[BLOCK_BYTES];  /* the length % 64 bytes not compressed yet */
} md5_state;

/* ---------------------------------------------------------------- compression */

static inline uint32_t load_le32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline void store_le32(unsigned char *p, uint32_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, sizeof v);
}

static inline void store_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* An empty asm that claims to change x: the compiler must finish computing x first and cannot
 * re-associate the additions around it. Keeps a + W[k] + T[i] off the critical path (without it GCC
 * sometimes adds the round function to a first and the constants after, one more step on the chain). */
#if defined(__GNUC__)
#define KEEP_GPR(x) __asm__("" : "+r"(x))
#define KEEP_VEC(x) __asm__("" : "+v"(x))
#else
#define KEEP_GPR(x) ((void)0)
#define KEEP_VEC(x) ((void)0)
#endif

/* ---------------------------------------------------------------- scalar kernel (any CPU) */

#define ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))

#define STEP_F(a, b, c, d, w, t, s) {              \
        uint32_t f_ = (c) ^ (d);                    \
        (a) += (w) + (t);                           \
        KEEP_GPR(a);                                \
        f_ &= (b);                                  \
        f_ ^= (d);                                  \
        (a) += f_;                                  \
        (a) = ROTL((a), (s)) + (b);                 \
    }
#define STEP_G(a, b, c, d, w, t, s) {              \
        (a) += (w) + (t);                           \
        (a) += (c) & ~(d);                          \
        KEEP_GPR(a);                                \
        (a) += (b) & (d);                           \
        (a) = ROTL((a), (s)) + (b);                 \
    }
#define STEP_H(a, b, c, d, w, t, s) {              \
        uint32_t h_ = (c) ^ (d);                    \
        (a) += (w) + (t);                           \
        KEEP_GPR(a);                                \
        h_ ^= (b);                                  \
        (a) += h_;                                  \
        (a) = ROTL((a), (s)) + (b);                 \
    }
#define STEP_I(a, b, c, d, w, t, s) {              \
        uint32_t i_ = ~(d);                         \
        (a) += (w) + (t);                           \
        KEEP_GPR(a);                                \
        i_ |= (b);                                  \
        i_ ^= (c);                                  \
        (a) += i_;                                  \
        (a) = ROTL((a), (s)) + (b);                 \
    }

/* Compress nblocks consecutive 64-byte blocks at p into h. */
static void scalar_blocks(uint32_t h[4], const unsigned char *p, size_t nblocks)
{
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (; nblocks; nblocks--, p += BLOCK_BYTES) {
        const uint32_t a0 = a, b0 = b, c0 = c, d0 = d;
#define W(k) load_le32(p + 4 * (k))
#include "md5_steps.h"
#undef W
        a += a0;
        b += b0;
        c += c0;
        d += d0;
    }
    h[0] = a;
    h[1] = b;
    h[2] = c;
    h[3] = d;
}

/* Compress nblocks blocks of 64 zero bytes into h: the same steps with every message word 0. */
static void scalar_zero_blocks(uint32_t h[4], uint64_t nblocks)
{
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (; nblocks; nblocks--) {
        const uint32_t a0 = a, b0 = b, c0 = c, d0 = d;
#define W(k) 0u
#include "md5_steps.h"
#undef W
        a += a0;
        b += b0;
        c += c0;
        d += d0;
    }
    h[0] = a;
    h[1] = b;
    h[2] = c;
    h[3] = d;
}

#undef STEP_F
#undef STEP_G
#undef STEP_H
#undef STEP_I

/* ---------------------------------------------------------------- AVX-512 kernel (x86-64)
 *
 * The same steps on lane 0 of four xmm registers, for one reason: vpternlogd computes any function of
 * three inputs in one instruction, so F and I cost one operation on b instead of two. Every step is then
 * ternlog, add, rotate (vprold), add: 4 cycles, against 4.5 on average for the scalar kernel.
 * The immediates are the truth tables of F, G, H, I with the operands in the order (d, c, b), i.e.
 * bit (4d + 2c + b) of the immediate is the function's value; d goes first because the instruction
 * overwrites its first operand and d is the oldest input (the copy the compiler makes of it is then off
 * the critical path). Constants and message words are added to a first, as in the scalar kernel.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#define MD5_HAVE_AVX512 1
#include <immintrin.h>

#define TERN_F 0xd8 /* (b & c) | (~b & d) */
#define TERN_G 0xac /* (b & d) | (c & ~d) */
#define TERN_H 0x96 /* b ^ c ^ d */
#define TERN_I 0x63 /* c ^ (b | ~d) */

#define VSTEP(a, b, c, d, w, t, s, table) {                                        \
        (a) = _mm_add_epi32((a), _mm_set1_epi32((int)((uint32_t)(w) + (t))));       \
        KEEP_VEC(a);                                                                \
        (a) = _mm_add_epi32((a), _mm_ternarylogic_epi32((d), (c), (b), (table)));   \
        (a) = _mm_add_epi32(_mm_rol_epi32((a), (s)), (b));                          \
    }
#define STEP_F(a, b, c, d, w, t, s) VSTEP(a, b, c, d, w, t, s, TERN_F)
#define STEP_G(a, b, c, d, w, t, s) VSTEP(a, b, c, d, w, t, s, TERN_G)
#define STEP_H(a, b, c, d, w, t, s) VSTEP(a, b, c, d, w, t, s, TERN_H)
#define STEP_I(a, b, c, d, w, t, s) VSTEP(a, b, c, d, w, t, s, TERN_I)

#define AVX512_TARGET __attribute__((target("avx512f,avx512vl")))

AVX512_TARGET static void avx512_blocks(uint32_t h[4], const unsigned char *p, size_t nblocks)
{
    __m128i a = _mm_cvtsi32_si128((int)h[0]), b = _mm_cvtsi32_si128((int)h[1]);
    __m128i c = _mm_cvtsi32_si128((int)h[2]), d = _mm_cvtsi32_si128((int)h[3]);
    for (; nblocks; nblocks--, p += BLOCK_BYTES) {
        const __m128i a0 = a, b0 = b, c0 = c, d0 = d;
#define W(k) load_le32(p + 4 * (k))
#include "md5_steps.h"
#undef W
        a = _mm_add_epi32(a, a0);
        b = _mm_add_epi32(b, b0);
        c = _mm_add_epi32(c, c0);
        d = _mm_add_epi32(d, d0);
    }
    h[0] = (uint32_t)_mm_cvtsi128_si32(a);
    h[1] = (uint32_t)_mm_cvtsi128_si32(b);
    h[2] = (uint32_t)_mm_cvtsi128_si32(c);
    h[3] = (uint32_t)_mm_cvtsi128_si32(d);
}

AVX512_TARGET static void avx512_zero_blocks(uint32_t h[4], uint64_t nblocks)
{
    __m128i a = _mm_cvtsi32_si128((int)h[0]), b = _mm_cvtsi32_si128((int)h[1]);
    __m128i c = _mm_cvtsi32_si128((int)h[2]), d = _mm_cvtsi32_si128((int)h[3]);
    for (; nblocks; nblocks--) {
        const __m128i a0 = a, b0 = b, c0 = c, d0 = d;
#define W(k) 0u
#include "md5_steps.h"
#undef W
        a = _mm_add_epi32(a, a0);
        b = _mm_add_epi32(b, b0);
        c = _mm_add_epi32(c, c0);
        d = _mm_add_epi32(d, d0);
    }
    h[0] = (uint32_t)_mm_cvtsi128_si32(a);
    h[1] = (uint32_t)_mm_cvtsi128_si32(b);
    h[2] = (uint32_t)_mm_cvtsi128_si32(c);
    h[3] = (uint32_t)_mm_cvtsi128_si32(d);
}

#undef STEP_F
#undef STEP_G
#undef STEP_H
#undef STEP_I

static int avx512_usable(void)
{
    /* libgcc's checks include the OS's XSAVE support for the AVX-512 state */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}
#endif /* x86-64 */

/* ---------------------------------------------------------------- kernels and streaming */

typedef struct {
    const char *name;
    void (*blocks)(uint32_t h[4], const unsigned char *p, size_t nblocks);
    void (*zero_blocks)(uint32_t h[4], uint64_t nblocks);
    /* update() looks for all-zero blocks in the data and gives them to zero_blocks (worth it only
     * when zero_blocks is cheaper than blocks) */
    int find_zero_blocks;
} md5_kernel;

static const md5_kernel SCALAR_KERNEL = {"scalar", scalar_blocks, scalar_zero_blocks, 1};
#ifdef MD5_HAVE_AVX512
/* The vector steps do not get shorter when the message words are 0: no zero-block search in update(). */
static const md5_kernel AVX512_KERNEL = {"avx512", avx512_blocks, avx512_zero_blocks, 0};
#endif

static inline int block_is_zero(const unsigned char *p)
{
    uint64_t w[8];
    memcpy(w, p, sizeof w);
    return ((w[0] | w[1]) | (w[2] | w[3]) | (w[4] | w[5]) | (w[6] | w[7])) == 0;
}

/* Compress whole blocks; with find_zero_blocks, runs of zero blocks take the zero path. The first word
 * is tested on its own so that random data pays one compare per block. */
static void compress(const md5_kernel *k, uint32_t h[4], const unsigned char *p, size_t nblocks)
{
    if (!k->find_zero_blocks) {
        k->blocks(h, p, nblocks);
        return;
    }
    while (nblocks) {
        size_t data = 0;
        while (data < nblocks) {
            const unsigned char *q = p + data * BLOCK_BYTES;
            if (load_le32(q) == 0 && block_is_zero(q))
                break;
            data++;
        }
        if (data) {
            k->blocks(h, p, data);
            p += data * BLOCK_BYTES;
            nblocks -= data;
        }
        size_t zeros = 0;
        while (zeros < nblocks && block_is_zero(p + zeros * BLOCK_BYTES))
            zeros++;
        if (zeros) {
            k->zero_blocks(h, zeros);
            p += zeros * BLOCK_BYTES;
            nblocks -= zeros;
        }
    }
}

static void md5_init(md5_state *s)
{
    /* RFC 1321 section 3.3: word A = 01 23 45 67 (low-order byte first), and so on */
    s->h[0] = 0x67452301u;
    s->h[1] = 0xefcdab89u;
    s->h[2] = 0x98badcfeu;
    s->h[3] = 0x10325476u;
    s->length = 0;
}

static void md5_update(md5_state *s, const md5_kernel *k, const unsigned char *p, size_t n)
{
    size_t have = (size_t)(s->length % BLOCK_BYTES);
    s->length += n;
    if (have) {
        size_t take = BLOCK_BYTES - have;
        if (take > n)
            take = n;
        memcpy(s->tail + have, p, take);
        p += take;
        n -= take;
        if (have + take < BLOCK_BYTES)
            return;
        compress(k, s->h, s->tail, 1);
    }
    size_t blocks = n / BLOCK_BYTES;
    if (blocks) {
        compress(k, s->h, p, blocks);
        p += blocks * BLOCK_BYTES;
        n -= blocks * BLOCK_BYTES;
    }
    if (n)
        memcpy(s->tail, p, n);
}

static void md5_update_zeros(md5_state *s, const md5_kernel *k, uint64_t n)
{
    size_t have = (size_t)(s->length % BLOCK_BYTES);
    s->length += n;
    if (have) {
        uint64_t take = BLOCK_BYTES - have;
        if (take > n)
            take = n;
        memset(s->tail + have, 0, (size_t)take);
        n -= take;
        if (have + take < BLOCK_BYTES)
            return;
        compress(k, s->h, s->tail, 1);
    }
    k->zero_blocks(s->h, n / BLOCK_BYTES);
    memset(s->tail, 0, (size_t)(n % BLOCK_BYTES));
}

static void md5_final(const md5_state *s, const md5_kernel *k, unsigned char out[DIGEST_BYTES])
{
    /* RFC 1321 sections 3.1 and 3.2: a 1 bit, zeros up to 56 mod 64 bytes, the bit length (u64 LE) */
    md5_state t = *s;
    unsigned char pad[2 * BLOCK_BYTES];
    size_t have = (size_t)(t.length % BLOCK_BYTES);
    size_t padded = have < 56 ? BLOCK_BYTES : 2 * BLOCK_BYTES;
    memset(pad, 0, sizeof pad);
    memcpy(pad, t.tail, have);
    pad[have] = 0x80;
    store_le64(pad + padded - 8, t.length << 3);
    k->blocks(t.h, pad, padded / BLOCK_BYTES);
    for (int i = 0; i < 4; i++)
        store_le32(out + 4 * i, t.h[i]);
}

#endif /* ZSAGENT_MD5_CORE_H */
