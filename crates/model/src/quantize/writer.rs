//! A streaming GGUF v3 writer: the header (metadata and tensor table) is written first
//! from the planned types and sizes, then each tensor's data as it is produced, so a
//! model is never held in memory twice. Layout as in `loader/gguf.rs`: data offsets are
//! multiples of the alignment, relative to the aligned start of the data section, and
//! the file is padded to the alignment at the end (as llama.cpp writes it).
//!
//! The file is written under a hidden temporary name in the output's directory and
//! renamed into place by [`StreamWriter::finish`]; dropping the writer unfinished
//! removes the temporary, so a failure never leaves a file under the output name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sluice_backend::DType;

use crate::error::{ModelError, Result};
use crate::loader::gguf_value::GgufValue;
use crate::loader::gguf_writer::encode_header;

/// One tensor of the table: name, our row-major shape, type.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorEntry {
    pub fn size(&self) -> usize {
        let n: usize = self.shape.iter().product();
        n / self.dtype.block_size() * self.dtype.block_bytes()
    }
}

pub struct StreamWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    dest: PathBuf,
    alignment: usize,
    /// Bytes written so far.
    pos: u64,
    /// Start of the data section and each tensor's offset within it.
    data_start: u64,
    offsets: Vec<u64>,
    sizes: Vec<usize>,
    next: usize,
    finished: bool,
}

/// `dir/.name.<pid>.partial`: hidden, in the same directory (so the rename is atomic),
/// never the output name.
pub fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out.gguf".into());
    dest.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

impl StreamWriter {
    /// Creates the temporary file and writes the header.
    pub fn create(
        dest: &Path,
        metadata: &[(String, GgufValue)],
        tensors: &[TensorEntry],
        alignment: usize,
    ) -> Result<StreamWriter> {
        if !alignment.is_power_of_two() {
            return Err(ModelError::Unsupported(format!(
                "alignment {alignment} is not a power of two"
            )));
        }
        let tmp = temp_path(dest);
        let file = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let mut w = StreamWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            dest: dest.to_path_buf(),
            alignment,
            pos: 0,
            data_start: 0,
            offsets: Vec::with_capacity(tensors.len()),
            sizes: tensors.iter().map(TensorEntry::size).collect(),
            next: 0,
            finished: false,
        };
        w.header(metadata, tensors)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| ModelError::io(&self.tmp, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let a = self.alignment as u64;
        let n = (self.pos.div_ceil(a) * a - self.pos) as usize;
        self.put(&vec![0u8; n])
    }

    fn header(&mut self, metadata: &[(String, GgufValue)], tensors: &[TensorEntry]) -> Result<()> {
        let (h, offsets) = encode_header(
            metadata,
            tensors
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice(), t.dtype, t.size())),
            self.alignment,
        );
        self.offsets = offsets.into_iter().map(|o| o as u64).collect();
        self.put(&h)?;
        self.pad()?;
        self.data_start = self.pos;
        Ok(())
    }

    /// Writes the next tensor's data (in table order); its size must match the table.
    pub fn write_tensor(&mut self, bytes: &[u8]) -> Result<()> {
        let i = self.next;
        let (Some(&offset), Some(&size)) = (self.offsets.get(i), self.sizes.get(i)) else {
            return Err(ModelError::Unsupported(
                "GGUF writer: more tensors than the table holds".into(),
            ));
        };
        if bytes.len() != size {
            return Err(ModelError::Unsupported(format!(
                "GGUF writer: tensor {i} has {} bytes, the table says {size}",
                bytes.len()
            )));
        }
        let at = self.data_start + offset;
        let gap = (at - self.pos) as usize;
        self.put(&vec![0u8; gap])?;
        self.put(bytes)?;
        self.next += 1;
        Ok(())
    }

    /// Pads, flushes, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.offsets.len() {
            return Err(ModelError::Unsupported(format!(
                "GGUF writer: {} of {} tensors written",
                self.next,
                self.offsets.len()
            )));
        }
        self.pad()?;
        self.out.flush().map_err(|e| ModelError::io(&self.tmp, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| ModelError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| ModelError::io(&self.dest, e))?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: the error that got us here is the one to report.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::gguf::GgufFile;

    #[test]
    fn written_file_reads_back_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let md = vec![
            (
                "general.architecture".to_string(),
                GgufValue::String("llama".into()),
            ),
            (
                "a.list".to_string(),
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-2)]),
            ),
        ];
        let tensors = vec![
            TensorEntry {
                name: "x".into(),
                shape: vec![3],
                dtype: DType::F32,
            },
            TensorEntry {
                name: "w".into(),
                shape: vec![2, 32],
                dtype: DType::Q8_0,
            },
        ];
        let mut w = StreamWriter::create(&dest, &md, &tensors, 32).unwrap();
        assert!(temp_path(&dest).exists());
        w.write_tensor(&[1u8; 12]).unwrap();
        w.write_tensor(&[7u8; 68]).unwrap();
        w.finish().unwrap();
        assert!(!temp_path(&dest).exists());
        let g = GgufFile::open(&dest).unwrap();
        assert_eq!(g.tensors.len(), 2);
        assert_eq!(g.tensor_info("w").unwrap().shape, vec![2, 32]);
        assert_eq!(g.tensor_info("w").unwrap().dtype, DType::Q8_0);
        assert_eq!(g.get_array("a.list").unwrap().len(), 2);
        assert_eq!(g.file_len() % 32, 0);
        let t = g.tensor("w").unwrap();
        assert!(t.cpu_bytes().unwrap().iter().all(|&b| b == 7));
    }

    #[test]
    fn dropped_writer_removes_its_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let tensors = vec![TensorEntry {
            name: "x".into(),
            shape: vec![3],
            dtype: DType::F32,
        }];
        let mut w = StreamWriter::create(&dest, &[], &tensors, 32).unwrap();
        assert!(w.write_tensor(&[0u8; 5]).is_err());
        drop(w);
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
