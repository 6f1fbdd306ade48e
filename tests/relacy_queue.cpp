// tests/relacy_queue.cpp: a Relacy model of the worker run queue (runtime/queue.c).
//
// The functions below transcribe queue.c function for function, with the
// same memory orderings, onto Relacy's atomics; the slots and the items'
// payload are rl::var, so Relacy reports any read or write of them that is not
// ordered by happens-before as a data race. One owner pushes ITEMS items into a
// queue of capacity 4 (so it overflows), popping now and then; one or two
// thieves steal into queues of their own, from the owner and from each other,
// and pop from them. At the end every item must have been taken exactly once
// with its payload intact. Random scheduler; usage: relacy_queue [ITERATIONS].
//
// Relacy lets a load return only one of the last three values of an atomic,
// so the scripts in thread() are shaped to make the stale values that matter
// reachable; each shape is explained where it is made.
//
// Building with -DMUTANT=n weakens one ordering to relaxed (or, for 9 and 10,
// breaks one rule) so the model can be seen to catch it; the run must fail.
//   1 push, push_batch: tail store 2 push, push_batch: head load
//   3 steal: final CAS             4 steal: src tail load
//   5 steal_into: dst tail store   6 steal_into: dst head load
//   7 pop: CAS                     8 push: overflow CAS
//  11 steal: src head load        12 steal: claim CAS
//   9 push counts fullness from real instead of steal
//  10 steal does not back off while another thief copies
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <relacy/relacy.hpp>

#ifndef MUTANT
#define MUTANT 0
#endif
#define MO(id, order) (MUTANT == (id) ? rl::mo_relaxed : (order))

// The owner produces items 1..ITEMS; thief 1 may add OWN items after those.
enum { CAP = 4, HALF = CAP / 2, ITEMS = 8, OWN = 3 };

static uint32_t steal_of(uint64_t head) { return (uint32_t)(head >> 32); }
static uint32_t real_of(uint64_t head) { return (uint32_t)head; }
static uint64_t pack(uint32_t steal, uint32_t real) { return (uint64_t)steal << 32 | real; }

// The failure order that goes with a CAS's success order, as in queue.c.
static rl::memory_order fail_of(rl::memory_order mo)
{
    return mo == rl::mo_acq_rel ? rl::mo_acquire : rl::mo_relaxed;
}

struct queue {
    rl::atomic<uint64_t> head;
    rl::atomic<uint32_t> tail;
    rl::var<int> buf[CAP];          // items are numbered from 1; 0 means none
};

static void init(queue &q, uint32_t pos)
{
    q.head.store(pack(pos, pos), rl::mo_relaxed, $);
    q.tail.store(pos, rl::mo_relaxed, $);
}

static int push(queue &q, int item, int *overflow)
{
    uint32_t tail = q.tail.load(rl::mo_relaxed, $);
    for (;;) {
        uint64_t head = q.head.load(MO(2, rl::mo_acquire), $);
        uint32_t steal = steal_of(head), real = real_of(head);
        if (tail - (MUTANT == 9 ? real : steal) < CAP)
            break;
        if (steal != real) {
            overflow[0] = item;
            return 1;
        }
        uint64_t seen = pack(real, real);
        rl::memory_order mo = MO(8, rl::mo_acq_rel);
        if (q.head.compare_exchange_strong(seen, pack(real + HALF, real + HALF),
                                           mo, $, fail_of(mo), $)) {
            for (int i = 0; i < HALF; i++)
                overflow[i] = q.buf[(real + i) % CAP]($);
            overflow[HALF] = item;
            return HALF + 1;
        }
    }
    q.buf[tail % CAP]($) = item;
    q.tail.store(tail + 1, MO(1, rl::mo_release), $);
    return 0;
}

static void push_batch(queue &q, const int *items, uint32_t n)
{
    uint32_t tail = q.tail.load(rl::mo_relaxed, $);
    uint64_t head = q.head.load(MO(2, rl::mo_acquire), $);
    RL_ASSERT(n <= CAP - (tail - steal_of(head)));
    for (uint32_t i = 0; i < n; i++)
        q.buf[(tail + i) % CAP]($) = items[i];
    q.tail.store(tail + n, MO(1, rl::mo_release), $);
}

static int pop(queue &q)
{
    uint32_t tail = q.tail.load(rl::mo_relaxed, $);
    uint64_t head = q.head.load(rl::mo_acquire, $);
    for (;;) {
        uint32_t steal = steal_of(head), real = real_of(head);
        if (real == tail)
            return 0;
        uint64_t next = steal == real ? pack(real + 1, real + 1) : pack(steal, real + 1);
        rl::memory_order mo = MO(7, rl::mo_acq_rel);
        if (q.head.compare_exchange_weak(head, next, mo, $, fail_of(mo), $))
            return q.buf[real % CAP]($);
    }
}

static uint32_t steal_half(queue &src, queue &dst, uint32_t dst_tail, uint32_t room)
{
    uint64_t head = src.head.load(MO(11, rl::mo_acquire), $);
    uint32_t first, n;
    for (;;) {
        uint32_t steal = steal_of(head), real = real_of(head);
        if (steal != real && MUTANT != 10)
            return 0;
        uint32_t tail = src.tail.load(MO(4, rl::mo_acquire), $);
        n = tail - real;
        n -= n / 2;
        if (n > room)
            n = room;
        if (n == 0)
            return 0;
        rl::memory_order mo = MO(12, rl::mo_acq_rel);
        if (src.head.compare_exchange_weak(head, pack(steal, real + n), mo, $, fail_of(mo), $)) {
            first = real;
            break;
        }
    }
    RL_ASSERT(n <= HALF);
    for (uint32_t i = 0; i < n; i++)
        dst.buf[(dst_tail + i) % CAP]($) = int(src.buf[(first + i) % CAP]($));

    // Mutant 10 lets thieves overlap, so the steal half may have moved.
    uint64_t cur = MUTANT == 10 ? src.head.load(rl::mo_relaxed, $) : pack(first, first + n);
    rl::memory_order mo = MO(3, rl::mo_acq_rel);
    while (!src.head.compare_exchange_weak(cur, pack(real_of(cur), real_of(cur)),
                                           mo, $, fail_of(mo), $))
        RL_ASSERT(MUTANT == 10 || steal_of(cur) == first);
    return n;
}

static int steal_into(queue &src, queue &dst)
{
    uint32_t dst_tail = dst.tail.load(rl::mo_relaxed, $);
    uint32_t dst_used = dst_tail - steal_of(dst.head.load(MO(6, rl::mo_acquire), $));
    if (dst_used > CAP / 2)
        return 0;
    uint32_t n = steal_half(src, dst, dst_tail, CAP - dst_used);
    if (n == 0)
        return 0;
    int ret = dst.buf[(dst_tail + n - 1) % CAP]($);
    if (n > 1)
        dst.tail.store(dst_tail + n - 1, MO(5, rl::mo_release), $);
    return ret;
}

// Worker 0 owns the items; workers 1..THIEVES steal. FILL: thief 1 starts
// with items of their own (see thread()). START is where the u32 positions
// begin: just below 2^32 makes them wrap during the run.
template <unsigned THIEVES, bool FILL, uint32_t START>
struct queue_test : rl::test_suite<queue_test<THIEVES, FILL, START>, 1 + THIEVES> {
    enum { TOTAL = ITEMS + (FILL ? OWN : 0) };
    queue q[1 + THIEVES];
    rl::var<int> payload[TOTAL + 1];
    int taken[TOTAL + 1];           // bookkeeping only; fibers share one OS thread

    void before()
    {
        for (unsigned i = 0; i <= THIEVES; i++)
            init(q[i], START);
        for (int i = 0; i <= TOTAL; i++)
            taken[i] = 0;
    }

    // Consumes an item (or nothing): its payload must be what the owner wrote.
    void take(int item)
    {
        if (item == 0)
            return;
        RL_ASSERT(item >= 1 && item <= TOTAL);
        RL_ASSERT(payload[item]($) == item * 10);
        taken[item]++;
    }

    void thread(unsigned t)
    {
        if (t == 0) {
            // One batch, so that tail jumps by 3 in one store; then an
            // overflow before any pop, so that a thief can meet the head an
            // overflow wrote with no release before it in head's history.
            int overflow[HALF + 1], batch[3] = {1, 2, 3};
            for (int i = 1; i <= 3; i++)
                payload[i]($) = i * 10;
            push_batch(q[0], batch, 3);
            for (int i = 4; i <= ITEMS; i++) {
                payload[i]($) = i * 10;
                int n = push(q[0], i, overflow);
                for (int k = 0; k < n; k++)
                    take(overflow[k]);   // "moved to the global queue"
                if (i == 5 || i == ITEMS)
                    take(pop(q[0]));
            }
            return;
        }
        // With FILL, thief 1 starts with three items of its own in its four
        // slots and steals from the owner, while thief 2 steals from thief 1
        // first: thief 1's queue then goes round its ring onto the slots
        // thief 2 reads.
        if (FILL && t == 1) {
            int own[OWN];
            for (int k = 0; k < OWN; k++) {
                own[k] = ITEMS + k + 1;
                payload[own[k]]($) = own[k] * 10;
            }
            push_batch(q[t], own, OWN);
        }
        for (int round = 0; round < 3; round++) {
            bool other = THIEVES == 2 && round == (FILL ? 0 : 1) && (!FILL || t == 2);
            take(steal_into(q[other ? 3 - t : 0], q[t]));
            if (!FILL || round != 0)
                take(pop(q[t]));
        }
    }

    void after()
    {
        for (unsigned i = 0; i <= THIEVES; i++)
            for (int item; (item = pop(q[i])) != 0;)
                take(item);
        for (int i = 1; i <= TOTAL; i++)
            RL_ASSERT(taken[i] == 1);
    }
};

template <class T>
static bool run(rl::iteration_t iterations)
{
    rl::test_params p;
    p.iteration_count = iterations;
    return rl::simulate<T>(p);
}

int main(int argc, char **argv)
{
    rl::iteration_t iterations = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    bool ok = run<queue_test<1, false, 0> >(iterations);
    ok = run<queue_test<2, false, 0> >(iterations) && ok;
    ok = run<queue_test<2, true, 0> >(iterations) && ok;
    ok = run<queue_test<2, true, UINT32_MAX - 2> >(iterations) && ok;
    std::printf("relacy_queue: %s (MUTANT=%d)\n", ok ? "ok" : "FAIL", MUTANT);
    return ok ? 0 : 1;
}
