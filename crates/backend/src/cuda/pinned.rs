//! Pinned (page-locked) host staging for the small uploads of every step (token ids,
//! positions, slots, block tables: `copy_i32_from_host`).
//!
//! Why: a copy from pageable memory makes the driver stage the bytes itself, which costs
//! the host several microseconds per copy while the GPU waits for the step's graph; a
//! step uploads seven such arrays. From pinned memory the copy is a DMA the stream runs
//! on its own. The region is a ring: each upload takes fresh bytes at the head, and bytes
//! are handed back only once the copies that read them are known to have completed:
//! everything at a stream synchronization (`reset`), or everything written before a mark
//! whose event has completed (`release`, used by the overlapped steps, which wait for one
//! step's ids while the next step's uploads are still queued). So no bytes are rewritten
//! while a copy may still read them. An upload that finds no room falls back to a pageable
//! copy.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result as drv, sys, CudaContext};

/// Bytes of pinned staging (block tables of 256 sequences x 256 blocks fit eight times).
pub(super) const PINNED_BYTES: usize = 2 << 20;

pub(super) struct PinnedStaging {
    ptr: *mut u8,
    /// The region's address for kernels (mapped memory: a kernel reads it over the bus).
    device_ptr: sys::CUdeviceptr,
    ring: Ring,
    ctx: Arc<CudaContext>,
}

impl PinnedStaging {
    /// Allocates the region in `ctx` (which must be bound to this thread).
    pub(super) fn new(
        ctx: &Arc<CudaContext>,
        len: usize,
    ) -> Result<PinnedStaging, drv::DriverError> {
        // Freed in Drop.
        let (ptr, device_ptr) = alloc_mapped(len)?;
        Ok(PinnedStaging {
            ptr,
            device_ptr,
            ring: Ring {
                len: len as u64,
                written: 0,
                released: 0,
            },
            ctx: Arc::clone(ctx),
        })
    }

    /// Copies `src` into fresh pinned bytes and enqueues their copy to `dst` on `stream`;
    /// false (nothing done) when the region has no free room.
    ///
    /// # Safety
    /// `dst` must hold `size_of_val(src)` bytes, and `reset` / `release` may only be
    /// called once the copies they hand back have completed (see those).
    pub(super) unsafe fn upload<T: Copy>(
        &mut self,
        dst: sys::CUdeviceptr,
        src: &[T],
        stream: sys::CUstream,
    ) -> Result<bool, drv::DriverError> {
        let bytes = std::mem::size_of_val(src);
        let Some(at) = self.ring.take(bytes.next_multiple_of(16)) else {
            return Ok(false);
        };
        let host = self.ptr.add(at);
        std::ptr::copy_nonoverlapping(src.as_ptr() as *const u8, host, bytes);
        sys::cuMemcpyHtoDAsync_v2(dst, host as *const c_void, bytes, stream).result()?;
        Ok(true)
    }

    /// Copies `parts` back to back into fresh pinned bytes for a kernel to read (the step
    /// uploads of `CudaBackend::upload_i32_segments`); their device address, or None
    /// when the region has no free room. The bytes stay taken until `reset` / `release`
    /// hands them back, under the same rule as `upload`'s: only once the kernel that
    /// reads them is known to have completed.
    pub(super) fn stage(&mut self, parts: &[&[i32]]) -> Option<sys::CUdeviceptr> {
        let bytes: usize = parts.iter().map(|p| std::mem::size_of_val(*p)).sum();
        let at = self.ring.take(bytes.max(1).next_multiple_of(16))?;
        let mut off = at;
        for p in parts {
            let n = std::mem::size_of_val(*p);
            // SAFETY: `take` handed out `bytes` free bytes at `at`, inside the region.
            unsafe { std::ptr::copy_nonoverlapping(p.as_ptr() as *const u8, self.ptr.add(off), n) };
            off += n;
        }
        Some(self.device_ptr + at as u64)
    }

    /// See `Ring::mark`.
    pub(super) fn mark(&self) -> u64 {
        self.ring.written
    }

    /// See `Ring::release`.
    pub(super) fn release(&mut self, mark: u64) {
        self.ring.release(mark);
    }

    /// Hands back the whole region: only after a synchronization of the stream.
    pub(super) fn reset(&mut self) {
        self.ring.released = self.ring.written;
    }
}

impl Drop for PinnedStaging {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host in this context; nothing uses it any more.
        unsafe {
            let _ = self.ctx.bind_to_thread();
            let _ = drv::free_host(self.ptr as *mut c_void);
        }
    }
}

/// `len` bytes of page-locked host memory mapped into the device's address space, so a
/// kernel may read or write them over the bus: (host pointer, device address). Freed
/// with `drv::free_host`; nothing is left allocated on an error. The context must be
/// bound to this thread.
pub(super) fn alloc_mapped(len: usize) -> Result<(*mut u8, sys::CUdeviceptr), drv::DriverError> {
    // SAFETY: a plain page-locked allocation with the mapping flag.
    let ptr = unsafe { drv::malloc_host(len, sys::CU_MEMHOSTALLOC_DEVICEMAP) }? as *mut u8;
    let mut device: sys::CUdeviceptr = 0;
    // SAFETY: `ptr` is a mapped allocation of this context, just made.
    if let Err(e) =
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, ptr as *mut c_void, 0) }.result()
    {
        // SAFETY: allocated above, not handed out.
        unsafe {
            let _ = drv::free_host(ptr as *mut c_void);
        }
        return Err(e);
    }
    Ok((ptr, device))
}

/// The ring's bookkeeping, apart from the memory (so it can be tested without a GPU).
#[derive(Debug)]
struct Ring {
    len: u64,
    /// Bytes ever taken (padding at the wrap included); the head is `written % len`.
    written: u64,
    /// Bytes ever handed back: everything taken before this count is free.
    released: u64,
}

impl Ring {
    /// Takes `bytes` contiguous bytes at the head (skipping the tail end of the region
    /// when they do not fit before it); their offset, or None when the free room is short.
    fn take(&mut self, bytes: usize) -> Option<usize> {
        let bytes = bytes as u64;
        let head = self.written % self.len;
        let pad = if head + bytes > self.len {
            self.len - head
        } else {
            0
        };
        let end = self.written + pad + bytes;
        if bytes > self.len || end - self.released > self.len {
            return None;
        }
        let at = ((self.written + pad) % self.len) as usize;
        self.written = end;
        Some(at)
    }

    /// Hands back every byte taken before `mark` (a value of `written` seen earlier, once
    /// the stream has run past the copies issued before it).
    fn release(&mut self, mark: u64) {
        self.released = self.released.max(mark.min(self.written));
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;

    #[test]
    fn the_ring_never_hands_out_bytes_that_are_still_in_use() {
        let mut r = Ring {
            len: 100,
            written: 0,
            released: 0,
        };
        assert_eq!(r.take(40), Some(0));
        let step1 = r.written;
        assert_eq!(r.take(40), Some(40));
        // 20 bytes left before the end, none free at the front: no room for 30.
        assert_eq!(r.take(30), None);
        r.release(step1);
        // The first 40 bytes are free again; 30 do not fit at the tail, so they wrap.
        assert_eq!(r.take(30), Some(0));
        // Bytes 30..40 are free, 40..80 and 0..30 are in use: 20 does not fit anywhere.
        assert_eq!(r.take(20), None);
        assert_eq!(r.take(10), Some(30));
        r.release(r.written);
        // All free: the rest of the region, then its start.
        assert_eq!(r.take(60), Some(40));
        assert_eq!(r.take(40), Some(0));
        assert_eq!(r.take(1), None);
        assert_eq!(r.take(101), None);
        // A mark from the past never moves the release point back.
        r.release(step1);
        assert_eq!(r.take(1), None);
    }
}
