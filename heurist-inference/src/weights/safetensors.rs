//! Hugging Face safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, memory-mapped.
//!
//! [`SafetensorsWeights::open`] parses every shard's header before any tensor is read (a
//! truncated or corrupt shard fails here, naming the file), and [`SafetensorsWeights::check`]
//! compares the tensor table with the names and shapes a model body will ask for. The second
//! check matters beyond a nicer message: candle-transformers' llama loader unwraps inside
//! `Llama::load`, so a missing layer would otherwise be a panic, and a wrong shape a confusing
//! matmul error at the first forward pass.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{InferenceError, Result};

/// The single-file checkpoint name.
const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
const INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor as a model body expects it: its checkpoint name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpectedTensor {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
}

impl ExpectedTensor {
    pub(crate) fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self { name: name.into(), shape: shape.to_vec() }
    }
}

/// What the header says about one tensor.
#[derive(Debug, Clone)]
struct TensorInfo {
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    file: PathBuf,
}

/// The memory-mapped shards of one checkpoint, headers checked.
pub(crate) struct SafetensorsWeights {
    dir: PathBuf,
    files: Vec<PathBuf>,
    mmaped: MmapedSafetensors,
    tensors: HashMap<String, TensorInfo>,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field("dir", &self.dir)
            .field("files", &self.files)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl SafetensorsWeights {
    /// Finds the checkpoint files in `dir` (the index's shards, else `model.safetensors`),
    /// maps them and parses their headers.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let files = checkpoint_files(dir)?;
        let mut tensors = HashMap::new();
        for file in &files {
            // SAFETY: the map is read-only and private to this process; like every
            // memory-mapping loader (candle's, transformers'), it assumes nobody rewrites the
            // checkpoint while the model is loaded.
            let one = unsafe { MmapedSafetensors::new(file) }.map_err(|source| {
                InferenceError::CorruptSafetensors { path: file.clone(), source }
            })?;
            for (name, view) in one.tensors() {
                let dtype = DType::try_from(view.dtype()).map_err(|_| format!("{:?}", view.dtype()));
                tensors.insert(name, TensorInfo { dtype, shape: view.shape().to_vec(), file: file.clone() });
            }
        }
        // SAFETY: as above; the same files, mapped again as one routed set for the VarBuilder.
        let mmaped = unsafe { MmapedSafetensors::multi(&files) }.map_err(|source| {
            InferenceError::CorruptSafetensors { path: dir.to_path_buf(), source }
        })?;
        tracing::debug!(dir = %dir.display(), files = files.len(), tensors = tensors.len(), "opened safetensors");
        Ok(Self { dir: dir.to_path_buf(), files, mmaped, tensors })
    }

    /// The checkpoint directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }


    /// Checks that every expected tensor is present with its shape and a floating-point dtype
    /// this engine runs (f32, f16, bf16), all the same; returns that dtype.
    pub(crate) fn check(&self, expected: &[ExpectedTensor]) -> Result<DType> {
        let mut dtype: Option<(DType, &str)> = None;
        for want in expected {
            let info = self.tensors.get(&want.name).ok_or_else(|| InferenceError::MissingWeight {
                path: self.dir.clone(),
                tensor: want.name.clone(),
            })?;
            if info.shape != want.shape {
                return Err(InferenceError::TensorShape {
                    path: info.file.clone(),
                    tensor: want.name.clone(),
                    expected: want.shape.clone(),
                    found: info.shape.clone(),
                });
            }
            let found = match &info.dtype {
                Ok(d @ (DType::F32 | DType::F16 | DType::BF16)) => *d,
                Ok(other) => return Err(self.bad_dtype(info, &want.name, format!("{other:?}"))),
                Err(name) => return Err(self.bad_dtype(info, &want.name, name.clone())),
            };
            match dtype {
                None => dtype = Some((found, &want.name)),
                Some((first, _)) if first == found => {}
                Some((first, first_name)) => {
                    return Err(self.bad_dtype(
                        info,
                        &want.name,
                        format!("{found:?} while {first_name} is {first:?} (mixed dtypes)"),
                    ));
                }
            }
        }
        Ok(dtype.map_or(DType::F32, |(d, _)| d))
    }

    /// A VarBuilder over the mapped tensors, converting to `dtype` on `device`.
    pub(crate) fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.mmaped), dtype, device.clone())
    }

    fn bad_dtype(&self, info: &TensorInfo, tensor: &str, dtype: String) -> InferenceError {
        InferenceError::UnsupportedDtype { path: info.file.clone(), tensor: tensor.to_owned(), dtype }
    }
}

/// The shard files in load order.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|source| InferenceError::Io { path: index_path.clone(), source })?;
        let index: Index = serde_json::from_str(&text)
            .map_err(|source| InferenceError::InvalidJson { path: index_path.clone(), source })?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            // A shard name is a file next to the index, never a path elsewhere.
            if shard.contains(['/', '\\']) || shard == ".." {
                return Err(InferenceError::InvalidMetadata {
                    path: index_path.clone(),
                    key: "weight_map".into(),
                    problem: format!("shard {shard:?} is not a file name in the same directory"),
                });
            }
            let file = dir.join(shard);
            if !file.is_file() {
                return Err(InferenceError::Io {
                    path: file,
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "shard listed in the index is missing"),
                });
            }
            files.push(file);
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(InferenceError::Io {
        path: single,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no {SINGLE_FILE} or {INDEX_FILE} in the model directory"),
        ),
    })
}
