//! What the peer benchmark programs share: argument parsing, an optimization
//! barrier, a countdown latch, and the servers' listener and HTTP framing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Positional argument `i`, or `default` if absent/unparsable.
pub fn arg<T: std::str::FromStr>(i: usize, default: T) -> T {
    std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Optimization barrier. Written by hand rather than std::hint::black_box so the
/// crate still builds with Debian 12's rustc 1.63.
#[inline(never)]
pub fn black_box<T>(x: T) -> T {
    // SAFETY: reads a valid, initialized value once and forgets the original.
    unsafe {
        let r = std::ptr::read_volatile(&x);
        std::mem::forget(x);
        r
    }
}

/// Countdown latch: wakes the waiter once `n` tasks have called hit().
/// Notify::notify_one stores a permit, so hitting zero before wait() is fine.
#[derive(Clone)]
pub struct Done(pub Arc<(AtomicUsize, Notify)>);

impl Done {
    pub fn new(n: usize) -> Self {
        Done(Arc::new((AtomicUsize::new(n), Notify::new())))
    }
    pub fn hit(&self) {
        if self.0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .1.notify_one();
        }
    }
    pub async fn wait(&self) {
        self.0 .1.notified().await
    }
}

/// Offset just past the first "\r\n\r\n" in `b` (the end of a request head), if any.
pub fn request_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Accepts connections on 127.0.0.1:`port` forever, handing each (with
/// TCP_NODELAY) to `spawn`. An accept error (e.g. EMFILE) is reported and
/// retried after 10 ms, so the connections already open keep being served.
pub async fn accept_loop<F: FnMut(tokio::net::TcpStream)>(port: u16, mut spawn: F) -> std::io::Result<()> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(([127, 0, 0, 1], port).into())?;
    let listener = sock.listen(4096)?;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                spawn(s);
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
