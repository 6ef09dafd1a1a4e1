//! A step's input arrays in one kernel launch (`upload_i32_segments`).
//!
//! Why: a step uploads seven small I32 arrays (tokens, positions, KV slots, query starts,
//! context lengths, logits rows, block tables). As seven copies, each is an operation of
//! the stream that the GPU runs between the previous step's last kernel and the next
//! step's first, after which the overlapped step also ran a kernel of its own to take its
//! tokens from the previous step's ids. Instead the host writes the arrays back to back
//! into the pinned staging (pinned.rs), which is mapped into the device's address space,
//! and one kernel reads them over the bus, scatters them to their tensors and resolves
//! the deferred tokens on the way (`upload_segments_kernel`, kernels/elementwise.cu).

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use super::{cuda_buf, CudaBackend};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::tensor::Tensor;

/// `UPLOAD_SEGMENTS` in kernels/elementwise.cu.
const MAX_SEGMENTS: usize = 8;

/// `struct UploadSegments` in kernels/elementwise.cu, passed by value.
#[repr(C)]
struct UploadSegments {
    src: u64,
    dst: [u64; MAX_SEGMENTS],
    /// Segment s is `src[end[s - 1]..end[s]]` (from 0 for the first).
    end: [i32; MAX_SEGMENTS],
    prev: u64,
    nseg: i32,
    /// The segment whose negative values are rows of `prev` (-1: none).
    resolve: i32,
    prev_n: i32,
    pad: i32,
}

impl CudaBackend {
    /// `dsts[i][..srcs[i].len()] = srcs[i]` for every i, and then, with `resolve`, what
    /// `resolve_token_ids` does to those values of `dsts[0]`. One kernel reading the
    /// pinned staging when it has room and packed uploads are on
    /// (`SLUICE_PACKED_UPLOADS=0` turns them off); otherwise a copy per array and the
    /// resolve kernel.
    pub fn upload_i32_segments(
        &self,
        dsts: &mut [&mut Tensor],
        srcs: &[&[i32]],
        resolve: Option<&Tensor>,
    ) -> Result<()> {
        crate::device::check_segment_count(dsts.len(), srcs.len())?;
        for (d, s) in dsts.iter().zip(srcs) {
            d.expect_dtype(DType::I32)?;
            if std::mem::size_of_val(*s) > cuda_buf(d)?.len {
                return Err(BackendError::Shape(format!(
                    "{} values do not fit in {} bytes",
                    s.len(),
                    cuda_buf(d)?.len
                )));
            }
        }
        if let Some(p) = resolve {
            p.expect_dtype(DType::I32)?;
            if dsts.is_empty() {
                return Err(BackendError::Shape("upload: nothing to resolve".into()));
            }
        }
        let total: usize = srcs.iter().map(|s| s.len()).sum();
        if total > i32::MAX as usize {
            return Err(BackendError::Shape(format!("upload: {total} values")));
        }
        if self.packed_uploads.load(Ordering::Relaxed)
            && self.pinned_uploads
            && dsts.len() <= MAX_SEGMENTS
            && total > 0
            && !self.capturing.load(Ordering::SeqCst)
        {
            self.bind()?;
            if let Some(src) = self.with_pinned(|p| p.stage(srcs))? {
                let mut a = UploadSegments {
                    src,
                    dst: [0; MAX_SEGMENTS],
                    end: [0; MAX_SEGMENTS],
                    prev: 0,
                    nseg: dsts.len() as i32,
                    resolve: -1,
                    prev_n: 0,
                    pad: 0,
                };
                let mut end = 0usize;
                for (i, (d, s)) in dsts.iter().zip(srcs).enumerate() {
                    end += s.len();
                    a.dst[i] = cuda_buf(d)?.ptr();
                    a.end[i] = end as i32;
                }
                if let Some(p) = resolve {
                    a.prev = cuda_buf(p)?.ptr();
                    a.prev_n = p.numel().min(i32::MAX as usize) as i32;
                    a.resolve = 0;
                }
                let mut args = [&a as *const UploadSegments as *mut c_void];
                self.launch_1d(self.kernels.upload_segments_kernel, total, &mut args)?;
                self.packed_upload_count.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        for (d, s) in dsts.iter().zip(srcs) {
            self.copy_i32_from_host(d, s)?;
        }
        match (resolve, dsts.first_mut(), srcs.first()) {
            (Some(p), Some(t), Some(first)) if !first.is_empty() => {
                self.resolve_prefix(t, first.len(), p)
            }
            _ => Ok(()),
        }
    }

    /// Uploads `upload_i32_segments` did with its one kernel so far.
    pub fn packed_uploads(&self) -> u64 {
        self.packed_upload_count.load(Ordering::Relaxed)
    }

    /// Packed step uploads on or off (`upload_i32_segments`); returns the previous setting.
    pub fn set_packed_uploads(&self, on: bool) -> bool {
        self.packed_uploads.swap(on, Ordering::Relaxed)
    }
}
