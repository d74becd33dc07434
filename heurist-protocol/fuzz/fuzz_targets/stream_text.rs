//! Fuzzes the sequencer's reading of a `miner_submit_stream` body: the raw bytes as they stand
//! after any chunk (cut anywhere, even inside a UTF-8 character) are read lossily and parsed.
//! No input may panic, and the text is the body less the end marker exactly when the marker
//! ends it.
#![no_main]

use heurist_protocol::stream::{STREAM_END, StreamedText};
use libfuzzer_sys::fuzz_target;

fn check(body: &str) {
    let parsed = StreamedText::parse(body);
    if parsed.complete {
        assert_eq!(format!("{}{STREAM_END}", parsed.text), body);
    } else {
        assert!(!body.ends_with(STREAM_END));
        assert_eq!(parsed.text, body);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    // A stream read so far: the first byte picks where the last chunk ended.
    let cut = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    check(&String::from_utf8_lossy(&data[..cut]));
    check(&String::from_utf8_lossy(data));
});
