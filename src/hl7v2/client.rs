//! An MLLP client (HL7 v2.5 Appendix C.4): sends framed messages and reads
//! the framed ACKs. Used by `pathway-gateway replay`, tests and benchmarks.
//!
//! MLLP has no correlation id at the transport level: the n-th reply on a
//! connection answers the n-th message. After any error (timeout, garbage,
//! EOF) that pairing is no longer known, so the client refuses further use
//! and the caller reconnects.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::timeout;

use super::mllp::{Frame, Framer, frame};

/// Largest ACK accepted.
const MAX_REPLY: usize = 16 * 1024 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// One MLLP connection to a server.
#[derive(Debug)]
pub struct MllpClient {
    stream: TcpStream,
    /// Waiting time for the connection and for each reply.
    timeout: Duration,
    framer: Framer,
    /// Replies read but not yet returned.
    replies: VecDeque<Frame>,
    buf: Vec<u8>,
    /// Set after an error: replies can no longer be matched to messages.
    broken: bool,
}

impl MllpClient {
    /// Connects (TCP_NODELAY on); `timeout` bounds the connect and, later,
    /// the wait for each reply.
    pub async fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<MllpClient> {
        let stream = within(timeout, TcpStream::connect(addr), "connect timed out").await?;
        stream.set_nodelay(true)?;
        Ok(MllpClient {
            stream,
            timeout,
            framer: Framer::new(MAX_REPLY),
            replies: VecDeque::new(),
            buf: vec![0u8; READ_CHUNK],
            broken: false,
        })
    }

    /// Sends one message and waits for its ACK (the unframed ACK bytes).
    /// Err on timeout, EOF or a garbage reply.
    pub async fn send(&mut self, message: &[u8]) -> io::Result<Vec<u8>> {
        let mut acks = self.send_all(&[message]).await?;
        acks.pop()
            .ok_or_else(|| io::Error::other("no ACK returned"))
    }

    /// Sends all messages back-to-back (pipelined) and returns their ACKs in order.
    ///
    /// Writing and reading run together, so a batch larger than the socket
    /// buffers cannot deadlock against a server that stops reading until its
    /// ACKs are read. Each reply must arrive within the timeout of the
    /// previous one (or of the call); writes are bounded by that too, since
    /// the call fails as soon as a reply is late.
    pub async fn send_all(&mut self, messages: &[&[u8]]) -> io::Result<Vec<Vec<u8>>> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "MLLP client unusable after an earlier error; reconnect",
            ));
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.exchange(messages).await;
        self.broken = result.is_err();
        result
    }

    /// Writes `messages` while reading as many replies.
    async fn exchange(&mut self, messages: &[&[u8]]) -> io::Result<Vec<Vec<u8>>> {
        let MllpClient {
            stream,
            timeout,
            framer,
            replies,
            buf,
            ..
        } = self;
        let (reader, writer) = stream.split();
        let mut inbound = Inbound {
            reader,
            framer,
            replies,
            buf,
            timeout: *timeout,
        };
        let (_, acks) = tokio::try_join!(write_frames(writer, messages), async {
            let mut acks = Vec::with_capacity(messages.len());
            for _ in messages {
                acks.push(inbound.reply().await?);
            }
            Ok(acks)
        })?;
        Ok(acks)
    }
}

/// Writes every message framed, then flushes (buffered: few syscalls for
/// many small messages).
async fn write_frames(writer: WriteHalf<'_>, messages: &[&[u8]]) -> io::Result<()> {
    let mut writer = BufWriter::new(writer);
    for message in messages {
        writer.write_all(&frame(message)).await?;
    }
    writer.flush().await
}

/// The reading side of one [`MllpClient::exchange`].
struct Inbound<'a> {
    reader: ReadHalf<'a>,
    framer: &'a mut Framer,
    replies: &'a mut VecDeque<Frame>,
    buf: &'a mut Vec<u8>,
    timeout: Duration,
}

impl Inbound<'_> {
    /// The next reply's content, whole within the timeout (a peer sending
    /// it a byte at a time cannot hold the call longer); errors for EOF,
    /// timeout, garbage or a reply over 16 MiB.
    async fn reply(&mut self) -> io::Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(next) = self.replies.pop_front() {
                return reply_content(next);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let n = within(
                left,
                self.reader.read(&mut self.buf[..]),
                "no ACK within the timeout",
            )
            .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the ACK",
                ));
            }
            self.replies.extend(self.framer.push(&self.buf[..n]));
        }
    }
}

/// A reply frame's content, or why it is not an ACK.
fn reply_content(reply: Frame) -> io::Result<Vec<u8>> {
    match reply {
        Frame::Message(ack) => Ok(ack),
        Frame::TooLarge { discarded, .. } => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ACK larger than {MAX_REPLY} bytes ({discarded} bytes)"),
        )),
        Frame::Garbage(bytes) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("garbage instead of an ACK ({} bytes)", bytes.len()),
        )),
    }
}

/// Runs `fut` for at most `limit`; a timeout becomes `TimedOut` with `what`.
async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = io::Result<T>>,
    what: &'static str,
) -> io::Result<T> {
    match timeout(limit, fut).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::Error::new(io::ErrorKind::TimedOut, what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A peer that sends its ACK a byte every 50 ms cannot hold a client
    /// with a 300 ms timeout for the 3 s the ACK takes.
    #[tokio::test]
    async fn an_ack_trickling_in_still_times_out_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let ack = frame(b"MSH|^~\\&|GW|OB|PAS|RJZ|202607141018||ACK|A1|P|2.4\rMSA|AA|M1\r");
            for byte in ack {
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut client = MllpClient::connect(addr, Duration::from_millis(300))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = client
            .send(b"MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A08|M1|P|2.4\r")
            .await;
        let err = err.expect_err("an ACK taking 3 s");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        peer.abort();
    }
}
