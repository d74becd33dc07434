//! Integration tests of heurist-inference, one module per area. They run the real
//! SmolLM2-135M-Instruct GGUF; fetch it first with `python3 tools/fetch_smollm2.py`.

mod bad_input;
mod batching;
mod chat_templates;
mod generation;
mod hidden_states;
mod image_lpw;
mod image_noise;
mod image_prompt;
mod image_scheduler;
mod image_sd;
mod image_sd_bad_input;
mod image_sd_lora;
mod image_sd_lora_diffusers;
mod image_sd_composite;
mod image_sd_samplers;
mod image_sdxl;
mod llama_cpp_parity;
mod safetensors_parity;
mod sampling;
mod scoring;
mod streaming;
mod support;
mod tool_calls;
