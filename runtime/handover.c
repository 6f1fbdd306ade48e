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
 * end of its next park (weft__handover_undo), and a worker whose own
 * affinity excludes the looker's CPU is left where it is. A look costs one
 * /proc read per worker and a CPU-clock read per runnable one (about 2 and
 * 1 us here); the looker opens the workers' /proc files before its job is
 * lowered, and its pool thread holds them until it exits (so a program that
 * never uses the compute lane has no extra descriptor open).
 *
 * Measured on the stall demo (light p99, 5 s runs, slices of 250 us, on
 * against off in the same session): 0.29-0.48 ms against 0.31-0.69 ms, better
 * or level in 11 runs of 11, with 5-18 hand-overs per run.
 *
 * `handed`, per worker: HANDED_FREE, HANDED_BUSY (a looker is narrowing it;
 * `handed_mask` is the looker's), HANDED_SET (narrowed; `handed_mask` is the
 * worker's to restore). A looker claims the worker with an acquiring CAS from
 * FREE (pairs with the worker's releasing store of FREE: the worker has read
 * the old mask before a looker writes a new one), writes the mask, narrows,
 * then stores SET with release (pairs with the worker's acquiring load of
 * SET: the worker reads the mask the looker wrote). Only the worker leaves
 * SET, so two lookers never narrow one worker at once. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

enum { HANDED_FREE, HANDED_BUSY, HANDED_SET };

struct weft__seen {
    int fd;            /* the worker's /proc stat, or -1 */
    pid_t tid;
    uint64_t cpu_ns;   /* the worker's CPU time at the last look */
    bool waiting;      /* it was runnable at the last look */
};

static _Atomic uint64_t handovers;
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "a look runs in a signal handler");

bool weft__looker_init(struct weft__looker *l, struct weft_runtime *rt)
{
    if (!l->seen) {
        l->seen = calloc(rt->nworkers, sizeof *l->seen);
        if (!l->seen)
            return false;
        for (uint32_t i = 0; i < rt->nworkers; i++)
            l->seen[i].fd = -1;
        l->rt = rt;
    }
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        struct weft__seen *s = &l->seen[i];
        /* Acquire pairs with the worker's release: cpu_clock is set. */
        pid_t tid = atomic_load_explicit(&rt->workers[i].tid, memory_order_acquire);
        if (s->fd >= 0 || tid == 0)
            continue;
        char path[48];
        snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
        s->fd = open(path, O_RDONLY | O_CLOEXEC);
        s->tid = tid;
    }
    return true;
}

void weft__looker_fini(struct weft__looker *l)
{
    for (uint32_t i = 0; l->seen && i < l->rt->nworkers; i++)
        if (l->seen[i].fd >= 0)
            close(l->seen[i].fd);
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

/* Narrows w to `cpu`, if no looker holds it already. */
static bool move_worker(struct weft__worker *w, pid_t tid, int cpu)
{
    uint32_t free_ = HANDED_FREE;
    if (!atomic_compare_exchange_strong_explicit(&w->handed, &free_, HANDED_BUSY,
                                                 memory_order_acquire, memory_order_relaxed))
        return false;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (sched_getaffinity(tid, sizeof w->handed_mask, &w->handed_mask) != 0 ||
        !CPU_ISSET(cpu, &w->handed_mask) ||
        sched_setaffinity(tid, sizeof one, &one) != 0) {
        atomic_store_explicit(&w->handed, HANDED_FREE, memory_order_release);
        return false;
    }
    atomic_store_explicit(&w->handed, HANDED_SET, memory_order_release);
    return true;
}

uint32_t weft__looker_look(struct weft__looker *l, int cpu)
{
    struct weft_runtime *rt = l->rt;
    uint32_t moved = 0;
    /* After destroy the workers are gone (their tids may be reused): stop. */
    if (cpu < 0 || atomic_load_explicit(&rt->shutdown, memory_order_acquire))
        return 0;
    for (uint32_t i = 0; i < rt->nworkers; i++) {
        struct weft__worker *w = &rt->workers[i];
        struct weft__seen *s = &l->seen[i];
        char b[1024], state;
        int on;
        ssize_t n = s->fd >= 0 ? pread(s->fd, b, sizeof b, 0) : -1;
        if (n <= 0 || !parse_stat(b, (size_t)n, &state, &on) || state != 'R' || on == cpu) {
            s->waiting = false;
            continue;
        }
        struct timespec ts;
        if (clock_gettime(w->cpu_clock, &ts) != 0) {
            s->waiting = false;
            continue;
        }
        uint64_t ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        bool starved = s->waiting && ns == s->cpu_ns;
        if (starved && move_worker(w, s->tid, cpu)) {
            moved++;
            s->waiting = false;
        } else {
            s->waiting = true;
        }
        s->cpu_ns = ns;
    }
    if (moved)
        atomic_fetch_add_explicit(&handovers, moved, memory_order_relaxed);
    return moved;
}

void weft__handover_undo(struct weft__worker *w)
{
    /* Only the worker leaves SET: it reads the mask, then frees it. */
    if (atomic_load_explicit(&w->handed, memory_order_acquire) != HANDED_SET)
        return;
    sched_setaffinity(0, sizeof w->handed_mask, &w->handed_mask);
    atomic_store_explicit(&w->handed, HANDED_FREE, memory_order_release);
}

uint64_t weft__handovers(void)
{
    return atomic_load_explicit(&handovers, memory_order_relaxed);
}
