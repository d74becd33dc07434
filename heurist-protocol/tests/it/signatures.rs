//! Identity wallets and signatures against eth-account's vectors.

use heurist_protocol::{IdentityWallet, MinerId, ProtocolError, Signature, SignedHour, signing_message, verify_hourly};
use serde::Deserialize;

#[derive(Deserialize)]
struct Doc {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    mnemonic: String,
    identity_address: String,
    miner_id: String,
    unix_time: u64,
    message: String,
    signature: String,
    v: u8,
}

fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(crate::fixture("eth-account/vectors.json")).unwrap();
    let doc: Doc = serde_json::from_str(&text).unwrap();
    assert!(doc.vectors.len() >= 50, "the fixture must hold at least 50 vectors");
    doc.vectors
}

#[test]
fn addresses_messages_and_signatures_match_eth_account() {
    for v in vectors() {
        let wallet = IdentityWallet::from_phrase(&v.mnemonic).unwrap();
        assert_eq!(wallet.address().as_str(), v.identity_address, "address of {:?}", v.mnemonic);
        let id: MinerId = v.miner_id.parse().unwrap();
        assert_eq!(signing_message(&id, v.unix_time), v.message);
        let sig = wallet.sign_hourly(&id, v.unix_time).unwrap();
        assert_eq!(sig.to_hex(), v.signature, "signature for {}", v.message);
        assert_eq!(sig.as_bytes()[64], v.v);
        // The peer's signature recovers to the identity, with and without 0x.
        for text in [v.signature.clone(), format!("0x{}", v.signature)] {
            let peer = Signature::parse(&text).unwrap();
            assert_eq!(peer.recover(&v.message).unwrap().as_str(), v.identity_address);
            assert_eq!(verify_hourly(&id, wallet.address(), &peer, v.unix_time).unwrap(), SignedHour::Current);
        }
    }
}

#[test]
fn previous_hour_is_allowed_and_older_hours_are_not() {
    for v in vectors().iter().take(16) {
        let wallet = IdentityWallet::from_phrase(&v.mnemonic).unwrap();
        let id: MinerId = v.miner_id.parse().unwrap();
        let sig = Signature::parse(&v.signature).unwrap();
        let hour = v.unix_time - v.unix_time % 3600;
        // Checked one second into the next hour: still valid as the previous hour's.
        assert_eq!(verify_hourly(&id, wallet.address(), &sig, hour + 3600).unwrap(), SignedHour::Previous);
        assert_eq!(verify_hourly(&id, wallet.address(), &sig, hour + 7199).unwrap(), SignedHour::Previous);
        // Two hours on, or an hour before: refused.
        for t in [hour + 7200, hour.saturating_sub(1)] {
            let e = verify_hourly(&id, wallet.address(), &sig, t).unwrap_err();
            assert!(matches!(e, ProtocolError::SignerMismatch { .. }), "{e}");
        }
    }
}

#[test]
fn a_signature_by_another_key_or_for_another_miner_is_refused() {
    let vs = vectors();
    for pair in vs.windows(2).take(20) {
        let (a, b) = (&pair[0], &pair[1]);
        let id_a: MinerId = a.miner_id.parse().unwrap();
        let wallet_a = IdentityWallet::from_phrase(&a.mnemonic).unwrap();
        let wallet_b = IdentityWallet::from_phrase(&b.mnemonic).unwrap();
        let by_b = wallet_b.sign_hourly(&id_a, a.unix_time).unwrap();
        let e = verify_hourly(&id_a, wallet_a.address(), &by_b, a.unix_time).unwrap_err();
        match e {
            ProtocolError::SignerMismatch { recovered_current, expected, .. } => {
                assert_eq!(recovered_current, wallet_b.address().as_str());
                assert_eq!(expected, a.identity_address);
            }
            other => panic!("{other}"),
        }
        // B's own signature (for B's reward address) does not hold for A's miner id.
        let sig_b = Signature::parse(&b.signature).unwrap();
        assert!(verify_hourly(&id_a, wallet_b.address(), &sig_b, b.unix_time).is_err());
    }
}

#[test]
fn malformed_signatures_are_typed_errors() {
    let good = &vectors()[0].signature;
    let cases = [
        String::new(),
        "0x".into(),
        good[..128].to_owned(),
        format!("{good}00"),
        format!("{}zz", &good[..128]),
        format!("{}1d", &good[..128]), // v = 29
        "ü".repeat(65),
    ];
    for c in cases {
        let e = Signature::parse(&c).unwrap_err();
        assert!(matches!(e, ProtocolError::SignatureFormat { .. }), "{c:?}: {e}");
    }
    // Well-formed hex whose r is zero recovers nobody.
    let zero = Signature::parse(&format!("{}1b", "0".repeat(128))).unwrap();
    assert!(matches!(zero.recover("x"), Err(ProtocolError::SignatureRecovery { .. })));
}

#[test]
fn key_files_round_trip_in_the_reference_format() {
    let dir = tempfile::tempdir().unwrap();
    let v = &vectors()[1];
    let id: MinerId = v.miner_id.parse().unwrap();
    let wallet = IdentityWallet::from_phrase(&v.mnemonic).unwrap();
    let path = heurist_protocol::key_file_path(dir.path(), &id);
    assert!(path.ends_with(format!("{}.txt", id.reward_address())));
    wallet.write_key_file(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("Seed Phrase: {}\nIdentity Wallet Address: {}\n", v.mnemonic, v.identity_address));
    let back = IdentityWallet::load_for(dir.path(), &id).unwrap();
    assert_eq!(back.wallet.address(), wallet.address());
    assert_eq!(back.path, path);
    assert!(back.loose_permissions.is_none() && back.warning().is_none());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // A file whose address does not match its words is refused.
    let other = &vectors()[2];
    std::fs::write(&path, format!("Seed Phrase: {}\nIdentity Wallet Address: {}\n", v.mnemonic, other.identity_address)).unwrap();
    assert!(matches!(IdentityWallet::load_for(dir.path(), &id), Err(ProtocolError::KeyFile { .. })));
    std::fs::write(&path, "garbage").unwrap();
    assert!(matches!(IdentityWallet::load_for(dir.path(), &id), Err(ProtocolError::KeyFile { .. })));
}

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn overwriting_a_world_readable_key_file_leaves_it_0600() {
    // `wallet new --force` over a file someone left at 0666: the mode only applies to
    // creation, so the write itself must tighten it.
    let dir = tempfile::tempdir().unwrap();
    let v = &vectors()[1];
    let id: MinerId = v.miner_id.parse().unwrap();
    let path = heurist_protocol::key_file_path(dir.path(), &id);
    std::fs::write(&path, "an old, longer file that must not leave a tail behind the new two lines\n".repeat(4)).unwrap();
    set_mode(&path, 0o666);
    let wallet = IdentityWallet::from_phrase(&v.mnemonic).unwrap();
    wallet.write_key_file(&path).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("Seed Phrase: {}\nIdentity Wallet Address: {}\n", v.mnemonic, v.identity_address));
}

#[cfg(unix)]
#[test]
fn loading_a_group_readable_key_file_tightens_it_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let v = &vectors()[1];
    let id: MinerId = v.miner_id.parse().unwrap();
    let path = heurist_protocol::key_file_path(dir.path(), &id);
    IdentityWallet::from_phrase(&v.mnemonic).unwrap().write_key_file(&path).unwrap();
    set_mode(&path, 0o644);
    let loaded = IdentityWallet::load_for(dir.path(), &id).unwrap();
    assert_eq!(loaded.wallet.address().as_str(), v.identity_address);
    let loose = loaded.loose_permissions.as_ref().expect("a 0644 key file is reported");
    assert_eq!(loose.mode, 0o644);
    assert!(loose.tightened.is_ok(), "{loose}");
    assert_eq!(mode_of(&path), 0o600);
    let warning = loaded.warning().unwrap();
    assert!(warning.contains(&path.display().to_string()) && warning.contains("0644"), "{warning}");
    // Group-writable only is loose too; owner-only modes are left alone.
    set_mode(&path, 0o620);
    assert_eq!(IdentityWallet::read_key_file(&path).unwrap().loose_permissions.map(|l| l.mode), Some(0o620));
    set_mode(&path, 0o400);
    assert!(IdentityWallet::read_key_file(&path).unwrap().loose_permissions.is_none());
    assert_eq!(mode_of(&path), 0o400);
}

#[test]
fn generated_wallets_restore_from_their_words() {
    let w = IdentityWallet::generate().unwrap();
    assert_eq!(w.phrase().split(' ').count(), 12);
    let back = IdentityWallet::from_phrase(w.phrase()).unwrap();
    assert_eq!(back.address(), w.address());
    assert!(!format!("{w:?}").contains(w.phrase()), "Debug must not print the words");
    // A word list with a bad checksum is refused.
    assert!(matches!(
        IdentityWallet::from_phrase("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon"),
        Err(ProtocolError::Mnemonic { .. })
    ));
}
