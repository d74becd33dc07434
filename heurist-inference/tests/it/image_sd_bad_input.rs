//! Broken checkpoints get typed errors that say what is wrong: a truncated download names the
//! first cut tensor, a corrupt header says so, a missing tensor is named in the file's (LDM) and
//! the module's (diffusers) terms, a safetensors file of something else is no SD layout.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use heurist_inference::image::ImageEngine;
use heurist_inference::{DeviceSpec, InferenceError};

use crate::image_sd::checkpoint_fp16;

fn load(bytes: &[u8]) -> InferenceError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    ImageEngine::load_checkpoint(&path, DeviceSpec::Cpu).unwrap_err()
}

fn save(tensors: &HashMap<String, Tensor>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn image_sd_truncated_checkpoint_names_the_cut_tensor() {
    let bytes = std::fs::read(checkpoint_fp16()).unwrap();
    let err = load(&bytes[..bytes.len() - 1000]);
    match &err {
        InferenceError::TruncatedFile {
            tensor,
            needed_bytes,
            actual_bytes,
            ..
        } => {
            assert!(!tensor.is_empty());
            assert_eq!(*needed_bytes, bytes.len() as u64);
            assert_eq!(*actual_bytes, bytes.len() as u64 - 1000);
        }
        other => panic!("expected TruncatedFile, got {other}"),
    }
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn image_sd_corrupt_headers_are_malformed_safetensors() {
    for bytes in [b"not a safetensors file at all".to_vec(), vec![1, 2, 3], {
        let mut b = 20u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{\"a\": [1, 2, 3]} xxxxxxxx");
        b
    }] {
        let err = load(&bytes);
        assert!(
            matches!(err, InferenceError::MalformedSafetensors { .. }),
            "{err}"
        );
    }
}

#[test]
fn image_sd_missing_tensor_is_named() {
    let mut tensors = candle_core::safetensors::load(checkpoint_fp16(), &Device::Cpu).unwrap();
    let gone = "model.diffusion_model.input_blocks.4.0.in_layers.2.weight";
    assert!(tensors.remove(gone).is_some());
    let err = load(&save(&tensors));
    match &err {
        InferenceError::MissingTensor {
            component,
            tensor,
            wanted,
            ..
        } => {
            assert_eq!(*component, "UNet");
            assert_eq!(tensor, gone);
            assert_eq!(wanted, "down_blocks.1.resnets.0.conv1.weight");
        }
        other => panic!("expected MissingTensor, got {other}"),
    }
    assert!(err.to_string().contains(gone), "{err}");
}

#[test]
fn image_sd_other_safetensors_are_no_sd_layout() {
    let tensors = HashMap::from([(
        "model.layers.0.weight".to_owned(),
        Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    let err = load(&save(&tensors));
    assert!(
        matches!(err, InferenceError::UnknownCheckpointLayout { .. }),
        "{err}"
    );
}

#[test]
fn image_sd_wrong_shapes_are_an_unrecognised_architecture() {
    let mut tensors = candle_core::safetensors::load(checkpoint_fp16(), &Device::Cpu).unwrap();
    // A CLIP wider than the UNet's context: no SD 1.5 model.
    let key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight";
    tensors.insert(
        key.to_owned(),
        Tensor::zeros((49408, 24), candle_core::DType::F16, &Device::Cpu).unwrap(),
    );
    let err = load(&save(&tensors));
    assert!(
        matches!(err, InferenceError::UnrecognisedArchitecture { .. }),
        "{err}"
    );
}
