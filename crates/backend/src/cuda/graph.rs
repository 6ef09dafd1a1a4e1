//! CUDA graphs: a decode step's kernels captured once and replayed with one launch.
//!
//! Why: a decode step of a 32-layer model is a few hundred small kernels; launched one
//! by one from the host each costs several microseconds of CPU time and leaves the GPU
//! idle between kernels whenever the host falls behind (at batch 1 the GPU work per
//! kernel is often shorter than its launch). A graph submits them all at once and the
//! GPU runs them back to back (the approach of vLLM and TensorRT-LLM for decode).
//!
//! A graph replays the exact kernels, grids and argument values of its capture, device
//! pointers included. The caller therefore captures with fixed-size buffers (a batch
//! padded to a bucket), updates only their contents between replays, and drops its
//! graphs when any captured buffer moves: the model keys them on its own buffers, and
//! the backend's `graph_epoch` changes whenever a scratch buffer it owns is reallocated.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cudarc::driver::{result as drv, sys, CudaContext};

use super::{derr, CudaBackend};
use crate::error::{BackendError, Result};

/// An instantiated graph, valid while the backend's epoch is `epoch`.
pub struct CudaGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    epoch: u64,
    ctx: Arc<CudaContext>,
}

// SAFETY: graph handles are driver objects of the context, used only after binding it.
unsafe impl Send for CudaGraph {}
unsafe impl Sync for CudaGraph {}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: created by `end_capture`, destroyed once.
            unsafe {
                let _ = drv::graph::exec_destroy(self.exec);
                let _ = drv::graph::destroy(self.graph);
            }
        }
    }
}

impl CudaBackend {
    /// Starts recording this backend's stream: kernels queued until `end_capture` are
    /// recorded, not run. Nothing may synchronize or allocate meanwhile (the scratch
    /// buffers refuse to grow and say so).
    pub fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        self.clear_staged();
        // SAFETY: our own stream; thread-local mode lets other threads keep using CUDA.
        unsafe {
            drv::stream::begin_capture(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(derr)?;
        self.capturing.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Ends the recording and instantiates it. Always ends the capture, so the stream is
    /// usable again even when recording failed.
    pub fn end_capture(&self) -> Result<CudaGraph> {
        self.bind()?;
        self.clear_staged();
        self.capturing.store(false, Ordering::SeqCst);
        // SAFETY: our own stream, in capture mode since `begin_capture`.
        let graph = unsafe { drv::stream::end_capture(self.stream) }.map_err(derr)?;
        if graph.is_null() {
            return Err(BackendError::Device(
                "CUDA graph capture produced no graph".into(),
            ));
        }
        // SAFETY: a valid graph just captured.
        let exec = match unsafe { drv::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }
        {
            Ok(e) => e,
            Err(e) => {
                // SAFETY: as above, destroyed once.
                let _ = unsafe { drv::graph::destroy(graph) };
                return Err(derr(e));
            }
        };
        Ok(CudaGraph {
            graph,
            exec,
            epoch: self.graph_epoch(),
            ctx: Arc::clone(&self.ctx),
        })
    }

    /// Queues a replay of `g` on the stream.
    pub fn launch_graph(&self, g: &CudaGraph) -> Result<()> {
        if g.epoch != self.graph_epoch() {
            return Err(BackendError::Device(
                "stale CUDA graph: a buffer it uses was reallocated".into(),
            ));
        }
        self.bind()?;
        // The replay's kernels may overwrite the activation scratch.
        self.clear_staged();
        // SAFETY: an instantiated graph of this context on our stream.
        unsafe { drv::graph::launch(g.exec, self.stream) }.map_err(derr)
    }

    /// Changes whenever a backend-owned buffer that kernels may have captured moves.
    pub fn graph_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}
