//! Fuzzes miner ids and addresses as headers and bodies carry them (`miner_id` header of
//! `miner_submit_stream`, `identity_address`): no input may panic, errors must format, and a
//! parsed id prints the same id back (address lower case, tag as given) and survives JSON.
#![no_main]

use heurist_protocol::{Address, MinerId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match MinerId::parse(text) {
        Ok(id) => {
            let printed = id.to_string();
            let (address, tag) = text.split_once('-').map_or((text, None), |(a, t)| (a, Some(t)));
            assert!(id.reward_address().eq_ignore_ascii_case(address), "{text:?} -> {printed:?}");
            assert_eq!(id.reward_address(), id.reward_address().to_ascii_lowercase());
            assert_eq!(id.tag(), tag);
            assert_eq!(MinerId::parse(&printed).expect("a printed id parses"), id);
            assert_eq!(MinerId::new(id.reward_address(), id.tag()).expect("an id's parts make it again"), id);
            let json = serde_json::to_string(&id).expect("an id encodes");
            assert_eq!(serde_json::from_str::<MinerId>(&json).expect("an encoded id decodes"), id);
            assert!(Address::parse(id.reward_address()).is_ok());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match Address::parse(text) {
        Ok(a) => {
            assert!(a.as_str().eq_ignore_ascii_case(text));
            assert_eq!(Address::parse(a.as_str()).expect("a printed address parses"), a);
            assert_eq!(MinerId::parse(text).map(|id| id.reward_address().to_owned()).ok().as_deref(), Some(a.as_str()));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
