//! Chat LLMs: request and output types, the engine and its generation loop, and the parts the
//! loop is made of (tokenizer, chat template, sampler, stop strings, incremental
//! detokenisation, the observer hook, the model seam). One file per part; the engine composes.

pub(crate) mod cpu_llama;
pub(crate) mod decoder;
pub(crate) mod detokenize;
pub(crate) mod batch;
pub(crate) mod engine;
pub(crate) mod generation;
pub(crate) mod hf_config;
pub(crate) mod hf_tokenizer;
pub(crate) mod model;
pub(crate) mod observer;
pub(crate) mod quant;
pub(crate) mod request;
pub(crate) mod sampler;
pub(crate) mod stop;
pub(crate) mod stream;
pub(crate) mod template;
pub(crate) mod tokenizer;
pub(crate) mod tool_calls;
