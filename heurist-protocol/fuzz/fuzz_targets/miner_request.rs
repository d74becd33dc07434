//! Fuzzes the sequencer's decoding of a `miner_request` body: no input may panic, an error
//! must format (it becomes the 4xx body), and a decoded request survives a round trip.
#![no_main]

use heurist_protocol::MinerRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match MinerRequest::from_slice(data) {
        Ok(req) => {
            let bytes = serde_json::to_vec(&req).expect("a decoded miner_request encodes");
            let back = MinerRequest::from_slice(&bytes).expect("an encoded miner_request decodes");
            assert_eq!(back, req);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
