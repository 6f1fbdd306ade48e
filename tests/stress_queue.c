/* tests/stress_queue.c: one owner and two thieves hammer the worker run queue.
 *
 * A plain program rather than a Criterion test so that it runs under
 * ThreadSanitizer (which cannot start Criterion).
 *   stress_queue [small | full | N]   N items per run (small: 2M, for the
 *                                     sanitizer builds; full and default: 10M)
 * Each of two runs, with queue capacities 256 and 16 (the small one overflows
 * constantly), moves that many items from the owner through the queues and a
 * mutex-protected global queue, the way a runtime's workers do, then checks
 * that every item was consumed exactly once with its payload intact. Prints
 * one line per run and exits 0 only if both pass. */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../runtime/queue.h"

#define WORKERS 3u   /* worker 0 owns the items; 1 and 2 start as thieves */
#define GLOBAL_BATCH 32u

struct item {
    uint32_t id, check;
    struct item *next;            /* link in the global queue, under lock */
};

struct worker {
    struct queue q;
    void **slots;
    pthread_t thread;
    unsigned idx;
    uint64_t steals, global_takes;   /* counters private to the worker */
    uint64_t overflows, lone_overflows;  /* lone: only the item, during a steal */
};

static struct {
    uint32_t items_n, cap;
    struct item *items;
    _Atomic uint8_t *seen;
    _Atomic uint32_t done, errors;
    pthread_mutex_t lock;         /* guards the global queue */
    struct item *ghead, **gtail;
    struct worker w[WORKERS];
} st;

static uint32_t checksum(uint32_t id) { return id * 2654435761u ^ 0x5bd1e995u; }

static void consume(void *p)
{
    struct item *it = p;
    if (it->check != checksum(it->id) || it->id >= st.items_n ||
        atomic_fetch_add_explicit(&st.seen[it->id], 1, memory_order_relaxed) != 0)
        atomic_fetch_add(&st.errors, 1);
    atomic_fetch_add_explicit(&st.done, 1, memory_order_relaxed);
}

static void global_push(void **items, uint32_t n)
{
    pthread_mutex_lock(&st.lock);
    for (uint32_t i = 0; i < n; i++) {
        struct item *it = items[i];
        it->next = NULL;
        *st.gtail = it;
        st.gtail = &it->next;
    }
    pthread_mutex_unlock(&st.lock);
}

/* Takes a batch off the global queue: returns the first item and pushes the
 * rest into the worker's own queue, where thieves can find them. */
static void *global_take(struct worker *w)
{
    void *batch[GLOBAL_BATCH];
    uint32_t n = 0, room = queue_free_slots(&w->q) + 1;

    pthread_mutex_lock(&st.lock);
    while (n < GLOBAL_BATCH && n < room && st.ghead != NULL) {
        batch[n++] = st.ghead;
        st.ghead = st.ghead->next;
    }
    if (st.ghead == NULL)
        st.gtail = &st.ghead;
    pthread_mutex_unlock(&st.lock);
    if (n == 0)
        return NULL;
    w->global_takes++;
    queue_push_batch(&w->q, batch + 1, n - 1);
    return batch[0];
}

static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* What every worker does once there is nothing left to produce: its own
 * queue first, then steals from the other workers, then the global queue,
 * until every item has been consumed. */
static void run_worker(struct worker *w, uint32_t seed)
{
    while (atomic_load_explicit(&st.done, memory_order_relaxed) < st.items_n) {
        void *it = queue_pop(&w->q);
        /* Every other worker is tried before the global queue, starting at
         * a random one, so that steals race the owner's pushes and pops. */
        unsigned start = next_rand(&seed);
        for (unsigned k = 0; it == NULL && k < WORKERS - 1; k++) {
            unsigned victim = (w->idx + 1 + (start + k) % (WORKERS - 1)) % WORKERS;
            it = queue_steal_into(&st.w[victim].q, &w->q);
            w->steals += it != NULL;
        }
        if (it == NULL)
            it = global_take(w);
        if (it != NULL)
            consume(it);
        else
            sched_yield();   /* 3 threads on 2 cores: let the owner run */
    }
}

static void *owner_main(void *arg)
{
    struct worker *w = arg;
    void **ovf = malloc((st.cap / 2 + 1) * sizeof *ovf);
    uint32_t seed = 0x9e3779b9u;

    if (ovf == NULL)
        abort();
    for (uint32_t i = 0; i < st.items_n; i++) {
        /* The payload is written here, not before the threads start, so that
         * only the queue's orderings make it visible to the consumer. */
        st.items[i] = (struct item){.id = i, .check = checksum(i)};
        uint32_t n = queue_push(&w->q, &st.items[i], ovf);
        if (n != 0) {
            w->overflows++;
            w->lone_overflows += n == 1;
            global_push(ovf, n);
        }
        /* Pop about one item for every two pushed, in bursts of up to three,
         * so the queue both fills (overflow) and drains (pops racing steals
         * for the last items). */
        uint32_t r = next_rand(&seed);
        for (uint32_t k = r % 3 == 0 ? r % 4 : 0; k > 0; k--) {
            void *it = queue_pop(&w->q);
            if (it != NULL)
                consume(it);
        }
    }
    free(ovf);
    run_worker(w, seed);
    return NULL;
}

static void *thief_main(void *arg)
{
    struct worker *w = arg;
    run_worker(w, 2654435761u * (w->idx + 1));
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One run at capacity `cap` over st.items. Returns 0 if every item arrived
 * exactly once. */
static int run(uint32_t items_n, uint32_t cap)
{
    int rc = 0;

    st.items_n = items_n;
    st.cap = cap;
    atomic_init(&st.done, 0);
    atomic_init(&st.errors, 0);
    st.seen = calloc(items_n, sizeof *st.seen);
    if (st.seen == NULL) {
        fprintf(stderr, "stress_queue: out of memory\n");
        return 1;
    }
    pthread_mutex_init(&st.lock, NULL);
    st.ghead = NULL;
    st.gtail = &st.ghead;
    for (unsigned i = 0; i < WORKERS; i++) {
        struct worker *w = &st.w[i];
        *w = (struct worker){.idx = i, .slots = malloc(cap * sizeof(void *))};
        if (w->slots == NULL || queue_init(&w->q, cap, w->slots) != 0) {
            fprintf(stderr, "stress_queue: queue_init failed\n");
            return 1;
        }
    }

    double t0 = now();
    for (unsigned i = 0; i < WORKERS; i++)
        if (pthread_create(&st.w[i].thread, NULL, i == 0 ? owner_main : thief_main, &st.w[i])) {
            fprintf(stderr, "stress_queue: pthread_create failed\n");
            exit(1);
        }
    for (unsigned i = 0; i < WORKERS; i++)
        pthread_join(st.w[i].thread, NULL);
    double secs = now() - t0;

    uint32_t missing = 0, dup = 0;
    for (uint32_t i = 0; i < items_n; i++) {
        uint8_t s = atomic_load_explicit(&st.seen[i], memory_order_relaxed);
        missing += s == 0;
        dup += s > 1;
    }
    uint32_t errors = atomic_load(&st.errors), done = atomic_load(&st.done);
    uint64_t steals = 0, takes = 0;
    for (unsigned i = 0; i < WORKERS; i++) {
        steals += st.w[i].steals;
        takes += st.w[i].global_takes;
        rc |= !queue_is_empty(&st.w[i].q);
    }
    rc |= errors != 0 || missing != 0 || dup != 0 || done != items_n || st.ghead != NULL;

    printf("stress_queue: %s cap=%" PRIu32 " items=%" PRIu32 " secs=%.2f steals=%" PRIu64
           " overflows=%" PRIu64 " lone=%" PRIu64 " global_takes=%" PRIu64
           " missing=%" PRIu32 " dup=%" PRIu32 " bad=%" PRIu32 "\n",
           rc ? "FAIL" : "ok", cap, items_n, secs, steals, st.w[0].overflows,
           st.w[0].lone_overflows, takes, missing, dup, errors);

    for (unsigned i = 0; i < WORKERS; i++)
        free(st.w[i].slots);
    pthread_mutex_destroy(&st.lock);
    free((void *)st.seen);
    return rc;
}

int main(int argc, char **argv)
{
    uint32_t items_n = 10u * 1000 * 1000;
    char *end = "";

    if (argc == 2 && strcmp(argv[1], "small") == 0)
        items_n = 2u * 1000 * 1000;
    else if (argc == 2 && strcmp(argv[1], "full") != 0)
        items_n = (uint32_t)strtoul(argv[1], &end, 10);
    if (argc > 2 || items_n == 0 || *end != '\0') {
        fprintf(stderr, "usage: stress_queue [small | full | items-per-run]\n");
        return 2;
    }
    st.items = malloc((size_t)items_n * sizeof *st.items);
    if (st.items == NULL) {
        fprintf(stderr, "stress_queue: out of memory\n");
        return 1;
    }
    int rc = run(items_n, 256);
    rc |= run(items_n, 16);
    free(st.items);
    if (rc)
        fprintf(stderr, "stress_queue: FAILED\n");
    return rc ? 1 : 0;
}
