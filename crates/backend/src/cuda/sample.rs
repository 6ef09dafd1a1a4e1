//! `Device::sample` and `Device::logprobs` on the GPU: the rows' parameters (and
//! adjustments) packed into one upload, one block per row (kernels/sampling.cu).

use std::ffi::c_void;

use super::{cuda_buf, CudaBackend};
use crate::dtype::DType;
use crate::error::{BackendError, Result};
use crate::sample::{LogitAdjust, LogprobAsk, SampleParams, LOGPROB_RECORD};
use crate::tensor::Tensor;

impl CudaBackend {
    pub fn sample(
        &self,
        logits: &mut Tensor,
        rows: &[SampleParams],
        adjust: &[LogitAdjust],
        tokens: Option<&Tensor>,
        out: &mut Tensor,
    ) -> Result<()> {
        logits.expect_dtype(DType::F32)?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut packed: Vec<i32> = Vec::with_capacity(rows.len() * 12 + adjust.len() * 4);
        let bits = |f: f32| f.to_bits() as i32;
        for r in rows {
            packed.extend_from_slice(&[
                bits(r.temperature),
                r.top_k.min(i32::MAX as u32) as i32,
                bits(r.top_p),
                bits(r.min_p),
                bits(r.uniform),
                r.adjust_start as i32,
                r.adjust_len as i32,
                bits(r.repetition),
                bits(r.presence),
                bits(r.frequency),
                r.pending_token_row,
                0,
            ]);
        }
        for a in adjust {
            let token = i32::try_from(a.token).unwrap_or(-1);
            let count = i32::try_from(a.count).unwrap_or(i32::MAX);
            packed.extend_from_slice(&[token, bits(a.bias), a.seen as i32, count]);
        }
        let staging = self.sample_staging(packed.len() * 4)?;
        self.bind()?;
        // SAFETY: the staging buffer holds at least this many bytes; the driver stages
        // pageable memory before returning, so `packed` may be dropped after the call.
        unsafe { cudarc::driver::result::memcpy_htod_async(staging, &packed, self.stream) }
            .map_err(super::derr)?;
        let (pl, po) = (cuda_buf(logits)?.ptr(), cuda_buf(out)?.ptr());
        // No tokens: no row names one (checked by `Device::sample`); any valid pointer.
        let pt = match tokens {
            Some(t) => cuda_buf(t)?.ptr(),
            None => po,
        };
        let adj = staging + (rows.len() * 12 * 4) as u64;
        let vocab = i32::try_from(logits.cols())
            .map_err(|_| BackendError::Shape("sample: vocabulary too large".into()))?;
        let mut args = [
            &pl as *const _ as *mut c_void,
            &vocab as *const _ as *mut c_void,
            &staging as *const _ as *mut c_void,
            &adj as *const _ as *mut c_void,
            &pt as *const _ as *mut c_void,
            &po as *const _ as *mut c_void,
        ];
        self.launch(
            self.kernels.sample_kernel,
            (rows.len() as u32, 1, 1),
            1024,
            &mut args,
        )
    }

    /// Log-probability records (`sample::logprob_record`) of the asked rows of `logits`,
    /// whose sampled ids are in `ids`, into `out` (F32, `LOGPROB_RECORD` per ask).
    pub fn logprobs(
        &self,
        logits: &Tensor,
        ids: &Tensor,
        asks: &[LogprobAsk],
        out: &mut Tensor,
    ) -> Result<()> {
        if asks.is_empty() {
            return Ok(());
        }
        let packed: Vec<i32> = asks
            .iter()
            .flat_map(|a| [a.row as i32, a.n.min(i32::MAX as u32) as i32])
            .collect();
        let staging = self.logprob_staging(packed.len() * 4)?;
        self.bind()?;
        // SAFETY: as in `sample`.
        unsafe { cudarc::driver::result::memcpy_htod_async(staging, &packed, self.stream) }
            .map_err(super::derr)?;
        let (pl, pi, po) = (
            cuda_buf(logits)?.ptr(),
            cuda_buf(ids)?.ptr(),
            cuda_buf(out)?.ptr(),
        );
        let vocab = i32::try_from(logits.cols())
            .map_err(|_| BackendError::Shape("logprobs: vocabulary too large".into()))?;
        debug_assert!(out.numel() >= asks.len() * LOGPROB_RECORD);
        let mut args = [
            &pl as *const _ as *mut c_void,
            &vocab as *const _ as *mut c_void,
            &pi as *const _ as *mut c_void,
            &staging as *const _ as *mut c_void,
            &po as *const _ as *mut c_void,
        ];
        self.launch(
            self.kernels.logprobs_kernel,
            (asks.len() as u32, 1, 1),
            1024,
            &mut args,
        )
    }
}
