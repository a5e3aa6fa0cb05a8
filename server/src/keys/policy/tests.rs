//! The policy rules, each with the input that breaks it.
use super::*;
use ferrohsm_proto::Usage::*;

fn info(t: KeyType, usage: &[Usage], exportable: bool) -> KeyInfo {
    crate::keys::manager::test_info(1, "k", t, UsageSet::of(usage), exportable)
}

/// Asserts that `r` is refused with `status` by the rule whose message says `says` (several
/// rules share a status, so the message tells which one fired).
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, OpError>, status: Status, says: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.status, status, "{e:?}");
            assert!(e.message.contains(says), "expected {says:?} in {e:?}");
        }
        Ok(v) => panic!("expected {status:?} ({says}), got Ok({v:?})"),
    }
}

#[test]
fn new_key_usage_rules() {
    let ed = KeyType::Ed25519;
    assert_eq!(
        usage_for_new_key(ed, None).unwrap(),
        UsageSet::of(&[Sign, Verify])
    );
    assert_eq!(
        usage_for_new_key(ed, Some(UsageSet::of(&[Verify]))).unwrap(),
        UsageSet::of(&[Verify])
    );
    refused(
        usage_for_new_key(ed, Some(UsageSet::of(&[Encrypt]))),
        Status::InvalidArgument,
        "does not fit a ed25519 key",
    );
    refused(
        usage_for_new_key(ed, Some(UsageSet::of(&[]))),
        Status::InvalidArgument,
        "usage list is empty",
    );
}

#[test]
fn requirements_check_type_usage_and_export() {
    let ed = info(KeyType::Ed25519, &[Verify], false);
    assert_eq!(
        check(&ed, SIGN).unwrap_err().status,
        Status::UsageNotPermitted
    );
    assert!(check(&ed, VERIFY).is_ok());
    assert_eq!(
        check(&ed, ENCRYPT).unwrap_err().status,
        Status::WrongKeyType
    );
    assert_eq!(
        check(&ed, EXPORT).unwrap_err().status,
        Status::NotExportable
    );
    assert!(check(&ed, PUBLIC_KEY).is_ok() && check(&ed, DESCRIBE).is_ok());
    let mac = info(KeyType::HmacSha256, &[Mac], true);
    assert!(check(&mac, EXPORT).is_ok());
    assert_eq!(
        check(&mac, PUBLIC_KEY).unwrap_err().status,
        Status::WrongKeyType
    );
}

#[test]
fn derived_keys_are_never_more_exportable_than_their_base() {
    let spec = |t: KeyType, exportable| KeySpec {
        key_type: t,
        label: "d".parse().unwrap(),
        usage: None,
        exportable,
        session: false,
    };
    let locked = info(KeyType::X25519, &[Derive], false);
    let open = info(KeyType::X25519, &[Derive], true);
    assert_eq!(
        derived(&locked, &spec(KeyType::HmacSha256, true))
            .unwrap_err()
            .status,
        Status::NotExportable
    );
    assert!(derived(&locked, &spec(KeyType::HmacSha256, false)).is_ok());
    let d = derived(&open, &spec(KeyType::Aes256Gcm, true)).unwrap();
    assert_eq!(d.origin, Origin::Derived);
    refused(
        derived(&open, &spec(KeyType::Ed25519, false)),
        Status::InvalidArgument,
        "cannot derive a ed25519 key",
    );
    refused(random_len(0), Status::InvalidArgument, "out of range");
    refused(random_len(65537), Status::InvalidArgument, "out of range");
    assert_eq!(random_len(65536).unwrap(), 65536);
}

#[test]
fn grants_give_use_never_management_and_wrapping_never_launders() {
    let k: KeyRef = "alice:k".parse().unwrap();
    let ops = UsageSet::of(&[Sign]);
    assert!(check_granted(&k, ops, SIGN).is_ok());
    assert!(check_granted(&k, ops, DESCRIBE).is_ok());
    assert!(check_granted(&k, ops, PUBLIC_KEY).is_ok());
    for req in [
        VERIFY, EXPORT, DELETE, GRANT, REVOKE, ROTATE, RETIRE, WRAPPED, WRAP,
    ] {
        assert_eq!(
            check_granted(&k, ops, req).unwrap_err().status,
            Status::UsageNotPermitted,
            "{}",
            req.op
        );
    }
    let aead = UsageSet::of(&[Encrypt, Decrypt]);
    assert!(check_granted(&k, aead, REWRAP).is_ok());
    refused(
        check_granted(&k, UsageSet::of(&[Decrypt]), REWRAP),
        Status::UsageNotPermitted,
        "granted to you for decrypt only",
    );

    let ed = info(KeyType::Ed25519, &[Sign, Verify], false);
    assert!(grant_ops(&ed, UsageSet::of(&[Sign])).is_ok());
    refused(
        grant_ops(&ed, UsageSet::of(&[])),
        Status::InvalidArgument,
        "--ops is empty",
    );
    refused(
        grant_ops(&ed, UsageSet::of(&[Encrypt])),
        Status::UsageNotPermitted,
        "a grant cannot add usages",
    );
    // Wrap is never granted, even on a key that has it.
    let w = info(KeyType::Aes256Gcm, &[Wrap, Unwrap], false);
    refused(
        grant_ops(&w, UsageSet::of(&[Wrap])),
        Status::InvalidArgument,
        "can be granted",
    );

    let open_wrap = info(KeyType::Aes256Gcm, &[Wrap], true);
    let locked_wrap = info(KeyType::Aes256Gcm, &[Wrap], false);
    assert!(may_wrap(true, "t", &open_wrap, false).is_ok());
    refused(
        may_wrap(false, "t", &open_wrap, true),
        Status::NotExportable,
        "it could be exported",
    );
    refused(
        may_wrap(false, "t", &locked_wrap, false),
        Status::NotExportable,
        "trusted_wrap_keys",
    );
    assert!(may_wrap(false, "t", &locked_wrap, true).is_ok());
    let u = unwrapped(
        KeyType::Ed25519,
        UsageSet::of(&[Sign]),
        false,
        "n".parse().unwrap(),
    );
    assert_eq!(u.unwrap().origin, Origin::Unwrapped);
    refused(
        unwrapped(
            KeyType::Ed25519,
            UsageSet::of(&[Encrypt]),
            false,
            "n".parse().unwrap(),
        ),
        Status::InvalidArgument,
        "does not fit a ed25519 key",
    );
}
