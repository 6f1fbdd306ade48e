/* tests/pattern.h: a deterministic byte pattern to check streams byte for
 * byte (byte `off` of stream `seed`). Criterion-free, so the plain main()
 * stress programs can use it too. */
#ifndef WEFT_TESTS_PATTERN_H
#define WEFT_TESTS_PATTERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

static inline unsigned char pat_byte(uint64_t seed, uint64_t off)
{
    return (unsigned char)(mix64(seed * UINT64_C(0x9e3779b97f4a7c15) + off / 8) >> (off % 8 * 8));
}

/* One mix per 8 bytes: the pattern is cheap enough for tens of MiB. */
static inline void pat_fill(unsigned char *p, size_t len, uint64_t seed, uint64_t off)
{
    uint64_t w = 0, wi = UINT64_MAX;
    for (size_t i = 0; i < len; i++, off++) {
        if (off / 8 != wi) {
            wi = off / 8;
            w = mix64(seed * UINT64_C(0x9e3779b97f4a7c15) + wi);
        }
        p[i] = (unsigned char)(w >> (off % 8 * 8));
    }
}

/* True when p[0..len) is the pattern from `off`. */
static inline bool pat_ok(const unsigned char *p, size_t len, uint64_t seed, uint64_t off)
{
    uint64_t w = 0, wi = UINT64_MAX;
    for (size_t i = 0; i < len; i++, off++) {
        if (off / 8 != wi) {
            wi = off / 8;
            w = mix64(seed * UINT64_C(0x9e3779b97f4a7c15) + wi);
        }
        if (p[i] != (unsigned char)(w >> (off % 8 * 8)))
            return false;
    }
    return true;
}

#endif
