//! The seeded noise against torch's own bits (tests/fixtures/torch/randn.json, made by
//! tools/make_image_fixtures.py with torch 2.4.0): every seed, shape, dtype (f32, f16, bf16),
//! both draws of a generator, mixed draw sequences, for torch's portable kernel and its AVX2 /
//! AVX-512 kernels.
//! Exact equality of bit patterns: no tolerance.

// The helpers read the fixture too: a malformed one should fail the test loudly.
#![allow(clippy::unwrap_used)]

use heurist_inference::InferenceError;
use heurist_inference::image::noise::{NoiseDType, NoiseSource, TorchCpuGenerator, TorchCpuKernel};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torch/randn.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn dtype(name: &str) -> NoiseDType {
    match name {
        "f32" => NoiseDType::F32,
        "f16" => NoiseDType::F16,
        "bf16" => NoiseDType::BF16,
        other => panic!("fixture dtype {other}"),
    }
}

fn kernel(capability: &str) -> TorchCpuKernel {
    match capability {
        "NO AVX" => TorchCpuKernel::Default,
        "AVX2" | "AVX512" => TorchCpuKernel::Avx2,
        other => panic!("fixture capability {other}"),
    }
}

/// The draw's bit patterns, as torch stores them (u32 per f32, u16 per f16 and per bf16).
fn bits(values: &[f32], dtype: NoiseDType) -> Vec<u32> {
    values
        .iter()
        .map(|v| match dtype {
            NoiseDType::F32 => v.to_bits(),
            NoiseDType::F16 => u32::from(half_bits(*v)),
            NoiseDType::BF16 => u32::from(bfloat_bits(*v)),
        })
        .collect()
}

/// The f16 bit pattern of an f32 that holds an f16 exactly (the test fails if it does not).
fn half_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let magnitude = v.abs();
    if magnitude == 0.0 {
        return sign;
    }
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let h = if exp <= 0 {
        // f16 subnormal: an integer multiple of 2^-24.
        let m = magnitude * 16_777_216.0;
        assert_eq!(m.fract(), 0.0, "{v} is not an f16");
        m as u16
    } else {
        assert_eq!(b & 0x1fff, 0, "{v} is not an f16");
        ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
    };
    sign | h
}

/// The bf16 bit pattern of an f32 that holds a bf16 exactly (the test fails if it does not): a
/// bf16 is the upper half of the f32 with the same value.
fn bfloat_bits(v: f32) -> u16 {
    let b = v.to_bits();
    assert_eq!(b & 0xffff, 0, "{v} is not a bf16");
    (b >> 16) as u16
}

fn sha256(words: &[u32], dtype: NoiseDType) -> String {
    let mut hasher = Sha256::new();
    for w in words {
        match dtype {
            NoiseDType::F32 => hasher.update(w.to_le_bytes()),
            NoiseDType::F16 | NoiseDType::BF16 => hasher.update((*w as u16).to_le_bytes()),
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex_list(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| u32::from_str_radix(h.as_str().unwrap(), 16).unwrap())
        .collect()
}

/// Checks one recorded draw; returns a description of the mismatch, if any.
fn check_draw(recorded: &Value, got: &[u32], dtype: NoiseDType) -> Option<String> {
    if let Some(whole) = recorded.get("bits") {
        let want = hex_list(whole);
        if want != got {
            let first = want.iter().zip(got).position(|(a, b)| a != b);
            return Some(format!("bits differ, first at {first:?} of {}", want.len()));
        }
    }
    for (key, from_end) in [("head", false), ("tail", true)] {
        if let Some(edge) = recorded.get(key) {
            let want = hex_list(edge);
            let have = if from_end {
                &got[got.len() - want.len()..]
            } else {
                &got[..want.len()]
            };
            if want != have {
                return Some(format!("{key} differs"));
            }
        }
    }
    let want_hash = recorded["sha256"].as_str().unwrap();
    (sha256(got, dtype) != want_hash).then(|| "sha256 differs".to_string())
}

#[test]
fn randn_equals_torch_bit_for_bit() {
    let fixture = fixture();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut checked_bf16 = 0;
    for table in fixture["tables"].as_array().unwrap() {
        let capability = table["capability"].as_str().unwrap();
        let kernel = kernel(capability);
        for record in table["records"].as_array().unwrap() {
            let seed = record["seed"].as_u64().unwrap();
            let shape: Vec<usize> = record["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let dtype = dtype(record["dtype"].as_str().unwrap());
            let mut generator = TorchCpuGenerator::with_kernel(seed, kernel);
            for (draw, recorded) in record["draws"].as_array().unwrap().iter().enumerate() {
                let got = bits(&generator.randn(&shape, dtype).unwrap(), dtype);
                checked += 1;
                checked_bf16 += usize::from(dtype == NoiseDType::BF16);
                if let Some(why) = check_draw(recorded, &got, dtype) {
                    failures.push(format!(
                        "{capability} seed {seed} {shape:?} {dtype:?} draw {draw}: {why}"
                    ));
                }
            }
        }
        for sequence in table["sequences"].as_array().unwrap() {
            let seed = sequence["seed"].as_u64().unwrap();
            let mut generator = TorchCpuGenerator::with_kernel(seed, kernel);
            for (draw, recorded) in sequence["draws"].as_array().unwrap().iter().enumerate() {
                let shape: Vec<usize> = recorded["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                let dtype = dtype(recorded["dtype"].as_str().unwrap());
                let got = bits(&generator.randn(&shape, dtype).unwrap(), dtype);
                checked += 1;
                checked_bf16 += usize::from(dtype == NoiseDType::BF16);
                if let Some(why) = check_draw(recorded, &got, dtype) {
                    failures.push(format!(
                        "{capability} sequence seed {seed} draw {draw} {shape:?} {dtype:?}: {why}"
                    ));
                }
            }
        }
    }
    assert!(checked >= 600, "only {checked} draws in the fixture");
    assert!(
        checked_bf16 >= 200,
        "only {checked_bf16} bf16 draws in the fixture"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} draws differ from torch:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn noise_tensor_has_the_shape_and_dtype() {
    for (noise, candle) in [
        (NoiseDType::F16, candle_core::DType::F16),
        (NoiseDType::BF16, candle_core::DType::BF16),
    ] {
        assert_eq!(noise.candle_dtype(), candle);
        let mut generator = TorchCpuGenerator::new(42);
        let t = generator
            .randn_tensor(&[1, 4, 8, 8], noise, &candle_core::Device::Cpu)
            .unwrap();
        assert_eq!(t.dims(), &[1, 4, 8, 8]);
        assert_eq!(t.dtype(), candle);
        let again = TorchCpuGenerator::new(42)
            .randn(&[1, 4, 8, 8], noise)
            .unwrap();
        let values: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(values, again, "{noise:?}");
    }
}

#[test]
fn empty_shapes_are_typed_errors() {
    let mut generator = TorchCpuGenerator::new(0);
    for shape in [&[][..], &[1, 0, 64, 64][..]] {
        let err = generator.randn(shape, NoiseDType::F32).unwrap_err();
        assert!(
            matches!(err, InferenceError::InvalidNoiseShape { .. }),
            "{err}"
        );
    }
}
