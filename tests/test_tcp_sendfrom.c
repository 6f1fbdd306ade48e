/* tests/test_tcp_sendfrom.c: weft_send_recv_from (io/stream.c, io/op.c): an
 * echo's send of a received buffer, linked to the next receive, the buffer
 * going back to the ring once sent. Over real sockets on 127.0.0.1:
 *
 * - 48 connections echoing at once through rings of 4 buffers: every byte
 *   comes back in order. Each connection holds a buffer between its receive
 *   and its echo's end, so echoes that held their buffers until the next
 *   receive completed would take every buffer and wait for each other for
 *   good (the clients' reads time out: the test fails, it does not hang).
 * - Connections that echo once and then go quiet do not starve the others:
 *   with 4 buffers, 6 quiet connections and a seventh doing 200 rounds, each
 *   of whose sends posts its own completion (the ring is low).
 * - Peers that send and never read do not starve the others: with 4
 *   buffers, 8 such peers (each echo's send waits for good, holding its
 *   buffer), a new connection still gets its echoes, and then each slow
 *   peer, reading at last, gets every byte back in order (receives fall
 *   back to heap buffers while the ring is empty).
 * - A connection echoing alone through a ring of 4 holds one buffer, and a
 *   round costs one completion (the worker's `cqes` over 300 rounds): the
 *   buffer goes back at the pair's own completion, not when the pair's slot
 *   is freed (which would chain each round's slot to the next, hold the ring
 *   half empty and send every other round down the two-completion path).
 * - The ring's buffers are faulted in before the worker's first receive
 *   into them: then 600 rounds, each receive taking the next of 256 buffers,
 *   cost the process under 64 page faults (each buffer's first write used to
 *   be a fault inside a receive's completion). A runtime that has received
 *   nothing holds none of its 1 MiB resident; an area over 16 MiB per worker
 *   is left to fault in as used.
 * - A failed send with a moved buffer reports the send's error, with the
 *   ring low (the send posts its own completion) and with it full (one
 *   completion for both), and the buffer goes back either way.
 *
 * Bad inputs tried (each -EINVAL at the first poll, `from` keeping its
 * buffer): `from` NULL, `from` the future itself, `from` not yet polled,
 * `from` ended at end of stream (no buffer), an empty range, a range past
 * what was received, an offset past it. A pair dropped before its first poll
 * gives the buffer back (a ring of 1 receives again). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <stdio.h>
#include <sys/resource.h>

#include <weft.h>

#include "io_common.h"
#include "../io/io.h" /* white-box: a worker's free ring buffers */
#include "internal.h"

/* Echoes every receive back with weft_send_recv_from, alternating r and r2;
 * counts the bytes in `got`. */
static enum weft_poll body_echo_from(struct iot *t, struct weft_cx *cx)
{
    struct weft_recv *rx[2] = { &t->r, &t->r2 };
    WEFT_ASYNC_BEGIN(&t->base);
    weft_recv_init(&t->r, t->fd);
    for (;;) {
        WEFT_AWAIT(&t->base, cx, &rx[t->i]->base);
        t->res = rx[t->i]->result;
        if (t->res <= 0)
            break;
        t->got += (uint64_t)t->res;
        weft_send_recv_from_init(rx[!t->i], rx[t->i], 0, (size_t)t->res);
        CHECK(rx[t->i]->data == NULL); /* moved */
        weft_future_drop(&rx[t->i]->base);
        t->i = !t->i;
    }
    WEFT_ASYNC_END(&t->base);
}

enum { CONNS = 48, PER_CONN = 32 * 1000 };

Test(sendfrom, more_connections_than_buffers, .timeout = 60)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 2, .io_buffers = 4 }, &ca);
    run_echo_clients(rt, body_echo_from, CONNS, PER_CONN);
    stop_rt(rt, &ca);
}

static long worker0_cqes(struct weft_runtime *rt)
{
    static struct weft_metrics m; /* large */
    cr_assert_eq(weft_metrics_read(rt, &m), 0);
    return (long)m.worker[0].cqes;
}

/* Page faults taken by the whole process so far. */
static long minor_faults(struct weft_runtime *rt)
{
    (void)rt;
    struct rusage ru;
    cr_assert_eq(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_minflt;
}

/* One connection echoed by body_echo_from on a one-worker runtime with
 * `io_buffers` (0: the default): a first round of `size` bytes (it arms the
 * pair, and the client's own first touches are done), then `rounds` more;
 * checks every byte and returns how much `count` rose over those rounds. */
static long echo_rounds(uint32_t io_buffers, size_t size, int rounds,
                        long (*count)(struct weft_runtime *))
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt =
        start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = io_buffers }, &ca);
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    struct weft_join j;
    cr_assert_eq(iot_spawn(rt, body_echo_from, NULL, 0, srv, &j), 0);
    struct echo_client c = { cli, 7, size, size, false };
    echo_client_run(&c);
    long before = count(rt);
    c.total = (size_t)rounds * size;
    echo_client_run(&c);
    cr_assert(c.ok);
    long rose = count(rt) - before;
    shutdown(cli, SHUT_WR);
    struct iot out;
    cr_assert_eq(iot_join(rt, &j, &out), 0);
    cr_assert_eq(out.got, size + (size_t)rounds * size);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
    return rose;
}

enum { ROUNDS = 300 };

Test(sendfrom, a_round_costs_one_completion, .timeout = 30)
{
    skip_without_buffer_ring();
    long cqes = echo_rounds(4, 100, ROUNDS, worker0_cqes);
    cr_assert_lt(cqes, ROUNDS * 11 / 10, "%ld completions for %d rounds", cqes, ROUNDS);
}

enum { WARM_ROUNDS = 600 };

Test(sendfrom, the_ring_buffers_are_faulted_in_before_the_first_receive, .timeout = 30)
{
    skip_without_buffer_ring();
    /* The default ring: 256 buffers of 4 KiB, each on its own page; each
     * round's receive takes the ring's next buffer. */
    long faults = echo_rounds(0, 64, WARM_ROUNDS, minor_faults);
    cr_assert_lt(faults, 64, "%ld page faults in %d rounds through 256 fresh buffers", faults,
                 WARM_ROUNDS);
}

/* Resident bytes of the process. */
static long resident_bytes(void)
{
    long size, resident;
    FILE *f = fopen("/proc/self/statm", "r");
    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "%ld %ld", &size, &resident), 2);
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

/* Starts a runtime of one worker with `o`, echoes one round through it and
 * returns how much the process's resident memory grew at the start (*start)
 * and after the round (the result). */
static long echo_one_round(struct rt_opts o, long *start)
{
    long before = resident_bytes();
    struct weft_runtime *rt = start_rt_opts(o, NULL);
    *start = resident_bytes() - before;
    int srv, cli;
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    struct weft_join j;
    cr_assert_eq(iot_spawn(rt, body_echo_from, NULL, 0, srv, &j), 0);
    struct echo_client c = { cli, 5, 64, 64, false };
    echo_client_run(&c);
    cr_assert(c.ok);
    long grown = resident_bytes() - before;
    shutdown(cli, SHUT_WR);
    cr_assert_eq(iot_join(rt, &j, NULL), 0);
    close_pair(srv, cli);
    stop_rt(rt, NULL);
    return grown;
}

Test(sendfrom, the_buffers_are_faulted_in_by_the_first_receive_up_to_16_MiB, .timeout = 30)
{
    skip_without_buffer_ring();
    /* The default ring, 1 MiB: untouched until a receive, then resident. */
    long start, grown = echo_one_round((struct rt_opts){ .workers = 1 }, &start);
    cr_assert_lt(start, 1l << 20, "%ld bytes resident before any receive", start);
    cr_assert_geq(grown, 1l << 20, "%ld bytes resident after a receive", grown);
    /* 64 buffers of 1 MiB: left to fault in as used. */
    grown = echo_one_round(
        (struct rt_opts){ .workers = 1, .io_buffers = 64, .io_buffer_size = 1 << 20 }, &start);
    cr_assert_lt(grown, 16l << 20, "a 64 MiB ring made %ld bytes resident", grown);
}

enum { QUIET = 6 };

Test(sendfrom, quiet_connections_do_not_starve_the_others, .timeout = 60)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = 4 }, &ca);
    struct echo_client c[QUIET + 1];
    int srv[QUIET + 1];
    struct weft_join j[QUIET + 1];
    for (int i = 0; i <= QUIET; i++) {
        tcp_pair(rt, "127.0.0.1", &srv[i], &c[i].fd);
        c[i] = (struct echo_client){ c[i].fd, (uint64_t)i + 1, i < QUIET ? 100 : 200 * 100, 100, false };
        cr_assert_eq(iot_spawn(rt, body_echo_from, NULL, (uint32_t)i, srv[i], &j[i]), 0);
    }
    long cqes = 0;
    for (int i = 0; i <= QUIET; i++) { /* one round each, then the last goes on */
        if (i == QUIET)
            cqes = worker0_cqes(rt);
        echo_client_run(&c[i]);
        cr_assert(c[i].ok, "connection %d stalled or corrupted bytes", i);
    }
    /* With the ring low (a quiet connection holds a buffer), each round's
     * send posts its own completion and gives its buffer back at once
     * (docs/io.md): two completions a round, not one. */
    cqes = worker0_cqes(rt) - cqes;
    cr_assert_geq(cqes, 360, "%ld completions for 200 rounds", cqes);
    for (int i = 0; i <= QUIET; i++) {
        shutdown(c[i].fd, SHUT_WR);
        struct iot out;
        cr_assert_eq(iot_join(rt, &j[i], &out), 0);
        cr_assert_eq(out.got, c[i].total);
        close_pair(srv[i], c[i].fd);
    }
    stop_rt(rt, &ca);
}

/* ---- one receive, then one weft_send_recv_from as the test says --------------------- */

enum from_case { FROM_WHOLE, FROM_NULL, FROM_SELF, FROM_UNPOLLED, FROM_EMPTY, FROM_PAST,
                 FROM_OFF_PAST, FROM_DROP_UNPOLLED, FROM_AFTER_50MS };

/* Receives once into r (unless FROM_UNPOLLED), then polls r2 made from r as
 * `u64` says; res: r2's result, msg: r's bytes still readable after r2 ran. */
static enum weft_poll body_from(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_recv_init(&t->r, t->fd);
    if (t->u64 != FROM_UNPOLLED) {
        WEFT_AWAIT(&t->base, cx, &t->r.base);
        t->got = (uint64_t)t->r.result;
    }
    if (t->u64 == FROM_AFTER_50MS) { /* the test resets the peer meanwhile */
        weft_sleep_init(&t->sl, 50 * MS);
        WEFT_AWAIT(&t->base, cx, &t->sl.base);
    }
    switch ((enum from_case)t->u64) {
    case FROM_NULL: weft_send_recv_from_init(&t->r2, NULL, 0, 1); break;
    case FROM_SELF: weft_send_recv_from_init(&t->r2, &t->r2, 0, 1); break;
    case FROM_EMPTY: weft_send_recv_from_init(&t->r2, &t->r, 0, 0); break;
    case FROM_PAST: weft_send_recv_from_init(&t->r2, &t->r, 1, t->got); break;
    case FROM_OFF_PAST: weft_send_recv_from_init(&t->r2, &t->r, t->got, 1); break;
    default: weft_send_recv_from_init(&t->r2, &t->r, 0, t->got); break;
    }
    if (t->u64 == FROM_DROP_UNPOLLED) {
        weft_future_drop(&t->r2.base);
        WEFT_RETURN(&t->base);
    }
    WEFT_AWAIT(&t->base, cx, &t->r2.base);
    t->res = t->r2.result;
    if (t->r.data) /* still r's: the bad inputs leave it */
        memcpy(t->msg, t->r.data, t->got < sizeof t->msg ? t->got : sizeof t->msg);
    WEFT_ASYNC_END(&t->base);
}

static struct iot run_from(struct weft_runtime *rt, int fd, enum from_case how)
{
    struct iot t = iot_make(body_from, NULL, 0, fd);
    t.u64 = how;
    cr_assert_eq(weft_block_on(rt, &t.base), 0);
    weft_future_drop(&t.base);
    return t;
}

static void spawn_from(struct weft_runtime *rt, int fd, enum from_case how, struct weft_join *j)
{
    struct iot t = iot_make(body_from, NULL, 0, fd);
    t.u64 = how;
    cr_assert_eq(weft_spawn(rt, &t.base, sizeof t, j), 0);
}

/* The ring's only buffer is free: a receive into it works. */
static void assert_buffer_back(struct weft_runtime *rt)
{
    int srv, cli;
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    write_full(cli, "ok", 2);
    struct iot t = run_from(rt, srv, FROM_DROP_UNPOLLED);
    cr_assert_eq(t.got, 2);
    close_pair(srv, cli);
}

Test(sendfrom, bad_inputs_leave_the_buffer, .timeout = 20)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = 1 }, &ca);
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    static const enum from_case bad[] = { FROM_NULL, FROM_SELF, FROM_EMPTY, FROM_PAST,
                                          FROM_OFF_PAST };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_full(cli, "abc", 3);
        struct iot t = run_from(rt, srv, bad[i]);
        cr_assert_eq(t.res, -EINVAL, "case %d: got %d", (int)bad[i], t.res);
        cr_assert_eq(memcmp(t.msg, "abc", 3), 0, "case %d: from lost its bytes", (int)bad[i]);
    }
    /* Not polled yet: nothing received, nothing moved. */
    struct iot t = run_from(rt, srv, FROM_UNPOLLED);
    cr_assert_eq(t.res, -EINVAL, "got %d", t.res);
    /* Ended at end of stream: no buffer to send. */
    shutdown(cli, SHUT_WR);
    t = run_from(rt, srv, FROM_WHOLE);
    cr_assert_eq(t.got, 0);
    cr_assert_eq(t.res, -EINVAL, "got %d", t.res);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

/* A finished receive made from itself (`from` == r): -EINVAL, its bytes kept
 * until its drop, which gives its buffer back to the ring (white-box: the
 * worker's free count; a fresh init used to lose it until destroy). i: the
 * free count while r holds the buffer; n: after the drop. */
static enum weft_poll body_from_itself(struct iot *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    weft_recv_init(&t->r, t->fd);
    WEFT_AWAIT(&t->base, cx, &t->r.base);
    t->got = (uint64_t)t->r.result;
    t->i = cx->worker->io->bufs_free;
    weft_send_recv_from_init(&t->r, &t->r, 0, 1);
    WEFT_AWAIT(&t->base, cx, &t->r.base);
    t->res = t->r.result;
    weft_future_drop(&t->r.base);
    t->n = cx->worker->io->bufs_free;
    WEFT_ASYNC_END(&t->base);
}

Test(sendfrom, a_receive_made_from_itself_keeps_its_buffer_to_give_back, .timeout = 20)
{
    skip_without_buffer_ring();
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = 4 }, &ca);
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    write_full(cli, "abc", 3);
    struct iot t = iot_make(body_from_itself, NULL, 0, srv);
    cr_assert_eq(weft_block_on(rt, &t.base), 0);
    weft_future_drop(&t.base);
    cr_assert_eq(t.got, 3);
    cr_assert_eq(t.res, -EINVAL, "got %d", t.res);
    cr_assert_eq(t.n, t.i + 1, "free ring buffers: %u while held, %u after the drop", t.i, t.n);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

Test(sendfrom, drop_before_poll_gives_the_buffer_back, .timeout = 20)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = 1 }, &ca);
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    for (int i = 0; i < 3; i++) /* the ring's only buffer each time */
        assert_buffer_back(rt);
    write_full(cli, "hey", 3);
    struct weft_join j;
    spawn_from(rt, srv, FROM_WHOLE, &j); /* echoes, then receives "end" */
    char got[3];
    set_rcvtimeo(cli, 5000);
    cr_assert_eq(read_full(cli, got, 3), 3);
    cr_assert_eq(memcmp(got, "hey", 3), 0);
    write_full(cli, "end", 3);
    struct iot out;
    cr_assert_eq(iot_join(rt, &j, &out), 0);
    cr_assert_eq(out.res, 3);
    close_pair(srv, cli);
    stop_rt(rt, &ca);
}

/* With 1 buffer the ring is low when the send goes (it posts its own
 * completion); with 256 it is not (one completion for the pair). */
static void failed_send(uint32_t buffers)
{
    struct counting_alloc ca;
    int srv, cli;
    struct weft_runtime *rt =
        start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = buffers }, &ca);
    tcp_pair(rt, "127.0.0.1", &srv, &cli);
    write_full(cli, "abc", 3);
    struct weft_join j;
    spawn_from(rt, srv, FROM_AFTER_50MS, &j);
    usleep(20000); /* received, now sleeping */
    cr_assert_eq(weft_socket_set_linger(cli, true, 0), 0);
    close(cli);
    struct iot out;
    cr_assert_eq(iot_join(rt, &j, &out), 0);
    cr_assert_eq(out.got, 3);
    cr_assert(out.res == -EPIPE || out.res == -ECONNRESET, "%u buffers: got %d (%s)", buffers,
              out.res, strerror(-out.res));
    close(srv);
    if (buffers == 1)
        assert_buffer_back(rt);
    stop_rt(rt, &ca);
}

Test(sendfrom, failed_send_reports_its_error, .timeout = 20)
{
    failed_send(1);
    failed_send(256);
}

/* ---- peers that send and never read -------------------------------------------------- */

enum { SLOW = 8, SLOW_SOCKBUF = 4096, SLOW_RCVBUF = 64 * 1024 };

/* Writes stream `seed` into the nonblocking `fd` until it has taken nothing
 * for 200 ms (every queue on the way back is full); returns the bytes written. */
static size_t fill_until_stuck(int fd, uint64_t seed)
{
    unsigned char out[1000];
    size_t done = 0;
    double quiet_since = now_s();
    while (now_s() - quiet_since < 0.2) {
        pat_fill(out, sizeof out, seed, done);
        ssize_t n = write(fd, out, sizeof out);
        if (n > 0) {
            done += (size_t)n;
            quiet_since = now_s();
        } else {
            cr_assert(n < 0 && errno == EAGAIN, "write: %s", strerror(errno));
            sleep_us(1000);
        }
    }
    return done;
}

Test(sendfrom, slow_readers_do_not_starve_the_others, .timeout = 60)
{
    /* 8 peers that send and never read, through a ring of 4: each echo's
     * send waits for room in its socket for as long as its peer does not
     * read, and the buffer it sends from is the kernel's until then. The
     * first 4 hold every buffer of the ring; before, the other receives
     * (a new connection's included) waited for one to come back, which
     * never happened: the new connection got no echo. */
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1, .io_buffers = 4 }, &ca);
    int srv[SLOW + 1], cli[SLOW + 1];
    struct weft_join j[SLOW + 1];
    size_t sent[SLOW];
    int small = SLOW_SOCKBUF, rcvbuf = SLOW_RCVBUF;
    for (int i = 0; i < SLOW; i++) {
        tcp_pair(rt, "127.0.0.1", &srv[i], &cli[i]);
        /* Small, so that little fills them (a client buffer near the loopback
         * MSS stalls TCP itself: window updates wait for the persist timer). */
        cr_assert_eq(setsockopt(srv[i], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
        cr_assert_eq(setsockopt(cli[i], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
        cr_assert_eq(setsockopt(cli[i], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
        cr_assert_eq(iot_spawn(rt, body_echo_from, NULL, (uint32_t)i, srv[i], &j[i]), 0);
        cr_assert_eq(fcntl(cli[i], F_SETFL, fcntl(cli[i], F_GETFL) | O_NONBLOCK), 0);
    }
    for (int i = 0; i < SLOW; i++)
        sent[i] = fill_until_stuck(cli[i], (uint64_t)i + 1);
    /* A new connection: 20 rounds of 100 bytes, each read back at once. */
    tcp_pair(rt, "127.0.0.1", &srv[SLOW], &cli[SLOW]);
    cr_assert_eq(iot_spawn(rt, body_echo_from, NULL, SLOW, srv[SLOW], &j[SLOW]), 0);
    struct echo_client c = { cli[SLOW], 99, 2000, 100, false };
    echo_client_run(&c);
    cr_assert(c.ok, "a new connection got no echo while slow readers held the ring");
    /* The slow peers read at last: every byte back, in order. */
    for (int i = 0; i < SLOW; i++) {
        cr_assert_eq(fcntl(cli[i], F_SETFL, fcntl(cli[i], F_GETFL) & ~O_NONBLOCK), 0);
        set_rcvtimeo(cli[i], 10000);
        unsigned char *in = malloc(sent[i]);
        cr_assert_not_null(in);
        ssize_t got = read_full(cli[i], in, sent[i]);
        cr_assert_eq(got, (ssize_t)sent[i], "peer %d: %zd of %zu bytes back", i, got, sent[i]);
        cr_assert(pat_ok(in, sent[i], (uint64_t)i + 1, 0), "peer %d: bytes lost or reordered", i);
        free(in);
    }
    for (int i = 0; i <= SLOW; i++) {
        shutdown(cli[i], SHUT_WR);
        struct iot out;
        cr_assert_eq(iot_join(rt, &j[i], &out), 0);
        cr_assert_eq(out.got, i < SLOW ? sent[i] : c.total);
        close_pair(srv[i], cli[i]);
    }
    stop_rt(rt, &ca);
}
