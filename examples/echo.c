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
 * its task (sizeof(struct conn) is 176 bytes on x86-64) and the slot of its
 * pending receive: about 400 bytes of RSS per idle connection in all. The echo
 * is sent from that same buffer, linked in the kernel to the next receive
 * (weft_send_recv_from: the buffer moves to the pair, and goes back to the
 * ring as soon as it is sent), so a connection never holds a buffer while it
 * waits, and any number of connections can echo at once: when a worker's
 * ring runs dry, its receives take a heap buffer of the same size instead
 * (io/bufring.c), freed once its echo is sent. A client that sends but never
 * reads holds one buffer (of the ring or the heap) until its socket's send
 * buffer has room again, and never keeps the other connections waiting.
 *
 * At a stop the server shuts down the reading side of every connection, so a
 * connection echoes what it has already received, sees end of stream and
 * finishes. */
#include "server.h"

struct conn {
    struct weft_future base;
    struct conn_sock sock;     /* the socket, on the server's list */
    union {
        struct weft_recv rx[2];      /* this round's receive sends back the last one's bytes */
        struct conn_linger linger;   /* the close, once the echoes are out (server.h) */
    };
    uint8_t cur;               /* the receive of this round */
    bool lingering;            /* linger is live, not rx */
};

_Static_assert(sizeof(struct conn) <= 192, "an idle connection should stay small");

static enum weft_poll conn_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct conn *self = (struct conn *)f;
    WEFT_ASYNC_BEGIN(f);
    if (!conn_join(&self->sock))
        WEFT_RETURN(f); /* accepted just before a stop */
    weft_recv_init(&self->rx[0], self->sock.fd);
    for (;;) {
        WEFT_AWAIT(f, cx, &self->rx[self->cur]);
        struct weft_recv *rx = &self->rx[self->cur];
        if (rx->result <= 0) /* end of stream, or an error such as a reset */
            break;
        /* Echo these bytes and receive the next ones: one linked pair in the
         * kernel, which takes the buffer over and gives it back once sent. */
        self->cur = !self->cur;
        weft_send_recv_from_init(&self->rx[self->cur], rx, 0, (size_t)rx->result);
        weft_future_drop(&rx->base); /* holds nothing now */
    }
    /* Close only once the client has every echo: at a stop (the reading
     * side shut down) input may still come, and a close with input unread
     * would reset the echoes still queued away (server.h). */
    weft_future_drop(&self->rx[self->cur].base);
    conn_linger_init(&self->linger, self->sock.fd);
    self->lingering = true;
    WEFT_AWAIT(f, cx, &self->linger);
    WEFT_ASYNC_END(f);
}

/* Runs once: when the task finishes, or when the runtime drops it at exit. */
static void conn_drop(struct weft_future *f)
{
    struct conn *self = (struct conn *)f;
    if (self->lingering) {
        weft_future_drop(&self->linger.base);
    } else {
        /* The sending receive first: it uses the other's buffer. */
        weft_future_drop(&self->rx[self->cur].base);
        weft_future_drop(&self->rx[!self->cur].base);
    }
    conn_close(&self->sock);
}

static const struct weft_future_ops conn_ops = { conn_poll, conn_drop };

/* Called by the accept loop for each new socket. */
static void conn_start(struct weft_runtime *rt, int fd)
{
    struct conn c = { .base = { &conn_ops, 0 }, .sock = { .fd = fd } };
    conn_spawn(rt, &c.base, sizeof(c), fd, "echo-conn"); /* copies c into the new task */
}

int main(int argc, char **argv)
{
    static const struct server_def def = { .name = "weft-echo", .conn_start = conn_start };
    return server_main(argc, argv, &def);
}
