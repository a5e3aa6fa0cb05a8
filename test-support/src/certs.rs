//! Certificates as the TLS tests make them: a data directory's development CA, and client
//! certificates issued by it (or by another CA), written as the files a profile names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrohsm_tls::pki::{self, Issued, Role};

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Valid {
    /// From a day ago for 30 days (`hsmd init`'s shape).
    Now,
    /// From ten days ago to a day ago.
    Expired,
}

/// The development CA `hsmd init` wrote into `dir` (`pki/ca.pem`, `pki/ca.key`).
pub fn dev_ca(dir: &Path) -> Issued {
    let read = |name: &str| {
        let p = dir.join("pki").join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    Issued {
        cert_pem: read("ca.pem"),
        key_pem: read("ca.key").into(),
    }
}

/// A client certificate for `names` (the first is also its CN) issued by `ca`, written as
/// `dir/TAG.pem` and `dir/TAG.key`: their paths, as a profile's `identity`.
pub fn client_cert(
    dir: &Path,
    ca: &Issued,
    names: &[&str],
    valid: Valid,
    tag: &str,
) -> (PathBuf, PathBuf) {
    let day = Duration::from_secs(86_400);
    let (from, to) = match valid {
        Valid::Now => pki::validity(30),
        Valid::Expired => {
            // validity(0): from a day ago to now.
            let (a, b) = pki::validity(0);
            (a - 9 * day, b - day)
        }
    };
    let c = pki::issue(&ca.cert_pem, &ca.key_pem, Role::Client, names, from, to)
        .unwrap_or_else(|e| panic!("a certificate for {names:?}: {e}"));
    let (cert, key) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    for (p, text) in [(&cert, c.cert_pem.as_str()), (&key, c.key_pem.as_str())] {
        std::fs::write(p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    (cert, key)
}
