/* tests/test_ring.c: the ring's own mechanics (io/ring.c, io/op.c): a full
 * submission queue is submitted and the SQE retried, and a completion queue
 * that overflows loses nothing. With io_entries = 8 the SQ holds 8 SQEs and
 * the CQ 128 CQEs; one task starts 1000 reads of /dev/zero in one poll (each
 * completes as soon as it is submitted), so the SQ fills over and over and the
 * CQ overflows into the kernel's list. Every read must complete, with its
 * bytes.
 *
 * Bad inputs tried: io_entries that are not a power of two, under 8, or over
 * 4096, io_buffers not a power of two or over 32768, io_buffer_size under 64
 * or over 1 MiB (each -EINVAL from weft_runtime_create). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <weft.h>

#include "common.h"

enum { READS = 1000, LEN = 64 };

struct many {
    struct weft_future base;
    int fd;
    struct weft_io io[READS];
    struct weft_future *futs[READS];
    struct weft_join_all all;
    unsigned char buf[READS][LEN];
    int ok;
};

static enum weft_poll many_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct many *m = (struct many *)f;
    WEFT_ASYNC_BEGIN(f);
    for (int i = 0; i < READS; i++) {
        memset(m->buf[i], 0xff, LEN);
        weft_read_at_init(&m->io[i], m->fd, m->buf[i], LEN, 0);
        m->futs[i] = &m->io[i].base;
    }
    CHECK(weft_join_all_init(&m->all, m->futs, READS) == 0);
    WEFT_AWAIT(f, cx, &m->all); /* the first poll starts all 1000 */
    for (int i = 0; i < READS; i++) {
        bool zeroed = true;
        for (int b = 0; b < LEN; b++)
            zeroed &= m->buf[i][b] == 0;
        m->ok += m->io[i].result == LEN && zeroed;
        weft_future_drop(&m->io[i].base);
    }
    WEFT_ASYNC_END(f);
}

static const struct weft_future_ops many_ops = { many_poll, NULL };

Test(ring, full_sq_and_overflowing_cq_lose_nothing, .timeout = 30)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 1;
    cfg.io_entries = 8;
    struct weft_runtime *rt;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    struct many *m = calloc(1, sizeof *m);
    cr_assert_not_null(m);
    m->base.ops = &many_ops;
    m->fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(m->fd, 0);
    cr_assert_eq(weft_block_on(rt, &m->base), 0);
    cr_assert_eq(m->ok, READS, "%d of %d reads completed with their bytes", m->ok, READS);
    close(m->fd);
    free(m);
    weft_runtime_destroy(rt);
}

Test(ring, bad_io_config, .timeout = 10)
{
    static const struct { uint32_t entries, buffers, size; } bad[] = {
        { 7, 0, 0 }, { 4, 0, 0 }, { 8192, 0, 0 }, { 100, 0, 0 },
        { 0, 3, 0 }, { 0, 65536, 0 }, { 0, 0, 63 }, { 0, 0, (1u << 20) + 1 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct weft_runtime_config cfg;
        weft_runtime_config_init(&cfg);
        cfg.io_entries = bad[i].entries;
        cfg.io_buffers = bad[i].buffers;
        cfg.io_buffer_size = bad[i].size;
        struct weft_runtime *rt = NULL;
        cr_assert_eq(weft_runtime_create(&rt, &cfg), -EINVAL, "case %zu", i);
        cr_assert_null(rt);
    }
}
