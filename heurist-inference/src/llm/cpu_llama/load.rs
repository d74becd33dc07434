//! Building [`Weights`] from a GGUF file's tensor table: the hyper-parameters from the metadata,
//! matmul weights kept in their Q4_1 / Q8_0 blocks (Q, K, V stacked into one matrix, gate and
//! up into another), norms and any other small tensor dequantized by candle.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};

use super::ops::{Heads, Rope};
use super::{Layer, Weights};
use crate::error::InferenceError;
use crate::llm::quant::block::WeightFormat;
use crate::llm::quant::matmul::QMatrix;

/// Why the CPU body did not load.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// The file is fine but needs something this body does not do (another quant type, MoE,
    /// a RoPE scaling other than linear); candle's body can run it.
    Unsupported(String),
    /// The file is broken.
    Failed(InferenceError),
}

impl From<InferenceError> for LoadError {
    fn from(err: InferenceError) -> Self {
        LoadError::Failed(err)
    }
}

type Result<T> = std::result::Result<T, LoadError>;

struct Reader<'a> {
    content: &'a Content,
    reader: &'a mut BufReader<File>,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn invalid(&self, key: &str, problem: String) -> LoadError {
        LoadError::Failed(InferenceError::InvalidMetadata {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            problem,
        })
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(value) = self.value(key) else { return Ok(None) };
        value
            .to_u64()
            .ok()
            .or_else(|| value.to_u32().ok().map(u64::from))
            .or_else(|| value.to_i32().ok().and_then(|v| u64::try_from(v).ok()))
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| self.invalid(key, format!("expected a non-negative integer, found {value:?}")))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| {
            LoadError::Failed(InferenceError::MissingMetadata { path: self.path.to_path_buf(), key: key.to_owned() })
        })
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        let Some(value) = self.value(key) else { return Ok(None) };
        value
            .to_f32()
            .ok()
            .or_else(|| value.to_f64().ok().map(|v| v as f32))
            .map(Some)
            .ok_or_else(|| self.invalid(key, format!("expected a float, found {value:?}")))
    }

    fn info(&self, name: &str) -> Result<&'a candle_core::quantized::gguf_file::TensorInfo> {
        let content: &'a Content = self.content;
        content.tensor_infos.get(name).ok_or_else(|| {
            LoadError::Failed(InferenceError::Load {
                path: self.path.to_path_buf(),
                source: candle_core::Error::msg(format!("tensor {name} is missing")),
            })
        })
    }

    fn load_err(&self, name: &str, source: candle_core::Error) -> LoadError {
        LoadError::Failed(InferenceError::Load {
            path: self.path.to_path_buf(),
            source: source.context(format!("tensor {name}")),
        })
    }

    /// A 2-D tensor `[rows, cols]` in a format the kernels multiply.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
        let info = self.info(name)?;
        let Some(format) = WeightFormat::from_ggml(info.ggml_dtype) else {
            return Err(LoadError::Unsupported(format!("tensor {name} is {:?}", info.ggml_dtype)));
        };
        if info.shape.dims() != [rows, cols] {
            return Err(self.load_err(
                name,
                candle_core::Error::msg(format!("shape {:?}, expected [{rows}, {cols}]", info.shape.dims())),
            ));
        }
        let start = self.content.tensor_data_offset + info.offset;
        let mut data = vec![0u8; format.row_bytes(cols) * rows];
        let io = |source| InferenceError::Io { path: self.path.to_path_buf(), source };
        self.reader.seek(SeekFrom::Start(start)).map_err(io)?;
        self.reader.read_exact(&mut data).map_err(io)?;
        QMatrix::new(format, rows, cols, data).map_err(|err| self.load_err(name, candle_core::Error::wrap(err)))
    }

    /// A tensor of `len` values of any type, dequantized.
    fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let tensor = info
            .read(self.reader, self.content.tensor_data_offset, &Device::Cpu)
            .and_then(|t| t.dequantize(&Device::Cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|err| self.load_err(name, err))?;
        if tensor.len() != len {
            return Err(self.load_err(name, candle_core::Error::msg(format!("{} values, expected {len}", tensor.len()))));
        }
        Ok(tensor)
    }
}

/// Reads the llama body's weights.
pub(super) fn load(content: &Content, reader: &mut BufReader<File>, path: &Path) -> Result<Weights> {
    let mut r = Reader { content, reader, path };
    if r.opt_usize("llama.expert_count")?.unwrap_or(0) > 0 {
        return Err(LoadError::Unsupported("mixture of experts".into()));
    }
    let hidden = r.usize("llama.embedding_length")?;
    let n_layer = r.usize("llama.block_count")?;
    let n_head = r.usize("llama.attention.head_count")?;
    let n_kv_head = r.opt_usize("llama.attention.head_count_kv")?.unwrap_or(n_head);
    if n_head == 0 || n_kv_head == 0 || hidden % n_head != 0 || n_head % n_kv_head != 0 {
        return Err(r.invalid(
            "llama.attention.head_count",
            format!("{n_head} heads ({n_kv_head} KV heads) do not divide an embedding of {hidden}"),
        ));
    }
    let head_dim = hidden / n_head;
    let rope_dim = r.opt_usize("llama.rope.dimension_count")?.unwrap_or(head_dim);
    if rope_dim > head_dim || rope_dim % 2 != 0 {
        return Err(r.invalid("llama.rope.dimension_count", format!("{rope_dim} for heads of {head_dim}")));
    }
    let eps = r.opt_f32("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
    let base = r.opt_f32("llama.rope.freq_base")?.unwrap_or(10_000.0);
    let freq_scale = match r.value("llama.rope.scaling.type").and_then(|v| v.to_string().ok()).map(String::as_str) {
        None | Some("none") => 1.0,
        Some("linear") => 1.0 / r.opt_f32("llama.rope.scaling.factor")?.unwrap_or(1.0),
        Some(other) => return Err(LoadError::Unsupported(format!("RoPE scaling {other}"))),
    };
    if !(freq_scale.is_finite() && freq_scale > 0.0) {
        return Err(r.invalid("llama.rope.scaling.factor", format!("gives a frequency scale of {freq_scale}")));
    }

    let heads = Heads { n_head, n_kv_head, head_dim };
    let (q_dim, kv_dim) = (heads.q_dim(), heads.kv_dim());
    let embed_info = r.info("token_embd.weight")?;
    let vocab = embed_info.shape.dims().first().copied().unwrap_or(0);
    let embedding = r.matrix("token_embd.weight", vocab, hidden)?;
    let output = if content.tensor_infos.contains_key("output.weight") {
        r.matrix("output.weight", vocab, hidden)?
    } else {
        embedding.clone()
    };
    let ff = r.info("blk.0.ffn_gate.weight")?.shape.dims().first().copied().unwrap_or(0);

    let stack = |name: &str, parts| {
        QMatrix::stack(parts).map_err(|err| LoadError::Unsupported(format!("{name}: {err}")))
    };
    let mut layers = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        let p = format!("blk.{i}");
        let qkv = vec![
            r.matrix(&format!("{p}.attn_q.weight"), q_dim, hidden)?,
            r.matrix(&format!("{p}.attn_k.weight"), kv_dim, hidden)?,
            r.matrix(&format!("{p}.attn_v.weight"), kv_dim, hidden)?,
        ];
        let gate_up = vec![
            r.matrix(&format!("{p}.ffn_gate.weight"), ff, hidden)?,
            r.matrix(&format!("{p}.ffn_up.weight"), ff, hidden)?,
        ];
        layers.push(Layer {
            attn_norm: r.vector(&format!("{p}.attn_norm.weight"), hidden)?,
            qkv: stack(&format!("{p} Q/K/V"), qkv)?,
            wo: r.matrix(&format!("{p}.attn_output.weight"), hidden, q_dim)?,
            ffn_norm: r.vector(&format!("{p}.ffn_norm.weight"), hidden)?,
            gate_up: stack(&format!("{p} gate/up"), gate_up)?,
            down: r.matrix(&format!("{p}.ffn_down.weight"), hidden, ff)?,
        });
    }
    Ok(Weights {
        hidden,
        ff,
        heads,
        eps,
        rope: Rope::new(rope_dim, f64::from(base), f64::from(freq_scale)),
        rope_dim,
        embedding,
        layers,
        output_norm: r.vector("output_norm.weight", hidden)?,
        output,
    })
}
