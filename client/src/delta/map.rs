//! Owns the memory maps deltas are applied with, and the start of a result's writeback:
//! the one place of this crate that uses `unsafe`, because mapping a file and calling
//! the kernel directly are.
//!
//! Safety: a map is only sound while no one else truncates or rewrites the file. The
//! agent maps the installed bytes it is about to replace (which only the agent changes,
//! and not while it applies a delta), the delta it downloaded into its own staging
//! directory, and the temporary output file it just created there. A file changed anyway
//! by hand at that moment can at worst end the process with SIGBUS or yield wrong bytes,
//! which the signed-hash check of the result refuses; nothing unverified is installed.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// A read-only map of the first `len` bytes of `file` (empty files map to an empty slice).
pub enum Map {
    /// A real map.
    Mapped(memmap2::Mmap),
    /// Nothing to map.
    Empty,
}

impl Map {
    /// Maps the first `len` bytes of `file` read-only.
    pub fn read(file: &File, len: u64) -> io::Result<Map> {
        if len == 0 {
            return Ok(Map::Empty);
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("too large to map"))?;
        // SAFETY: see the module documentation.
        let m = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(Map::Mapped(m))
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Map::Mapped(m) => m,
            Map::Empty => &[],
        }
    }
}

/// A writable shared map of `file`, first sized to `len` bytes (whatever it held before)
/// with its blocks allocated: a full disk is then an error here (`ENOSPC`), not a
/// `SIGBUS` when a page of the map is first written. Where the file system cannot
/// allocate ahead (`EOPNOTSUPP`), the file is only sized.
pub fn write(file: &File, len: u64) -> io::Result<Option<memmap2::MmapMut>> {
    file.set_len(len)?;
    if len == 0 {
        return Ok(None);
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {}
        Err(e) => {
            // Give back what was allocated before the disk filled.
            let _ = file.set_len(0);
            return Err(io::Error::from(e));
        }
    }
    // SAFETY: see the module documentation; the output file is the agent's own new file.
    let m = unsafe { memmap2::MmapMut::map_mut(file)? };
    Ok(Some(m))
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to the disk,
/// without waiting for them (Linux: `sync_file_range` with `SYNC_FILE_RANGE_WRITE`;
/// elsewhere nothing), so that a later sync finds most of the result written already.
/// Nothing is made durable here and no error is reported: the caller's sync does both.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a system call on a descriptor `file` keeps open; no memory is passed.
        let _ = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}
