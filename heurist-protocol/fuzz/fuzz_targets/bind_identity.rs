//! Fuzzes the decoding of a sequencer's `bind_identity` body and its check: no input may
//! panic, an error must format, a decoded binding survives a round trip, and its check (any
//! clock) answers without panicking.
#![no_main]

use heurist_protocol::BindIdentity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match BindIdentity::from_slice(data) {
        Ok(bind) => {
            let bytes = serde_json::to_vec(&bind).expect("a decoded binding encodes");
            let back = BindIdentity::from_slice(&bytes).expect("an encoded binding decodes");
            assert_eq!(back, bind);
            for now in [0, bind.timestamp, u64::MAX] {
                if let Err(e) = bind.verify(now, 600) {
                    let _ = e.to_string();
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
