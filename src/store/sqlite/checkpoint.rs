//! WAL checkpoints on a thread of their own.
//!
//! SQLite's default is to checkpoint inside the commit that takes the WAL
//! past 1,000 pages: the writer thread then copies every page into the
//! database file and fsyncs it while the jobs queued behind it wait. Here the
//! writer's WAL hook only signals, and this thread runs a PASSIVE checkpoint
//! on its own connection, which never blocks the writer (nor is blocked by
//! it), so copying pages overlaps the next commits instead of delaying them.

use crate::store::StoreError;
use rusqlite::Connection;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// WAL size after a commit from which a checkpoint is asked for: SQLite's
/// own default for automatic checkpoints (1,000 pages of 4 KiB).
pub(super) const CHECKPOINT_BYTES: i64 = 4 * 1024 * 1024;

#[derive(Default)]
struct State {
    due: bool,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// The checkpoint thread; stopped (and joined) by [`Checkpointer::stop`] or
/// on drop.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn` (a connection to the same file) and
    /// hooks `writer`'s commits to it.
    pub fn start(writer: &mut Connection, conn: Connection) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared::default());
        let signal = shared.clone();
        let page_size: i64 = writer.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let threshold = (CHECKPOINT_BYTES / page_size.max(512)).max(1) as i32;
        // Replaces SQLite's automatic checkpoint hook on the writer.
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages >= threshold {
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
            .spawn(move || run(&worker, &conn))?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
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

fn run(shared: &Shared, conn: &Connection) {
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
        // PASSIVE: copies what no reader still needs, waits for no one. What
        // it cannot copy yet is copied by a later one.
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %err, "WAL checkpoint failed; the next commit asks again");
        }
    }
}
