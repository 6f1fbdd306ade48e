/* blocking_prio.c: the blocking pool's OS priorities (blocking.c runs the
 * pool; the monitor in metrics.c calls weft__blocking_demote).
 *
 * Pool threads run at the workers' priority, and a job that runs long is
 * lowered while it runs: the stall monitor (metrics.c) calls
 * weft__blocking_demote every DEMOTE_NS / 2 or so while jobs run, which moves
 * any job past DEMOTE_NS to the configured lower priority (SCHED_IDLE by
 * default); the thread goes back up when the job returns. So short jobs cost
 * no syscall at all (measured: lowering around every job doubled the cost of
 * spawn_blocking_seq), and the pool's bookkeeping and the joiner's wake,
 * which take locks the workers take too, never run low: a low-priority
 * thread preempted while it holds such a lock would stall a worker until a
 * CPU falls idle (priority inversion). Going back up needs CAP_SYS_NICE or a
 * raised RLIMIT_NICE: without them the pool lowers nothing (checked once, at
 * creation); a thread that finds itself unable to (capabilities dropped
 * later) exits after its job and a new one starts at the workers' priority. */
#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

#define DEMOTE_NS 1000000u

/* Lowers thread `tid` as `prio` says; false if that failed. */
bool weft__prio_lower(pid_t tid, uint32_t prio)
{
    if (prio == WEFT_BLOCKING_PRIO_NICE)
        return setpriority(PRIO_PROCESS, (id_t)tid, 19) == 0;
    struct sched_param sp = { 0 };
    return sched_setscheduler(tid, SCHED_IDLE, &sp) == 0;
}

/* The workers' priority: the policy and nice value of the thread creating
 * the runtime, which its workers inherit (not always SCHED_OTHER at nice 0:
 * a server started with `nice -n 5` or `chrt -b` would otherwise have its
 * pool threads put back above its workers). */
void weft__prio_init(struct blocking_pool *p)
{
    int policy = sched_getscheduler(0);
    p->base_policy = policy < 0 ? SCHED_OTHER : policy & ~SCHED_RESET_ON_FORK;
    if (sched_getparam(0, &p->base_param) != 0)
        p->base_param = (struct sched_param){ 0 };
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0); /* the calling thread's, on Linux */
    p->base_nice = errno ? 0 : nice;
    /* SCHED_RESET_ON_FORK: the workers did not inherit a real-time policy
     * (they run SCHED_OTHER) nor a negative nice value (0): sched(7). */
    if (policy >= 0 && (policy & SCHED_RESET_ON_FORK)) {
        if (p->base_policy == SCHED_FIFO || p->base_policy == SCHED_RR) {
            p->base_policy = SCHED_OTHER;
            p->base_param = (struct sched_param){ 0 };
        }
        if (p->base_nice < 0)
            p->base_nice = 0;
    }
}

/* The calling thread back to the workers' priority: both the nice value and
 * the policy, whichever was lowered (a thread started by a thread of another
 * priority inherited that one). The nice value first: leaving SCHED_IDLE is
 * judged against it (the kernel's can_nice). */
bool weft__prio_restore(const struct blocking_pool *p)
{
    bool ok = setpriority(PRIO_PROCESS, 0, p->base_nice) == 0;
    return sched_setscheduler(0, p->base_policy, &p->base_param) == 0 && ok;
}

/* Whether this process may raise a thread back to the workers' priority:
 * CAP_SYS_NICE, or (for a policy that is not real-time) RLIMIT_NICE of at
 * least 20 - their nice value (the kernel's can_nice). */
bool weft__prio_may_raise(const struct blocking_pool *p)
{
    struct rlimit rl;
    bool rt = p->base_policy == SCHED_FIFO || p->base_policy == SCHED_RR;
    if (!rt && getrlimit(RLIMIT_NICE, &rl) == 0 &&
        (rl.rlim_cur == RLIM_INFINITY || (long long)rl.rlim_cur >= 20 - (long long)p->base_nice))
        return true;
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    return syscall(SYS_capget, &hdr, data) == 0 && (data[0].effective & (1u << CAP_SYS_NICE));
}

bool weft__blocking_demote(struct weft_runtime *rt, uint64_t now)
{
    struct blocking_pool *p = &rt->blocking;
    if (!p->demotes)
        return false;
    pthread_mutex_lock(&p->lock);
    bool unlowered = false;
    for (struct pool_slot *s = p->slots; s; s = s->next) {
        /* Seq_cst: the other half of the pool thread's store and rouse
         * (blocking.c), after the monitor's store of its dozing word. */
        uint64_t start = atomic_load(&s->job_start);
        if (!start || atomic_load_explicit(&s->demoted, memory_order_relaxed) ||
            atomic_load_explicit(&s->ending, memory_order_relaxed))
            continue;
        /* `now` was read before the lock: a job may have started since. */
        if (now > start && now - start >= DEMOTE_NS &&
            weft__prio_lower(s->tid, p->priority))
            atomic_store_explicit(&s->demoted, true, memory_order_relaxed);
        else
            unlowered = true;
    }
    pthread_mutex_unlock(&p->lock);
    return unlowered;
}

