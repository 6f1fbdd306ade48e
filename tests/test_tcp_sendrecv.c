/* tests/test_tcp_sendrecv.c: weft_send_recv (io/stream.c, io/op.c): a send
 * linked to the next buffer-ring receive, one completion for the pair. Over
 * real sockets on 127.0.0.1: a request/response loop of 1000 rounds checked
 * byte for byte; a 1 MiB reply linked to the next request (the send outlasts
 * the socket buffer, so the receive waits behind it in the kernel); a failed
 * send reported instead of the receive; dropping a pending pair (the drop
 * waits for the kernel, so the send buffer may be freed right after and bytes
 * sent later reach the next receive), also in the very poll that started it
 * (its receive must still be cancelled, the drop not wait for it); a ring of 2 buffers under 16 echoing
 * connections (the receive half parks for a buffer and must lose nothing).
 *
 * Bad inputs tried: a descriptor that is not open (the send fails: -EBADF),
 * a pipe instead of a socket (-ENOTSOCK), a zero-length send (a plain
 * receive), a send longer than the kernel moves at once (INT_MAX, 3 GiB,
 * UINT32_MAX: -EINVAL), a peer that reset the connection (the send fails: -EPIPE or
 * -ECONNRESET, and nothing is received). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <limits.h>

#include <weft.h>

#include "io_common.h"

/* ---- request / response ------------------------------------------------------------ */

enum { ROUNDS = 1000, MSG = 32 };

/* Server: answers each request "q<i>" with "a<i>" linked to the next receive. */
static enum weft_poll body_answer(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_recv_init(&t->r, t->fd);
    for (;;) {
        WEFT_AWAIT(&t->base, cx, &t->r.base);
        t->res = t->r.result;
        if (t->res <= 0)
            break;
        CHECK(t->res == MSG && t->r.data[0] == 'q');
        memcpy(t->msg, t->r.data, MSG);
        t->msg[0] = 'a';
        t->n++;
        weft_future_drop(&t->r.base);
        weft_send_recv_init(&t->r, t->fd, t->msg, MSG);
    }
    weft_future_drop(&t->r.base);
    WEFT_ASYNC_END(&t->base);
}

Test(sendrecv, request_response_rounds, .timeout = 30)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_pair(2, &ca, &srv, &cli);
    struct weft_join j;
    cr_assert_eq(iot_spawn(rt, body_answer, NULL, 0, srv, &j), 0);
    char q[MSG], a[MSG];
    for (int i = 0; i < ROUNDS; i++) {
        memset(q, 'x', MSG);
        snprintf(q, MSG, "q%d", i);
        write_full(cli, q, MSG);
        cr_assert_eq(read_full(cli, a, MSG), MSG, "round %d", i);
        q[0] = 'a';
        cr_assert_eq(memcmp(a, q, MSG), 0, "round %d: wrong answer", i);
    }
    cr_assert_eq(shutdown(cli, SHUT_WR), 0);
    struct iot out;
    cr_assert_eq(iot_join(rt, &j, &out), 0);
    cr_assert_eq(out.res, 0, "end of stream after the last answer");
    cr_assert_eq(out.n, ROUNDS);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

/* ---- a reply larger than the socket buffers ------------------------------------------- */

#define BIG (1024 * 1024)

struct big_state {
    unsigned char *reply;
    int recv_res;
    char next[8];
};

static enum weft_poll body_big_reply(struct iot *t, struct weft_cx *cx)
{
    struct big_state *s = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    weft_send_recv_init(&t->r, t->fd, s->reply, BIG);
    WEFT_AWAIT(&t->base, cx, &t->r.base);
    s->recv_res = t->r.result;
    if (s->recv_res > 0)
        memcpy(s->next, t->r.data, (size_t)s->recv_res < sizeof s->next ? (size_t)s->recv_res : sizeof s->next);
    weft_future_drop(&t->r.base);
    WEFT_ASYNC_END(&t->base);
}

struct reader {
    int fd;
    unsigned char *buf;
    ssize_t got;
};

static void *read_all_then_ask(void *arg)
{
    struct reader *r = arg;
    usleep(50000); /* the sender fills the socket buffers and waits */
    r->got = read_full(r->fd, r->buf, BIG);
    write_full(r->fd, "next", 4);
    return NULL;
}

Test(sendrecv, reply_larger_than_socket_buffers, .timeout = 30)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_pair(2, &ca, &srv, &cli);
    struct big_state s = { .reply = malloc(BIG) };
    struct reader r = { cli, malloc(BIG), 0 };
    cr_assert(s.reply && r.buf);
    pat_fill(s.reply, BIG, 7, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, read_all_then_ask, &r), 0);
    iot_run(rt, body_big_reply, &s, srv);
    pthread_join(th, NULL);
    cr_assert_eq(r.got, BIG);
    cr_assert(pat_ok(r.buf, BIG, 7, 0), "the reply was corrupted");
    cr_assert_eq(s.recv_res, 4, "the receive ran after the whole send: %d", s.recv_res);
    cr_assert_eq(memcmp(s.next, "next", 4), 0);
    free(s.reply);
    free(r.buf);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

/* ---- failures and bad inputs ----------------------------------------------------------- */

static enum weft_poll body_one(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_send_recv_init(&t->r, t->fd, t->arg, t->n);
    WEFT_AWAIT(&t->base, cx, &t->r.base);
    t->res = t->r.result;
    if (t->res > 0)
        memcpy(t->msg, t->r.data, (size_t)t->res < sizeof t->msg ? (size_t)t->res : sizeof t->msg);
    weft_future_drop(&t->r.base);
    WEFT_ASYNC_END(&t->base);
}

static struct iot run_one(struct weft_runtime *rt, int fd, const char *send, uint32_t len)
{
    struct iot t = iot_make(body_one, (void *)send, 0, fd);
    t.n = len;
    cr_assert_eq(weft_block_on(rt, &t.base), 0);
    weft_future_drop(&t.base);
    return t;
}

Test(sendrecv, failures_and_bad_inputs, .timeout = 20)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    int fds_before = count_fds();

    struct iot t = run_one(rt, 1000, "x", 1); /* not open */
    cr_assert_eq(t.res, -EBADF, "got %d", t.res);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    t = run_one(rt, p[1], "x", 1);
    cr_assert_eq(t.res, -ENOTSOCK, "got %d", t.res);
    close(p[0]);
    close(p[1]);

    /* Zero bytes to send: a plain receive. */
    int srv, cli;
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    write_full(cli, "hey", 3);
    t = run_one(rt, srv, NULL, 0);
    cr_assert_eq(t.res, 3);
    cr_assert_eq(memcmp(t.msg, "hey", 3), 0);

    /* More than one send moves (the kernel cuts it and says it all went):
     * -EINVAL before anything is sent or received (the pointer is never
     * read), and the socket goes on. */
    static const uint32_t too_long[] = { INT_MAX, UINT32_C(3) << 30, UINT32_MAX };
    for (size_t i = 0; i < sizeof too_long / sizeof too_long[0]; i++) {
        t = run_one(rt, srv, "never read", too_long[i]);
        cr_assert_eq(t.res, -EINVAL, "len %u: got %d", too_long[i], t.res);
    }
    write_full(cli, "yo", 2);
    t = run_one(rt, srv, "hi", 2);
    cr_assert_eq(t.res, 2);
    cr_assert_eq(read_full(cli, t.msg, 2), 2);
    cr_assert_eq(memcmp(t.msg, "hi", 2), 0);

    /* The peer reset the connection: the send fails, nothing is received. */
    cr_assert_eq(weft_socket_set_linger(cli, true, 0), 0);
    close(cli);
    usleep(20000);
    t = run_one(rt, srv, "late", 4);
    cr_assert(t.res == -EPIPE || t.res == -ECONNRESET, "got %d (%s)", t.res, strerror(-t.res));
    close(srv);
    cr_assert_eq(count_fds(), fds_before);
    stop_rt(rt, &ca);
}

/* ---- dropping a pending pair --------------------------------------------------------- */

/* Parks on a send+recv until aborted: the receive half waits for a request
 * that only comes after the abort. */
static enum weft_poll body_park(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_send_recv_init(&t->r, t->fd, t->buf, 4);
    atomic_store((_Atomic int *)t->arg, 1);
    WEFT_AWAIT(&t->base, cx, &t->r.base);
    t->res = t->r.result;
    weft_future_drop(&t->r.base);
    WEFT_ASYNC_END(&t->base);
}

Test(sendrecv, drop_pending_then_reuse, .timeout = 20)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_pair(2, &ca, &srv, &cli);
    _Atomic int started = 0;
    struct iot t = iot_make(body_park, &started, 0, srv);
    t.buf = malloc(4);
    cr_assert_not_null(t.buf);
    memcpy(t.buf, "pong", 4);
    unsigned char *sendbuf = t.buf;
    struct weft_join j;
    cr_assert_eq(weft_spawn(rt, &t.base, sizeof t, &j), 0);
    WAIT_UNTIL(atomic_load(&started));
    char got[4];
    cr_assert_eq(read_full(cli, got, 4), 4); /* the send half went out */
    cr_assert_eq(memcmp(got, "pong", 4), 0);
    weft_join_abort(&j);
    cr_assert_eq(iot_join(rt, &j, NULL), -ECANCELED);
    free(sendbuf); /* the drop waited for the kernel: nothing touches it any more */

    /* Bytes sent after the drop reach the next receive, none lost. */
    write_full(cli, "after", 5);
    struct iot u = run_one(rt, srv, NULL, 0);
    cr_assert_eq(u.res, 5, "got %d", u.res);
    cr_assert_eq(memcmp(u.msg, "after", 5), 0);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

/* A pair dropped in the very poll that started it (a timeout already due):
 * its SQEs and the cancels go to the kernel in one enter, where the send
 * completes inline and the kernel holds the receive in task work until the
 * end of that enter, out of the cancels' reach. The drop must not wait for
 * that receive (it used to, until the peer's next bytes, which it then ate). */
static enum weft_poll body_timeout_now(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_send_recv_init(&t->r, t->fd, "ping", 4);
    weft_timeout_init(&t->to, &t->r.base, 0);
    WEFT_AWAIT(&t->base, cx, &t->to.base);
    t->res = t->to.result;
    atomic_store((_Atomic int *)t->arg, 1);
    WEFT_ASYNC_END(&t->base);
}

Test(sendrecv, drop_in_the_starting_poll_neither_waits_nor_eats_bytes, .timeout = 20)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_pair(1, &ca, &srv, &cli);
    for (int round = 0; round < 20; round++) {
        _Atomic int done = 0;
        struct iot t = iot_make(body_timeout_now, &done, 0, srv);
        struct weft_join j;
        cr_assert_eq(weft_spawn(rt, &t.base, sizeof t, &j), 0);
        char got[4];
        cr_assert_eq(read_full(cli, got, 4), 4); /* the send half went out */
        double end = now_s() + 2;
        while (!atomic_load(&done) && now_s() < end)
            sleep_us(1000);
        bool waited = !atomic_load(&done);
        if (waited)
            write_full(cli, "z", 1); /* let the stuck drop go, to report it */
        struct iot out;
        cr_assert_eq(iot_join(rt, &j, &out), 0);
        cr_assert(!waited, "round %d: the drop waited 2 s for a receive nobody cancelled", round);
        cr_assert_eq(out.res, -ETIMEDOUT);
        write_full(cli, "after", 5); /* reaches the next receive, none eaten */
        struct iot u = run_one(rt, srv, NULL, 0);
        cr_assert_eq(u.res, 5, "round %d: got %d", round, u.res);
        cr_assert_eq(memcmp(u.msg, "after", 5), 0);
    }
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

/* ---- a ring of two buffers ------------------------------------------------------------- */

enum { CONNS = 16, PER_CONN = 64 * 1024 };

/* Echoes with send_recv: each round sends back the last receive's bytes. */
static enum weft_poll body_echo(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_recv_init(&t->r, t->fd);
    for (;;) {
        WEFT_AWAIT(&t->base, cx, &t->r.base);
        t->res = t->r.result;
        if (t->res <= 0)
            break;
        /* The bytes must outlive the linked send: copy them out of the
         * buffer, which goes back to the (tiny) ring at once. */
        CHECK((size_t)t->res <= sizeof t->msg);
        memcpy(t->msg, t->r.data, (size_t)t->res);
        t->got += (uint64_t)t->res;
        weft_future_drop(&t->r.base);
        weft_send_recv_init(&t->r, t->fd, t->msg, (size_t)t->res);
    }
    weft_future_drop(&t->r.base);
    WEFT_ASYNC_END(&t->base);
}

Test(sendrecv, two_buffers_many_connections, .timeout = 60)
{
    /* Buffers of 128 bytes: the echo copies at most sizeof(msg) bytes. */
    struct rt_opts o = { .workers = 2, .io_buffers = 2, .io_buffer_size = 128 };
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts(o, &ca);
    run_echo_clients(rt, body_echo, CONNS, PER_CONN);
    stop_rt(rt, &ca);
}
