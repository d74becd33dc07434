//! Reading model files from disk into candle tensors.
//!
//! Each format gets one file: `gguf.rs` (llama.cpp's single-file format, metadata plus
//! quantized tensors) and `safetensors.rs` (Hugging Face checkpoints, sharded or not). Loaders
//! check a file's shape before trusting it, so a wrong, truncated or hostile file becomes an
//! [`InferenceError`](crate::InferenceError) naming the file, never a panic or an allocation
//! sized by the file.

pub(crate) mod gguf;
pub(crate) mod safetensors;
