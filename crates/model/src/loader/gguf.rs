//! GGUF reader (versions 2 and 3, little-endian).
//!
//! Layout (ggml `docs/gguf.md`):
//! ```text
//! magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv x (string key, u32 value_type, value)          string = u64 len + UTF-8 bytes
//! n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
//! zero padding to `general.alignment` (default 32)
//! tensor data; each tensor's offset is relative to the data start and aligned
//! ```
//! `ne[0]` is the innermost (contiguous) dimension, so our row-major shape is `ne`
//! reversed: a ggml `[in, out]` matrix is our `[out, in]`.
//!
//! The file is hostile until proven otherwise: every count and length is checked
//! against the bytes that remain before anything is allocated from it, and every
//! error is one line naming the file and the problem.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use sluice_backend::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::loader::gguf_value::{GgufMetadata, GgufValue};
use crate::weights::WeightStore;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const GGUF_DEFAULT_ALIGNMENT: usize = 32;

/// GGUF metadata value type ids.
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// ggml allows at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are refused (recursion would otherwise be
/// bounded only by the file size).
const MAX_ARRAY_DEPTH: u32 = 8;
/// Total array elements over all metadata. The largest real vocabularies hold
/// ~262k tokens (x3 arrays) plus ~500k merges; each value costs ~32 bytes in memory.
const MAX_TOTAL_ARRAY_VALUES: u64 = 1 << 23;
const MAX_KEY_LEN: u64 = 1 << 16;
const MAX_TENSOR_NAME_LEN: u64 = 1 << 10;
const MAX_ALIGNMENT: u64 = 1 << 16;

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dtype: DType,
    /// ggml dimensions as stored, innermost first.
    pub ne: Vec<u64>,
    /// Our row-major shape: `ne` reversed.
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: usize,
}

impl GgufTensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened, validated GGUF file; tensor data stays in the memory map.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: usize,
    /// Absolute file offset of the tensor data section.
    pub data_offset: usize,
    pub metadata: GgufMetadata,
    pub tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
    map: Arc<Mmap>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Whether `bytes` start like a GGUF file.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && &bytes[..4] == GGUF_MAGIC
}

impl GgufFile {
    /// Maps and parses a GGUF file, validating every header field and tensor extent.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        if len < 24 {
            return Err(ModelError::format(
                path,
                format!("file is {len} bytes, too short to be a GGUF file (header is 24 bytes)"),
            ));
        }
        // SAFETY: the map is read-only. Like every mmap-based loader we assume the file
        // is not truncated or rewritten while mapped (that would fault, as in llama.cpp).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        GgufFile::from_map(path, Arc::new(map))
    }

    /// Parses an already mapped file.
    pub fn from_map(path: &Path, map: Arc<Mmap>) -> Result<GgufFile> {
        let header = parse(path, &map)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
            map,
        })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor viewing the mapped file (no copy).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::format(&self.path, format!("no tensor `{name}`")))?;
        self.mapped(info)
    }

    fn mapped(&self, info: &GgufTensorInfo) -> Result<Tensor> {
        // Extents were validated at parse time; a failure here is still reported, not
        // unwrapped.
        let offset = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_offset))
            .ok_or_else(|| {
                ModelError::format(
                    &self.path,
                    format!("tensor `{}`: offset overflows", info.name),
                )
            })?;
        Tensor::mapped_cpu(info.dtype, &info.shape, self.map.clone(), offset)
            .map_err(|e| ModelError::format(&self.path, format!("tensor `{}`: {e}", info.name)))
    }

    /// Every tensor, mapped, in a weight store.
    pub fn weights(&self) -> Result<WeightStore> {
        let mut store = WeightStore::new();
        for info in &self.tensors {
            store.insert(info.name.clone(), self.mapped(info)?);
        }
        Ok(store)
    }

    pub fn file_len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(GgufValue::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&[GgufValue]> {
        self.get(key).and_then(GgufValue::as_array)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.require_str("general.architecture")
    }

    /// `{arch}.{suffix}`, e.g. `arch_key("embedding_length")` -> `llama.embedding_length`.
    pub fn arch_key(&self, suffix: &str) -> Result<String> {
        Ok(format!("{}.{suffix}", self.architecture()?))
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(GgufValue::String(s)) => Ok(s),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
            None => Err(self.missing_key(key)),
        }
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v)),
            None => Err(self.missing_key(key)),
        }
    }

    pub fn require_f64(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.wrong_type(key, "a number", v)),
            None => Err(self.missing_key(key)),
        }
    }

    pub(crate) fn missing_key(&self, key: &str) -> ModelError {
        ModelError::format(&self.path, format!("missing metadata key `{key}`"))
    }

    pub(crate) fn wrong_type(&self, key: &str, expected: &str, found: &GgufValue) -> ModelError {
        ModelError::format(
            &self.path,
            format!(
                "metadata key `{key}` should be {expected}, found {} {}",
                value_type_name(found),
                found.summary()
            ),
        )
    }
}

/// Name of a value's GGUF type, for messages.
pub fn value_type_name(v: &GgufValue) -> &'static str {
    match v {
        GgufValue::U8(_) => "u8",
        GgufValue::I8(_) => "i8",
        GgufValue::U16(_) => "u16",
        GgufValue::I16(_) => "i16",
        GgufValue::U32(_) => "u32",
        GgufValue::I32(_) => "i32",
        GgufValue::U64(_) => "u64",
        GgufValue::I64(_) => "i64",
        GgufValue::F32(_) => "f32",
        GgufValue::F64(_) => "f64",
        GgufValue::Bool(_) => "bool",
        GgufValue::String(_) => "string",
        GgufValue::Array(_) => "array",
    }
}

struct Header {
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: GgufMetadata,
    tensors: Vec<GgufTensorInfo>,
}

/// Bounds-checked little-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::format(self.path, message.into())
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {} at byte {} needs {n} bytes, only {} remain",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string of at most `max` bytes (and never more than remain).
    fn string_bytes(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > max {
            return Err(self.err(format!(
                "{} has an absurd length of {len} bytes (limit {max})",
                what()
            )));
        }
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated: {} of {len} bytes at byte {} runs past the end of the file ({} bytes remain)",
                what(),
                self.pos,
                self.remaining()
            )));
        }
        self.take(len as usize, what)
    }

    fn utf8_string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<String> {
        let bytes = self.string_bytes(max, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{} is not valid UTF-8", what())))
    }

    /// One metadata value of type `ty`.
    fn value(
        &mut self,
        ty: u32,
        key: &str,
        depth: u32,
        array_budget: &mut u64,
    ) -> Result<GgufValue> {
        use value_type as t;
        let what = || format!("value of `{key}`");
        Ok(match ty {
            t::U8 => GgufValue::U8(self.array::<1>(&what)?[0]),
            t::I8 => GgufValue::I8(self.array::<1>(&what)?[0] as i8),
            t::U16 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            t::I16 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            t::U32 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            t::I32 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            t::F32 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            t::BOOL => GgufValue::Bool(self.array::<1>(&what)?[0] != 0),
            t::U64 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            t::I64 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            t::F64 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            t::STRING => {
                let bytes = self.string_bytes(u64::MAX, &what)?;
                // Vocabularies of some older conversions hold tokens that are not valid
                // UTF-8; llama.cpp keeps raw bytes. We keep the value (lossily) rather than
                // refuse an otherwise usable file.
                GgufValue::String(String::from_utf8_lossy(bytes).into_owned())
            }
            t::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                    )));
                }
                let elem = self.u32(&|| format!("array element type of `{key}`"))?;
                let min = min_value_size(elem).ok_or_else(|| {
                    self.err(format!(
                        "metadata `{key}`: unknown array element type {elem}"
                    ))
                })?;
                let count = self.u64(&|| format!("array length of `{key}`"))?;
                if count > (self.remaining() / min) as u64 {
                    return Err(self.err(format!(
                        "metadata `{key}`: array of {count} values cannot fit in the {} bytes that remain",
                        self.remaining()
                    )));
                }
                if count > *array_budget {
                    return Err(self.err(format!(
                        "metadata `{key}`: arrays hold more than {MAX_TOTAL_ARRAY_VALUES} values in total"
                    )));
                }
                *array_budget -= count;
                // Grow with the data actually read rather than trust the count up front.
                let mut values = Vec::with_capacity(count.min(1 << 16) as usize);
                for _ in 0..count {
                    values.push(self.value(elem, key, depth + 1, array_budget)?);
                }
                GgufValue::Array(values)
            }
            other => {
                return Err(self.err(format!("metadata `{key}`: unknown value type {other}")));
            }
        })
    }
}

/// Smallest encoded size of a value of type `ty` (None for an unknown type).
fn min_value_size(ty: u32) -> Option<usize> {
    use value_type as t;
    Some(match ty {
        t::U8 | t::I8 | t::BOOL => 1,
        t::U16 | t::I16 => 2,
        t::U32 | t::I32 | t::F32 => 4,
        t::U64 | t::I64 | t::F64 | t::STRING => 8,
        t::ARRAY => 12,
        _ => return None,
    })
}

fn parse(path: &Path, buf: &[u8]) -> Result<Header> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.array::<4>(&|| "magic".into())?;
    if &magic != GGUF_MAGIC {
        let old = matches!(
            &magic,
            b"lmgg" | b"fmgg" | b"tjgg" | b"GGML" | b"GGMF" | b"GGJT"
        );
        return Err(r.err(if old {
            "this is a pre-GGUF ggml/ggjt file; re-convert it to GGUF with a current llama.cpp"
                .to_string()
        } else {
            format!(
                "not a GGUF file (magic {:?}, expected \"GGUF\")",
                magic_text(&magic)
            )
        }));
    }
    let version = r.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => return Err(r.err(
            "GGUF version 1 is not supported (32-bit counts); re-convert with a current llama.cpp",
        )),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(r.err("big-endian GGUF files are not supported"))
        }
        v => return Err(r.err(format!("unknown GGUF version {v} (supported: 2, 3)"))),
    }
    let n_tensors = r.u64(&|| "tensor count".into())?;
    let n_kv = r.u64(&|| "metadata count".into())?;
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor
    // info at least 8 + 4 + 8 + 4 + 8.
    if n_kv > (r.remaining() / 13) as u64 {
        return Err(r.err(format!(
            "the header declares {n_kv} metadata entries, more than a file of {} bytes can hold (truncated or corrupt file)",
            buf.len()
        )));
    }
    if n_tensors > (r.remaining() / 32) as u64 {
        return Err(r.err(format!(
            "the header declares {n_tensors} tensors, more than a file of {} bytes can hold (truncated or corrupt file)",
            buf.len()
        )));
    }

    let mut metadata = GgufMetadata::new();
    let mut array_budget = MAX_TOTAL_ARRAY_VALUES;
    for i in 0..n_kv {
        let key = r.utf8_string(MAX_KEY_LEN, &|| format!("metadata key #{i}"))?;
        let ty = r.u32(&|| format!("value type of `{key}`"))?;
        let value = r.value(ty, &key, 0, &mut array_budget)?;
        if metadata.contains_key(&key) {
            return Err(r.err(format!("duplicate metadata key `{key}`")));
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a as usize,
            _ => {
                return Err(r.err(format!(
                    "general.alignment = {} is not a power of two up to {MAX_ALIGNMENT}",
                    v.summary()
                )))
            }
        },
    };

    let mut infos = Vec::with_capacity(n_tensors.min(1 << 12) as usize);
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = r.utf8_string(MAX_TENSOR_NAME_LEN, &|| format!("name of tensor #{i}"))?;
        if !seen.insert(name.clone()) {
            return Err(r.err(format!("duplicate tensor `{name}`")));
        }
        let n_dims = r.u32(&|| format!("dimension count of tensor `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} supported)"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            ne.push(r.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let ggml_type = r.u32(&|| format!("type of tensor `{name}`"))?;
        let offset = r.u64(&|| format!("offset of tensor `{name}`"))?;
        infos.push((name, ne, ggml_type, offset));
    }

    let header_end = r.pos;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let data_len = buf.len().saturating_sub(data_offset) as u64;

    let mut tensors = Vec::with_capacity(infos.len());
    for (name, ne, ggml_type, offset) in infos {
        let info = check_tensor(&r, name, ne, ggml_type, offset, alignment, data_len)?;
        tensors.push(info);
    }
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

/// Validates one tensor entry: type, dims, block multiple and extent inside the data.
fn check_tensor(
    r: &Reader<'_>,
    name: String,
    ne: Vec<u64>,
    ggml_type: u32,
    offset: u64,
    alignment: usize,
    data_len: u64,
) -> Result<GgufTensorInfo> {
    let dtype = DType::from_ggml_id(ggml_type).ok_or_else(|| {
        r.err(format!(
            "tensor `{name}` has ggml type {} (id {ggml_type}), which sluice does not support",
            DType::ggml_name(ggml_type)
        ))
    })?;
    if let Some(d) = ne.iter().position(|&n| n == 0) {
        return Err(r.err(format!(
            "tensor `{name}` has an empty dimension {d} ({ne:?})"
        )));
    }
    // Elements must be countable (and, below, bytes addressable) without overflow.
    let numel = ne
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| r.err(format!("tensor `{name}` has absurd dimensions {ne:?}")))?;
    let row_len = ne[0];
    if !row_len.is_multiple_of(dtype.block_size() as u64) {
        return Err(r.err(format!(
            "tensor `{name}`: row length {row_len} is not a multiple of the {dtype} block size {}",
            dtype.block_size()
        )));
    }
    let size = (numel / dtype.block_size() as u64)
        .checked_mul(dtype.block_bytes() as u64)
        .ok_or_else(|| r.err(format!("tensor `{name}` has absurd dimensions {ne:?}")))?;
    if !offset.is_multiple_of(alignment as u64) {
        return Err(r.err(format!(
            "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    if offset.checked_add(size).is_none_or(|end| end > data_len) {
        return Err(r.err(format!(
            "tensor `{name}`: data [{offset}, +{size}) runs past the end of the data section ({data_len} bytes)"
        )));
    }
    let shape = ne.iter().rev().map(|&n| n as usize).collect();
    Ok(GgufTensorInfo {
        name,
        dtype,
        ne,
        shape,
        offset,
        size: size as usize,
    })
}

fn magic_text(m: &[u8; 4]) -> String {
    m.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}
