//! Submission signatures against eth-account's vectors and a bindings table.

use heurist_protocol::{Address, IdentityWallet, MinerId, MinerSubmit, ProtocolError, SignedHour};
use heurist_verify::{IdentityBinding, StaticBindings, VerifyError, verify_submission, verify_submission_json};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Doc {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    mnemonic: String,
    identity_address: String,
    identity_address_checksummed: String,
    miner_id: String,
    unix_time: u64,
    signature: String,
}

fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(crate::sibling_fixture("heurist-protocol", "eth-account/vectors.json")).unwrap();
    let doc: Doc = serde_json::from_str(&text).unwrap();
    assert!(doc.vectors.len() >= 50);
    doc.vectors
}

fn body(miner_id: &str, signature: &str, identity: &str) -> Vec<u8> {
    json!({
        "miner_id": miner_id,
        "job_id": "sdk-image-1",
        "result": {"S3Key": "sdk-image-1.png"},
        "request_latency": 0.12,
        "loading_latency": null,
        "inference_latency": 3.4,
        "upload_latency": 0.3,
        "signature": signature,
        "identity_address": identity,
    })
    .to_string()
    .into_bytes()
}

fn submit(v: &Vector) -> MinerSubmit {
    MinerSubmit::from_slice(&body(&v.miner_id, &v.signature, &v.identity_address)).unwrap()
}

fn reward(v: &Vector) -> Address {
    Address::parse(v.miner_id.parse::<MinerId>().unwrap().reward_address()).unwrap()
}

fn bound(v: &Vector) -> StaticBindings {
    [(reward(v), Address::parse(&v.identity_address).unwrap())].into_iter().collect()
}

#[test]
fn every_eth_account_vector_verifies_this_hour_and_the_next() {
    for v in vectors() {
        let hour = v.unix_time - v.unix_time % 3600;
        let bindings = bound(&v);
        let verdict = verify_submission(&submit(&v), &bindings, v.unix_time).unwrap();
        assert_eq!(verdict.identity.as_str(), v.identity_address);
        assert_eq!(verdict.reward_address, reward(&v));
        assert_eq!((verdict.signed_hour, verdict.hour_start_unix), (SignedHour::Current, hour));
        // Received in the next hour: still good, as the previous hour's.
        for now in [hour + 3600, hour + 7199] {
            let verdict = verify_submission(&submit(&v), &bindings, now).unwrap();
            assert_eq!((verdict.signed_hour, verdict.hour_start_unix), (SignedHour::Previous, hour), "{}", v.miner_id);
        }
        // With 0x, and with a checksummed identity address, as older miners send them.
        let sent = body(&v.miner_id, &format!("0x{}", v.signature), &v.identity_address_checksummed);
        verify_submission_json(&sent, &bindings, v.unix_time).unwrap();
    }
}

#[test]
fn another_hour_is_refused_with_the_protocol_evidence() {
    for v in vectors().iter().take(8) {
        let hour = v.unix_time - v.unix_time % 3600;
        for now in [hour + 7200, hour + 100 * 3600, hour - 1] {
            match verify_submission(&submit(v), &bound(v), now) {
                Err(VerifyError::SignatureMismatch { miner_id, identity, unix_time, source }) => {
                    assert_eq!(miner_id, v.miner_id.parse::<MinerId>().unwrap().to_string());
                    assert_eq!((identity.as_str(), unix_time), (v.identity_address.as_str(), now));
                    assert!(matches!(*source, ProtocolError::SignerMismatch { .. }), "{source:?}");
                }
                other => panic!("{} at {now}: {other:?}", v.miner_id),
            }
        }
    }
}

#[test]
fn another_key_is_refused() {
    let vs = vectors();
    for pair in vs.chunks(2).take(4) {
        let [v, other] = pair else { continue };
        // The other vector's identity signs this miner's message for the right hour.
        let thief = IdentityWallet::from_phrase(&other.mnemonic).unwrap();
        let id: MinerId = v.miner_id.parse().unwrap();
        let forged = thief.sign_hourly(&id, v.unix_time).unwrap();
        // Naming the bound identity: the signature does not recover to it.
        let sent = body(&v.miner_id, &forged.to_hex(), &v.identity_address);
        match verify_submission_json(&sent, &bound(v), v.unix_time) {
            Err(VerifyError::SignatureMismatch { source, .. }) => match *source {
                ProtocolError::SignerMismatch { recovered_current, .. } => {
                    assert_eq!(recovered_current, other.identity_address)
                }
                e => panic!("{e:?}"),
            },
            other => panic!("{other:?}"),
        }
        // Naming itself: it is not the identity bound to the reward address.
        let sent = body(&v.miner_id, &forged.to_hex(), &other.identity_address);
        match verify_submission_json(&sent, &bound(v), v.unix_time) {
            Err(VerifyError::BoundToOther { reward_address, bound, claimed }) => {
                assert_eq!(reward_address, reward(v).as_str());
                assert_eq!(
                    (bound.as_str(), claimed.as_str()),
                    (v.identity_address.as_str(), other.identity_address.as_str())
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_wrong_binding_or_none_is_refused() {
    let vs = vectors();
    let (v, other) = (&vs[0], &vs[1]);
    // Bound to another identity than the (valid) signer.
    let wrong: StaticBindings = [(reward(v), Address::parse(&other.identity_address).unwrap())].into_iter().collect();
    match verify_submission(&submit(v), &wrong, v.unix_time) {
        Err(VerifyError::BoundToOther { bound, claimed, .. }) => {
            assert_eq!(
                (bound.as_str(), claimed.as_str()),
                (other.identity_address.as_str(), v.identity_address.as_str())
            );
        }
        other => panic!("{other:?}"),
    }
    // Unbound: an empty table, a table for someone else, and the contract's zero address.
    let zero: StaticBindings =
        [(reward(v), Address::parse(&format!("0x{}", "0".repeat(40))).unwrap())].into_iter().collect();
    for bindings in [StaticBindings::new(), bound(other), zero] {
        match verify_submission(&submit(v), &bindings, v.unix_time) {
            Err(VerifyError::NotBound { reward_address }) => assert_eq!(reward_address, reward(v).as_str()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn malformed_input_is_typed() {
    let v = &vectors()[0];
    // A signature of the wrong length, one that is not hex, a bad v, a bad address: refused at decoding.
    let short = &v.signature[..128];
    let not_hex = format!("zz{}", &v.signature[2..]);
    let bad_v = format!("{}1d", &v.signature[..128]);
    for (sig, identity) in [
        (short, v.identity_address.as_str()),
        (not_hex.as_str(), v.identity_address.as_str()),
        (bad_v.as_str(), v.identity_address.as_str()),
        (v.signature.as_str(), "0x1234"),
    ] {
        match verify_submission_json(&body(&v.miner_id, sig, identity), &bound(v), v.unix_time) {
            Err(VerifyError::MalformedSubmit { source }) => {
                assert!(matches!(*source, ProtocolError::Json { .. }), "{source:?}");
            }
            other => panic!("{sig}: {other:?}"),
        }
    }
    assert!(matches!(verify_submission_json(b"{", &bound(v), v.unix_time), Err(VerifyError::MalformedSubmit { .. })));
    // Well-formed but r = 0: no key can be recovered.
    let r_zero = format!("{}{}", "0".repeat(64), &v.signature[64..]);
    match verify_submission_json(&body(&v.miner_id, &r_zero, &v.identity_address), &bound(v), v.unix_time) {
        Err(VerifyError::MalformedSignature { source, .. }) => {
            assert!(matches!(*source, ProtocolError::SignatureRecovery { .. }), "{source:?}");
        }
        other => panic!("{other:?}"),
    }
}

struct Unreachable;

impl IdentityBinding for Unreachable {
    fn identity_of(&self, reward_address: &Address) -> heurist_verify::Result<Option<Address>> {
        Err(VerifyError::BindingLookup {
            reward_address: reward_address.to_string(),
            source: Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "rpc timed out")),
        })
    }
}

#[test]
fn a_failed_lookup_is_passed_on() {
    let v = &vectors()[0];
    assert!(matches!(
        verify_submission(&submit(v), &Unreachable, v.unix_time),
        Err(VerifyError::BindingLookup { reward_address, .. }) if reward_address == reward(v).as_str()
    ));
}

#[test]
fn bindings_load_from_json_and_toml_files() {
    let vs = vectors();
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("bindings.json");
    let toml_file = dir.path().join("bindings.toml");
    let map: serde_json::Map<String, serde_json::Value> = vs
        .iter()
        .take(5)
        .map(|v| (reward(v).as_str().to_uppercase().replace("0X", "0x"), json!(v.identity_address_checksummed)))
        .collect();
    std::fs::write(&json_file, serde_json::to_string(&map).unwrap()).unwrap();
    let toml_text: String =
        vs.iter().take(5).map(|v| format!("\"{}\" = \"{}\"\n", reward(v), v.identity_address)).collect();
    std::fs::write(&toml_file, toml_text).unwrap();
    for file in [&json_file, &toml_file] {
        let table = StaticBindings::load(file).unwrap();
        assert_eq!(table.len(), 5);
        for v in vs.iter().take(5) {
            verify_submission(&submit(v), &table, v.unix_time).unwrap();
        }
        assert!(matches!(
            verify_submission(&submit(&vs[5]), &table, vs[5].unix_time),
            Err(VerifyError::NotBound { .. })
        ));
    }
    // A bad address names its key; a missing file names the file.
    std::fs::write(&json_file, r#"{"0x3f71f00ad1266be038917addd150943ca7c60f6a": "0xnope"}"#).unwrap();
    match StaticBindings::load(&json_file) {
        Err(VerifyError::BindingsFile { path, reason }) => {
            assert_eq!(path, json_file);
            assert!(reason.contains("0x3f71f00ad1266be038917addd150943ca7c60f6a"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(StaticBindings::load(&dir.path().join("none.json")), Err(VerifyError::BindingsFile { .. })));
    assert!(matches!(StaticBindings::from_toml_str("not = [toml"), Err(VerifyError::BindingsFile { .. })));
}
