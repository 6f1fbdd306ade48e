/* tutorial.c: the program docs/tutorial.md walks through.
 *
 * A producer task sends the numbers 1..N through a bounded channel; a consumer
 * task sums them and reports the sum as its output; main waits for both. */
#include <stdio.h>
#include <stdlib.h>

#include <weft.h>

#define N 1000

/* The producer: an async function whose locals live in its struct. */
struct producer {
    struct weft_future base;   /* first member: makes this a future */
    struct weft_mpsc *out;
    uint64_t i;
    struct weft_mpsc_send send; /* the child future being awaited */
};

static enum weft_poll producer_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct producer *self = (struct producer *)f;
    WEFT_ASYNC_BEGIN(f);
    for (self->i = 1; self->i <= N; self->i++) {
        weft_mpsc_send_init(&self->send, self->out, &self->i);
        WEFT_AWAIT(f, cx, &self->send); /* waits while the channel is full */
        weft_future_drop(&self->send.base);
    }
    WEFT_ASYNC_END(f);
}

/* Runs once, finished or not: releases what the future holds. */
static void producer_drop(struct weft_future *f)
{
    struct producer *self = (struct producer *)f;
    weft_future_drop(&self->send.base); /* harmless if already dropped */
    weft_mpsc_sender_drop(self->out);   /* the consumer then sees -EPIPE */
}

static const struct weft_future_ops producer_ops = { producer_poll, producer_drop };

/* The consumer: receives until the channel closes; its output is `sum`. */
struct consumer {
    struct weft_future base;
    struct weft_mpsc *in;
    uint64_t v, sum;
    struct weft_mpsc_recv recv;
};

static enum weft_poll consumer_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct consumer *self = (struct consumer *)f;
    WEFT_ASYNC_BEGIN(f);
    for (;;) {
        weft_mpsc_recv_init(&self->recv, self->in, &self->v);
        WEFT_AWAIT(f, cx, &self->recv);
        weft_future_drop(&self->recv.base);
        if (self->recv.res < 0) /* -EPIPE: every sender is gone */
            break;
        self->sum += self->v;
    }
    WEFT_ASYNC_END(f);
}

static void consumer_drop(struct weft_future *f)
{
    struct consumer *self = (struct consumer *)f;
    weft_future_drop(&self->recv.base);
    weft_mpsc_receiver_drop(self->in);
}

static const struct weft_future_ops consumer_ops = { consumer_poll, consumer_drop };

int main(void)
{
    struct weft_runtime *rt;
    int err = weft_runtime_create(&rt, NULL); /* one worker per CPU */
    if (err) {
        fprintf(stderr, "runtime: %d\n", err);
        return 1;
    }
    struct weft_mpsc *ch;
    if (weft_mpsc_create(&ch, 16, sizeof(uint64_t)) < 0)
        return 1;

    /* Futures are initialised by value, then copied into their task. */
    struct producer p = { .base = { &producer_ops, 0 }, .out = ch };
    struct consumer c = { .base = { &consumer_ops, 0 }, .in = ch };
    struct weft_join pj, cj;
    if (weft_spawn(rt, &p.base, sizeof(p), &pj) < 0 || weft_spawn(rt, &c.base, sizeof(c), &cj) < 0)
        return 1;

    /* main is not a worker: it may block until a future is ready. */
    weft_block_on(rt, &pj.base);
    weft_block_on(rt, &cj.base);
    struct consumer *done = weft_join_output(&cj); /* the finished future */
    printf("producer: %d, consumer: %d, sum: %llu (expected %llu)\n", pj.res, cj.res,
           (unsigned long long)done->sum, (unsigned long long)N * (N + 1) / 2);
    int ok = cj.res == 0 && done->sum == (uint64_t)N * (N + 1) / 2;

    weft_future_drop(&pj.base); /* join handles are futures: drop them */
    weft_future_drop(&cj.base);
    weft_runtime_destroy(rt);
    return ok ? 0 : 1;
}
