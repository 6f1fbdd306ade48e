/* runtime/queue.c: the worker run queue; the contract is in queue.h. */
#include "queue.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>

_Static_assert(offsetof(struct queue, tail) - offsetof(struct queue, head) >= QUEUE_CACHE_LINE,
               "head and tail must not share a cache line");

static inline uint32_t steal_of(uint64_t head) { return (uint32_t)(head >> 32); }
static inline uint32_t real_of(uint64_t head) { return (uint32_t)head; }
static inline uint64_t pack(uint32_t steal, uint32_t real) { return (uint64_t)steal << 32 | real; }

static inline uint32_t capacity(const struct queue *q) { return q->mask + 1; }

int queue_init(struct queue *q, uint32_t cap, void **storage)
{
    if (cap < 4 || (cap & (cap - 1)) != 0 || storage == NULL)
        return -EINVAL;
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    q->mask = cap - 1;
    q->buf = storage;
    return 0;
}

/* Takes the oldest half of a full queue and writes it, then `item`, to
 * overflow. `real` is the head position push saw with steal == real. Returns
 * 0 if a thief changed head in the meantime. */
static uint32_t push_overflow(struct queue *q, void *item, uint32_t real, void **overflow)
{
    uint32_t half = capacity(q) / 2;
    uint64_t seen = pack(real, real);

    /* Release pairs with the acquire loads of head in steal_half and
     * queue_len: they must then read a tail >= the new real. Nothing needs the
     * acquire half, since the owner wrote these slots itself; it is there
     * because every head CAS is acq_rel. */
    if (!atomic_compare_exchange_strong_explicit(&q->head, &seen, pack(real + half, real + half),
                                                 memory_order_acq_rel, memory_order_acquire))
        return 0;
    for (uint32_t i = 0; i < half; i++)
        overflow[i] = q->buf[(real + i) & q->mask];
    overflow[half] = item;
    return half + 1;
}

uint32_t queue_push(struct queue *q, void *item, void **overflow)
{
    assert(item != NULL);
    /* Relaxed: only the owner writes tail. */
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);

    for (;;) {
        /* Acquire pairs with a thief's final release CAS (steal = real): the
         * thief's reads of the slots below steal happen before we overwrite
         * one of them below. */
        uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
        uint32_t steal = steal_of(head), real = real_of(head);

        if (tail - steal < capacity(q))
            break;
        if (steal != real) {
            /* A thief is copying part of the oldest half; its copy will
             * make room, so only the new item goes to the global queue. */
            overflow[0] = item;
            return 1;
        }
        uint32_t n = push_overflow(q, item, real, overflow);
        if (n != 0)
            return n;
    }
    q->buf[tail & q->mask] = item;
    /* Release pairs with the thieves' acquire load of tail in steal_half:
     * whoever sees the new tail sees the slot written above. */
    atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
    return 0;
}

void queue_push_batch(struct queue *q, void *const *items, uint32_t n)
{
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed); /* owner only */
    /* Acquire, as in queue_push: pairs with the thieves' final CAS, so their
     * reads of the slots we reuse are over. */
    uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);

    assert(n <= capacity(q) - (tail - steal_of(head)));
    (void)head; /* the load is for its ordering; only the assert reads the value */
    for (uint32_t i = 0; i < n; i++)
        q->buf[(tail + i) & q->mask] = items[i];
    /* Release pairs with the thieves' acquire load of tail, as in push. */
    atomic_store_explicit(&q->tail, tail + n, memory_order_release);
}

void *queue_pop(struct queue *q)
{
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed); /* owner only */
    /* Acquire, like every read of head, though pop does not depend on it: the
     * slot it reads was written by the owner itself, and no thief can claim it
     * once our CAS succeeds. */
    uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);

    for (;;) {
        uint32_t steal = steal_of(head), real = real_of(head);
        if (real == tail)
            return NULL;
        /* With no thief copying, steal follows real; otherwise the thief's
         * final CAS brings steal up to the real we leave here. */
        uint64_t next = steal == real ? pack(real + 1, real + 1) : pack(steal, real + 1);
        /* Release pairs with the acquire loads of head in steal_half and
         * queue_len: they must then read a tail >= the new real. The acquire
         * halves are not needed, for the same reason as above. */
        if (atomic_compare_exchange_weak_explicit(&q->head, &head, next,
                                                  memory_order_acq_rel, memory_order_acquire))
            return q->buf[real & q->mask];
    }
}

uint32_t queue_free_slots(const struct queue *q)
{
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed); /* owner only */
    /* Acquire, like every read of head; push_batch, which fills the slots,
     * loads head again itself. */
    uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    return capacity(q) - (tail - steal_of(head));
}

/* Claims about half of src's items, at most `room`, and copies them into
 * dst's slots from dst_tail on without publishing them. Returns how many; 0
 * if src is empty or another thief is copying from it. */
static uint32_t steal_half(struct queue *src, struct queue *dst, uint32_t dst_tail, uint32_t room)
{
    /* Acquire pairs with the release CAS of whoever last moved real: the tail
     * they had seen is visible to us, so the tail read below is >= real. */
    uint64_t head = atomic_load_explicit(&src->head, memory_order_acquire);
    uint32_t first, n;

    for (;;) {
        uint32_t steal = steal_of(head), real = real_of(head);
        if (steal != real)
            return 0;
        /* Acquire pairs with the owner's release store of tail: the slots
         * below it hold the items the owner wrote. */
        uint32_t tail = atomic_load_explicit(&src->tail, memory_order_acquire);
        n = tail - real;
        n -= n / 2;
        if (n > room)
            n = room;
        if (n == 0)
            return 0;
        /* Claim by moving real alone. steal stays behind, so the owner will
         * not overwrite the slots we copy and other thieves stay out until our
         * final CAS. A failure reloads head with acquire, because the retry
         * uses it like the load above. Of the success order only the release
         * half is used, by queue_len (other thieves back off on seeing
         * steal != real): it keeps the tail it reads >= real. */
        if (atomic_compare_exchange_weak_explicit(&src->head, &head, pack(steal, real + n),
                                                  memory_order_acq_rel, memory_order_acquire)) {
            first = real;
            break;
        }
    }
    /* The CAS saw head unchanged since our load, and tail - steal never
     * exceeds the capacity, so this is at most half of it. */
    assert(n <= capacity(src) / 2);

    for (uint32_t i = 0; i < n; i++)
        dst->buf[(dst_tail + i) & dst->mask] = src->buf[(first + i) & src->mask];

    /* Bring steal up to real, which the owner may have moved meanwhile by
     * popping. Release pairs with the acquire load of head that comes before
     * every slot write of src's owner (push, push_batch, steal_into's dst):
     * our reads above happen before its overwrites. Nothing needs the acquire
     * half; it is there because every head CAS is acq_rel. */
    uint64_t cur = pack(first, first + n);
    while (!atomic_compare_exchange_weak_explicit(&src->head, &cur,
                                                  pack(real_of(cur), real_of(cur)),
                                                  memory_order_acq_rel, memory_order_acquire))
        assert(steal_of(cur) == first);
    return n;
}

void *queue_steal_into(struct queue *src, struct queue *dst)
{
    assert(src != dst);
    uint32_t dst_tail = atomic_load_explicit(&dst->tail, memory_order_relaxed); /* we own dst */
    /* Acquire pairs with the final CAS of thieves copying out of dst: their
     * reads of the slots we are about to fill are over. */
    uint32_t dst_used = dst_tail - steal_of(atomic_load_explicit(&dst->head, memory_order_acquire));

    if (dst_used > capacity(dst) / 2)
        return NULL;
    /* `room` matters only when src is larger than dst: half of src need not
     * fit in the half of dst that is free. */
    uint32_t n = steal_half(src, dst, dst_tail, capacity(dst) - dst_used);
    if (n == 0)
        return NULL;

    /* The last item goes to the caller; it is never published in dst. */
    void *ret = dst->buf[(dst_tail + n - 1) & dst->mask];
    if (n > 1)
        /* Release pairs with the acquire load of dst's tail by thieves of dst. */
        atomic_store_explicit(&dst->tail, dst_tail + n - 1, memory_order_release);
    return ret;
}

uint32_t queue_len(const struct queue *q)
{
    /* Acquire, as in steal_half: the tail read after it is >= real. */
    uint64_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    /* Relaxed: no slot is read, and coherence already keeps it >= real. */
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t len = tail - real_of(head);

    /* The owner may pop and push again between our two loads; a count above
     * the capacity is then clamped rather than reported. */
    return len < capacity(q) ? len : capacity(q);
}
