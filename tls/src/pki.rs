//! The development PKI that `hsmd init` writes: one CA, a server certificate for localhost,
//! and a client certificate per client (subject CN = client name, plus a DNS SAN of the same
//! name). All keys are ECDSA P-256. For production, issue the same shapes from your own CA and
//! point `[tls] ca/cert/key` in `hsmd.toml` and the client profiles at them.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::TlsError;

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 private key PEM (secret: write it 0600).
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("key_pem", &"..")
            .finish_non_exhaustive()
    }
}

/// Validity of development certificates: from one day ago (clock skew) for `days`.
pub fn validity(days: u64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(days * 86_400),
    )
}

fn err(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Config(format!("{what}: {e}"))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "FerroHSM development PKI");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A new self-signed CA, valid ten years.
pub fn new_ca(cn: &str) -> Result<Issued, TlsError> {
    let key = KeyPair::generate().map_err(err("CA key"))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (p.not_before, p.not_after) = validity(3650);
    let cert = p.self_signed(&key).map_err(err("CA certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// TLS server (serverAuth).
    Server,
    /// TLS client (clientAuth).
    Client,
}

/// Issues a leaf certificate signed by the CA (`ca_cert_pem`, `ca_key_pem`). `names` become
/// SANs (DNS names or IP addresses); the first is also the subject CN.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    role: Role,
    names: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Issued, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(err("CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(err("CA certificate"))?;
    let key = KeyPair::generate().map_err(err("leaf key"))?;
    let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(sans).map_err(err("certificate names"))?;
    p.distinguished_name = dn(names.first().copied().unwrap_or("ferrohsm"));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    p.use_authority_key_identifier_extension = true;
    (p.not_before, p.not_after) = (not_before, not_after);
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(err("leaf certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
    })
}

/// A random 256-bit PSK as lowercase hex (the `key_file` format).
pub fn new_psk_hex() -> Result<zeroize::Zeroizing<String>, TlsError> {
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    openssl::rand::rand_bytes(k.as_mut()).map_err(|e| TlsError::Config(format!("random: {e}")))?;
    Ok(zeroize::Zeroizing::new(
        k.iter().map(|b| format!("{b:02x}")).collect(),
    ))
}
