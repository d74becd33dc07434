//! Bad input gets a typed error that names the field; nothing panics.

use heurist_protocol::{Job, MinerSubmit, ProtocolError, Registry, RequestAnswer};

const GOOD: &str = r#"{"job_id":"j1","model_id":"AAMXLAnimeMix","model_input":{"SD":{"prompt":"p","neg_prompt":"n","height":1024,"width":680,"num_iterations":22,"guidance_scale":4,"seed":2288435497}}}"#;

fn field_of(e: &ProtocolError) -> String {
    match e {
        ProtocolError::Json { field, .. } => field.clone(),
        ProtocolError::EmbeddedJson { field, path, .. } => format!("{field}:{path}"),
        ProtocolError::InvalidField { field, .. } => (*field).to_owned(),
        other => panic!("expected an error naming a field, got {other}"),
    }
}

#[test]
fn truncated_json_at_every_length() {
    for cut in 0..GOOD.len() {
        let e = Job::from_slice(&GOOD.as_bytes()[..cut]).unwrap_err();
        assert!(matches!(e, ProtocolError::Json { .. }), "cut at {cut}: {e}");
        // As a miner_request answer the truncated body is either "no job" text or an error,
        // never a panic.
        let _ = RequestAnswer::decode(200, &GOOD.as_bytes()[..cut]);
    }
}

#[test]
fn wrong_tag_is_named() {
    let body = GOOD.replace("\"SD\"", "\"XL\"");
    let e = Job::from_slice(body.as_bytes()).unwrap_err();
    assert_eq!(field_of(&e), "model_input");
    assert!(e.to_string().contains("XL"), "{e}");
    let two = GOOD.replace(r#"{"SD":{"#, r#"{"LLM":{"prompt":"[]"},"SD":{"#);
    assert!(Job::from_slice(two.as_bytes()).is_err());
}

#[test]
fn huge_and_wrongly_typed_numbers_are_named() {
    for (from, to, field) in [
        ("\"width\":680", "\"width\":1e30", "model_input.SD.width"),
        ("\"width\":680", "\"width\":-8", "model_input.SD.width"),
        ("\"height\":1024", "\"height\":99999999999", "model_input.SD.height"),
        ("\"seed\":2288435497", "\"seed\":1e400", "model_input.SD.seed"),
        ("\"seed\":2288435497", "\"seed\":18446744073709551616", "model_input.SD.seed"),
        ("\"num_iterations\":22", "\"num_iterations\":\"22\"", "model_input.SD.num_iterations"),
        ("\"job_id\":\"j1\"", "\"job_id\":12", "job_id"),
    ] {
        let body = GOOD.replace(from, to);
        assert_ne!(body, GOOD);
        let e = Job::from_slice(body.as_bytes()).unwrap_err();
        assert_eq!(field_of(&e), field, "{to}: {e}");
        assert!(e.to_string().contains(field), "message names the field: {e}");
    }
    // Seeds above 2^53 decode but are refused by the clamping rules.
    let body = GOOD.replace("2288435497", "9007199254740993");
    let job = Job::from_slice(body.as_bytes()).unwrap();
    let e = heurist_protocol::MinerLimits::default().clamp(&job, || 0).unwrap_err();
    assert_eq!(field_of(&e), "seed");
}

#[test]
fn sizes_and_steps_that_cannot_run_are_refused() {
    for (from, to, field) in [
        ("\"width\":680", "\"width\":0", "width"),
        ("\"height\":1024", "\"height\":7", "height"),
        ("\"num_iterations\":22", "\"num_iterations\":0", "num_iterations"),
        ("\"guidance_scale\":4", "\"guidance_scale\":-1", "guidance_scale"),
    ] {
        let job = Job::from_slice(GOOD.replace(from, to).as_bytes()).unwrap();
        let e = heurist_protocol::MinerLimits::default().clamp(&job, || 0).unwrap_err();
        assert_eq!(field_of(&e), field, "{to}");
    }
}

#[test]
fn llm_strings_that_are_not_json_are_named() {
    let llm = |prompt: &str, tools: &str, extra: &str| {
        serde_json::json!({"job_id":"j","model_id":"m","model_input":{"LLM":{
            "prompt": prompt, "temperature": 0.5, "max_tokens": 10, "seed": 1, "tools": tools, "extra_body": extra}}})
    };
    for (p, t, x, field) in [
        ("not json", "", "", "prompt"),
        (r#"[{"role":"wizard","content":"hi"}]"#, "", "", "prompt"),
        ("[]", "", "", "prompt"),
        (r#"[{"role":"user","content":"hi"}]"#, "[{]", "", "tools"),
        (r#"[{"role":"user","content":"hi"}]"#, "", r#"{"top_p":"high"}"#, "extra_body"),
    ] {
        let job: Job = serde_json::from_value(llm(p, t, x)).unwrap();
        let e = heurist_protocol::MinerLimits::default().clamp(&job, || 0).unwrap_err();
        assert!(field_of(&e).starts_with(field), "{p} {t} {x}: {e}");
    }
    // max_tokens 0 and 10^9.
    let mut v = llm(r#"[{"role":"user","content":"hi"}]"#, "", "");
    v["model_input"]["LLM"]["max_tokens"] = 0.into();
    let job: Job = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(field_of(&heurist_protocol::MinerLimits::default().clamp(&job, || 0).unwrap_err()), "max_tokens");
    v["model_input"]["LLM"]["max_tokens"] = 1_000_000_000.into();
    let job: Job = serde_json::from_value(v).unwrap();
    let c = heurist_protocol::MinerLimits::default().clamp(&job, || 0).unwrap();
    let heurist_protocol::JobParams::Llm(p) = c.params else { panic!() };
    assert_eq!(p.max_tokens, 4096);
}

#[test]
fn invalid_utf8_is_a_typed_error() {
    let mut body = GOOD.as_bytes().to_vec();
    body[30] = 0xff;
    assert!(matches!(Job::from_slice(&body), Err(ProtocolError::InvalidUtf8 { valid_up_to: 30, .. })));
    assert!(matches!(RequestAnswer::decode(200, &body), Err(ProtocolError::InvalidUtf8 { .. })));
    assert!(matches!(Registry::from_slices(&body, None, None), Err(ProtocolError::InvalidUtf8 { .. })));
}

#[test]
fn a_100_mb_body_is_refused_before_parsing() {
    let mut body = Vec::with_capacity(100 * 1024 * 1024);
    body.extend_from_slice(b"{\"job_id\":\"");
    body.resize(100 * 1024 * 1024, b'a');
    for e in [
        Job::from_slice(&body).unwrap_err(),
        RequestAnswer::decode(200, &body).unwrap_err(),
        MinerSubmit::from_slice(&body).unwrap_err(),
    ] {
        assert!(matches!(e, ProtocolError::BodyTooLarge { len, .. } if len == 100 * 1024 * 1024), "{e}");
    }
}

#[test]
fn bad_submissions_name_the_field() {
    let sub = serde_json::json!({"miner_id": "0x3f71f00ad1266be038917addd150943ca7c60f6a", "job_id": "j",
        "result": {"Text": "[]"}, "request_latency": 0.1, "inference_latency": 1.0,
        "signature": "00", "identity_address": "0xb0a160faec1705618a7583e2cc1c12e72d259ac3"});
    let e = MinerSubmit::from_slice(&serde_json::to_vec(&sub).unwrap()).unwrap_err();
    assert_eq!(field_of(&e), "signature");
    let mut bad_id = sub.clone();
    bad_id["miner_id"] = "0xnothex-tag".into();
    let e = MinerSubmit::from_slice(&serde_json::to_vec(&bad_id).unwrap()).unwrap_err();
    assert_eq!(field_of(&e), "miner_id");
    let mut bad_result = sub;
    bad_result["result"] = serde_json::json!({"Image": "x"});
    let e = MinerSubmit::from_slice(&serde_json::to_vec(&bad_result).unwrap()).unwrap_err();
    assert_eq!(field_of(&e), "result");
}
