//! Fuzzes what a miner does with a `miner_request` answer: classify it, decode the job,
//! clamp it, decode the LLM strings, and re-encode. None of it may panic, and a decoded job
//! must survive a round trip.
#![no_main]

use heurist_protocol::{Job, MinerLimits, MinerSubmit, RequestAnswer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let status = if data.first() == Some(&b'!') { 500 } else { 200 };
    if let Ok(RequestAnswer::Job(job)) = RequestAnswer::decode(status, data) {
        let _ = MinerLimits::default().clamp(&job, || 12345);
        let bytes = serde_json::to_vec(&job).expect("a decoded job encodes");
        let back = Job::from_slice(&bytes).expect("an encoded job decodes");
        assert_eq!(serde_json::to_value(&back).ok(), serde_json::to_value(&*job).ok());
    }
    let _ = MinerSubmit::from_slice(data);
});
