//! A thin VFS over SQLite's own for the checkpoint thread's connection: the
//! pages a checkpoint pass copies into the database file go to the disk in
//! small steps as soon as the pass ends, instead of all at once later.
//!
//! A pass copies a few MB of pages into the database file's page cache. They
//! reach the disk either when SQLite syncs the file (only after a pass that
//! caught up with the WAL's end) or when the kernel writes dirty pages back:
//! either way in one burst, and the commits' own WAL `fdatasync`s queue
//! behind it on the disk. Measured on the HL7 v2 bench (2026-11-23): with no
//! checkpoints at all, ACK p99 4.9-7.2 ms against 9.5-15.6 ms and 12-32%
//! more messages/s; a test build that wrote the file back in
//! `sync_file_range` steps after each pass, 256 KiB 0.3 ms apart, +9-10%
//! and p99 7.0-7.7 against 8.8-9.4 ms.
//!
//! So this shim records where each write to the database file lands and,
//! when SQLite ends a pass's copy (`SQLITE_FCNTL_CKPT_DONE`) or syncs the
//! file, asks the kernel to write those ranges back [`STEP`] bytes at a
//! time, waiting for each step and pausing [`PAUSE`] between them, so that
//! the WAL's syncs find a short queue. Measured here (2026-11-24, HL7 v2
//! bench, alternating with the same build unpaced): ACK p99 5.6-6.2 ms
//! against 8.5-9.1 ms, and 1-3% more messages/s at 64 KiB steps 0.1 ms
//! apart; 128 KiB 0.1 ms apart gave the same, 256 KiB 0.3 ms apart and 1 MiB
//! 0.2 ms apart a smaller gain in p99, 32 KiB steps 5-8% fewer messages/s.
//!
//! What it must not change is durability or what anyone reads:
//! - It never writes, and never skips a call: every method is SQLite's own,
//!   called with the same arguments, `xShm*` and `xFetch`/`xUnfetch`
//!   included (the main database file's methods are version 3). SQLite's
//!   order (copy, sync the file, then let the WAL start over) is unchanged;
//!   the steps only move the write-back earlier, and `xSync` still syncs.
//! - `sync_file_range` is given SQLite's own descriptor for the file. A
//!   write-back error it reports is consumed for that descriptor (Linux
//!   reports each error once per open file), so the shim remembers it and
//!   fails the next `xSync` with `SQLITE_IOERR_FSYNC`, as the sync would
//!   have, and stops pacing the file: SQLite sees every error it would have
//!   seen, at the same call. (As without the shim, an error in the pages of
//!   a pass that stopped short of the WAL's end, which SQLite counts copied
//!   without a sync, is reported by the next sync and not undone.) Only
//!   `ENOSYS` and `ESPIPE`, returned before any work, say the file cannot
//!   be paced and are not kept: any other errno from a valid call is a
//!   write-back error (a block layer's `BLK_STS_INVAL` is recorded as
//!   `EINVAL`).
//! - The descriptor is read from the unix VFS's file (the fourth field of
//!   `unixFile` in the bundled SQLite, 3.54), used only when `fstat` shows
//!   it is the database file itself, and read again before each write-back
//!   (SQLite may close it). Otherwise, or off Linux, the shim only passes
//!   calls through.
//!
//! Files other than the main database file (the WAL, journals) are opened
//! by SQLite's VFS directly, with its own methods.

use super::shim::{self, forward};
use rusqlite::ffi;
use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::time::Duration;

/// The name the checkpoint thread opens its connection with.
pub(super) const NAME: &CStr = c"pathway-paced";

/// Bytes of copied pages written back per step.
const STEP: i64 = 128 * 1024;
/// Pause between two steps: the WAL's syncs go through meanwhile.
const PAUSE: Duration = Duration::from_micros(100);
/// Most separate ranges recorded between two write-backs (16 bytes each);
/// past it the rest is left to the kernel and `xSync`, as without the shim.
const MAX_RANGES: usize = 1 << 20;

/// Registers the VFS (once per process). Returns false when it could not
/// be, and the checkpoint thread then uses SQLite's VFS as it is.
pub(super) fn register() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| shim::register(NAME, OWN, open))
}

/// An open database file: SQLite's file after the shim's fields, in the
/// memory SQLite gives `xOpen` (`szOsFile` bytes, 8-byte aligned).
#[repr(C)]
struct DbFile {
    /// First, as SQLite requires: `pMethods` points at [`DB_METHODS`].
    base: ffi::sqlite3_file,
    /// SQLite's own file, further on in the same allocation.
    under: *mut ffi::sqlite3_file,
    /// SQLite's descriptor for the file, when it could be told for sure.
    fd: Option<c_int>,
    /// Byte ranges `[start, end)` written since the last write-back, in the
    /// order written, contiguous writes merged.
    ranges: Vec<(i64, i64)>,
    /// A write-back step failed: the next `xSync` fails too.
    failed: bool,
    /// For the tests: steps taken, and the bytes of the ranges they covered.
    steps: u64,
    stepped: i64,
}

/// The shim's bytes before SQLite's file.
const OWN: usize = shim::own_bytes::<DbFile>();

static DB_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: as SQLite calls `xOpen` of the VFS `register` registered:
    // `file` has room for a `DbFile` and SQLite's file after it.
    unsafe {
        let unix = CStr::from_ptr((*shim::under()).zName) == c"unix";
        if flags & ffi::SQLITE_OPEN_MAIN_DB == 0 || name.is_null() || !unix {
            return shim::open_plain(name, file, flags, out_flags);
        }
        let under = match shim::open_under(OWN, name, file, flags, out_flags) {
            Ok(under) => under,
            Err(rc) => return rc,
        };
        if !(*under).pMethods.as_ref().is_some_and(complete) {
            // Methods the shim could not stand in for: SQLite's file alone.
            shim::close_if_opened(under);
            return shim::open_plain(name, file, flags, out_flags);
        }
        let fd = descriptor(under, CStr::from_ptr(name));
        ptr::write(
            file.cast::<DbFile>(),
            DbFile {
                base: ffi::sqlite3_file {
                    pMethods: &DB_METHODS,
                },
                under,
                fd,
                ranges: Vec::new(),
                failed: false,
                steps: 0,
                stepped: 0,
            },
        );
        ffi::SQLITE_OK
    }
}

/// Whether SQLite's file has every method the shim passes calls to.
fn complete(methods: &ffi::sqlite3_io_methods) -> bool {
    let m = methods;
    m.iVersion >= 3
        && m.xClose.is_some()
        && m.xRead.is_some()
        && m.xWrite.is_some()
        && m.xTruncate.is_some()
        && m.xSync.is_some()
        && m.xFileSize.is_some()
        && m.xLock.is_some()
        && m.xUnlock.is_some()
        && m.xCheckReservedLock.is_some()
        && m.xFileControl.is_some()
        && m.xSectorSize.is_some()
        && m.xDeviceCharacteristics.is_some()
        && m.xShmMap.is_some()
        && m.xShmLock.is_some()
        && m.xShmBarrier.is_some()
        && m.xShmUnmap.is_some()
        && m.xFetch.is_some()
        && m.xUnfetch.is_some()
}

/// The start of the unix VFS's `unixFile` (sqlite3.c): its descriptor is
/// the fourth field.
#[repr(C)]
struct UnixFilePrefix {
    methods: *const c_void,
    vfs: *const c_void,
    inode: *const c_void,
    h: c_int,
}

/// The descriptor of a file the unix VFS opened at `path`, if `fstat` on it
/// shows the same file as `stat` on the path.
///
/// # Safety
/// `under` is a file the unix VFS opened (at least a `UnixFilePrefix`).
#[cfg(target_os = "linux")]
unsafe fn descriptor(under: *mut ffi::sqlite3_file, path: &CStr) -> Option<c_int> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: as the caller promises.
    let h = unsafe { (*under.cast::<UnixFilePrefix>()).h };
    let named = std::fs::metadata(std::ffi::OsStr::from_bytes(path.to_bytes())).ok()?;
    // SAFETY: `fstat` writes a `stat` (zeroed is a valid one) and fails on
    // a descriptor that is not open.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(h, &mut stat) } != 0 {
        return None;
    }
    (stat.st_dev == named.dev() && stat.st_ino == named.ino()).then_some(h)
}

#[cfg(not(target_os = "linux"))]
unsafe fn descriptor(_under: *mut ffi::sqlite3_file, _path: &CStr) -> Option<c_int> {
    None
}

/// The shim's state and SQLite's own file's methods.
///
/// # Safety
/// `file` is a file whose `pMethods` is [`DB_METHODS`], called from the one
/// thread that uses its connection at a time (as SQLite calls file methods).
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut DbFile, &'a ffi::sqlite3_io_methods) {
    // SAFETY: as the caller promises; `under` was opened by SQLite's VFS,
    // which set its methods.
    unsafe {
        let db = &mut *file.cast::<DbFile>();
        let methods = &*(*db.under).pMethods;
        (db, methods)
    }
}

impl DbFile {
    fn record(&mut self, start: i64, end: i64) {
        if let Some(last) = self.ranges.last_mut()
            && last.1 == start
        {
            last.1 = end;
        } else if self.ranges.len() < MAX_RANGES {
            self.ranges.push((start, end));
        }
    }

    /// Writes the recorded ranges back, step by step, and forgets them.
    fn write_back(&mut self) {
        let ranges = std::mem::take(&mut self.ranges);
        // SAFETY: `under` is the unix VFS's open file (`open` checked the
        // VFS, and `fd` is only set then).
        let current = unsafe { (*self.under.cast::<UnixFilePrefix>()).h };
        let Some(fd) = self.fd.filter(|fd| *fd == current) else {
            self.fd = None;
            return;
        };
        let steps = steps(ranges, STEP);
        let last = steps.len();
        for (i, (start, end, covered)) in steps.into_iter().enumerate() {
            if let Err(err) = write_range(fd, start, end - start) {
                self.step_failed(&err);
                return;
            }
            self.steps += 1;
            self.stepped += covered;
            if i + 1 < last {
                std::thread::sleep(PAUSE);
            }
        }
    }
}

impl DbFile {
    /// After a failed step, SQLite's own sync, and its errors, take over; a
    /// write-back error fails the next sync.
    fn step_failed(&mut self, err: &std::io::Error) {
        self.fd = None;
        if !is_unsupported(err) {
            tracing::warn!(error = %err, "writing checkpointed pages back failed; the next sync fails");
            self.failed = true;
        }
    }
}

/// Groups `ranges` into steps `(start, end, bytes)` of `step` bytes of the
/// ranges each (the last one fewer), in file order: a step spans from its
/// first byte to its last (the kernel writes only what is dirty between),
/// and a range longer than a step is cut.
fn steps(mut ranges: Vec<(i64, i64)>, step: i64) -> Vec<(i64, i64, i64)> {
    ranges.sort_unstable();
    let mut out = Vec::new();
    let mut open: Option<(i64, i64, i64)> = None;
    for (mut start, end) in ranges {
        while start < end {
            let current = open.get_or_insert((start, start, 0));
            let take = (end - start).min(step - current.2);
            current.1 = current.1.max(start + take);
            current.2 += take;
            start += take;
            if current.2 >= step {
                out.extend(open.take());
            }
        }
    }
    out.extend(open);
    out
}

#[cfg(target_os = "linux")]
fn write_range(fd: c_int, start: i64, len: i64) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: `sync_file_range` reads no memory; `fd` is SQLite's open
    // descriptor for the file, open until the file is closed.
    if unsafe { libc::sync_file_range(fd, start, len, flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn write_range(_fd: c_int, _start: i64, _len: i64) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Errors that say the call cannot be made on this file, returned before
/// any work: nothing is lost, and the file is no longer paced. Every other
/// error is a write-back error (see the module's notes).
fn is_unsupported(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::Unsupported
        || matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::ESPIPE))
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls with its database file and `amount` bytes.
    let (db, methods) = unsafe { parts(file) };
    let write = methods.xWrite.expect("SQLite's files write");
    let rc = unsafe { write(db.under, data, amount, offset) };
    if rc == ffi::SQLITE_OK && db.fd.is_some() {
        db.record(offset, offset + i64::from(amount.max(0)));
    }
    rc
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls with its database file.
    let (db, methods) = unsafe { parts(file) };
    db.write_back();
    let sync = methods.xSync.expect("SQLite's files sync");
    let rc = unsafe { sync(db.under, flags) };
    if std::mem::take(&mut db.failed) {
        return ffi::SQLITE_IOERR_FSYNC;
    }
    rc
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls with its database file.
    let (db, methods) = unsafe { parts(file) };
    let control = methods.xFileControl.expect("SQLite's files take controls");
    let rc = unsafe { control(db.under, op, arg) };
    if op == ffi::SQLITE_FCNTL_CKPT_DONE {
        db.write_back();
    }
    rc
}

// The calls passed straight to SQLite's own file.
forward!(read(data: *mut c_void, amount: c_int, offset: i64) => xRead);
forward!(truncate(size: i64) => xTruncate);
forward!(file_size(size: *mut i64) => xFileSize);
forward!(lock(level: c_int) => xLock);
forward!(unlock(level: c_int) => xUnlock);
forward!(check_reserved_lock(out: *mut c_int) => xCheckReservedLock);
forward!(sector_size() => xSectorSize);
forward!(device_characteristics() => xDeviceCharacteristics);
forward!(shm_map(page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) => xShmMap);
forward!(shm_lock(offset: c_int, n: c_int, flags: c_int) => xShmLock);
forward!(shm_unmap(delete: c_int) => xShmUnmap);
forward!(fetch(offset: i64, amount: c_int, out: *mut *mut c_void) => xFetch);
forward!(unfetch(offset: i64, page: *mut c_void) => xUnfetch);

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite calls with its database file.
    let (db, methods) = unsafe { parts(file) };
    let call = methods
        .xShmBarrier
        .expect("SQLite's files have xShmBarrier");
    unsafe { call(db.under) }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls with its database file, once, and not after.
    let (db, methods) = unsafe { parts(file) };
    let close = methods.xClose.expect("SQLite's files close");
    let closed = unsafe { close(db.under) };
    // SAFETY: the `DbFile` written by `open` is dropped once, here.
    unsafe { ptr::drop_in_place(file.cast::<DbFile>()) };
    closed
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    /// A connection writing a WAL store that only the tests checkpoint,
    /// with a table `t` of blobs, after `sql`.
    fn writer(path: &Path, sql: &str) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        conn.execute_batch(sql).unwrap();
        conn
    }

    fn checkpointer(path: &Path) -> Connection {
        assert!(register());
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn
    }

    /// The shim's state for the connection's database file.
    fn shim(conn: &mut Connection) -> &mut DbFile {
        let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
        // SAFETY: the connection is open; FILE_POINTER stores the main
        // database's `sqlite3_file` (opened by this VFS, so a `DbFile`) in
        // `file`, which lives while the connection does; the tests use the
        // connection from one thread.
        unsafe {
            let rc = ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            );
            assert_eq!(rc, ffi::SQLITE_OK);
            assert!(
                ptr::eq((*file).pMethods, &DB_METHODS),
                "the database file is the shim's"
            );
            &mut *file.cast::<DbFile>()
        }
    }

    fn checkpoint(conn: &Connection) -> rusqlite::Result<(i32, i32)> {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(1)?, row.get(2)?))
        })
    }

    #[test]
    fn steps_cover_every_range_in_file_order() {
        let ranges = vec![(40, 50), (0, 10), (10, 30), (100, 130), (60, 65)];
        assert_eq!(
            steps(ranges, 25),
            vec![(0, 25, 25), (25, 105, 5 + 10 + 5 + 5), (105, 130, 25)],
            "steps of 25 bytes of the ranges, spanning what lies between"
        );
        assert_eq!(steps(vec![(0, 4096)], 1 << 20), vec![(0, 4096, 4096)]);
        assert_eq!(
            steps(vec![(0, 10_000)], 4096),
            vec![(0, 4096, 4096), (4096, 8192, 4096), (8192, 10_000, 1808)]
        );
        assert_eq!(
            steps(vec![(0, 10), (5, 8)], 100),
            vec![(0, 10, 13)],
            "a step never ends before a range it covers"
        );
        assert!(steps(Vec::new(), 10).is_empty());
    }

    #[test]
    fn a_checkpoint_writes_back_every_page_it_copied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = writer(&path, "");
        let mut conn = checkpointer(&path);
        let page: i64 = conn
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .unwrap();
        let fd = shim(&mut conn)
            .fd
            .expect("SQLite's descriptor for the file");
        let named = std::fs::metadata(&path).unwrap();
        // SAFETY: as in `descriptor`.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut stat) }, 0);
        use std::os::unix::fs::MetadataExt;
        assert_eq!((stat.st_dev, stat.st_ino), (named.dev(), named.ino()));

        let mut rows = 0;
        for round in 0..3 {
            writer.execute_batch("BEGIN").unwrap();
            for _ in 0..600 {
                writer
                    .execute("INSERT INTO t (v) VALUES (zeroblob(3000))", [])
                    .unwrap();
                rows += 1;
            }
            writer.execute_batch("COMMIT").unwrap();
            let (steps, stepped) = (shim(&mut conn).steps, shim(&mut conn).stepped);
            let size_before = std::fs::metadata(&path).unwrap().len() as i64;
            let (frames, copied) = checkpoint(&conn).unwrap();
            assert_eq!(copied, frames, "round {round}: everything copied");
            let shim = shim(&mut conn);
            assert!(shim.ranges.is_empty(), "round {round}: nothing left");
            // Every page written to the file was stepped over: the pages
            // the pass copied, one write each, at least the file's growth.
            let grown = std::fs::metadata(&path).unwrap().len() as i64 - size_before;
            let stepped = shim.stepped - stepped;
            assert_eq!(stepped % page, 0, "round {round}: whole pages");
            assert!(
                stepped >= grown && stepped <= i64::from(frames) * page,
                "round {round}: stepped {stepped} bytes, grew {grown}, {frames} frames"
            );
            let taken = shim.steps - steps;
            assert_eq!(
                taken,
                (stepped as u64).div_ceil(STEP as u64),
                "round {round}: steps of {STEP} bytes over {stepped}"
            );
            assert!(shim.fd.is_some() && !shim.failed);
            // The WAL starts over with the writer's next transaction.
        }
        // What was copied reads back whole, through another connection.
        drop(conn);
        let fresh = Connection::open(&path).unwrap();
        let (count, integrity): (i64, String) = fresh
            .query_row(
                "SELECT (SELECT count(*) FROM t), (SELECT integrity_check FROM pragma_integrity_check)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((count, integrity.as_str()), (rows, "ok"));
    }

    /// A pass that cannot copy every frame (a reader still needs the last
    /// ones) does not sync the file; its pages are written back all the same.
    #[test]
    fn a_pass_short_of_the_end_is_written_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = writer(&path, "INSERT INTO t (v) VALUES (zeroblob(400000))");
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        writer
            .execute("INSERT INTO t (v) VALUES (zeroblob(400000))", [])
            .unwrap();
        let mut conn = checkpointer(&path);
        let (frames, copied) = checkpoint(&conn).unwrap();
        assert!(0 < copied && copied < frames, "{copied} of {frames} copied");
        let shim = shim(&mut conn);
        assert!(shim.ranges.is_empty());
        // The first row's ~98 overflow pages at least.
        assert!(shim.stepped >= 90 * 4096, "{} bytes stepped", shim.stepped);
    }

    /// A failed write-back step fails the sync that follows it, so SQLite
    /// does not count the pages copied; the next pass copies them again.
    /// (The step itself cannot be made to fail here: `step_failed` is
    /// checked on its own below.)
    #[test]
    fn a_failed_step_fails_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        // Open while the checkpoints run: its close would checkpoint too.
        let _writer = writer(&path, "INSERT INTO t (v) VALUES (zeroblob(50000))");
        let mut conn = checkpointer(&path);
        shim(&mut conn).failed = true;
        let err = checkpoint(&conn).unwrap_err();
        assert_eq!(
            err.sqlite_error().map(|e| e.extended_code),
            Some(ffi::SQLITE_IOERR_FSYNC),
            "{err}"
        );
        let stepped = shim(&mut conn).stepped;
        assert!(stepped >= 12 * 4096, "the row's pages: {stepped} bytes");
        assert!(!shim(&mut conn).failed, "reported once");
        let (frames, copied) = checkpoint(&conn).unwrap();
        assert_eq!(copied, frames);
        assert!(
            shim(&mut conn).stepped - stepped >= 12 * 4096,
            "the same pages copied again"
        );
    }

    #[test]
    fn only_a_call_refused_up_front_is_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = checkpointer(&dir.path().join("db"));
        let shim = shim(&mut conn);
        let fd = shim.fd;
        assert!(fd.is_some());
        for (errno, failure) in [
            (libc::EIO, true),
            (libc::ENOSPC, true),
            (libc::EINVAL, true),
            (libc::EBADF, true),
            (libc::ENOSYS, false),
            (libc::ESPIPE, false),
        ] {
            (shim.fd, shim.failed) = (fd, false);
            shim.step_failed(&std::io::Error::from_raw_os_error(errno));
            assert_eq!(shim.failed, failure, "errno {errno}");
            assert_eq!(shim.fd, None, "errno {errno}: no longer paced");
        }
        shim.failed = false;
    }
}
