//! Every example of PROTOCOL.md and every real job of the registry decodes and re-encodes to
//! the same JSON value.

use heurist_protocol::{
    Job, JobParams, MinerLimits, MinerRequest, MinerSignal, MinerSubmit, ModelInput, NoJob, Nullable, RequestAnswer,
    SignalAnswer, SubmitJob, SubmitResult,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn round_trip<T: Serialize + DeserializeOwned>(body: &Value) -> T {
    let bytes = serde_json::to_vec(body).unwrap();
    let decoded: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {body}"));
    let again = serde_json::to_value(&decoded).unwrap();
    assert_eq!(&again, body, "re-encoding changed the value");
    decoded
}

#[test]
fn protocol_md_examples_round_trip() {
    let text = std::fs::read_to_string(crate::fixture("protocol-md/examples.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let examples = doc["examples"].as_array().unwrap();
    assert!(examples.len() >= 10);
    for ex in examples {
        let body = &ex["body"];
        let bytes = serde_json::to_vec(body).unwrap();
        match ex["kind"].as_str().unwrap() {
            "miner_request" => {
                round_trip::<MinerRequest>(body);
                MinerRequest::from_slice(&bytes).unwrap();
            }
            "job" => {
                let job: Job = round_trip(body);
                let RequestAnswer::Job(j) = RequestAnswer::decode(200, &bytes).unwrap() else { panic!("a job") };
                assert_eq!(*j, job);
                MinerLimits::default().clamp(&job, || 7).unwrap();
            }
            "miner_submit" => {
                let s: MinerSubmit = round_trip(body);
                if let SubmitResult::Text(_) = &s.result {
                    assert_eq!(s.loading_latency, Nullable::Absent);
                    let choices = s.result.choices().unwrap().unwrap();
                    assert_eq!(choices[0].message.text_content(), "Hello! How can I help?");
                } else {
                    assert_eq!(s.loading_latency, Nullable::Null);
                }
            }
            "miner_signal" => {
                round_trip::<MinerSignal>(body);
            }
            "signal_answer" => {
                let a: SignalAnswer = round_trip(body);
                assert_eq!(a.model_id.as_deref(), Some("AnimagineXL"));
            }
            "submit_job" => {
                round_trip::<SubmitJob>(body);
            }
            other => panic!("unknown kind {other}"),
        }
    }
}

#[test]
fn llm_job_strings_decode_into_typed_messages_tools_and_sampling() {
    let text = std::fs::read_to_string(crate::fixture("protocol-md/examples.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let llm = doc["examples"].as_array().unwrap().iter().find(|e| e["name"] == "LLM job").unwrap();
    let job: Job = serde_json::from_value(llm["body"].clone()).unwrap();
    let c = MinerLimits::default().clamp(&job, || 99).unwrap();
    let JobParams::Llm(p) = c.params else { panic!() };
    assert_eq!(p.payload.messages.len(), 1);
    assert_eq!(p.payload.messages[0].text_content(), "hi");
    assert_eq!(p.payload.tools[0].function.name, "get_weather");
    assert_eq!(p.payload.sampling.top_p, Some(0.9));
    assert_eq!((p.temperature, p.max_tokens, p.seed, p.seed_was_random), (0.7, 512, 99, true));
}

#[test]
fn every_real_example_decodes_as_an_sd_job() {
    let dir = crate::data("heurist-models/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let input: Value = serde_json::from_str(&text).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy();
        let model = name.split('-').next().unwrap().to_owned();
        let job_json = serde_json::json!({"job_id": format!("example-{name}"), "model_id": model, "model_input": {"SD": input}});
        let job: Job = round_trip(&job_json);
        let ModelInput::Sd(sd) = &job.model_input else { panic!() };
        assert!(sd.steps().is_some(), "{name}");
        let c = MinerLimits::default().clamp(&job, || 1).unwrap();
        let JobParams::Sd(p) = c.params else { panic!() };
        assert_eq!(p.width % 8, 0);
        match input["seed"].as_u64() {
            Some(seed) => assert_eq!((p.seed, p.seed_was_random), (seed, false)),
            None => assert_eq!((p.seed, p.seed_was_random), (1, true), "{name}: a negative seed is drawn"),
        }
        n += 1;
    }
    assert_eq!(n, 66, "all 66 real examples");
}

#[test]
fn answers_that_are_not_jobs() {
    assert_eq!(RequestAnswer::decode(200, b"null").unwrap(), RequestAnswer::NoJob(NoJob::Null));
    assert!(matches!(RequestAnswer::decode(200, b"{}").unwrap(), RequestAnswer::NoJob(NoJob::NotAJob(m)) if m.is_empty()));
    assert_eq!(
        RequestAnswer::decode(200, b"\"no job\"").unwrap(),
        RequestAnswer::NoJob(NoJob::Text("no job".into()))
    );
    assert_eq!(
        RequestAnswer::decode(200, b"Warning: miner version outdated, please update\"").unwrap(),
        RequestAnswer::Warning("miner version outdated, please update".into())
    );
    assert_eq!(RequestAnswer::decode(503, b"busy").unwrap(), RequestAnswer::NoJob(NoJob::Status(503)));
    assert_eq!(RequestAnswer::decode(200, b"").unwrap(), RequestAnswer::NoJob(NoJob::Text(String::new())));
    // A job whose prompt says "Warning:" is still a job (the reference would drop it).
    let body = br#"{"job_id":"j","model_id":"m","model_input":{"SD":{"prompt":"Warning: sign","height":512,"width":512,"num_iterations":20,"guidance_scale":7,"seed":1}}}"#;
    assert!(matches!(RequestAnswer::decode(200, body).unwrap(), RequestAnswer::Job(_)));
}
