//! Fuzzes the sequencer's `submit_job`: decode the body, build the job a miner would get,
//! clamp it with the default limits, and store its inputs as a JSON value as the queue does.
//! None of it may panic; the body and the stored inputs survive a round trip; a clamped job
//! keeps within the limits, and clamps the same once restored from the queue.
#![no_main]

use heurist_protocol::limits::MAX_SEED;
use heurist_protocol::{Job, JobParams, MinerLimits, ModelInput, SubmitJob};
use libfuzzer_sys::fuzz_target;

fn as_job(job: &SubmitJob, model_input: ModelInput) -> Job {
    Job { job_id: job.job_id.clone(), model_id: job.model_id.clone(), model_input, temp_credentials: None, extra: Default::default() }
}

fuzz_target!(|data: &[u8]| {
    let job = match SubmitJob::from_slice(data) {
        Ok(j) => j,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let bytes = serde_json::to_vec(&job).expect("a decoded submit_job encodes");
    let back = SubmitJob::from_slice(&bytes).expect("an encoded submit_job decodes");
    assert_eq!(back, job);

    let stored = serde_json::to_value(&job.model_input).expect("model_input encodes");
    let restored: ModelInput = serde_json::from_value(stored).expect("a stored model_input decodes");
    assert_eq!(restored, job.model_input);

    let limits = MinerLimits::default();
    let clamped = match limits.clamp(&as_job(&job, job.model_input.clone()), || 7) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    match &clamped.params {
        JobParams::Sd(p) => {
            for (side, max) in [(p.width, limits.max_width), (p.height, limits.max_height)] {
                assert!(side >= 8 && side % 8 == 0 && side <= max, "side {side} (max {max})");
            }
            assert!((1..=limits.max_iterations).contains(&p.steps), "steps {}", p.steps);
            assert!(p.guidance_scale.is_finite() && p.guidance_scale >= 0.0);
            assert!(p.seed <= MAX_SEED);
        }
        JobParams::Llm(p) => {
            assert!(!p.payload.messages.is_empty());
            assert!((1..=limits.max_tokens).contains(&p.max_tokens), "max_tokens {}", p.max_tokens);
            assert!(p.temperature.is_finite() && p.temperature >= 0.0);
            assert!(p.seed <= MAX_SEED);
        }
    }
    let again = limits.clamp(&as_job(&job, restored), || 7).expect("a restored job clamps as it did");
    assert_eq!(again, clamped);
});
