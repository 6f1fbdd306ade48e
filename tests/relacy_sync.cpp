// Relacy model of runtime/mpsc.c + runtime/atomic_waker.h (the ring, the
// receiver's awaker and the blocked-sender list), orderings copied from the C
// code. g++ -O2 -w relacy_sync.cpp && ./a.out [iterations]. Each of -DWEAK_PUBLISH,
// -DWEAK_FREE, -DWEAK_AW, -DNO_RECHECK, -DNO_RETRY, -DNO_PASS_ON, -DSTALE_TURN,
// -DEAGER_EPIPE (a closed receiver says -EPIPE before head reaches the marked
// tail), -DCLOSED_FIRST (the flag before the mark), -DNO_CLOSE_WAKE,
// -DWEAK_CLOSED (the flag release/acquire only), -DNO_WAITING_COUNT re-creates a bug and is caught (livelock or assert) within a few
// thousand iterations; the model as is passes 1,000,000 per test.
#include <relacy/relacy.hpp>

#ifdef WEAK_PUBLISH
#define PUBLISH rl::mo_release
#else
#define PUBLISH rl::mo_seq_cst
#endif
#ifdef WEAK_FREE
#define FREE_ORD rl::mo_release
#else
#define FREE_ORD rl::mo_seq_cst
#endif
#ifdef WEAK_AW
#define AWLOAD rl::mo_acquire
#else
#define AWLOAD rl::mo_seq_cst
#endif
#define SC rl::mo_seq_cst
#ifdef WEAK_CLOSED
#define CLOSED_ST rl::mo_release
#define CLOSED_LD rl::mo_acquire
#else
#define CLOSED_ST rl::mo_seq_cst
#define CLOSED_LD rl::mo_seq_cst
#endif
#define RLX rl::mo_relaxed

enum { IDLE = 0, ARMED = 1, WAKING = 2 };
enum { MAXCAP = 2, NTASK = 4 };

struct chan {
    rl::atomic<size_t> tail;
    rl::atomic<size_t> stamp[MAXCAP];
    rl::var<int> msg[MAXCAP];
    size_t CAP, MARK, ONE_LAP;
    rl::var<size_t> head;
    rl::atomic<unsigned> aw;
    rl::var<int> aw_waker; // task id, 0 = none
    rl::atomic<size_t> nwaiters;
    rl::mutex lock;
    // one blocked-sender slot per task id (a list of at most NTASK waiters, FIFO by seq)
    rl::var<int> queued[NTASK], wseq[NTASK];
    rl::atomic<int> notified[NTASK];
    rl::var<int> active[NTASK]; // a send future of this task exists
    int next_seq;
    rl::atomic<int> woken[NTASK];
    rl::atomic<int> senders;
    rl::atomic<bool> closed;
    rl::var<int> rx_waiting; // receive futures pending (the receiver's alone)

    void init(int nsenders, size_t cap = 2)
    {
        CAP = cap;
        MARK = cap == 1 ? 2 : 4;
        ONE_LAP = 2 * MARK;
        tail($).store(0, RLX);
        for (size_t i = 0; i < CAP; i++) {
            stamp[i]($).store(i, RLX);
            msg[i]($) = 0;
        }
        head($) = 0;
        aw($).store(IDLE, RLX);
        aw_waker($) = 0;
        nwaiters($).store(0, RLX);
        for (int i = 0; i < NTASK; i++) {
            queued[i]($) = 0, wseq[i]($) = 0;
            notified[i]($).store(0, RLX);
            active[i]($) = 0;
            woken[i]($).store(0, RLX);
        }
        next_seq = 1;
        senders($).store(nsenders, RLX);
        closed($).store(false, RLX);
        rx_waiting($) = 0;
    }

    size_t next_pos(size_t pos) { return (pos & (MARK - 1)) + 1 < CAP ? pos + 1 : (pos & ~(size_t)(ONE_LAP - 1)) + ONE_LAP; }

    int push(int v)
    {
        size_t t = tail($).load(RLX);
        for (;;) {
            if (t & MARK)
                return -3; // closed (EPIPE)
            size_t idx = t & (MARK - 1);
            size_t s = stamp[idx]($).load(SC);
            if (s == t) {
                if (tail($).compare_exchange_weak(t, next_pos(t), RLX, RLX)) {
                    msg[idx]($) = v;
                    stamp[idx]($).store(t + 1, PUBLISH);
                    return 0;
                }
            } else if ((long)(s - t) < 0) {
                return -1;
            } else {
                t = tail($).load(RLX);
            }
        }
    }

    int pop(int *out)
    {
        size_t h = head($);
        size_t idx = h & (MARK - 1);
        if (stamp[idx]($).load(SC) != h + 1)
            return -1;
        *out = msg[idx]($);
        head($) = next_pos(h);
        stamp[idx]($).store(h + ONE_LAP, FREE_ORD);
        return 0;
    }

    // ---- wakers: a wake is a release store the woken task acquires
    void wake(int id) { woken[id]($).store(1, rl::mo_release); }
    void wait(int id)
    {
        while (woken[id]($).exchange(0, rl::mo_acquire) == 0)
            rl::yield(1, $);
    }

    // ---- awaker
    void aw_register(int id)
    {
        unsigned s = aw($).load(SC);
        if (s == ARMED) {
            if (aw_waker($) == id)
                return;
            if (aw($).compare_exchange_strong(s, IDLE, SC))
                s = IDLE;
        }
        if (s == WAKING) {
            wake(id);
            return;
        }
        aw_waker($) = id;
        aw($).store(ARMED, SC);
    }
    void aw_wake()
    {
        unsigned s = aw($).load(AWLOAD);
        if (s != ARMED)
            return;
        if (!aw($).compare_exchange_strong(s, WAKING, SC))
            return;
        int id = aw_waker($);
        aw($).store(IDLE, rl::mo_release);
        wake(id);
    }

    int try_send(int v)
    {
        int r = push(v);
        if (r == 0)
            aw_wake();
        return r;
    }

    // ---- blocked senders
    int take_first() // under lock; returns task id or 0
    {
        int best = 0;
        for (int i = 1; i < NTASK; i++)
            if (queued[i]($) && (!best || wseq[i]($) < wseq[best]($)))
                best = i;
        if (best) {
            RL_ASSERT(active[best]($)); // never a finished future's waiter
            queued[best]($) = 0;
            nwaiters($).fetch_sub(1, SC);
            notified[best]($).store(1, RLX);
        }
        return best;
    }
    void wake_sender()
    {
        if (nwaiters($).load(SC) == 0)
            return;
        lock.lock($);
        int id = take_first();
        lock.unlock($);
        if (id)
            wake(id);
    }
    int try_recv(int *out)
    {
        if (pop(out) == 0) {
            wake_sender();
            return 0;
        }
        if (senders($).load(SC) != 0) {
            if (!closed($).load(CLOSED_LD))
                return -1;
#ifdef EAGER_EPIPE
            return -2;
#else
            size_t t = tail($).load(SC);
            return head($) == (t & ~(size_t)MARK) ? -2 : -1;
#endif
        }
        return pop(out) == 0 ? 0 : -2;
    }
    // weft_mpsc_receiver_close without blocked senders: the mark, then a wake
    // of a receive future pending elsewhere.
    void close()
    {
#ifdef CLOSED_FIRST
        closed($).store(true, SC);
        tail($).fetch_or(MARK, SC);
#else
        tail($).fetch_or(MARK, SC);
        closed($).store(true, CLOSED_ST);
#endif
#ifndef NO_CLOSE_WAKE
        aw_wake();
#endif
    }
    bool enqueue(int id)
    {
        lock.lock($);
        bool joined = !queued[id]($);
        if (joined) {
            queued[id]($) = 1;
            wseq[id]($) = notified[id]($).load(RLX) ? 0 : next_seq++;
            notified[id]($).store(0, RLX);
            nwaiters($).fetch_add(1, SC);
        }
        lock.unlock($);
        return joined;
    }
    void leave(int id, bool took_turn)
    {
        if (took_turn) {
            notified[id]($).store(0, RLX);
            return;
        }
        int pass = 0;
        lock.lock($);
        if (queued[id]($)) {
            queued[id]($) = 0;
            nwaiters($).fetch_sub(1, SC);
        } else if (notified[id]($).load(RLX)) {
#ifndef NO_PASS_ON
            pass = take_first();
#endif
        }
        notified[id]($).store(0, RLX);
        lock.unlock($);
        if (pass)
            wake(pass);
    }
    void aw_unregister()
    {
        unsigned s = aw($).load(SC);
        if (s == ARMED && aw($).compare_exchange_strong(s, IDLE, SC))
            aw_waker($) = 0; // dropped
    }

    // A send future driven to completion by task `id`.
    void send_blocking(int id, int v)
    {
        lock.lock($);
        active[id]($) = 1;
        lock.unlock($);
        bool registered = false;
        for (;;) {
#ifdef NO_TOOK_TURN
            bool took = true;
#else
            bool took = false;
            if (registered) {
                lock.lock($);
                took = notified[id]($).load(RLX);
                lock.unlock($);
            }
#endif
            int r = push(v);
            if (r != 0) {
#ifndef STALE_TURN
                took = false;
#endif
                registered = true;
#ifdef NO_RETRY
                enqueue(id);
#else
                if (enqueue(id))
                    r = push(v);
#endif
            }
            if (r == 0) {
                aw_wake();
                if (registered)
                    leave(id, took);
                lock.lock($);
                active[id]($) = 0;
                lock.unlock($);
                return;
            }
            wait(id);
        }
    }

    // A receive future driven to completion by task `id`; -2 for closed.
    int recv_blocking(int id, int *out, bool spurious)
    {
        for (;;) {
            int r = try_recv(out);
            if (r == -1) {
                aw_register(id);
#ifndef NO_RECHECK
                r = try_recv(out);
#endif
                if (r == -1 && spurious) { // a second poll before any wake
                    spurious = false;
                    aw_register(id);
                    r = try_recv(out);
                }
            }
            if (r != -1)
                return r;
            wait(id);
        }
    }

    void sender_drop()
    {
        if (senders($).fetch_sub(1, SC) != 1)
            return;
        aw_wake();
    }
};

// Two producers (one try_send spinner, one send future) and a consumer with
// receive futures; capacity 2, three messages each way, then close.
struct mpsc_test : rl::test_suite<mpsc_test, 3> {
    chan ch;
    int got[3];
    void before() { ch.init(2); got[0] = got[1] = got[2] = 0; }
    void thread(unsigned t)
    {
        if (t == 0) { // consumer, task 1
            int v, n = 0;
            bool spurious = true;
            for (;;) {
                int r = ch.recv_blocking(1, &v, spurious);
                spurious = !spurious;
                if (r == -2)
                    break;
                int who = v / 10 - 1; // producer 0 sends 10, 11; producer 1 sends 20, 21
                RL_ASSERT(who == 0 || who == 1);
                RL_ASSERT(v % 10 == got[who]); // each producer's order, nothing lost or doubled
                got[who]++;
                n++;
            }
            RL_ASSERT(n == 4 && got[0] == 2 && got[1] == 2);
        } else if (t == 1) { // producer with send futures, task 2
            ch.send_blocking(2, 10);
            ch.send_blocking(2, 11);
            ch.sender_drop();
        } else { // producer with try_send, spinning when full
            for (int v = 20; v < 22; v++)
                while (ch.try_send(v) != 0)
                    rl::yield(1, $);
            ch.sender_drop();
        }
    }
};

// One sender blocked on a capacity-1 ring while the consumer spins on try_recv:
// the enqueue/retry window races the consumer's free + nwaiters check.
struct sender_race : rl::test_suite<sender_race, 2> {
    chan ch;
    void before() { ch.init(1); }
    void thread(unsigned t)
    {
        if (t == 0) {
            int v, n = 0;
            while (n < 3) {
                if (ch.try_recv(&v) == 0) {
                    RL_ASSERT(v == 100 + n);
                    n++;
                } else {
                    rl::yield(1, $);
                }
            }
        } else {
            for (int i = 0; i < 3; i++)
                ch.send_blocking(2, 100 + i);
        }
    }
};

// A pending receive future is dropped (unregister) while a wake may be under
// way; a second future, of another task, must still get the message.
struct unregister_race : rl::test_suite<unregister_race, 2> {
    chan ch;
    void before() { ch.init(1); }
    void thread(unsigned t)
    {
        if (t == 0) {
            int v = -1, r = ch.try_recv(&v);
            if (r == -1) {
                ch.aw_register(1);
                r = ch.try_recv(&v);
                if (r == -1)
                    ch.aw_unregister(); // dropped while pending
            }
            if (r == -1)
                r = ch.recv_blocking(2, &v, false);
            RL_ASSERT(r == 0 && v == 7);
        } else {
            while (ch.try_send(7) != 0)
                rl::yield(1, $);
        }
    }
};

// Two receive futures of one task pending at once (a join_all of two
// receives, one under a timeout that fires): the first is dropped pending, and
// the second must still be woken by the message. -DNO_WAITING_COUNT (the drop
// always unregisters, as before) loses the wake.
struct two_receives : rl::test_suite<two_receives, 2> {
    chan ch;
    void before() { ch.init(1); }
    // One poll of a receive future of task 1; *waiting is the future's state.
    int poll_recv(bool *waiting, int *v)
    {
        int r = ch.try_recv(v);
        if (r == -1) {
            ch.aw_register(1);
            if (!*waiting) {
                *waiting = true;
                ch.rx_waiting($) = ch.rx_waiting($) + 1;
            }
            r = ch.try_recv(v);
        }
        if (r != -1 && *waiting) {
            *waiting = false;
            ch.rx_waiting($) = ch.rx_waiting($) - 1;
        }
        return r;
    }
    void drop_recv(bool *waiting)
    {
        if (!*waiting)
            return;
        ch.rx_waiting($) = ch.rx_waiting($) - 1;
#ifndef NO_WAITING_COUNT
        if (ch.rx_waiting($) == 0)
#endif
            ch.aw_unregister();
    }
    void thread(unsigned t)
    {
        if (t == 0) {
            bool w1 = false, w2 = false;
            int v = -1;
            if (poll_recv(&w1, &v) == 0 || poll_recv(&w2, &v) == 0) {
                RL_ASSERT(v == 7);
                return;
            }
            drop_recv(&w1);
            int r;
            do // the task sleeps until woken, then polls the second again
                ch.wait(1);
            while ((r = poll_recv(&w2, &v)) == -1);
            RL_ASSERT(r == 0 && v == 7);
        } else {
            RL_ASSERT(ch.try_send(7) == 0);
        }
    }
};

// Sender task 2 is chosen for a freed slot but dropped before it polls again:
// its turn must pass to sender task 3, or 3 sleeps forever.
struct pass_on : rl::test_suite<pass_on, 3> {
    chan ch;
    void before()
    {
        ch.init(2, 1);
        ch.push(0); // full
    }
    void thread(unsigned t)
    {
        if (t == 0) {
            int v, seen3 = 0;
            while (!seen3) {
                if (ch.try_recv(&v) == 0)
                    seen3 = v == 3;
                else
                    rl::yield(1, $);
            }
        } else if (t == 1) { // one poll of a send future, then a drop after the wake
            ch.lock.lock($);
            ch.active[2]($) = 1;
            ch.lock.unlock($);
            int r = ch.push(2);
            if (r != 0 && ch.enqueue(2))
                r = ch.push(2);
            if (r == 0) {
                ch.leave(2, false); // pushed before any turn came
            } else {
                ch.wait(2);
                ch.leave(2, false); // dropped: the turn goes unused
            }
            ch.lock.lock($);
            ch.active[2]($) = 0;
            ch.lock.unlock($);
        } else {
            ch.send_blocking(3, 3);
        }
    }
};

// Two send futures on a capacity-1 ring and a try_send spinner stealing freed
// slots: turns get lost and rejoined, each future sends twice.
struct turn_thief : rl::test_suite<turn_thief, 4> {
    chan ch;
    void before() { ch.init(3, 1); }
    void thread(unsigned t)
    {
        if (t == 0) {
            int v, n = 0;
            while (n < 5) {
                if (ch.try_recv(&v) == 0)
                    n++;
                else
                    rl::yield(1, $);
            }
        } else if (t == 3) {
            while (ch.try_send(9) != 0)
                rl::yield(1, $);
        } else {
            ch.send_blocking(t, 1);
            ch.send_blocking(t, 2);
        }
    }
};

// weft_mpsc_receiver_close: two try_send producers send until -EPIPE, the
// consumer takes one message, closes, and drains with receive futures until
// -EPIPE: every message a send was told it queued arrives, in each
// producer's order, and the drain ends (no early -EPIPE, no hang).
struct close_drain : rl::test_suite<close_drain, 3> {
    chan ch;
    int sent[2], got[2];
    void before()
    {
        ch.init(2);
        sent[0] = sent[1] = got[0] = got[1] = 0;
    }
    void thread(unsigned t)
    {
        if (t == 0) {
            int v, n = 0;
            for (;;) {
                int r = ch.recv_blocking(1, &v, false);
                if (r == -2)
                    break;
                int who = v / 10 - 1;
                RL_ASSERT(who == 0 || who == 1);
                RL_ASSERT(v % 10 == got[who]);
                got[who]++;
                if (++n == 1)
                    ch.close();
            }
        } else {
            int who = (int)t - 1;
            for (int v = 0; v < 3; v++) {
                int r;
                while ((r = ch.try_send((who + 1) * 10 + v)) == -1)
                    rl::yield(1, $);
                if (r != 0)
                    break;
                sent[who]++;
            }
        }
    }
    void after()
    {
        RL_ASSERT(got[0] == sent[0] && got[1] == sent[1]); // nothing lost
    }
};

// The receive future waits in task 1 on one thread; the receiver's close runs
// on another; one sender. The receive must end (-2) once the sender's messages
// are all taken; none lost.
struct close_remote : rl::test_suite<close_remote, 3> {
    chan ch;
    int sent, got;
    void before()
    {
        ch.init(1);
        sent = got = 0;
    }
    void thread(unsigned t)
    {
        if (t == 0) {
            int v;
            for (;;) {
                int r = ch.recv_blocking(1, &v, false);
                if (r == -2)
                    break;
                RL_ASSERT(v == got);
                got++;
            }
        } else if (t == 1) {
            ch.close();
        } else {
            for (int v = 0; v < 2; v++) {
                int r;
                while ((r = ch.try_send(v)) == -1)
                    rl::yield(1, $);
                if (r != 0)
                    break;
                sent++;
            }
        }
    }
    void after() { RL_ASSERT(got == sent); }
};

int main(int argc, char **argv)
{
    rl::test_params p;
    p.iteration_count = argc > 1 ? atoi(argv[1]) : 200000;
    p.execution_depth_limit = 20000;
    bool ok = rl::simulate<mpsc_test>(p);
    ok = rl::simulate<sender_race>(p) && ok;
    ok = rl::simulate<unregister_race>(p) && ok;
    ok = rl::simulate<two_receives>(p) && ok;
    ok = rl::simulate<pass_on>(p) && ok;
    ok = rl::simulate<turn_thief>(p) && ok;
    ok = rl::simulate<close_drain>(p) && ok;
    ok = rl::simulate<close_remote>(p) && ok;
    return ok ? 0 : 1;
}
