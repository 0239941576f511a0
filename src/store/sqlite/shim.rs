//! What the store's two VFS shims share ([`super::walbatch`] over the
//! writer's WAL, [`super::paced`] over the checkpoint thread's database
//! file): each is SQLite's default VFS registered again under a name of its
//! own with its own `xOpen`, which puts the shim's state at the start of the
//! memory SQLite gives a file and opens SQLite's own file after it.

use rusqlite::ffi;
use std::ffi::{CStr, c_int};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A VFS's `xOpen`.
pub(super) type Open = unsafe extern "C" fn(
    *mut ffi::sqlite3_vfs,
    ffi::sqlite3_filename,
    *mut ffi::sqlite3_file,
    c_int,
    *mut c_int,
) -> c_int;

static UNDER: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// SQLite's default VFS, which every call goes to in the end: set by
/// [`register`] before any shim's VFS can be used.
pub(super) fn under() -> *mut ffi::sqlite3_vfs {
    UNDER.load(Ordering::Acquire)
}

/// Bytes a shim's state `T` takes before SQLite's own file (which must be
/// 8-byte aligned).
pub(super) const fn own_bytes<T>() -> usize {
    std::mem::size_of::<T>().next_multiple_of(8)
}

/// Registers SQLite's default VFS again as `name`, with `open` as its
/// `xOpen` and `own` bytes before each of SQLite's files. False when it
/// could not be (the caller then opens its connection with SQLite's VFS).
pub(super) fn register(name: &'static CStr, own: usize, open: Open) -> bool {
    // SAFETY: `sqlite3_vfs_find` initialises SQLite and returns its default
    // VFS, which lives for the process. The copy is leaked, so it lives as
    // long; its functions other than `xOpen` are SQLite's own and use only
    // fields copied with them.
    unsafe {
        let under = ffi::sqlite3_vfs_find(ptr::null());
        if under.is_null() {
            return false;
        }
        UNDER.store(under, Ordering::Release);
        let mut vfs = ptr::read(under);
        vfs.zName = name.as_ptr();
        vfs.pNext = ptr::null_mut();
        vfs.szOsFile = (own + (*under).szOsFile as usize) as c_int;
        vfs.xOpen = Some(open);
        ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0) == ffi::SQLITE_OK
    }
}

/// Opens the file with SQLite's own VFS straight into `file`: the shim
/// stays out of its calls.
///
/// # Safety
/// As for SQLite's `xOpen`, from a VFS [`register`]ed (so `file` has room).
pub(super) unsafe fn open_plain(
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let under = under();
    // SAFETY: as the caller promises; `register` set `UNDER`.
    unsafe {
        let open = (*under).xOpen.expect("SQLite's VFS opens files");
        open(under, name, file, flags, out_flags)
    }
}

/// Opens SQLite's own file `own` bytes into `file`, after the shim's state,
/// and answers it. On failure it is closed as SQLite would close its own
/// (when its methods were set), `file` is left without methods, and
/// SQLite's code is the error.
///
/// # Safety
/// As for SQLite's `xOpen`, from a VFS [`register`]ed with `own`.
pub(super) unsafe fn open_under(
    own: usize,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> Result<*mut ffi::sqlite3_file, c_int> {
    // SAFETY: `file` has `own` bytes and then room for SQLite's file.
    unsafe {
        let inner = file.cast::<u8>().add(own).cast::<ffi::sqlite3_file>();
        let rc = open_plain(name, inner, flags, out_flags);
        if rc == ffi::SQLITE_OK {
            return Ok(inner);
        }
        close_if_opened(inner);
        (*file).pMethods = ptr::null();
        Err(rc)
    }
}

/// Closes a file of SQLite's VFS if its methods were set (as SQLite does
/// after a failed open, or for a file a shim gives up on).
///
/// # Safety
/// `file` is zeroed memory or a file SQLite's VFS opened, not closed since.
pub(super) unsafe fn close_if_opened(file: *mut ffi::sqlite3_file) {
    // SAFETY: as the caller promises.
    unsafe {
        if let Some(close) = (*file).pMethods.as_ref().and_then(|m| m.xClose) {
            close(file);
        }
    }
}

/// An I/O method that only calls SQLite's own file's, through the invoking
/// module's `parts(file) -> (&mut State, &sqlite3_io_methods)` (the state
/// holding SQLite's file as `under`).
macro_rules! forward {
    ($name:ident ( $($arg:ident : $ty:ty),* ) => $method:ident) => {
        unsafe extern "C" fn $name(
            file: *mut rusqlite::ffi::sqlite3_file,
            $($arg: $ty),*
        ) -> std::ffi::c_int {
            // SAFETY: SQLite calls with a file this shim opened.
            let (state, methods) = unsafe { parts(file) };
            let call = methods
                .$method
                .expect(concat!("SQLite's files have ", stringify!($method)));
            unsafe { call(state.under, $($arg),*) }
        }
    };
}
pub(super) use forward;
