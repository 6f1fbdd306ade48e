/* tests/test_examples.c: the example servers, run as programs: weft-echo
 * (examples/echo.c) and weft-http (examples/http.c). Each test starts one with
 * fork/exec (--port 0 --workers 2), reads its "listening on" line from a pipe
 * and talks to it over plain blocking sockets on 127.0.0.1.
 *
 * Tested: the startup line; echo of 100 KB written in odd-sized chunks, and
 * of many connections at once; HTTP: one request, keep-alive (an HTTP/1.0
 * request's answered with "Connection: keep-alive"), 16 pipelined requests in
 * one write (exactly 16 responses, in order), a request split across two
 * writes 50 ms apart, 300 pipelined requests of varied sizes dribbled in
 * odd-sized writes (requests split at every possible place, more than one
 * send's batch); HEAD: the head of a GET's response and no body, alone,
 * pipelined between GETs (exact bytes), more than a batch of them before
 * GETs, runs of GETs, HEADs and their HTTP/1.0 keep-alive forms dribbled;
 * --idle-ms: a silent and a trickling client closed at the deadline, not
 * before, an active one kept;
 * graceful stop: SIGTERM/SIGINT with idle connections (exit 0 at once, the
 * clients see end of stream, new connections are refused), SIGTERM in the
 * middle of a request (the request is answered when its rest comes within the
 * drain timeout, then the connection closes; when it never comes, the server
 * exits 0 at the drain timeout and the client sees the connection closed
 * without a response); SIGINT and SIGTERM at once are one stop (the drain
 * goes on); no response is lost to a reset at a close: a client with a small
 * receive buffer that pipelined 1000 requests, a "Connection: close" and 2300
 * more gets 1001 responses then the end of stream, and one that pipelined
 * until the server stopped reading, stopped meanwhile, gets only whole
 * responses; a stop with responses queued on an idle connection and a request
 * sent after it; a reset connection does not hold a stop for its linger.
 *
 * Bad inputs tried: request lines without a version, with two spaces, with
 * HTTP/2.0, with a bare CR, an empty request line, garbage; bare LFs as line
 * ends, inside a head ending in CRLFCRLF, and in a head not yet complete
 * (answered at once); field lines without a colon, with a space before it,
 * without a name, with a CR, a control character or a NUL in the value;
 * Content-Length not a number, negative, or twice with different values
 * (400, then the connection closes); a good request pipelined before a bad
 * one (its 200 first) and one after it (never answered); POST, PUT, OPTIONS,
 * lower-case and near-miss methods (405 with "Allow: GET, HEAD", and close);
 * Transfer-Encoding: chunked (411 and close) and codings that do not end
 * in chunked, empty or not (400 and close); 9 KiB and 20 KiB of head
 * without CRLFCRLF, and a complete request whose head is over 8 KiB (431 and
 * close); bad command lines (exit 2; --idle-ms 0, past an hour, not a
 * number) and a port in use (exit 1). Also: a
 * GET's body is skipped (whole, split across reads, a body that looks like a
 * request), and "Connection: close" or HTTP/1.0 without keep-alive (GET or
 * HEAD) closes after that response, unanswered requests pipelined behind it.

 *
 * The executables are found at ../examples/ relative to this test's own
 * executable (/proc/self/exe), which is where the build tree puts them
 * (build/tests/test_examples, build/examples/weft-*); tests/CMakeLists.txt
 * passes no arguments, and examples/CMakeLists.txt makes this test depend on
 * both servers. A server that outlives a failed test is killed by the
 * fixture, and by PR_SET_PDEATHSIG if the test process itself dies. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define OK "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!"
#define OK_LEN (sizeof(OK) - 1)
/* The answer to a HEAD: OK without its body. */
#define HEAD_OK "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\n"
/* The answers to an HTTP/1.0 request with "Connection: keep-alive". */
#define OK_KEEP                                                                                  \
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n" \
    "\r\nHello, World!"
#define HEAD_OK_KEEP                                                                             \
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n" \
    "\r\n"
/* The last answers of a connection: to "Connection: close", or to HTTP/1.0
 * without keep-alive (RFC 9112 9.6). */
#define OK_CLOSE                                                                                \
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nConnection: close\r\n" \
    "\r\nHello, World!"
#define HEAD_OK_CLOSE                                                                           \
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nConnection: close\r\n" \
    "\r\n"
#define R400 "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#define R405                                                                           \
    "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\n"          \
    "Connection: close\r\n\r\n"
#define R411 "HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#define R431                                                                           \
    "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
#define GET "GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"

/* ---- the server process ------------------------------------------------------ */

static pid_t server_pid = -1; /* the running server, if any */
static int server_out = -1;   /* the read end of its stdout */
static bool server_stderr;    /* its stderr goes there too (set before starting it) */

/* The fixture of every test: no server outlives it. */
static void kill_server(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
        server_pid = -1;
    }
    if (server_out >= 0)
        close(server_out);
    server_out = -1;
}

static void exe_path(const char *name, char *buf, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0, "readlink /proc/self/exe: %s", strerror(errno));
    self[n] = '\0';
    snprintf(buf, len, "%s/../examples/%s", dirname(self), name);
    cr_assert(access(buf, X_OK) == 0, "%s: %s (build the examples first)", buf, strerror(errno));
}

/* Runs examples/`name` with `args` (NULL-terminated, after argv[0]); its
 * stdout goes to `out` if not NULL. Returns the pid. */
static pid_t spawn(const char *name, const char *const *args, int *out)
{
    char path[PATH_MAX + 32];
    exe_path(name, path, sizeof(path));
    const char *argv[20] = { name };
    for (size_t i = 0; args[i]; i++) {
        cr_assert(i + 2 < 20);
        argv[i + 1] = args[i];
    }
    int pfd[2] = { -1, -1 };
    if (out)
        cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (out)
            dup2(pfd[1], STDOUT_FILENO);
        if (out && server_stderr)
            dup2(pfd[1], STDERR_FILENO);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    if (out) {
        close(pfd[1]);
        *out = pfd[0];
    }
    return pid;
}

/* Starts a server on a free port with 2 workers, the given drain timeout
 * (ms, as a string) and up to 6 more arguments (NULL-terminated, or NULL);
 * checks its startup line and returns the port. */
static int start_server_with(const char *name, const char *drain_ms, const char *const *more)
{
    const char *args[18] = { "--port", "0", "--workers", "2", "--drain-ms", drain_ms };
    for (int i = 0; more && more[i]; i++) {
        cr_assert(i < 11);
        args[6 + i] = more[i];
    }
    server_pid = spawn(name, args, &server_out);
    char line[256];
    size_t n = 0;
    while (!memchr(line, '\n', n)) {
        struct pollfd p = { server_out, POLLIN, 0 };
        cr_assert_eq(poll(&p, 1, 10000), 1, "%s printed no line in 10 s", name);
        ssize_t r = read(server_out, line + n, sizeof(line) - 1 - n);
        cr_assert(r > 0, "%s exited before its startup line", name);
        n += (size_t)r;
    }
    line[n] = '\0';
    int port = 0;
    const char *addr = "127.0.0.1"; /* or the --addr given */
    for (int i = 0; more && more[i] && more[i + 1]; i++)
        if (strcmp(more[i], "--addr") == 0)
            addr = more[i + 1];
    char want[96];
    snprintf(want, sizeof(want), strchr(addr, ':') ? "%s listening on [%s]:" : "%s listening on %s:",
             name, addr);
    cr_assert(strncmp(line, want, strlen(want)) == 0, "startup line: %s", line);
    port = atoi(line + strlen(want));
    char exact[128];
    snprintf(exact, sizeof(exact), "%s%d\n", want, port);
    cr_assert_str_eq(line, exact, "exactly one line, and nothing after the port");
    cr_assert(port > 0 && port < 65536);
    return port;
}

static int start_server(const char *name, const char *drain_ms)
{
    return start_server_with(name, drain_ms, NULL);
}

/* Sends `sig` and waits for the server to exit (at most `secs`): returns the
 * seconds it took, and asserts exit status 0. */
static double stop_server(int sig, double secs)
{
    double t0 = now_s();
    cr_assert_eq(kill(server_pid, sig), 0);
    int status;
    pid_t r;
    while ((r = waitpid(server_pid, &status, WNOHANG)) == 0) {
        cr_assert(now_s() - t0 < secs, "the server did not exit within %.1f s", secs);
        sleep_us(2000);
    }
    cr_assert_eq(r, server_pid);
    server_pid = -1;
    cr_assert(WIFEXITED(status), "the server died of signal %d", WTERMSIG(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "exit status %d", WEXITSTATUS(status));
    return now_s() - t0;
}

/* Runs examples/`name` with `args` to completion; returns its exit status. */
static int run_status(const char *name, const char *const *args)
{
    pid_t pid = spawn(name, args, NULL);
    int status;
    double t0 = now_s();
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_s() - t0 > 10) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            cr_assert_fail("%s did not exit", name);
        }
        sleep_us(2000);
    }
    cr_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* ---- a client ---------------------------------------------------------------- */

/* A client socket connected to `port`; its receive buffer `rcvbuf` bytes
 * (set before the connect, which fixes the window), or the default for 0. */
static int try_dial_rcvbuf(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    if (rcvbuf)
        cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    struct timeval tv = { 5, 0 }; /* no read or write blocks a test for longer */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

static int try_dial(int port)
{
    return try_dial_rcvbuf(port, 0);
}

static int dial_rcvbuf(int port, int rcvbuf)
{
    int fd = try_dial_rcvbuf(port, rcvbuf);
    cr_assert(fd >= 0, "connect: %s", strerror(-fd));
    return fd;
}

static int dial(int port)
{
    return dial_rcvbuf(port, 0);
}

static void send_bytes(int fd, const void *p, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t r = send(fd, (const char *)p + done, n - done, MSG_NOSIGNAL);
        cr_assert(r > 0, "send: %s", strerror(errno));
        done += (size_t)r;
    }
}

static void send_str(int fd, const char *s)
{
    send_bytes(fd, s, strlen(s));
}

/* Reads until n bytes came, the end of stream or an error (the 5 s timeout). */
static size_t read_n(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, buf + got, n - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

/* Reads exactly the bytes of `want` and compares. */
static void expect(int fd, const char *want, size_t n)
{
    char *buf = malloc(n + 1);
    cr_assert(buf);
    size_t got = read_n(fd, buf, n);
    cr_assert_eq(got, n, "got %zu of %zu bytes", got, n);
    buf[n] = '\0';
    cr_assert(memcmp(buf, want, n) == 0, "got: %.200s", buf);
    free(buf);
}

static void expect_str(int fd, const char *want)
{
    expect(fd, want, strlen(want));
}

/* Expects `n` copies of the 200 response, in one or more reads. */
static void expect_oks(int fd, size_t n)
{
    char *want = malloc(n * OK_LEN);
    cr_assert(want);
    for (size_t i = 0; i < n; i++)
        memcpy(want + i * OK_LEN, OK, OK_LEN);
    expect(fd, want, n * OK_LEN);
    free(want);
}

/* The server closed the connection: the next read is the end of stream. */
static void expect_eof(int fd)
{
    char c;
    ssize_t r = recv(fd, &c, 1, 0);
    cr_assert_eq(r, 0, "expected end of stream, got %zd (%s)", r, r < 0 ? strerror(errno) : "data");
}

/* Nothing more arrives within `ms`. */
static void expect_quiet(int fd, int ms)
{
    struct pollfd p = { fd, POLLIN, 0 };
    cr_assert_eq(poll(&p, 1, ms), 0, "unexpected bytes (or close) from the server");
}

/* Starts examples/`name` (a 5 s drain timeout) and connects a client to it. */
static int start_and_dial(const char *name)
{
    return dial(start_server(name, "5000"));
}

/* Nothing more arrives on `fd` within `ms`; then closes it and stops the
 * server with SIGTERM (exit status 0 within 5 s). */
static void expect_quiet_then_stop(int fd, int ms)
{
    expect_quiet(fd, ms);
    close(fd);
    stop_server(SIGTERM, 5);
}

/* ---- echo ---------------------------------------------------------------------- */

Test(echo, hundred_kb_in_odd_sized_chunks, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-echo");
    static const size_t sizes[] = { 1, 7, 3001, 2, 4095, 4097, 13, 8191, 1000, 65537 };
    enum { TOTAL = 100000 };
    static char payload[TOTAL], back[TOTAL];
    for (size_t i = 0; i < TOTAL; i++)
        payload[i] = (char)(i * 7 + i / 251);
    size_t off = 0;
    for (size_t k = 0; off < TOTAL; k++) {
        size_t n = sizes[k % 10] < TOTAL - off ? sizes[k % 10] : TOTAL - off;
        send_bytes(fd, payload + off, n);
        cr_assert_eq(read_n(fd, back + off, n), n, "chunk %zu (%zu bytes at %zu)", k, n, off);
        off += n;
    }
    cr_assert(memcmp(payload, back, TOTAL) == 0);
    expect_quiet_then_stop(fd, 50);
}

/* 900 connections, each with a message in flight at once: more than the
 * server's 2 x 256 ring buffers. Each connection holds a buffer from its
 * receive to its echo's end; one that kept it until its next receive (as
 * weft-echo once did) would leave the rest waiting for good (reads time out
 * after 5 s: the test fails). */
Test(echo, many_connections_at_once, .fini = kill_server, .timeout = 60)
{
    enum { N = 900 };
    struct rlimit rl;
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 2 * N) { /* the server inherits it too */
        rl.rlim_cur = rl.rlim_max < 4 * N ? rl.rlim_max : 4 * N;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    if (rl.rlim_cur < N + 64)
        cr_skip_test("RLIMIT_NOFILE hard limit %lu is under %d", (unsigned long)rl.rlim_max, N + 64);
    int port = start_server("weft-echo", "5000");
    static int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = dial(port);
    for (int round = 0; round < 3; round++) {
        static char msg[N][32];
        for (int i = 0; i < N; i++) {
            snprintf(msg[i], sizeof(msg[i]), "conn %d round %d", i, round);
            send_str(fds[i], msg[i]);
        }
        for (int i = 0; i < N; i++)
            expect_str(fds[i], msg[i]);
    }
    for (int i = 0; i < N; i++)
        close(fds[i]);
    stop_server(SIGTERM, 5);
}

/* --addr ::1: the startup line brackets the address, and the echo works
 * over IPv6. */
Test(echo, listens_on_ipv6_loopback, .fini = kill_server, .timeout = 30)
{
    int s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
    bool v6 = s >= 0 && bind(s, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (s >= 0)
        close(s);
    if (!v6)
        cr_skip_test("IPv6 loopback (::1) is not available here");
    const char *more[] = { "--addr", "::1", NULL };
    int port = start_server_with("weft-echo", "5000", more);
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sa.sin6_port = htons((uint16_t)port);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect: %s", strerror(errno));
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    send_str(fd, "over v6");
    expect_str(fd, "over v6");
    close(fd);
    stop_server(SIGTERM, 5);
}

Test(echo, sigint_with_idle_connections_exits_at_once, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-echo", "5000");
    int idle = dial(port), used = dial(port);
    send_str(used, "ping");
    expect_str(used, "ping");
    sleep_us(50000); /* let the server take `idle` from the backlog */
    double took = stop_server(SIGINT, 2.5); /* well within the 5 s drain timeout */
    cr_assert(took < 2.5);
    expect_eof(idle);
    expect_eof(used);
    int again = try_dial(port);
    cr_assert_eq(again, -ECONNREFUSED, "the listener is closed");
    close(idle);
    close(used);
}

/* Connects a client that sends until both directions are full, and never
 * reads: the server's echo waits for room in the socket, so at a stop its
 * connection cannot finish. Full means: no send went through for 0.2 s and
 * the bytes queued in our socket did not move for 0.3 s more (a server that
 * was only slow, on a loaded machine, would have taken some). Returns the
 * socket. */
static int stuck_client(int port)
{
    int fd = dial(port);
    cr_assert_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    static char chunk[65536];
    size_t sent = 0;
    for (;;) {
        double quiet_since = now_s();
        while (now_s() - quiet_since < 0.2) {
            ssize_t n = send(fd, chunk, sizeof chunk, MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
                quiet_since = now_s();
            } else {
                cr_assert(n < 0 && errno == EAGAIN, "send: %s", strerror(errno));
                sleep_us(5000);
            }
            cr_assert_lt(sent, (size_t)256 << 20, "256 MiB sent and the server still reads");
        }
        int q0 = -1, q1 = -2;
        cr_assert_eq(ioctl(fd, SIOCOUTQ, &q0), 0);
        sleep_us(300000);
        cr_assert_eq(ioctl(fd, SIOCOUTQ, &q1), 0);
        if (q0 == q1)
            return fd;
    }
}

/* A client that never reads: the drain timeout (1 s) ends the wait and the
 * server exits 0, soon after. */

Test(echo, sigterm_with_a_client_not_reading_exits_at_drain_timeout, .fini = kill_server,
     .timeout = 30)
{
    int port = start_server("weft-echo", "1000");
    int fd = stuck_client(port);
    double took = stop_server(SIGTERM, 3);
    cr_assert(took >= 0.95, "exited after %.2f s, before the 1 s drain timeout", took);
    cr_assert(took < 1.8, "exited %.2f s after the stop: the drain timeout is 1 s", took);
    close(fd);
}

/* The same with a 60 s drain timeout: a second signal ends the drain. */
Test(echo, a_second_signal_ends_the_drain, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-echo", "60000");
    int fd = stuck_client(port);
    cr_assert_eq(kill(server_pid, SIGTERM), 0);
    sleep_us(200000);
    cr_assert_eq(waitpid(server_pid, NULL, WNOHANG), 0, "exited before the drain timeout");
    double took = stop_server(SIGINT, 2);
    cr_assert_lt(took, 1.0, "the drain went on %.2f s after the second signal", took);
    close(fd);
}

/* A client that flooded the server without reading resets its connection:
 * the server does not wait for a send queue that will never empty (it still
 * counts the lost bytes), so a stop right after ends at once. Before, the
 * closing connection waited out its 2 s linger and held the drain. */
Test(echo, a_reset_connection_does_not_linger, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-echo", "5000");
    int fd = stuck_client(port);
    cr_assert_eq(weft_socket_set_linger(fd, true, 0), 0);
    close(fd); /* a reset, the server's send queue full */
    sleep_us(100000);
    double took = stop_server(SIGTERM, 5);
    cr_assert_lt(took, 1.0, "the stop waited %.2f s for a reset connection", took);
}

/* ---- a stop while a client has output queued ---------------------------------------- */

/* Sends on the non-blocking fd what `next` gives for each stream offset (a
 * chunk starting there) until a send finds no room twice, 200 ms apart: the
 * server stopped reading, its send queue full. Returns the bytes sent. */
static size_t send_until_blocked(int fd, const void *(*next)(size_t at, size_t *len))
{
    size_t sent = 0;
    for (int blocked = 0; blocked < 2;) {
        size_t len;
        const void *p = next(sent, &len);
        ssize_t r = send(fd, p, len, MSG_NOSIGNAL);
        if (r > 0) {
            sent += (size_t)r;
            blocked = 0;
        } else {
            cr_assert(r < 0 && errno == EAGAIN, "send: %s", strerror(errno));
            blocked++;
            sleep_us(200000);
        }
        cr_assert_lt(sent, (size_t)64 << 20, "64 MiB sent and the server still reads");
    }
    return sent;
}

/* Then the stop, and the client reads only 500 ms later (blocking, 5 s at
 * most per read). */
static void stop_then_read_late(int fd)
{
    sleep_us(300000);
    cr_assert_eq(kill(server_pid, SIGTERM), 0);
    sleep_us(500000);
    cr_assert_eq(fcntl(fd, F_SETFL, 0), 0);
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* Bytes of a pattern: byte i of the stream is i % 251. */
static const void *pattern_at(size_t at, size_t *len)
{
    static unsigned char buf[1 << 16];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)((at + i) % 251);
    *len = sizeof buf;
    return buf;
}

/* A stop while a client has echoes queued that it has not read (it sent
 * until the server stopped reading): once it reads, it gets every byte the
 * server read back, in order, then the end of stream; never a reset that
 * throws the queued echoes away (server.h: conn_linger). */
Test(echo, stop_with_echoes_queued_loses_none, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-echo", "3000");
    int fd = dial_rcvbuf(port, 4096);
    cr_assert_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    size_t sent = send_until_blocked(fd, pattern_at), got = 0;
    stop_then_read_late(fd);
    static unsigned char buf[1 << 16];
    ssize_t r;
    while ((r = recv(fd, buf, sizeof buf, 0)) > 0) {
        for (ssize_t i = 0; i < r; i++)
            cr_assert_eq(buf[i], (unsigned char)((got + (size_t)i) % 251), "byte %zu",
                         got + (size_t)i);
        got += (size_t)r;
    }
    cr_assert_eq(r, 0, "after %zu of %zu bytes: %s", got, sent, strerror(errno));
    cr_assert_gt(got, 0);
    close(fd);
    stop_server(0, 5);
}

/* ---- http: the happy paths ------------------------------------------------------- */

Test(http, single_request, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    send_str(fd, GET);
    expect_oks(fd, 1);
    expect_quiet_then_stop(fd, 100);
}

/* HTTP/1.1 is kept alive without asking, and its responses never say
 * "Connection: keep-alive", asked or not; HTTP/1.0's do when it asks. */
Test(http, keep_alive_four_requests, .fini = kill_server, .timeout = 30)
{
    static const char *const reqs[] = {
        GET, "GET /a?b=c HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", GET,
        "GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
    };
    static const char *const want[] = { OK, OK_KEEP, OK, OK };
    int fd = start_and_dial("weft-http");
    for (int i = 0; i < 4; i++) {
        send_str(fd, reqs[i]);
        expect_str(fd, want[i]);
    }
    expect_quiet_then_stop(fd, 50);
}

Test(http, sixteen_pipelined_in_one_write, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    char req[16 * sizeof(GET)] = "";
    for (int i = 0; i < 16; i++)
        strcat(req, GET);
    send_str(fd, req);
    expect_oks(fd, 16);
    expect_quiet_then_stop(fd, 100); /* exactly 16 */
}

Test(http, request_split_across_two_writes, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    send_bytes(fd, GET, 10);
    sleep_us(50000);
    expect_quiet(fd, 0);
    send_str(fd, GET + 10);
    expect_oks(fd, 1);
    /* Split inside the CRLFCRLF itself, then a whole request after it. */
    send_bytes(fd, GET, sizeof(GET) - 3);
    sleep_us(50000);
    send_str(fd, GET + sizeof(GET) - 3);
    send_str(fd, GET);
    expect_oks(fd, 2);
    expect_quiet_then_stop(fd, 50);
}

/* Sends all[0..len) in odd-sized writes, pausing now and then, so that
 * requests are split everywhere. */
static void dribble(int fd, const char *all, size_t len)
{
    for (size_t off = 0, k = 0; off < len; k++) {
        size_t n = (size_t[]){ 1, 333, 17, 4099, 2 }[k % 5];
        n = n < len - off ? n : len - off;
        send_bytes(fd, all + off, n);
        off += n;
        if (k % 7 == 0)
            sleep_us(1000);
    }
}

Test(http, many_pipelined_requests_dribbled, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    enum { N = 300 };
    static char all[N * 128];
    size_t len = 0;
    for (int i = 0; i < N; i++)
        len += (size_t)sprintf(all + len, "GET /%d HTTP/1.1\r\nHost: x\r\nX-Pad: %.*s\r\n\r\n", i,
                               i % 40, "........................................");
    dribble(fd, all, len);
    expect_oks(fd, N);
    expect_quiet_then_stop(fd, 100);
}

/* A HEAD gets the head of a GET's response, Content-Length: 13 included, and
 * no body; the connection stays open. Before, 405 and close. */
Test(http, head_gets_the_head_of_a_get, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    send_str(fd, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_str(fd, HEAD_OK);
    expect_quiet(fd, 100); /* no body follows, and no close */
    send_str(fd, GET);
    expect_oks(fd, 1);
    send_str(fd, "HEAD /a?b=c HTTP/1.1\r\n\r\n");
    expect_str(fd, HEAD_OK);
    expect_quiet_then_stop(fd, 100);
}

/* HEADs pipelined among GETs, in one write: each answered in order, and none
 * sent a body (the bytes are exact). Then more HEADs than one send's batch
 * before GETs, and a HEAD with a body (skipped). Before, the first HEAD got
 * 405 and the connection closed. */
Test(http, head_pipelined_between_gets, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    send_str(fd, GET "HEAD / HTTP/1.1\r\n\r\n" GET);
    expect_str(fd, OK HEAD_OK OK);
    expect_quiet(fd, 50);
    static const char head[] = "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n";
    static char reqs[40 * sizeof(head) + 3 * sizeof(GET)], want[40 * sizeof(HEAD_OK) + 3 * OK_LEN];
    size_t rn = 0, wn = 0;
    for (int i = 0; i < 40; i++) {
        rn += (size_t)sprintf(reqs + rn, "%s", head);
        wn += (size_t)sprintf(want + wn, "%s", HEAD_OK);
    }
    for (int i = 0; i < 3; i++) {
        rn += (size_t)sprintf(reqs + rn, "%s", GET);
        wn += (size_t)sprintf(want + wn, "%s", OK);
    }
    send_bytes(fd, reqs, rn);
    expect(fd, want, wn);
    send_str(fd, "HEAD / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" GET);
    expect_str(fd, HEAD_OK OK);
    expect_quiet_then_stop(fd, 100);
}

/* An HTTP/1.0 request with "Connection: keep-alive" is answered with
 * "Connection: keep-alive" (a 1.0 client such as ab -k takes a response
 * without it for the last), and the connection stays open for the next;
 * HTTP/1.1 responses on the same connection, before and after, pipelined or
 * not, stay without it. Before, the header was missing. */
Test(http, http10_keep_alive_is_answered_and_kept, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    send_str(fd, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    expect_str(fd, OK_KEEP);
    expect_quiet(fd, 100); /* still open */
    send_str(fd, "GET /b HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n");
    expect_str(fd, OK_KEEP);
    send_str(fd, "HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    expect_str(fd, HEAD_OK_KEEP);
    send_str(fd, GET);
    expect_str(fd, OK);
    send_str(fd, GET "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                     "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" GET);
    expect_str(fd, OK OK_KEEP OK_KEEP OK);
    expect_quiet_then_stop(fd, 100);
}

/* 300 pipelined requests of the four kinds of response (GET, HEAD, each in
 * HTTP/1.1 and in HTTP/1.0 with keep-alive), in runs of 1 to 40, dribbled
 * in odd-sized writes: the responses come in order, byte for byte. */
Test(http, mixed_kinds_pipelined_and_dribbled, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    static const char *const reqs[4] = {
        GET,
        "HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "HEAD / HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n",
    };
    static const char *const resps[4] = { OK, HEAD_OK, OK_KEEP, HEAD_OK_KEEP };
    enum { N = 300 };
    static char all[N * 64], want[N * 128];
    static const int runs[] = { 1, 40, 3, 1, 1, 33, 2, 7 };
    size_t len = 0, wn = 0;
    for (int i = 0, r = 0, left = 0, kind = 0; i < N; i++, left--) {
        if (left == 0) { /* the next run, of another kind */
            left = runs[r % 8];
            kind = (kind + 1 + r % 3) % 4;
            r++;
        }
        len += (size_t)sprintf(all + len, "%s", reqs[kind]);
        wn += (size_t)sprintf(want + wn, "%s", resps[kind]);
    }
    dribble(fd, all, len);
    expect(fd, want, wn);
    expect_quiet_then_stop(fd, 100);
}

/* ---- http: bad requests ------------------------------------------------------- */

/* Sends `req` on a new connection and expects `want`, then the close. */
static void expect_reply_and_close(int port, const char *req, size_t req_len, const char *want)
{
    int fd = dial(port);
    send_bytes(fd, req, req_len);
    expect_str(fd, want);
    expect_eof(fd);
    close(fd);
}

Test(http, malformed_request_gets_400_and_close, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET /\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET / HTTP/1.1 \r\n\r\n",
        "GET / HTTP/1.1\rX\r\n\r\n",
        "\r\n\nGET / HTTP/1.1\r\n\r\n", /* an empty line with a bare LF */
        "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        /* bare LFs: as line ends, or inside a head that still ends in CRLFCRLF */
        "GET / HTTP/1.1\nHost: x\n\n",
        "GET / HTTP/1.1\r\nHost: x\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\nY: z\r\n\r\n",
        /* field lines that are not `name: value` */
        "GET / HTTP/1.1\r\nfoo bar\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\n: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n",
        /* lengths: not a number, two that differ */
        "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_reply_and_close(port, bad[i], strlen(bad[i]), R400);
    /* A NUL in a field value. */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n";
    expect_reply_and_close(port, nul, sizeof(nul) - 1, R400);
    /* A good request before the bad one is answered first; none after it. */
    expect_reply_and_close(port, GET "BAD\r\n\r\n" GET, strlen(GET "BAD\r\n\r\n" GET), OK R400);
    /* A bare LF is an error as soon as it comes, not at the end of the head. */
    int fd = dial(port);
    send_str(fd, "GET / HTTP/1.1\r\nHost: x\n");
    expect_str(fd, R400);
    expect_eof(fd);
    close(fd);
    stop_server(SIGTERM, 5);
}

/* A body on a GET is skipped, whole, split, or in the next read (alone
 * too); it is
 * never read as a request (a 35-byte body that looks like one). A body of
 * unknown length (Transfer-Encoding, chunked last) gets 411 and close, one
 * of no knowable length (another coding last) 400. */
Test(http, get_with_a_body_skips_it, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    int fd = dial(port);
    send_str(fd, "GET / HTTP/1.1\r\nContent-Length: 35\r\n\r\n" "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    expect_oks(fd, 1);
    expect_quiet(fd, 50);
    send_str(fd, "GET / HTTP/1.1\r\ncontent-length:  10 \r\n\r\nGET /");
    sleep_us(20000);
    send_str(fd, " HTTP" GET); /* the body's last 5 bytes, then a request */
    expect_oks(fd, 2);
    send_str(fd, "GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc" GET);
    expect_oks(fd, 2);
    /* A read that is all body (it came alone, after the head's answer):
     * nothing to count (it once tripped an assert in the sanitizer build). */
    send_str(fd, "HEAD / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
    expect_str(fd, HEAD_OK);
    sleep_us(20000);
    send_str(fd, "hello");
    sleep_us(20000);
    send_str(fd, GET);
    expect_oks(fd, 1);
    expect_quiet(fd, 50);
    close(fd);
    static const char te[] = "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    expect_reply_and_close(port, te, sizeof(te) - 1, R411);
    /* The final coding decides (RFC 9112 6.3): chunked, a body not read (411);
     * any other, a body whose length cannot be known (400). A second field
     * line continues the list. */
    static const struct {
        const char *fields, *want;
    } codings[] = {
        { "Transfer-Encoding: gzip, CHUNKED", R411 },
        { "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked", R411 },
        { "Transfer-Encoding: chunked, gzip", R400 },
        { "Transfer-Encoding: identity", R400 },
        { "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip", R400 },
        { "Transfer-Encoding:", R400 },
        { "Transfer-Encoding: xchunked", R400 },
    };
    for (size_t i = 0; i < sizeof(codings) / sizeof(codings[0]); i++) {
        char req[160];
        int n = snprintf(req, sizeof req, GET "GET / HTTP/1.1\r\n%s\r\n\r\n", codings[i].fields);
        char want[512];
        snprintf(want, sizeof want, OK "%s", codings[i].want); /* the request before it answered */
        expect_reply_and_close(port, req, (size_t)n, want);
    }
    stop_server(SIGTERM, 5);
}

/* Empty lines (CRLF) before a request line are skipped (RFC 9112 2.2), in
 * one read or split across two, first on the connection or between
 * requests; they get no answer of their own. */
Test(http, empty_lines_before_a_request_are_skipped, .fini = kill_server, .timeout = 30)
{
    int fd = start_and_dial("weft-http");
    send_str(fd, "\r\n" GET);
    expect_oks(fd, 1);
    send_str(fd, GET "\r\n\r\n" GET "\r");
    expect_oks(fd, 2);
    sleep_us(20000);
    send_str(fd, "\n" GET);
    expect_oks(fd, 1);
    send_str(fd, "\r\n\r\n");
    expect_quiet_then_stop(fd, 50);
}

/* "Connection: close", and HTTP/1.0 without keep-alive: the response, which
 * says "Connection: close", then the close; requests pipelined after it are
 * not answered. (Before, the response did not say it: RFC 9112 9.6.) */
Test(http, connection_close_is_honoured, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    static const char *const reqs[] = {
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n" GET,
        "GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n" GET,
        "GET / HTTP/1.0\r\n\r\n" GET,
        "GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++)
        expect_reply_and_close(port, reqs[i], strlen(reqs[i]), OK_CLOSE);
    /* After a keep-alive one, as many as asked. */
    static const char three[] = GET GET "GET / HTTP/1.1\r\nConnection: close\r\n\r\n" GET;
    expect_reply_and_close(port, three, sizeof(three) - 1, OK OK OK_CLOSE);
    static const char head[] = GET "HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n";
    expect_reply_and_close(port, head, sizeof(head) - 1, OK HEAD_OK_CLOSE);
    stop_server(SIGTERM, 5);
}

/* HTTP/1.0 without keep-alive (none asked, or "close" too): the response,
 * with "Connection: close", then the close, for a GET and for a HEAD.
 * (Before, a GET passed and a HEAD got 405.) */
Test(http, http10_without_keep_alive_closes, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    static const char *const reqs[] = {
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n" GET,
        "HEAD / HTTP/1.0\r\n\r\n" GET,
        "HEAD / HTTP/1.0\r\nConnection: close\r\n\r\n",
    };
    static const char *const want[] = { OK_CLOSE, OK_CLOSE, HEAD_OK_CLOSE, HEAD_OK_CLOSE };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++)
        expect_reply_and_close(port, reqs[i], strlen(reqs[i]), want[i]);
    /* After keep-alive ones of both kinds, the last. */
    static const char three[] = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                "HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                "GET / HTTP/1.0\r\n\r\n" GET;
    expect_reply_and_close(port, three, sizeof(three) - 1, OK_KEEP HEAD_OK_KEEP OK_CLOSE);
    stop_server(SIGTERM, 5);
}

/* A client with a small receive buffer pipelines 1000 requests, one with
 * "Connection: close", and 2300 more behind it, and reads only 300 ms
 * later: it gets all 1001 responses, then the end of stream. Before, the
 * server closed with input still unread, and the kernel's reset threw away
 * the responses still queued (32 of 1001 arrived, then ECONNRESET). */
Test(http, close_after_a_deep_pipeline_loses_no_response, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    int fd = dial_rcvbuf(port, 4096); /* a client that reads late: its window fills */
    static const char one[] = "GET / HTTP/1.1\r\n\r\n", last[] = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    size_t n1 = sizeof(one) - 1, len = 3300 * n1 + sizeof(last) - 1, at = 0;
    char *reqs = malloc(len);
    cr_assert(reqs);
    for (int i = 0; i < 1000; i++, at += n1)
        memcpy(reqs + at, one, n1);
    memcpy(reqs + at, last, sizeof(last) - 1);
    at += sizeof(last) - 1;
    for (int i = 0; i < 2300; i++, at += n1)
        memcpy(reqs + at, one, n1);
    send_bytes(fd, reqs, len);
    free(reqs);
    sleep_us(300000);
    expect_oks(fd, 1000);
    expect_str(fd, OK_CLOSE);
    expect_eof(fd);
    close(fd);
    stop_server(SIGTERM, 5);
}

/* Methods but GET and HEAD (case matters) get 405 with "Allow: GET, HEAD"
 * and close; the requests before are answered (a HEAD's without a body).
 * Before, Allow said GET alone. */
/* Seconds from t0 until the server ends the connection (end of stream or a
 * reset); fails if bytes come instead, or nothing within `limit` s. */
static double closed_after(int fd, double t0, double limit)
{
    struct pollfd p = { fd, POLLIN, 0 };
    cr_assert_eq(poll(&p, 1, (int)(limit * 1000)), 1, "still open after %.1f s", limit);
    char c;
    ssize_t r = recv(fd, &c, 1, 0);
    cr_assert(r == 0 || (r < 0 && errno == ECONNRESET), "bytes instead of a close");
    return now_s() - t0;
}

/* --idle-ms 500: a request must come whole within 500 ms of the accept or of
 * the last request. A silent client is closed then, not before; one that
 * trickles a head a byte every 50 ms too (bytes do not move the deadline);
 * one that sends whole requests 100 ms apart is answered, and kept. */
Test(http, idle_ms_closes_silent_and_trickling_clients, .fini = kill_server, .timeout = 30)
{
    const char *const idle[] = { "--idle-ms", "500", NULL };
    int port = start_server_with("weft-http", "5000", idle);
    double t0 = now_s();
    int silent = dial(port);
    double t = closed_after(silent, t0, 3);
    cr_assert(t >= 0.49, "a silent client closed after %.3f s, before its 500 ms", t);
    close(silent);

    int trickle = dial(port);
    t0 = now_s();
    send_str(trickle, "GET / HTTP/1.1\r\nX-Slow: ");
    struct pollfd p = { trickle, POLLIN, 0 };
    while (poll(&p, 1, 50) == 0) {
        cr_assert(now_s() - t0 < 2.5, "a trickling client kept its connection 2.5 s");
        send(trickle, "a", 1, MSG_NOSIGNAL);
    }
    t = closed_after(trickle, t0, 1);
    cr_assert(t >= 0.45, "closed after %.3f s", t);
    close(trickle);

    int active = dial(port);
    for (int i = 0; i < 8; i++) {
        sleep_us(100000);
        send_str(active, GET);
        expect_oks(active, 1);
    }
    expect_quiet_then_stop(active, 50);
}

Test(http, other_methods_get_405_and_close, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    static const char *const reqs[] = {
        "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "PUT / HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
        "get / HTTP/1.1\r\n\r\n",
        "head / HTTP/1.1\r\n\r\n",
        "HEADS / HTTP/1.1\r\n\r\n",
        "HEA / HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++)
        expect_reply_and_close(port, reqs[i], strlen(reqs[i]), R405);
    static const char after[] = "HEAD / HTTP/1.1\r\n\r\n" GET "DELETE / HTTP/1.1\r\n\r\n" GET;
    expect_reply_and_close(port, after, sizeof(after) - 1, HEAD_OK OK R405);
    stop_server(SIGTERM, 5);
}

Test(http, oversized_head_gets_431_and_close, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    static char big[20 * 1024 + 64];
    int n = sprintf(big, "GET / HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', sizeof(big) - (size_t)n);
    expect_reply_and_close(port, big, 9 * 1024, R431);  /* no CRLFCRLF yet at 8 KiB */
    expect_reply_and_close(port, big, 20 * 1024, R431); /* more than the server reads */
    /* A complete request, but its head is over 8 KiB. */
    memcpy(big + 9000, "\r\n\r\n", 4);
    expect_reply_and_close(port, big, 9004, R431);
    /* The limit is exact: a head of 8,192 bytes is answered, of 8,193 not. */
    memcpy(big + 8188, "\r\n\r\n", 4);
    int fd = dial(port);
    send_bytes(fd, big, 8192);
    expect_str(fd, OK);
    expect_quiet(fd, 50); /* and the connection stays open */
    close(fd);
    memset(big + 8188, 'a', 4);
    memcpy(big + 8189, "\r\n\r\n", 4);
    expect_reply_and_close(port, big, 8193, R431);
    stop_server(SIGTERM, 5);
}

/* ---- http: graceful stop --------------------------------------------------------- */

Test(http, sigterm_with_idle_connections_exits_at_once, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    int idle = dial(port), kept = dial(port);
    send_str(kept, GET); /* keep-alive, now idle between requests */
    expect_oks(kept, 1);
    sleep_us(50000);
    double took = stop_server(SIGTERM, 2.5);
    cr_assert(took < 2.5, "took %.2f s", took);
    expect_eof(idle);
    expect_eof(kept);
    close(idle);
    close(kept);
}

/* The response to the request in hand at a stop is the last, and says
 * "Connection: close" (RFC 9112 9.6), whatever its kind; the ones the same
 * read completed before it do not. Three connections in the middle of a
 * request at one stop: a GET, a HEAD, and an HTTP/1.0 keep-alive GET with
 * two more GETs sent along with its rest. (Before, none said it.) */
Test(http, sigterm_mid_request_answers_it_then_closes, .fini = kill_server, .timeout = 30)
{
    static const char head[] = "HEAD / HTTP/1.1\r\n\r\n";
    static const char keep10[] = "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    static const char *const reqs[] = { GET, head, keep10 };
    static const char *const after[] = { "", "", GET GET };
    static const char *const want[] = { OK_CLOSE, HEAD_OK_CLOSE, OK_KEEP OK OK_CLOSE };
    int port = start_server("weft-http", "5000"), fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = dial(port);
        send_bytes(fds[i], reqs[i], 12); /* part of a request */
    }
    sleep_us(100000);
    cr_assert_eq(kill(server_pid, SIGTERM), 0);
    sleep_us(100000);
    cr_assert_eq(try_dial(port), -ECONNREFUSED, "the listener is closed while draining");
    for (int i = 0; i < 3; i++) {
        char rest[256]; /* the rest, within the drain timeout, and what comes after it */
        snprintf(rest, sizeof(rest), "%s%s", reqs[i] + 12, after[i]);
        send_str(fds[i], rest);
        expect_str(fds[i], want[i]);
        expect_eof(fds[i]); /* closed after the answer */
        close(fds[i]);
    }
    stop_server(0, 2.5); /* signal 0: already sent, just wait */
}

/* A stop while a client has responses queued that it has not read (its
 * connection otherwise idle): the stop's end of stream goes through the
 * linger too, so a request the client sends after the stop is dropped, not
 * answered with a reset that destroys the queued responses (before: 58 of
 * 320 arrived, then ECONNRESET). */
Test(http, stop_then_a_late_request_loses_no_response, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    int fd = dial_rcvbuf(port, 4096); /* a client that reads late: its window fills */
    for (int i = 0; i < 320; i++)
        send_str(fd, GET);
    sleep_us(300000);
    cr_assert_eq(kill(server_pid, SIGTERM), 0);
    sleep_us(100000);
    send_str(fd, GET); /* after the stop */
    sleep_us(200000);
    expect_oks(fd, 320);
    expect_eof(fd);
    close(fd);
    stop_server(0, 5);
}

/* SIGINT and SIGTERM together (a Ctrl-C to the process group and a wrapper
 * forwarding SIGTERM) are one stop: the drain goes on, and the request in
 * hand is answered. Before, the second was taken for an impatient user's and
 * ended the drain at once. */
Test(http, two_signals_at_once_are_one_stop, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    int fd = dial(port);
    send_bytes(fd, GET, 12);
    sleep_us(100000);
    /* Both waiting at once, whatever the scheduler does between the kills
     * (and the server takes signals within 100 ms of the first as one). */
    cr_assert_eq(kill(server_pid, SIGSTOP), 0);
    cr_assert_eq(kill(server_pid, SIGINT), 0);
    cr_assert_eq(kill(server_pid, SIGTERM), 0);
    cr_assert_eq(kill(server_pid, SIGCONT), 0);
    sleep_us(200000);
    cr_assert_eq(waitpid(server_pid, NULL, WNOHANG), 0, "the drain ended at once");
    send_str(fd, GET + 12);
    expect_str(fd, OK_CLOSE);
    expect_eof(fd);
    close(fd);
    stop_server(0, 2.5);
}

/* Checks 200 responses as they arrive: each is OK, but the last may be
 * OK_CLOSE (the answer to the request in hand at a stop). */
struct oks_check {
    size_t got, close_at; /* bytes so far; where the OK_CLOSE starts */
    bool closing;
};

static void oks_check_take(struct oks_check *c, const char *p, size_t n)
{
    static const char last[] = OK_CLOSE;
    for (size_t i = 0; i < n; i++, c->got++) {
        if (!c->closing && p[i] != OK[c->got % OK_LEN]) {
            c->closing = true;
            c->close_at = c->got - c->got % OK_LEN;
        }
        cr_assert(!c->closing || (c->got - c->close_at < sizeof(last) - 1 &&
                                  p[i] == last[c->got - c->close_at]),
                  "byte %zu", c->got);
    }
}

/* At the end of the stream: how many responses came, each whole. */
static size_t oks_check_end(const struct oks_check *c)
{
    if (c->closing) {
        cr_assert_eq(c->got - c->close_at, sizeof(OK_CLOSE) - 1, "the last response was cut");
        return c->close_at / OK_LEN + 1;
    }
    cr_assert_eq(c->got % OK_LEN, 0, "the last response was cut after %zu bytes", c->got % OK_LEN);
    return c->got / OK_LEN;
}

/* Requests, 5,000 in a row, from the one at stream offset `at` on. */
static const void *requests_at(size_t at, size_t *len)
{
    static const char one[] = "GET / HTTP/1.1\r\n\r\n";
    static char reqs[5000 * (sizeof(one) - 1)];
    if (!reqs[0])
        for (size_t i = 0; i < 5000; i++)
            memcpy(reqs + i * (sizeof(one) - 1), one, sizeof(one) - 1);
    *len = sizeof reqs - at % sizeof reqs;
    return reqs + at % sizeof reqs;
}

/* A stop while a client that pipelined requests until its send blocked reads
 * only 500 ms later: it gets whole responses only (the server closes once its
 * send queue is empty, or after 2 s). Before, the close reset the
 * connection with responses still queued: the client's last one was cut. */
Test(http, stop_with_responses_queued_loses_none, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "3000");
    int fd = dial(port);
    cr_assert_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    send_until_blocked(fd, requests_at); /* the server then leaves input unread */
    stop_then_read_late(fd);
    static char buf[1 << 16];
    struct oks_check ok = { 0 };
    ssize_t r;
    while ((r = recv(fd, buf, sizeof buf, 0)) > 0)
        oks_check_take(&ok, buf, (size_t)r);
    cr_assert_eq(r, 0, "not an end of stream: %s", strerror(errno)); /* nor a reset */
    cr_assert_gt(oks_check_end(&ok), 0);
    close(fd);
    stop_server(0, 5);
}

/* A stop while a client keeps pipelining, its writes straddling requests so
 * that no read ends between two: once the request in hand is answered the
 * server stops reading (the requests already sent are answered), the
 * connection ends and the server exits, well before the 5 s drain timeout,
 * with whole responses only. Before, the connection held on to the drain
 * timeout, which then reset it. */
Test(http, a_client_pipelining_through_a_stop_is_closed_soon, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    int fd = dial(port);
    cr_assert_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    static const char get[] = GET;
    size_t glen = sizeof(get) - 1, sent = 0;
    struct oks_check ok = { 0 };
    static char buf[1 << 16];
    double t0 = now_s(), stop_at = 0, eof_at = 0;
    bool writing = true;
    while (!eof_at && now_s() - t0 < 8) {
        if (writing) { /* the end of one request and the start of the next */
            size_t k = sent ? glen : glen / 2, at = sent % glen;
            char chunk[2 * sizeof get];
            for (size_t i = 0; i < k; i++)
                chunk[i] = get[(at + i) % glen];
            ssize_t r = send(fd, chunk, k, MSG_NOSIGNAL);
            if (r > 0)
                sent += (size_t)r;
            else if (errno != EAGAIN)
                writing = false; /* the server may reset a late send */
        }
        ssize_t r;
        while ((r = recv(fd, buf, sizeof buf, 0)) > 0)
            oks_check_take(&ok, buf, (size_t)r);
        if (r == 0)
            eof_at = now_s();
        else
            cr_assert(errno == EAGAIN, "recv: %s", strerror(errno));
        if (!stop_at && now_s() - t0 > 0.3) {
            cr_assert_gt(ok.got, 0, "no response in 0.3 s");
            cr_assert_eq(kill(server_pid, SIGTERM), 0);
            stop_at = now_s();
        }
        sleep_us(2000);
    }
    cr_assert(eof_at, "the connection was still open 8 s in");
    cr_assert_lt(eof_at - stop_at, 2.5, "the connection ended %.2f s after the stop",
                 eof_at - stop_at);
    oks_check_end(&ok);
    close(fd);
    stop_server(0, 2.5);
}

Test(http, sigterm_mid_request_closes_at_drain_timeout, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "1000");
    int fd = dial(port);
    send_bytes(fd, GET, 12);
    sleep_us(100000);
    double took = stop_server(SIGTERM, 3);
    cr_assert(took >= 0.95, "exited after %.2f s, before the 1 s drain timeout", took);
    cr_assert(took < 1.8, "exited %.2f s after the stop: the drain timeout is 1 s", took);
    expect_eof(fd); /* no response: the request never completed */
    close(fd);
}

/* ---- http: the stall demo (--heavy) ---------------------------------------------- */

/* Seconds one GET of `path` takes on `fd` (its 200 checked). */
static double timed_get(int fd, const char *path)
{
    char req[128];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    double t0 = now_s();
    send_str(fd, req);
    expect_oks(fd, 1);
    return now_s() - t0;
}

/* /heavy burns --heavy-ms of CPU before its 200 (on the pool, or inline);
 * other paths, "/heavyweight" and a query string included, stay light. Every
 * option weft-http has of its own is given (each must be recognized). */
static void heavy_route(const char *mode)
{
    const char *more[] = { "--heavy", mode, "--heavy-ms", "40", "--blocking-threads", "2",
                           "--blocking-prio", "nice", "--compute-slice-us", "1000", NULL };
    int fd = dial(start_server_with("weft-http", "5000", more));
    double heavy = timed_get(fd, "/heavy"), query = timed_get(fd, "/heavy?x=1");
    double light = timed_get(fd, "/heavyweight");
    cr_assert_geq(heavy, 0.030, "/heavy took %.1f ms, not about 40", heavy * 1e3);
    cr_assert_geq(query, 0.030, "/heavy?x=1 took %.1f ms, not about 40", query * 1e3);
    cr_assert_lt(light, 0.030, "/heavyweight took %.1f ms: not light", light * 1e3);
    expect_quiet_then_stop(fd, 10);
}

Test(http, heavy_route_on_the_blocking_pool, .fini = kill_server, .timeout = 30)
{
    heavy_route("blocking");
}

Test(http, heavy_route_on_the_compute_lane, .fini = kill_server, .timeout = 30)
{
    heavy_route("compute");
}

Test(http, heavy_route_inline, .fini = kill_server, .timeout = 30)
{
    heavy_route("inline");
}

/* Inline, a 100 ms /heavy is one poll of 100 ms: the stall detector reports
 * it on stderr, naming the connection's task. (A poll must be seen by two of
 * the monitor's looks, 10 ms apart after a quiet spell; with 40 ms, a
 * monitor kept off the CPUs by a parallel test missed it once in 14 runs.) */
Test(http, inline_stall_names_the_task, .fini = kill_server, .timeout = 30)
{
    server_stderr = true;
    const char *more[] = { "--heavy", "inline", "--heavy-ms", "100", NULL };
    int fd = dial(start_server_with("weft-http", "5000", more));
    timed_get(fd, "/heavy");
    char out[1024];
    size_t n = 0;
    double deadline = now_s() + 5;
    out[0] = '\0';
    while (!strstr(out, "(http-conn)") && n < sizeof(out) - 1 && now_s() < deadline) {
        struct pollfd p = { server_out, POLLIN, 0 };
        if (poll(&p, 1, 100) == 1) {
            ssize_t r = read(server_out, out + n, sizeof(out) - 1 - n);
            cr_assert(r > 0, "the server's output ended: %s", out);
            n += (size_t)r;
            out[n] = '\0';
        }
    }
    cr_assert(strstr(out, "weft: stall: worker ") && strstr(out, "(http-conn)"),
              "no stall report naming http-conn: \"%s\"", out);
    close(fd);
    stop_server(SIGTERM, 5);
}

/* ---- the command line ---------------------------------------------------------------- */

Test(cli, bad_options_exit_2, .fini = kill_server, .timeout = 30)
{
    static const char *const bad[][4] = {
        { "--port", "70000", NULL }, { "--port", "-1", NULL }, { "--workers", "x", NULL },
        { "--workers", "100000", NULL }, { "--bogus", NULL }, { "extra", NULL },
        { "--drain-ms", "", NULL }, { "--workers", "257", NULL }, { "--port", "65536", NULL },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(run_status("weft-echo", bad[i]), 2, "case %zu", i);
        cr_assert_eq(run_status("weft-http", bad[i]), 2, "case %zu", i);
    }
    /* weft-http's own options, and weft-echo, which has none of them */
    static const char *const bad_http[][4] = {
        { "--heavy", "x", NULL }, { "--heavy", NULL }, { "--heavy-ms", "0", NULL },
        { "--heavy-ms", "10001", NULL }, { "--heavy-ms", "5x", NULL },
        { "--blocking-prio", "low", NULL }, { "--blocking-threads", "0", NULL },
        { "--blocking-threads", "65537", NULL }, { "--compute-slice-us", "49", NULL },
        { "--compute-slice-us", "1000001", NULL }, { "--compute-slice-us", "on", NULL },
        { "--idle-ms", "0", NULL }, { "--idle-ms", "3600001", NULL }, { "--idle-ms", "x", NULL },
    };
    for (size_t i = 0; i < sizeof(bad_http) / sizeof(bad_http[0]); i++)
        cr_assert_eq(run_status("weft-http", bad_http[i]), 2, "http case %zu", i);
    const char *const heavy_echo[] = { "--heavy", "inline", NULL };
    cr_assert_eq(run_status("weft-echo", heavy_echo), 2);
}

Test(cli, port_in_use_exits_1, .fini = kill_server, .timeout = 30)
{
    int port = start_server("weft-http", "5000");
    char p[16];
    snprintf(p, sizeof(p), "%d", port);
    const char *args[] = { "--port", p, NULL };
    cr_assert_eq(run_status("weft-echo", args), 1);
    stop_server(SIGTERM, 5);
}
