//! Pinned (page-locked) host staging for the small uploads of every step (token ids,
//! positions, slots, block tables: `copy_i32_from_host`).
//!
//! Why: a copy from pageable memory makes the driver stage the bytes itself, which costs
//! the host several microseconds per copy while the GPU waits for the step's graph; a
//! step uploads seven such arrays. From pinned memory the copy is a DMA the stream runs
//! on its own. The region is a bump allocator: each upload takes fresh bytes, and the
//! whole region is free again after the next stream synchronization (every step ends with
//! one, when the sampled ids come back), so no bytes are rewritten while a copy may still
//! read them. A step that needs more than the region falls back to pageable copies.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result as drv, sys, CudaContext};

/// Bytes of pinned staging (block tables of 256 sequences x 256 blocks fit eight times).
pub(super) const PINNED_BYTES: usize = 2 << 20;

pub(super) struct PinnedStaging {
    ptr: *mut u8,
    len: usize,
    used: usize,
    ctx: Arc<CudaContext>,
}

impl PinnedStaging {
    /// Allocates the region in `ctx` (which must be bound to this thread).
    pub(super) fn new(
        ctx: &Arc<CudaContext>,
        len: usize,
    ) -> Result<PinnedStaging, drv::DriverError> {
        // SAFETY: a plain page-locked allocation; freed in Drop.
        let ptr = unsafe { drv::malloc_host(len, 0) }? as *mut u8;
        Ok(PinnedStaging {
            ptr,
            len,
            used: 0,
            ctx: Arc::clone(ctx),
        })
    }

    /// Copies `src` into fresh pinned bytes and enqueues their copy to `dst` on `stream`;
    /// false (nothing done) when the region has no room left before the next `reset`.
    ///
    /// # Safety
    /// `dst` must hold `size_of_val(src)` bytes, and `reset` may only be called once every
    /// copy enqueued before it has completed (after a synchronization of `stream`).
    pub(super) unsafe fn upload<T: Copy>(
        &mut self,
        dst: sys::CUdeviceptr,
        src: &[T],
        stream: sys::CUstream,
    ) -> Result<bool, drv::DriverError> {
        let bytes = std::mem::size_of_val(src);
        let at = self.used;
        let end = at + bytes.next_multiple_of(16);
        if end > self.len {
            return Ok(false);
        }
        let host = self.ptr.add(at);
        std::ptr::copy_nonoverlapping(src.as_ptr() as *const u8, host, bytes);
        sys::cuMemcpyHtoDAsync_v2(dst, host as *const c_void, bytes, stream).result()?;
        self.used = end;
        Ok(true)
    }

    /// Makes the whole region available again (see `upload`).
    pub(super) fn reset(&mut self) {
        self.used = 0;
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
