//! The key-lifecycle commands: import, wrap, unwrap, grant, revoke, rotate, rewrap, retire and
//! counters.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use ferrohsm_client::{Client, ClientError};
use ferrohsm_proto::{KeyInfo, KeyRef, KeyType, Label, UsageSet, pem};
use serde_json::json;
use zeroize::Zeroizing;

use crate::args::{NewKeyArgs, aad, spec};
use crate::files::{read, write_out};
use crate::show::{self, info_json};

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Bring a key in: PKCS#8 PEM (or DER) for ed25519, p256 and x25519, as `openssl genpkey`
    /// writes it; 32 raw bytes for the symmetric types. Prints `<id> <label>`.
    Import {
        #[arg(long = "type")]
        key_type: KeyType,
        #[arg(long = "in")]
        input: PathBuf,
        #[command(flatten)]
        new: NewKeyArgs,
    },
    /// Seal a key (material and record) under a wrap key into a file.
    Wrap {
        key: KeyRef,
        /// The wrap key (aes256gcm with usage wrap).
        #[arg(long)]
        with: KeyRef,
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a key from a wrapped file; prints `<id> <label>`.
    Unwrap {
        /// The wrap key (usage unwrap).
        #[arg(long)]
        with: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        label: Label,
    },
    /// Let another client use a key (it names it `OWNER:LABEL`); prints `ok`.
    Grant {
        key: KeyRef,
        #[arg(long)]
        to: Label,
        /// Operations: sign, verify, encrypt, decrypt, mac, derive.
        #[arg(long)]
        ops: UsageSet,
    },
    /// Withdraw a grant; prints `ok`.
    Revoke {
        key: KeyRef,
        #[arg(long)]
        from: Label,
    },
    /// Add a new version to an encryption or MAC key and make it current; prints
    /// `<label> version <N>`.
    Rotate { key: KeyRef },
    /// Re-encrypt a ciphertext under the key's current version, inside the server.
    Rewrap {
        key: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Associated data (UTF-8 text), the same for both ciphertexts.
        #[arg(long)]
        aad: Option<String>,
    },
    /// Delete the material of every version below V; prints `ok`.
    Retire {
        key: KeyRef,
        #[arg(long, value_name = "V")]
        below: u32,
    },
    /// Monotonic counters: create (at 0), read, inc; each prints the value.
    Counter {
        #[command(subcommand)]
        command: CounterCommand,
    },
}

impl Command {
    /// Where the command writes its result (`--out`), if it has one.
    pub(crate) fn out(&self) -> Option<&Path> {
        match self {
            Command::Wrap { out, .. } | Command::Rewrap { out, .. } => Some(out),
            Command::Import { .. }
            | Command::Unwrap { .. }
            | Command::Grant { .. }
            | Command::Revoke { .. }
            | Command::Rotate { .. }
            | Command::Retire { .. }
            | Command::Counter { .. } => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum CounterCommand {
    /// Create a counter at 0.
    Create { name: Label },
    /// Print a counter's value.
    Read { name: Label },
    /// Increment; prints the new value once it is durable.
    Inc { name: Label },
}

/// The key bytes an import sends: PKCS#8 DER (from PEM or DER) for the asymmetric types, the
/// file's 32 bytes for the symmetric ones.
fn import_bytes(t: KeyType, path: &Path) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let raw = Zeroizing::new(read(path)?);
    if !t.is_asymmetric() {
        return Ok(raw);
    }
    let bad = |why: &str| ClientError::Local(format!("{}: {why}", path.display()));
    if !raw.starts_with(b"-----BEGIN") {
        return Ok(raw);
    }
    let text = std::str::from_utf8(&raw).map_err(|_| bad("not a PEM file"))?;
    if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Err(bad(
            "a SEC1 EC key; convert it to PKCS#8 first (openssl pkcs8 -topk8 -nocrypt -in F)",
        ));
    }
    if text.contains("ENCRYPTED PRIVATE KEY") {
        return Err(bad(
            "an encrypted PKCS#8 key; decrypt it first (openssl pkcs8 -in F)",
        ));
    }
    pem::pem_decode("PRIVATE KEY", text)
        .map(Zeroizing::new)
        .ok_or_else(|| bad("expected a PKCS#8 PEM block (-----BEGIN PRIVATE KEY-----)"))
}

/// Runs one lifecycle command; returns what to print.
pub(crate) async fn run<F, Fut>(cmd: Command, json: bool, hsm: F) -> Result<String, ClientError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Client, ClientError>>,
{
    let ok = || show::ok(json);
    let new_key = |k: KeyInfo| show::new_key(json, &k);
    let value = |v: u64| {
        if json {
            json!({"value": v}).to_string()
        } else {
            v.to_string()
        }
    };
    Ok(match cmd {
        Command::Import {
            key_type,
            input,
            new,
        } => {
            let mut material = import_bytes(key_type, &input)?;
            let bytes = std::mem::take(&mut *material);
            new_key(hsm().await?.import(spec(key_type, new), bytes).await?)
        }
        Command::Wrap { key, with, out } => {
            let blob = hsm().await?.wrap(&key, &with).await?;
            write_out(&out, &blob, true)?;
            if json {
                json!({"out": out.display().to_string(), "bytes": blob.len()}).to_string()
            } else {
                String::new()
            }
        }
        Command::Unwrap { with, input, label } => {
            let blob = read(&input)?;
            new_key(hsm().await?.unwrap(&with, blob, label).await?)
        }
        Command::Grant { key, to, ops } => {
            hsm().await?.grant(&key, &to, ops).await?;
            ok()
        }
        Command::Revoke { key, from } => {
            hsm().await?.revoke(&key, &from).await?;
            ok()
        }
        Command::Rotate { key } => {
            let k = hsm().await?.rotate(&key).await?;
            if json {
                info_json(&k).to_string()
            } else {
                format!("{} version {}", k.label, k.current_version)
            }
        }
        Command::Rewrap {
            key,
            input,
            out,
            aad: a,
        } => {
            let ct = read(&input)?;
            let c2 = hsm().await?.rewrap(&key, ct, aad(a)).await?;
            write_out(&out, &c2, false)?;
            String::new()
        }
        Command::Retire { key, below } => {
            let k = hsm().await?.retire(&key, below).await?;
            if json {
                info_json(&k).to_string()
            } else {
                ok()
            }
        }
        Command::Counter { command } => {
            let c = hsm().await?;
            value(match command {
                CounterCommand::Create { name } => c.counter_create(&name).await?,
                CounterCommand::Read { name } => c.counter_read(&name).await?,
                CounterCommand::Inc { name } => c.counter_inc(&name).await?,
            })
        }
    })
}
