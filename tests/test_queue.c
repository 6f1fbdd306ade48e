/* tests/test_queue.c: the worker run queue (runtime/queue.c). */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

#include "../runtime/queue.h"

/* Single-threaded tests use small integers as items; they are never
 * dereferenced. */
#define IT(i) ((void *)(uintptr_t)(i))
#define ID(p) ((uintptr_t)(p))

/* Moves the (u32, wrapping) positions of an empty queue to `pos`, as if
 * 2^32-ish items had passed through it. Packing (pos, pos) does not depend on
 * which half of head holds steal. */
static void set_position(struct queue *q, uint32_t pos)
{
    atomic_store(&q->head, (uint64_t)pos << 32 | pos);
    atomic_store(&q->tail, pos);
}

static void expect_pops(struct queue *q, uintptr_t from, uintptr_t to)
{
    for (uintptr_t i = from; i < to; i++)
        cr_assert_eq(ID(queue_pop(q)), i);
}

Test(queue, init_rejects_bad_capacity, .timeout = 30)
{
    struct queue q;
    void *slots[8];
    const uint32_t bad[] = {0, 1, 2, 3, 5, 6, 12, 100, UINT32_MAX};

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(queue_init(&q, bad[i], slots), -EINVAL, "capacity %u", bad[i]);
    cr_assert_eq(queue_init(&q, 8, NULL), -EINVAL);
    cr_assert_eq(queue_init(&q, 4, slots), 0);
    cr_assert_eq(queue_init(&q, 8, slots), 0);
}

Test(queue, empty, .timeout = 30)
{
    struct queue q;
    void *slots[8];

    cr_assert_eq(queue_init(&q, 8, slots), 0);
    cr_assert_null(queue_pop(&q));
    cr_assert(queue_is_empty(&q));
    cr_assert_eq(queue_len(&q), 0);
    cr_assert_eq(queue_free_slots(&q), 8);
}

Test(queue, fifo, .timeout = 30)
{
    struct queue q;
    void *slots[8], *ovf[5];

    cr_assert_eq(queue_init(&q, 8, slots), 0);
    /* Several rounds, so the positions wrap around the ring. */
    for (uintptr_t round = 0; round < 5; round++) {
        for (uintptr_t i = 1; i <= 8; i++)
            cr_assert_eq(queue_push(&q, IT(round * 100 + i), ovf), 0);
        cr_assert_eq(queue_len(&q), 8);
        cr_assert_eq(queue_free_slots(&q), 0);
        expect_pops(&q, round * 100 + 1, round * 100 + 9);
        cr_assert_null(queue_pop(&q));
    }
}

Test(queue, overflow_moves_oldest_half_then_item, .timeout = 30)
{
    struct queue q;
    void *slots[8], *ovf[5];

    cr_assert_eq(queue_init(&q, 8, slots), 0);
    for (uintptr_t i = 1; i <= 8; i++)
        cr_assert_eq(queue_push(&q, IT(i), ovf), 0);
    cr_assert_eq(queue_push(&q, IT(9), ovf), 5);
    for (uintptr_t i = 0; i < 4; i++)
        cr_assert_eq(ID(ovf[i]), i + 1);
    cr_assert_eq(ID(ovf[4]), 9);
    cr_assert_eq(queue_len(&q), 4);
    cr_assert_eq(queue_push(&q, IT(10), ovf), 0);
    expect_pops(&q, 5, 9);
    cr_assert_eq(ID(queue_pop(&q)), 10);
    cr_assert_null(queue_pop(&q));
}

Test(queue, overflow_during_steal_moves_only_item, .timeout = 30)
{
    struct queue q;
    void *slots[8], *ovf[5];

    cr_assert_eq(queue_init(&q, 8, slots), 0);
    for (uintptr_t i = 1; i <= 8; i++)
        cr_assert_eq(queue_push(&q, IT(i), ovf), 0);
    /* Pretend a thief has claimed the two oldest items and is copying them:
     * head = (steal << 32) | real, as documented in queue.h. */
    atomic_store(&q.head, (uint64_t)0 << 32 | 2);
    cr_assert_eq(queue_push(&q, IT(9), ovf), 1);
    cr_assert_eq(ID(ovf[0]), 9);
    /* The owner still pops past the claim, and the copy is not overwritten. */
    cr_assert_eq(ID(queue_pop(&q)), 3);
    cr_assert_eq(queue_push(&q, IT(10), ovf), 1);
    cr_assert_eq(atomic_load(&q.head), (uint64_t)0 << 32 | 3);
}

Test(queue, push_batch, .timeout = 30)
{
    struct queue q;
    void *slots[8], *ovf[5], *batch[8];

    cr_assert_eq(queue_init(&q, 8, slots), 0);
    for (uintptr_t i = 1; i <= 3; i++)
        cr_assert_eq(queue_push(&q, IT(i), ovf), 0);
    cr_assert_eq(ID(queue_pop(&q)), 1);
    cr_assert_eq(queue_free_slots(&q), 6);
    for (uintptr_t i = 0; i < 6; i++)
        batch[i] = IT(4 + i);
    queue_push_batch(&q, batch, 6);
    cr_assert_eq(queue_free_slots(&q), 0);
    queue_push_batch(&q, batch, 0);
    expect_pops(&q, 2, 10);
    cr_assert_null(queue_pop(&q));
}

/* Steals from a queue holding 1..k and checks what moved where. */
static void check_steal(uint32_t k, uint32_t start)
{
    struct queue src, dst;
    void *ss[8], *ds[8], *ovf[5];

    cr_assert_eq(queue_init(&src, 8, ss), 0);
    cr_assert_eq(queue_init(&dst, 8, ds), 0);
    set_position(&src, start);
    set_position(&dst, start + 3);
    for (uintptr_t i = 1; i <= k; i++)
        cr_assert_eq(queue_push(&src, IT(i), ovf), 0);

    uint32_t n = k - k / 2;
    void *got = queue_steal_into(&src, &dst);
    if (k == 0) {
        cr_assert_null(got);
        return;
    }
    cr_assert_eq(ID(got), n, "k=%u", k);
    cr_assert_eq(queue_len(&dst), n - 1, "k=%u", k);
    cr_assert_eq(queue_len(&src), k - n, "k=%u", k);
    expect_pops(&dst, 1, n);
    expect_pops(&src, n + 1, k + 1);
    cr_assert_null(queue_pop(&dst));
    cr_assert_null(queue_pop(&src));
    cr_assert_eq(queue_free_slots(&src), 8);
}

Test(queue, steal_half, .timeout = 30)
{
    for (uint32_t k = 0; k <= 8; k++)
        check_steal(k, 0);
}

Test(queue, steal_across_u32_wrap, .timeout = 30)
{
    for (uint32_t k = 0; k <= 8; k++)
        for (uint32_t back = 1; back <= 9; back++)
            check_steal(k, UINT32_MAX - back + 1);
}

Test(queue, fifo_and_overflow_across_u32_wrap, .timeout = 30)
{
    struct queue q;
    void *slots[8], *ovf[5];

    cr_assert_eq(queue_init(&q, 8, slots), 0);
    set_position(&q, UINT32_MAX - 2);
    for (uintptr_t i = 1; i <= 8; i++)
        cr_assert_eq(queue_push(&q, IT(i), ovf), 0);
    cr_assert_eq(queue_len(&q), 8);
    cr_assert_eq(queue_free_slots(&q), 0);
    cr_assert_eq(queue_push(&q, IT(9), ovf), 5);
    cr_assert_eq(ID(ovf[0]), 1);
    cr_assert_eq(ID(ovf[3]), 4);
    cr_assert_eq(ID(ovf[4]), 9);
    expect_pops(&q, 5, 9);
    cr_assert_null(queue_pop(&q));
    cr_assert_eq(atomic_load(&q.tail), 5);
}

Test(queue, steal_refuses_when_dst_more_than_half_full, .timeout = 30)
{
    struct queue src, dst;
    void *ss[8], *ds[8], *ovf[5];

    cr_assert_eq(queue_init(&src, 8, ss), 0);
    cr_assert_eq(queue_init(&dst, 8, ds), 0);
    for (uintptr_t i = 1; i <= 8; i++)
        cr_assert_eq(queue_push(&src, IT(i), ovf), 0);
    for (uintptr_t i = 101; i <= 105; i++)
        cr_assert_eq(queue_push(&dst, IT(i), ovf), 0);
    cr_assert_null(queue_steal_into(&src, &dst));
    cr_assert_eq(queue_len(&src), 8);
    cr_assert_eq(queue_len(&dst), 5);

    /* Exactly half full is allowed: four stolen, three published. */
    cr_assert_eq(ID(queue_pop(&dst)), 101);
    cr_assert_eq(ID(queue_steal_into(&src, &dst)), 4);
    cr_assert_eq(queue_len(&dst), 7);
    expect_pops(&dst, 102, 106);
    expect_pops(&dst, 1, 4);
}

Test(queue, steal_from_larger_queue_fits_dst, .timeout = 30)
{
    struct queue src, dst;
    void *ss[64], *ds[8], *ovf[33];

    cr_assert_eq(queue_init(&src, 64, ss), 0);
    cr_assert_eq(queue_init(&dst, 8, ds), 0);
    for (uintptr_t i = 1; i <= 64; i++)
        cr_assert_eq(queue_push(&src, IT(i), ovf), 0);
    cr_assert_eq(ID(queue_steal_into(&src, &dst)), 8);
    cr_assert_eq(queue_len(&dst), 7);
    cr_assert_eq(queue_len(&src), 56);
    expect_pops(&dst, 1, 8);
    expect_pops(&src, 9, 65);
}

/* ---- one owner, three thieves -------------------------------------------- */

#define MT_ITEMS (2u * 1000 * 1000)
#define MT_CAP 64u
#define MT_WORKERS 4u

struct item {
    uint32_t id, check;
    struct item *next;        /* link in the global queue, under mt.lock */
};

struct worker {
    struct queue q;
    void *slots[MT_CAP];
    pthread_t thread;
    unsigned idx;
};

static struct {
    struct item *items;
    _Atomic uint8_t *seen;
    _Atomic uint32_t done, errors;
    pthread_mutex_t lock;      /* guards the global queue */
    struct item *ghead, **gtail;
    struct worker w[MT_WORKERS];
} mt;

static uint32_t checksum(uint32_t id) { return id * 2654435761u ^ 0x5bd1e995u; }

static void consume(void *p)
{
    struct item *it = p;
    if (it->check != checksum(it->id) || it->id >= MT_ITEMS ||
        atomic_fetch_add(&mt.seen[it->id], 1) != 0)
        atomic_fetch_add(&mt.errors, 1);
    atomic_fetch_add(&mt.done, 1);
}

static void global_push(void **items, uint32_t n)
{
    pthread_mutex_lock(&mt.lock);
    for (uint32_t i = 0; i < n; i++) {
        struct item *it = items[i];
        it->next = NULL;
        *mt.gtail = it;
        mt.gtail = &it->next;
    }
    pthread_mutex_unlock(&mt.lock);
}

/* Takes up to 16 items off the global queue: returns the first, pushes the
 * rest into the worker's own queue, as a runtime worker would. */
static void *global_take(struct worker *w)
{
    void *batch[16];
    uint32_t n = 0, room = queue_free_slots(&w->q) + 1;

    pthread_mutex_lock(&mt.lock);
    while (n < 16 && n < room && mt.ghead != NULL) {
        batch[n++] = mt.ghead;
        mt.ghead = mt.ghead->next;
    }
    if (mt.ghead == NULL)
        mt.gtail = &mt.ghead;
    pthread_mutex_unlock(&mt.lock);
    if (n == 0)
        return NULL;
    queue_push_batch(&w->q, batch + 1, n - 1);
    return batch[0];
}

static void run_worker(struct worker *w, uint32_t seed)
{
    while (atomic_load(&mt.done) < MT_ITEMS) {
        void *it = queue_pop(&w->q);
        /* Every other worker is tried before the global queue, starting at
         * a random one, so that steals race the owner's pushes and pops. */
        seed = seed * 1103515245u + 12345u;
        for (unsigned k = 0; it == NULL && k < MT_WORKERS - 1; k++) {
            unsigned victim = (w->idx + 1 + ((seed >> 16) + k) % (MT_WORKERS - 1)) % MT_WORKERS;
            it = queue_steal_into(&mt.w[victim].q, &w->q);
        }
        if (it == NULL)
            it = global_take(w);
        if (it != NULL)
            consume(it);
        else
            sched_yield();
    }
}

static void *owner_main(void *arg)
{
    struct worker *w = arg;
    void *ovf[MT_CAP / 2 + 1];

    for (uint32_t i = 0; i < MT_ITEMS; i++) {
        /* Written here rather than before the threads start, so that only
         * the queue's orderings make the payload visible to the consumer. */
        mt.items[i] = (struct item){.id = i, .check = checksum(i)};
        uint32_t n = queue_push(&w->q, &mt.items[i], ovf);
        if (n != 0)
            global_push(ovf, n);
        if (i % 3 == 0) {
            void *it = queue_pop(&w->q);
            if (it != NULL)
                consume(it);
        }
    }
    run_worker(w, 1);
    return NULL;
}

static void *thief_main(void *arg)
{
    struct worker *w = arg;
    run_worker(w, w->idx * 7919u);
    return NULL;
}

Test(queue, one_owner_three_thieves, .timeout = 30)
{
    mt.items = calloc(MT_ITEMS, sizeof *mt.items);
    mt.seen = calloc(MT_ITEMS, sizeof *mt.seen);
    cr_assert(mt.items != NULL && mt.seen != NULL);
    pthread_mutex_init(&mt.lock, NULL);
    mt.gtail = &mt.ghead;

    for (unsigned i = 0; i < MT_WORKERS; i++) {
        mt.w[i].idx = i;
        cr_assert_eq(queue_init(&mt.w[i].q, MT_CAP, mt.w[i].slots), 0);
    }
    for (unsigned i = 0; i < MT_WORKERS; i++)
        cr_assert_eq(pthread_create(&mt.w[i].thread, NULL, i == 0 ? owner_main : thief_main,
                                    &mt.w[i]), 0);
    for (unsigned i = 0; i < MT_WORKERS; i++)
        pthread_join(mt.w[i].thread, NULL);

    cr_assert_eq(atomic_load(&mt.errors), 0);
    cr_assert_eq(atomic_load(&mt.done), MT_ITEMS);
    for (uint32_t i = 0; i < MT_ITEMS; i++)
        cr_assert_eq(atomic_load(&mt.seen[i]), 1, "item %u", i);
    for (unsigned i = 0; i < MT_WORKERS; i++)
        cr_assert(queue_is_empty(&mt.w[i].q));
    cr_assert_null(mt.ghead);
    pthread_mutex_destroy(&mt.lock);
    free(mt.items);
    free((void *)mt.seen);
}
