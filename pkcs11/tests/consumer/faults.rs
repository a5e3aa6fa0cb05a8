//! Many threads, a fork, and hsmd frozen, killed and restarted.

use super::*;

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
        let code = match s.sign(&Mechanism::Ecdsa, p1, &digest) {
            Ok(sig) if s.verify(&Mechanism::Ecdsa, p1_pub, &digest, &sig).is_ok() => 0,
            _ => 1,
        };
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child signed: {status}"
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
    // hsmd frozen: each call gives up after timeout_ms (1500) with a device error.
    t.signal("STOP");
    for (s, k) in sessions {
        let t0 = Instant::now();
        let e = s.sign(&Mechanism::Ecdsa, *k, &digest).unwrap_err();
        let waited = t0.elapsed();
        assert_eq!(rv(e), RvError::DeviceError);
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
    }
    t.signal("CONT");
    // hsmd killed: soon, a device error; restarted: each session reconnects.
    t.stop();
    for (s, k) in sessions {
        let t0 = Instant::now();
        assert_eq!(
            rv(s.sign(&Mechanism::Ecdsa, *k, &digest).unwrap_err()),
            RvError::DeviceError
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
    t.restart();
    for (s, k) in sessions {
        let sig = s
            .sign(&Mechanism::Ecdsa, *k, &digest)
            .expect("signs after hsmd restarts");
        assert_eq!(sig.len(), 64);
    }
}
