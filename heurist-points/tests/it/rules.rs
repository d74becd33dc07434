//! Rule sets from text and files: typed errors that name the offending line.

use std::io::Write;

use heurist_points::{JobRecord, PointsError, RuleSet};

/// A small valid rule set; tests replace one line to break it.
const BASE: &str = r#"name = "test"

[waifu]
timeout_s = 18
unit = { width = 512, height = 512, steps = 20, category = "sd15" }
latency_curve = [{ latency_s = 6, factor = 1 }, { latency_s = 18, factor = 0.5 }]

[waifu.categories.sd15]
multiplier = 0.3
min_gpu = ["NVIDIA GeForce RTX 3070"]

[waifu.categories.sdxl]
multiplier = 1

[waifu.types]
sd15 = "sd15"
sdxl10 = "sdxl"

[llama]
timeout_s = 180
unit = { tokens = 1000 }
types = ["llm*"]

[llama.models."m-1.0"]
multiplier = 0.5
vram_gb = 16

[[boost.nft_tiers]]
min_nfts = 1
max_nfts = 2
multiplier = 1.1

[[boost.nft_tiers]]
min_nfts = 3
multiplier = 1.5
"#;

/// The 1-based line of the first line containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn broken(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_is_valid_and_its_curve_applies() {
    let r = RuleSet::from_toml_str(BASE).unwrap();
    let job = |latency_s| JobRecord {
        model_id: "x".into(),
        model_type: Some("sdxl10".into()),
        width: 512,
        height: 512,
        steps: 20,
        latency_s,
        ..Default::default()
    };
    // 512x512x20 SDXL = 1 unit * 1 / 0.3 = 3.333333 at factor 1 (up to 6 s)...
    assert_eq!(r.points(&job(6.0)).unwrap().micro(), 3_333_333);
    // ... and at 12 s the factor is 1 + (0.5 - 1) * (12 - 6) / 12 = 0.75:
    // 5,242,880 * 1,000,000 * 750,000 / (5,242,880 * 300,000) = 2,500,000.
    assert_eq!(r.points(&job(12.0)).unwrap().micro(), 2_500_000);
    // At 18 s (the deadline) 0.5, past it 0.
    assert_eq!(r.points(&job(18.0)).unwrap().micro(), 1_666_666);
    assert_eq!(r.points(&job(18.5)).unwrap().micro(), 0);
    // LLM ids with dots, any llm* type.
    let llm = JobRecord {
        model_id: "m-1.0".into(),
        model_type: Some("llm70b".into()),
        input_tokens: 10,
        output_tokens: 10,
        latency_s: 1.0,
        ..Default::default()
    };
    // 20 / 1000 * 0.5 = 0.01.
    assert_eq!(r.points(&llm).unwrap().micro(), 10_000);
    assert_eq!(r.nft_multiplier(2).unwrap().millionths(), 1_100_000);
    assert_eq!(r.nft_multiplier(7).unwrap().millionths(), 1_500_000);
    assert!(r.nft_multiplier(0).is_none());
}

#[test]
fn unknown_category_names_its_line() {
    let text = broken(r#"sdxl10 = "sdxl""#, r#"sdxl10 = "sdxl_turbo""#);
    let err = RuleSet::from_toml_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::UnknownCategory { ref name, .. } if name == "sdxl_turbo"), "{err}");
    assert_eq!(err.line(), Some(line_with(&text, "sdxl_turbo")));
    assert!(err.to_string().contains(&format!("line {}", line_with(&text, "sdxl_turbo"))), "{err}");

    let text = broken(r#"category = "sd15""#, r#"category = "sd21""#);
    let err = RuleSet::from_toml_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::UnknownCategory { ref name, .. } if name == "sd21"));
    assert_eq!(err.line(), Some(line_with(&text, "sd21")));
}

#[test]
fn negative_multiplier_names_its_line() {
    let text = broken("multiplier = 1\n", "multiplier = -1\n");
    let err = RuleSet::from_toml_str(&text).unwrap_err();
    assert!(
        matches!(err, PointsError::NegativeMultiplier { ref path, value, .. }
            if path == "waifu.categories.sdxl.multiplier" && value.millionths() == -1_000_000),
        "{err}"
    );
    assert_eq!(err.line(), Some(line_with(&text, "multiplier = -1")));

    // In an LLM model whose id holds dots (a quoted TOML key).
    let text = broken("multiplier = 0.5", "multiplier = -0.5");
    let err = RuleSet::from_toml_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::NegativeMultiplier { ref path, .. } if path == r#"llama.models."m-1.0".multiplier"#));
    assert_eq!(err.line(), Some(line_with(&text, "multiplier = -0.5")));

    // A negative latency factor is a negative multiplier too.
    let text = broken("factor = 0.5", "factor = -0.5");
    let err = RuleSet::from_toml_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::NegativeMultiplier { .. }));
    assert_eq!(err.line(), Some(line_with(&text, "factor = -0.5")));
}

#[test]
fn overlapping_tiers_name_the_later_tier() {
    let text = broken("min_nfts = 3", "min_nfts = 2");
    let err = RuleSet::from_toml_str(&text).unwrap_err();
    assert!(
        matches!(err, PointsError::OverlappingTiers { ref first, ref second, .. } if first == "1..=2" && second == "2.."),
        "{err}"
    );
    // toml reports the second [[boost.nft_tiers]] table from its header.
    let second_header = text.match_indices("[[boost.nft_tiers]]").nth(1).unwrap().0;
    let header_line = text[..second_header].lines().count() + 1;
    assert_eq!(err.line(), Some(header_line));
}

#[test]
fn other_invalid_values() {
    let cases = [
        ("timeout_s = 18", "timeout_s = 0", "timeout_s = 0"),
        ("width = 512", "width = 0", "width = 0"),
        (r#"min_gpu = ["NVIDIA GeForce RTX 3070"]"#, r#"min_gpu = ["Voodoo 2"]"#, "Voodoo"),
        (r#"types = ["llm*"]"#, r#"types = ["*llm"]"#, "*llm"),
        ("{ latency_s = 18, factor = 0.5 }", "{ latency_s = 5, factor = 0.5 }", "latency_s = 5"),
    ];
    for (from, to, needle) in cases {
        let text = broken(from, to);
        let err = RuleSet::from_toml_str(&text).unwrap_err();
        assert!(matches!(err, PointsError::InvalidRule { .. }), "{to}: {err}");
        assert_eq!(err.line(), Some(line_with(&text, needle)), "{to}: {err}");
    }
}

#[test]
fn syntax_and_shape_errors_carry_lines() {
    let text = broken("multiplier = 1\n", "multiplier = 1\nbogus_field = 3\n");
    let err = RuleSet::from_toml_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::RuleToml { .. }));
    assert_eq!(err.line(), Some(line_with(&text, "bogus_field")));
    // Seven fractional digits are refused, not rounded.
    let text = broken("multiplier = 1\n", "multiplier = 1.0000001\n");
    assert!(matches!(RuleSet::from_toml_str(&text), Err(PointsError::RuleToml { .. })));
    let err = RuleSet::from_json_str("{\n  \"name\": \"x\",\n  \"waifu\": 3\n}").unwrap_err();
    assert!(matches!(err, PointsError::RuleJson { line: 3, .. }), "{err}");
}

/// The base rule set as pretty JSON.
fn base_json() -> String {
    let r = RuleSet::from_toml_str(BASE).unwrap();
    serde_json::to_string_pretty(r.data()).unwrap()
}

#[test]
fn json_errors_name_lines_too() {
    let json = base_json();
    let text = json.replacen("\"sdxl10\": \"sdxl\"", "\"sdxl10\": \"nope\"", 1);
    let err = RuleSet::from_json_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::UnknownCategory { ref name, .. } if name == "nope"));
    assert_eq!(err.line(), Some(line_with(&text, "\"nope\"")));

    let text = json.replacen("\"multiplier\": 0.5", "\"multiplier\": -0.5", 1);
    let err = RuleSet::from_json_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::NegativeMultiplier { .. }), "{err}");
    assert_eq!(err.line(), Some(line_with(&text, "-0.5")));

    let text = json.replacen("\"min_nfts\": 3", "\"min_nfts\": 1", 1);
    let err = RuleSet::from_json_str(&text).unwrap_err();
    assert!(matches!(err, PointsError::OverlappingTiers { .. }), "{err}");
    // Inside the second tier object (its first line of content).
    let second_min = text.match_indices("\"min_nfts\"").nth(1).unwrap().0;
    let tier_start = text[..second_min].rfind('{').unwrap();
    assert_eq!(err.line(), Some(text[..tier_start].lines().count() + 1));
}

#[test]
fn files_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("rules.toml");
    std::fs::File::create(&toml_path).unwrap().write_all(BASE.as_bytes()).unwrap();
    assert_eq!(RuleSet::from_path(&toml_path).unwrap().name(), "test");
    assert_eq!(RuleSet::load(toml_path.to_str().unwrap()).unwrap().name(), "test");

    let json_path = dir.path().join("rules.JSON");
    std::fs::write(&json_path, base_json()).unwrap();
    assert_eq!(RuleSet::from_path(&json_path).unwrap().name(), "test");

    let yaml = dir.path().join("rules.yaml");
    std::fs::write(&yaml, "name: x").unwrap();
    assert!(matches!(RuleSet::from_path(&yaml), Err(PointsError::RuleFileExtension { .. })));
    assert!(matches!(RuleSet::from_path(dir.path().join("missing.toml")), Err(PointsError::RuleFile { .. })));
    assert!(matches!(RuleSet::load("season-9"), Err(PointsError::RuleFileExtension { .. })));
    assert!(matches!(RuleSet::preset("season-9"), Err(PointsError::UnknownPreset { .. })));
}
