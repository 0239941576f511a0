//! WAL checkpoints on a thread of their own, and a WAL that stays bounded.
//!
//! SQLite's default is to checkpoint inside the commit that takes the WAL
//! past 1,000 pages: the writer thread then copies every page into the
//! database file and fsyncs it while the jobs queued behind it wait. Here the
//! writer's WAL hook only signals, once per [`DEFAULT_CHECKPOINT_BYTES`]
//! written, and this thread runs a PASSIVE checkpoint on its own connection,
//! which never blocks the writer (nor is blocked by it), so copying pages
//! overlaps the next commits instead of delaying them; the pages it copies
//! are written back in steps ([`super::paced`]).
//!
//! Copying pages is not enough to bound the WAL: SQLite starts writing it
//! over from the beginning only when a write transaction begins with every
//! frame already copied. Under steady writes that moment never comes by
//! itself (the writer begins its next group while the checkpoint copies the
//! last one), and the WAL grew by ~74 KB per HL7 v2 message without end
//! (443 MB after 6,000 messages). So once the WAL passes its bound
//! this thread checkpoints again and again until it has caught up, leaving
//! the writer room between passes to copy, between two of its groups, the
//! few frames left ([`Checkpointer::settle`]); its next transaction starts
//! the WAL over.

use crate::store::StoreError;
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// WAL growth after which a checkpoint is asked for, unless configured
/// otherwise ([`SqliteOptions::checkpoint_bytes`](super::SqliteOptions)).
///
/// A checkpoint writes the pages it copies into the database file, and the
/// commits' own syncs wait behind that on the disk. Fewer, larger passes
/// copy a page rewritten by many commits once, and sync the WAL and the file
/// fewer times, but before the pass's pages were written back in steps
/// ([`super::paced`]) their write-back stalled commits. HL7 v2 bench:
/// - 2026-11-23, unpaced: 16 MiB gave 13-19% more messages/s in most
///   alternating pairs (2,605-3,228 against 2,216-2,641), but ACK p99.9
///   31-156 ms and max 40-267 ms, against 21-22 ms and 25-33 ms with 4 MiB;
/// - 2026-11-24, paced, runs of 144,000 messages: 16 MiB 6,342 and 6,397
///   messages/s, ACK p99 6.5 ms, p99.9 12.5-13.0 ms, max 17-19 ms; 8 MiB
///   6,063 and 5,505; 4 MiB 5,873 and 5,659, p99 6.1-6.4, p99.9 8.8-9.4,
///   max 13-14 ms (4 MiB unpaced: 5,764 and 5,587, p99 9.5-9.6 ms);
/// - 2026-11-25, alternating runs of 96,000 messages (one build, the
///   interval set per run): 64 MiB against 16 MiB faster in 12 of 18
///   pairs, mean 5,224 against 4,672, 4,419 against 3,886 and 6,750
///   against 6,154 messages/s in three sets (+10 to +14%), gateway CPU 255
///   against 279 and 302 against 327 µs a message, ACK p99 alike (7.3-12.3
///   against 6.8-11.1 ms); 32 MiB within the drift of 16; 128 MiB slower
///   than 64 in 4 of 5 rounds (3,817 against 4,363, the writer's CPU
///   107-120 against 87-111 µs a message).
pub const DEFAULT_CHECKPOINT_BYTES: i64 = 64 * 1024 * 1024;
/// Most frames the writer copies itself to let the WAL start over: the
/// pages of a few groups, a fraction of a millisecond to copy.
const SETTLE_BYTES: i64 = 1024 * 1024;
/// How long the checkpoint thread, caught up past the WAL's bound, leaves
/// the writer to copy the rest (a group commits every ~1.5 ms under load).
const SETTLE_ROOM: std::time::Duration = std::time::Duration::from_millis(2);
/// Most passes that caught up, past the bound, before the thread waits to
/// be asked again: each syncs the WAL and the file, and a WAL that does not
/// start over then (a reader in the way, groups larger than the writer
/// copies) is left to the writer at the limit.
const MAX_CAUGHT_UP: u32 = 8;
/// The WAL's bound and limit are never lower than these (with a small
/// checkpoint interval, a GP list's commits would meet them at once).
const MIN_BOUND_BYTES: i64 = 16 * 1024 * 1024;
const MIN_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
/// Longest the writer waits, with the WAL at its limit, for the checkpoint
/// thread's pass to end so that it can copy the rest (a pass of 16 MiB
/// took ~20 ms, its write-back and fsync included; one of 64 MiB copies at
/// most four times the pages: still well inside this).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Default)]
struct State {
    due: bool,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Frames in the WAL after the writer's last commit.
    frames: AtomicI32,
    /// Frames the last checkpoint found copied (of the WAL as it was then).
    copied: AtomicI32,
    /// The writer waits to copy the rest itself (the WAL at its limit):
    /// the thread starts no further pass until it has.
    writer_waits: AtomicBool,
}

/// The checkpoint thread; stopped (and joined) by [`Checkpointer::stop`] or
/// on drop.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    restart_frames: i32,
    settle_frames: i32,
    limit_frames: i32,
}

impl Checkpointer {
    /// Starts the thread on `conn` (a connection to the same file) and
    /// hooks `writer`'s commits to it. A checkpoint is asked for every
    /// `checkpoint_bytes` of WAL; the WAL is brought back to its beginning
    /// once it passes twice that and at least [`MIN_BOUND_BYTES`] (its
    /// bound), and the writer copies whatever is left, however much, at four
    /// times that and at least [`MIN_LIMIT_BYTES`] (its limit): when each
    /// commit is larger than [`SETTLE_BYTES`] (a GP list's chunks, ~12 MB)
    /// the checkpoint thread is never that close right after one, and the
    /// WAL reached 224 MB during a 50,000-row list.
    ///
    /// With 16 MiB (2026-11-24): the HL7 v2 bench's WAL peaked at 44-50
    /// MiB, a GP list's at 65-68 MiB. A bound of four times and a limit of
    /// eight let them reach 73-84 and 128 MiB for the same throughput;
    /// sixteen times 16 MiB, 215 MB. With the default 64 MiB (2026-11-25):
    /// 145 and 205 MiB.
    pub fn start(
        writer: &mut Connection,
        conn: Connection,
        checkpoint_bytes: i64,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared::default());
        let signal = shared.clone();
        let page_size: i64 = writer
            .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))?
            .max(512);
        let frames = |bytes: i64| i32::try_from(bytes / page_size).unwrap_or(i32::MAX).max(1);
        let checkpoint_bytes = checkpoint_bytes.max(page_size);
        let threshold = frames(checkpoint_bytes);
        let restart_frames = frames(checkpoint_bytes.saturating_mul(2).max(MIN_BOUND_BYTES));
        // Replaces SQLite's automatic checkpoint hook on the writer. It asks
        // once per `threshold` pages written, not at every commit past the
        // threshold (a checkpoint per commit copied a few pages each time,
        // with two fsyncs).
        let (mut asked_at, mut last) = (0, 0);
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            signal.frames.store(pages, Ordering::Relaxed);
            if pages < last {
                // The WAL started over from its beginning (a commit holds
                // fewer pages than the whole WAL before it).
                asked_at = 0;
                signal.copied.store(0, Ordering::Relaxed);
            }
            last = pages;
            if pages - asked_at >= threshold {
                asked_at = pages;
                let mut state = signal.state.lock().unwrap_or_else(|e| e.into_inner());
                if !state.due {
                    state.due = true;
                    signal.wake.notify_one();
                }
            }
            Ok(())
        }))?;
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&worker, &conn, restart_frames))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
            restart_frames,
            settle_frames: frames(SETTLE_BYTES),
            limit_frames: frames(checkpoint_bytes.saturating_mul(4).max(MIN_LIMIT_BYTES)),
        })
    }

    /// Called by the writer between groups: when the WAL is past its bound
    /// and the checkpoint thread has copied all but a few frames (or the
    /// WAL has reached its limit), copies the rest on the writer's
    /// connection, so that its next transaction starts the WAL over. Does
    /// nothing otherwise.
    pub fn settle(&self, writer: &Connection) {
        let frames = self.shared.frames.load(Ordering::Relaxed);
        // More copied than written: a count from before the WAL started
        // over; nothing is known copied of this one.
        let copied = Some(self.shared.copied.load(Ordering::Relaxed))
            .filter(|c| *c <= frames)
            .unwrap_or(0);
        if frames < self.restart_frames
            || (frames - copied > self.settle_frames && frames < self.limit_frames)
        {
            return;
        }
        // At the limit the writer waits for a checkpoint pass under way
        // (SQLite refuses a second checkpoint meanwhile, and calls no busy
        // handler): skipping, it let the WAL grow by a commit each time the
        // thread was copying, which under large commits it nearly always
        // was (111 MB against a 64 MiB limit in a test, once).
        let at_limit = frames >= self.limit_frames;
        if at_limit {
            self.shared.writer_waits.store(true, Ordering::Relaxed);
        }
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        loop {
            match passive(writer) {
                // -1: the checkpoint thread was at work; it records its own.
                Ok((_, copied)) if copied >= 0 => {
                    self.shared.copied.store(copied, Ordering::Relaxed);
                }
                Ok(_) if at_limit && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "WAL checkpoint by the writer failed"),
            }
            break;
        }
        self.shared.writer_waits.store(false, Ordering::Relaxed);
    }

    /// Finishes a checkpoint under way and ends the thread.
    pub fn stop(&mut self) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.closing = true;
            self.shared.wake.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PASSIVE checkpoint: copies what no reader still needs, waits for no
/// one. Answers the WAL's frames and how many of them are copied.
fn passive(conn: &Connection) -> rusqlite::Result<(i32, i32)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

fn run(shared: &Shared, conn: &Connection, restart_frames: i32) {
    loop {
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while !state.due && !state.closing {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.closing {
                return;
            }
            state.due = false;
        }
        // Past the bound, again until the WAL starts over: each pass copies
        // what was written during the one before, until one is short enough
        // for the writer to copy the rest between two groups (`settle`).
        // Stopping at a pass that caught up was not enough: a pass of 16 MiB
        // takes ~20 ms, the writer wrote ~440 frames meanwhile, more than it
        // copies itself, and the WAL ran to its limit every time (128 MiB,
        // 2026-11-24; the writer then copied ~3,900 frames in 10-11 ms while
        // messages waited). Passes back to back were not either: the writer
        // found one under way whenever it tried.
        let mut before = -1;
        let mut pause = std::time::Duration::from_millis(1);
        let mut caught_up = 0;
        loop {
            if shared.writer_waits.load(Ordering::Relaxed) {
                // The writer copies the rest (see `settle`): a pass now
                // would only make it wait.
                break;
            }
            match passive(conn) {
                // -1: the writer was checkpointing (see `settle`).
                Ok((frames, copied)) if copied >= 0 => {
                    shared.copied.store(copied, Ordering::Relaxed);
                    if frames < restart_frames || (copied >= frames && copied == before) {
                        // The WAL started over, or nothing was written since
                        // the last pass: the writer's next group finds it
                        // all copied.
                        break;
                    }
                    if copied >= frames {
                        caught_up += 1;
                        if caught_up >= MAX_CAUGHT_UP {
                            break;
                        }
                        // Caught up: the writer copies the few frames of
                        // its groups since, unless a pass is under way.
                        std::thread::sleep(SETTLE_ROOM);
                    } else if copied == before {
                        // A reader still needs the frames after `copied`:
                        // wait for it, less often the longer it reads.
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(std::time::Duration::from_millis(64));
                    } else {
                        pause = std::time::Duration::from_millis(1);
                    }
                    before = copied;
                }
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "WAL checkpoint failed; the next commit asks again");
                    break;
                }
            }
            if shared.state.lock().map_or(true, |s| s.closing) {
                return;
            }
        }
    }
}
