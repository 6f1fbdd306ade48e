//! Tokio TCP server, hand-rolled over TcpStream (no hyper): the Tokio peer for
//! run.sh's http, echo, echo_open and idle sections (our rebuild of the shared
//! peers' tokio_srv, whose source is missing).
//!
//! usage: tokio_srv http|echo PORT [WORKERS=2]
//!
//! Runtime: one multi-thread runtime with WORKERS worker threads. The accept loop
//! runs in a spawned task (so on a worker, not on the main thread); every accepted
//! connection gets TCP_NODELAY (as the C and Go peers do) and its own spawned
//! task. Listener: 127.0.0.1:PORT, SO_REUSEADDR, backlog 4096 (the C peers'
//! value; TcpListener::bind would use 1024).
//!
//! http: every request ends at CRLFCRLF; bodies are not expected. Each request is
//!   answered with the fixed 78-byte response
//!       HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!
//!   Connections are keep-alive. Per read, every complete request in the buffer
//!   gets its response appended to one output Vec, in order, which is sent with a
//!   single write_all (one write per read batch, so a pipelined batch of 16
//!   requests costs one read and one write). An incomplete request stays at the
//!   front of the buffer until the rest arrives. Buffers per connection: a 4 KiB
//!   read buffer inside the task (the size tokio's own examples use) and an output
//!   Vec allocated on the first response and reused. A request that does not fit
//!   in 4 KiB closes the connection.
//! echo: every byte read is written back (read into an 8 KiB buffer inside the
//!   task, the default size of std's and Tokio's BufReader, then write_all).
//!
//! Either way the connection closes on EOF or any I/O error. Both buffers live in
//! the task's future, so the idle section's per-connection RSS includes them.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_peers::{accept_loop, request_end};

const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!";
const HTTP_BUF: usize = 4096;
const ECHO_BUF: usize = 8192;

#[derive(Clone, Copy)]
enum Proto {
    Http,
    Echo,
}

async fn serve_http(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; HTTP_BUF];
    let mut filled = 0; // buf[..filled] holds bytes not yet consumed
    let mut out: Vec<u8> = Vec::new();
    loop {
        if filled == buf.len() {
            return Ok(()); // one request larger than the buffer: give up on it
        }
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(()); // peer closed
        }
        filled += n;
        // Answer every complete request in this batch, in order.
        let mut used = 0;
        while let Some(end) = request_end(&buf[used..filled]) {
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

async fn serve_echo(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; ECHO_BUF];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: tokio_srv http|echo PORT [WORKERS=2]");
        std::process::exit(2)
    };
    if args.len() < 3 {
        usage();
    }
    let proto = match args[1].as_str() {
        "http" => Proto::Http,
        "echo" => Proto::Echo,
        _ => usage(),
    };
    let port: u16 = args[2].parse().unwrap_or_else(|_| usage());
    let workers: usize = args.get(3).map_or(Some(2), |w| w.parse().ok()).unwrap_or_else(|| usage());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!("tokio_srv {} on 127.0.0.1:{port} workers={workers}", args[1]);
    let serve_one = move |s| {
        tokio::spawn(async move {
            let _ = match proto { // errors (resets etc.) just end the connection
                Proto::Http => serve_http(s).await,
                Proto::Echo => serve_echo(s).await,
            };
        });
    };
    let res = rt.block_on(async move { tokio::spawn(accept_loop(port, serve_one)).await.unwrap() });
    if let Err(e) = res {
        eprintln!("tokio_srv: {e}");
        std::process::exit(1);
    }
}
