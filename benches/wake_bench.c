/* wake_bench.c: weft-wake-bench, how one worker's ring should wake another's.
 *
 *   weft-wake-bench [ROUNDS=50000] [REPS=5]
 *
 * docs/io.md ("Waking a sleeping worker") says a worker sleeps in
 * io_uring_enter and others wake it by writing an eventfd whose read it keeps
 * armed in its ring. The issue left the choice open between that and
 * IORING_OP_MSG_RING (a CQE posted from the waker's ring straight into the
 * sleeper's): this program measures both, with the library out of the way.
 *
 * Two threads, each with its own ring set up as a weft worker's is
 * (SINGLE_ISSUER | DEFER_TASKRUN, falling back to no flags), play ping-pong:
 * each wakes the other and then sleeps in io_uring_enter until woken. With an
 * eventfd the waker writes it (one syscall) and then enters its own ring to
 * sleep (another); with MSG_RING the wake is an SQE that rides on the enter
 * the waker makes anyway to sleep (one syscall, its own CQE skipped), or is
 * submitted at once (msg_ring_now: two syscalls, as with the eventfd). Printed:
 * the round trip's median and p99 (two wakes and two wake-ups), and the CPU
 * time of both threads per round trip, median over REPS interleaved reps.
 * RESULT lines as the other benches. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum mode { EVENTFD, MSGRING, MSGRING_NOW, NMODES };
static const char *const mode_name[NMODES] = { "eventfd", "msg_ring", "msg_ring_now" };

#define UD_EVENTFD 1
#define UD_MSG 2

struct side {
    struct io_uring ring;
    int efd;
    uint64_t efd_buf;
    double cpu_s;              /* this thread's user + system time in the run */
};

static struct side sides[2];
static pthread_barrier_t ready;
static enum mode mode;
static uint32_t rounds;
static uint64_t *rtt;          /* ns per round trip, measured by side 0 */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "weft-wake-bench: %s: %s\n", what, strerror(err));
    exit(1);
}

static struct io_uring_sqe *sqe_of(struct side *me)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&me->ring);
    if (!sqe)
        die("SQ full", EBUSY);
    return sqe;
}

static void arm_eventfd(struct side *me)
{
    struct io_uring_sqe *sqe = sqe_of(me);
    io_uring_prep_read(sqe, me->efd, &me->efd_buf, sizeof me->efd_buf, 0);
    io_uring_sqe_set_data64(sqe, UD_EVENTFD);
}

/* Wakes `peer`: a write now, or an SQE for the next enter. */
static void wake(struct side *me, struct side *peer)
{
    if (mode == EVENTFD) {
        uint64_t one = 1;
        if (write(peer->efd, &one, sizeof one) != (ssize_t)sizeof one)
            die("eventfd write", errno);
        return;
    }
    struct io_uring_sqe *sqe = sqe_of(me);
    io_uring_prep_msg_ring(sqe, peer->ring.ring_fd, 0, UD_MSG, 0);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    if (mode == MSGRING_NOW && io_uring_submit(&me->ring) < 0)
        die("io_uring_submit", errno);
}

/* Submits what is queued and sleeps until woken; consumes the wake-up. */
static void sleep_until_woken(struct side *me)
{
    for (;;) {
        int ret = io_uring_submit_and_wait(&me->ring, 1);
        if (ret < 0 && ret != -EINTR)
            die("io_uring_submit_and_wait", -ret);
        struct io_uring_cqe *cqe;
        bool woken = false;
        while (io_uring_peek_cqe(&me->ring, &cqe) == 0) {
            if (cqe->res < 0)
                die(cqe->user_data == UD_MSG ? "msg_ring" : "eventfd read", -cqe->res);
            woken |= cqe->user_data == UD_EVENTFD || cqe->user_data == UD_MSG;
            if (cqe->user_data == UD_EVENTFD)
                arm_eventfd(me); /* goes in with the next enter */
            io_uring_cqe_seen(&me->ring, cqe);
        }
        if (woken)
            return;
    }
}

static double thread_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void *player(void *arg)
{
    int i = (int)(intptr_t)arg;
    struct side *me = &sides[i], *peer = &sides[!i];
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int err = io_uring_queue_init_params(8, &me->ring, &p);
    if (err == -EINVAL) {
        memset(&p, 0, sizeof p);
        err = io_uring_queue_init_params(8, &me->ring, &p);
    }
    if (err)
        die("io_uring_queue_init_params", -err);
    me->efd = eventfd(0, EFD_CLOEXEC);
    if (me->efd < 0)
        die("eventfd", errno);
    if (mode == EVENTFD)
        arm_eventfd(me);
    pthread_barrier_wait(&ready); /* both rings and eventfds exist */
    if (mode == EVENTFD && io_uring_submit(&me->ring) < 0)
        die("io_uring_submit", errno);
    pthread_barrier_wait(&ready); /* both reads are armed */
    double cpu0 = thread_cpu_s();
    for (uint32_t r = 0; r < rounds; r++) {
        if (i == 0) {
            uint64_t t0 = now_ns();
            wake(me, peer);
            sleep_until_woken(me);
            rtt[r] = now_ns() - t0;
        } else {
            sleep_until_woken(me);
            wake(me, peer);
            if (mode == MSGRING && r + 1 == rounds)
                io_uring_submit(&me->ring); /* the last one has no enter to ride on */
        }
    }
    me->cpu_s = thread_cpu_s() - cpu0;
    pthread_barrier_wait(&ready); /* nobody writes the other's eventfd any more */
    io_uring_queue_exit(&me->ring);
    close(me->efd);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One run of `m`: its median and p99 round trip, and CPU per round trip (ns). */
static void run(enum mode m, double *p50, double *p99, double *cpu)
{
    mode = m;
    pthread_barrier_init(&ready, NULL, 2);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&th[i], NULL, player, (void *)(intptr_t)i) != 0)
            die("pthread_create", errno);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&ready);
    qsort(rtt, rounds, sizeof *rtt, cmp_u64);
    *p50 = (double)rtt[rounds / 2];
    *p99 = (double)rtt[(uint64_t)rounds * 99 / 100];
    *cpu = (sides[0].cpu_s + sides[1].cpu_s) * 1e9 / rounds;
}

int main(int argc, char **argv)
{
    rounds = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 50000;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (rounds < 100 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: weft-wake-bench [ROUNDS>=100] [REPS 1..100]\n");
        return 2;
    }
    rtt = malloc(rounds * sizeof *rtt);
    double res[NMODES][3][100];
    for (int r = 0; r < reps; r++)
        for (int m = 0; m < NMODES; m++)
            run((enum mode)m, &res[m][0][r], &res[m][1][r], &res[m][2][r]);
    static const char *const what[3] = { "roundtrip_p50_ns", "roundtrip_p99_ns", "cpu_per_roundtrip_ns" };
    for (int m = 0; m < NMODES; m++)
        for (int k = 0; k < 3; k++) {
            qsort(res[m][k], (size_t)reps, sizeof(double), cmp_double);
            printf("RESULT wake_%s_%s %.0f\n", mode_name[m], what[k], res[m][k][reps / 2]);
        }
    free(rtt);
    return 0;
}
