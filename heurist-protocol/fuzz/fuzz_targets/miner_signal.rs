//! Fuzzes the decoding of a `miner_signal` body: no input may panic, an error must format,
//! and a decoded signal survives a round trip.
#![no_main]

use heurist_protocol::MinerSignal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match MinerSignal::from_slice(data) {
        Ok(signal) => {
            let bytes = serde_json::to_vec(&signal).expect("a decoded miner_signal encodes");
            let back = MinerSignal::from_slice(&bytes).expect("an encoded miner_signal decodes");
            assert_eq!(back, signal);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
