/* tests/test_config.c: runtime configuration and creation (runtime/runtime.c).
 *
 * Bad inputs tried: workers = WEFT_MAX_WORKERS + 1 and UINT32_MAX; a
 * thread_name of 13 bytes; local_queue_size 8, 15, 17, 100, 131072, 2^31 and
 * UINT32_MAX; an allocator with a NULL alloc, a NULL free, or both; out NULL
 * (with and without a config); an allocator that fails at each allocation of
 * weft_runtime_create in turn (-ENOMEM, nothing left behind). Every failed
 * create must leave *out untouched and allocate nothing it keeps. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <weft.h>

#include "common.h"

static struct weft_runtime *const SENTINEL = (struct weft_runtime *)(uintptr_t)0x5eed;

/* ---- helpers ---------------------------------------------------------------------- */

/* Creates with `cfg`, expecting `want`; on success checks the worker count and
 * destroys. A failure must leave *out untouched. */
static void expect_create(const struct weft_runtime_config *cfg, int want)
{
    struct weft_runtime *rt = SENTINEL;
    int rc = weft_runtime_create(&rt, cfg);
    cr_assert_eq(rc, want, "workers %u, name %s, queue %u: got %d, want %d", cfg->workers,
                 cfg->thread_name ? cfg->thread_name : "(null)", cfg->local_queue_size, rc, want);
    if (rc != 0) {
        cr_assert_eq(rt, SENTINEL, "a failed create wrote *out");
        return;
    }
    cr_assert_neq(rt, SENTINEL);
    if (cfg->workers)
        cr_assert_eq(weft_runtime_workers(rt), cfg->workers);
    weft_runtime_destroy(rt);
}

static struct weft_runtime_config config(uint32_t workers)
{
    struct weft_runtime_config cfg;
    weft_runtime_config_init(&cfg);
    cfg.workers = workers;
    return cfg;
}

/* True if some thread of this process is named `name`. */
static bool thread_named(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    bool found = false;
    for (struct dirent *e; !found && (e = readdir(d));) {
        char path[64], comm[32] = "";
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%.20s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* the thread just exited */
        if (fgets(comm, sizeof comm, f))
            comm[strcspn(comm, "\n")] = '\0';
        fclose(f);
        found = strcmp(comm, name) == 0;
    }
    closedir(d);
    return found;
}

/* ---- defaults and bad configs --------------------------------------------------------- */

Test(config, init_gives_defaults, .timeout = 30)
{
    struct weft_runtime_config cfg;
    memset(&cfg, 0xff, sizeof cfg);
    weft_runtime_config_init(&cfg);
    cr_assert_eq(cfg.workers, 0);
    cr_assert_null(cfg.thread_name);
    cr_assert_eq(cfg.local_queue_size, 0);
    cr_assert_eq(cfg.global_queue_interval, 0);
    cr_assert_null(cfg.allocator);
}

Test(config, null_config_means_defaults, .timeout = 30)
{
    struct weft_runtime *rt = NULL;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    cr_assert_eq(weft_runtime_create(&rt, NULL), 0);
    cr_assert_eq(weft_runtime_workers(rt),
                 cpus > (long)WEFT_MAX_WORKERS ? WEFT_MAX_WORKERS : (uint32_t)cpus);
    cr_assert(thread_named("weft-w0"), "default thread name prefix");
    weft_runtime_destroy(rt);
    struct weft_runtime_config cfg = config(0);
    expect_create(&cfg, 0);
}

Test(config, out_null, .timeout = 30)
{
    struct weft_runtime_config cfg = config(1);
    cr_assert_eq(weft_runtime_create(NULL, NULL), -EINVAL);
    cr_assert_eq(weft_runtime_create(NULL, &cfg), -EINVAL);
}

Test(config, worker_counts, .timeout = 30)
{
    struct weft_runtime_config cfg = config(1);
    expect_create(&cfg, 0);
    cfg.workers = 3;
    expect_create(&cfg, 0);
    cfg.workers = WEFT_MAX_WORKERS + 1;
    expect_create(&cfg, -EINVAL);
    cfg.workers = UINT32_MAX;
    expect_create(&cfg, -EINVAL);
}

Test(config, thread_name_length, .timeout = 30)
{
    struct weft_runtime_config cfg = config(1);
    cfg.thread_name = "abcdefghijklm"; /* 13 bytes */
    expect_create(&cfg, -EINVAL);
    cfg.thread_name = "abcdefghijkl";  /* 12 bytes */
    expect_create(&cfg, 0);
    cfg.thread_name = "";
    expect_create(&cfg, 0);
}

Test(config, local_queue_size, .timeout = 30)
{
    static const struct { uint32_t size; int want; } cases[] = {
        { 0, 0 }, { 16, 0 }, { 256, 0 }, { 65536, 0 },
        { 8, -EINVAL }, { 15, -EINVAL }, { 17, -EINVAL }, { 100, -EINVAL },
        { 131072, -EINVAL }, { UINT32_C(1) << 31, -EINVAL }, { UINT32_MAX, -EINVAL },
    };
    struct weft_runtime_config cfg = config(2);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cfg.local_queue_size = cases[i].size;
        expect_create(&cfg, cases[i].want);
    }
}

Test(config, allocator_without_functions, .timeout = 30)
{
    struct counting_alloc ca;
    struct weft_runtime_config cfg = config(1);

    counting_init(&ca, -1);
    cfg.allocator = &ca.a;
    ca.a.alloc = NULL;
    expect_create(&cfg, -EINVAL);
    ca.a = (struct weft_allocator){ count_alloc, NULL, &ca };
    expect_create(&cfg, -EINVAL);
    ca.a = (struct weft_allocator){ NULL, NULL, &ca };
    expect_create(&cfg, -EINVAL);
    ca.a = (struct weft_allocator){ count_alloc, count_free, &ca };
    cfg.local_queue_size = 100; /* a bad config with a good allocator: nothing allocated */
    expect_create(&cfg, -EINVAL);
    cr_assert_eq(atomic_load(&ca.allocs), 0);
    cfg.local_queue_size = 0;
    expect_create(&cfg, 0);
    cr_assert_gt(atomic_load(&ca.allocs), 0, "the allocator was not used");
    assert_balanced(&ca);
}

/* Fails the 0th, 1st, ... allocation of a create until one succeeds: each
 * failure returns -ENOMEM and frees everything it had allocated. */
Test(config, out_of_memory_at_each_allocation, .timeout = 30)
{
    struct weft_runtime_config cfg = config(3);
    struct counting_alloc ca;
    int rc = -ENOMEM;
    long k;

    cfg.allocator = &ca.a;
    for (k = 0; rc == -ENOMEM && k < 1000; k++) {
        counting_init(&ca, k);
        struct weft_runtime *rt = SENTINEL;
        rc = weft_runtime_create(&rt, &cfg);
        if (rc == 0) {
            weft_runtime_destroy(rt);
        } else {
            cr_assert_eq(rc, -ENOMEM, "allocation %ld failed: got %d", k, rc);
            cr_assert_eq(rt, SENTINEL);
        }
        assert_balanced(&ca);
    }
    cr_assert_eq(rc, 0);
    cr_assert_gt(k, 3, "create made fewer allocations than expected (%ld)", k);
}

/* Fails only the 0th, 1st, ... allocation of a create with 3 workers (the
 * others succeed), until a create makes no more: each failure returns
 * -ENOMEM, frees everything, and closes no descriptor it did not open. The
 * per-worker stat descriptors' array was left all 0 (not -1) when an array
 * allocated before it had failed, and the unwinding closed fd 0 once per
 * worker (a helper's fault injection). */
Test(config, out_of_memory_at_one_allocation, .timeout = 30)
{
    struct weft_runtime_config cfg = config(3);
    struct counting_alloc ca;
    struct stat before, after;
    bool opened = fstat(0, &before) != 0;
    if (opened) { /* no stdin here: put something at 0 to watch */
        cr_assert_eq(open("/dev/null", O_RDONLY), 0);
        cr_assert_eq(fstat(0, &before), 0);
    }
    cfg.allocator = &ca.a;
    long k, total = 1000;
    for (k = 0; k < total; k++) {
        counting_init(&ca, k);
        ca.once = true;
        struct weft_runtime *rt = SENTINEL;
        int rc = weft_runtime_create(&rt, &cfg);
        if (rc == 0) {
            total = atomic_load(&ca.calls);
            weft_runtime_destroy(rt);
        } else {
            cr_assert_eq(rc, -ENOMEM, "allocation %ld failed: got %d", k, rc);
            cr_assert_eq(rt, SENTINEL);
        }
        assert_balanced(&ca);
        cr_assert_eq(fstat(0, &after), 0, "allocation %ld failing closed fd 0", k);
        cr_assert(after.st_ino == before.st_ino && after.st_dev == before.st_dev,
                  "allocation %ld failing closed fd 0 (now another file)", k);
    }
    cr_assert_gt(k, 3, "create made fewer allocations than expected (%ld)", k);
    if (opened)
        close(0);
}

/* The kernel refuses the opcode probe (a seccomp filter answers ENOMEM to
 * io_uring_register(IORING_REGISTER_PROBE) alone): create fails with that
 * error and frees everything. Before, a failed probe read as a kernel with no
 * opcode, and every socket future on that worker gave -EOPNOTSUPP while
 * create succeeded (a helper's fault injection). */
Test(config, a_refused_opcode_probe_fails_create, .timeout = 30)
{
#if !defined(__x86_64__)
    cr_skip_test("the filter below is written for x86-64");
#else
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IORING_REGISTER_PROBE, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOMEM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    struct weft_runtime_config cfg = config(2);
    struct counting_alloc ca;
    counting_init(&ca, -1);
    cfg.allocator = &ca.a;
    /* Criterion runs each test in a process of its own: the filter ends with it. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        cr_skip_test("no seccomp filter here: %s", strerror(errno));
    struct weft_runtime *rt = SENTINEL;
    int rc = weft_runtime_create(&rt, &cfg);
    cr_assert_eq(rc, -ENOMEM, "create with a refused probe gave %d", rc);
    cr_assert_eq(rt, SENTINEL);
    assert_balanced(&ca);
#endif
}

/* A worker thread that cannot be created (address space limited to ~20 MiB
 * more than in use, for 64 stacks): the error comes back, the workers already
 * started are stopped, and everything is freed. */
Test(config, thread_creation_failure, .timeout = 30)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    cr_skip_test("a sanitizer's shadow memory does not fit under RLIMIT_AS");
#else
    struct weft_runtime_config cfg = config(64);
    struct counting_alloc ca;
    struct weft_runtime *rt = SENTINEL;
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    cr_assert(f && fscanf(f, "%ld", &pages) == 1);
    fclose(f);
    struct rlimit rl = { (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (20u << 20), RLIM_INFINITY };
    cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
    counting_init(&ca, -1);
    cfg.allocator = &ca.a;
    int rc = weft_runtime_create(&rt, &cfg);
    cr_assert(rc == -EAGAIN || rc == -ENOMEM, "got %d", rc);
    cr_assert_eq(rt, SENTINEL);
    assert_balanced(&ca);
#endif
}

/* ---- what a created runtime looks like ------------------------------------------------- */

Test(config, worker_thread_names, .timeout = 30)
{
    struct weft_runtime_config cfg = config(3);
    struct weft_runtime *rt;

    cfg.thread_name = "tcfg-";
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    for (int i = 0; i < 3; i++) {
        char name[24];
        snprintf(name, sizeof name, "tcfg-%d", i);
        cr_assert(thread_named(name), "no thread named %s", name);
    }
    cr_assert_not(thread_named("tcfg-3"));
    weft_runtime_destroy(rt);
    cr_assert_not(thread_named("tcfg-0"), "a worker outlived destroy");
}

/* The most workers with the longest prefix: "abcdefghijkl255" still fits the
 * 15 characters Linux keeps. */
Test(config, max_workers_longest_names, .timeout = 30)
{
    struct weft_runtime_config cfg = config(WEFT_MAX_WORKERS);
    struct weft_runtime *rt;

    cfg.thread_name = "abcdefghijkl";
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    cr_assert_eq(weft_runtime_workers(rt), WEFT_MAX_WORKERS);
    cr_assert(thread_named("abcdefghijkl0"));
    cr_assert(thread_named("abcdefghijkl255"));
    weft_runtime_destroy(rt);
}

/* ---- tasks used below ---------------------------------------------------------------------- */

#define CHILDREN 100000

static _Atomic uint32_t seen[CHILDREN], done;

struct fut {
    struct weft_future base;
    uint32_t idx;
    struct weft_runtime *current; /* weft_runtime_current() seen in poll */
};

static enum weft_poll child_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)cx;
    struct fut *c = (struct fut *)f;
    atomic_fetch_add(&seen[c->idx], 1);
    atomic_fetch_add(&done, 1);
    return WEFT_READY;
}

static const struct weft_future_ops child_ops = { child_poll, NULL };

/* Spawns CHILDREN children from one poll: with a 16-slot queue they overflow. */
static enum weft_poll spawner_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    for (uint32_t i = 0; i < CHILDREN; i++) {
        struct fut c = { { &child_ops, 0 }, i, NULL };
        if (weft_spawn(weft_runtime_current(), &c.base, sizeof c, NULL) != 0)
            abort(); /* no Criterion assert on a worker thread */
    }
    return WEFT_READY;
}

static const struct weft_future_ops spawner_ops = { spawner_poll, NULL };

static void overflow_run(uint32_t workers)
{
    struct weft_runtime_config cfg = config(workers);
    struct weft_runtime *rt;
    struct weft_join j;
    struct fut s = { { &spawner_ops, 0 }, 0, NULL };

    cfg.local_queue_size = 16;
    cr_assert_eq(weft_runtime_create(&rt, &cfg), 0);
    cr_assert_eq(weft_spawn(rt, &s.base, sizeof s, &j), 0);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    cr_assert_eq(j.res, 0);
    weft_future_drop(&j.base);
    for (int ms = 0; atomic_load(&done) < CHILDREN && ms < 10000; ms++)
        usleep(1000);
    cr_assert_eq(atomic_load(&done), CHILDREN, "only %u of the children ran", atomic_load(&done));
    weft_runtime_destroy(rt);
    for (uint32_t i = 0; i < CHILDREN; i++)
        cr_assert_eq(atomic_load(&seen[i]), 1, "child %u ran %u times", i, atomic_load(&seen[i]));
}

Test(config, tiny_local_queue_overflows_one_worker, .timeout = 30)
{
    overflow_run(1);
}

Test(config, tiny_local_queue_overflows_two_workers, .timeout = 30)
{
    overflow_run(2);
}

static enum weft_poll current_poll(struct weft_future *f, struct weft_cx *cx)
{
    (void)cx;
    ((struct fut *)f)->current = weft_runtime_current();
    return WEFT_READY;
}

static const struct weft_future_ops current_ops = { current_poll, NULL };

/* Runs a current_poll task on `rt` and returns what it saw. */
static struct weft_runtime *current_inside(struct weft_runtime *rt)
{
    struct weft_join j;
    struct fut f = { { &current_ops, 0 }, 0, SENTINEL };
    cr_assert_eq(weft_spawn(rt, &f.base, sizeof f, &j), 0);
    cr_assert_eq(weft_block_on(rt, &j.base), 0);
    struct weft_runtime *seen_rt = ((struct fut *)weft_join_output(&j))->current;
    weft_future_drop(&j.base);
    return seen_rt;
}

Test(config, runtime_current, .timeout = 30)
{
    struct weft_runtime_config cfg = config(2);
    struct weft_runtime *a, *b;

    cr_assert_null(weft_runtime_current());
    cr_assert_eq(weft_runtime_create(&a, &cfg), 0);
    cr_assert_eq(weft_runtime_create(&b, &cfg), 0);
    cr_assert_null(weft_runtime_current(), "not a worker");
    cr_assert_eq(current_inside(a), a);
    cr_assert_eq(current_inside(b), b);

    struct fut f = { { &current_ops, 0 }, 0, SENTINEL };
    cr_assert_eq(weft_block_on(a, &f.base), 0);
    cr_assert_eq(f.current, a, "block_on polls on a worker of its runtime");
    weft_runtime_destroy(a);
    weft_runtime_destroy(b);
    cr_assert_null(weft_runtime_current());
}

/* ---- fork ----------------------------------------------------------------------------------- */

static struct weft_runtime *forked_rt;

static void destroy_forked_rt(void)
{
    weft_runtime_destroy(forked_rt);
}

static enum weft_poll ready_at_once(struct weft_future *f, struct weft_cx *cx)
{
    (void)f, (void)cx;
    return WEFT_READY;
}

static const struct weft_future_ops ready_ops = { ready_at_once, NULL };

/* A child of fork() has none of the runtime's threads: its weft_block_on
 * gives -ECHILD, its weft_runtime_shutdown -ECHILD, and its destroy (an
 * atexit handler's, as the child calls exit) does nothing. Both used to wait
 * for good for workers that do not exist in the child (a lifecycle review:
 * every child hung). The parent's runtime is unharmed. */
Test(config, a_forked_child_refuses_the_parents_runtime, .timeout = 30)
{
    struct weft_runtime_config cfg = config(2);
    cr_assert_eq(weft_runtime_create(&forked_rt, &cfg), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct weft_future f = { &ready_ops, 0 };
        int rc = weft_block_on(forked_rt, &f);
        int rc2 = weft_runtime_shutdown(forked_rt, 0);
        destroy_forked_rt(); /* as an atexit handler would (_exit: no leak check in the child) */
        _exit(rc == -ECHILD && rc2 == -ECHILD ? 0 : 3);
    }
    int status = 0;
    double deadline = now_s() + 10;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && now_s() < deadline)
        sleep_us(1000);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        cr_assert_fail("the child hung (in weft_block_on or in its atexit destroy)");
    }
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's calls did not give -ECHILD");
    struct weft_future f = { &ready_ops, 0 };
    cr_assert_eq(weft_block_on(forked_rt, &f), 0, "the parent's runtime");
    weft_runtime_destroy(forked_rt);
}
