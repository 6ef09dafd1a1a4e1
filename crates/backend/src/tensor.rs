//! Device-resident tensors.
//!
//! A `Tensor` is a dtype, a row-major shape and a storage that lives on one device.
//! Host code never reaches into a device tensor's memory except through explicit
//! copies (`Device::copy_to_host_*`); the CPU backend happens to share address space,
//! which the CPU kernels use through `CpuBuffer`.

use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{BackendError, Result};

/// Bytes owned by the CPU backend, 64-byte aligned, zero-initialised.
///
/// Allocated with `alloc_zeroed`, so large buffers (the KV cache) come as untouched
/// zero pages from the OS and cost nothing until written.
pub struct AlignedBytes {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBytes owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBytes {}
unsafe impl Sync for AlignedBytes {}

const ALIGN: usize = 64;

impl AlignedBytes {
    fn layout(len: usize) -> std::alloc::Layout {
        // Size rounded up to whole cache lines; never zero-sized.
        std::alloc::Layout::from_size_align(len.max(1).div_ceil(ALIGN) * ALIGN, ALIGN)
            .unwrap_or_else(|_| panic!("allocation of {len} bytes is too large"))
    }

    pub fn zeroed(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBytes { ptr, len }
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut b = Self::zeroed(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation holds at least `len` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Memory of a CPU tensor: owned and aligned, or a read-only window of a mapped file.
pub enum CpuBuffer {
    Owned(AlignedBytes),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl CpuBuffer {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CpuBuffer::Owned(b) => b.as_slice(),
            CpuBuffer::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    /// Mutable bytes; mapped (weight) buffers are read-only.
    pub fn as_bytes_mut(&mut self) -> Result<&mut [u8]> {
        match self {
            CpuBuffer::Owned(b) => Ok(b.as_mut_slice()),
            CpuBuffer::Mapped { .. } => Err(BackendError::ReadOnly),
        }
    }
}

/// Where a tensor's bytes live.
pub enum Storage {
    Cpu(CpuBuffer),
    Cuda(crate::cuda::CudaBuffer),
}

/// A tensor: dtype, row-major shape (outermost first) and device storage.
///
/// For 2-D weights the shape is `[rows, cols]` = `[out_features, in_features]`; each row
/// is `dtype.row_bytes(cols)` bytes (whole quant blocks along the row).
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// Wraps storage, checking that its size matches dtype and shape.
    pub fn from_storage(dtype: DType, shape: &[usize], storage: Storage) -> Result<Tensor> {
        let need = byte_len(dtype, shape)?;
        let have = match &storage {
            Storage::Cpu(b) => b.as_bytes().len(),
            Storage::Cuda(b) => b.len(),
        };
        if need != have {
            return Err(BackendError::Shape(format!(
                "{dtype} tensor of shape {shape:?} needs {need} bytes, storage has {have}"
            )));
        }
        Ok(Tensor {
            dtype,
            shape: shape.to_vec(),
            storage,
        })
    }

    /// A zeroed CPU tensor.
    pub fn zeros_cpu(dtype: DType, shape: &[usize]) -> Result<Tensor> {
        let n = byte_len(dtype, shape)?;
        Tensor::from_storage(
            dtype,
            shape,
            Storage::Cpu(CpuBuffer::Owned(AlignedBytes::zeroed(n))),
        )
    }

    /// A CPU tensor from f32 values.
    pub fn from_f32_cpu(shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let mut t = Tensor::zeros_cpu(DType::F32, shape)?;
        if t.numel() != data.len() {
            return Err(BackendError::Shape(format!(
                "shape {shape:?} has {} elements, data has {}",
                t.numel(),
                data.len()
            )));
        }
        t.as_f32_mut()?.copy_from_slice(data);
        Ok(t)
    }

    /// A CPU tensor from raw bytes (copied into aligned memory).
    pub fn from_bytes_cpu(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        Tensor::from_storage(
            dtype,
            shape,
            Storage::Cpu(CpuBuffer::Owned(AlignedBytes::from_bytes(bytes))),
        )
    }

    /// A CPU tensor viewing part of a memory-mapped file (no copy).
    pub fn mapped_cpu(
        dtype: DType,
        shape: &[usize],
        map: Arc<memmap2::Mmap>,
        offset: usize,
    ) -> Result<Tensor> {
        let len = byte_len(dtype, shape)?;
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(BackendError::Shape(format!(
                "tensor data [{offset}, +{len}) runs past the end of the file ({} bytes)",
                map.len()
            )));
        }
        Tensor::from_storage(
            dtype,
            shape,
            Storage::Cpu(CpuBuffer::Mapped { map, offset, len }),
        )
    }

    /// Another handle to the same data: shares a mapped file, copies owned bytes.
    pub fn duplicate(&self) -> Result<Tensor> {
        let storage = match &self.storage {
            Storage::Cpu(CpuBuffer::Mapped { map, offset, len }) => {
                Storage::Cpu(CpuBuffer::Mapped {
                    map: Arc::clone(map),
                    offset: *offset,
                    len: *len,
                })
            }
            Storage::Cpu(CpuBuffer::Owned(b)) => {
                Storage::Cpu(CpuBuffer::Owned(AlignedBytes::from_bytes(b.as_slice())))
            }
            Storage::Cuda(_) => {
                return Err(BackendError::Device(
                    "duplicate a CUDA tensor through its device".into(),
                ))
            }
        };
        Ok(Tensor {
            dtype: self.dtype,
            shape: self.shape.clone(),
            storage,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the outermost dimension (1 for a scalar).
    pub fn rows(&self) -> usize {
        if self.shape.len() <= 1 {
            1
        } else {
            self.shape[..self.shape.len() - 1].iter().product()
        }
    }

    /// Size of the innermost dimension.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn size_in_bytes(&self) -> usize {
        match &self.storage {
            Storage::Cpu(b) => b.as_bytes().len(),
            Storage::Cuda(b) => b.len(),
        }
    }

    /// The address of the tensor's data on its device (identity only: tells whether two
    /// tensors share storage, or whether a buffer was replaced).
    pub fn data_addr(&self) -> usize {
        match &self.storage {
            Storage::Cpu(b) => b.as_bytes().as_ptr() as usize,
            Storage::Cuda(b) => b.ptr() as usize,
        }
    }

    /// Reinterprets the shape (same number of elements, same storage).
    pub fn reshape(&mut self, shape: &[usize]) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(BackendError::Shape(format!(
                "cannot reshape {:?} to {shape:?}",
                self.shape
            )));
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// Sets the outer dimension of a row-major tensor to `rows` (<= the capacity the
    /// storage was allocated with). Used to run preallocated activation buffers with a
    /// smaller batch without reallocating.
    pub fn set_rows(&mut self, rows: usize) -> Result<()> {
        let cols = self.cols();
        let cap = self.size_in_bytes() / self.dtype.row_bytes(cols).max(1);
        if rows > cap {
            return Err(BackendError::Shape(format!(
                "{rows} rows exceed the buffer capacity of {cap}"
            )));
        }
        self.shape = vec![rows, cols];
        Ok(())
    }

    /// Makes this a 1-D tensor of `n` elements (<= the storage capacity).
    pub fn set_len(&mut self, n: usize) -> Result<()> {
        let cap = self.size_in_bytes() / self.dtype.row_bytes(self.dtype.block_size());
        if n > cap * self.dtype.block_size() {
            return Err(BackendError::Shape(format!(
                "{n} elements exceed the capacity {cap}"
            )));
        }
        self.shape = vec![n];
        Ok(())
    }

    /// CPU bytes of this tensor (only the first `numel` elements' worth).
    pub fn cpu_bytes(&self) -> Result<&[u8]> {
        match &self.storage {
            Storage::Cpu(b) => {
                let n = byte_len(self.dtype, &self.shape)?;
                Ok(&b.as_bytes()[..n])
            }
            Storage::Cuda(_) => Err(BackendError::Device(
                "host access to a CUDA tensor (copy it to the host first)".into(),
            )),
        }
    }

    pub fn cpu_bytes_mut(&mut self) -> Result<&mut [u8]> {
        let n = byte_len(self.dtype, &self.shape)?;
        match &mut self.storage {
            Storage::Cpu(b) => Ok(&mut b.as_bytes_mut()?[..n]),
            Storage::Cuda(_) => Err(BackendError::Device(
                "host access to a CUDA tensor (copy it to the host first)".into(),
            )),
        }
    }

    /// f32 view of a CPU F32 tensor.
    pub fn as_f32(&self) -> Result<&[f32]> {
        self.expect_dtype(DType::F32)?;
        cast_slice(self.cpu_bytes()?)
    }

    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        self.expect_dtype(DType::F32)?;
        cast_slice_mut(self.cpu_bytes_mut()?)
    }

    pub fn as_i32(&self) -> Result<&[i32]> {
        self.expect_dtype(DType::I32)?;
        cast_slice(self.cpu_bytes()?)
    }

    pub fn as_i32_mut(&mut self) -> Result<&mut [i32]> {
        self.expect_dtype(DType::I32)?;
        cast_slice_mut(self.cpu_bytes_mut()?)
    }

    pub fn expect_dtype(&self, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(BackendError::DType {
                expected: dtype,
                got: self.dtype,
            });
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.storage {
            Storage::Cpu(CpuBuffer::Owned(_)) => "cpu",
            Storage::Cpu(CpuBuffer::Mapped { .. }) => "cpu-mapped",
            Storage::Cuda(_) => "cuda",
        };
        write!(f, "Tensor({} {:?} on {place})", self.dtype, self.shape)
    }
}

/// Bytes for a tensor of this dtype and shape (rows of whole blocks).
pub fn byte_len(dtype: DType, shape: &[usize]) -> Result<usize> {
    let cols = shape.last().copied().unwrap_or(1);
    let rows: usize = if shape.len() <= 1 {
        1
    } else {
        shape[..shape.len() - 1].iter().product()
    };
    let row = dtype.bytes_for(cols).ok_or_else(|| {
        BackendError::Shape(format!(
            "row length {cols} is not a multiple of the {dtype} block size {}",
            dtype.block_size()
        ))
    })?;
    rows.checked_mul(row)
        .ok_or_else(|| BackendError::Shape(format!("shape {shape:?} is too large")))
}

fn cast_slice<T: Copy>(b: &[u8]) -> Result<&[T]> {
    let size = std::mem::size_of::<T>();
    if !(b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
        || !b.len().is_multiple_of(size)
    {
        return Err(BackendError::Shape("misaligned tensor data".into()));
    }
    // SAFETY: alignment and length checked; T is a plain number type.
    Ok(unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / size) })
}

fn cast_slice_mut<T: Copy>(b: &mut [u8]) -> Result<&mut [T]> {
    let size = std::mem::size_of::<T>();
    if !(b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
        || !b.len().is_multiple_of(size)
    {
        return Err(BackendError::Shape("misaligned tensor data".into()));
    }
    // SAFETY: alignment and length checked; T is a plain number type.
    Ok(unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut T, b.len() / size) })
}
