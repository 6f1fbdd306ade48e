/* tests/test_file.c: file operations through the ring (io/stream.c, io/op.c):
 * open, write_at, read_at, fsync (full and data only), close; a 4 MiB file
 * written and read back in 64 KiB chunks by 4 tasks at once; dropping a read
 * in flight on a pipe, on the worker that started it, on another worker and on
 * a thread that is no worker (the drop waits until the kernel let go of the
 * buffer; the pipe still works after); dropping opens in flight (no descriptor
 * leaks). The runtime's metrics show which path the operations took: SQEs
 * and no pool job with the ring, pool jobs and no SQE without it. Without
 * io_uring the same operations go through the blocking pool (same results; a
 * dropped one waits for its syscall). Every test checks
 * /proc/self/fd has as many entries after as before.
 *
 * Bad inputs tried: open of a missing path (-ENOENT), of a NULL path (-EFAULT),
 * O_CREAT|O_EXCL of an existing file (-EEXIST); read_at on fd -1, on a closed
 * fd and on an O_WRONLY fd, write_at on an O_RDONLY fd, fsync and close of fd
 * -1 (-EBADF); read_at of a directory (-EISDIR); read_at into a NULL buffer
 * (-EFAULT); a second close of the same fd (-EBADF); read_at and open polled
 * off any worker (-ENXIO); reads at and far beyond the end of file (0); a read
 * of a pipe's write end and a write to its read end (-EBADF), a zero-length
 * read of an empty pipe (0), a FIFO with no reader opened for writing
 * (-ENXIO, with O_CREAT too), a write to a pipe at an offset past INT64_MAX
 * (-EINVAL). An open of a file under a lease waits for the lease to break,
 * and its abort does not. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include <inttypes.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <weft.h>

#include "common.h"

#define CHUNK (64u * 1024u)
#define FILE_SIZE (4u * 1024u * 1024u)
#define NCHUNKS (FILE_SIZE / CHUNK)
#define LANES 4u

/* ---- descriptors and a scratch directory ---------------------------------------- */

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    cr_assert_not_null(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static char dir[64];
static int fds_before;

/* Every test: a fresh directory, and the descriptor count to come back to. */
static void setup(void)
{
    fds_before = count_fds();
    strcpy(dir, "/tmp/weft-test-file-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void teardown(void)
{
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

TestSuite(file, .init = setup, .fini = teardown);

/* The last line of every test body. */
static void assert_no_fd_leak(void)
{
    cr_assert_eq(count_fds(), fds_before, "descriptor leak: %d before, %d after", fds_before,
                 count_fds());
}

static void path_in_dir(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* Creates (empty) file `name` in the test's directory, its path in `out`;
 * returns it open for reading and writing. */
static int create_in_dir(char *out, size_t len, const char *name)
{
    path_in_dir(out, len, name);
    int fd = open(out, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", out, strerror(errno));
    return fd;
}

/* ---- a task future running a per-test body over one weft_io --------------------- */

struct ft;
typedef enum weft_poll body_fn(struct ft *t, struct weft_cx *cx);

struct ft {
    struct weft_future base;
    body_fn *body;
    void *arg;
    void (*on_drop)(struct ft *t);
    uint32_t lane, polls, n, c;
    uint64_t done;
    int res[24];              /* the results, in order */
    struct weft_io io;
};

static _Atomic uint32_t finished;

static enum weft_poll ft_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct ft *t = (struct ft *)f;
    t->polls++;
    enum weft_poll r = t->body(t, cx);
    if (r == WEFT_READY)
        atomic_fetch_add(&finished, 1);
    return r;
}

static void ft_drop(struct weft_future *f)
{
    struct ft *t = (struct ft *)f;
    if (t->on_drop)
        t->on_drop(t);
    else
        weft_future_drop(&t->io.base);
}

static const struct weft_future_ops ft_ops = { ft_poll, ft_drop };

static int spawn_ft(struct weft_runtime *rt, body_fn *body, void *arg, uint32_t lane,
                    struct weft_join *j)
{
    struct ft t = { .base = { &ft_ops, 0 }, .body = body, .arg = arg, .lane = lane };
    return weft_spawn(rt, &t.base, sizeof t, j);
}

/* Runs `body` as a task to its end; returns its finished future's copy. */
static struct ft run_ft(struct weft_runtime *rt, body_fn *body, void *arg)
{
    struct weft_join j;
    cr_assert_eq(spawn_ft(rt, body, arg, 0, &j), 0);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    struct ft out = *(struct ft *)weft_join_output(&j);
    weft_future_drop(&j.base);
    return out;
}

/* Aborts the task of `j` and awaits it (-ECANCELED); returns the seconds
 * that took. */
static double abort_timed(struct weft_runtime *rt, struct weft_join *j)
{
    double t0 = now_s();
    weft_join_abort(j);
    cr_assert_eq(weft_block_on(rt, &j->base), 0);
    double took = now_s() - t0;
    cr_assert_eq(j->res, -ECANCELED);
    weft_future_drop(&j->base);
    return took;
}

/* One operation, awaited; its result goes to res[n++]. One per source line. */
#define DO_IO(t, cx, init)                                 \
    do {                                                   \
        init;                                              \
        WEFT_AWAIT(&(t)->base, (cx), &(t)->io);            \
        (t)->res[(t)->n++] = (t)->io.result;               \
        weft_future_drop(&(t)->io.base);                   \
    } while (0)

/* A waker for polling off any worker. */
static void nop(const void *d)
{
    (void)d;
}

static struct weft_waker nop_clone(const void *d);
static const struct weft_waker_ops nop_ops = { nop_clone, nop, nop, nop };

static struct weft_waker nop_clone(const void *d)
{
    return (struct weft_waker){ d, &nop_ops };
}

static const struct weft_waker nop_waker = { NULL, &nop_ops };

/* ---- open, write, read, fsync, close ------------------------------------------------ */

struct rt_files {
    char path[128];
    int fd, cloexec, closed_errno;
    off_t pos;                 /* the file position after the reads at it */
    char b[8][16];
};

static enum weft_poll body_roundtrip(struct ft *t, struct weft_cx *cx)
{
    struct rt_files *F = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    DO_IO(t, cx, weft_open_init(&t->io, F->path, O_CREAT | O_RDWR | O_TRUNC, 0600));
    F->fd = t->res[0];
    if (F->fd < 0)
        WEFT_RETURN(&t->base);
    DO_IO(t, cx, weft_write_at_init(&t->io, F->fd, "hello world", 11, 0));
    DO_IO(t, cx, weft_write_at_init(&t->io, F->fd, "XYZ", 3, 100));
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[0], 5, 0));
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[1], 5, 6));
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[2], 10, 50));      /* the hole */
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[3], 10, 101));     /* across EOF */
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[4], 10, 103));     /* at EOF */
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[5], 10, UINT64_C(1) << 40));
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[6], 0, 0));        /* empty read */
    lseek(F->fd, 2, SEEK_SET); /* UINT64_MAX: at the file position, which moves */
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[7], 2, UINT64_MAX));
    DO_IO(t, cx, weft_read_at_init(&t->io, F->fd, F->b[7] + 8, 2, UINT64_MAX));
    F->pos = lseek(F->fd, 0, SEEK_CUR);
    DO_IO(t, cx, weft_fsync_init(&t->io, F->fd, false));
    DO_IO(t, cx, weft_fsync_init(&t->io, F->fd, true));
    F->cloexec = (fcntl(F->fd, F_GETFD) & FD_CLOEXEC) != 0;
    DO_IO(t, cx, weft_close_init(&t->io, F->fd));
    F->closed_errno = fcntl(F->fd, F_GETFD) == -1 ? errno : 0;
    DO_IO(t, cx, weft_close_init(&t->io, F->fd)); /* nobody opens anything meanwhile */
    WEFT_ASYNC_END(&t->base);
}

/* The whole round trip, through the ring or (without io_uring) through the
 * blocking pool: the same results either way. */
/* How the file operations run: on the ring, without io_uring at all, or with
 * a ring whose kernel lacks the file opcodes (WEFT_IO_NO_OPS). */
enum path { RING, NO_RING, NO_FILE_OPS };

static void roundtrip(enum path path)
{
    bool no_io_uring = path == NO_RING;
    if (path == NO_FILE_OPS)
        setenv("WEFT_IO_NO_OPS", "openat,read,write,fsync,close", 1); /* this test's process */
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 2,
                                                              .no_io_uring = no_io_uring }, NULL);
    struct rt_files F;
    memset(&F, 0xff, sizeof F);
    path_in_dir(F.path, sizeof F.path, "a");
    struct ft out = run_ft(rt, body_roundtrip, &F);
    /* Which path the 16 operations took: SQEs on the rings, or pool jobs. */
    struct weft_metrics *m = malloc(sizeof *m);
    cr_assert_eq(weft_metrics_read(rt, m), 0);
    uint64_t sqes = 0;
    for (uint32_t w = 0; w < m->workers; w++)
        sqes += m->worker[w].sqes;
    if (path != RING) {
        if (no_io_uring)
            cr_assert_eq(sqes, 0);
        cr_assert_geq(m->blocking_jobs, 12, "only %" PRIu64 " pool jobs", m->blocking_jobs);
    } else {
        cr_assert_geq(sqes, 12, "only %" PRIu64 " SQEs", sqes);
        cr_assert_eq(m->blocking_jobs, 0, "%" PRIu64 " operations went to the pool",
                     m->blocking_jobs);
    }
    free(m);
    weft_runtime_destroy(rt);
    cr_assert_geq(out.res[0], 0, "open: %d", out.res[0]);
    const int want[] = { 0, 11, 3, 5, 5, 10, 2, 0, 0, 0, 2, 2, 0, 0, 0, -EBADF };
    cr_assert_eq(out.n, 16);
    for (uint32_t k = 1; k < out.n; k++)
        cr_assert_eq(out.res[k], want[k], "operation %u gave %d, not %d", k, out.res[k], want[k]);
    cr_assert_eq(memcmp(F.b[0], "hello", 5), 0);
    cr_assert_eq(memcmp(F.b[1], "world", 5), 0);
    cr_assert_eq(memcmp(F.b[2], "\0\0\0\0\0\0\0\0\0\0", 10), 0, "the hole did not read as zeros");
    cr_assert_eq(memcmp(F.b[3], "YZ", 2), 0);
    cr_assert_eq((unsigned char)F.b[3][2], 0xff, "a short read wrote past its count");
    cr_assert_eq(memcmp(F.b[7], "ll", 2), 0, "a read at the file position read elsewhere");
    cr_assert_eq(memcmp(F.b[7] + 8, "o ", 2), 0);
    cr_assert_eq(F.pos, 6, "the reads at the file position left it at %lld", (long long)F.pos);
    cr_assert_eq(F.cloexec, 1, "O_CLOEXEC was not added");
    cr_assert_eq(F.closed_errno, EBADF, "the ring's close left the fd open");
    struct stat st;
    cr_assert_eq(stat(F.path, &st), 0);
    cr_assert_eq(st.st_size, 103);
    assert_no_fd_leak();
}

Test(file, open_write_read_fsync_close, .timeout = 30)
{
    roundtrip(RING);
}

Test(file, without_io_uring_files_go_through_the_blocking_pool, .timeout = 30)
{
    roundtrip(NO_RING);
}

/* Captures stderr, and counts its pipe in the descriptors to come back to
 * (the suite's setup runs too). */
static void capture_stderr(void)
{
    cr_redirect_stderr();
    fds_before = count_fds();
}

/* A ring whose kernel lacks the file opcodes: each kind goes to the pool,
 * with one line on stderr per kind from each of the 2 workers that met it. */
Test(file, missing_file_opcodes_go_through_the_blocking_pool, .init = capture_stderr,
     .timeout = 30)
{
    roundtrip(NO_FILE_OPS);
    fflush(stderr);
    char err[4096] = { 0 };
    fread(err, 1, sizeof err - 1, cr_get_redirected_stderr());
    static const char *const kinds[] = { "openat", "read", "write", "fsync", "close" };
    for (size_t i = 0; i < 5; i++) {
        char line[128];
        snprintf(line, sizeof line, "weft: io_uring %s is not available (kernel too old): files "
                 "go through the blocking pool instead\n", kinds[i]);
        int n = 0;
        for (char *at = err; (at = strstr(at, line)); at++)
            n++;
        cr_assert(n >= 1 && n <= 2, "%d lines for %s in: %s", n, kinds[i], err);
    }
}

/* ---- 4 MiB in 64 KiB chunks, 4 tasks at once --------------------------------------------- */

struct bulk {
    int fd;
    bool reading;
    unsigned char *src, *dst;
    _Atomic int errors;
    int first_error;
};

/* Lane i handles the chunks c with c % 4 == i (when reading: those of lane
 * i + 1, so no task reads back what it wrote), finishing short transfers. */
static enum weft_poll body_bulk(struct ft *t, struct weft_cx *cx)
{
    struct bulk *B = t->arg;
    uint64_t off;
    WEFT_ASYNC_BEGIN(&t->base);
    for (t->c = (t->lane + B->reading) % LANES; t->c < NCHUNKS; t->c += LANES) {
        for (t->done = 0; t->done < CHUNK;) {
            off = (uint64_t)t->c * CHUNK + t->done;
            if (B->reading)
                weft_read_at_init(&t->io, B->fd, B->dst + off, CHUNK - t->done, off);
            else
                weft_write_at_init(&t->io, B->fd, B->src + off, CHUNK - t->done, off);
            WEFT_AWAIT(&t->base, cx, &t->io);
            if (t->io.result <= 0) {
                if (atomic_fetch_add(&B->errors, 1) == 0)
                    B->first_error = t->io.result;
                WEFT_RETURN(&t->base);
            }
            t->done += (uint64_t)t->io.result;
            weft_future_drop(&t->io.base);
        }
    }
    if (!B->reading) {
        DO_IO(t, cx, weft_fsync_init(&t->io, B->fd, t->lane % 2));
        if (t->res[0] != 0 && atomic_fetch_add(&B->errors, 1) == 0)
            B->first_error = t->res[0];
    }
    WEFT_ASYNC_END(&t->base);
}

static void run_lanes(struct weft_runtime *rt, struct bulk *B)
{
    struct weft_join j[LANES];
    for (uint32_t i = 0; i < LANES; i++)
        cr_assert_eq(spawn_ft(rt, body_bulk, B, i, &j[i]), 0);
    for (uint32_t i = 0; i < LANES; i++) {
        cr_assert_eq(weft_block_on(rt, &j[i].base), 0);
        cr_assert_eq(j[i].res, 0);
        weft_future_drop(&j[i].base);
    }
    cr_assert_eq(atomic_load(&B->errors), 0, "%d errors, the first %d", atomic_load(&B->errors),
                 B->first_error);
}

Test(file, four_mib_in_chunks_from_four_tasks, .timeout = 30)
{
    struct weft_runtime *rt = start_rt(2, NULL);
    struct bulk B = { .src = malloc(FILE_SIZE), .dst = malloc(FILE_SIZE) };
    char path[128];
    B.fd = create_in_dir(path, sizeof path, "big");
    cr_assert(B.src && B.dst);
    for (uint32_t w = 0; w < FILE_SIZE / 4; w++) { /* every 4-byte word distinct */
        uint32_t v = w * 2654435761u;
        memcpy(B.src + 4 * (size_t)w, &v, 4);
    }
    memset(B.dst, 0, FILE_SIZE);
    run_lanes(rt, &B);
    B.reading = true;
    run_lanes(rt, &B);
    weft_runtime_destroy(rt);
    cr_assert_eq(memcmp(B.src, B.dst, FILE_SIZE), 0, "read back differs from what was written");
    memset(B.dst, 0, FILE_SIZE); /* and the file itself, read without the ring */
    cr_assert_eq(pread(B.fd, B.dst, FILE_SIZE, 0), (ssize_t)FILE_SIZE);
    cr_assert_eq(memcmp(B.src, B.dst, FILE_SIZE), 0, "the file differs from what was written");
    close(B.fd);
    free(B.src);
    free(B.dst);
    assert_no_fd_leak();
}

/* ---- bad inputs -------------------------------------------------------------------------- */

struct bad {
    char missing[128], existing[128];
    int rdonly, wronly, dirfd, closed;
    char buf[16];
};

static enum weft_poll body_bad(struct ft *t, struct weft_cx *cx)
{
    struct bad *X = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    DO_IO(t, cx, weft_open_init(&t->io, X->missing, O_RDONLY, 0));
    DO_IO(t, cx, weft_open_init(&t->io, NULL, O_RDONLY, 0));
    DO_IO(t, cx, weft_open_init(&t->io, X->existing, O_CREAT | O_EXCL | O_RDWR, 0600));
    DO_IO(t, cx, weft_read_at_init(&t->io, -1, X->buf, sizeof X->buf, 0));
    DO_IO(t, cx, weft_read_at_init(&t->io, X->closed, X->buf, sizeof X->buf, 0));
    DO_IO(t, cx, weft_read_at_init(&t->io, X->wronly, X->buf, sizeof X->buf, 0));
    DO_IO(t, cx, weft_write_at_init(&t->io, X->rdonly, "x", 1, 0));
    DO_IO(t, cx, weft_fsync_init(&t->io, -1, false));
    DO_IO(t, cx, weft_close_init(&t->io, -1));
    DO_IO(t, cx, weft_read_at_init(&t->io, X->dirfd, X->buf, sizeof X->buf, 0));
    DO_IO(t, cx, weft_read_at_init(&t->io, X->rdonly, NULL, sizeof X->buf, 0));
    WEFT_ASYNC_END(&t->base);
}

/* Through the ring, or the blocking pool: the same errors, at once (the pool
 * waited for fd -1 to be readable for good: poll ignores a negative fd). */
static void bad_inputs(enum path path)
{
    struct bad X;
    int p[2];
    path_in_dir(X.missing, sizeof X.missing, "no/such/file");
    path_in_dir(X.existing, sizeof X.existing, "exists");
    X.wronly = open(X.existing, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    cr_assert_eq(write(X.wronly, "content", 7), 7);
    X.rdonly = open(X.existing, O_RDONLY | O_CLOEXEC);
    X.dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    cr_assert(X.wronly >= 0 && X.rdonly >= 0 && X.dirfd >= 0);
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 2,
                                                              .no_io_uring = path == NO_RING },
                                            NULL);
    cr_assert_eq(pipe(p), 0); /* after the runtime's own descriptors exist */
    close(p[0]);
    X.closed = p[0];
    struct ft out = run_ft(rt, body_bad, &X);
    weft_runtime_destroy(rt);
    close(p[1]);
    const int want[] = { -ENOENT, -EFAULT, -EEXIST, -EBADF, -EBADF, -EBADF, -EBADF, -EBADF, -EBADF,
                         -EISDIR, -EFAULT };
    cr_assert_eq(out.n, 11);
    cr_assert_lt(out.res[1], 0, "open(NULL) gave %d", out.res[1]);
    for (uint32_t k = 0; k < out.n; k++)
        cr_assert_eq(out.res[k], want[k], "operation %u gave %d, not %d", k, out.res[k], want[k]);

    /* Off any worker: -ENXIO at once, nothing submitted. */
    struct weft_cx cx = weft_cx_from_waker(&nop_waker);
    struct weft_io io;
    weft_read_at_init(&io, X.rdonly, X.buf, sizeof X.buf, 0);
    cr_assert_eq(weft_future_poll(&io.base, &cx), WEFT_READY);
    cr_assert_eq(io.result, -ENXIO);
    weft_future_drop(&io.base);
    weft_open_init(&io, X.existing, O_RDONLY, 0);
    cr_assert_eq(weft_future_poll(&io.base, &cx), WEFT_READY);
    cr_assert_eq(io.result, -ENXIO);
    weft_future_drop(&io.base);
    close(X.rdonly);
    close(X.wronly);
    close(X.dirfd);
    assert_no_fd_leak();
}

Test(file, bad_inputs, .timeout = 30)
{
    bad_inputs(RING);
}

Test(file, bad_inputs_through_the_blocking_pool, .timeout = 30)
{
    bad_inputs(NO_RING);
}

/* ---- pipes and FIFOs: answered at once on both paths ------------------------------- */

struct pipes {
    int p[2];
    char fifo[128], file[128];
    char buf[16];
};

static enum weft_poll body_pipes(struct ft *t, struct weft_cx *cx)
{
    struct pipes *P = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    DO_IO(t, cx, weft_read_at_init(&t->io, P->p[1], P->buf, sizeof P->buf, 0));
    DO_IO(t, cx, weft_write_at_init(&t->io, P->p[0], "x", 1, 0));
    DO_IO(t, cx, weft_read_at_init(&t->io, P->p[0], P->buf, 0, 0));
    DO_IO(t, cx, weft_write_at_init(&t->io, P->p[1], "x", 1, UINT64_MAX - 1));
    DO_IO(t, cx, weft_open_init(&t->io, P->fifo, O_WRONLY, 0));
    DO_IO(t, cx, weft_open_init(&t->io, P->fifo, O_WRONLY | O_CREAT, 0600));
    DO_IO(t, cx, weft_open_init(&t->io, P->fifo, O_RDONLY, 0));
    DO_IO(t, cx, weft_open_init(&t->io, P->fifo, O_RDONLY | O_CREAT, 0600));
    DO_IO(t, cx, weft_open_init(&t->io, P->file, O_RDWR | O_CREAT | O_TRUNC, 0600));
    DO_IO(t, cx, weft_open_init(&t->io, P->file, O_RDONLY | O_CREAT | O_NONBLOCK, 0600));
    WEFT_ASYNC_END(&t->base);
}

/* The descriptor of operation k, checked: close-on-exec, O_NONBLOCK as asked. */
static void check_opened(const struct ft *out, uint32_t k, bool nonblock)
{
    int fd = out->res[k];
    cr_assert_geq(fd, 0, "open %u gave %d", k, fd);
    int fl = fcntl(fd, F_GETFL);
    cr_assert(fl >= 0 && !(fl & O_NONBLOCK) == !nonblock, "open %u: flags 0%o", k, fl);
    cr_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
}

/* An empty pipe, and a FIFO nobody has open: a read of the write end, a write
 * to the read end (-EBADF), a zero-length read (0), a write at an offset past
 * INT64_MAX (-EINVAL: the pool wrote it at the pipe's position), and opening
 * the FIFO for writing (-ENXIO) or reading (a blocking descriptor), with
 * O_CREAT too, answer at once through the pool as through the ring. The pool
 * waited for readiness before the syscall and opened without O_NONBLOCK: each
 * of these hung it for good (a helper's review), and the drop and destroy with
 * it; the ring's opens with O_CREAT (which the kernel sends to its workers
 * with no non-blocking first try) waited for the FIFO's peer for good (a
 * later review). O_NONBLOCK comes back as asked, a regular file's too. */
static void pipes_and_fifos(enum path path)
{
    struct pipes P;
    cr_assert_eq(pipe2(P.p, O_CLOEXEC), 0);
    path_in_dir(P.fifo, sizeof P.fifo, "fifo");
    path_in_dir(P.file, sizeof P.file, "file");
    cr_assert_eq(mkfifo(P.fifo, 0600), 0);
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 1,
                                                              .no_io_uring = path == NO_RING },
                                            NULL);
    double t0 = now_s();
    struct ft out = run_ft(rt, body_pipes, &P);
    double took = now_s() - t0;
    weft_runtime_destroy(rt);
    cr_assert_eq(out.n, 10);
    const int want[] = { -EBADF, -EBADF, 0, -EINVAL, -ENXIO, -ENXIO };
    for (uint32_t k = 0; k < 6; k++)
        cr_assert_eq(out.res[k], want[k], "operation %u gave %d, not %d", k, out.res[k], want[k]);
    check_opened(&out, 6, false);
    check_opened(&out, 7, false);
    check_opened(&out, 8, false);
    check_opened(&out, 9, true);
    cr_assert_lt(took, 1.0, "the ten took %.3f s", took);
    close(P.p[0]);
    close(P.p[1]);
    assert_no_fd_leak();
}

Test(file, pipes_and_fifos_answer_at_once, .timeout = 15)
{
    pipes_and_fifos(RING);
}

Test(file, pipes_and_fifos_answer_at_once_through_the_blocking_pool, .timeout = 15)
{
    pipes_and_fifos(NO_RING);
}

/* ---- an open that must wait for a lease to break ------------------------------------ */

static volatile int lease_fd = -1;

static void release_lease(int sig)
{
    (void)sig;
    fcntl(lease_fd, F_SETLEASE, F_UNLCK);
}

static enum weft_poll body_open_for_writing(struct ft *t, struct weft_cx *cx)
{
    WEFT_ASYNC_BEGIN(&t->base);
    DO_IO(t, cx, weft_open_init(&t->io, t->arg, O_WRONLY, 0));
    WEFT_ASYNC_END(&t->base);
}

/* Makes the file p ("leased", 128 bytes) under a read lease this process
 * holds (lease_fd), with `on_break` as the SIGIO handler (the old one in
 * *old), or skips the test where the file system has no lease; then starts a
 * runtime of one worker on `path`. */
static struct weft_runtime *lease_and_start(enum path path, char *p, void (*on_break)(int),
                                            struct sigaction *old)
{
    close(create_in_dir(p, 128, "leased"));
    lease_fd = open(p, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(lease_fd, 0);
    struct sigaction sa = { .sa_handler = on_break };
    cr_assert_eq(sigaction(SIGIO, &sa, old), 0);
    if (fcntl(lease_fd, F_SETLEASE, F_RDLCK) != 0) {
        int e = errno;
        close(lease_fd);
        sigaction(SIGIO, old, NULL);
        cr_skip_test("no lease on a file here (F_SETLEASE: %s)", strerror(e));
    }
    return start_rt_opts((struct rt_opts){ .workers = 1, .no_io_uring = path == NO_RING }, NULL);
}

/* A file under a read lease: opening it for writing breaks the lease (its
 * holder, this process, gets SIGIO and gives it up) and then succeeds, as
 * through the ring. The pool's open with O_NONBLOCK first said -EAGAIN
 * instead (a helper's review); it now opens again without it. */
static void leased_open(enum path path)
{
    char p[128];
    struct sigaction old;
    struct weft_runtime *rt = lease_and_start(path, p, release_lease, &old);
    struct ft out = run_ft(rt, body_open_for_writing, p);
    weft_runtime_destroy(rt);
    sigaction(SIGIO, &old, NULL);
    cr_assert_geq(out.res[0], 0, "opening the leased file gave %d", out.res[0]);
    close(out.res[0]);
    close(lease_fd);
    assert_no_fd_leak();
}

Test(file, an_open_waits_for_a_lease_to_break, .timeout = 30)
{
    leased_open(RING);
}

Test(file, an_open_waits_for_a_lease_to_break_through_the_blocking_pool, .timeout = 30)
{
    leased_open(NO_RING);
}

static _Atomic int lease_broken;

static void note_lease_break(int sig)
{
    (void)sig;
    atomic_store(&lease_broken, 1);
}

/* An open waiting for a lease its holder keeps (the kernel's lease-break-time
 * is 45 s by default), aborted: the abort's drop returns at once, and no
 * descriptor is left. The pool's open waited in one blocking open(2), which
 * nothing could stop: the drop waited for the lease (a review). */
static void leased_open_aborted(enum path path)
{
    char p[128];
    struct sigaction old;
    atomic_store(&lease_broken, 0);
    struct weft_runtime *rt = lease_and_start(path, p, note_lease_break, &old);
    struct weft_join j;
    cr_assert_eq(spawn_ft(rt, body_open_for_writing, p, 0, &j), 0);
    WAIT_UNTIL(atomic_load(&lease_broken)); /* the open waits for the break */
    sleep_us(20000);
    double took = abort_timed(rt, &j);
    weft_runtime_destroy(rt);
    fcntl(lease_fd, F_SETLEASE, F_UNLCK);
    sigaction(SIGIO, &old, NULL);
    close(lease_fd);
    cr_assert_lt(took, 0.5, "the abort waited %.3f s for the lease", took);
    assert_no_fd_leak();
}

Test(file, an_open_waiting_for_a_lease_is_aborted_at_once, .timeout = 30)
{
    leased_open_aborted(RING);
}

Test(file, an_open_waiting_for_a_lease_is_aborted_at_once_through_the_blocking_pool,
     .timeout = 30)
{
    leased_open_aborted(NO_RING);
}

/* ---- dropping a read in flight ------------------------------------------------------------------- */

#define CANARY 0x5a
#define RBUF 64

struct pipe_read {
    int p[2];
    unsigned char *buf;          /* the dropped read's buffer */
    unsigned char buf2[RBUF];    /* the next read's */
    _Atomic int polled, spinning, stop, drop_started, drop_done;
    bool spin;
};

static enum weft_poll body_spinner(struct ft *t, struct weft_cx *cx)
{
    struct pipe_read *P = t->arg;
    (void)cx;
    atomic_store(&P->spinning, 1);
    spin_until(&P->stop);
    return WEFT_READY;
}

static void drop_read_slowly(struct ft *t)
{
    struct pipe_read *P = t->arg;
    atomic_store(&P->drop_started, 1);
    weft_future_drop(&t->io.base);
    atomic_store(&P->drop_done, 1);
}

/* A read of the pipe that never completes; with `spin`, its worker is then
 * kept busy, so that the drop runs on the other one. */
static enum weft_poll body_stuck_read(struct ft *t, struct weft_cx *cx)
{
    struct pipe_read *P = t->arg;
    if (t->polls == 1) {
        t->on_drop = drop_read_slowly;
        weft_read_at_init(&t->io, P->p[0], P->buf, RBUF, 0);
        if (P->spin)
            CHECK(spawn_ft(weft_runtime_current(), body_spinner, P, 1, NULL) == 0);
    }
    enum weft_poll r = weft_future_poll(&t->io.base, cx);
    atomic_store(&P->polled, 1);
    return r;
}

static enum weft_poll body_read_pipe(struct ft *t, struct weft_cx *cx)
{
    struct pipe_read *P = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    DO_IO(t, cx, weft_read_at_init(&t->io, P->p[0], P->buf2, RBUF, 0));
    WEFT_ASYNC_END(&t->base);
}

static void open_pipe(struct pipe_read *P)
{
    cr_assert_eq(pipe2(P->p, O_CLOEXEC), 0);
    P->buf = malloc(RBUF);
    cr_assert_not_null(P->buf);
    memset(P->buf, CANARY, RBUF);
}

/* After the drop: data written now goes to the next read, and the dropped
 * read's buffer is untouched (the kernel let go of it). Frees it. */
static void check_pipe_after_drop(struct weft_runtime *rt, struct pipe_read *P)
{
    cr_assert_eq(write(P->p[1], "ping", 4), 4);
    struct ft out = run_ft(rt, body_read_pipe, P);
    cr_assert_eq(out.res[0], 4, "the read after the drop gave %d", out.res[0]);
    cr_assert_eq(memcmp(P->buf2, "ping", 4), 0);
    for (int k = 0; k < RBUF; k++)
        cr_assert_eq(P->buf[k], CANARY, "the dropped read wrote its buffer (byte %d)", k);
    free(P->buf);
    close(P->p[0]);
    close(P->p[1]);
}

/* After an aborted read's drop: its task ended cancelled, the pipe works,
 * the runtime goes and every allocation came back. */
static void finish_aborted_read(struct weft_runtime *rt, struct weft_join *j, struct pipe_read *P,
                                struct counting_alloc *ca)
{
    cr_assert_eq(weft_block_on(rt, &j->base), 0);
    cr_assert_eq(j->res, -ECANCELED);
    weft_future_drop(&j->base);
    check_pipe_after_drop(rt, P);
    weft_runtime_destroy(rt);
    assert_balanced(ca);
}

static void abort_stuck_read(uint32_t workers, bool spin)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(workers, &ca);
    struct pipe_read P = { .spin = spin };
    struct weft_join j;
    open_pipe(&P);
    cr_assert_eq(spawn_ft(rt, body_stuck_read, &P, 0, &j), 0);
    WAIT_UNTIL(atomic_load(&P.polled) && (!spin || atomic_load(&P.spinning)));
    sleep_us(20000); /* the read reaches the kernel */
    weft_join_abort(&j);
    if (spin) {
        /* The owner is busy: nobody can cancel the read, so the drop waits. */
        WAIT_UNTIL(atomic_load(&P.drop_started));
        sleep_us(50000);
        cr_assert_eq(atomic_load(&P.drop_done), 0, "the drop returned while the kernel had the buffer");
        atomic_store(&P.stop, 1);
    }
    WAIT_UNTIL(atomic_load(&P.drop_done));
    finish_aborted_read(rt, &j, &P, &ca);
}

/* Without io_uring the read runs on a pool thread, waiting for the empty
 * pipe: an abort's drop tells it to give up (it polls in 50 ms steps) and
 * waits for that, so the drop returns soon with no data ever sent, the
 * dropped read's buffer untouched, and the pipe working after. (A drop or a
 * destroy is never stuck behind a silent descriptor.) */
Test(file, drop_read_on_the_blocking_pool_gives_up_soon, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 2, .no_io_uring = true },
                                            &ca);
    struct pipe_read P = { 0 };
    struct weft_join j;
    open_pipe(&P);
    cr_assert_eq(spawn_ft(rt, body_stuck_read, &P, 0, &j), 0);
    WAIT_UNTIL(atomic_load(&P.polled));
    sleep_us(20000); /* the pool thread waits for the pipe */
    double t0 = now_s();
    weft_join_abort(&j);
    WAIT_UNTIL(atomic_load(&P.drop_done));
    cr_assert_lt(now_s() - t0, 2.0, "the drop took %.2f s", now_s() - t0);
    finish_aborted_read(rt, &j, &P, &ca);
    assert_no_fd_leak();
}

static _Atomic int gate_open_flag;

static void *job_hold_pool(void *arg)
{
    (void)arg;
    while (!atomic_load(&gate_open_flag))
        sleep_us(1000);
    return NULL;
}

/* A file operation queued behind a busy pool (one thread, held) is taken
 * back when dropped: the drop returns at once, the read never runs (the pipe
 * keeps its bytes for the next read). */
Test(file, drop_read_queued_on_the_blocking_pool_returns_at_once, .timeout = 30)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = 2;
    cfg.no_io_uring = true;
    cfg.blocking_max_threads = 1;
    struct weft_runtime *rt;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    atomic_store(&gate_open_flag, 0);
    cr_assert_eq(weft_spawn_blocking(rt, job_hold_pool, NULL, NULL), 0);
    struct pipe_read P = { 0 };
    struct weft_join j;
    open_pipe(&P);
    cr_assert_eq(write(P.p[1], "kept", 4), 4);
    cr_assert_eq(spawn_ft(rt, body_stuck_read, &P, 0, &j), 0);
    WAIT_UNTIL(atomic_load(&P.polled));
    weft_join_abort(&j);
    WAIT_UNTIL(atomic_load(&P.drop_done)); /* no wait for the held thread */
    cr_assert_eq(P.buf[0], CANARY, "the dropped read ran");
    atomic_store(&gate_open_flag, 1);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, -ECANCELED);
    weft_future_drop(&j.base);
    char b[8];
    cr_assert_eq(read(P.p[0], b, sizeof b), 4, "the pipe lost its bytes");
    cr_assert_eq(memcmp(b, "kept", 4), 0);
    free(P.buf);
    close(P.p[0]);
    close(P.p[1]);
    weft_runtime_destroy(rt);
    assert_no_fd_leak();
}

Test(file, drop_read_in_flight_on_its_worker, .timeout = 30)
{
    abort_stuck_read(1, false);
    assert_no_fd_leak();
}

Test(file, drop_read_in_flight_on_another_worker, .timeout = 30)
{
    abort_stuck_read(2, true);
    assert_no_fd_leak();
}

/* A 1 MiB write to a pipe nobody reads, through the blocking pool. With room
 * for part of it, it writes that part and finishes, as the ring does on a
 * pipe; with none, it waits, and aborting it, or destroying the runtime under
 * it, returns within the pool's 50 ms steps (a blocking write of more than
 * the room took the drop with it until a reader came). */
enum { BIG_WRITE = 1 << 20 };

static enum weft_poll body_big_pipe_write(struct ft *t, struct weft_cx *cx)
{
    int *wfd = t->arg;
    WEFT_ASYNC_BEGIN(&t->base);
    DO_IO(t, cx, weft_write_at_init(&t->io, *wfd, (char *)t->arg + 8, BIG_WRITE, 0));
    WEFT_ASYNC_END(&t->base);
}

/* Fills the pipe to the brim. */
static void fill_pipe(int wfd)
{
    static char junk[4096];
    cr_assert_eq(fcntl(wfd, F_SETFL, O_NONBLOCK), 0);
    while (write(wfd, junk, sizeof junk) > 0)
        ;
    cr_assert_eq(errno, EAGAIN);
    cr_assert_eq(fcntl(wfd, F_SETFL, 0), 0);
}

Test(file, pool_write_to_a_silent_pipe_drops_promptly, .timeout = 30)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    char *arg = calloc(1, 8 + BIG_WRITE); /* the write end, then the bytes */
    char *sink = malloc(BIG_WRITE);
    cr_assert(arg && sink);
    memcpy(arg, &p[1], sizeof p[1]);
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt_opts((struct rt_opts){ .workers = 2, .no_io_uring = true },
                                            &ca);
    /* Room for 64 KiB: a short write, at once. */
    struct ft out = run_ft(rt, body_big_pipe_write, arg);
    cr_assert(out.res[0] > 0 && out.res[0] < BIG_WRITE, "wrote %d", out.res[0]);
    cr_assert_eq(fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
    cr_assert_eq(read(p[0], sink, BIG_WRITE), out.res[0]);
    /* No room: it waits until aborted. */
    fill_pipe(p[1]);
    struct weft_join j;
    cr_assert_eq(spawn_ft(rt, body_big_pipe_write, arg, 0, &j), 0);
    sleep_us(100000);
    double took = abort_timed(rt, &j);
    cr_assert_lt(took, 0.5, "the abort took %.3f s: the write waited for a reader", took);
    /* And with the runtime destroyed under the waiting write. */
    cr_assert_eq(spawn_ft(rt, body_big_pipe_write, arg, 0, NULL), 0);
    sleep_us(100000);
    double t0 = now_s();
    weft_runtime_destroy(rt);
    took = now_s() - t0;
    cr_assert_lt(took, 0.5, "the destroy took %.3f s: the write waited for a reader", took);
    assert_balanced(&ca);
    free(sink);
    free(arg);
    close(p[0]);
    close(p[1]);
    assert_no_fd_leak();
}

/* The test thread owns the read: a task polls it once, then this thread,
 * which is no worker, drops it while its worker sleeps. */
static struct weft_io ext_read;

static enum weft_poll body_poll_ext_once(struct ft *t, struct weft_cx *cx)
{
    struct pipe_read *P = t->arg;
    CHECK(weft_future_poll(&ext_read.base, cx) == WEFT_PENDING);
    atomic_store(&P->polled, 1);
    return WEFT_READY;
}

Test(file, drop_read_in_flight_from_non_worker, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    struct pipe_read P = { 0 };
    open_pipe(&P);
    weft_read_at_init(&ext_read, P.p[0], P.buf, RBUF, 0);
    cr_assert_eq(spawn_ft(rt, body_poll_ext_once, &P, 0, NULL), 0);
    WAIT_UNTIL(atomic_load(&P.polled));
    sleep_us(20000); /* the worker submits the read and parks */
    double t0 = now_s();
    weft_future_drop(&ext_read.base);
    cr_assert_lt(now_s() - t0, 3.0, "the drop took %.3f s", now_s() - t0);
    check_pipe_after_drop(rt, &P);
    weft_runtime_destroy(rt);
    assert_balanced(&ca);
    assert_no_fd_leak();
}

/* ---- dropping opens in flight ---------------------------------------------------------------------- */

/* 200 opens, each dropped right after its first poll (before or after the
 * kernel opened the file): a file it opened anyway must be closed. */
static enum weft_poll body_drop_opens(struct ft *t, struct weft_cx *cx)
{
    const char *path = t->arg;
    for (int k = 0; k < 200; k++) {
        weft_open_init(&t->io, path, k % 2 ? O_RDONLY : O_RDWR, 0);
        t->res[0] += weft_future_poll(&t->io.base, cx) == WEFT_PENDING;
        weft_future_drop(&t->io.base);
        if (k % 16 == 0)
            usleep(100); /* let some complete before their drop */
    }
    return WEFT_READY;
}

Test(file, drop_open_in_flight_leaks_no_fd, .timeout = 30)
{
    char path[128];
    close(create_in_dir(path, sizeof path, "f"));
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(2, &ca);
    int fds_with_rt = count_fds();
    struct ft out = run_ft(rt, body_drop_opens, path);
    cr_assert_eq(out.res[0], 200, "an open was ready at its first poll");
    cr_assert_eq(count_fds(), fds_with_rt, "dropped opens left %d descriptors open",
                 count_fds() - fds_with_rt);
    weft_runtime_destroy(rt);
    assert_balanced(&ca);
    assert_no_fd_leak();
}

/* ---- a read the kernel cannot cancel ------------------------------------------------------ */

/* A buffered read of a file not in the page cache waits on the disk where
 * no cancel reaches it (the cancel says -ENOENT): the drop must sleep until
 * the read ends, not send cancel after cancel meanwhile (the review of the
 * resent cancels: millions of round trips on a slow disk). */
enum { COLD_SIZE = 64 << 20 };

static enum weft_poll body_drop_cold_read(struct ft *t, struct weft_cx *cx)
{
    int *fd = t->arg;
    weft_read_at_init(&t->io, *fd, (char *)t->arg + 8, COLD_SIZE, 0);
    t->res[0] = weft_future_poll(&t->io.base, cx) == WEFT_PENDING;
    weft_future_drop(&t->io.base); /* the caller's buffer: the drop waits */
    return WEFT_READY;
}

Test(file, dropped_read_out_of_a_cancels_reach_sleeps_until_it_ends, .timeout = 60)
{
    char path[128];
    int fd = create_in_dir(path, sizeof path, "cold");
    char *chunk = malloc(1 << 20);
    cr_assert_not_null(chunk);
    memset(chunk, 'c', 1 << 20);
    for (int i = 0; i < COLD_SIZE >> 20; i++)
        cr_assert_eq(write(fd, chunk, 1 << 20), 1 << 20);
    free(chunk);
    cr_assert_eq(fdatasync(fd), 0);
    cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0); /* out of the cache */
    char *arg = calloc(1, 8 + COLD_SIZE); /* the fd, then the buffer */
    cr_assert_not_null(arg);
    memcpy(arg, &fd, sizeof fd);
    struct counting_alloc ca;
    struct weft_runtime *rt = start_rt(1, &ca);
    struct weft_metrics *m0 = malloc(sizeof *m0), *m1 = malloc(sizeof *m1);
    cr_assert_eq(weft_metrics_read(rt, m0), 0);
    double t0 = now_s();
    struct ft out = run_ft(rt, body_drop_cold_read, arg);
    double took = now_s() - t0;
    cr_assert_eq(weft_metrics_read(rt, m1), 0);
    uint64_t cqes = m1->worker[0].cqes - m0->worker[0].cqes;
    cr_log_info("pending at the drop: %d; the drop took %.3f s and %" PRIu64 " completions",
                out.res[0], took, cqes);
    cr_assert_lt(cqes, 16, "%" PRIu64 " completions in %.3f s: cancels sent again and again",
                 cqes, took);
    weft_runtime_destroy(rt);
    free(m0);
    free(m1);
    free(arg);
    close(fd);
    assert_balanced(&ca);
    assert_no_fd_leak();
}
