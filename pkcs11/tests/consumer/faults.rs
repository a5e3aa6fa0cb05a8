//! Many threads, a fork, and hsmd frozen, killed and restarted.

use super::*;

/// Far beyond the suite's timeout_ms (1.5 s): a call that takes this long hangs.
const HANG: Duration = Duration::from_secs(30);

pub(crate) fn threads(p11: &Pkcs11, alice: Slot, p1: ObjectHandle, p1_pub: ObjectHandle) {
    let done: Vec<usize> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                sc.spawn(move || {
                    let s = p11.open_ro_session(alice).expect("session");
                    let mut ok = 0;
                    for j in 0..25u8 {
                        let digest = sha256(&[i as u8, j]);
                        let sig = s.sign(&Mechanism::Ecdsa, p1, &digest).expect("sign");
                        s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig)
                            .expect("verify");
                        ok += 1;
                    }
                    ok
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert_eq!(done.iter().sum::<usize>(), 200);
}

pub(crate) fn fork(s: &Session, p1: ObjectHandle, p1_pub: ObjectHandle) {
    let digest = sha256(b"before the fork");
    s.sign(&Mechanism::Ecdsa, p1, &digest)
        .expect("parent signs");
    // SAFETY: the child only makes PKCS#11 calls through the module (whose fork handling is
    // what is tested) and leaves with _exit, running no destructor of the parent's.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // 0: signed and verified; 1: the signature failed; 2: its verification failed.
        let code = match s.sign(&Mechanism::Ecdsa, p1, &digest) {
            Ok(sig) => match s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig) {
                Ok(()) => 0,
                Err(_) => 2,
            },
            Err(_) => 1,
        };
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child did not sign and verify (exit {}, wait status {status:#x})",
        libc::WEXITSTATUS(status)
    );
    // The parent's own connection was left alone.
    s.sign(&Mechanism::Ecdsa, p1, &digest)
        .expect("parent signs after the fork");
}

pub(crate) fn hsmd_down(t: &mut Token, sessions: &[(&Session, ObjectHandle)]) {
    let digest = sha256(b"down");
    // Over TCP (alice) and shared memory (bob) alike.
    for (s, k) in sessions {
        s.sign(&Mechanism::Ecdsa, *k, &digest)
            .expect("signs while hsmd runs");
    }
    // hsmd frozen: each call waits for its answer up to timeout_ms (1500), then gives up
    // with a device error. The lower bound is the behaviour ("it waited"); the upper one
    // only tells a call that gives up from one that hangs.
    t.signal("STOP");
    for (s, k) in sessions {
        let t0 = Instant::now();
        let e = s.sign(&Mechanism::Ecdsa, *k, &digest).unwrap_err();
        let waited = t0.elapsed();
        assert_eq!(rv(e), RvError::DeviceError);
        // (100 ms below timeout_ms for the granularity of the transports' timers.)
        assert!(
            waited >= Duration::from_millis(1400),
            "gave up after {waited:?}, well before timeout_ms"
        );
        assert!(waited < HANG, "still waiting after {waited:?}");
    }
    t.signal("CONT");
    // hsmd killed: a device error (not a hang); restarted: each session reconnects.
    t.stop();
    for (s, k) in sessions {
        let t0 = Instant::now();
        assert_eq!(
            rv(s.sign(&Mechanism::Ecdsa, *k, &digest).unwrap_err()),
            RvError::DeviceError
        );
        assert!(
            t0.elapsed() < HANG,
            "still waiting after {:?}",
            t0.elapsed()
        );
    }
    t.restart();
    for (s, k) in sessions {
        let sig = s
            .sign(&Mechanism::Ecdsa, *k, &digest)
            .expect("signs after hsmd restarts");
        assert_eq!(sig.len(), 64);
    }
}
