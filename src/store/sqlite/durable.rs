//! Making commits durable off the writer's path.
//!
//! The writer's connection commits with `synchronous=NORMAL`: COMMIT writes
//! the group's WAL frames and makes them visible, without waiting for the
//! disk. The store's answering thread then syncs the WAL file ([`WalSync`])
//! and only after that answers the group's jobs and publishes its versions,
//! while the writer already applies the next group. Waiting for the disk
//! (an `fdatasync` is a VM exit here, 0.2-1.5 ms) then overlaps the next
//! group's work instead of following it. Measured against a writer syncing
//! its own commits: HL7 v2 +4% messages/s (mean of ten alternating pairs),
//! HTTP creates +10-26%, a GP list's first upload 6% quicker.
//!
//! Why an acknowledged write is still on disk after a power loss:
//! - one sync covers every group committed before it started: the WAL is
//!   written in order, and an `fdatasync` flushes all of the file;
//! - SQLite's recovery keeps the longest run of WAL frames whose running
//!   checksum holds: a commit that did not reach the disk takes the later
//!   ones with it, and none of those was answered;
//! - a checkpoint syncs the WAL before it copies frames into the database
//!   file (with `synchronous=NORMAL` or `FULL`, SQLite's rule), and the WAL
//!   starts over only once every frame is copied: a group's frames are
//!   either still in the WAL when it is synced, or synced already;
//! - as with `synchronous=FULL`, the disk is taken to be "powersafe
//!   overwrite" (SQLite's default): writing a frame does not damage the
//!   frames beside it in the same sector.
//!
//! Nor does anyone *read* a write before it is on disk ([`Durability`]):
//! between its COMMIT and its sync (about a millisecond) another connection
//! could see a group that a power loss would then take back. So a read from
//! SQLite returns only once every group it may have seen is synced; the
//! cache takes a group's versions only after its sync; and the router, which
//! reads the outbox through the same barrier, never delivers a version that
//! could still be lost. Only the feeds' lookups that plan writes skip the
//! barrier (`SqliteStore::read_unsettled`): what they plan is committed
//! after what they read, so a power loss takes both; an answer given from
//! them with no write after (a dry run, a failed replay, an outcome report)
//! waits for `Store::settled` first. Waiting on each lookup instead made
//! a GP list's planning of one chunk wait for the previous chunk's sync.
//! (A store opened by another process beside the serving gateway, such as
//! `report`, knows nothing of the gateway's syncs: it may read a group up
//! to a sync early.)

use super::Job;
use crate::store::StoreError;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::watch;

/// How far the writer's groups have got, shared by the writer, its
/// answering thread and the store's readers.
///
/// Groups are counted twice: when the writer starts to end one (before its
/// COMMIT, so a reader that sees a group's writes also counts it), and when
/// the group is settled (synced and answered, or refused). Every counted
/// group is settled exactly once, in order.
pub(super) struct Durability {
    ending: AtomicU64,
    settled: watch::Sender<u64>,
    /// Why a sync failed, once one has: whether the commits since the last
    /// good sync are on disk is unknown, so no write is taken and no read
    /// is served from SQLite after it.
    failed: OnceLock<String>,
    /// The writer is blocked on its queue until a group is settled: the
    /// answering thread wakes it ([`Durability::settled`] says whether to).
    writer_waiting: AtomicBool,
}

impl Default for Durability {
    fn default() -> Self {
        Durability {
            ending: AtomicU64::new(0),
            settled: watch::Sender::new(0),
            failed: OnceLock::new(),
            writer_waiting: AtomicBool::new(false),
        }
    }
}

impl Durability {
    /// Counts a group the writer is about to commit (or refuse).
    pub fn ending(&self) {
        self.ending.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts `groups` settled; `true` if the writer waits to be woken.
    pub fn settled(&self, groups: u64) -> bool {
        self.settled
            .send_modify(|settled| *settled = settled.saturating_add(groups));
        self.writer_waiting.swap(false, Ordering::SeqCst)
    }

    /// Every group counted so far is settled.
    pub fn all_settled(&self) -> bool {
        *self.settled.borrow() >= self.ending.load(Ordering::SeqCst)
    }

    /// For the writer, with its queue empty: `true` if it may block on the
    /// queue until woken (a group is still being settled), `false` if every
    /// group is settled already.
    pub fn writer_waits(&self) -> bool {
        if self.all_settled() {
            return false;
        }
        self.writer_waiting.store(true, Ordering::SeqCst);
        // A group settled before the flag was set sends no wake-up.
        if self.all_settled() {
            self.writer_waiting.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The writer was woken by a job, not by a settled group.
    pub fn writer_woken(&self) {
        self.writer_waiting.store(false, Ordering::SeqCst);
    }

    /// The groups counted so far: a read from SQLite takes this after it
    /// has read, as the most it can have seen.
    pub fn seen(&self) -> u64 {
        self.ending.load(Ordering::SeqCst)
    }

    /// Whether the first `seen` groups are settled now (never waits).
    pub fn is_settled(&self, seen: u64) -> bool {
        *self.settled.borrow() >= seen
    }

    /// Waits until the first `seen` groups are settled: what a read saw is
    /// then on disk. Refused once a sync has failed.
    pub async fn wait_settled(&self, seen: u64) -> Result<(), StoreError> {
        if !self.is_settled(seen) {
            let mut settled = self.settled.subscribe();
            // The sender lives as long as `self`.
            let _ = settled.wait_for(|settled| *settled >= seen).await;
        }
        self.usable()
    }

    /// Refused once a sync has failed: what follows may not be on disk.
    pub fn usable(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(StoreError::Io(io::Error::other(reason.clone()))),
            None => Ok(()),
        }
    }

    /// A thread the groups depend on (the writer, its answering thread) has
    /// ended. Unless every group counted is settled, some never will be (a
    /// panic): the store then refuses everything, and nobody waits on.
    pub fn thread_ended(&self) {
        if !self.all_settled() {
            let _ = self.failed.set(
                "the store's writer stopped before its last writes were synced: writes are refused until the gateway is restarted"
                    .to_string(),
            );
            self.settled.send_replace(u64::MAX);
        }
    }

    /// Why writes are refused, if a sync has failed.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Records a failed sync; returns the reason every later write gets.
    pub fn fail(&self, err: &io::Error) -> String {
        self.failed
            .get_or_init(|| {
                tracing::error!(error = %err, "syncing the WAL failed; the store refuses writes from now on");
                format!(
                    "the store could not sync its write-ahead log ({err}): writes are refused until the gateway is restarted"
                )
            })
            .clone()
    }
}

/// For the answering thread: calls [`Durability::thread_ended`] when
/// dropped, as when the thread ends (or unwinds), then wakes the writer,
/// which may be waiting to be told a group is settled.
pub(super) struct OnThreadEnd {
    pub durability: std::sync::Arc<Durability>,
    pub wake: tokio::sync::mpsc::WeakSender<Job>,
}

impl Drop for OnThreadEnd {
    fn drop(&mut self) {
        self.durability.thread_ended();
        if let Some(queue) = self.wake.upgrade() {
            let _ = queue.try_send(Job::Synced);
        }
    }
}

/// The WAL file of a database, synced on demand.
pub(super) struct WalSync {
    wal: PathBuf,
    dir: PathBuf,
    file: Option<File>,
    /// The directory entry of a new WAL must reach the disk too (SQLite
    /// syncs the directory after a journal's first sync): once per run.
    dir_synced: bool,
}

impl WalSync {
    /// Another for the same file, not opened yet (for another thread).
    pub fn unopened(&self) -> Self {
        WalSync {
            wal: self.wal.clone(),
            dir: self.dir.clone(),
            file: None,
            dir_synced: false,
        }
    }

    /// For the database at `db`; its WAL is `{db}-wal`.
    pub fn new(db: &Path) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        WalSync {
            wal: PathBuf::from(wal),
            dir: db
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            file: None,
            dir_synced: false,
        }
    }

    /// Flushes everything written to the WAL so far to the disk.
    ///
    /// The file is opened once and kept: SQLite keeps the WAL (never
    /// deletes or replaces it) while the writer's connection is open, and
    /// takes no POSIX locks on it that closing another descriptor would
    /// drop (its locks are on the database and `-shm` files).
    pub fn sync(&mut self) -> io::Result<()> {
        let file = match &self.file {
            Some(file) => file,
            None => self
                .file
                .insert(OpenOptions::new().read(true).write(true).open(&self.wal)?),
        };
        file.sync_data()?;
        if !self.dir_synced {
            // As SQLite does, a directory that cannot be synced (some file
            // systems refuse) is not an error.
            if let Err(err) = File::open(&self.dir).and_then(|dir| dir.sync_all()) {
                tracing::warn!(dir = %self.dir.display(), error = %err, "could not sync the WAL's directory");
            }
            self.dir_synced = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_read_waits_until_every_group_it_may_have_seen_is_settled() {
        let durability = std::sync::Arc::new(Durability::default());
        durability.ending();
        durability.ending();
        let seen = durability.seen();
        assert_eq!(seen, 2);
        let waiting = {
            let durability = durability.clone();
            tokio::spawn(async move { durability.wait_settled(seen).await })
        };
        durability.settled(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "returned with a group unsynced");
        durability.settled(1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("still waiting after every group was settled")
            .unwrap()
            .unwrap();
        // A later group does not hold up a read that could not see it.
        durability.ending();
        durability.wait_settled(seen).await.unwrap();
        assert!(!durability.is_settled(durability.seen()));
    }

    #[test]
    fn the_writer_is_woken_only_when_it_waits() {
        let durability = Durability::default();
        assert!(!durability.writer_waits(), "nothing to wait for");
        durability.ending();
        assert!(!durability.all_settled());
        assert!(durability.writer_waits());
        assert!(durability.settled(1), "a waiting writer is woken");
        assert!(durability.all_settled());
        durability.ending();
        assert!(durability.writer_waits());
        durability.writer_woken();
        assert!(!durability.settled(1), "a woken writer is not woken again");
    }

    #[tokio::test]
    async fn a_thread_ending_with_groups_unsettled_fails_the_store_and_lets_readers_go() {
        let durability = std::sync::Arc::new(Durability::default());
        durability.ending();
        durability.settled(1);
        // Ending with everything settled (a close) changes nothing.
        durability.thread_ended();
        assert_eq!(durability.failure(), None);
        durability.wait_settled(1).await.unwrap();
        durability.ending();
        let waiting = {
            let durability = durability.clone();
            tokio::spawn(async move { durability.wait_settled(2).await })
        };
        let (queue, mut woken) = tokio::sync::mpsc::channel::<Job>(1);
        // The reader is waiting before the thread ends.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(OnThreadEnd {
            durability: durability.clone(),
            wake: queue.downgrade(),
        });
        let refused = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a reader still waits for a group that will never settle")
            .unwrap()
            .unwrap_err();
        assert!(refused.to_string().contains("writer stopped"), "{refused}");
        assert!(
            matches!(woken.try_recv(), Ok(Job::Synced)),
            "the writer was not woken"
        );
        assert!(!durability.writer_waits());
    }

    #[tokio::test]
    async fn after_a_failed_sync_reads_and_writes_are_refused() {
        let durability = Durability::default();
        assert_eq!(durability.failure(), None);
        let reason = durability.fail(&io::Error::other("disk gone"));
        assert!(reason.contains("disk gone"), "{reason}");
        // The first failure is the one kept.
        assert_eq!(durability.fail(&io::Error::other("again")), reason);
        assert_eq!(durability.failure(), Some(reason.as_str()));
        let refused = durability.wait_settled(0).await.unwrap_err();
        assert!(refused.to_string().contains("disk gone"), "{refused}");
    }

    #[test]
    fn the_wal_beside_a_database_is_synced_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gateway.sqlite");
        let mut wal = WalSync::new(&db);
        let err = wal.sync().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::write(dir.path().join("gateway.sqlite-wal"), b"frames").unwrap();
        wal.sync().unwrap();
        assert!(wal.dir_synced);
        // A database named without a directory has its WAL in this one.
        assert_eq!(WalSync::new(Path::new("x.db")).dir, PathBuf::from("."));
    }
}
