//! Sampled ids read back without waiting for the whole stream.
//!
//! Why: with overlapped steps (the engine's `async_scheduling`) step N+1 is already
//! queued when the host wants step N's ids. A stream synchronization would wait for
//! N+1 too; instead each readback copies the ids into pinned memory and records an
//! event right after the copy, and the host waits for that event alone. Two slots, so
//! the readback of step N+1 can be queued while step N's is still to be collected.
//! The log-probability records of the step (`Device::logprobs`) ride along in the same
//! slot, behind the ids.
//!
//! The slots are mapped into the device's address space, so the values can be written
//! there by a kernel (`readback_kernel`, the default; `SLUICE_KERNEL_READBACK=0` copies
//! instead): a copy is an operation of its own between the step's last kernel and the
//! next step's first, which neither can overlap, where a kernel takes part in the chain
//! of programmatic dependent launches.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result as drv, sys, CudaContext};

use super::derr;
use crate::error::Result;

const SLOTS: usize = 2;

struct Slot {
    /// Pinned host memory for `cap` 4-byte values (ids, then records).
    host: *mut i32,
    /// Its address for kernels.
    device: sys::CUdeviceptr,
    cap: usize,
    event: sys::CUevent,
    /// The readback queued into this slot and not collected yet: (ticket, ids, record
    /// values, the pinned staging's mark when it was queued).
    pending: Option<(u64, usize, usize, u64)>,
}

pub(super) struct Readback {
    slots: Vec<Slot>,
    next: u64,
    ctx: Arc<CudaContext>,
}

impl Readback {
    /// Events for every slot (host memory comes with the first readback).
    pub(super) fn new(ctx: &Arc<CudaContext>) -> std::result::Result<Readback, drv::DriverError> {
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            let event = drv::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)?;
            slots.push(Slot {
                host: std::ptr::null_mut(),
                device: 0,
                cap: 0,
                event,
                pending: None,
            });
        }
        Ok(Readback {
            slots,
            next: 0,
            ctx: Arc::clone(ctx),
        })
    }

    /// Queues a copy of `n` i32 values at `src` and `m` f32 values at `extra` to the
    /// host, then the slot's event; returns the ticket that `finish` takes. `mark` is the
    /// pinned staging's mark now (handed back by `finish`: every upload queued before
    /// this readback has completed once its event has). With `by_kernel`, it is called
    /// with the slot's device address to queue a kernel that writes the values there
    /// (ids, then records) instead of the copies.
    ///
    /// # Safety
    /// `src` must hold `n` i32 values and `extra` `m` f32 values; the context must be
    /// bound to this thread; `by_kernel` must queue on `stream` and write at most `n + m`
    /// values.
    pub(super) unsafe fn start(
        &mut self,
        src: sys::CUdeviceptr,
        n: usize,
        (extra, m): (sys::CUdeviceptr, usize),
        stream: sys::CUstream,
        mark: u64,
        by_kernel: Option<&dyn Fn(sys::CUdeviceptr) -> Result<()>>,
    ) -> Result<u64> {
        let ticket = self.next;
        let slot = &mut self.slots[(ticket % SLOTS as u64) as usize];
        if slot.pending.is_some() {
            // Its owner never collected it (a dropped step): let the copy finish before
            // the memory is reused.
            drv::event::synchronize(slot.event).map_err(derr)?;
            slot.pending = None;
        }
        if slot.cap < n + m {
            if !slot.host.is_null() {
                drv::free_host(slot.host as *mut c_void).map_err(derr)?;
                slot.host = std::ptr::null_mut();
                slot.cap = 0;
            }
            let cap = (n + m).next_power_of_two().max(256);
            let (host, device) = super::pinned::alloc_mapped(cap * 4).map_err(derr)?;
            (slot.host, slot.device, slot.cap) = (host as *mut i32, device, cap);
        }
        match by_kernel {
            Some(write) if n + m > 0 => write(slot.device)?,
            _ => {
                if n > 0 {
                    sys::cuMemcpyDtoHAsync_v2(slot.host as *mut c_void, src, n * 4, stream)
                        .result()
                        .map_err(derr)?;
                }
                if m > 0 {
                    let dst = slot.host.add(n) as *mut c_void;
                    sys::cuMemcpyDtoHAsync_v2(dst, extra, m * 4, stream)
                        .result()
                        .map_err(derr)?;
                }
            }
        }
        drv::event::record(slot.event, stream).map_err(derr)?;
        slot.pending = Some((ticket, n, m, mark));
        self.next += 1;
        Ok(ticket)
    }

    /// Waits for readback `ticket` and copies its ids into `dst` and its records into
    /// `records`; returns the pinned staging mark recorded with it. Err(None) when the
    /// ticket is not pending (collected already, or overwritten by a later readback).
    pub(super) fn finish(
        &mut self,
        ticket: u64,
        dst: &mut Vec<i32>,
        records: &mut Vec<f32>,
    ) -> std::result::Result<u64, Option<drv::DriverError>> {
        let slot = &mut self.slots[(ticket % SLOTS as u64) as usize];
        let Some((t, n, m, mark)) = slot.pending else {
            return Err(None);
        };
        if t != ticket {
            return Err(None);
        }
        // SAFETY: the event belongs to this context (bound by the caller).
        unsafe { drv::event::synchronize(slot.event) }.map_err(Some)?;
        slot.pending = None;
        // SAFETY: the copies into the first n + m values have completed (the event follows
        // them).
        let all = unsafe { std::slice::from_raw_parts(slot.host, n + m) };
        dst.clear();
        dst.extend_from_slice(&all[..n]);
        records.clear();
        records.extend(all[n..].iter().map(|&v| f32::from_bits(v as u32)));
        Ok(mark)
    }
}

impl Drop for Readback {
    fn drop(&mut self) {
        // SAFETY: our own allocations and events; nothing uses them any more (a pending
        // copy is waited for before its memory goes).
        unsafe {
            let _ = self.ctx.bind_to_thread();
            for s in &self.slots {
                if s.pending.is_some() {
                    let _ = drv::event::synchronize(s.event);
                }
                if !s.host.is_null() {
                    let _ = drv::free_host(s.host as *mut c_void);
                }
                let _ = drv::event::destroy(s.event);
            }
        }
    }
}
