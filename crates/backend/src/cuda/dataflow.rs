//! The dataflow hand-off from the batch-1 GLU GEMV to the down projection
//! (`SLUICE_DATAFLOW=1`, an experiment of sessions 24-25; kernels/gemv.cu "Dataflow
//! hand-off" says why and how). Each GLU block counts itself done in a counter per group
//! of 256 blocks in a small device buffer; the down projection launched right after it
//! waits for those counters instead of the GLU grid's completion. It needs programmatic dependent launch (the
//! down projection's grid must start only once every GLU block has started).

use std::sync::atomic::Ordering;

use cudarc::driver::{result as drv, sys};

use super::{derr, CudaBackend};
use crate::error::Result;

/// GLU blocks the hand-off takes at most (the 8B shape's GLU has 896, F / 16): the kernels
/// keep one counter per 256 of them from word 0, each read by one lane of a warp (so at
/// most 32), and the down blocks' own counter at word `blocks` (kernels/gemv.cu
/// `gemv1_dataflow_body`), so `blocks + 1` words cover both.
pub(super) const FLAGS: usize = 32 * 256;

impl CudaBackend {
    /// Turns the hand-off on or off (for tests and comparisons; `SLUICE_DATAFLOW=1` at
    /// start). Without PDL, or with the two-load GEMVs (`SLUICE_GEMV_UNROLL=2`), it stays
    /// off. Returns the value in force.
    pub fn set_dataflow(&self, on: bool) -> Result<bool> {
        let on = on && self.pdl && !self.gemv_bf16_u2;
        if on {
            self.dataflow_flags()?;
        } else {
            // (the launches skip the check while it is off)
            self.clear_dataflow_pending()?;
        }
        self.dataflow.store(on, Ordering::SeqCst);
        Ok(on)
    }

    /// How many down projections took the hand-off so far.
    pub fn dataflow_gemvs(&self) -> u64 {
        self.dataflow_gemvs.load(Ordering::SeqCst)
    }

    /// The flags buffer (allocated and zeroed at the first call).
    pub(super) fn dataflow_flags(&self) -> Result<sys::CUdeviceptr> {
        let mut g = self.dataflow_flags.lock().map_err(|_| {
            crate::error::BackendError::Device("dataflow flags lock poisoned".into())
        })?;
        if let Some(b) = g.as_ref() {
            return Ok(b.ptr);
        }
        let bytes = (FLAGS + 1) * 4;
        let buf = self.alloc(bytes)?;
        // SAFETY: the range lies inside the fresh allocation; the stream is ours.
        unsafe { drv::memset_d8_async(buf.ptr, 0, bytes, self.stream) }.map_err(derr)?;
        // SAFETY: our stream, in the bound context.
        unsafe { drv::stream::synchronize(self.stream) }.map_err(derr)?;
        let ptr = buf.ptr;
        *g = Some(buf);
        Ok(ptr)
    }

    /// The flags for a GLU launch of `blocks` blocks, if the hand-off is on and they fit.
    pub(super) fn dataflow_for_glu(&self, blocks: u32) -> Option<sys::CUdeviceptr> {
        if !self.dataflow.load(Ordering::SeqCst) || blocks as usize > FLAGS {
            return None;
        }
        let g = self.dataflow_flags.lock().ok()?;
        g.as_ref().map(|b| b.ptr)
    }

    /// Records the GLU just launched with flags: `f` outputs at `out`, `per_block` per
    /// block.
    pub(super) fn set_dataflow_pending(&self, out: sys::CUdeviceptr, f: usize, per_block: usize) {
        if let Ok(mut g) = self.dataflow_pending.lock() {
            *g = Some((out, f, per_block));
        }
    }

    /// Before any launch but the down projection's: a GLU's counts that no down
    /// projection will clear are cleared here (in stream order), so that the next one
    /// cannot read them as its own. Nothing to do (and no lock) while the hand-off is off.
    pub(super) fn clear_dataflow_pending(&self) -> Result<()> {
        if !self.dataflow.load(Ordering::SeqCst) {
            return Ok(());
        }
        let pending = match self.dataflow_pending.lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        if let Some((_, f, per_block)) = pending {
            // The words in use: the group counters, then (at word `blocks`) the down blocks'.
            let bytes = (f.div_ceil(per_block.max(1)) + 1) * 4;
            let flags = self.dataflow_flags()?;
            // SAFETY: at most FLAGS + 1 words (`dataflow_for_glu`); the stream is ours.
            unsafe { drv::memset_d8_async(flags, 0, bytes, self.stream) }.map_err(derr)?;
        }
        Ok(())
    }

    /// For a plain bf16 GEMV over rows of `k` from `x`, launched right after a GLU with
    /// flags that wrote its `k` outputs to `x`: takes the hand-off and returns (flag buffer,
    /// outputs per GLU block, GLU blocks).
    pub(super) fn take_dataflow_for_down(
        &self,
        x: sys::CUdeviceptr,
        k: usize,
    ) -> Option<(sys::CUdeviceptr, usize, usize)> {
        let mut g = self.dataflow_pending.lock().ok()?;
        let (out, f, per_block) = (*g)?;
        if out != x || f != k || per_block == 0 {
            return None;
        }
        let flags = self.dataflow_flags.lock().ok()?.as_ref()?.ptr;
        *g = None;
        Some((flags, per_block, f.div_ceil(per_block)))
    }
}
