//! GGUF writer (version 3, little-endian): metadata plus tensors, aligned data.
//!
//! Used by tests to build files and by `sluice quantize`. The layout is exactly what
//! `gguf.rs` reads (see there): tensor data offsets are multiples of the alignment,
//! the data section starts at the first aligned offset after the tensor infos.

use std::io::{BufWriter, Write};
use std::path::Path;

use sluice_backend::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::loader::gguf::{value_type, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::loader::gguf_value::GgufValue;

pub struct GgufWriter {
    alignment: usize,
    /// Insertion order is kept (readers conventionally see `general.*` first).
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Tensor)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter {
            alignment: GGUF_DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Sets the data alignment and records it as `general.alignment` (u32).
    pub fn set_alignment(&mut self, alignment: usize) -> Result<()> {
        self.add_metadata("general.alignment", GgufValue::U32(alignment as u32))
    }

    /// Adds (or replaces) a metadata key. `general.alignment` also sets the alignment.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: GgufValue) -> Result<()> {
        let key = key.into();
        check_value(&key, &value)?;
        if key == "general.alignment" {
            match value.as_u64() {
                Some(a) if a.is_power_of_two() && a <= u32::MAX as u64 => {
                    self.alignment = a as usize
                }
                _ => {
                    return Err(ModelError::Unsupported(format!(
                        "general.alignment = {} is not a power of two",
                        value.summary()
                    )))
                }
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        Ok(())
    }

    /// Adds a CPU tensor (owned or mapped); its bytes are written as they are.
    pub fn add_tensor(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<()> {
        let name = name.into();
        if self.tensors.iter().any(|(n, _)| *n == name) {
            return Err(ModelError::Unsupported(format!(
                "GGUF writer: duplicate tensor `{name}`"
            )));
        }
        if tensor.shape().is_empty() || tensor.shape().len() > 4 {
            return Err(ModelError::Unsupported(format!(
                "GGUF writer: tensor `{name}` has {} dimensions (1 to 4 supported)",
                tensor.shape().len()
            )));
        }
        self.tensors.push((name, tensor));
        Ok(())
    }

    /// Adds a tensor from raw bytes in ggml block layout; the size must match.
    pub fn add_tensor_bytes(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<()> {
        let name = name.into();
        let t = Tensor::from_bytes_cpu(dtype, shape, bytes)
            .map_err(|e| ModelError::Unsupported(format!("GGUF writer: tensor `{name}`: {e}")))?;
        self.add_tensor(name, t)
    }

    /// Writes the file (to a temporary sibling first, then renamed into place, so a
    /// failed write never leaves a half file under the final name).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".partial");
        let tmp = path.with_file_name(tmp_name);
        let file = std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let mut w = BufWriter::new(file);
        self.write_to(&mut w)
            .and_then(|()| w.flush())
            .map_err(|e| ModelError::io(&tmp, e))?;
        drop(w);
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    }

    /// Writes the whole file to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut w = Counting { w, pos: 0 };
        let align = self.alignment;
        let (header, offsets) = encode_header(
            &self.metadata,
            self.tensors
                .iter()
                .map(|(name, t)| (name.as_str(), t.shape(), t.dtype(), t.size_in_bytes())),
            align,
        );
        w.put(&header)?;
        w.zeros(w.pos.div_ceil(align) * align - w.pos)?;
        let mut written = 0usize;
        for ((name, t), &offset) in self.tensors.iter().zip(&offsets) {
            w.zeros(offset - written)?;
            let bytes = t
                .cpu_bytes()
                .map_err(|e| std::io::Error::other(format!("tensor `{name}`: {e}")))?;
            w.put(bytes)?;
            written = offset + bytes.len();
        }
        // Trailing padding keeps the file length a multiple of the alignment, as
        // llama.cpp's writer does.
        w.zeros(written.div_ceil(align) * align - written)
    }
}

/// Counts the bytes written so padding can be computed.
struct Counting<'a, W: Write> {
    w: &'a mut W,
    pos: usize,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.pos += bytes.len();
        self.w.write_all(bytes)
    }

    fn zeros(&mut self, n: usize) -> std::io::Result<()> {
        const Z: [u8; 256] = [0; 256];
        let mut left = n;
        while left > 0 {
            let k = left.min(Z.len());
            self.put(&Z[..k])?;
            left -= k;
        }
        Ok(())
    }
}

/// The GGUF v3 header: magic, version, counts, the metadata, and the tensor table from
/// `(name, row-major shape, type, data bytes)`, each tensor placed at the next aligned
/// offset of the data section. Returns the header bytes (not yet padded to the alignment)
/// and the tensors' offsets. Shared by [`GgufWriter`] and the streaming writer of
/// `sluice quantize`.
pub(crate) fn encode_header<'a>(
    metadata: &[(String, GgufValue)],
    tensors: impl ExactSizeIterator<Item = (&'a str, &'a [usize], DType, usize)>,
    alignment: usize,
) -> (Vec<u8>, Vec<usize>) {
    let mut h = Vec::new();
    h.extend_from_slice(GGUF_MAGIC);
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut h, key);
        h.extend_from_slice(&type_id(value).to_le_bytes());
        encode_value(value, &mut h);
    }
    // Offsets relative to the data section; each tensor starts aligned.
    let mut end = 0usize;
    let mut offsets = Vec::with_capacity(tensors.len());
    for (name, shape, dtype, size) in tensors {
        put_string(&mut h, name);
        h.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for &d in shape.iter().rev() {
            h.extend_from_slice(&(d as u64).to_le_bytes());
        }
        h.extend_from_slice(&dtype.ggml_id().to_le_bytes());
        let offset = end.div_ceil(alignment) * alignment;
        h.extend_from_slice(&(offset as u64).to_le_bytes());
        offsets.push(offset);
        end = offset + size;
    }
    (h, offsets)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &GgufValue) -> u32 {
    use value_type as t;
    match v {
        GgufValue::U8(_) => t::U8,
        GgufValue::I8(_) => t::I8,
        GgufValue::U16(_) => t::U16,
        GgufValue::I16(_) => t::I16,
        GgufValue::U32(_) => t::U32,
        GgufValue::I32(_) => t::I32,
        GgufValue::U64(_) => t::U64,
        GgufValue::I64(_) => t::I64,
        GgufValue::F32(_) => t::F32,
        GgufValue::F64(_) => t::F64,
        GgufValue::Bool(_) => t::BOOL,
        GgufValue::String(_) => t::STRING,
        GgufValue::Array(_) => t::ARRAY,
    }
}

/// Arrays must be homogeneous: GGUF stores one element type per array.
pub(crate) fn check_value(key: &str, v: &GgufValue) -> Result<()> {
    if let GgufValue::Array(items) = v {
        if let Some(first) = items.first() {
            let ty = type_id(first);
            if items.iter().any(|x| type_id(x) != ty) {
                return Err(ModelError::Unsupported(format!(
                    "GGUF writer: metadata `{key}` is an array of mixed types"
                )));
            }
        }
        for item in items {
            check_value(key, item)?;
        }
    }
    Ok(())
}

fn encode_value(v: &GgufValue, out: &mut Vec<u8>) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(items) => {
            // An empty array's element type is arbitrary; u8 is as good as any.
            let elem = items.first().map(type_id).unwrap_or(value_type::U8);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode_value(item, out);
            }
        }
    }
}
