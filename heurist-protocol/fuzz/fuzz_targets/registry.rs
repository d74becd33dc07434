//! Fuzzes the registry parser and its look-ups: no input may panic.
#![no_main]

use heurist_protocol::Registry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Registry::from_slices(data, Some(data), None) {
        let names: Vec<String> = r.entries().map(|e| e.name.clone()).collect();
        for n in names.iter().take(16) {
            let _ = r.base_of(n);
            let _ = r.vae_for(n);
            let _ = r.lora_family(n);
            let _ = r.defaults_of(n);
            let _ = r.checksum_of(n);
        }
    }
});
