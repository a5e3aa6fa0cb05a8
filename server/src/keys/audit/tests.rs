//! The chain against edits, deletions, reorderings, cuts and forged heads.
use super::*;

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        time_ms: 1_000 + i,
        client: "alice".into(),
        session: 7,
        transport: "tcp",
        op: "keygen",
        key: format!("alice:{i}"),
        detail: String::new(),
        status: "ok",
    }
}

fn chain(n: u64) -> Vec<AuditRow> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|i| {
            let r = AuditRow::chain(&event(i), i, prev);
            prev = r.hash;
            r
        })
        .collect()
}

#[test]
fn verify_names_the_first_broken_entry() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let public = key.verifying_key();
    let rows = chain(5);
    let head = SignedHead::sign(&key, 5, rows[4].hash);
    assert_eq!(
        verify(rows.clone(), Some(&head), &public, None)
            .unwrap()
            .entries,
        5
    );

    let mut edited = rows.clone();
    edited[2].status = "key_not_found".into();
    assert_eq!(
        verify(edited, Some(&head), &public, None).unwrap_err().seq,
        3
    );

    let mut deleted = rows.clone();
    deleted.remove(1);
    assert_eq!(
        verify(deleted, Some(&head), &public, None).unwrap_err().seq,
        2
    );

    let mut swapped = rows.clone();
    swapped.swap(1, 2);
    assert_eq!(
        verify(swapped, Some(&head), &public, None).unwrap_err().seq,
        2
    );

    let early = SignedHead::sign(&key, 3, rows[2].hash);
    let cut: Vec<_> = rows[..3].to_vec();
    let e = verify(cut.clone(), Some(&head), &public, None).unwrap_err();
    assert!(e.reason.contains("truncated"), "{e}");
    // Cut together with an older signed head: only a checkpoint catches it.
    assert!(verify(cut.clone(), Some(&early), &public, None).is_ok());
    let e = verify(cut, Some(&early), &public, Some(&head)).unwrap_err();
    assert!(e.reason.contains("truncated after the checkpoint"), "{e}");

    let other = SigningKey::from_bytes(&[6; 32]);
    let forged = SignedHead::sign(&other, 5, rows[4].hash);
    assert_eq!(
        verify(rows.clone(), Some(&forged), &public, None),
        Err(Broken {
            seq: 5,
            reason: "the signed head does not verify with the audit public key".into(),
        })
    );

    let text = head.to_checkpoint();
    assert_eq!(SignedHead::from_checkpoint(&text).unwrap(), head);
    let r = SignedHead::from_checkpoint("seq 1");
    assert!(
        matches!(&r, Err(m) if m.starts_with("not a FerroHSM audit checkpoint")),
        "{r:?}"
    );
    assert_eq!(
        SignedHead::from_checkpoint(&format!("{CHECKPOINT_FIRST_LINE}\nseq 1\n")),
        Err("checkpoint has no hash line".to_string())
    );
    assert_eq!(SignedHead::from_bytes(&head.to_bytes()).unwrap(), head);
}
