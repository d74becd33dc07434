//! A tool job with parameter schemas out of alphabetical order reaches the chat template with
//! its keys in the order sent, from the wire job through the protocol's clamping and
//! `chat_request`, and renders exactly as transformers' `apply_chat_template` renders it (the
//! prompt vLLM sees) for the dolphin, OpenHermes-Mixtral and Hermes 2 Pro templates
//! (`tools/make_tool_order_fixtures.py`, transformers 4.44.2).

use heurist_inference::ChatTemplate;
use heurist_protocol::{Job, JobParams, MinerLimits};
use heurist_verify::llm::chat_request;
use serde_json::{Value, json};

#[test]
fn tool_schemas_keep_their_key_order_into_the_prompt() {
    let text = std::fs::read_to_string(crate::fixture("tool_order.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let model = case["model"].as_str().unwrap();
        let wire = json!({"job_id": "tools-1", "model_id": model, "model_input": {"LLM": {
            "prompt": case["prompt"], "tools": case["tools"], "temperature": 0, "max_tokens": 16, "seed": 1}}});
        let job = Job::from_slice(wire.to_string().as_bytes()).unwrap();
        let JobParams::Llm(params) = MinerLimits::default().clamp(&job, || 0).unwrap().params else { panic!("a chat job") };
        let request = chat_request(&params).unwrap();
        let mut template =
            ChatTemplate::new(case["template"].as_str().unwrap(), case["bos_token"].as_str().unwrap(), case["eos_token"].as_str().unwrap())
                .unwrap();
        if let Some(tool_use) = case["tool_use"].as_str() {
            template = template.with_tool_use(tool_use).unwrap();
        }
        let rendered = template.render_with_tools(&request.messages, request.tools.as_deref(), true).unwrap();
        let expected = case["rendered"].as_str().unwrap();
        assert!(rendered == expected, "{model}: the prompt differs from transformers'\n--- ours\n{rendered}\n--- transformers\n{expected}");
    }
}
