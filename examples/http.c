/* http.c: weft-http, a minimal HTTP/1.1 server answering every GET with
 * "Hello, World!" (and every HEAD with the same head).
 *
 *   weft-http [--port P] [--workers N] [--addr A] [--drain-ms MS]
 *             [--heavy inline|blocking|compute] [--heavy-ms MS]
 *             [--blocking-prio P] [--blocking-threads N] [--compute-slice-us US|off]
 *             [--idle-ms MS]
 *
 * The protocol is the one the peer servers of the benchmarks speak. A request
 * is a head (request line and field lines, each ended by CRLF, then an empty
 * line); each GET gets
 *
 *   HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!
 *
 * on a keep-alive connection, and each HEAD the same without the body (RFC
 * 9110 9.1: a general-purpose server supports both). An HTTP/1.0 request
 * with "Connection: keep-alive" gets "Connection: keep-alive" before the
 * empty line too (the 1.0 negotiation of RFC 2068 19.7.1: a 1.0 client
 * takes a response without it for the last); HTTP/1.1 responses never carry
 * it. Pipelined requests are answered in order, with one send for all the
 * complete requests a read brought (one more per BATCH responses past the
 * first BATCH, and one more where the kind of response changes, a HEAD among
 * GETs say), from static buffers that hold each response BATCH times. A
 * request's body (Content-Length) is skipped. After "Connection: close", or
 * an HTTP/1.0 request without "Connection: keep-alive", the response is the
 * last, and says "Connection: close" (RFC 9112 9.6): the connection closes.
 * An error is answered, then the connection is closed:
 *  - 400 when a request line is not `METHOD SP target SP HTTP/1.x`, a field
 *    line is not `name ":" value` (a control character in the value, a space
 *    before the colon), a line ends in a bare LF (seen as soon as it comes),
 *    or Content-Length is not a number (or two differ);
 *  - 405 for any method but GET and HEAD (case matters: "get" is not GET),
 *    with "Allow: GET, HEAD";
 *  - 411 with Transfer-Encoding whose final coding is chunked: a body of
 *    unknown length is not read (any other final coding gets 400, RFC 9112
 *    6.3: the body's length cannot be known);
 *  - 431 when the head of a request passes 8 KiB (MAX_HEAD).
 * The requests before the bad one are answered first. Empty lines before a
 * request line are skipped (RFC 9112 2.2).
 *
 * Memory: a connection is one task holding a `struct conn` (232 bytes on
 * x86-64) and, while it waits, the slot of its pending receive: about 410
 * bytes of RSS per idle connection, measured with 10,000 of them. Requests are
 * parsed straight from the provided buffer the bytes arrived in; only a
 * request split across reads needs memory of its own, the `carry` buffer:
 * malloc'd when that happens, grown up to MAX_HEAD plus one read, and freed as
 * soon as no partial request is left. (It also keeps the requests of a read
 * that come after a change in the kind of response, until the responses
 * before them are sent.) Nothing is allocated per request.
 *
 * The stall demo (docs/blocking.md): with --heavy, a request for the path
 * /heavy (a GET or a HEAD) first burns about --heavy-ms (default 5) ms of
 * CPU, calibrated at start; `inline` does it in the connection's task, on
 * the worker (the stall detector then names the task "http-conn"),
 * `blocking` through weft_spawn_blocking, `compute` through
 * weft_spawn_compute, awaited.
 * --blocking-prio normal|nice|idle sets the pool threads' OS priority
 * (default: the runtime's), --blocking-threads the pool's cap (default: the
 * runtime's, 512), --compute-slice-us how often a compute job yields (default
 * 250; off: never). Every other path stays light.
 *
 * examples/server.h holds the skeleton both example servers share (the
 * command line, signals, the accept loop, the graceful stop). At a stop, a
 * connection in the middle of a request is left to finish it (within the
 * drain timeout), and closes after its response, which says "Connection:
 * close"; a client that keeps pipelining gets the requests already sent
 * answered, no new ones read (its reading side is shut once the request in
 * hand is done), and as which of them is the last is not known when it is
 * answered, none says "Connection: close". The others close at once.
 * Every close (after an error reply or a "Connection: close" too) waits
 * until the client's kernel has every response, or 2 s (server.h: a close
 * with input unread would reset them away).
 *
 * --idle-ms MS (off by default): a request must come whole within MS of the
 * last one's (or of the accept); a silent client, or one that trickles a
 * head byte by byte, is closed then (its read dropped, the socket closed at
 * once). A weft_sleep beside the read, re-armed at each read. */
#include <assert.h>
#include <time.h>

#include "server.h"

#define READ_SIZE 4096  /* bytes per provided buffer: the most one read brings */
#define MAX_HEAD 8192   /* the longest request head; longer gets 431 */
#define BATCH 32        /* responses per send */
#define MIN(a, b) ((a) < (b) ? (a) : (b))

/* The 200 responses: to a GET, or to a HEAD (the same head, no body; RFC
 * 9110 9.3.2), each also with "Connection: keep-alive" for an HTTP/1.0
 * request that asked to be kept alive (a 1.0 client assumes a close
 * otherwise), or with "Connection: close" for the last request of a
 * connection (RFC 9112 9.6: one that asked to close, or a 1.0 one that did
 * not ask to be kept alive). Indexed by a request's kind, OK_HEAD | OK_KEEP
 * or OK_HEAD | OK_CLOSE: oks[0], HTTP/1.1's GET, is the hot path. */
enum { OK_HEAD = 1, OK_KEEP = 2, OK_CLOSE = 4, OK_KINDS = 8 };
#define OK_STATUS "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
#define OK_CONN "Connection: keep-alive\r\n"
#define OK_LAST "Connection: close\r\n"
#define OK_BODY "Hello, World!"
#define OK_LONGEST OK_STATUS OK_CONN "\r\n" OK_BODY
#define OK_ENTRY(s) { s, sizeof(s) - 1 }
static const struct {
    const char *s;
    uint32_t len;
} oks[OK_KINDS] = {
    [0] = OK_ENTRY(OK_STATUS "\r\n" OK_BODY),
    [OK_HEAD] = OK_ENTRY(OK_STATUS "\r\n"),
    [OK_KEEP] = OK_ENTRY(OK_STATUS OK_CONN "\r\n" OK_BODY),
    [OK_HEAD | OK_KEEP] = OK_ENTRY(OK_STATUS OK_CONN "\r\n"),
    [OK_CLOSE] = OK_ENTRY(OK_STATUS OK_LAST "\r\n" OK_BODY),
    [OK_HEAD | OK_CLOSE] = OK_ENTRY(OK_STATUS OK_LAST "\r\n"),
};
/* oks[k], BATCH times over (filled by main) */
static char batch[OK_KINDS][BATCH * (sizeof(OK_LONGEST) - 1)];

/* What ends a connection after the responses before it: an error reply, or
 * none (REPLY_CLOSE: the client asked to close). */
enum { REPLY_NONE, REPLY_400, REPLY_405, REPLY_411, REPLY_431, REPLY_CLOSE };
static const char *const replies[] = {
    [REPLY_400] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    [REPLY_405] = "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n",
    [REPLY_411] = "HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    [REPLY_431] = "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n",
    [REPLY_CLOSE] = "",
};

/* ---- a connection ------------------------------------------------------------ */

struct conn {
    struct weft_future base;
    struct conn_sock sock;     /* the socket, on the server's list; sock.partial: carry != NULL */
    uint32_t count;            /* 200 responses still to send, all of one kind (`kind`) */
    uint32_t heavy;            /* of which for /heavy, with --heavy: work to do first */
    uint32_t carry_len, carry_cap;
    uint64_t skip;             /* bytes of a request body still to come, to skip */
    uint8_t reply;             /* the error to answer after them (REPLY_*), or 0 */
    uint8_t shut;              /* read side shut down at a stop (a partial request left) */
    uint8_t kind;              /* the kind of those responses: oks[kind] */
    uint8_t more;              /* the carry buffer holds requests answered with another kind,
                                * counted once those responses are sent */
    uint8_t idle_out;          /* --idle-ms: no whole request came in time */
    unsigned char *carry;      /* the start of a request split across reads, or NULL */
    uint64_t idle_until;       /* --idle-ms: the read's deadline for a request to come whole */
    struct weft_recv rx;       /* sends the last batch's responses, then reads */
    union {
        struct weft_sleep idle; /* --idle-ms: beside rx, while it waits */
        struct weft_io tx;     /* the other sends */
        struct weft_blocking_join job; /* the /heavy work, with --heavy blocking */
        struct conn_linger linger;     /* the close, once the responses are out */
    };
};

_Static_assert(sizeof(struct conn) <= 256, "an idle connection should stay small");

/* ---- the stall demo ---------------------------------------------------------- */

enum { HEAVY_OFF, HEAVY_INLINE, HEAVY_BLOCKING, HEAVY_COMPUTE };
static int heavy_mode;
static unsigned long heavy_ms = 5;
static uint64_t heavy_iters;     /* of burn(), for heavy_ms of CPU (calibrated) */
static int blocking_prio = -1;   /* WEFT_BLOCKING_PRIO_*, or -1: the default */
static unsigned long blocking_threads; /* the pool's cap; 0: the default */
static unsigned long compute_slice_us; /* 0: the default */

/* The CPU work of a /heavy request: the same loop as tokio_stall's. */
static uint64_t burn(uint64_t iters, uint64_t x)
{
    for (uint64_t i = 0; i < iters; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        x ^= x >> 29;
        __asm__ volatile("" : "+r"(x)); /* keeps the loop */
    }
    return x;
}

static double thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Iterations for heavy_ms of this thread's CPU: the fastest of 7 timings
 * 20 ms apart (a timing that another process interrupted only runs long). */
static void calibrate(void)
{
    uint64_t n = 1 << 14;
    double t;
    for (;;) {
        t = thread_cpu_ms();
        burn(n, n);
        if (thread_cpu_ms() - t >= 10)
            break;
        n *= 2;
    }
    double best = 1e9;
    for (int i = 0; i < 7; i++) {
        struct timespec gap = { 0, 20 * 1000000 };
        nanosleep(&gap, NULL);
        t = thread_cpu_ms();
        burn(n, n);
        t = thread_cpu_ms() - t;
        best = t < best ? t : best;
    }
    heavy_iters = (uint64_t)((double)n * (double)heavy_ms / best);
}

static void *heavy_job(void *arg)
{
    return (void *)(uintptr_t)burn(heavy_iters * (uintptr_t)arg, (uintptr_t)arg);
}

static unsigned long idle_ms; /* --idle-ms, or 0: no deadline */

static bool http_option(const char *opt, const char *value)
{
    if (strcmp(opt, "heavy") == 0) {
        heavy_mode = strcmp(value, "inline") == 0     ? HEAVY_INLINE
                     : strcmp(value, "blocking") == 0 ? HEAVY_BLOCKING
                     : strcmp(value, "compute") == 0  ? HEAVY_COMPUTE
                                                      : -1;
        return heavy_mode >= 0;
    }
    char *end;
    if (strcmp(opt, "idle-ms") == 0) {
        idle_ms = strtoul(value, &end, 10);
        return *value && !*end && idle_ms > 0 && idle_ms <= 3600000;
    }
    if (strcmp(opt, "heavy-ms") == 0) {
        heavy_ms = strtoul(value, &end, 10);
        return *value && !*end && heavy_ms > 0 && heavy_ms <= 10000;
    }
    if (strcmp(opt, "blocking-threads") == 0) {
        blocking_threads = strtoul(value, &end, 10);
        return *value && !*end && blocking_threads > 0 && blocking_threads <= 65536;
    }
    if (strcmp(opt, "compute-slice-us") == 0) {
        if (strcmp(value, "off") == 0) {
            compute_slice_us = WEFT_COMPUTE_SLICE_OFF;
            return true;
        }
        compute_slice_us = strtoul(value, &end, 10);
        return *value && !*end && compute_slice_us >= 50 && compute_slice_us <= 1000000;
    }
    blocking_prio = strcmp(value, "normal") == 0 ? WEFT_BLOCKING_PRIO_NORMAL
                    : strcmp(value, "nice") == 0 ? WEFT_BLOCKING_PRIO_NICE
                    : strcmp(value, "idle") == 0 ? WEFT_BLOCKING_PRIO_IDLE
                                                 : -2;
    return blocking_prio != -2;
}

static void http_configure(struct weft_runtime_config *cfg)
{
    if (blocking_prio >= 0)
        cfg->blocking_priority = (uint32_t)blocking_prio;
    cfg->blocking_max_threads = (uint32_t)blocking_threads;
    cfg->compute_slice_us = (uint32_t)compute_slice_us;
    if (heavy_mode)
        calibrate();
}

/* True when the request line's target is /heavy (a query string allowed). */
static bool is_heavy(const unsigned char *line, size_t n)
{
    const unsigned char *sp = memchr(line, ' ', n);
    return sp && (size_t)(line + n - sp) > 7 && memcmp(sp + 1, "/heavy", 6) == 0 &&
           (sp[7] == ' ' || sp[7] == '?');
}

/* ---- parsing ------------------------------------------------------------------ */

/* Byte classes, filled by main: a token character (RFC 9110 tchar: a
 * method, a field name), and a byte a field value may hold (no control
 * character but HTAB, no DEL; obs-text allowed). */
enum { TCHAR = 1, FIELD_BYTE = 2 };
static unsigned char byte_class[256];

static void classes_init(void)
{
    static const char marks[] = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        bool t = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 (c > ' ' && c < 0x7f && memchr(marks, c, sizeof(marks) - 1));
        bool v = c == '\t' || (c >= ' ' && c != 0x7f);
        byte_class[c] = (unsigned char)((t ? TCHAR : 0) | (v ? FIELD_BYTE : 0));
    }
}

/* What a request head says beyond its line. */
struct head {
    int reply;                 /* REPLY_NONE, or the error to answer */
    bool http10, close, keep_alive, has_length;
    bool te, te_chunked;       /* Transfer-Encoding; its last coding is chunked */
    bool no_body;              /* a HEAD: the response has no body */
    uint64_t body;             /* Content-Length */
};

/* Checks a request line (without its CRLF): REPLY_NONE for a GET or a HEAD,
 * REPLY_405 for another method, REPLY_400 when it is not
 * `METHOD SP target SP HTTP/1.x`. */
static int check_line(const unsigned char *s, size_t n, struct head *h)
{
    size_t i = 0, method, target;
    while (i < n && (byte_class[s[i]] & TCHAR))
        i++;
    method = i;
    if (method == 0 || i == n || s[i++] != ' ')
        return REPLY_400;
    for (target = i; i < n && s[i] > ' ' && s[i] < 0x7f; i++)
        ;
    if (i == target || i == n || s[i++] != ' ')
        return REPLY_400;
    if (n - i != 8 || memcmp(s + i, "HTTP/1.", 7) != 0 || s[i + 7] < '0' || s[i + 7] > '9')
        return REPLY_400;
    h->http10 = s[i + 7] == '0';
    if (method == 3 && memcmp(s, "GET", 3) == 0)
        return REPLY_NONE;
    h->no_body = method == 4 && memcmp(s, "HEAD", 4) == 0;
    return h->no_body ? REPLY_NONE : REPLY_405;
}

/* s[0..n) equals the lower-case `lower`, whatever the case of s. */
static bool same_name(const unsigned char *s, const char *lower, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((s[i] | 0x20) != (unsigned char)lower[i])
            return false;
    return true;
}

/* The options of a Connection field: comma-separated tokens. */
static void connection_options(const unsigned char *v, size_t n, struct head *h)
{
    for (size_t i = 0; i < n;) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t t = i;
        while (i < n && (byte_class[v[i]] & TCHAR))
            i++;
        h->close |= i - t == 5 && same_name(v + t, "close", 5);
        h->keep_alive |= i - t == 10 && same_name(v + t, "keep-alive", 10);
        while (i < n && v[i] != ',')
            i++;
    }
}

/* A field line (without its CRLF): `name ":" OWS value OWS`. False when it
 * is not one; notes Content-Length, Transfer-Encoding and Connection. */
static bool check_field(const unsigned char *s, size_t n, struct head *h)
{
    size_t i = 0;
    while (i < n && (byte_class[s[i]] & TCHAR))
        i++;
    size_t name = i;
    if (name == 0 || i == n || s[i++] != ':')
        return false; /* no name, or no colon right after it (RFC 9112 5.1) */
    for (size_t k = i; k < n; k++)
        if (!(byte_class[s[k]] & FIELD_BYTE))
            return false;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    while (n > i && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    const unsigned char *v = s + i;
    size_t vn = n - i;
    if (name == 14 && same_name(s, "content-length", 14)) {
        /* Digits only; a second one must say the same (RFC 9112 6.3). */
        uint64_t len = 0;
        if (vn == 0 || vn > 18)
            return false;
        for (size_t k = 0; k < vn; k++) {
            if (v[k] < '0' || v[k] > '9')
                return false;
            len = len * 10 + (uint64_t)(v[k] - '0');
        }
        if (h->has_length && h->body != len)
            return false;
        h->has_length = true;
        h->body = len;
    } else if (name == 17 && same_name(s, "transfer-encoding", 17)) {
        /* Judged at the head's end (a second field line continues the list):
         * only the last coding counts. */
        size_t t = vn;
        while (t > 0 && v[t - 1] != ',' && v[t - 1] != ' ' && v[t - 1] != '\t')
            t--;
        h->te = true;
        h->te_chunked = vn - t == 7 && same_name(v + t, "chunked", 7);
    } else if (name == 10 && same_name(s, "connection", 10)) {
        connection_options(v, vn, h);
    }
    return true;
}

/* Parses the request head at the start of p[0..len). Returns its length
 * (through the CRLF of the empty line that ends it), or 0 while it is
 * incomplete, or when it is bad (then h->reply says how). Every line must
 * end in CRLF: a bare LF is an error (RFC 9112 2.2 allows either; a server
 * that took LF as a line end where a proxy in front did not would read
 * another request than the proxy). */
static size_t parse_head(const unsigned char *p, size_t len, struct head *h)
{
    const unsigned char *s = p, *end = p + len, *lf;
    *h = (struct head){ .reply = REPLY_NONE };
    while ((lf = memchr(s, '\n', (size_t)(end - s))) != NULL) {
        if (lf == s || lf[-1] != '\r') {
            h->reply = REPLY_400;
            return 0;
        }
        size_t n = (size_t)(lf - 1 - s);
        if (s == p) {
            h->reply = check_line(s, n, h);
            if (h->reply != REPLY_NONE)
                return 0;
        } else if (n == 0) {
            if (h->te) /* a body of unknown length, not read; or of no length at all */
                h->reply = h->te_chunked ? REPLY_411 : REPLY_400;
            return (size_t)(lf + 1 - p);
        } else if (!check_field(s, n, h)) {
            h->reply = REPLY_400;
            return 0;
        }
        s = lf + 1;
    }
    return 0;
}

/* Counts the complete requests at the start of p[0..len) into c->count,
 * stopping at a bad one (c->reply), one after which the connection closes
 * (REPLY_CLOSE), or one whose response is of another kind than those
 * counted (c->more: it is counted once they are sent). Returns the bytes
 * they take, with the bodies of those that had one (skipped; what has yet
 * to come is in c->skip); the rest is the start of a request still
 * incomplete, or (c->more) requests still to count. */
static size_t scan(struct conn *c, const unsigned char *p, size_t len)
{
    size_t pos = 0, head;
    struct head h;
    for (;;) {
        /* Empty lines before a request line are ignored (RFC 9112 2.2: a
         * client may send a CRLF after a body). */
        while (len - pos >= 2 && p[pos] == '\r' && p[pos + 1] == '\n')
            pos += 2;
        if ((head = parse_head(p + pos, len - pos, &h)) == 0)
            break;
        if (h.reply == REPLY_NONE && head > MAX_HEAD)
            h.reply = REPLY_431;
        if (h.reply != REPLY_NONE) {
            c->reply = (uint8_t)h.reply;
            return len;
        }
        bool last = h.close || (h.http10 && !h.keep_alive);
        unsigned kind = (h.no_body ? OK_HEAD : 0) | (last ? OK_CLOSE : h.http10 ? OK_KEEP : 0);
        if (kind != c->kind) {
            if (c->count) {
                c->more = 1;
                return pos;
            }
            c->kind = (uint8_t)kind;
        }
        c->count++;
        if (heavy_mode && is_heavy(p + pos, head))
            c->heavy++;
        pos += head;
        if (h.body) { /* a body: skipped, as RFC 9110 9.3.1 and 9.3.2 let it be */
            uint64_t here = MIN(h.body, (uint64_t)(len - pos));
            pos += (size_t)here;
            c->skip = h.body - here;
        }
        if (last) {
            c->reply = REPLY_CLOSE; /* answered, then the connection closes */
            return len;
        }
        if (c->skip)
            return len;
    }
    if (h.reply == REPLY_NONE)
        return pos;
    c->reply = (uint8_t)h.reply; /* a bad line before the head was complete */
    return len;
}

static void carry_free(struct conn *c)
{
    free(c->carry);
    c->carry = NULL;
    c->carry_len = c->carry_cap = 0;
    atomic_store_explicit(&c->sock.partial, false, memory_order_relaxed);
}

/* Appends n bytes to the carry buffer, making or growing it: from 512 bytes
 * up to CARRY_MAX, as consume never keeps more than MAX_HEAD and a read brings
 * at most READ_SIZE. */
#define CARRY_MAX (MAX_HEAD + READ_SIZE)
static bool carry_append(struct conn *c, const unsigned char *p, size_t n)
{
    size_t need = c->carry_len + n;
    assert(need <= CARRY_MAX);
    if (need > c->carry_cap) {
        size_t cap = c->carry_cap ? 2 * c->carry_cap : 512;
        cap = cap < need ? need : cap;
        cap = cap > CARRY_MAX ? CARRY_MAX : cap;
        unsigned char *m = realloc(c->carry, cap);
        if (!m)
            return false;
        c->carry = m;
        c->carry_cap = (uint32_t)cap;
    }
    memcpy(c->carry + c->carry_len, p, n);
    c->carry_len = (uint32_t)need;
    atomic_store_explicit(&c->sock.partial, true, memory_order_relaxed);
    return true;
}

/* Takes the n bytes a read brought: counts the requests they complete (and a
 * bad one), and keeps the start of an unfinished one in the carry buffer,
 * with the requests left to count when the kind of response changed
 * (c->more). With n == 0, counts those. Returns false when out of memory. */
static bool consume(struct conn *c, const unsigned char *data, size_t n)
{
    if (c->skip) { /* the rest of a body */
        size_t k = (size_t)MIN(c->skip, (uint64_t)n);
        c->skip -= k;
        data += k;
        n -= k;
    }
    if (n == 0 && !c->carry)
        return true; /* the read was all body: nothing to count */
    assert(n || c->more); /* n == 0 here: c->more, whose requests wait in the carry buffer */
    if (c->carry) { /* the rest of a split request: parse from the carry buffer */
        if (n && !carry_append(c, data, n))
            return false;
        data = c->carry;
        n = c->carry_len;
    }
    c->more = 0;
    size_t used = scan(c, data, n), left = n - used;
    if (left > MAX_HEAD && !c->more) /* (more: whole requests, at most CARRY_MAX) */
        c->reply = REPLY_431;
    if (left == 0 || c->reply) {
        if (c->carry)
            carry_free(c);
        return true;
    }
    if (!c->carry)
        return carry_append(c, data + used, left);
    memmove(c->carry, c->carry + used, left);
    c->carry_len = (uint32_t)left;
    return true;
}

/* Sets up the send of n (at most BATCH) of the connection's 200 responses. */
static void oks_send_init(struct conn *c, uint32_t n)
{
    assert(n <= BATCH);
    weft_send_all_init(&c->tx, c->sock.fd, batch[c->kind], n * oks[c->kind].len);
}

/* WEFT_AWAIT of the connection's read, unless its idle deadline (--idle-ms)
 * passes first: then idle_out is set and the read is left pending. */
#define AWAIT_READ_OR_IDLE(f, cx, self)                                     \
    do {                                                                    \
        (f)->resume = __LINE__;                                             \
        __attribute__((fallthrough));                                       \
    case __LINE__:                                                          \
        if (weft_future_poll(&(self)->rx.base, (cx)) == WEFT_PENDING) {     \
            if (weft_future_poll(&(self)->idle.base, (cx)) == WEFT_PENDING) \
                return WEFT_PENDING;                                        \
            (self)->idle_out = 1;                                           \
        }                                                                   \
    } while (0)

static enum weft_poll conn_poll(struct weft_future *f, struct weft_cx *cx)
{
    struct conn *self = (struct conn *)f;
    WEFT_ASYNC_BEGIN(f);
    if (!conn_join(&self->sock))
        WEFT_RETURN(f); /* accepted just before a stop */
    for (;;) {
        if (!self->more) {
            /* The responses of the last batch, and the next read: one linked
             * pair in the kernel, one completion for both. */
            weft_send_recv_init(&self->rx, self->sock.fd, batch[self->kind],
                                self->count * oks[self->kind].len);
            self->count = 0;
            if (!idle_ms) {
                WEFT_AWAIT(f, cx, &self->rx);
            } else {
                /* A request must come whole within --idle-ms of the last
                 * one's (or of the accept): a silent client, or one that
                 * trickles a head byte by byte, is closed then. */
                if (!self->carry)
                    self->idle_until = weft_now_ns() + idle_ms * WEFT_NS_PER_MS;
                weft_sleep_until_init(&self->idle, self->idle_until);
                AWAIT_READ_OR_IDLE(f, cx, self);
                weft_future_drop(&self->idle.base);
                if (self->idle_out)
                    WEFT_RETURN(f); /* conn_drop drops the read (a cancel) and closes */
            }
            if (self->rx.result < 0) /* an error such as a reset */
                WEFT_RETURN(f);
            if (self->rx.result == 0) /* end of stream (or a stop's SHUT_RD): responses */
                break;                /* may still be queued, so through the linger */
            bool ok = consume(self, self->rx.data, (size_t)self->rx.result);
            weft_future_drop(&self->rx.base); /* the buffer goes back to the ring */
            if (!ok)
                WEFT_RETURN(f);
        } else {
            /* The last read brought requests with another kind of response
             * after this batch's (a HEAD among GETs): this batch goes out on
             * its own, then they are counted from the carry buffer, no read
             * between. A rare case; GET's path stays one send and one read. */
            oks_send_init(self, self->count);
            self->count = 0;
            WEFT_AWAIT(f, cx, &self->tx);
            weft_future_drop(&self->tx.base);
            if (self->tx.result < 0 || !consume(self, NULL, 0))
                WEFT_RETURN(f);
        }

        /* The /heavy requests' work, before their responses go out. */
        if (self->heavy) {
            void *units = (void *)(uintptr_t)self->heavy;
            self->heavy = 0;
            int (*offload)(struct weft_runtime *, weft_blocking_fn *, void *,
                           struct weft_blocking_join *) =
                heavy_mode == HEAVY_COMPUTE ? weft_spawn_compute : weft_spawn_blocking;
            if (heavy_mode == HEAVY_INLINE ||
                offload(weft_runtime_current(), heavy_job, units, &self->job) < 0) {
                heavy_job(units); /* stalls this worker: the point of the demo */
            } else {
                WEFT_AWAIT(f, cx, &self->job);
                weft_future_drop(&self->job.base);
            }
        }

        /* The answers: one send per BATCH responses, so usually one, linked
         * to the next read. All but the last batch are sent here (a rare,
         * deep pipeline). */
        while (self->count > BATCH) {
            oks_send_init(self, BATCH);
            WEFT_AWAIT(f, cx, &self->tx);
            weft_future_drop(&self->tx.base);
            if (self->tx.result < 0)
                WEFT_RETURN(f);
            self->count -= BATCH;
        }
        if (self->reply) {
            if (self->count) {
                oks_send_init(self, self->count);
                WEFT_AWAIT(f, cx, &self->tx);
                weft_future_drop(&self->tx.base);
            }
            const char *r = replies[self->reply];
            if (*r) {
                weft_send_all_init(&self->tx, self->sock.fd, r, strlen(r));
                WEFT_AWAIT(f, cx, &self->tx);
            }
            break; /* requests after it are dropped, not answered */
        }
        /* Stopping, and the request that was in hand at the stop is
         * complete, yet this read ended inside a later one: shut the reading
         * side as the stop does for idle connections (the bytes already
         * queued are still read and answered, then end of stream). Without
         * it a client that keeps pipelining, its reads never ending on a
         * request boundary, held the connection (and the exit) until the
         * drain timeout, which then reset it. */
        if (server_stopping() && self->carry && self->count && !self->shut) {
            shutdown(self->sock.fd, SHUT_RD);
            self->shut = 1;
        }
        if (server_stopping() && !self->carry) {
            /* Stopping, and the request in hand is complete: its response
             * is the last and says "Connection: close" (RFC 9112 9.6), the
             * ones before it as they were. */
            if (self->count > 1) {
                oks_send_init(self, self->count - 1);
                WEFT_AWAIT(f, cx, &self->tx);
                weft_future_drop(&self->tx.base);
                if (self->tx.result < 0)
                    WEFT_RETURN(f);
            }
            if (self->count) {
                self->kind = (uint8_t)((self->kind & OK_HEAD) | OK_CLOSE);
                oks_send_init(self, 1);
                WEFT_AWAIT(f, cx, &self->tx);
            }
            break;
        }
    }
    /* Close only once the client has every response (server.h: a close
     * with input unread would reset them away). */
    weft_future_drop(&self->tx.base);
    conn_linger_init(&self->linger, self->sock.fd);
    WEFT_AWAIT(f, cx, &self->linger);
    WEFT_ASYNC_END(f);
}

/* Runs once: when the task finishes, or when the runtime drops it at exit. */
static void conn_drop(struct weft_future *f)
{
    struct conn *self = (struct conn *)f;
    weft_future_drop(&self->tx.base); /* whichever of tx, job and linger is live: its drop runs */
    weft_future_drop(&self->rx.base);
    free(self->carry);
    conn_close(&self->sock);
}

static const struct weft_future_ops conn_ops = { conn_poll, conn_drop };

/* Called by the accept loop for each new socket. */
static void conn_start(struct weft_runtime *rt, int fd)
{
    struct conn c = { .base = { &conn_ops, 0 }, .sock = { .fd = fd } };
    conn_spawn(rt, &c.base, sizeof(c), fd, "http-conn"); /* copies c into the new task */
}

int main(int argc, char **argv)
{
    classes_init();
    for (size_t k = 0; k < OK_KINDS; k++)
        for (size_t i = 0; oks[k].s && i < BATCH; i++)
            memcpy(batch[k] + i * oks[k].len, oks[k].s, oks[k].len);
    static const char *const extra[] = { "heavy", "heavy-ms", "blocking-prio", "blocking-threads",
                                         "compute-slice-us", "idle-ms", NULL };
    static const struct server_def def = {
        "weft-http", conn_start, READ_SIZE, extra,
        " [--heavy inline|blocking|compute] [--heavy-ms MS] [--blocking-prio normal|nice|idle]"
        " [--blocking-threads N] [--compute-slice-us US|off] [--idle-ms MS]",
        http_option, http_configure,
    };
    return server_main(argc, argv, &def);
}
