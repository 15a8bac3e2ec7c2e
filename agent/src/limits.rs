//! What a flood of clients may cost: the listener accepts at most `max_connections`
//! at once (the rest wait in the kernel's backlog, holding none of our descriptors),
//! drops a connection that moves no byte for `idle` (a client that opens and says
//! nothing, or trickles its headers) or that lives longer than `lifetime`, and the
//! process keeps a reserve of descriptors for reading `/proc`, logs and rings — an idle
//! connection flood must never make the engines unreadable (docs/hardening.md).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Descriptors kept for the agent's own work (`/proc`, logs, rings, bundles, py-spy).
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files to the hard limit (a unit's `LimitNOFILE` or the
/// container's), and says what it is; returns the soft limit in force.
pub fn raise_open_files() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 {
        tracing::warn!("cannot read the limit on open files; assuming 1024");
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    tracing::info!(open_files = lim.rlim_cur, "limit on open files");
    lim.rlim_cur
}

/// Connections served at once: the configured cap, never more than half of what the
/// descriptors left after the reserve allow.
pub fn connection_cap(configured: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    configured
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(4)
}

/// A listener that serves at most `permits` connections at once, each bounded in time.
pub struct Bounded<L> {
    inner: L,
    permits: Arc<Semaphore>,
    idle: Duration,
    lifetime: Duration,
}

impl<L> Bounded<L> {
    pub fn new(inner: L, max: usize, idle: Duration, lifetime: Duration) -> Bounded<L> {
        Bounded {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            idle,
            lifetime,
        }
    }
}

impl<L> axum::serve::Listener for Bounded<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = Guarded<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Wait for a free place before taking the next connection from the kernel.
        // The semaphore is never closed; were it, serve without a place rather than stop.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let (io, addr) = self.inner.accept().await;
        let now = Instant::now();
        let guarded = Guarded {
            io,
            _permit: permit,
            idle: self.idle,
            quiet: Box::pin(tokio::time::sleep_until(now + self.idle)),
            ends: Box::pin(tokio::time::sleep_until(now + self.lifetime)),
        };
        (guarded, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its place back when dropped, and fails once it has been
/// quiet for too long or lived too long.
pub struct Guarded<T> {
    io: T,
    _permit: Option<OwnedSemaphorePermit>,
    idle: Duration,
    quiet: Pin<Box<Sleep>>,
    ends: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    fn moved(&mut self) {
        let at = Instant::now() + self.idle;
        self.quiet.as_mut().reset(at);
    }

    /// What a read or write came to: a byte moved resets the quiet timer; a wait is
    /// an error once the connection was quiet or alive too long.
    fn after<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.moved();
                Poll::Ready(r)
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }

    /// While the connection waits: an error once it waited too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.ends.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection too old",
            ));
        }
        if self.quiet.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
        }
        None
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.io).poll_read(cx, buf);
        me.after(cx, polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.io).poll_write(cx, buf);
        me.after(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.io).poll_flush(cx);
        me.after(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve() {
        assert_eq!(connection_cap(128, 1024), 128);
        assert_eq!(connection_cap(128, 300), 22);
        assert_eq!(connection_cap(128, 100), 4);
        assert_eq!(connection_cap(10_000, 1 << 20), 10_000);
    }
}
