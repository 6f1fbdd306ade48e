//! Tokio scheduler microbenchmarks: the peer that weft's runtime bench is compared
//! against. Workloads mirror /work/shared/peers/go/cmd/gomicro exactly.
//!
//! usage: tokio_micro [WORKERS=2] [REPS=7]
//!
//! Runtime: one multi-thread runtime with WORKERS worker threads (default blocking
//! pool). Each benchmark body runs inside a freshly spawned task; the main thread
//! times `block_on(spawn(body))`, so spawn + join of the outer task is included
//! (as in gomicro). One warm-up, then REPS timed reps; each rep gives
//! elapsed_ns / ops and the median is reported, along with min and max.
//!
//! Workloads (ops = the divisor):
//!   spawn_many(100000)          spawn 100000 tasks, each hits a shared Done counter
//!                               (atomic + Notify); the body waits for all.  ops=100000
//!   yield_many(200x1000)        spawn 200 tasks, each calls yield_now() 1000 times and
//!                               then hits Done; wait for all.               ops=200000
//!   ping_pong(1 pair x 10000)   per pair: two mpsc::channel(1) (ping, pong); an echo
//!   ping_pong(100 pairs x 1000) task forwards ping->pong until ping closes; a driver
//!                               task sends i on ping and awaits the reply `rounds`
//!                               times, drops ping, hits Done; body waits for all
//!                               pairs.                               ops=pairs*rounds
//!   chained_spawn(1000x100)     a task spawns the next, 1000 spawns deep; the last
//!                               sends on a oneshot that the body awaits; repeated
//!                               100 times.                                  ops=100000
//!   spawn_blocking_seq(10000)   spawn_blocking(trivial closure) and await it, 10000
//!                               times in sequence.                          ops=10000
//!   spawn_blocking_batch(10000) spawn 10000 spawn_blocking closures, then await each
//!                               handle.                                     ops=10000
//!
//! Output: a human-readable line per benchmark, then `RESULT tokio <name> <median>`.

use std::future::Future;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use weft_peers::{arg, black_box, Done};


async fn spawn_many(n: usize) {
    let d = Done::new(n);
    for _ in 0..n {
        let d = d.clone();
        tokio::spawn(async move { d.hit() });
    }
    d.wait().await;
}

async fn yield_many(tasks: usize, yields: usize) {
    let d = Done::new(tasks);
    for _ in 0..tasks {
        let d = d.clone();
        tokio::spawn(async move {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            d.hit();
        });
    }
    d.wait().await;
}

async fn ping_pong(pairs: usize, rounds: u64) {
    let d = Done::new(pairs);
    for _ in 0..pairs {
        let (ping_tx, mut ping_rx) = mpsc::channel::<u64>(1);
        let (pong_tx, mut pong_rx) = mpsc::channel::<u64>(1);
        tokio::spawn(async move {
            while let Some(v) = ping_rx.recv().await {
                if pong_tx.send(v).await.is_err() {
                    break;
                }
            }
        });
        let d = d.clone();
        tokio::spawn(async move {
            for i in 0..rounds {
                ping_tx.send(i).await.unwrap();
                black_box(pong_rx.recv().await.unwrap());
            }
            drop(ping_tx); // ends the echo task, like close(ping) in Go
            d.hit();
        });
    }
    d.wait().await;
}

/// Spawns the next link; after `n` spawns the last link signals `tx`.
fn chain(n: usize, tx: oneshot::Sender<()>) {
    if n == 0 {
        let _ = tx.send(());
        return;
    }
    tokio::spawn(async move { chain(n - 1, tx) });
}

async fn chained_spawn(depth: usize, repeats: usize) {
    for _ in 0..repeats {
        let (tx, rx) = oneshot::channel();
        chain(depth, tx);
        rx.await.unwrap();
    }
}

async fn spawn_blocking_seq(n: u64) {
    let mut sum = 0u64;
    for i in 0..n {
        sum += tokio::task::spawn_blocking(move || black_box(i + 1)).await.unwrap();
    }
    black_box(sum);
}

async fn spawn_blocking_batch(n: u64) {
    let handles: Vec<_> = (0..n)
        .map(|i| tokio::task::spawn_blocking(move || black_box(i + 1)))
        .collect();
    let mut sum = 0u64;
    for h in handles {
        sum += h.await.unwrap();
    }
    black_box(sum);
}

fn main() {
    let workers: usize = arg(1, 2);
    let reps: usize = arg(2, 7).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("tokio runtime");
    println!("tokio (multi-thread) workers={workers}, reps={reps} (median, min, max ns/op)");

    // Times block_on(spawn(body)) so every body runs in a spawned task, not in block_on.
    let run = |name: &str, ops: u64, body: &dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        let once = || rt.block_on(async { tokio::spawn(body()).await.unwrap() });
        once(); // warm-up
        let mut ns: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                once();
                t.elapsed().as_nanos() as f64 / ops as f64
            })
            .collect();
        ns.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = ns[ns.len() / 2];
        println!(
            "{name:<32} {med:>10.1} ns/op  (min {:>8.1}, max {:>8.1})  ops={ops}",
            ns[0],
            ns[ns.len() - 1]
        );
        println!("RESULT tokio {name} {med:.1}");
    };

    run("spawn_many(100000)", 100_000, &|| Box::pin(spawn_many(100_000)));
    run("yield_many(200x1000)", 200_000, &|| Box::pin(yield_many(200, 1000)));
    run("ping_pong(1 pair x 10000)", 10_000, &|| Box::pin(ping_pong(1, 10_000)));
    run("ping_pong(100 pairs x 1000)", 100_000, &|| Box::pin(ping_pong(100, 1000)));
    run("chained_spawn(1000x100)", 100_000, &|| Box::pin(chained_spawn(1000, 100)));
    run("spawn_blocking_seq(10000)", 10_000, &|| Box::pin(spawn_blocking_seq(10_000)));
    run("spawn_blocking_batch(10000)", 10_000, &|| Box::pin(spawn_blocking_batch(10_000)));
}
