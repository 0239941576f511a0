//! The MLLP server for the inbound HL7 v2 feed (HL7 v2.5 Appendix C.4).
//!
//! [`serve`] accepts TCP connections and runs one task per connection. Each
//! task feeds received bytes to a [`Framer`], gives every [`Frame`] (garbage
//! and oversize ones too) to the [`Handler`] one at a time, in arrival order,
//! and writes the handler's ACK framed with [`frame`] before handling the
//! next frame. That is what gives "one ACK per message, in order" on a
//! connection even when the sender pipelines.
//!
//! Decisions:
//! - **Connection limit**: at most `max_connections` connections are served
//!   at once. When all slots are taken the listener stops calling `accept`,
//!   so further connections wait in the kernel's accept backlog and are
//!   served, oldest first, as slots free up. Senders that open a connection
//!   per message therefore lose nothing in a burst; a warning is logged when
//!   the limit is hit (at most once a minute).
//! - **Idle timeout**: a connection on which no byte arrives for
//!   `idle_timeout` while no frame is being handled is closed. Bytes of an
//!   incomplete frame count as activity when they arrive, not while they sit
//!   in the buffer. An ACK that cannot be written within `idle_timeout` (the
//!   peer stopped reading) also closes the connection.
//! - **Frame timeout**: a frame must end within `frame_timeout` of its first
//!   byte, however its bytes trickle in. Otherwise the connection is closed
//!   and the frame dropped unanswered (the sender resends it): a sender
//!   writing a byte now and then never keeps a connection slot, nor up to
//!   `max_frame` of memory, for ever.
//! - **Drain**: when `shutdown` resolves the listening socket is closed at
//!   once. Each connection finishes the frames it has already read (so they
//!   get their ACKs), drops any incomplete frame (never ACKed, so the sender
//!   resends it) and closes without reading further. [`serve`] returns when
//!   every connection has closed or `drain_timeout` has passed; connections
//!   still running then are aborted and counted in a warning.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::timeout;
use tracing::{debug, error, info, warn};

use super::mllp::{Frame, Framer, frame};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Pause after an accept error that is not about one connection (EMFILE,
/// ENFILE, ENOBUFS, ...), so a lasting condition is not a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Minimum time between two "connection limit reached" warnings.
const LIMIT_WARN_EVERY: Duration = Duration::from_secs(60);

/// Settings of one MLLP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Largest frame content accepted; longer frames reach the handler as
    /// [`Frame::TooLarge`]. Also bounds the memory a connection holds.
    pub max_frame: usize,
    /// A connection receiving nothing for this long is closed (must be > 0).
    pub idle_timeout: Duration,
    /// A frame not ended this long after its first byte closes the
    /// connection (must be > 0).
    pub frame_timeout: Duration,
    /// Connections served at once (must be > 0); more wait in the backlog.
    pub max_connections: usize,
    /// How long [`serve`] waits for connections to finish after shutdown.
    pub drain_timeout: Duration,
}

/// The future a [`Handler`] returns: the ACK bytes for one frame.
pub type AckFuture<'a> = Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'a>>;

/// What the gateway does with each frame: returns the ACK message (ER7 bytes,
/// unframed); an empty Vec means send nothing.
///
/// Called for every [`Frame`] variant, so the handler decides how to answer
/// garbage and oversize frames (typically an `AR`). Calls for one connection
/// never overlap; calls for different connections run concurrently.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, frame: Frame, peer: SocketAddr) -> AckFuture<'_>;
    /// A connection from `peer` is served from now on.
    fn opened(&self, _peer: SocketAddr) {}
    /// … and is closed now.
    fn closed(&self, _peer: SocketAddr) {}
}

/// A connection the handler was told of ([`Handler::opened`]); dropped, it
/// tells it the connection closed.
struct Open {
    handler: Arc<dyn Handler>,
    peer: SocketAddr,
}

impl Open {
    fn new(handler: Arc<dyn Handler>, peer: SocketAddr) -> Open {
        handler.opened(peer);
        Open { handler, peer }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.handler.closed(self.peer);
    }
}

/// Serves MLLP on `listener` until `shutdown` resolves, then drains.
///
/// Errors of one connection (resets, timeouts) close that connection only;
/// accept errors are logged and retried. The only error returned is
/// `InvalidInput` for a config with `max_connections`, `idle_timeout` or
/// `frame_timeout` zero.
pub async fn serve(
    listener: TcpListener,
    config: ListenerConfig,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    validate(&config)?;
    let mut shutdown = pin!(shutdown);
    let limits = Limits {
        max_frame: config.max_frame,
        idle_timeout: config.idle_timeout,
        frame_timeout: config.frame_timeout,
        discard_wait: DISCARD_WAIT.min(config.drain_timeout / 4),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut acceptor = Acceptor {
        listener: &listener,
        slots: Arc::new(Semaphore::new(
            config.max_connections.min(Semaphore::MAX_PERMITS),
        )),
        max_connections: config.max_connections,
        last_limit_warning: None,
    };
    match listener.local_addr() {
        Ok(addr) => info!(%addr, max_connections = config.max_connections, "MLLP listener started"),
        Err(e) => info!(error = %e, "MLLP listener started (address unknown)"),
    }
    while let Some((stream, peer, permit)) = acceptor.next(&mut tasks, &mut shutdown).await {
        let handler = Arc::clone(&handler);
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            // Held until the connection ends: frees its slot.
            let _permit = permit;
            // Tells the handler the connection closed however it ends:
            // served to the end, aborted by the drain, or panicked.
            let _open = Open::new(Arc::clone(&handler), peer);
            connection(stream, peer, limits, handler, stop).await;
        });
    }
    // Closing the listening socket refuses new connections from now on.
    drop(listener);
    info!(
        connections = tasks.len(),
        "MLLP listener stopped accepting; draining"
    );
    stop_tx.send_replace(true);
    drain(&mut tasks, config.drain_timeout).await;
    Ok(())
}

/// Rejects settings under which the listener could never serve anything.
fn validate(config: &ListenerConfig) -> io::Result<()> {
    let problem = if config.max_connections == 0 {
        "max_connections must be at least 1"
    } else if config.idle_timeout.is_zero() {
        "idle_timeout must be greater than zero"
    } else if config.frame_timeout.is_zero() {
        "frame_timeout must be greater than zero"
    } else {
        return Ok(());
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, problem))
}

/// The part of [`ListenerConfig`] each connection needs.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_frame: usize,
    idle_timeout: Duration,
    frame_timeout: Duration,
    /// How long a draining connection discards what it will not take
    /// (see [`discard_unread`]): well inside the drain's own limit, which
    /// aborts a connection still at it (and its close is then a reset).
    discard_wait: Duration,
}

/// Accepts connections within the connection limit.
struct Acceptor<'a> {
    listener: &'a TcpListener,
    slots: Arc<Semaphore>,
    max_connections: usize,
    last_limit_warning: Option<Instant>,
}

impl Acceptor<'_> {
    /// The next connection with the slot it occupies; `None` once `shutdown`
    /// resolves. Reaps finished connection tasks while waiting.
    async fn next<S: Future<Output = ()>>(
        &mut self,
        tasks: &mut JoinSet<()>,
        shutdown: &mut Pin<&mut S>,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let permit = self.slot(tasks, shutdown).await?;
        loop {
            match until(self.listener.accept(), tasks, shutdown).await? {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(%peer, error = %e, "could not set TCP_NODELAY");
                    }
                    return Some((stream, peer, permit));
                }
                Err(e) if is_per_connection(&e) => {
                    debug!(error = %e, "MLLP accept: connection failed before accept");
                }
                Err(e) => {
                    warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "MLLP accept failed; retrying");
                    until(tokio::time::sleep(ACCEPT_BACKOFF), tasks, shutdown).await?;
                }
            }
        }
    }

    /// A free connection slot, waiting (and warning) when all are taken.
    async fn slot<S: Future<Output = ()>>(
        &mut self,
        tasks: &mut JoinSet<()>,
        shutdown: &mut Pin<&mut S>,
    ) -> Option<OwnedSemaphorePermit> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => return Some(permit),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => self.warn_limit(),
        }
        // The semaphore is never closed, so Err cannot happen; treat it as
        // the end of accepting rather than panicking.
        until(Arc::clone(&self.slots).acquire_owned(), tasks, shutdown)
            .await?
            .ok()
    }

    /// Logs that the limit was reached, at most once per `LIMIT_WARN_EVERY`.
    fn warn_limit(&mut self) {
        let now = Instant::now();
        let due = self
            .last_limit_warning
            .is_none_or(|last| now.duration_since(last) >= LIMIT_WARN_EVERY);
        if due {
            self.last_limit_warning = Some(now);
            warn!(
                max_connections = self.max_connections,
                "MLLP connection limit reached; new connections wait in the accept backlog"
            );
        } else {
            debug!("MLLP connection limit reached");
        }
    }
}

/// Accept errors that concern one incoming connection only (it was reset
/// or aborted before we took it); the next accept can follow at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Awaits `fut` while reaping finished connection tasks (so the JoinSet does
/// not grow with every connection ever served); `None` if `shutdown`
/// resolves first.
async fn until<F: Future, S: Future<Output = ()>>(
    fut: F,
    tasks: &mut JoinSet<()>,
    shutdown: &mut Pin<&mut S>,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    loop {
        tokio::select! {
            biased;
            () = shutdown.as_mut() => return None,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_join(done),
            out = fut.as_mut() => return Some(out),
        }
    }
}

/// Waits up to `limit` for every connection to finish, then aborts the rest.
async fn drain(tasks: &mut JoinSet<()>, limit: Duration) {
    let all_done = async {
        while let Some(done) = tasks.join_next().await {
            log_join(done);
        }
    };
    if timeout(limit, all_done).await.is_ok() {
        info!("MLLP listener drained");
        return;
    }
    let mut aborted = 0usize;
    tasks.abort_all();
    while let Some(done) = tasks.join_next().await {
        match done {
            Err(e) if e.is_cancelled() => aborted += 1,
            other => log_join(other),
        }
    }
    warn!(
        aborted,
        drain_timeout = ?limit,
        "MLLP drain timed out; aborted connections still running"
    );
}

/// Reports a connection task that panicked (its handler, most likely).
fn log_join(done: Result<(), JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!("MLLP connection task panicked: {e}");
    }
}

/// Why a connection ended, for the close log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The peer closed its side.
    Eof,
    /// Nothing received for `idle_timeout`.
    Idle,
    /// A frame not ended within `frame_timeout` of its first byte.
    FrameTimeout,
    /// The listener is draining.
    Shutdown,
    /// Reading failed (reset, ...).
    ReadError,
    /// Writing an ACK failed or timed out.
    WriteError,
}

/// Serves one connection until it closes, then closes our side too.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) {
    debug!(%peer, "MLLP connection opened");
    let mut messages = 0u64;
    let reason = exchange(
        &mut stream,
        peer,
        limits,
        &*handler,
        &mut stop,
        &mut messages,
    )
    .await;
    // Best effort: send FIN so the peer sees a clean end after the last ACK.
    let _ = stream.shutdown().await;
    if reason == Close::Shutdown {
        discard_unread(&mut stream, limits.discard_wait).await;
    }
    debug!(%peer, messages, ?reason, "MLLP connection closed");
}

/// How long a draining connection waits, at most, after its FIN, for the
/// peer to close, discarding what it sends meanwhile (at most
/// [`DISCARD_LIMIT`]).
const DISCARD_WAIT: Duration = Duration::from_millis(500);
const DISCARD_LIMIT: usize = 1024 * 1024;

/// Reads and drops what the peer sent that a draining connection no longer
/// takes (frames it will send again: none of them was answered). Closing a
/// socket with unread data makes Linux answer with a reset instead of a FIN,
/// and throw away whatever of our ACKs the peer has not yet received.
async fn discard_unread(stream: &mut TcpStream, wait: Duration) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut discarded = 0;
    let deadline = tokio::time::Instant::now() + wait;
    while discarded < DISCARD_LIMIT {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// The read → handle every complete frame → write each ACK loop.
/// `messages` counts frames handled, kept up to date for the close log.
async fn exchange(
    stream: &mut TcpStream,
    peer: SocketAddr,
    limits: Limits,
    handler: &dyn Handler,
    stop: &mut watch::Receiver<bool>,
    messages: &mut u64,
) -> Close {
    let mut framer = Framer::new(limits.max_frame);
    let mut buf = vec![0u8; READ_CHUNK];
    // When the frame being received must have ended.
    let mut frame_due: Option<tokio::time::Instant> = None;
    loop {
        let n = match read_some(stream, &mut buf, limits.idle_timeout, frame_due, stop).await {
            Ok(n) => n,
            Err(close) => {
                if close == Close::FrameTimeout {
                    info!(
                        %peer,
                        bytes = framer.pending(),
                        frame_timeout = ?limits.frame_timeout,
                        "MLLP frame not ended in time; connection closed, frame dropped unanswered"
                    );
                } else if framer.in_frame() {
                    debug!(%peer, bytes = framer.pending(), "MLLP incomplete frame dropped");
                }
                return close;
            }
        };
        let was_in_frame = framer.in_frame();
        let frames = framer.push(&buf[..n]);
        // A frame still open after frames ended in these bytes started in
        // them, and its time runs from when those are answered (the sender
        // is not slow while we are); one open before keeps its deadline.
        let started_here = framer.in_frame() && !(was_in_frame && frames.is_empty());
        if !framer.in_frame() {
            frame_due = None;
        }
        for received in frames {
            let ack = handler.handle(received, peer).await;
            *messages += 1;
            if let Err(e) = write_ack(stream, &ack, limits.idle_timeout).await {
                debug!(%peer, error = %e, "MLLP ACK write failed");
                return Close::WriteError;
            }
        }
        if started_here {
            frame_due = Some(tokio::time::Instant::now() + limits.frame_timeout);
        }
    }
}

/// Reads the next bytes; `Err` says why the connection should end instead:
/// nothing for `idle`, or the open frame not ended by `frame_due`. Shutdown
/// wins over data so that a draining connection reads nothing more.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut [u8],
    idle: Duration,
    frame_due: Option<tokio::time::Instant>,
    stop: &mut watch::Receiver<bool>,
) -> Result<usize, Close> {
    let idle_due = tokio::time::Instant::now() + idle;
    let (due, expired) = match frame_due {
        Some(due) if due < idle_due => (due, Close::FrameTimeout),
        _ => (idle_due, Close::Idle),
    };
    tokio::select! {
        biased;
        () = stopped(stop) => Err(Close::Shutdown),
        read = tokio::time::timeout_at(due, stream.read(buf)) => match read {
            Err(_elapsed) => Err(expired),
            Ok(Ok(0)) => Err(Close::Eof),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => {
                debug!(error = %e, "MLLP read failed");
                Err(Close::ReadError)
            }
        },
    }
}

/// Resolves once the listener drains (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Writes one framed ACK in a single `write_all` (TCP_NODELAY sends it at
/// once); nothing for an empty ACK. Times out after `limit`.
async fn write_ack(stream: &mut TcpStream, ack: &[u8], limit: Duration) -> io::Result<()> {
    if ack.is_empty() {
        return Ok(());
    }
    match timeout(limit, stream.write_all(&frame(ack))).await {
        Ok(written) => written,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer did not read the ACK in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::{Notify, oneshot};
    use tokio::task::JoinHandle;

    use super::super::client::MllpClient;
    use super::super::condition::Condition;
    use super::super::er7::Message;
    use super::super::mllp::{AckCode, AckError, ack};
    use super::*;

    const TS: &str = "20250101120000";
    /// Upper bound for anything that should happen "now".
    const SOON: Duration = Duration::from_secs(2);

    /// Answers messages with a real AA ACK (MSA-2 = MSH-10) and everything
    /// else with an AR whose MSA-3 says what arrived. Control ids starting
    /// with `SLOW` wait `slow` first; `NOACK` ids get no ACK at all.
    #[derive(Default)]
    struct TestHandler {
        calls: AtomicUsize,
        slow: Duration,
        /// Notified (one stored permit) whenever a call starts.
        started: Notify,
    }

    impl TestHandler {
        fn slow(slow: Duration) -> TestHandler {
            TestHandler {
                slow,
                ..TestHandler::default()
            }
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        async fn message(&self, bytes: &[u8]) -> Vec<u8> {
            let Some(msg) = std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| Message::parse(text).ok())
            else {
                return reject("unparseable".to_owned());
            };
            let id = msg.control_id().unwrap_or_default();
            if id.starts_with("SLOW") {
                tokio::time::sleep(self.slow).await;
            }
            if id.starts_with("NOACK") {
                return Vec::new();
            }
            ack(Some(&msg), AckCode::AA, &format!("A-{id}"), TS, &[]).into_bytes()
        }
    }

    impl Handler for TestHandler {
        fn handle(&self, frame: Frame, _peer: SocketAddr) -> AckFuture<'_> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.started.notify_one();
                match frame {
                    Frame::Message(bytes) => self.message(&bytes).await,
                    Frame::TooLarge { discarded, .. } => reject(format!("too large: {discarded}")),
                    Frame::Garbage(bytes) => reject(format!("garbage: {}", bytes.len())),
                }
            })
        }
    }

    fn reject(text: String) -> Vec<u8> {
        let error = AckError {
            location: None,
            condition: Condition::SegmentSequence,
            text,
        };
        ack(None, AckCode::AR, "R", TS, &[error]).into_bytes()
    }

    /// A small ADT^A01 with control id `id`.
    fn msg(id: &str) -> Vec<u8> {
        format!("MSH|^~\\&|SEND|FAC|GW|NHS|{TS}||ADT^A01|{id}|P|2.5\rPID|1||{id}^^^NHS\r")
            .into_bytes()
    }

    /// MSA-1, MSA-2 and MSA-3 of an ACK.
    fn msa(ack: &[u8]) -> (String, String, String) {
        let text = std::str::from_utf8(ack).expect("ACK is UTF-8");
        let parsed = Message::parse(text).expect("ACK parses");
        let get = |loc: &str| parsed.get(loc).unwrap_or_default();
        (get("MSA-1"), get("MSA-2"), get("MSA-3"))
    }

    fn config() -> ListenerConfig {
        ListenerConfig {
            max_frame: 1024 * 1024,
            idle_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(5),
            max_connections: 64,
            drain_timeout: SOON,
        }
    }

    struct Server {
        addr: SocketAddr,
        handler: Arc<TestHandler>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn start(config: ListenerConfig, handler: TestHandler) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let handler = Arc::new(handler);
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, config, handler.clone(), async {
                let _ = stopped.await;
            }));
            Server {
                addr,
                handler,
                stop: Some(stop),
                task,
            }
        }

        fn shutdown(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }

        /// Triggers shutdown and waits (at most `within`) for serve to return.
        async fn stop(mut self, within: Duration) -> io::Result<()> {
            self.shutdown();
            timeout(within, self.task)
                .await
                .expect("serve returned in time")
                .expect("serve did not panic")
        }
    }

    async fn raw(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    async fn client(addr: SocketAddr) -> MllpClient {
        MllpClient::connect(addr, SOON)
            .await
            .expect("client connect")
    }

    /// Reads `n` ACK frames from a raw stream.
    async fn read_acks(stream: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
        let mut framer = Framer::new(1024 * 1024);
        let mut acks = Vec::new();
        let mut buf = [0u8; 4096];
        while acks.len() < n {
            let read = timeout(SOON, stream.read(&mut buf))
                .await
                .expect("ACK in time");
            let read = read.expect("read ok");
            assert!(read > 0, "EOF after {} of {n} ACKs", acks.len());
            for f in framer.push(&buf[..read]) {
                match f {
                    Frame::Message(ack) => acks.push(ack),
                    other => panic!("unexpected reply {other:?}"),
                }
            }
        }
        assert_eq!(acks.len(), n, "more ACKs than messages");
        acks
    }

    /// Waits for the server to close the connection without sending more.
    async fn expect_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        match timeout(SOON, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("expected close, got {:?}", &buf[..n]),
            Err(_) => panic!("connection not closed in time"),
        }
    }

    #[tokio::test]
    async fn message_split_byte_by_byte_is_acked() {
        let server = Server::start(config(), TestHandler::default()).await;
        let mut stream = raw(server.addr).await;
        for b in frame(&msg("SPLIT1")) {
            stream.write_all(&[b]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let acks = read_acks(&mut stream, 1).await;
        assert_eq!(msa(&acks[0]).0, "AA");
        assert_eq!(msa(&acks[0]).1, "SPLIT1");
        assert_eq!(server.handler.calls(), 1);
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn pipelined_frames_answered_in_order() {
        // The first frame is slow: a server handling frames concurrently
        // would answer the others first.
        let handler = TestHandler::slow(Duration::from_millis(50));
        let server = Server::start(config(), handler).await;
        let ids = ["SLOW1", "P2", "P3", "P4", "P5"];
        let mut batch = Vec::new();
        for id in ids {
            batch.extend(frame(&msg(id)));
            batch.extend(b"\r\n"); // tolerated between frames
        }
        let mut stream = raw(server.addr).await;
        stream.write_all(&batch).await.expect("write");
        let acks = read_acks(&mut stream, ids.len()).await;
        let answered: Vec<String> = acks.iter().map(|a| msa(a).1).collect();
        assert_eq!(answered, ids);
        assert_eq!(server.handler.calls(), ids.len());
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_connections_each_get_their_acks_in_order() {
        let server = Server::start(config(), TestHandler::default()).await;
        let mut clients = JoinSet::new();
        for c in 0..16 {
            let addr = server.addr;
            clients.spawn(async move {
                let ids: Vec<String> = (0..100).map(|m| format!("C{c}M{m}")).collect();
                let messages: Vec<Vec<u8>> = ids.iter().map(|id| msg(id)).collect();
                let mut client = client(addr).await;
                // Half pipeline the whole batch, half go one by one.
                let acks = if c % 2 == 0 {
                    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
                    client.send_all(&refs).await.expect("send_all")
                } else {
                    let mut acks = Vec::new();
                    for m in &messages {
                        acks.push(client.send(m).await.expect("send"));
                    }
                    acks
                };
                for (id, ack) in ids.iter().zip(&acks) {
                    assert_eq!(msa(ack), ("AA".to_owned(), id.clone(), String::new()));
                }
                acks.len()
            });
        }
        let mut total = 0;
        while let Some(done) = clients.join_next().await {
            total += done.expect("client task");
        }
        assert_eq!(total, 1600);
        assert_eq!(server.handler.calls(), 1600);
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn garbage_and_oversize_frames_reach_the_handler() {
        let config = ListenerConfig {
            max_frame: 200,
            ..config()
        };
        let server = Server::start(config, TestHandler::default()).await;
        let mut bytes = b"hello".to_vec();
        bytes.extend(frame(&msg("OK1")));
        bytes.extend(frame(&[b'X'; 1000]));
        bytes.extend(frame(b"not hl7"));
        bytes.extend(frame(&msg("OK2")));
        let mut stream = raw(server.addr).await;
        stream.write_all(&bytes).await.expect("write");
        let acks: Vec<_> = read_acks(&mut stream, 5)
            .await
            .iter()
            .map(|a| msa(a))
            .collect();
        let expected = [
            ("AR", "", "garbage: 5"),
            ("AA", "OK1", ""),
            ("AR", "", "too large: 1000"),
            ("AR", "", "unparseable"),
            ("AA", "OK2", ""),
        ];
        for ((code, id, text), want) in acks.iter().zip(expected) {
            assert_eq!((code.as_str(), id.as_str(), text.as_str()), want);
        }
        assert_eq!(server.handler.calls(), 5);
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let idle = Duration::from_millis(200);
        let config = ListenerConfig {
            idle_timeout: idle,
            ..config()
        };
        let server = Server::start(config, TestHandler::default()).await;
        let message = frame(&msg("LATE1"));
        // A half-sent frame does not keep a connection open...
        let stalled = async {
            let mut stream = raw(server.addr).await;
            let start = Instant::now();
            stream.write_all(&message[..20]).await.expect("write");
            expect_closed(&mut stream).await;
            start.elapsed()
        };
        // ...but bytes arriving more often than the timeout do.
        let trickle = async {
            let mut stream = raw(server.addr).await;
            for (i, piece) in message.chunks(message.len() / 4 + 1).enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(120)).await;
                }
                stream.write_all(piece).await.expect("write");
            }
            let acks = read_acks(&mut stream, 1).await;
            assert_eq!(msa(&acks[0]).1, "LATE1");
            let start = Instant::now();
            expect_closed(&mut stream).await;
            start.elapsed()
        };
        let (stalled, trickle) = tokio::join!(stalled, trickle);
        for closed_after in [stalled, trickle] {
            assert!(
                closed_after >= idle - Duration::from_millis(20),
                "{closed_after:?}"
            );
            assert!(closed_after < idle * 4, "{closed_after:?}");
        }
        assert_eq!(server.handler.calls(), 1);
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn a_frame_trickled_in_past_the_frame_timeout_closes_its_connection() {
        let frame_timeout = Duration::from_millis(600);
        let config = ListenerConfig {
            idle_timeout: Duration::from_secs(2),
            frame_timeout,
            ..config()
        };
        let server = Server::start(config, TestHandler::default()).await;
        let message = frame(&msg("SLOW1"));
        // A byte every 50 ms: never idle, but the frame never ends in time.
        let mut slow = raw(server.addr).await;
        let start = Instant::now();
        let mut sent = 0;
        let closed_after = loop {
            if sent < message.len() - 2 && slow.write_all(&message[sent..=sent]).await.is_ok() {
                sent += 1;
            }
            let mut byte = [0u8; 1];
            match timeout(Duration::from_millis(50), slow.read(&mut byte)).await {
                Err(_still_open) => {}
                Ok(Ok(0) | Err(_)) => break start.elapsed(),
                Ok(Ok(_)) => panic!("an unended frame got an answer"),
            }
            assert!(start.elapsed() < SOON, "connection left open");
        };
        assert!(closed_after >= frame_timeout, "{closed_after:?}");
        assert!(closed_after < frame_timeout * 4, "{closed_after:?}");
        assert_eq!(server.handler.calls(), 0);
        // Each frame has its own time: ON1 from 0 to 400 ms, ON2 at 400
        // ms, ON3 from 400 to 800 ms (within its own 600 ms, not within
        // 600 ms of ON1's first byte).
        let mut stream = raw(server.addr).await;
        let (one, third) = (frame(&msg("ON1")), frame(&msg("ON3")));
        let middle = [&one[10..], &frame(&msg("ON2")), &third[..10]].concat();
        for piece in [&one[..10], &middle, &third[10..]] {
            stream.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let acks = read_acks(&mut stream, 3).await;
        let ids: Vec<String> = acks.iter().map(|ack| msa(ack).1).collect();
        assert_eq!(ids, ["ON1", "ON2", "ON3"]);
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn drain_acks_frames_already_read_then_returns() {
        let handler = TestHandler::slow(Duration::from_millis(200));
        let mut server = Server::start(config(), handler).await;
        let mut stream = raw(server.addr).await;
        let mut bytes = frame(&msg("SLOW1"));
        let partial = frame(&msg("PARTIAL2"));
        bytes.extend(&partial[..partial.len() / 2]);
        stream.write_all(&bytes).await.expect("write");
        timeout(SOON, server.handler.started.notified())
            .await
            .expect("handler started");
        let stopped_at = Instant::now();
        server.shutdown();
        let acks = read_acks(&mut stream, 1).await;
        assert_eq!(msa(&acks[0]).1, "SLOW1");
        assert!(stopped_at.elapsed() >= Duration::from_millis(150));
        // The incomplete frame is dropped without an ACK.
        expect_closed(&mut stream).await;
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "still accepting"
        );
        let handler = Arc::clone(&server.handler);
        server.stop(SOON).await.expect("serve ok");
        assert_eq!(handler.calls(), 1);
    }

    /// A frame sent once the listener drains is not read; the connection
    /// still ends with a FIN after the ACKs it owes, not a reset (which
    /// would also throw away ACKs the peer had not yet received).
    #[tokio::test]
    async fn a_draining_connection_ends_cleanly_with_frames_it_did_not_read() {
        let handler = TestHandler::slow(Duration::from_millis(200));
        let mut server = Server::start(config(), handler).await;
        let mut stream = raw(server.addr).await;
        stream
            .write_all(&frame(&msg("SLOW1")))
            .await
            .expect("write");
        timeout(SOON, server.handler.started.notified())
            .await
            .expect("handler started");
        server.shutdown();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream
            .write_all(&frame(&msg("LATE2")))
            .await
            .expect("write");
        let acks = read_acks(&mut stream, 1).await;
        assert_eq!(msa(&acks[0]).1, "SLOW1");
        let mut buf = [0u8; 64];
        match timeout(SOON, stream.read(&mut buf)).await {
            Ok(Ok(0)) => {}
            other => panic!("expected a clean end (FIN), got {other:?}"),
        }
        // The FIN came first either way; a reset would follow it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reset = stream.take_error().expect("socket error");
        assert!(reset.is_none(), "the connection was reset: {reset:?}");
        let handler = Arc::clone(&server.handler);
        server.stop(SOON).await.expect("serve ok");
        assert_eq!(handler.calls(), 1, "the late frame is not taken");
    }

    #[tokio::test]
    async fn drain_timeout_aborts_stuck_connections() {
        let handler = TestHandler::slow(Duration::from_secs(30));
        let config = ListenerConfig {
            drain_timeout: Duration::from_millis(100),
            ..config()
        };
        let server = Server::start(config, handler).await;
        let mut stream = raw(server.addr).await;
        stream
            .write_all(&frame(&msg("SLOW1")))
            .await
            .expect("write");
        timeout(SOON, server.handler.started.notified())
            .await
            .expect("handler started");
        let start = Instant::now();
        server.stop(SOON).await.expect("serve ok");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(90), "{took:?}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        expect_closed(&mut stream).await;
    }

    #[tokio::test]
    async fn peer_reset_mid_frame_does_not_affect_others() {
        let server = Server::start(config(), TestHandler::default()).await;
        let mut steady = client(server.addr).await;
        assert_eq!(msa(&steady.send(&msg("S1")).await.expect("S1")).1, "S1");
        let resetter = raw(server.addr).await;
        let mut resetter = resetter;
        resetter
            .write_all(&frame(&msg("R1"))[..30])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        resetter.set_zero_linger().expect("linger");
        drop(resetter); // RST
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(msa(&steady.send(&msg("S2")).await.expect("S2")).1, "S2");
        let mut fresh = client(server.addr).await;
        assert_eq!(msa(&fresh.send(&msg("F1")).await.expect("F1")).1, "F1");
        assert_eq!(server.handler.calls(), 3);
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn connections_over_the_limit_wait_in_the_backlog() {
        let config = ListenerConfig {
            max_connections: 2,
            ..config()
        };
        let server = Server::start(config, TestHandler::default()).await;
        let mut first = client(server.addr).await;
        let mut second = client(server.addr).await;
        first.send(&msg("A1")).await.expect("A1");
        second.send(&msg("B1")).await.expect("B1");
        let mut third = raw(server.addr).await; // completes in the backlog
        third.write_all(&frame(&msg("C1"))).await.expect("write");
        let mut buf = [0u8; 64];
        let early = timeout(Duration::from_millis(150), third.read(&mut buf)).await;
        assert!(early.is_err(), "third connection served over the limit");
        assert_eq!(server.handler.calls(), 2);
        drop(first); // frees a slot
        let acks = read_acks(&mut third, 1).await;
        assert_eq!(msa(&acks[0]).1, "C1");
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn empty_ack_sends_nothing_and_client_times_out() {
        let server = Server::start(config(), TestHandler::default()).await;
        let mut stream = raw(server.addr).await;
        let mut bytes = frame(&msg("NOACK1"));
        bytes.extend(frame(&msg("OK2")));
        stream.write_all(&bytes).await.expect("write");
        assert_eq!(msa(&read_acks(&mut stream, 1).await[0]).1, "OK2");

        let mut quick = MllpClient::connect(server.addr, Duration::from_millis(100))
            .await
            .expect("connect");
        let err = quick.send(&msg("NOACK3")).await.expect_err("no ACK");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Replies can no longer be paired with messages on this connection.
        let err = quick.send(&msg("OK4")).await.expect_err("unusable");
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        server.stop(SOON).await.expect("serve ok");
    }

    #[tokio::test]
    async fn client_rejects_garbage_and_eof() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = tokio::spawn(async move {
            for reply in [&b"oops\x0b"[..], b""] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.expect("read");
                s.write_all(reply).await.expect("write");
            }
        });
        let mut c = client(addr).await;
        let err = c.send(&msg("G1")).await.expect_err("garbage");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut c = client(addr).await;
        let err = c.send(&msg("E1")).await.expect_err("eof");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        fake.await.expect("fake server");
    }

    #[tokio::test]
    async fn invalid_config_is_rejected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let config = ListenerConfig {
            max_connections: 0,
            ..config()
        };
        let handler: Arc<dyn Handler> = Arc::new(TestHandler::default());
        let result = serve(listener, config, handler, std::future::pending()).await;
        assert_eq!(
            result.map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidInput)
        );
    }
}
