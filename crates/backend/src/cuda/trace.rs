//! The kernel timeline of a diagnostic build (`SLUICE_CUDA_TRACE=1`).
//!
//! No profiler with a timeline runs on the lent GPUs (no Nsight Systems), and Nsight
//! Compute times kernels one at a time, without the PDL overlap that decides a batch-1
//! step. In the timeline build every kernel's `pdl_entry()` (kernels/common.cuh) records
//! the GPU's `%globaltimer` when each block reaches it and when the wait for the
//! previous kernel returns, per grid (keyed by `%gridid`): first and last block of each,
//! and the last block's time at up to eight marks inside a kernel (`trace_mark`).
//! A kernel's wait returns once the kernel before it has completed, so the first wait
//! return of kernel n + 1 marks the end of kernel n, and the differences along a step
//! say what each kernel costs on the critical path. The normal build has none of it
//! (`SLUICE_TRACE` undefined: not one instruction more).

use std::ffi::CString;

use cudarc::driver::result as drv;

use super::{derr, CudaBackend};
use crate::error::{BackendError, Result};

/// kernels/common.cuh `SLUICE_TRACE_SLOTS` and `SLUICE_TRACE_WORDS`.
const SLOTS: usize = 65536;
const WORDS: usize = 16;
/// Marks per grid (`trace_mark(i)`, i < MARKS).
pub const MARKS: usize = 8;

/// One grid of a traced replay: `%globaltimer` nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSpan {
    /// The first and the last block that reached `pdl_entry()`.
    pub first_entry: u64,
    pub last_entry: u64,
    /// The first and the last block whose wait for the previous kernel returned.
    pub first_wait: u64,
    pub last_wait: u64,
    /// Blocks that recorded.
    pub blocks: u64,
    /// `trace_mark(i)`: the last block's time at mark i (0: never reached).
    pub marks: [u64; MARKS],
}

impl CudaBackend {
    /// The trace table's device address, or `None` outside the timeline build.
    fn trace_table(&self) -> Result<Option<u64>> {
        self.bind()?;
        let name = CString::new("sluice_trace").map_err(derr)?;
        // SAFETY: the module is loaded for this context; a missing global is an error
        // code, not undefined behaviour.
        match unsafe { drv::module::get_global(self.kernels.module(), name) } {
            Ok((ptr, bytes)) if bytes == SLOTS * WORDS * 8 => Ok(Some(ptr)),
            Ok((_, bytes)) => Err(BackendError::Device(format!(
                "sluice_trace holds {bytes} bytes, expected {}",
                SLOTS * WORDS * 8
            ))),
            Err(_) => Ok(None),
        }
    }

    /// `trace_table`, or an error that says how to get one.
    fn trace_table_or_err(&self) -> Result<u64> {
        self.trace_table()?.ok_or_else(|| {
            BackendError::Device("the kernels were not built with SLUICE_CUDA_TRACE=1".into())
        })
    }

    /// Whether the kernels were built with the timeline (`SLUICE_CUDA_TRACE=1`).
    pub fn trace_enabled(&self) -> bool {
        matches!(self.trace_table(), Ok(Some(_)))
    }

    /// Empties the table (after a synchronisation): the kernels queued next record.
    pub fn trace_reset(&self) -> Result<()> {
        let ptr = self.trace_table_or_err()?;
        let mut init = vec![0u64; SLOTS * WORDS];
        for rec in init.chunks_mut(WORDS) {
            rec[1] = u64::MAX; // first entry: atomicMin
            rec[3] = u64::MAX; // first wait return: atomicMin
        }
        self.synchronize()?;
        // SAFETY: the global holds exactly SLOTS * WORDS u64; synchronous copy.
        unsafe { drv::memcpy_htod_sync(ptr, &init) }.map_err(derr)?;
        Ok(())
    }

    /// The grids recorded since `trace_reset`, in order of their first block's entry.
    pub fn trace_read(&self) -> Result<Vec<KernelSpan>> {
        let ptr = self.trace_table_or_err()?;
        self.synchronize()?;
        let mut raw = vec![0u64; SLOTS * WORDS];
        // SAFETY: as in trace_reset.
        unsafe { drv::memcpy_dtoh_sync(&mut raw, ptr) }.map_err(derr)?;
        let mut spans: Vec<KernelSpan> = raw
            .chunks(WORDS)
            .filter(|r| r[0] != 0 && r[5] > 0)
            .map(|r| KernelSpan {
                first_entry: r[1],
                last_entry: r[2],
                first_wait: r[3],
                last_wait: r[4],
                blocks: r[5],
                marks: std::array::from_fn(|i| r[8 + i]),
            })
            .collect();
        spans.sort_by_key(|s| (s.first_entry, s.first_wait));
        Ok(spans)
    }
}
