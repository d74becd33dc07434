//! Fuzzes what the sequencer does with a `miner_submit` body: decode it, decode the choices
//! of a chat result and read each message's text. None of it may panic, errors must format,
//! and the submission and its choices survive a round trip.
#![no_main]

use heurist_protocol::{MinerSubmit, SubmitResult};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let submit = match MinerSubmit::from_slice(data) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let bytes = serde_json::to_vec(&submit).expect("a decoded miner_submit encodes");
    let back = MinerSubmit::from_slice(&bytes).expect("an encoded miner_submit decodes");
    assert_eq!(back, submit);
    match submit.result.choices() {
        None => assert!(matches!(submit.result, SubmitResult::S3Key(_))),
        Some(Err(e)) => {
            let _ = e.to_string();
        }
        Some(Ok(choices)) => {
            for c in &choices {
                let _ = c.message.text_content();
            }
            let again = SubmitResult::from_choices(&choices).expect("decoded choices encode");
            match again.choices() {
                Some(Ok(back)) => assert_eq!(back, choices),
                other => panic!("re-encoded choices do not decode: {other:?}"),
            }
        }
    }
});
