//! GGUF files (llama.cpp's format): the metadata, the tensor records and their data, read
//! through a memory map. Versions 2 and 3, little-endian. `convert` turns one into a Hugging
//! Face model directory; `quants` dequantizes the blocks.
//!
//! Layout (ggml's `gguf.md`): magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! metadata as (string key, u32 type, value); tensor records as (string name, u32 dims, u64
//! dims innermost first, u32 type, u64 offset); then, aligned to `general.alignment` (32), the
//! data. Strings are a u64 length and UTF-8 bytes.
pub mod convert;
pub mod quants;

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use quants::GgmlType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor record.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions outermost first (the reverse of GGUF's order), as PyTorch shapes are.
    pub shape: Vec<i64>,
    pub ty: GgmlType,
    /// Byte range of the data in the file.
    start: usize,
    len: usize,
}

pub struct Gguf {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    map: Mmap,
}

/// How deep metadata arrays may nest.
const MAX_ARRAY_DEPTH: usize = 4;

/// A bounds-checked little-endian cursor over the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).context("truncated file (ends inside the header)")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).context("a string is not UTF-8")
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// A metadata value of type `ty`; `depth` counts the arrays it is nested in (real files
    /// nest at most one deep; a crafted file must not overflow the stack).
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::Int(self.take(1)?[0] as i64),
            1 => Value::Int(self.take(1)?[0] as i8 as i64),
            2 => Value::Int(u16::from_le_bytes(self.take(2)?.try_into()?) as i64),
            3 => Value::Int(i16::from_le_bytes(self.take(2)?.try_into()?) as i64),
            4 => Value::Int(self.u32()? as i64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into()?) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                ensure!(depth < MAX_ARRAY_DEPTH, "arrays nested more than {MAX_ARRAY_DEPTH} deep");
                let (item, n) = (self.u32()?, self.u64()?);
                // Every item takes at least this many bytes of the file: bound before allocating.
                let least = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => bail!("unknown metadata value type {other}"),
                };
                ensure!(n.checked_mul(least).is_some_and(|b| b <= self.remaining() as u64), "array of {n} items cannot fit in the file");
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Int(self.u64()? as i64),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only map of a file we do not modify; a concurrent writer is the user's error.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        Self::parse(path, map).with_context(|| format!("{}: not a readable GGUF file", path.display()))
    }

    fn parse(path: &Path, map: Mmap) -> Result<Self> {
        let mut c = Cursor { bytes: &map, at: 0 };
        ensure!(c.take(4)? == b"GGUF", "bad magic (expected GGUF)");
        let version = c.u32()?;
        ensure!(version == 2 || version == 3, "GGUF version {version} (2 and 3 are supported)");
        let (n_tensors, n_kv) = (c.u64()? as usize, c.u64()? as usize);
        // A metadata entry takes at least 12 bytes (key length, type), a tensor record 24.
        ensure!(n_kv.checked_mul(12).is_some_and(|b| b <= c.remaining()), "impossible metadata count {n_kv}");
        ensure!(n_tensors.checked_mul(24).is_some_and(|b| b <= c.remaining()), "impossible tensor count {n_tensors}");
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0).with_context(|| format!("metadata {key}"))?;
            metadata.insert(key, v);
        }
        let mut records = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            ensure!(n_dims <= 4, "tensor {name} has {n_dims} dimensions");
            let mut dims: Vec<i64> = (0..n_dims).map(|_| c.u64().map(|d| d as i64)).collect::<Result<_>>()?;
            dims.reverse();
            let ty = GgmlType::from_id(c.u32()?).with_context(|| format!("tensor {name}"))?;
            let offset = c.u64()? as usize;
            records.push((name, dims, ty, offset));
        }
        let align = metadata.get("general.alignment").and_then(Value::as_i64).unwrap_or(32) as usize;
        ensure!(align > 0, "general.alignment is 0");
        let data_start = c.at.div_ceil(align) * align;
        let mut tensors = Vec::with_capacity(n_tensors);
        for (name, shape, ty, offset) in records {
            let n = shape.iter().try_fold(1usize, |acc, &d| usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
            let n = n.with_context(|| format!("tensor {name} has an impossible shape {shape:?}"))?;
            let len = ty.bytes_for(n).with_context(|| format!("tensor {name}: {n} values are not whole {ty:?} blocks"))?;
            let start = data_start.checked_add(offset);
            let fits = start.and_then(|s| s.checked_add(len)).is_some_and(|end| end <= map.len());
            ensure!(fits, "tensor {name} runs past the end of the file (truncated?)");
            let start = start.unwrap_or_default();
            tensors.push(TensorInfo { name, shape, ty, start, len });
        }
        Ok(Self { path: path.to_path_buf(), metadata, tensors, map })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The float32 values of a tensor, dequantized.
    pub fn values(&self, t: &TensorInfo) -> Vec<f32> {
        quants::dequantize(t.ty, &self.map[t.start..t.start + t.len])
    }
}
