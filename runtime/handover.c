/* handover.c: a thread running a lowered job gives its CPU to a worker that
 * waits for one.
 *
 * Why: on the stall demo (docs/blocking.md) a worker woken by the load
 * generator is now and then queued for 1-4 ms behind it on the generator's
 * CPU, while the other CPU runs nothing but a lowered (SCHED_IDLE) job. The
 * kernel places a woken thread on its previous CPU or its waker's, and looks
 * for an idle CPU only among those sharing a cache with them; this VM shows
 * no shared cache between its CPUs, and a CPU running a SCHED_IDLE thread is
 * not idle to the wake-up's affine choice. Nothing moves the worker until a
 * load balance at a scheduler tick (4 ms here).
 *
 * What: the thread running the lowered job looks at the workers every so
 * often (a compute job at the end of each slice, slice.c). A worker that is
 * runnable ('R' in /proc) at this look and the last, on another CPU, with no
 * CPU time between the two looks, has waited a whole period for a CPU: its
 * affinity is narrowed to the looker's CPU, which moves it there at once (a
 * queued thread is moved by the kernel's affinity change), where it preempts
 * the lowered job. The worker widens its affinity back to what it was at the
 * moment it runs again (weft__handover_undo, at the top of its loop), unless
 * something else changed it meanwhile; a worker whose own affinity excludes
 * the looker's CPU is left where it is. A look moves at most one worker and
 * looks at LOOK_MAX of them at most (the next ones at the next look), each
 * costing a /proc read and, if runnable, a CPU-clock read (about 2 and 1 us
 * here). The runtime opens the workers' /proc files when its first compute
 * job starts (a program that never uses the compute lane has no extra
 * descriptor open) and closes them with the runtime.
 *
 * Measured on the stall demo (light p99, 5 s runs, slices of 250 us, on
 * against off in the same session): 0.29-0.48 ms against 0.31-0.69 ms, better
 * or level in 11 runs of 11, with 5-18 hand-overs per run.
 *
 * `handed`, per worker: HANDED_FREE, HANDED_BUSY (a looker is narrowing it;
 * `handed_mask` and `handed_cpu` are the looker's), HANDED_SET (narrowed;
 * they are the worker's to read). A looker claims the worker with an
 * acquiring CAS from FREE (pairs with the worker's releasing store of FREE,
 * made once the worker has read the old mask and widened its affinity back:
 * a new narrowing saves the widened mask), writes them, narrows, then stores
 * SET with release (pairs with the worker's acquiring load of SET: the
 * worker reads what the looker wrote). Only the worker leaves SET, so two
 * lookers never narrow one worker at once.
 *
 * After destroy the workers are gone and their tids may in principle be
 * reused: a look stops once it sees `shutdown`; the /proc files stay tied to
 * the threads they were opened for (a read of an exited one fails). */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define LOOK_MAX 4u

enum { HANDED_FREE, HANDED_BUSY, HANDED_SET };

struct weft__seen {
    uint64_t cpu_ns;   /* the worker's CPU time at its last look */
    bool waiting;      /* it was runnable at its last look */
};

static _Atomic uint64_t handovers;
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
               "a look runs in a signal handler");

/* Opens the /proc files of the workers that have started and have none yet. */
static void open_stat_files(struct weft_runtime *rt)
{
    struct stat_files *f = &rt->stat_files;
    uint32_t open_ = 0;
    while (open_ < rt->nworkers && atomic_load_explicit(&f->fds[open_], memory_order_relaxed) >= 0)
        open_++;
    if (open_ == rt->nworkers)
        return; /* the usual case: no lock per compute job */
    pthread_mutex_lock(&f->lock);
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        /* Acquire pairs with the worker's release: cpu_clock is set. */
        pid_t tid = atomic_load_explicit(&rt->workers[i].tid, memory_order_acquire);
        if (tid == 0 || atomic_load_explicit(&f->fds[i], memory_order_relaxed) >= 0)
            continue;
        char path[48];
        snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
        /* Release pairs with the looker's acquire in starved(): the open
         * happens before any read of the descriptor. (The kernel's fd table
         * would make a relaxed load safe, but ThreadSanitizer tracks a
         * descriptor's life and sees only what the atomics order.) A looker
         * that reads -1 skips the worker this time. */
        atomic_store_explicit(&f->fds[i], open(path, O_RDONLY | O_CLOEXEC),
                              memory_order_release);
    }
    pthread_mutex_unlock(&f->lock);
}

void weft__stat_files_close(struct weft_runtime *rt)
{
    for (uint32_t i = 0; rt->stat_files.fds && i < rt->nworkers; i++) {
        int fd = atomic_load_explicit(&rt->stat_files.fds[i], memory_order_relaxed);
        if (fd >= 0)
            close(fd);
    }
}

bool weft__looker_init(struct weft__looker *l, struct weft_runtime *rt)
{
    if (!l->seen) {
        l->seen = calloc(rt->nworkers, sizeof *l->seen);
        if (!l->seen)
            return false;
        l->rt = rt;
    }
    open_stat_files(rt);
    return true;
}

void weft__looker_fini(struct weft__looker *l)
{
    free(l->seen);
    l->seen = NULL;
}

/* The state letter and the CPU of a /proc stat line (fields 3 and 39; the
 * name in field 2 may hold spaces and parentheses, so count from its last
 * ')'). */
static bool parse_stat(const char *b, size_t n, char *state, int *cpu)
{
    size_t i = n;
    while (i > 0 && b[i - 1] != ')')
        i--;
    if (i == 0 || i + 2 >= n)
        return false;
    *state = b[i + 1];
    int field = 2;
    for (; i < n && field < 39; i++)
        field += b[i] == ' ';
    if (field < 39 || i >= n || b[i] < '0' || b[i] > '9')
        return false;
    int v = 0;
    for (; i < n && b[i] >= '0' && b[i] <= '9'; i++)
        v = v * 10 + (b[i] - '0');
    *cpu = v;
    return true;
}

/* Narrows w to `cpu`, if no looker holds it already and its affinity
 * allows `cpu`. */
bool weft__handover_move(struct weft__worker *w, pid_t tid, int cpu)
{
    uint32_t free_ = HANDED_FREE;
    if (!atomic_compare_exchange_strong_explicit(&w->handed, &free_, HANDED_BUSY,
                                                 memory_order_acquire, memory_order_relaxed))
        return false;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    w->handed_cpu = cpu;
    if (sched_getaffinity(tid, sizeof w->handed_mask, &w->handed_mask) != 0 ||
        !CPU_ISSET(cpu, &w->handed_mask) || sched_setaffinity(tid, sizeof one, &one) != 0) {
        atomic_store_explicit(&w->handed, HANDED_FREE, memory_order_release);
        return false;
    }
    atomic_store_explicit(&w->handed, HANDED_SET, memory_order_release);
    return true;
}

/* Whether worker i has waited for a CPU other than `cpu` since the last look. */
static bool starved(struct weft__looker *l, uint32_t i, int cpu)
{
    struct weft__worker *w = &l->rt->workers[i];
    struct weft__seen *s = &l->seen[i];
    /* Acquire pairs with open_stat_files' release (lock-free: signal-safe). */
    int fd = atomic_load_explicit(&l->rt->stat_files.fds[i], memory_order_acquire);
    char b[1024], state;
    int on;
    struct timespec ts;
    ssize_t n = fd >= 0 ? pread(fd, b, sizeof b, 0) : -1;
    if (n <= 0 || !parse_stat(b, (size_t)n, &state, &on) || state != 'R' || on == cpu ||
        clock_gettime(w->cpu_clock, &ts) != 0) {
        s->waiting = false;
        return false;
    }
    uint64_t ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    bool was = s->waiting && ns == s->cpu_ns;
    s->waiting = !was; /* after a move, start over */
    s->cpu_ns = ns;
    return was;
}

void weft__looker_look(struct weft__looker *l, int cpu)
{
    struct weft_runtime *rt = l->rt;
    if (cpu < 0 || atomic_load_explicit(&rt->shutdown, memory_order_acquire))
        return;
    uint32_t n = rt->nworkers < LOOK_MAX ? rt->nworkers : LOOK_MAX;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = l->next;
        l->next = i + 1 < rt->nworkers ? i + 1 : 0;
        /* Acquire pairs with the worker's release: cpu_clock is set. */
        pid_t tid = atomic_load_explicit(&rt->workers[i].tid, memory_order_acquire);
        if (tid && starved(l, i, cpu) && weft__handover_move(&rt->workers[i], tid, cpu)) {
            atomic_fetch_add_explicit(&handovers, 1, memory_order_relaxed);
            return;
        }
    }
}

void weft__handover_undo(struct weft__worker *w)
{
    /* Only the worker leaves SET. The mask is copied here, not read by the
     * kernel from w, so that ThreadSanitizer sees the read it orders. */
    if (atomic_load_explicit(&w->handed, memory_order_acquire) != HANDED_SET)
        return;
    cpu_set_t was = w->handed_mask, now;
    int cpu = w->handed_cpu;
    /* Put back only the looker's narrowing: if the program changed the
     * affinity since, its choice stands. Before FREE: a looker may narrow
     * the worker again only once this is done, or it would save the old
     * narrowing as the mask to go back to. */
    if (sched_getaffinity(0, sizeof now, &now) == 0 && CPU_COUNT(&now) == 1 && CPU_ISSET(cpu, &now) &&
        sched_setaffinity(0, sizeof was, &was) != 0) {
        /* The old mask is no longer allowed (a cpuset shrank meanwhile):
         * widen to every CPU, which the kernel cuts down to the allowed
         * ones, rather than stay on one CPU for good. */
        CPU_ZERO(&was);
        for (int c = 0; c < CPU_SETSIZE; c++)
            CPU_SET(c, &was);
        sched_setaffinity(0, sizeof was, &was);
    }
    atomic_store_explicit(&w->handed, HANDED_FREE, memory_order_release);
}

bool weft__handover_own_mask(struct weft__worker *w, cpu_set_t *mask)
{
    /* Only the worker (the caller) leaves SET, so once FREE is seen on both
     * sides of the read, no narrowing happened in between (BUSY back to FREE
     * is a looker that gave up without narrowing). Acquire pairs with the
     * looker's releasing store of SET: handed_mask is written. */
    for (;;) {
        uint32_t h = atomic_load_explicit(&w->handed, memory_order_acquire);
        if (h == HANDED_SET) {
            *mask = w->handed_mask;
            return true;
        }
        if (h == HANDED_BUSY) { /* a looker between its claim and its SET */
            sched_yield();
            continue;
        }
        if (sched_getaffinity(0, sizeof *mask, mask) != 0)
            return false;
        if (atomic_load_explicit(&w->handed, memory_order_acquire) == HANDED_FREE)
            return true;
    }
}

uint64_t weft__handovers(void)
{
    return atomic_load_explicit(&handovers, memory_order_relaxed);
}
