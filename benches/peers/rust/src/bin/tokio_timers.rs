//! Tokio timer benchmarks: the Tokio peer for run.sh's "Timers (tokio_timers)"
//! table (our rebuild of the shared peers' tokio_timers, whose source is missing).
//!
//! usage: tokio_timers [WORKERS=2] [REPS=3] [TASKS=1000000]
//!
//! Runtime: one multi-thread runtime with WORKERS worker threads and the time
//! driver enabled. Each benchmark body runs inside a freshly spawned task (the
//! main thread only does block_on(spawn(body))). Each benchmark runs REPS times;
//! every metric is reported as the median over the reps, with min and max.
//! The benchmarks run in the order below, the big one first so it starts from a
//! fresh process heap.
//!
//! Workloads (N = TASKS, printed as 1M / 100k / ... in the names):
//!   sleep_random_1_100ms(N tasks)_wall_ms
//!       The body spawns N tasks; task i sleeps 1 + splitmix64(i) % 100 ms
//!       (deterministic, the same every run) with tokio::time::sleep, then counts
//!       down a shared latch (atomic + Notify). JoinHandles are dropped. The body
//!       waits for the latch. Wall = from just before the first spawn until the
//!       body has been woken by the last task, in ms.
//!   sleep_random_1_100ms(N tasks)_peak_rss_MiB
//!       VmHWM from /proc/self/status after the run, in MiB. Before each rep
//!       freed heap memory is returned to the kernel (malloc_trim(0)) and the high
//!       water mark is reset ("5" > /proc/self/clear_refs), so each rep measures
//!       its own peak, not the previous rep's.
//!   sleep_random_1_100ms(N tasks)_bytes_per_task
//!       (VmHWM after - VmRSS before the spawns) / N, in bytes.
//!   timeout_ready(100000)
//!       ns per op: tokio::time::timeout(1 s, std::future::ready(i)).await,
//!       100000 times in sequence in one task (the inner future is always ready,
//!       so this is the cost of creating, polling and dropping an unfired timer).
//!       One warm-up run before the timed reps.
//!   timeout_ready(Wx(100000/W) concurrent)   (W = WORKERS; e.g. 2x50000)
//!       The same 100000 ops split over W tasks running at once (one per worker,
//!       the shape of tokio's benches/time_timeout.rs); ns = wall / 100000. In
//!       Tokio 1.24 dropping any timer entry takes the time driver's one global
//!       mutex, so this shows that lock contended across workers. (The shared
//!       reference's 193.7 ns for timeout_ready(100000) matches this shape, not
//!       the single-task one, on this machine.)
//!   sleep_1ms_oversleep_p50_us / sleep_1ms_oversleep_p99_us
//!       One task, otherwise idle runtime: 1000 times t0 = Instant::now();
//!       sleep(1 ms).await; oversleep = t0.elapsed() - 1 ms. p50 and p99 (nearest
//!       rank) of the 1000 oversleeps, in us. (Tokio's timer wheel has 1 ms
//!       resolution and rounds deadlines up, so ~1 ms of oversleep is expected.)
//!
//! Output: a human-readable line per metric, then `RESULT tokio <name> <median>`.

use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use weft_peers::{arg, black_box, Done};

/// SplitMix64: a small deterministic hash, used as the per-task PRNG.
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A field of /proc/self/status in kB (e.g. "VmRSS", "VmHWM").
fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Give freed heap memory back to the kernel and reset VmHWM to the current RSS.
fn reset_memory_baseline() {
    // SAFETY: malloc_trim only releases free memory; it is safe to call anytime.
    unsafe {
        libc::malloc_trim(0);
    }
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("warning: cannot reset VmHWM ({e}); peak RSS of reps after the first is the overall peak");
    }
}

/// "1M", "100k", or the plain number: the task count as it appears in names.
fn count_name(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Print the median (plus min, max) and the machine-readable RESULT line.
fn report(name: &str, mut v: Vec<f64>, unit: &str) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    println!(
        "{name:<48} {med:>12.1} {unit}  (min {:.1}, max {:.1}, n={})",
        v[0],
        v[v.len() - 1],
        v.len()
    );
    println!("RESULT tokio {name} {med:.1}");
}

/// Spawns `n` tasks sleeping 1-100 ms each; returns the wall time until the last
/// one has finished.
async fn sleep_random(n: usize) -> Duration {
    let done = Done::new(n);
    let t0 = Instant::now();
    for i in 0..n {
        let ms = 1 + splitmix64(i as u64) % 100;
        let done = done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            done.hit();
        });
    }
    done.wait().await;
    t0.elapsed()
}

/// `total` ops of timeout_ready split over `tasks` concurrently running tasks.
async fn timeout_ready_concurrent(total: u64, tasks: u64) {
    let handles: Vec<_> = (0..tasks).map(|_| tokio::spawn(timeout_ready(total / tasks))).collect();
    for h in handles {
        h.await.unwrap();
    }
}

async fn timeout_ready(n: u64) {
    let mut sum = 0u64;
    for i in 0..n {
        sum += tokio::time::timeout(Duration::from_secs(1), std::future::ready(i))
            .await
            .unwrap();
    }
    black_box(sum);
}

/// Oversleeps of `n` consecutive sleep(1 ms) calls, in us, sorted.
async fn oversleep_1ms(n: usize) -> Vec<f64> {
    let want = Duration::from_millis(1);
    let mut v: Vec<f64> = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        tokio::time::sleep(want).await;
        v.push((t0.elapsed().as_nanos() as f64 - want.as_nanos() as f64) / 1e3);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[f64], p: usize) -> f64 {
    let rank = (p * sorted.len() + 99) / 100; // ceil(p/100 * n), 1-based
    sorted[rank.max(1) - 1]
}

/// Runs `fut` as a spawned task on `rt` and returns its output.
fn in_task<F>(rt: &Runtime, fut: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    rt.block_on(async { tokio::spawn(fut).await.unwrap() })
}

fn main() {
    let workers: usize = arg(1, 2);
    let reps: usize = arg(2, 3).max(1);
    let tasks: usize = arg(3, 1_000_000).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .expect("tokio runtime");
    println!("tokio (multi-thread) workers={workers}, reps={reps}, tasks={tasks} (median, min, max)");

    // 1. N tasks sleeping 1-100 ms: wall time and memory.
    let base = format!("sleep_random_1_100ms({} tasks)", count_name(tasks));
    let (mut wall, mut peak, mut per_task) = (vec![], vec![], vec![]);
    for _ in 0..reps {
        reset_memory_baseline();
        let rss0 = status_kb("VmRSS");
        let d = in_task(&rt, sleep_random(tasks));
        let hwm = status_kb("VmHWM");
        wall.push(d.as_secs_f64() * 1e3);
        peak.push(hwm as f64 / 1024.0);
        per_task.push(hwm.saturating_sub(rss0) as f64 * 1024.0 / tasks as f64);
    }
    report(&format!("{base}_wall_ms"), wall, "ms");
    report(&format!("{base}_peak_rss_MiB"), peak, "MiB");
    report(&format!("{base}_bytes_per_task"), per_task, "B");
    reset_memory_baseline(); // don't carry the 1M tasks' heap into the rest

    // 2. timeout() around an always-ready future.
    const TIMEOUTS: u64 = 100_000;
    in_task(&rt, timeout_ready(TIMEOUTS)); // warm-up
    let ns: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            in_task(&rt, timeout_ready(TIMEOUTS));
            t.elapsed().as_nanos() as f64 / TIMEOUTS as f64
        })
        .collect();
    report(&format!("timeout_ready({TIMEOUTS})"), ns, "ns/op");

    // 2b. The same ops split over one task per worker, all at once.
    let w = workers.max(1) as u64;
    in_task(&rt, timeout_ready_concurrent(TIMEOUTS, w)); // warm-up
    let ns: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            in_task(&rt, timeout_ready_concurrent(TIMEOUTS, w));
            t.elapsed().as_nanos() as f64 / (TIMEOUTS / w * w) as f64
        })
        .collect();
    report(&format!("timeout_ready({w}x{} concurrent)", TIMEOUTS / w), ns, "ns/op");

    // 3. sleep(1 ms) oversleep on an otherwise idle runtime.
    let (mut p50, mut p99) = (vec![], vec![]);
    for _ in 0..reps {
        let v = in_task(&rt, oversleep_1ms(1000));
        p50.push(pct(&v, 50));
        p99.push(pct(&v, 99));
    }
    report("sleep_1ms_oversleep_p50_us", p50, "us");
    report("sleep_1ms_oversleep_p99_us", p99, "us");
}
