//! Per-core runtimes and the small owned-buffer I/O trait the services are written against.
//!
//! dicom-gw runs one OS thread per core, each with a single-threaded runtime accepting on its
//! own handle of every listening socket; an association lives and dies on the thread that
//! accepted it.
//! Two backends implement [`Io`]: [`Uring`] (tokio-uring, io_uring) and [`Epoll`] (a plain
//! tokio current-thread runtime, with file writes done inline by `pwrite`, which measured
//! fastest on this class of machine). Service code is generic over `Io`, so it is written once,
//! and a later swap of tokio-uring (unmaintained upstream) stays inside this file.
//!
//! Buffers are owned (`BytesMut` in, `BytesMut` back; `Bytes` out) because io_uring needs the
//! kernel to own the memory while an operation is in flight.
#![allow(async_fn_in_trait)] // single-threaded runtimes: futures are never sent across threads

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use bytes::{Bytes, BytesMut};

/// The configured choice of I/O backend (`io = "auto" | "uring" | "epoll"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the kernel allows it, epoll otherwise.
    Auto,
    /// io_uring; start-up fails if it is unavailable.
    Uring,
    /// epoll (plain tokio).
    Epoll,
}

/// The backend actually running, after probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// tokio-uring.
    Uring,
    /// tokio current-thread runtime over epoll.
    Epoll,
}

impl Backend {
    /// Name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Why no backend could be chosen.
#[derive(Debug, thiserror::Error)]
#[error("io_uring was requested but is unavailable: {0} (set io = \"epoll\" or \"auto\")")]
pub struct UringUnavailable(#[source] io::Error);

/// Probes io_uring by building (and dropping) a tokio-uring runtime: where io_uring is disabled
/// (`kernel.io_uring_disabled`, container seccomp profiles) this fails with EPERM or ENOSYS.
pub fn probe_uring() -> io::Result<()> {
    tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop)
}

/// Resolves the configured mode to a backend (probing for `auto` and `uring`).
pub fn resolve(mode: IoMode) -> Result<Backend, UringUnavailable> {
    match mode {
        IoMode::Epoll => Ok(Backend::Epoll),
        IoMode::Uring => probe_uring()
            .map(|()| Backend::Uring)
            .map_err(UringUnavailable),
        IoMode::Auto => Ok(if probe_uring().is_ok() {
            Backend::Uring
        } else {
            Backend::Epoll
        }),
    }
}

/// A connected stream, driven with owned buffers.
///
/// The methods take `&self` so that one reader and one writer can share the stream (an
/// association reads the peer's next PDU while it is still sending responses: that is how a
/// C-CANCEL is seen during a C-FIND, and how a peer that keeps sending meets TCP backpressure
/// instead of our memory). At most one read and one write may be in flight at a time.
pub trait NetStream: 'static {
    /// Reads into the spare capacity of `buf` (appending); returns bytes read (0 = EOF).
    async fn read_buf(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut);
    /// Writes all of `data`.
    async fn write_all(&self, data: Bytes) -> io::Result<()>;
    /// Shuts the connection down in both directions now. Dropping is not enough on io_uring:
    /// a read still in flight (left behind by a timeout) keeps the socket open.
    fn shutdown(&self);
}

/// A file being written, driven with owned buffers.
pub trait ObjFile: Sized + 'static {
    /// Creates (truncating) a file for writing.
    async fn create(path: &Path) -> io::Result<Self>;
    /// Writes all of `data` at `pos`.
    async fn write_all_at(&self, data: Bytes, pos: u64) -> io::Result<()>;
    /// Closes the file, reporting a close error (which can carry a delayed write error).
    async fn close(self) -> io::Result<()>;
}

/// A backend: its stream, file and listener types, and how to run a core on it.
pub trait Io: 'static {
    /// Connected stream type.
    type Stream: NetStream;
    /// File type.
    type File: ObjFile;
    /// Listener type.
    type Listener;
    /// Which backend this is.
    const BACKEND: Backend;
    /// Wraps a bound, listening std listener.
    fn listener(l: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Accepts one connection, with `TCP_NODELAY` set (Nagle would delay every response).
    async fn accept(l: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)>;
    /// Sets the kernel send buffer of a connection (`SO_SNDBUF`).
    fn set_send_buffer(s: &Self::Stream, bytes: usize) -> io::Result<()>;
    /// Runs `f` to completion on a new single-threaded runtime on the current thread.
    /// Tasks are spawned with `tokio::task::spawn_local` on both backends.
    fn block_on<F: Future<Output = ()> + 'static>(f: F) -> io::Result<()>;
}

/// The io_uring backend (tokio-uring).
#[derive(Debug)]
pub enum Uring {}

impl NetStream for tokio_uring::net::TcpStream {
    async fn read_buf(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        use tokio_uring::buf::BoundedBuf;
        if buf.capacity() == buf.len() {
            buf.reserve(64 * 1024);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = self.read(buf.slice(len..cap)).await;
        (res, slice.into_inner())
    }

    async fn write_all(&self, data: Bytes) -> io::Result<()> {
        tokio_uring::net::TcpStream::write_all(self, data).await.0
    }

    fn shutdown(&self) {
        let _ = tokio_uring::net::TcpStream::shutdown(self, std::net::Shutdown::Both);
    }
}

impl Io for Uring {
    type Stream = tokio_uring::net::TcpStream;
    /// Files are written inline, as on epoll: io_uring runs file operations (open, buffered
    /// writes) on kernel worker threads, which count against the process's task limit — under
    /// a unit's `TasksMax` they cannot be started and every C-STORE failed with ECANCELED — and
    /// the punt costs more than the page-cache write it carries (measured in STACK.md §1).
    type File = InlineFile;
    type Listener = tokio_uring::net::TcpListener;
    const BACKEND: Backend = Backend::Uring;

    fn listener(l: std::net::TcpListener) -> io::Result<Self::Listener> {
        Ok(tokio_uring::net::TcpListener::from_std(l))
    }

    async fn accept(l: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, addr) = l.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, addr))
    }

    fn set_send_buffer(s: &Self::Stream, bytes: usize) -> io::Result<()> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the descriptor belongs to `s`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) };
        socket2::SockRef::from(&fd).set_send_buffer_size(bytes)
    }

    fn block_on<F: Future<Output = ()> + 'static>(f: F) -> io::Result<()> {
        let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(256))?;
        rt.block_on(f);
        Ok(())
    }
}

/// The epoll backend (tokio current-thread runtime; file writes inline with `pwrite`).
#[derive(Debug)]
pub enum Epoll {}

/// Readiness-based I/O through `&self` (`readable`/`try_read`), so a reader and a writer can
/// share the stream as on io_uring.
impl NetStream for tokio::net::TcpStream {
    async fn read_buf(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        if buf.capacity() == buf.len() {
            buf.reserve(64 * 1024);
        }
        loop {
            if let Err(e) = self.readable().await {
                return (Err(e), buf);
            }
            match self.try_read_buf(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return (res, buf),
            }
        }
    }

    async fn write_all(&self, data: Bytes) -> io::Result<()> {
        let mut rest = &data[..];
        while !rest.is_empty() {
            self.writable().await?;
            match self.try_write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn shutdown(&self) {
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both);
    }
}

/// A std file written inline on the core's thread (both backends): page-cache writes are
/// short, and the durable sync happens on the journal writer's thread, not here.
#[derive(Debug)]
pub struct InlineFile(std::fs::File);

impl ObjFile for InlineFile {
    async fn create(path: &Path) -> io::Result<Self> {
        std::fs::File::create(path).map(InlineFile)
    }

    async fn write_all_at(&self, data: Bytes, pos: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, &data, pos)
    }

    async fn close(self) -> io::Result<()> {
        close_fd(self.0)
    }
}

/// Closes `file` and reports what `close(2)` says: on NFS and some FUSE filesystems a delayed
/// write error surfaces only here, and dropping the file would discard it (audit L5).
fn close_fd(file: std::fs::File) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just released by the File, so it is open and owned by nobody else; it
    // is closed exactly once (POSIX: never retry close, even on EINTR).
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Io for Epoll {
    type Stream = tokio::net::TcpStream;
    type File = InlineFile;
    type Listener = tokio::net::TcpListener;
    const BACKEND: Backend = Backend::Epoll;

    fn listener(l: std::net::TcpListener) -> io::Result<Self::Listener> {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }

    async fn accept(l: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, addr) = l.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, addr))
    }

    fn set_send_buffer(s: &Self::Stream, bytes: usize) -> io::Result<()> {
        socket2::SockRef::from(s).set_send_buffer_size(bytes)
    }

    fn block_on<F: Future<Output = ()> + 'static>(f: F) -> io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, f);
        Ok(())
    }
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: nice is per thread). Used by the
/// threads that serve people and modalities' queries (admin API, worklist) and by the ingest
/// materializer so that, when they compete for the CPU, the ingest cores and the journal
/// writer win. Best effort: on failure the thread keeps its priority, and the reason is
/// logged at debug level.
pub fn lower_thread_priority(nice: i32) {
    // SAFETY: gettid and setpriority only read their arguments; the thread id is our own.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), nice, "cannot lower the thread's priority");
    }
}

/// A fixed set of threads for blocking service work (worklist matching, MPPS database
/// writes), so the per-core runtimes never block and no thread is started per connection or
/// per request. Its queue is bounded: when it is full, [`WorkPool::run`] says so at once and
/// the service answers "out of resources" instead of queueing without limit.
#[derive(Debug, Clone)]
pub struct WorkPool {
    tx: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
    name: &'static str,
}

/// Why [`WorkPool::run`] has no result. The two call for different answers: a full queue is
/// "out of resources, try later"; a failed job is a processing failure that a retry may well
/// meet again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The pool's queue is full (or its threads are gone): the job never ran.
    #[error("the {0} work queue is full")]
    Busy(&'static str),
    /// The job panicked (a bug, logged with its message); the pool's thread lives on.
    #[error("a job on the {pool} pool failed ({message})")]
    Panicked {
        /// The pool's name.
        pool: &'static str,
        /// The panic message.
        message: String,
    },
}

impl PoolError {
    /// Whether the job never ran because the queue was full (the answer is "out of
    /// resources"), as opposed to a job that ran and failed.
    pub fn is_busy(&self) -> bool {
        matches!(self, PoolError::Busy(_))
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_owned())
}

impl WorkPool {
    /// Starts `threads` threads named `name` at `nice`, with room for `queue` waiting jobs.
    /// Threads are started here, at start-up, where a failure is a clean start-up error.
    pub fn start(
        name: &'static str,
        threads: usize,
        queue: usize,
        nice: i32,
    ) -> io::Result<WorkPool> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                // Explicit and generous: decoders are iterative and depth-checked, but the
                // limit of the thread is then known rather than inherited.
                .stack_size(8 * 1024 * 1024)
                .spawn(move || {
                    lower_thread_priority(nice);
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            // A panicking job must not take the pool's thread with it.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(WorkPool { tx, name })
    }

    /// Runs `f` on the pool and waits for its result without blocking the caller's runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .map_err(|p| panic_message(&*p));
            let _ = done.send(r);
        });
        let name = self.name;
        self.tx.try_send(job).map_err(|_| PoolError::Busy(name))?;
        let panicked = |message: String| {
            tracing::error!(pool = name, panic = %message, "a job on the work pool panicked");
            PoolError::Panicked {
                pool: name,
                message,
            }
        };
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(panicked(message)),
            // Not reached (the job catches its own panic), but a dropped sender means the
            // job did not finish either way.
            Err(_) => Err(panicked("the job ended without a result".to_owned())),
        }
    }
}

/// Binds one listening socket for `addr` and hands out `n` handles to it (one per core).
///
/// Not `SO_REUSEPORT`: with it a second daemon could bind the same port and silently take half
/// the connections (audit M6). One socket shared by every core keeps the port exclusive — a
/// second process fails with EADDRINUSE — and each core still accepts on its own runtime.
pub fn bind_shared(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only lets a restart bind while old connections sit in TIME_WAIT; it does
    // not let two live listeners share the address.
    s.set_reuse_address(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    let first: std::net::TcpListener = s.into();
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 1..n.max(1) {
        out.push(first.try_clone()?);
    }
    out.insert(0, first);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job that panics is reported as a failed job, not as a full queue, with its message;
    /// the pool's only thread survives it and runs the next job.
    #[test]
    fn a_panicked_job_is_a_failed_job_not_a_full_queue() {
        let pool = WorkPool::start("test", 1, 4, 0).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(pool.run(|| -> u32 { panic!("job {} exploded", 7) }))
            .unwrap_err();
        assert!(!e.is_busy());
        match &e {
            PoolError::Panicked { pool, message } => {
                assert_eq!(*pool, "test");
                assert_eq!(message, "job 7 exploded");
            }
            other => panic!("expected Panicked, got {other:?}"),
        }
        assert!(e.to_string().contains("failed"), "{e}");
        assert!(!e.to_string().contains("full"), "{e}");
        assert_eq!(rt.block_on(pool.run(|| 42)).unwrap(), 42);
    }
}
