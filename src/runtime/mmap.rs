//! A read-only memory map of a model file: the weights are used where they
//! lie, so loading copies nothing and the page cache is shared with other
//! processes reading the same file.

use std::fs::File;

pub struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and private; it is only ever read.
unsafe impl Send for Mmap {}
unsafe impl Sync for Mmap {}

impl Mmap {
    pub fn map(file: &File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::other("file too large to map"))?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh private read-only mapping of a file we hold open.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Mmap {
    /// Tells the kernel this process no longer needs the pages of
    /// `range` (whole pages inside it), so they leave its resident set;
    /// the file's pages stay in the page cache.  Reading them again is
    /// still valid (they are read back from the file).
    pub fn release(&self, range: std::ops::Range<usize>) {
        const PAGE: usize = 4096;
        let start = range.start.div_ceil(PAGE) * PAGE;
        let end = (range.end.min(self.len) / PAGE) * PAGE;
        if start < end {
            // SAFETY: a range of our own mapping; MADV_DONTNEED on a private
            // read-only file mapping only drops pages that can be re-read.
            unsafe {
                libc::madvise(
                    (self.ptr as *mut u8).add(start) as *mut libc::c_void,
                    end - start,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Zeroed anonymous memory for the packed weights: pages arrive on first
/// write (pre-faulting or huge pages were measured slower at load here).
pub struct AnonBuf {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: plain memory owned by this value.
unsafe impl Send for AnonBuf {}
unsafe impl Sync for AnonBuf {}

impl AnonBuf {
    pub fn zeroed(len: usize) -> std::io::Result<Self> {
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh private anonymous mapping.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

impl Drop for AnonBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly what `zeroed` mapped.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

/// A zeroed, growable buffer of f16 values in an anonymous mapping of its
/// own, for the KV cache.  Freed, its pages go straight back to the system:
/// held in malloc's heaps instead, caches of every size growing and freed
/// by the thousand fragmented them (measured: resident memory 15–22% above
/// its warmed-up level after a stress run, with the live heap flat).
#[derive(Default)]
pub struct F16Buf {
    mem: Option<AnonBuf>,
    len: usize,
}

impl F16Buf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grows the buffer to `len` values (never shrinks); new values are
    /// zero.  The old values are copied into a new mapping of exactly the
    /// new size (growth comes in large steps, so copies are rare).
    pub fn grow_to(&mut self, len: usize) -> std::io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        let bytes = len
            .checked_mul(2)
            .ok_or_else(|| std::io::Error::other("KV buffer size overflows"))?;
        let mut mem = AnonBuf::zeroed(bytes)?;
        if let Some(old) = &self.mem {
            mem.bytes_mut()[..self.len * 2].copy_from_slice(&old.bytes()[..self.len * 2]);
        }
        self.mem = Some(mem);
        self.len = len;
        Ok(())
    }
}

impl std::ops::Deref for F16Buf {
    type Target = [half::f16];
    fn deref(&self) -> &[half::f16] {
        match &self.mem {
            // SAFETY: the mapping is page-aligned, holds `len` values, and
            // every bit pattern is an f16.
            Some(m) => unsafe {
                std::slice::from_raw_parts(m.bytes().as_ptr() as *const half::f16, self.len)
            },
            None => &[],
        }
    }
}

impl std::ops::DerefMut for F16Buf {
    fn deref_mut(&mut self) -> &mut [half::f16] {
        let len = self.len;
        match &mut self.mem {
            // SAFETY: as above; `&mut self` makes the access exclusive.
            Some(m) => unsafe {
                std::slice::from_raw_parts_mut(m.bytes_mut().as_mut_ptr() as *mut half::f16, len)
            },
            None => &mut [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn f16_buffer_grows_zeroed_and_keeps_its_values() {
        let mut b = F16Buf::default();
        assert!(b.is_empty());
        assert_eq!(&*b, &[] as &[f16]);
        b.grow_to(3).unwrap();
        assert_eq!(&*b, &[f16::ZERO; 3]);
        b[1] = f16::from_f32(1.5);
        b[2] = f16::from_f32(-2.0);
        b.grow_to(5000).unwrap();
        assert_eq!(b.len(), 5000);
        assert_eq!(b[1].to_f32(), 1.5);
        assert_eq!(b[2].to_f32(), -2.0);
        assert!(b[3..].iter().all(|v| v.to_bits() == 0));
        b.grow_to(10).unwrap();
        assert_eq!(b.len(), 5000, "never shrinks");
        assert!(b.grow_to(usize::MAX).is_err());
    }
}
