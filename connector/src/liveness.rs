//! Tunnel liveness: a stream wrapper that records when bytes were last read, so a tunnel
//! whose peer went silent (no data, no keepalive answers) is dropped even if the HTTP/2
//! library's own keepalive misses it; and that can be cut from outside, so a dropped
//! tunnel (revoked, dead) ends with every stream in flight on it, even while the
//! HTTP/2 library's connection task would keep it open for those streams.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An I/O stream that records when it last read bytes (a liveness watchdog that does
/// not depend on the HTTP/2 library's keepalive bookkeeping).
pub(crate) struct Watched<T> {
    inner: T,
    last_read: Arc<AtomicU64>,
    epoch: Instant,
    cut: Arc<Cut>,
}

/// Set when the tunnel is cut; wakes the task that drives its I/O.
#[derive(Default)]
struct Cut {
    done: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl<T> Watched<T> {
    /// Wraps `inner`; the [`Liveness`] reads its last-read time.
    pub(crate) fn new(inner: T) -> (Self, Liveness) {
        let epoch = Instant::now();
        let last_read = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(Cut::default());
        (
            Self {
                inner,
                last_read: last_read.clone(),
                epoch,
                cut: cut.clone(),
            },
            Liveness {
                last_read,
                epoch,
                cut,
            },
        )
    }

    fn touch(&self) {
        self.last_read
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The error to return once the tunnel was cut; until then the polling task is
    /// registered to be woken by the cut.
    fn cut(&self, cx: &std::task::Context<'_>) -> Option<std::io::Error> {
        self.cut.waker.register(cx.waker());
        self.cut
            .done
            .load(Ordering::Acquire)
            .then(|| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "tunnel dropped"))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(e) = self.cut(cx) {
            return std::task::Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(e) = self.cut(cx) {
            return std::task::Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(e) = self.cut(cx) {
            return std::task::Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Liveness of one tunnel: milliseconds since `epoch` of the last bytes read.
pub(crate) struct Liveness {
    last_read: Arc<AtomicU64>,
    epoch: Instant,
    cut: Arc<Cut>,
}

impl Liveness {
    /// Cuts the tunnel: its I/O fails from now on, so the HTTP/2 connection and
    /// every stream on it end at once.
    pub(crate) fn cut(&self) {
        self.cut.done.store(true, Ordering::Release);
        self.cut.waker.wake();
    }

    pub(crate) fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// How long a tunnel may stay silent: a keepalive ping goes out after `keepalive`
/// without data and must be answered within `ping_timeout`; a second more for the
/// watchdog's own tick. Under load data keeps arriving, so a busy tunnel is never
/// taken for a silent one.
pub(crate) fn silence_limit(keepalive: Duration, ping_timeout: Duration) -> Duration {
    keepalive + ping_timeout + Duration::from_secs(1)
}
