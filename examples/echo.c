/* echo.c: weft-echo, a TCP echo server: every byte read is written back.
 *
 *   weft-echo [--port P] [--workers N] [--addr A] [--drain-ms MS]
 *
 * examples/server.h holds the skeleton both example servers share (the
 * command line, signals, the accept loop, the graceful stop) and explains it;
 * this file is the connection: one task per accepted socket.
 *
 * A connection receives with weft_recv: the bytes land in a buffer of the
 * worker's provided-buffer ring, so an idle connection holds no buffer, only
 * its task (sizeof(struct conn) is 152 bytes on x86-64) and the slot of its
 * pending receive: about 400 bytes of RSS per idle connection in all. The echo
 * is sent from that same buffer, which goes back to the ring when the send is
 * done. The price of that choice: a client that sends but never reads keeps
 * one buffer; when a worker's ring runs dry, its receives wait until buffers
 * come back (the bytes wait in the socket meanwhile: none are lost).
 *
 * At a stop the server shuts down the reading side of every connection, so a
 * connection echoes what it has already received, sees end of stream and
 * finishes. */
#include "server.h"

struct conn {
    struct weft_future base;
    struct conn_sock sock;     /* the socket, on the server's list */
    struct weft_recv rx[2];    /* the bytes of one receive are sent back from its
                                * buffer while the other receive waits */
    struct weft_io tx;
    struct weft_future *both[2];
    struct weft_join_all join;
    uint8_t cur;               /* the receive of this round */
};

_Static_assert(sizeof(struct conn) <= 320, "an idle connection should stay small");

static enum weft_poll conn_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct conn *self = (struct conn *)f;
    WEFT_ASYNC_BEGIN(f);
    if (!conn_join(&self->sock))
        WEFT_RETURN(f); /* accepted just before a stop */
    for (;;) {
        weft_recv_init(&self->rx[self->cur], self->sock.fd);
        if (self->tx.base.ops) {
            /* Echo the last receive while this one waits: both SQEs leave in
             * the same io_uring_enter. */
            self->both[0] = &self->tx.base;
            self->both[1] = &self->rx[self->cur].base;
            weft_join_all_init(&self->join, self->both, 2);
            WEFT_AWAIT(f, cx, &self->join);
            weft_future_drop(&self->tx.base);
            weft_future_drop(&self->rx[!self->cur].base); /* its buffer goes back to the ring */
            if (self->tx.result < 0)
                break;
        } else {
            WEFT_AWAIT(f, cx, &self->rx[self->cur]);
        }
        struct weft_recv *rx = &self->rx[self->cur];
        if (rx->result <= 0) /* end of stream, or an error such as a reset */
            break;
        weft_send_all_init(&self->tx, self->sock.fd, rx->data, (size_t)rx->result);
        self->cur = !self->cur;
    }
    WEFT_ASYNC_END(f);
}

/* Runs once: when the task finishes, or when the runtime drops it at exit. */
static void conn_drop(struct weft_future *f)
{
    struct conn *self = (struct conn *)f;
    weft_future_drop(&self->tx.base); /* the send first: it uses a receive's buffer */
    weft_future_drop(&self->rx[0].base);
    weft_future_drop(&self->rx[1].base);
    conn_close(&self->sock);
}

static const struct weft_future_ops conn_ops = { conn_poll, conn_drop };

/* Called by the accept loop for each new socket. */
static void conn_start(struct weft_runtime *rt, int fd)
{
    struct conn c = { .base = { &conn_ops, 0 }, .sock = { .fd = fd } };
    conn_spawn(rt, &c.base, sizeof(c), fd); /* copies c into the new task */
}

int main(int argc, char **argv)
{
    static const struct server_def def = { "weft-echo", conn_start, 0 };
    return server_main(argc, argv, &def);
}
