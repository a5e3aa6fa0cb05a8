//! Exactly N Ed25519 signatures with a persistent (cached) or a session key, then exit: a
//! fixed workload for counting the server's instructions per request with callgrind, which
//! is repeatable where wall-clock rates on a shared machine are not (see BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example sign_count -- PROFILE persistent|session N
//! ```

use ferrohsm_client::profile::Profile;
use ferrohsm_client::{BlockingClient, ClientError};
use ferrohsm_proto::{KeyRef, KeySpec, KeyType};

fn main() -> Result<(), ClientError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, profile, kind, n] = args.as_slice() else {
        return Err(ClientError::Local(
            "usage: sign_count PROFILE persistent|session N".into(),
        ));
    };
    let n: usize = n
        .parse()
        .map_err(|_| ClientError::Local(format!("N: expected a count, got {n:?}")))?;
    let hsm = BlockingClient::connect(&Profile::load(profile.as_ref())?, None)?;
    let c = hsm.client();
    // Both keys exist in both runs, so the runs differ only in which one signs.
    let spec = |label: &str, session| KeySpec {
        key_type: KeyType::Ed25519,
        label: label
            .parse()
            .unwrap_or_else(|_| unreachable!("a valid label")),
        usage: None,
        exportable: false,
        session,
    };
    let tag = std::process::id();
    let persistent = hsm.block_on(c.generate_spec(spec(&format!("count-p{tag}"), false)))?;
    let session = hsm.block_on(c.generate_spec(spec(&format!("count-s{tag}"), true)))?;
    let key = match kind.as_str() {
        "persistent" => KeyRef::Id(persistent.id),
        "session" => KeyRef::Id(session.id),
        other => return Err(ClientError::Local(format!("unknown key kind {other:?}"))),
    };
    for _ in 0..n {
        hsm.sign(&key, b"counted")?;
    }
    hsm.block_on(c.delete(&KeyRef::Id(persistent.id)))
}
