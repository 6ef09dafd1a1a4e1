//! The tail prefetch of the batch-1 GEMVs (`SLUICE_TAIL_PREFETCH=<bytes>`): as each warp
//! of a GEMV finishes its dot products, it asks for a slice of the *next* GEMV's weight
//! into L2 (kernels/gemv.cu `prefetch_next_rows`), so that the memory stays busy while
//! the GEMV's last blocks drain and the next kernel waits for them at its PDL wait.
//!
//! Which weight comes next is known only to the model: it names its matrices in the
//! order a decode step reads them (`CudaBackend::set_weight_order`), and each GEMV
//! launch looks its weight's successor up here. Entries leave the registry when either
//! buffer is freed (`CudaBuffer`'s drop), so a prefetch never names freed memory.

use std::collections::HashMap;
use std::sync::Mutex;

use cudarc::driver::sys;

use crate::dtype::DType;

/// The rows of the weight the next batch-1 GEMV streams and the byte range of each that
/// the tail prefetch asks for (kernels/gemv.cu `NextRows`, same layout). `w` 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NextRows {
    pub w: u64,
    pub row_bytes: i64,
    pub rows: i32,
    pub lo: i32,
    pub hi: i32,
    pad: i32,
}

/// A weight that a decode step reads right after another one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Successor {
    pub ptr: sys::CUdeviceptr,
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
}

/// Successor by weight address (device addresses are unique within the process under
/// unified addressing, whatever the GPU).
static SUCCESSORS: Mutex<Option<HashMap<sys::CUdeviceptr, Successor>>> = Mutex::new(None);

/// Records that a decode step reads `next` right after `w`.
pub(crate) fn register(w: sys::CUdeviceptr, next: Successor) {
    if let Ok(mut map) = SUCCESSORS.lock() {
        map.get_or_insert_with(HashMap::new).insert(w, next);
    }
}

/// The weight a decode step reads after the one at `w`, if the model named one.
pub(crate) fn successor(w: sys::CUdeviceptr) -> Option<Successor> {
    SUCCESSORS.lock().ok()?.as_ref()?.get(&w).copied()
}

/// Forgets every entry that names the buffer at `ptr` (it is being freed).
pub(crate) fn forget(ptr: sys::CUdeviceptr) {
    if let Ok(mut guard) = SUCCESSORS.lock() {
        if let Some(map) = guard.as_mut() {
            if !map.is_empty() {
                map.retain(|&w, s| w != ptr && s.ptr != ptr);
            }
        }
    }
}

/// Bytes the next GEMV's lanes request before their PDL wait at the start of each row:
/// `gemv1_dot` (PRE = 1) issues the first of a lane's four loads per row, 16 bytes, when
/// the lane has a full iteration of chunks; a row group's `wpr` warps of 32 lanes then
/// cover the row's first `wpr * 512` bytes. Short rows (fewer than four chunks a lane)
/// request nothing before the wait.
pub(crate) fn bytes_loaded_before_wait(row_bytes: usize, wpr: usize) -> usize {
    let first = wpr * 32 * 16;
    if row_bytes >= 4 * first {
        first
    } else {
        0
    }
}

/// What the tail prefetch asks for of a bf16 weight at `w` with `rows` rows of
/// `row_bytes`, read next by a GEMV of `wpr` warps per row group, within `budget` bytes:
/// the same slice of every row (all of the next GEMV's warps start at the front of their
/// rows), just after what its lanes request before their wait, in whole 128-byte lines
/// (at least one a row). Nothing if `budget` is 0.
pub(crate) fn next_rows(
    w: sys::CUdeviceptr,
    rows: usize,
    row_bytes: usize,
    wpr: usize,
    budget: usize,
) -> NextRows {
    if w == 0 || budget == 0 || rows == 0 || rows > i32::MAX as usize {
        return NextRows::default();
    }
    let lo = bytes_loaded_before_wait(row_bytes, wpr);
    let per_row = (budget / rows / 128 * 128).max(128);
    let hi = (lo + per_row).min(row_bytes);
    if hi <= lo || hi > i32::MAX as usize || !row_bytes.is_multiple_of(16) {
        return NextRows::default();
    }
    NextRows {
        w,
        row_bytes: row_bytes as i64,
        rows: rows as i32,
        lo: lo as i32,
        hi: hi as i32,
        pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_rows_skip_what_the_next_gemv_loads_before_its_wait() {
        // 8B down projection after the GLU: K = 14,336 bf16 (28,672 bytes a row), 4 warps
        // per row: 2,048 bytes requested before the wait, 4 MiB over 4,096 rows is 1 KiB.
        let n = next_rows(0x1000, 4096, 28_672, 4, 4 << 20);
        assert_eq!(
            (n.rows, n.lo, n.hi, n.row_bytes),
            (4096, 2048, 3072, 28_672)
        );
        // 1B Q/K/V after the down projection: 4,096-byte rows, 4 warps per row (2 chunks a
        // lane, nothing before the wait): from the front, 4 MiB / 3,072 rows = 1,280 bytes.
        let n = next_rows(0x1000, 3072, 4096, 4, 4 << 20);
        assert_eq!((n.lo, n.hi), (0, 1280));
        // At least one line a row, never past the row's end.
        let n = next_rows(0x1000, 28_672, 8192, 2, 1 << 20);
        assert_eq!((n.lo, n.hi), (1024, 1152));
        let n = next_rows(0x1000, 16, 4096, 1, 1 << 30);
        assert_eq!((n.lo, n.hi), (512, 4096));
        // Off, no weight, nothing left of the row after the first loads.
        assert_eq!(next_rows(0x1000, 4096, 8192, 4, 0), NextRows::default());
        assert_eq!(next_rows(0, 4096, 8192, 4, 1 << 20), NextRows::default());
        assert_eq!(next_rows(0x1000, 8, 2048, 1, 1 << 20).hi, 2048);
    }

    #[test]
    fn the_registry_forgets_freed_buffers() {
        let s = |ptr| Successor {
            ptr,
            rows: 4,
            cols: 8,
            dtype: DType::BF16,
        };
        // Addresses no real buffer has (the registry is process-wide).
        register(0xdead_0000, s(0xdead_1000));
        register(0xdead_1000, s(0xdead_2000));
        assert_eq!(successor(0xdead_0000).map(|s| s.ptr), Some(0xdead_1000));
        forget(0xdead_1000);
        assert!(successor(0xdead_0000).is_none());
        assert!(successor(0xdead_1000).is_none());
    }
}
