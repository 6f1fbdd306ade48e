/* runtime/queue.h: a worker's run queue, a bounded ring with one owner and any
 * number of thieves, after Tokio's local queue. Internal; never installed.
 *
 * Layout. Positions are u32 counters that wrap; position p lives in
 * buf[p & mask]. `tail` is one past the last item the owner has published.
 * `head` packs two positions, (steal << 32) | real: `real` is the oldest item
 * nobody has claimed yet, and `steal` is the oldest slot somebody may still be
 * reading. They differ only while one thief copies [steal, real) out. With
 * wrapping arithmetic, steal <= real <= tail and tail - steal <= capacity.
 *
 * Who calls what.
 *  1. queue_init runs before the queue is shared with any other thread.
 *  2. The owner, the one worker the queue belongs to, alone calls queue_push,
 *     queue_push_batch, queue_pop and queue_free_slots, and is the only thread
 *     that passes this queue as `dst` to queue_steal_into.
 *  3. Any thread may pass any other queue as `src` to queue_steal_into, and
 *     call queue_len and queue_is_empty, whose answers may be stale.
 *  4. The queue never allocates: the caller provides and frees `storage`.
 *
 * Orderings, and what each pairs with.
 *  - The owner writes a slot with a plain store, then publishes it with a
 *    release store of tail. A thief's acquire load of tail, before it reads
 *    slots, pairs with it, so the thief sees the item the owner wrote.
 *  - Every write to head is a CAS, acq_rel on success and acquire on failure
 *    (a failed CAS hands back a fresh head that the caller then uses like an
 *    acquire load). Being read-modify-writes, they continue one another's
 *    release sequences, so an acquire load of head synchronizes with every
 *    release CAS before the value it reads, not only the last one.
 *  - A thief ends its copy with a release CAS that sets steal = real. The
 *    owner's acquire load of head, before it writes a slot (push, push_batch,
 *    and as the `dst` of a steal), pairs with it, so a slot is overwritten only
 *    after the thief's read of it: this is what keeps the plain slots race-free.
 *  - Whoever moves real (a pop, an overflow, a thief's claim) had already seen a
 *    tail at least as large. Its release CAS pairs with the acquire load of head
 *    in steal and queue_len, so the tail they read next is also at least real
 *    and tail - real cannot wrap around to a huge count.
 *  - The owner reads tail relaxed: it is the only writer, so it sees its own
 *    last store.
 *  tests/relacy_queue.cpp models this algorithm with these orderings; each of
 *  the orderings above, weakened to relaxed there, makes the model fail.
 *
 * Why every item is taken exactly once. Position p is taken by whoever moves
 * real past p with a successful CAS on the whole of head: a pop (one item), an
 * overflow (capacity/2), or a thief's claim (half of what it saw). Two
 * claimants that read the same head cannot both succeed; the loser reloads.
 * The failure windows:
 *  1. A thief reads head and tail, then the owner pops or another thief
 *     claims: the thief's CAS fails on the new real and it recomputes.
 *  2. A thief has claimed [steal, real) and is copying. Other thieves see
 *     steal != real and give up (one copy at a time per queue). The owner may
 *     still pop past real, moving real only. Push counts the queue full up to
 *     steal, not real, so it never overwrites a slot being copied; and if the
 *     queue is full it overflows only the new item, since the oldest half is
 *     partly being copied.
 *  3. An overflow moves steal and real together by capacity/2 in one CAS that
 *     expects steal == real, so it cannot overlap a copy. If a thief claimed in
 *     between, the CAS fails and push starts over (the queue may have room now).
 *  4. The thief's final CAS sets steal to whatever real it finds, because the
 *     owner may have popped meanwhile. Only that thief moves steal while it
 *     differs from real, so the loop ends.
 *  5. Stolen items land in dst past dst's tail and become visible with one
 *     release store of tail after the copy. The last one is handed to the
 *     caller and never published, so no one else can take it.
 *  6. A CAS could be fooled (ABA) only if head went through all 2^32 values
 *     between a thief's load and its CAS; that is not a practical window.
 */
#ifndef WEFT_RUNTIME_QUEUE_H
#define WEFT_RUNTIME_QUEUE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define QUEUE_CACHE_LINE 64

/* head and tail sit at least a cache line apart, so the owner's tail stores do
 * not keep invalidating the line that thieves CAS. Padding is used rather than
 * _Alignas so that a worker struct embedding the queue needs only malloc's
 * alignment (the runtime's allocator hook promises no more). mask and buf are
 * read with tail by thieves, so they share its line. */
struct queue {
    _Atomic uint64_t head;   /* (steal << 32) | real; only ever written by CAS */
    char head_pad[QUEUE_CACHE_LINE - sizeof(uint64_t)];
    _Atomic uint32_t tail;   /* written by the owner only */
    uint32_t mask;           /* capacity - 1 */
    void **buf;              /* capacity slots, provided by the caller */
};

/* Makes `q` an empty queue over `storage`, an array of `capacity` pointers
 * that the caller keeps alive. Returns 0, or -EINVAL if capacity is not a
 * power of two >= 4 or storage is NULL. */
int queue_init(struct queue *q, uint32_t capacity, void **storage);

/* Owner. Appends `item` (non-NULL) and returns 0. If the queue is full, takes
 * its oldest capacity/2 items instead and writes them, then `item`, to
 * overflow[0..n) and returns n = capacity/2 + 1; while a thief is copying, it
 * writes only `item` and returns 1. `overflow` has room for capacity/2 + 1. */
uint32_t queue_push(struct queue *q, void *item, void **overflow);

/* Owner. Appends items[0..n), which must fit (n <= queue_free_slots(q)). */
void queue_push_batch(struct queue *q, void *const *items, uint32_t n);

/* Owner. Removes and returns the oldest item, or NULL if the queue is empty. */
void *queue_pop(struct queue *q);

/* Owner. How many items fit before a push overflows; it can only grow
 * behind the owner's back, as thieves finish their copies. */
uint32_t queue_free_slots(const struct queue *q);

/* Called by dst's owner, src != dst. Moves about half of src's items (the
 * oldest, rounded up) into dst and returns the last of them, which is not put
 * in dst. Returns NULL, moving nothing, if src is empty, another thief is
 * copying from src, or dst is more than half full. */
void *queue_steal_into(struct queue *src, struct queue *dst);

/* Any thread. Number of unclaimed items; a snapshot, possibly stale. */
uint32_t queue_len(const struct queue *q);

/* Any thread. Whether queue_len is 0 at the moment it looks. */
static inline bool queue_is_empty(const struct queue *q)
{
    return queue_len(q) == 0;
}

#endif
