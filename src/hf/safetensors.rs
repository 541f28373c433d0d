//! Reading and writing Hugging Face safetensors checkpoints, single-file or sharded.
//!
//! Follows the layout `transformers` writes: `model.safetensors`, or
//! `model.safetensors.index.json` whose `weight_map` names the shard of every tensor. Files are
//! memory-mapped and every header is validated by the `safetensors` crate, so a corrupt or
//! truncated file is an error naming the file, never a panic. Writing is atomic: a temporary file
//! in the same directory, then a rename.
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Every tensor of a checkpoint, with the file that holds it.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors` or the shards listed by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("reading {}", index_path.display()))?;
            let index: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", index_path.display()))?;
            let map = index["weight_map"].as_object().with_context(|| {
                format!("{}: no \"weight_map\" object", index_path.display())
            })?;
            let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names
        } else if single.exists() {
            vec!["model.safetensors".to_string()]
        } else {
            bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
        };
        Self::from_files(shard_names.iter().map(|n| dir.join(n)).collect())
    }

    /// Opens one safetensors file (optimizer state, say).
    pub fn open_file(path: &Path) -> Result<Self> {
        Self::from_files(vec![path.to_path_buf()])
    }

    fn from_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for path in paths {
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the map is read-only and lives as long as the Checkpoint; checkpoints are
            // not expected to change under a running process.
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| anyhow::anyhow!("{}: corrupt safetensors file: {e}", path.display()))?;
            for tensor_name in st.names() {
                if let Some(prev) = index.insert(tensor_name.to_string(), files.len()) {
                    let prev: &(PathBuf, Mmap) = &files[prev];
                    bail!("tensor {tensor_name} appears in both {} and {}", prev.0.display(), path.display());
                }
            }
            files.push((path, mmap));
        }
        Ok(Self { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The file that holds `name` (for error messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].0.as_path())
    }

    /// Reads one tensor onto the CPU in its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let &i = self.index.get(name).with_context(|| format!("no tensor {name} in the checkpoint"))?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| anyhow::anyhow!("{}: corrupt safetensors file: {e}", path.display()))?;
        let view = st.tensor(name).map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
        let kind = kind_of(view.dtype()).with_context(|| format!("{}: tensor {name}", path.display()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("{}: tensor {name}: cannot read its data", path.display()))
    }

    /// The stored shape of `name`, read from the header without copying data.
    pub fn shape(&self, name: &str) -> Result<Vec<i64>> {
        let &i = self.index.get(name).with_context(|| format!("no tensor {name} in the checkpoint"))?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| anyhow::anyhow!("{}: corrupt safetensors file: {e}", path.display()))?;
        let view = st.tensor(name).map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
        Ok(view.shape().iter().map(|&d| d as i64).collect())
    }
}

fn kind_of(dtype: Dtype) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::BOOL => Kind::Bool,
        other => bail!("unsupported safetensors dtype {other:?}"),
    })
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Bool => Dtype::BOOL,
        other => bail!("cannot store a {other:?} tensor in safetensors"),
    })
}

/// Writes `tensors` to `path` with `{"format": "pt"}` metadata (transformers < 4.48.2 needs it),
/// atomically: the data goes to a temporary file beside `path`, which is then renamed over it.
pub fn save(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let dtype = dtype_of(t.kind()).with_context(|| format!("tensor {name}"))?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, t.numel()).with_context(|| format!("copying tensor {name}"))?;
        owned.push((name.clone(), dtype, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = crate::atomic::tmp_path(path);
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    crate::atomic::publish_file(&tmp, path)
}
