//! The GPU catalogue: names as reported, the seed's ordering rules, unknown names.

use std::cmp::Ordering;

use heurist_points::{Gpu, GpuCatalogue, PointsError};

fn gpu(name: &str) -> &'static Gpu {
    GpuCatalogue::builtin().unwrap().lookup(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Asserts that each name ranks strictly below the next.
fn ascending(names: &[&str]) {
    for pair in names.windows(2) {
        assert_eq!(gpu(pair[0]).cmp_rank(gpu(pair[1])), Ordering::Less, "{} < {}", pair[0], pair[1]);
    }
}

#[test]
fn seed_ordering_rules() {
    // "3060 < 3070 < 3080 < 3090; 4060 < 4070 < 4080 < 4090".
    ascending(&["RTX 3060", "RTX 3070", "RTX 3080", "RTX 3090"]);
    ascending(&["RTX 4060", "RTX 4070", "RTX 4080", "RTX 4090"]);
    ascending(&["RTX 5060", "RTX 5070", "RTX 5080", "RTX 5090"]);
    // "Ti" slightly above the plain part (and SUPER between, where both exist).
    for (plain, ti) in [
        ("RTX 3060", "RTX 3060 Ti"),
        ("RTX 3070", "RTX 3070 Ti"),
        ("RTX 3080", "RTX 3080 Ti"),
        ("RTX 3090", "RTX 3090 Ti"),
        ("RTX 4060", "RTX 4060 Ti"),
        ("RTX 4070", "RTX 4070 Ti"),
        ("RTX 5060", "RTX 5060 Ti"),
        ("RTX 5070", "RTX 5070 Ti"),
    ] {
        ascending(&[plain, ti]);
    }
    ascending(&["RTX 4070", "RTX 4070 SUPER", "RTX 4070 Ti", "RTX 4070 Ti SUPER", "RTX 4080", "RTX 4080 SUPER"]);
    // Each Ti stays below the next number up: "slightly" more powerful.
    ascending(&["RTX 3060 Ti", "RTX 3070"]);
    ascending(&["RTX 3070 Ti", "RTX 3080"]);
    ascending(&["RTX 4060 Ti", "RTX 4070"]);
    // "A4000 < A4500 < A5000 < A100 < H100".
    ascending(&["NVIDIA RTX A4000", "NVIDIA RTX A4500", "NVIDIA RTX A5000", "NVIDIA A100-PCIE-40GB", "NVIDIA H100 PCIe"]);
    ascending(&["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"]);
}

#[test]
fn ranked_is_sorted_and_complete() {
    let cat = GpuCatalogue::builtin().unwrap();
    let ranked = cat.ranked();
    assert_eq!(ranked.len(), cat.gpus().len());
    assert!(ranked.windows(2).all(|w| w[0].cmp_rank(w[1]) == Ordering::Less));
    assert_eq!(ranked.last().unwrap().name, "NVIDIA H200");
}

#[test]
fn names_as_nvidia_smi_and_cuda_report_them() {
    let cases = [
        ("NVIDIA GeForce RTX 4060 Ti", "NVIDIA GeForce RTX 4060 Ti"),
        ("GeForce RTX 3090", "NVIDIA GeForce RTX 3090"),
        ("nvidia geforce rtx 4070 ti super", "NVIDIA GeForce RTX 4070 Ti SUPER"),
        ("NVIDIA GeForce RTX 5090", "NVIDIA GeForce RTX 5090"),
        ("NVIDIA RTX A2000 12GB", "NVIDIA RTX A2000"),
        ("NVIDIA RTX 6000 Ada Generation", "NVIDIA RTX 6000 Ada Generation"),
        ("NVIDIA A10", "NVIDIA A10"),
        ("NVIDIA A40", "NVIDIA A40"),
        ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"),
        ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
        ("A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"),
        ("NVIDIA L4", "NVIDIA L4"),
        ("NVIDIA L40S", "NVIDIA L40S"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"),
        ("NVIDIA H100 NVL", "NVIDIA H100 NVL"),
        ("NVIDIA H200", "NVIDIA H200"),
        ("NVIDIA H200 141GB HBM3e", "NVIDIA H200"),
    ];
    for (reported, canonical) in cases {
        assert_eq!(gpu(reported).name, canonical, "{reported}");
    }
    // The three H100s are different parts.
    assert!(gpu("NVIDIA H100 PCIe").fp16_tflops < gpu("NVIDIA H100 80GB HBM3").fp16_tflops);
    assert_eq!(gpu("NVIDIA H100 NVL").min_vram_gb(), 94);
}

#[test]
fn unknown_names_are_typed_errors() {
    let cat = GpuCatalogue::builtin().unwrap();
    for name in [
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA GeForce RTX 3080 Ti Laptop GPU",
        "NVIDIA GeForce GTX 1080 Ti",
        "Quadro RTX 6000",
        "NVIDIA H100",
        "AMD Radeon RX 7900 XTX",
        "",
    ] {
        match cat.lookup(name) {
            Err(PointsError::UnknownGpu { name: n }) => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_catalogue_can_be_extended_as_data() {
    let text = r#"
[[gpu]]
name = "NVIDIA GeForce RTX 4090 Laptop GPU"
series = "geforce-40"
vram_gb = [16]
fp16_tflops = 150.0
"#;
    let cat = GpuCatalogue::from_toml_str(text).unwrap();
    assert_eq!(cat.lookup("NVIDIA GeForce RTX 4090 Laptop GPU").unwrap().min_vram_gb(), 16);
    let dup = format!("{text}{text}");
    assert!(matches!(GpuCatalogue::from_toml_str(&dup), Err(PointsError::InvalidCatalogue { .. })));
}
