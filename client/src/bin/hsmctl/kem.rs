//! ML-KEM commands: encapsulate (to a key here or a peer's public key) and decapsulate. The
//! 32-byte shared secret never leaves the HSM: it becomes a new key of the caller's.

use std::future::Future;
use std::path::{Path, PathBuf};

use ferrohsm_client::{Client, ClientError};
use ferrohsm_proto::{KeyRef, KeyType, pem};

use crate::args::{NewKeyArgs, spec};
use crate::files::{check_writable, read, write_out};
use crate::show;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// ML-KEM: encapsulate to KEY (or to --peer PUB.pem), write the ciphertext to --out, and
    /// keep the shared secret as a new key of --type; prints `<id> <label>`.
    Encapsulate {
        /// Your ML-KEM key (or one granted to you with encapsulate).
        #[arg(required_unless_present = "peer", conflicts_with = "peer")]
        key: Option<KeyRef>,
        /// A peer's ML-KEM public key, SubjectPublicKeyInfo PEM (any parameter set).
        #[arg(long, value_name = "PUB.pem")]
        peer: Option<PathBuf>,
        /// Where the ciphertext goes.
        #[arg(long, value_name = "CT")]
        out: PathBuf,
        /// The new key's type: aes256gcm, chacha20poly1305 or hmac-sha256.
        #[arg(long = "type")]
        key_type: KeyType,
        #[command(flatten)]
        new: NewKeyArgs,
    },
    /// ML-KEM: decapsulate the ciphertext in --in with KEY, and keep the shared secret as a
    /// new key of --type; prints `<id> <label>`.
    Decapsulate {
        /// Your ML-KEM key (or one granted to you with decapsulate).
        key: KeyRef,
        /// The ciphertext.
        #[arg(long = "in", value_name = "CT")]
        input: PathBuf,
        /// The new key's type: aes256gcm, chacha20poly1305 or hmac-sha256.
        #[arg(long = "type")]
        key_type: KeyType,
        #[command(flatten)]
        new: NewKeyArgs,
    },
}

impl Command {
    /// Where the command writes its result (`--out`), if it has one.
    pub(crate) fn out(&self) -> Option<&Path> {
        match self {
            Command::Encapsulate { out, .. } => Some(out),
            Command::Decapsulate { .. } => None,
        }
    }
}

/// The SubjectPublicKeyInfo DER of an ML-KEM public key in a PEM file.
fn peer_spki(path: &Path) -> Result<Vec<u8>, ClientError> {
    let bad = || {
        ClientError::Local(format!(
            "{}: expected an ML-KEM public key (ml-kem-512, -768 or -1024) in \
             SubjectPublicKeyInfo PEM",
            path.display()
        ))
    };
    let text = String::from_utf8(read(path)?).map_err(|_| bad())?;
    let der = pem::pem_decode("PUBLIC KEY", &text).ok_or_else(bad)?;
    match pem::parse_spki(&der) {
        Some((t, _)) if t.is_ml_kem() => Ok(der),
        _ => Err(bad()),
    }
}

/// Runs one ML-KEM command; returns what to print.
pub(crate) async fn run<F, Fut>(cmd: Command, json: bool, hsm: F) -> Result<String, ClientError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Client, ClientError>>,
{
    match cmd {
        Command::Encapsulate {
            key,
            peer,
            out,
            key_type,
            new,
        } => {
            let spec = spec(key_type, new);
            // The key is made before the ciphertext is written: an output that cannot be
            // written must stop the command first, or the new key would hold a secret nobody
            // else can ever learn.
            check_writable(&out)?;
            let (ciphertext, info) = match (key, peer) {
                (_, Some(peer)) => {
                    let der = peer_spki(&peer)?;
                    hsm().await?.encapsulate_peer(der, spec).await?
                }
                (Some(key), None) => hsm().await?.encapsulate(&key, spec).await?,
                (None, None) => {
                    return Err(ClientError::Local(
                        "encapsulate needs KEY or --peer PUB.pem".into(),
                    ));
                }
            };
            write_out(&out, &ciphertext, false)?;
            Ok(show::new_key(json, &info))
        }
        Command::Decapsulate {
            key,
            input,
            key_type,
            new,
        } => {
            let ciphertext = read(&input)?;
            let info = hsm()
                .await?
                .decapsulate(&key, ciphertext, spec(key_type, new))
                .await?;
            Ok(show::new_key(json, &info))
        }
    }
}
