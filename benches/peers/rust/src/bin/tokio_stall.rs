//! Tokio CPU-stall demo: the Tokio peer for run.sh's "stall" section and
//! benches/stall_compare.sh (our rebuild of the shared peers' tokio_stall, whose
//! source is missing). It shows what CPU-bound work does to the other
//! connections of a work-stealing runtime, done inline on a worker or moved to
//! the blocking pool.
//!
//! usage: tokio_stall inline|blocking|compute PORT [WORKERS=2] [HEAVY_MS=5]
//!
//! Runtime: one multi-thread runtime with WORKERS worker threads (and Tokio's
//! default blocking pool, up to 512 threads, for `blocking`). The accept loop runs
//! in a spawned task; every accepted connection gets TCP_NODELAY and its own
//! spawned task. Listener: 127.0.0.1:PORT, SO_REUSEADDR, backlog 4096 (as
//! tokio_srv).
//!
//! HTTP, as tokio_srv http: every request ends at CRLFCRLF; bodies are not
//! expected. Each request is answered with the fixed 78-byte response
//!     HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!
//! on a keep-alive connection. Per read, every complete request in the buffer is
//! handled in order and its response appended to one output Vec, sent with a
//! single write_all (one write per read batch). 4 KiB read buffer per
//! connection; a request that does not fit closes the connection.
//!
//! The stall: a request whose path (the request line's second token, up to an
//! optional '?') is `/heavy` first burns about HEAVY_MS ms of CPU, then gets
//! the same response. Every other path is light (no work beyond the parse).
//!   inline:   the work runs right in the connection's task, on the worker
//!             thread, so that worker runs nothing else meanwhile (the tasks
//!             queued behind it wait, unless another worker steals them).
//!   blocking: the work runs in tokio::task::spawn_blocking, and the connection's
//!             task awaits its JoinHandle, so the workers stay free for I/O.
//!   compute:  the work runs on rayon's global pool (one thread per CPU, its
//!             default), handed over with rayon::spawn and awaited through a
//!             tokio oneshot channel: what Tokio's documentation advises for
//!             CPU-bound work (the peer of weft's weft_spawn_compute).
//! The work is a dependent multiply/xor-shift chain (an LCG step plus a mix) over
//! a u64 seeded through an optimization barrier, its result also passed through
//! the barrier, so the compiler can neither precompute nor drop it. Calibration,
//! at start on the main thread before the runtime serves anything, in thread CPU
//! time (CLOCK_THREAD_CPUTIME_ID, so preemption by other load on the shared
//! machine does not count): the iteration count is doubled from 2^14 until one
//! run of the loop takes >= 10 ms, that count is timed 7 more times, 20 ms
//! apart (a slow spell of the shared machine tends to last tens of ms), and the
//! fastest (the least disturbed) gives iterations per ms; HEAVY_MS x that is the
//! per-request count (printed at start; ~2.9M for 5 ms on the 2-CPU dev machine).
//! A /heavy request thus costs about HEAVY_MS ms of CPU; its wall time is longer
//! whenever the thread running it is preempted.
//!
//! Prints one line to stderr at start: mode, address, workers, HEAVY_MS and the
//! calibrated iteration count. The connection closes on EOF or any I/O error.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_peers::{accept_loop, black_box, request_end};

const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";
const HTTP_BUF: usize = 4096;

#[derive(Clone, Copy)]
enum Mode {
    Inline,
    Blocking,
    Compute,
}

/// The CPU work: `iters` dependent steps of an LCG plus an xor-shift mix.
#[inline(never)]
fn burn(iters: u64, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..iters {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        x ^= x >> 29;
    }
    x
}

/// CPU time of the calling thread (so time the thread was preempted for does not count).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Thread CPU time one burn(iters) takes.
fn timed_burn(iters: u64) -> Duration {
    let t = thread_cpu();
    black_box(burn(iters, black_box(iters)));
    thread_cpu() - t
}

/// Iterations of burn() that take about `ms` milliseconds on this machine.
fn calibrate(ms: f64) -> u64 {
    let mut n: u64 = 1 << 14;
    while timed_burn(n) < Duration::from_millis(10) {
        n *= 2;
    }
    let best = (0..7)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20)); // spread the samples out
            timed_burn(n)
        })
        .min()
        .unwrap();
    let per_ms = n as f64 / (best.as_secs_f64() * 1e3);
    (per_ms * ms).round() as u64
}

/// Whether the request head `req` asks for /heavy (path before any '?').
fn is_heavy(req: &[u8]) -> bool {
    let line = req.split(|&c| c == b'\r').next().unwrap_or(&[]);
    let target = line.split(|&c| c == b' ').nth(1).unwrap_or(&[]);
    let path = target.split(|&c| c == b'?').next().unwrap_or(&[]);
    path == b"/heavy"
}

async fn heavy(mode: Mode, iters: u64, seed: u64) {
    match mode {
        Mode::Inline => {
            black_box(burn(iters, black_box(seed)));
        }
        Mode::Blocking => {
            let r = tokio::task::spawn_blocking(move || burn(iters, black_box(seed)))
                .await
                .expect("spawn_blocking");
            black_box(r);
        }
        Mode::Compute => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            rayon::spawn(move || {
                let _ = tx.send(burn(iters, black_box(seed))); // the receiver may be gone
            });
            black_box(rx.await.expect("rayon job"));
        }
    }
}

async fn serve(mut s: TcpStream, mode: Mode, iters: u64) -> std::io::Result<()> {
    let mut buf = [0u8; HTTP_BUF];
    let mut filled = 0; // buf[..filled] holds bytes not yet consumed
    let mut out: Vec<u8> = Vec::new();
    let mut served: u64 = 0; // seeds the work, differently per request
    loop {
        if filled == buf.len() {
            return Ok(()); // one request larger than the buffer: give up on it
        }
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(()); // peer closed
        }
        filled += n;
        // Handle every complete request in this batch, in order.
        let mut used = 0;
        while let Some(end) = request_end(&buf[used..filled]) {
            if is_heavy(&buf[used..used + end]) {
                heavy(mode, iters, served).await;
            }
            served += 1;
            out.extend_from_slice(RESP);
            used += end;
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        // Keep a partial request at the front of the buffer.
        buf.copy_within(used..filled, 0);
        filled -= used;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: tokio_stall inline|blocking|compute PORT [WORKERS=2] [HEAVY_MS=5]");
        std::process::exit(2)
    };
    if args.len() < 3 {
        usage();
    }
    let mode = match args[1].as_str() {
        "inline" => Mode::Inline,
        "blocking" => Mode::Blocking,
        "compute" => Mode::Compute,
        _ => usage(),
    };
    let port: u16 = args[2].parse().unwrap_or_else(|_| usage());
    let workers: usize = args.get(3).map_or(Some(2), |w| w.parse().ok()).unwrap_or_else(|| usage());
    let heavy_ms: f64 = args.get(4).map_or(Some(5.0), |w| w.parse().ok()).unwrap_or_else(|| usage());
    if workers == 0 || !(heavy_ms >= 0.0) {
        usage();
    }
    let iters = calibrate(heavy_ms);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!(
        "tokio_stall {} on 127.0.0.1:{port} workers={workers} heavy_ms={heavy_ms} ({iters} iterations)",
        args[1]
    );
    let serve_one = move |s| {
        tokio::spawn(async move {
            let _ = serve(s, mode, iters).await; // errors (resets etc.) just end it
        });
    };
    let res = rt.block_on(async move { tokio::spawn(accept_loop(port, serve_one)).await.unwrap() });
    if let Err(e) = res {
        eprintln!("tokio_stall: {e}");
        std::process::exit(1);
    }
}
