//! Signatures per second through any PKCS#11 module: `p11bench MODULE TOKEN PIN KEY MECH
//! THREADS SECONDS`, MECH `ecdsa` (CKM_ECDSA over a 32-byte digest), `ecdsa-sha256` (over
//! 32 bytes of message) or `eddsa`. Each thread
//! has its own session (the login is the application's, made once). Prints one JSON line:
//! `{"signs": N, "seconds": S, "per_sec": R, "slowest_ms": M}` (M: the slowest single
//! signature, the first, which connects, included).
//!
//! `pkcs11/bench.sh` runs it against FerroHSM's module and SoftHSM2's in the same run.
// A benchmark driver: a failure is a panic with its reason.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 8 {
        eprintln!("usage: p11bench MODULE TOKEN PIN KEY ecdsa|ecdsa-sha256|eddsa THREADS SECONDS");
        std::process::exit(2);
    }
    let (module, token, pin, key, mech) = (&a[1], &a[2], &a[3], &a[4], a[5].as_str());
    let threads: usize = a[6].parse().expect("THREADS");
    let secs: f64 = a[7].parse().expect("SECONDS");
    let p11 = Pkcs11::new(module).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("initialize");
    let slot = p11
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| p11.get_token_info(*s).is_ok_and(|i| i.label() == token))
        .unwrap_or_else(|| panic!("no token {token}"));
    let first = p11.open_ro_session(slot).expect("session");
    if !pin.is_empty() {
        first
            .login(UserType::User, Some(&AuthPin::from(pin.as_str())))
            .expect("login");
    }
    let mechanism = || match mech {
        "ecdsa" => Mechanism::Ecdsa,
        "ecdsa-sha256" => Mechanism::EcdsaSha256,
        "eddsa" => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        other => panic!("unknown mechanism {other}"),
    };
    mechanism();
    let run = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let (total, slowest): (u64, Duration) = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let p11 = &p11;
                sc.spawn(move || {
                    let mechanism = &mechanism();
                    let s = p11.open_ro_session(slot).expect("session");
                    let k = s
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Label(key.as_bytes().to_vec()),
                        ])
                        .expect("find")
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| panic!("no private key {key}"));
                    let data = [i as u8; 32];
                    let t0 = Instant::now();
                    let mut n = 0u64;
                    let mut slowest = Duration::ZERO;
                    while t0.elapsed() < run {
                        let t = Instant::now();
                        let sig = s.sign(mechanism, k, &data).expect("sign");
                        slowest = slowest.max(t.elapsed());
                        assert_eq!(sig.len(), 64);
                        n += 1;
                    }
                    (n, slowest)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("thread"))
            .fold((0, Duration::ZERO), |(n, m), (k, s)| (n + k, m.max(s)))
    });
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"signs\": {total}, \"seconds\": {elapsed:.3}, \"per_sec\": {:.1}, \"slowest_ms\": {:.3}}}",
        total as f64 / elapsed,
        slowest.as_secs_f64() * 1000.0
    );
    drop(first);
    p11.finalize().expect("finalize");
}
