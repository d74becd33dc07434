//! Stable Diffusion weights on disk: single-file checkpoints in the LDM / A1111 layout (the
//! network's civitai models) and diffusers-layout folders, memory-mapped and handed to
//! candle-transformers' modules through a [`VarBuilder`] that renames on lookup.
//!
//! A file is checked before it is mapped: the safetensors header must parse and the file must be
//! long enough for every tensor, so that a truncated download is
//! [`InferenceError::TruncatedFile`] naming the first cut tensor rather than a mapping error.
//! Tensors are then read from the mapping one by one as the modules ask for them, converted to
//! the engine's dtype; the file itself is never copied or rewritten.
//!
//! A lookup the file cannot answer is remembered (the first one) so that the engine can report
//! [`InferenceError::MissingTensor`] with both names, where candle would only say it failed.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use super::ldm_names::Lookup;
use super::lora::Lora;
use crate::error::{InferenceError, Result};

/// safetensors' limit on the JSON header; a larger length field means a corrupt file.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One memory-mapped safetensors file and its tensor names.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    tensors: MmapedSafetensors,
    names: BTreeSet<String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Checks the header and the length of `path`, then maps it.
    ///
    /// # Errors
    /// [`InferenceError::Io`] when the file cannot be read, [`InferenceError::MalformedSafetensors`]
    /// when its header is not a safetensors header, [`InferenceError::TruncatedFile`] when it is
    /// shorter than its tensors need.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let io = |source| InferenceError::Io {
            path: path.to_owned(),
            source,
        };
        let malformed = |problem: String| InferenceError::MalformedSafetensors {
            path: path.to_owned(),
            problem,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| {
            malformed(format!(
                "{file_len} bytes, shorter than the 8-byte header length"
            ))
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || header_len + 8 > file_len {
            return Err(malformed(format!(
                "header length field {header_len} does not fit a {file_len}-byte file"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|err| malformed(format!("header is not a JSON object: {err}")))?;
        // The data region must hold every tensor's byte range.
        let data_start = 8 + header_len;
        let mut ranges = Vec::with_capacity(header.len());
        for (name, info) in &header {
            if name == "__metadata__" {
                continue;
            }
            let end = info
                .get("data_offsets")
                .and_then(|o| o.get(1))
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| malformed(format!("tensor {name} has no data_offsets")))?;
            ranges.push((end, name));
        }
        ranges.sort();
        let needed = data_start + ranges.last().map_or(0, |(end, _)| *end);
        if needed > file_len {
            let tensor = ranges
                .iter()
                .find(|(end, _)| data_start + end > file_len)
                .map(|(_, name)| (*name).clone())
                .unwrap_or_default();
            return Err(InferenceError::TruncatedFile {
                path: path.to_owned(),
                tensor,
                needed_bytes: needed,
                actual_bytes: file_len,
            });
        }
        // SAFETY: the mapping is only read; a file changed under a running engine is the
        // operator's error, as for every memory-mapped model loader.
        let tensors =
            unsafe { MmapedSafetensors::new(path) }.map_err(|err| malformed(err.to_string()))?;
        let names = ranges.into_iter().map(|(_, name)| name.clone()).collect();
        Ok(Self {
            path: path.to_owned(),
            tensors,
            names,
        })
    }

    /// Whether the file has a tensor of this name.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// All tensor names, sorted.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// One tensor, read from the mapping.
    pub(crate) fn tensor(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        self.tensors.load(name, device)
    }

    /// The shape of a tensor, without reading its data.
    pub(crate) fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .get(name)
            .ok()
            .map(|view| view.shape().to_vec())
    }
}

/// Where a module's (diffusers / transformers) tensor names are in a file.
pub(crate) type Rename = Arc<dyn Fn(&str) -> Option<Lookup> + Send + Sync>;

/// A [`Rename`] that puts `prefix` before every name.
pub(crate) fn prefixed(prefix: &'static str) -> Rename {
    Arc::new(move |n| Some(Lookup::plain(format!("{prefix}{n}"))))
}

/// The first lookup a backend could not answer: the module's name and the file's name.
pub(crate) type MissingSlot = Arc<Mutex<Option<(String, Option<String>)>>>;

/// A LoRA merged into one component's weights as they load.
#[derive(Clone)]
pub(crate) struct LoraHook {
    /// The adapters.
    pub(crate) lora: Arc<Lora>,
    /// The component's kohya prefix (`lora_unet_`, `lora_te_`, `lora_te1_`, `lora_te2_`).
    pub(crate) prefix: &'static str,
    /// The LoRA weight.
    pub(crate) scale: f64,
    /// Adapters merged so far, and adapters whose shape fitted no weight.
    pub(crate) seen: Arc<Mutex<LoraSeen>>,
}

/// What a [`LoraHook`] met while a model loaded.
#[derive(Debug, Default)]
pub(crate) struct LoraSeen {
    /// Kohya module names merged.
    pub(crate) merged: BTreeSet<String>,
    /// Kohya module names whose adapter does not fit the weight's shape.
    pub(crate) misfits: BTreeSet<String>,
}

/// A candle [`SimpleBackend`] over a mapped file that translates every name with a [`Rename`]
/// and merges a LoRA when one is hooked in.
struct RenamingBackend {
    file: Arc<SafetensorsFile>,
    rename: Rename,
    missing: MissingSlot,
    lora: Option<LoraHook>,
}

impl RenamingBackend {
    /// `weight` with the hooked LoRA's adapter for module `name` merged in (f32 math).
    fn merge(&self, name: &str, weight: Tensor) -> candle_core::Result<Tensor> {
        let Some(hook) = &self.lora else {
            return Ok(weight);
        };
        let Some(module) = name.strip_suffix(".weight") else {
            return Ok(weight);
        };
        let asked = format!("{}{}", hook.prefix, module.replace('.', "_"));
        let Some(kohya) = hook.lora.resolve(&asked).map(str::to_owned) else {
            return Ok(weight);
        };
        let delta = hook.lora.delta(&kohya, weight.dims(), weight.device())?;
        let mut seen = hook
            .seen
            .lock()
            .map_err(|_| candle_core::Error::Msg("LoRA bookkeeping poisoned".into()))?;
        match delta {
            None => {
                seen.misfits.insert(kohya);
                Ok(weight)
            }
            Some(delta) => {
                seen.merged.insert(kohya);
                // In f32, whatever the file's dtype: the caller converts to the model's.
                weight.to_dtype(DType::F32)? + (delta * hook.scale)?
            }
        }
    }
}

impl RenamingBackend {
    /// The module's tensor `name`, cut out of or transposed from the stored one as needed.
    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<(String, Tensor)> {
        let lookup = (self.rename)(name);
        let lookup = match lookup {
            Some(lookup) if self.file.contains(&lookup.key) => lookup,
            lookup => {
                let key = lookup.map(|l| l.key);
                if let Ok(mut slot) = self.missing.lock() {
                    slot.get_or_insert((name.to_owned(), key.clone()));
                }
                return Err(candle_core::Error::CannotFindTensor {
                    path: key.unwrap_or_else(|| name.to_owned()),
                });
            }
        };
        let mut tensor = self.file.tensors.load(&lookup.key, dev)?;
        if let Some((i, n)) = lookup.part {
            let len = tensor.dim(0)? / n;
            tensor = tensor.narrow(0, i * len, len)?;
        }
        if lookup.transpose {
            tensor = tensor.t()?.contiguous()?;
        }
        Ok((lookup.key, tensor))
    }
}

impl SimpleBackend for RenamingBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (key, tensor) = self.load(name, dev)?;
        let tensor = if tensor.shape() == &shape {
            tensor
        } else if squeezes_to(tensor.dims(), shape.dims()) {
            // LDM stores some linear layers (the VAE's attention projections) as 1x1 convs.
            tensor.reshape(shape.clone())?
        } else {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("tensor {key} (wanted as {name})"),
                expected: shape,
                got: tensor.shape().clone(),
            });
        };
        self.merge(name, tensor)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dev)?.1;
        self.merge(name, tensor)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.rename)(name).is_some_and(|lookup| self.file.contains(&lookup.key))
    }
}

/// The shapes a [`Rename`] gives a module, without reading any data.
pub(crate) fn renamed_shape(
    file: &SafetensorsFile,
    rename: &Rename,
    name: &str,
) -> Option<Vec<usize>> {
    let lookup = rename(name)?;
    let mut shape = file.shape(&lookup.key)?;
    if let Some((_, n)) = lookup.part {
        shape[0] /= n;
    }
    if lookup.transpose {
        shape.reverse();
    }
    Some(shape)
}

/// Whether `stored` is `wanted` with trailing dimensions of size 1 added.
fn squeezes_to(stored: &[usize], wanted: &[usize]) -> bool {
    stored.len() > wanted.len()
        && stored[..wanted.len()] == *wanted
        && stored[wanted.len()..].iter().all(|&d| d == 1)
}

/// A [`VarBuilder`] reading `file` through `rename`, merging `lora`, in `dtype` on `device`;
/// lookups that fail are recorded in `missing`.
pub(crate) fn var_builder(
    file: &Arc<SafetensorsFile>,
    rename: &Rename,
    missing: &MissingSlot,
    lora: Option<LoraHook>,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(RenamingBackend {
        file: Arc::clone(file),
        rename: Arc::clone(rename),
        missing: Arc::clone(missing),
        lora,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

/// Wraps a candle error from building a module: a recorded missing tensor becomes
/// [`InferenceError::MissingTensor`], anything else [`InferenceError::Load`].
pub(crate) fn load_error(
    path: &Path,
    component: &'static str,
    missing: &MissingSlot,
    source: candle_core::Error,
) -> InferenceError {
    let recorded = missing.lock().ok().and_then(|mut slot| slot.take());
    match recorded {
        Some((wanted, key)) => InferenceError::MissingTensor {
            path: path.to_owned(),
            component,
            tensor: key.unwrap_or_else(|| wanted.clone()),
            wanted,
        },
        None => InferenceError::Load {
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::squeezes_to;

    #[test]
    fn only_trailing_unit_dimensions_squeeze() {
        assert!(squeezes_to(&[8, 8, 1, 1], &[8, 8]));
        assert!(!squeezes_to(&[8, 8, 3, 3], &[8, 8]));
        assert!(!squeezes_to(&[8, 8], &[8, 8]));
        assert!(!squeezes_to(&[1, 8, 8], &[8, 8]));
    }
}
