//! The CLIP tokenizer and prompt weighting against their references (tests/fixtures/clip/, made
//! by tools/make_clip_fixtures.py): transformers 4.44.2's `CLIPTokenizer` for the ids, and the
//! reference miner's vendored long-prompt-weighting pipelines (heurist-network/miner-release
//! `vendor/lpw_stable_diffusion.py`, `vendor/lpw_stable_diffusion_xl.py`) for the parsed
//! weights, the chunks and the re-weighted embeddings.

use candle_core::{DType, Device, Tensor};
use heurist_inference::image::clip_tokenizer::ClipTokenizer;
use heurist_inference::image::prompt::{
    PromptError, PromptFlavor, SD15_MAX_EMBEDDINGS_MULTIPLES, apply_weights_sd15,
    apply_weights_sdxl, parse_prompt_attention, sd15_prompt_chunks, sdxl_prompt_chunks,
    weighted_tokens,
};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/clip/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture readable"))
        .expect("fixture is JSON")
}

fn tokenizers() -> (ClipTokenizer, ClipTokenizer) {
    (
        ClipTokenizer::new().expect("embedded vocabulary"),
        ClipTokenizer::sdxl_second().expect("embedded vocabulary"),
    )
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("float list")
        .iter()
        .map(|x| x.as_f64().expect("float"))
        .collect()
}

/// The fixture's tensors: f32 bit patterns, 8 hex digits each.
fn hex_f32(v: &Value) -> Vec<f32> {
    let s = v.as_str().expect("hex string");
    (0..s.len() / 8)
        .map(|i| f32::from_bits(u32::from_str_radix(&s[i * 8..i * 8 + 8], 16).expect("hex")))
        .collect()
}

fn dtype(case: &Value) -> DType {
    match case["dtype"].as_str() {
        Some("f16") => DType::F16,
        _ => DType::F32,
    }
}

/// Largest |a - b| over the largest |b|.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn clip_ids_equal_transformers() {
    let (tok1, tok2) = tokenizers();
    let fixture = fixture("tokens.json");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40, "{} texts", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let full = ids(&case["ids"]);
        let full_2 = ids(&case["ids_sdxl2"]);
        let checks = [
            (
                "ids",
                tok1.encode(text).expect("encode"),
                full[1..full.len() - 1].to_vec(),
            ),
            (
                "ids, second tokenizer",
                tok2.encode(text).expect("encode"),
                full_2[1..full_2.len() - 1].to_vec(),
            ),
            (
                "padded SD 1.5",
                tok1.encode_padded(text).expect("encode"),
                ids(&case["padded_sd15"]),
            ),
            (
                "padded SDXL second",
                tok2.encode_padded(text).expect("encode"),
                ids(&case["padded_sdxl2"]),
            ),
        ];
        for (what, got, want) in checks {
            if got != want {
                failures.push(format!("{text:?} {what}:\n  got  {got:?}\n  want {want:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn prompt_weights_equal_the_reference_parser() {
    let (tok1, tok2) = tokenizers();
    let fixture = fixture("weights.json");
    let cases = fixture["cases"].as_array().expect("cases");
    let mut compared = 0;
    for case in cases {
        let text = case["text"].as_str().expect("text");
        for (key, flavor) in [("sd15", PromptFlavor::Sd15), ("sdxl", PromptFlavor::Sdxl)] {
            let want = &case[key];
            let parsed = parse_prompt_attention(text, flavor);
            if want.get("error").is_some() {
                assert!(
                    matches!(parsed, Err(PromptError::InvalidWeight { .. })),
                    "{text:?} ({key}): the reference raises {}, we gave {parsed:?}",
                    want["error"]
                );
                continue;
            }
            let parsed = parsed.unwrap_or_else(|e| panic!("{text:?} ({key}): {e}"));
            let got_pairs: Vec<(String, f64)> =
                parsed.into_iter().map(|p| (p.text, p.weight)).collect();
            let want_pairs: Vec<(String, f64)> = want["pairs"]
                .as_array()
                .expect("pairs")
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().expect("text").to_owned(),
                        p[1].as_f64().expect("weight"),
                    )
                })
                .collect();
            assert_eq!(got_pairs, want_pairs, "{text:?} ({key}): parsed runs");

            let mut tokens = weighted_tokens(&tok1, text, flavor).expect("tokens");
            if flavor == PromptFlavor::Sd15 {
                // The pipeline passes max_length 225 (3 chunks of 75) to get_prompts_with_weights.
                tokens.ids.truncate(225);
                tokens.weights.truncate(225);
            }
            assert_eq!(tokens.ids, ids(&want["ids"]), "{text:?} ({key}): ids");
            // Exact: the weights are the same f64 products as Python's floats.
            assert_eq!(
                tokens.weights,
                floats(&want["weights"]),
                "{text:?} ({key}): weights"
            );
            if flavor == PromptFlavor::Sdxl {
                let tokens_2 = weighted_tokens(&tok2, text, flavor).expect("tokens");
                assert_eq!(
                    tokens_2.ids,
                    ids(&want["ids_2"]),
                    "{text:?} (sdxl): second tokenizer's ids"
                );
                assert_eq!(
                    tokens_2.weights,
                    floats(&want["weights_2"]),
                    "{text:?} (sdxl): second weights"
                );
            }
            compared += 1;
        }
    }
    assert!(
        compared >= 40,
        "only {compared} prompt/flavor pairs compared"
    );
}

#[test]
fn sd15_chunks_and_reweighting_equal_the_reference() {
    let (tok1, _) = tokenizers();
    let fixture = fixture("chunks.json");
    let cases = fixture["sd15"].as_array().expect("sd15 cases");
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let negative = case["negative"].as_str().expect("negative");
        let label = format!("{} {prompt:.40?} / {negative:.40?}", case["dtype"]);
        let (p, n) =
            sd15_prompt_chunks(&tok1, prompt, Some(negative), SD15_MAX_EMBEDDINGS_MULTIPLES)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
        let n = n.expect("negative chunks");
        let calls = case["encoder_calls"].as_array().expect("calls");
        assert_eq!(
            calls.len(),
            p.ids.len() + n.ids.len(),
            "{label}: chunk count"
        );
        let (p_calls, n_calls) = calls.split_at(p.ids.len());
        for (chunks, calls, padded, embeds) in [
            (&p, p_calls, &case["padded"][0], &case["prompt_embeds"]),
            (&n, n_calls, &case["padded"][1], &case["negative_embeds"]),
        ] {
            let got_ids: Vec<Vec<u32>> = chunks.ids.clone();
            let want_ids: Vec<Vec<u32>> = calls.iter().map(|c| ids(&c["ids"])).collect();
            assert_eq!(got_ids, want_ids, "{label}: chunk ids");
            assert_eq!(
                chunks.flat_weights(),
                floats(&padded["weights"][0]),
                "{label}: padded weights"
            );

            let hidden: Vec<f32> = calls.iter().flat_map(|c| hex_f32(&c["hidden"])).collect();
            let rows = chunks.ids.len() * 77;
            let e = Tensor::from_vec(hidden, (1, rows, 4), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype(case)))
                .expect("tensor");
            let got = apply_weights_sd15(&e, &chunks.flat_weights())
                .and_then(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
                .unwrap_or_else(|err| panic!("{label}: {err}"));
            let want = hex_f32(&embeds["values"]);
            // The ratio of two means near zero magnifies their last-bit differences (torch sums
            // pairwise, we sum in f64): measured up to 2.2e-6 relative in f32. f16 matched bit for
            // bit when measured; one f16 step is allowed.
            let tolerance = if dtype(case) == DType::F16 {
                1e-3
            } else {
                1e-5
            };
            let diff = max_rel_diff(&got, &want);
            assert!(
                diff <= tolerance,
                "{label}: re-weighted embeddings differ by {diff:e} (relative)"
            );
        }
    }
}

#[test]
fn sdxl_chunks_and_reweighting_equal_the_reference() {
    let (tok1, tok2) = tokenizers();
    let fixture = fixture("chunks.json");
    let cases = fixture["sdxl"].as_array().expect("sdxl cases");
    let mut errors = 0;
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        let negative = case["negative"].as_str().expect("negative");
        let label = format!("{} {prompt:.40?} / {negative:.40?}", case["dtype"]);
        let result = sdxl_prompt_chunks(&tok1, &tok2, prompt, negative);
        if let Some(error) = case.get("error") {
            // The reference pipeline raised; we must give a typed error, not chunks.
            assert!(
                matches!(
                    result,
                    Err(PromptError::EmptySdxlPrompt | PromptError::SdxlTokenizersDisagree { .. })
                ),
                "{label}: reference raised {error}, we gave {result:?}"
            );
            errors += 1;
            continue;
        }
        let (p, n) = result.unwrap_or_else(|e| panic!("{label}: {e}"));
        let calls_1 = case["encoder1_calls"].as_array().expect("calls");
        let calls_2 = case["encoder2_calls"].as_array().expect("calls");
        assert_eq!(calls_1.len(), 2 * p.ids.len(), "{label}: chunk count");
        // The reference alternates: prompt chunk i, then negative chunk i.
        for (which, chunks, embeds) in [
            (0, &p, &case["prompt_embeds"]),
            (1, &n, &case["negative_embeds"]),
        ] {
            let want_weights: Vec<Vec<f64>> = case["groups"][which]["weights"]
                .as_array()
                .expect("groups")
                .iter()
                .map(floats)
                .collect();
            assert_eq!(chunks.weights, want_weights, "{label}: weights");
            let mut got = Vec::new();
            for i in 0..chunks.ids.len() {
                let c1 = &calls_1[2 * i + which];
                let c2 = &calls_2[2 * i + which];
                assert_eq!(
                    chunks.ids[i],
                    ids(&c1["ids"]),
                    "{label}: chunk {i} ids, encoder 1"
                );
                assert_eq!(
                    chunks.ids_2[i],
                    ids(&c2["ids"]),
                    "{label}: chunk {i} ids, encoder 2"
                );
                let len = chunks.ids[i].len();
                let h1 = Tensor::from_vec(hex_f32(&c1["hidden"]), (len, 2), &Device::Cpu)
                    .expect("tensor");
                let h2 = Tensor::from_vec(hex_f32(&c2["hidden"]), (len, 3), &Device::Cpu)
                    .expect("tensor");
                let e = Tensor::cat(&[h1, h2], 1)
                    .and_then(|t| t.to_dtype(dtype(case)))
                    .expect("tensor");
                let weighted = apply_weights_sdxl(&e, &chunks.weights[i])
                    .unwrap_or_else(|err| panic!("{label}: {err}"));
                got.extend(
                    weighted
                        .to_dtype(DType::F32)
                        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                        .expect("values"),
                );
            }
            let want = hex_f32(&embeds["values"]);
            // The same element-wise operations in the same dtype as torch: bit for bit.
            assert_eq!(got.len(), want.len(), "{label}: embedding size");
            let mismatched = got
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                mismatched,
                0,
                "{label}: {mismatched} re-weighted values differ (max rel {:e})",
                max_rel_diff(&got, &want)
            );
        }
    }
    assert!(
        errors >= 2,
        "the fixture's failing pairs were not exercised"
    );
}

#[test]
fn bad_input_gets_typed_errors() {
    use heurist_inference::image::clip_tokenizer::{ClipPadToken, ClipTokenizerError};
    use std::io::Write;

    let (tok1, tok2) = tokenizers();
    assert!(matches!(
        sd15_prompt_chunks(&tok1, "a cat", None, 0),
        Err(PromptError::ZeroEmbeddingsMultiples)
    ));
    assert!(matches!(
        sdxl_prompt_chunks(&tok1, &tok2, "", ""),
        Err(PromptError::EmptySdxlPrompt)
    ));
    assert!(matches!(
        sdxl_prompt_chunks(&tok1, &tok2, "wow!!! amazing!?", "bad"),
        Err(PromptError::SdxlTokenizersDisagree { chunk: 0, .. })
    ));
    match sd15_prompt_chunks(&tok1, "a (cat:1..5) b", None, 3) {
        Err(e @ PromptError::InvalidWeight { .. }) => assert!(e.to_string().contains("\"1..5\"")),
        other => panic!("expected InvalidWeight, got {other:?}"),
    }
    let e = Tensor::zeros((77, 8), DType::F32, &Device::Cpu).expect("tensor");
    assert!(matches!(
        apply_weights_sd15(&e, &[1.0; 76]),
        Err(PromptError::EmbeddingShape { weights: 76, .. })
    ));
    assert!(matches!(
        apply_weights_sdxl(&e, &[]),
        Err(PromptError::EmbeddingShape { weights: 0, .. })
    ));

    // A vocabulary cut short is named as such; garbage is not gzip.
    let mut short = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    short.write_all(b"#version: 0.2\ni n\nt h\n").expect("gzip");
    let short = short.finish().expect("gzip");
    assert!(matches!(
        ClipTokenizer::from_vocab_gz(&short, ClipPadToken::EndOfText),
        Err(ClipTokenizerError::TooFewMerges {
            found: 2,
            expected: 48894
        })
    ));
    assert!(matches!(
        ClipTokenizer::from_vocab_gz(&short[..short.len() / 2], ClipPadToken::EndOfText),
        Err(ClipTokenizerError::Decompress { .. })
    ));
}

/// Random strings over the characters the parser and tokenizer treat specially never panic or
/// hang, and every token id is inside the vocabulary.
#[test]
fn arbitrary_prompts_never_panic() {
    let (tok1, tok2) = tokenizers();
    let alphabet: Vec<&str> = vec![
        "(",
        ")",
        "[",
        "]",
        ":",
        "\\",
        "1",
        ".",
        "5",
        "+",
        "-",
        " ",
        "\t",
        "BREAK",
        "a",
        "é",
        "東",
        "!",
        "<|endoftext|>",
        "<|startoftext|>",
        "１",
        "\u{301}",
        "\u{200b}",
        "🐱",
        "'s",
        "ς",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        // xorshift64*: a fixed, portable sequence.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..300 {
        let len = (next() % 40) as usize;
        let text: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        for tok in [&tok1, &tok2] {
            let ids = tok.encode(&text).expect("encode");
            assert!(
                ids.iter().all(|&id| id < 49408),
                "{text:?}: id out of range"
            );
        }
        // A bad weight is the only error the parser may give.
        match sd15_prompt_chunks(&tok1, &text, Some(&text), 3) {
            Ok((p, _)) => assert!(p.ids.iter().all(|c| c.len() == 77)),
            Err(PromptError::InvalidWeight { .. }) => {}
            Err(e) => panic!("{text:?}: {e}"),
        }
        match sdxl_prompt_chunks(&tok1, &tok2, &text, "") {
            Ok((p, n)) => assert_eq!(p.ids.len(), n.ids.len()),
            Err(
                PromptError::InvalidWeight { .. }
                | PromptError::EmptySdxlPrompt
                | PromptError::SdxlTokenizersDisagree { .. },
            ) => {}
            Err(e) => panic!("{text:?}: {e}"),
        }
    }
}
