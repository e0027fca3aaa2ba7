//! The only `unsafe` of xlb's agent: two system calls that std does not wrap, each behind a
//! safe function whose `SAFETY` comments carry the argument. `lb-user` forbids `unsafe_code`;
//! whatever else it needs from the kernel goes through aya, tokio or std.
//!
//! - [`SharedSlots`]: a `BPF_F_MMAPABLE` array map mapped into the agent's memory, so a whole
//!   Maglev table is one copy instead of one syscall per slot.
//! - [`bind_private`]: a Unix socket created with mode 0600 from the start (the umask is set
//!   around `bind`), so there is no window in which another user could connect.
use std::{
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixListener,
    },
    path::Path,
    ptr::NonNull,
};

/// `entries` 8-byte slots of a mappable BPF array, shared with the kernel. The kernel stores
/// array elements 8-byte aligned, so a `u32` element is the low half of each slot.
///
/// Writes are plain stores: the data plane may read a slot while it is written. Callers only
/// write slots no program reads yet (xlb writes the idle copy of a table, then flips the
/// listener to it with a map update, a syscall that orders the stores before it).
pub struct SharedSlots {
    ptr: NonNull<u64>,
    entries: usize,
    len: usize,
    /// Keeps the map alive as long as the mapping.
    _fd: OwnedFd,
}

impl SharedSlots {
    /// Map `entries` slots of the mappable array behind `fd`, read-write and shared.
    pub fn map(fd: OwnedFd, entries: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (entries * std::mem::size_of::<u64>()).div_ceil(page) * page;
        // SAFETY: asks the kernel for a new shared mapping of `len` bytes from offset 0 of the
        // map behind `fd`; no existing memory is touched. The kernel refuses (MAP_FAILED) a map
        // that is not mappable or is smaller than `len`, which is checked before any use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u64>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self {
            ptr,
            entries,
            len,
            _fd: fd,
        })
    }

    /// The slots, for writing.
    pub fn slots_mut(&mut self) -> &mut [u64] {
        // SAFETY: the mapping holds at least `entries` 8-byte slots (checked by the kernel in
        // `map`), is page-aligned, stays mapped until drop, and `&mut self` makes this the only
        // view of it in this process. Every bit pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.entries) }
    }
}

impl Drop for SharedSlots {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no slice of it outlives `&mut self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Bind a Unix stream socket at `path` that only its owner (root) may open: created with
/// mode 0600, never briefly wider.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's file-mode creation mask and cannot fail. Other
    // threads creating files in this window get the stricter mask, never a wider one.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    bound
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_private_socket_is_created_0600() {
        let dir = std::env::temp_dir().join(format!("xlb-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _l = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
