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
    let status = wait_child(pid, HANG);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child did not sign and verify (exit {}, wait status {status:#x})",
        libc::WEXITSTATUS(status)
    );
    // The parent's own connection was left alone.
    s.sign(&Mechanism::Ecdsa, p1, &digest)
        .expect("parent signs after the fork");
}

/// The wait status of the forked child `pid`, which must end within `within`: polled, so a
/// child that hangs is killed (and reaped) and fails the test instead of hanging it.
fn wait_child(pid: libc::pid_t, within: Duration) -> libc::c_int {
    let deadline = Instant::now() + within;
    let mut status = 0;
    loop {
        // SAFETY: polls our own child; `status` is a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return status;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            r == 0 || err.kind() == std::io::ErrorKind::Interrupted,
            "waitpid({pid}): {err}"
        );
        if Instant::now() >= deadline {
            // SAFETY: kills and reaps our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the forked child (pid {pid}) did not finish within {within:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A raw `C_SignInit` and `C_Sign` (ECDSA over `digest`) on session `h` with `key`, run on
/// its own thread so a call that never returns fails the test instead of hanging it: the
/// answer must come within [`HANG`], or hsmd is killed (which ends a call stuck on it) and the
/// test fails. The code, the signature on success, and how long the two calls took.
fn sign_within(
    t: &mut Token,
    h: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    digest: &[u8],
) -> (CK_RV, Vec<u8>, Duration) {
    let f = super::raw::functions();
    let mut digest = digest.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut m = CK_MECHANISM {
            mechanism: CKM_ECDSA,
            pParameter: super::raw::null(),
            ulParameterLen: 0,
        };
        let mut sig = vec![0u8; 64];
        let mut len = sig.len() as CK_ULONG;
        let t0 = Instant::now();
        // SAFETY: a valid session and key; the mechanism, the digest and the signature
        // buffer are live locals of the lengths given.
        let r = unsafe {
            match f.C_SignInit.unwrap()(h, &mut m, key) {
                CKR_OK => f.C_Sign.unwrap()(
                    h,
                    digest.as_mut_ptr(),
                    digest.len() as CK_ULONG,
                    sig.as_mut_ptr(),
                    &mut len,
                ),
                r => r,
            }
        };
        let waited = t0.elapsed();
        sig.truncate(if r == CKR_OK { len as usize } else { 0 });
        let _ = tx.send((r, sig, waited));
    });
    match rx.recv_timeout(HANG) {
        Ok(got) => got,
        Err(_) => {
            t.stop();
            panic!("C_Sign on session {h} still waiting after {HANG:?}: it hangs");
        }
    }
}

/// Over TCP (alice) and shared memory (bob) alike, each `(session, private key, public key)`:
/// a frozen hsmd makes each call wait `timeout_ms` (1500) and give up, a killed one fails it
/// at once, and a restarted one serves the same session again, with valid signatures.
pub(crate) fn hsmd_down(t: &mut Token, sessions: &[(&Session, ObjectHandle, ObjectHandle)]) {
    let digest = sha256(b"down");
    // The premise: each session signs while hsmd runs.
    for (s, k, _) in sessions {
        let (r, sig, _) = sign_within(t, s.handle(), k.handle(), &digest);
        assert_eq!((r, sig.len()), (CKR_OK, 64), "signs while hsmd runs");
    }
    // hsmd frozen: each call waits for its answer up to timeout_ms, then gives up with a
    // device error. The lower bound is the behaviour ("it waited"); `sign_within` tells a
    // call that gives up from one that hangs.
    t.signal("STOP");
    for (s, k, _) in sessions {
        let (r, _, waited) = sign_within(t, s.handle(), k.handle(), &digest);
        assert_eq!(r, CKR_DEVICE_ERROR, "a frozen hsmd is a device error");
        // (100 ms below timeout_ms for the granularity of the transports' timers.)
        assert!(
            waited >= Duration::from_millis(1400),
            "gave up after {waited:?}, well before timeout_ms"
        );
    }
    t.signal("CONT");
    // hsmd killed: a device error, within the deadline.
    t.stop();
    for (s, k, _) in sessions {
        let (r, _, _) = sign_within(t, s.handle(), k.handle(), &digest);
        assert_eq!(r, CKR_DEVICE_ERROR, "a killed hsmd is a device error");
    }
    // Restarted: each session reconnects and signs again; the signature verifies outside
    // the token with the public key the token shows.
    t.restart();
    for (s, k, public) in sessions {
        let (r, sig, _) = sign_within(t, s.handle(), k.handle(), &digest);
        assert_eq!(r, CKR_OK, "signs after hsmd restarts");
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            point(s, *public),
        )
        .verify(b"down", &sig)
        .expect("the signature after the restart verifies outside the token");
    }
}
