//! Hardening, per client: quotas on keys, counters and grants (`quota_exceeded`, never an effect
//! on another client), `list` paging, session keys visible only to their own connection, and
//! exportability never widened through a grant.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyRef, KeyType, MAX_PAGE, Page, Status, Usage, UsageSet};
use ferrohsm_test_support::TestServer;
use ferrohsm_test_support::daemon::{EXIT_DEADLINE, hsmctl_command, output_within};
use ferrohsm_test_support::keys::label_of as label;
use ferrohsm_test_support::status::status_and_message as status;

fn spec(t: KeyType, l: &str, session: bool, exportable: bool) -> KeySpec {
    KeySpec {
        session,
        exportable,
        ..ferrohsm_test_support::spec(t, l)
    }
}

fn limits(
    keys: usize,
    counters: usize,
    grants: usize,
) -> impl FnOnce(&mut ferrohsm_server::Config) {
    move |c| {
        c.limits.quotas.keys = keys;
        c.limits.quotas.counters = counters;
        c.limits.quotas.grants = grants;
    }
}

#[test]
fn quotas_refuse_only_the_client_at_its_limit_and_survive_a_restart() {
    let mut srv = TestServer::start_with(&["alice", "bob"], limits(6, 2, 1));
    let alice = srv.connect("alice");
    let bob = srv.connect("bob");
    let a = alice.client();
    // A base to derive from later (one of the six places).
    alice
        .block_on(a.generate_spec(spec(KeyType::X25519, "dh", false, false)))
        .unwrap();
    // Concurrent creations (persistent and session keys) never overshoot the limit.
    let reqs: Vec<_> = (0..10)
        .map(|i| {
            ferrohsm_proto::Request::Generate(spec(
                KeyType::Ed25519,
                &format!("k{i}"),
                i % 2 == 1,
                false,
            ))
        })
        .collect();
    let replies = alice.pipeline(reqs);
    let made = replies.iter().filter(|r| r.is_ok()).count();
    assert_eq!(made, 5, "exactly the quota is made: {replies:?}");
    for r in replies.into_iter().filter(|r| r.is_err()) {
        let (s, m) = status(r);
        assert_eq!(s, Status::QuotaExceeded);
        assert!(m.contains("too many keys for client alice"), "{m}");
        assert!(m.contains("max_keys_per_client"), "{m}");
    }
    // Every other kind of creation is refused too: import, derive.
    let (s, m) = status(
        alice.block_on(a.import(spec(KeyType::HmacSha256, "imp", false, true), vec![7; 32])),
    );
    assert_eq!(s, Status::QuotaExceeded, "{m}");
    assert!(m.contains("too many keys for client alice"), "{m}");
    let (s, m) = status(alice.block_on(a.derive(
        &KeyRef::Label(label("dh")),
        vec![9; 32],
        spec(KeyType::HmacSha256, "derived", false, false),
    )));
    assert_eq!(s, Status::QuotaExceeded, "{m}");
    assert!(m.contains("too many keys for client alice"), "{m}");
    assert_eq!(
        alice.list().unwrap().len(),
        6,
        "nothing was made past the quota"
    );
    // bob is untouched by alice's limit.
    for i in 0..3 {
        bob.generate(&label(&format!("b{i}")), KeyType::Ed25519)
            .unwrap();
    }
    // A delete gives a place back.
    let first = alice.list().unwrap()[0].clone();
    alice.block_on(a.delete(&KeyRef::Id(first.id))).unwrap();
    alice.generate(&label("again"), KeyType::Ed25519).unwrap();
    assert_eq!(
        status(alice.generate(&label("over"), KeyType::Ed25519)).0,
        Status::QuotaExceeded
    );

    // Counters.
    alice.block_on(a.counter_create(&label("c1"))).unwrap();
    alice.block_on(a.counter_create(&label("c2"))).unwrap();
    let (s, m) = status(alice.block_on(a.counter_create(&label("c3"))));
    assert_eq!(s, Status::QuotaExceeded);
    assert!(m.contains("too many counters for client alice"), "{m}");
    bob.block_on(bob.client().counter_create(&label("c1")))
        .unwrap();

    // Grants: replacing one is free, a second is over; a revoke frees its place.
    let mine = KeyRef::Label(label("again"));
    let sign = UsageSet::of(&[Usage::Sign]);
    alice.block_on(a.grant(&mine, &label("bob"), sign)).unwrap();
    alice.block_on(a.grant(&mine, &label("bob"), sign)).unwrap();
    let other = KeyRef::Id(alice.list().unwrap()[1].id);
    let (s, m) = status(alice.block_on(a.grant(&other, &label("bob"), sign)));
    assert_eq!(s, Status::QuotaExceeded, "{m}");
    assert!(m.contains("too many grants for client alice"), "{m}");
    alice.block_on(a.revoke(&mine, &label("bob"))).unwrap();
    alice
        .block_on(a.grant(&other, &label("bob"), sign))
        .unwrap();
    let persistent = alice
        .list()
        .unwrap()
        .iter()
        .filter(|k| k.lifetime == ferrohsm_proto::Lifetime::Persistent)
        .count();
    drop((alice, bob));

    // After a restart the counts come from the store: the persistent keys (the session keys
    // are gone), 2 counters, 1 grant.
    srv.restart(limits(persistent + 1, 2, 1));
    let alice = srv.connect("alice");
    let a = alice.client();
    alice.generate(&label("after"), KeyType::Ed25519).unwrap();
    assert_eq!(
        status(alice.generate(&label("after2"), KeyType::Ed25519)).0,
        Status::QuotaExceeded
    );
    assert_eq!(
        status(alice.block_on(a.counter_create(&label("c9")))).0,
        Status::QuotaExceeded
    );
    assert_eq!(
        status(alice.block_on(a.grant(&KeyRef::Label(label("after")), &label("bob"), sign))).0,
        Status::QuotaExceeded
    );
}

#[test]
fn list_pages_by_id_and_hsmctl_fetches_every_page() {
    let srv = TestServer::start(&["alice"]);
    let alice = srv.connect("alice");
    let a = alice.client();
    let n = MAX_PAGE as usize + 250;
    // Made in pipelined batches (a window at a time).
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let reqs = chunk
            .iter()
            .map(|i| {
                ferrohsm_proto::Request::Generate(spec(
                    KeyType::HmacSha256,
                    &format!("k{i}"),
                    false,
                    false,
                ))
            })
            .collect();
        assert!(alice.pipeline(reqs).iter().all(|r| r.is_ok()));
    }
    alice
        .block_on(a.generate_spec(spec(KeyType::Ed25519, "mine-only", true, false)))
        .unwrap();
    // A request without paging fields gets the first page, of the server's page size.
    let first = alice.block_on(a.list_page(Page::default())).unwrap();
    assert_eq!(first.len(), MAX_PAGE as usize);
    let ids: Vec<u32> = first.iter().map(|k| k.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered by id");
    // The next pages continue after the last id; the session key comes last.
    let page = |after, limit| alice.block_on(a.list_page(Page { after, limit }));
    let second = page(Some(*ids.last().unwrap()), Some(200)).unwrap();
    assert_eq!(second.len(), 200);
    assert!(second[0].id > *ids.last().unwrap());
    let rest = page(Some(second.last().unwrap().id), Some(MAX_PAGE)).unwrap();
    assert_eq!(rest.len(), 51, "50 persistent keys and the session key");
    assert_eq!(rest.last().unwrap().label.as_str(), "mine-only");
    // Out-of-range limits are refused with a clear message.
    for bad in [0, MAX_PAGE + 1] {
        let (s, m) = status(page(None, Some(bad)));
        assert_eq!(s, Status::InvalidArgument);
        assert!(m.contains("list limit"), "{m}");
    }
    // The client library (and so hsmctl list) fetches every page.
    assert_eq!(alice.list().unwrap().len(), n + 1);
    let hsmctl = |args: &[&str]| {
        let mut c = hsmctl_command(&srv.profile_path("alice"));
        c.args(args);
        ferrohsm_test_support::ok(&output_within(&mut c, EXIT_DEADLINE))
    };
    // The session key belongs to the test's connection, not hsmctl's.
    assert_eq!(hsmctl(&["list"]).lines().count(), n);
    let out = hsmctl(&["list", "--limit", "3", "--after", &ids[10].to_string()]);
    let lines: Vec<String> = out.lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with(&format!("{}\t", ids[11])), "{lines:?}");
}

#[test]
fn session_keys_are_visible_only_to_their_connection() {
    let srv = TestServer::start(&["alice"]);
    let one = srv.connect("alice");
    let two = srv.connect("alice");
    let k = one
        .block_on(
            one.client()
                .generate_spec(spec(KeyType::Ed25519, "tmp", true, false)),
        )
        .unwrap();
    let sig = one.sign(&KeyRef::Id(k.id), b"m").unwrap();
    // The other connection of the same client cannot see, use or delete it, by id or label.
    for key in [KeyRef::Id(k.id), KeyRef::Label(label("tmp"))] {
        assert_eq!(status(two.sign(&key, b"m")).0, Status::KeyNotFound);
        assert_eq!(
            status(two.block_on(two.client().info(&key))).0,
            Status::KeyNotFound
        );
        assert_eq!(
            status(two.block_on(two.client().delete(&key))).0,
            Status::KeyNotFound
        );
    }
    assert!(two.list().unwrap().is_empty());
    // Labels stay one namespace per client: the other connection cannot take "tmp".
    assert_eq!(
        status(two.generate(&label("tmp"), KeyType::Ed25519)).0,
        Status::LabelInUse
    );
    // Its owner still can.
    one.verify(&KeyRef::Id(k.id), b"m", &sig).unwrap();
    assert_eq!(one.list().unwrap().len(), 1);
}

#[test]
fn a_grant_never_makes_a_derived_key_more_exportable_than_its_base() {
    let srv = TestServer::start(&["alice", "bob"]);
    let alice = srv.connect("alice");
    let bob = srv.connect("bob");
    let base = alice
        .block_on(
            alice
                .client()
                .generate_spec(spec(KeyType::X25519, "dh", false, false)),
        )
        .unwrap();
    alice
        .block_on(alice.client().grant(
            &KeyRef::Id(base.id),
            &label("bob"),
            UsageSet::of(&[Usage::Derive]),
        ))
        .unwrap();
    let theirs: KeyRef = format!("alice:{}", base.id).parse().unwrap();
    let peer = vec![9u8; 32];
    let (s, m) = status(bob.block_on(bob.client().derive(
        &theirs,
        peer.clone(),
        spec(KeyType::HmacSha256, "laundered", false, true),
    )));
    assert_eq!(s, Status::NotExportable, "{m}");
    // Non-exportable, it is made and stays inside.
    let d = bob
        .block_on(bob.client().derive(
            &theirs,
            peer,
            spec(KeyType::HmacSha256, "kept", false, false),
        ))
        .unwrap();
    assert!(!d.exportable);
    assert_eq!(
        status(bob.block_on(bob.client().export(&KeyRef::Id(d.id)))).0,
        Status::NotExportable
    );
}
