//! GGUF files: llama.cpp's single-file format (metadata key/values, a tensor table, then the
//! tensor data, quantized or not).
//!
//! [`GgufFile::open`] checks, before any tensor is read, that the file starts with the GGUF magic,
//! that its header parses, and that every tensor in the table lies inside the file. The last
//! check matters beyond a nicer message: candle's llama loader falls back to the token
//! embeddings when `output.weight` cannot be read, so a file cut inside that tensor would
//! otherwise load and produce wrong tokens.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{InferenceError, Result};

const MAGIC: &[u8; 4] = b"GGUF";

/// An open GGUF file whose header and tensor table have been checked.
pub(crate) struct GgufFile {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("metadata_keys", &self.content.metadata.len())
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens `path`, parses the header and checks that every tensor's data is in the file.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io_err = |source| InferenceError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        let actual_bytes = file.metadata().map_err(io_err)?.len();
        let mut reader = BufReader::new(file);

        let mut magic = Vec::with_capacity(MAGIC.len());
        (&mut reader).take(MAGIC.len() as u64).read_to_end(&mut magic).map_err(io_err)?;
        if magic != MAGIC {
            return Err(InferenceError::NotGguf { path: path.to_path_buf(), found: magic });
        }
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;

        let content = Content::read(&mut reader)
            .map_err(|source| InferenceError::MalformedGguf { path: path.to_path_buf(), source })?;
        check_tensor_extents(path, &content, actual_bytes)?;
        tracing::debug!(
            path = %path.display(),
            tensors = content.tensor_infos.len(),
            metadata_keys = content.metadata.len(),
            "opened GGUF file"
        );
        Ok(Self { path: path.to_path_buf(), reader, content })
    }

    /// The file's path, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header, and the reader positioned anywhere, for candle's model loaders.
    pub(crate) fn into_parts(self) -> (Content, BufReader<File>, PathBuf) {
        (self.content, self.reader, self.path)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| InferenceError::MissingMetadata {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    fn invalid(&self, key: &str, problem: String) -> InferenceError {
        InferenceError::InvalidMetadata { path: self.path.clone(), key: key.to_owned(), problem }
    }

    /// A string value, `None` when the key is absent.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(self.invalid(key, format!("expected a string, found {:?}", other.value_type())))
            }
        }
    }

    /// A string value that must be present.
    pub(crate) fn str(&self, key: &str) -> Result<&str> {
        self.require(key)?;
        self.opt_str(key)?.ok_or_else(|| self.invalid(key, "expected a string".into()))
    }

    /// An integer value of any GGUF integer type, `None` when the key is absent.
    pub(crate) fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        integer(value)
            .and_then(|v| u32::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| self.invalid(key, format!("expected an integer in u32 range, found {value:?}")))
    }

    /// An integer value that must be present.
    pub(crate) fn u32(&self, key: &str) -> Result<u32> {
        self.require(key)?;
        self.opt_u32(key)?.ok_or_else(|| self.invalid(key, "expected an integer".into()))
    }

    /// An array of strings that must be present.
    pub(crate) fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        let Value::Array(items) = self.require(key)? else {
            return Err(self.invalid(key, "expected an array of strings".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.invalid(
                    key,
                    format!("element {i}: expected a string, found {:?}", other.value_type()),
                )),
            })
            .collect()
    }

    /// An array of integers, `None` when the key is absent.
    pub(crate) fn opt_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let Value::Array(items) = value else {
            return Err(self.invalid(key, "expected an array of integers".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                integer(item).ok_or_else(|| {
                    self.invalid(key, format!("element {i}: expected an integer, found {item:?}"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Any GGUF integer as i64 (u64 values above i64::MAX are rejected as impossible metadata).
fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

/// Checks that every tensor's bytes lie inside a file of `actual_bytes`.
fn check_tensor_extents(path: &Path, content: &Content, actual_bytes: u64) -> Result<()> {
    let mut extents = Vec::with_capacity(content.tensor_infos.len()); // (start, end, name)
    for (name, info) in &content.tensor_infos {
        let dtype = info.ggml_dtype;
        let (block, type_size) = (dtype.block_size() as u64, dtype.type_size() as u64);
        let start = content.tensor_data_offset.checked_add(info.offset);
        let end = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|elems| elems % block == 0)
            .and_then(|elems| (elems / block).checked_mul(type_size))
            .and_then(|bytes| start?.checked_add(bytes));
        match (start, end) {
            (Some(start), Some(end)) => extents.push((start, end, name.as_str())),
            _ => {
                return Err(InferenceError::InvalidMetadata {
                    path: path.to_path_buf(),
                    key: format!("tensor {name}"),
                    problem: format!(
                        "shape {:?} of {dtype:?} at offset {} is not a valid extent",
                        info.shape.dims(),
                        info.offset
                    ),
                });
            }
        }
    }
    let needed_bytes = extents.iter().map(|&(_, end, _)| end).max().unwrap_or(0);
    if needed_bytes <= actual_bytes {
        return Ok(());
    }
    // Name the first tensor (in file order) that the cut reaches.
    let tensor = extents
        .iter()
        .filter(|&&(_, end, _)| end > actual_bytes)
        .min()
        .map(|&(_, _, name)| name.to_owned())
        .unwrap_or_default();
    Err(InferenceError::TruncatedFile {
        path: path.to_path_buf(),
        tensor,
        needed_bytes,
        actual_bytes,
    })
}
