//! `hsmctl`: the FerroHSM command line. Thin: parse, connect, one call, print.
//!
//! Exit codes: 0 success; 1 the server answered with an error status; 2 usage error;
//! 3 connection, TLS or authentication failure.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_client::{Client, ClientError};
use ferrohsm_proto::{DigestAlg, KeyInfo, KeyRef, KeyType, pem};
use serde_json::json;

mod args;
mod files;
mod kem;
mod lifecycle;
mod show;

use args::{Context, NewKeyArgs, aad, context, spec};
use files::{file_to_file, read, two_files, write_out};
use show::{hex, info_json, info_line};

/// FerroHSM client.
#[derive(Debug, Parser)]
#[command(name = "hsmctl", version)]
struct Cli {
    /// Client profile (written by `hsmd init` as D/clients/NAME.toml); every command but
    /// hash-pin needs one.
    #[arg(long, value_name = "P")]
    profile: Option<PathBuf>,
    /// Transport: tcp, tls, tls-psk or shm (default: the profile's default_transport).
    #[arg(long)]
    transport: Option<Transport>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round trip to the server.
    Ping,
    /// This node: its name, version, uptime, store (and whether it answers), sessions.
    Status,
    /// Read a PIN on stdin (a trailing newline is not part of it) and print its argon2id PHC
    /// string, for the PKCS#11 module's [pins]. Needs no profile and no server.
    HashPin,
    /// N random bytes (1..=65536), printed as hex.
    Random { n: u32 },
    /// Digest of a file, printed as hex.
    Digest {
        #[arg(long)]
        alg: DigestAlg,
        #[arg(long = "in")]
        input: PathBuf,
    },
    /// Generate a key; prints `<id> <label>`.
    Keygen {
        #[arg(long = "type")]
        key_type: KeyType,
        #[command(flatten)]
        new: NewKeyArgs,
    },
    /// List your keys (with --granted: the keys other clients granted you, as OWNER:ID and
    /// OWNER:LABEL).
    List {
        /// The keys other clients granted to this one.
        #[arg(long)]
        granted: bool,
        /// One page of at most N keys (1 to 1000) instead of every key.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Start after the key with this id (the last id of the previous page).
        #[arg(long, value_name = "ID")]
        after: Option<u32>,
    },
    /// Describe a key.
    Info { key: KeyRef },
    /// Public key as hex, or SubjectPublicKeyInfo PEM with --pem.
    Pubkey {
        key: KeyRef,
        #[arg(long)]
        pem: bool,
    },
    /// Write an exportable key's raw bytes to a file.
    Export {
        key: KeyRef,
        #[arg(long)]
        out: PathBuf,
    },
    /// Delete a key.
    Delete { key: KeyRef },
    /// Sign a file.
    Sign {
        key: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// ML-DSA context string, in hex (at most 255 bytes; empty is none).
        #[arg(long, value_name = "HEX")]
        context: Option<Context>,
    },
    /// Verify a signature; prints `ok`.
    Verify {
        key: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        sig: PathBuf,
        /// ML-DSA context string the signature was made with, in hex.
        #[arg(long, value_name = "HEX")]
        context: Option<Context>,
    },
    /// AEAD-encrypt a file.
    Encrypt {
        key: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Associated data (UTF-8 text).
        #[arg(long)]
        aad: Option<String>,
    },
    /// AEAD-decrypt a file.
    Decrypt {
        key: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Associated data (UTF-8 text).
        #[arg(long)]
        aad: Option<String>,
    },
    /// HMAC of a file.
    Mac {
        key: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an HMAC; prints `ok`.
    MacVerify {
        key: KeyRef,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        mac: PathBuf,
    },
    /// X25519 with a peer's public key (SPKI PEM), HKDF into a new key; prints `<id> <label>`.
    Derive {
        key: KeyRef,
        #[arg(long)]
        peer: PathBuf,
        #[arg(long = "type")]
        key_type: KeyType,
        #[command(flatten)]
        new: NewKeyArgs,
    },
    #[command(flatten)]
    Lifecycle(lifecycle::Command),
    #[command(flatten)]
    Kem(kem::Command),
}

impl Command {
    /// Where the command writes its result (`--out`), if it has one.
    fn out(&self) -> Option<&std::path::Path> {
        match self {
            Command::Export { out, .. }
            | Command::Sign { out, .. }
            | Command::Encrypt { out, .. }
            | Command::Decrypt { out, .. }
            | Command::Mac { out, .. } => Some(out),
            Command::Lifecycle(c) => c.out(),
            Command::Kem(c) => c.out(),
            Command::Ping
            | Command::Status
            | Command::HashPin
            | Command::Random { .. }
            | Command::Digest { .. }
            | Command::Keygen { .. }
            | Command::List { .. }
            | Command::Info { .. }
            | Command::Pubkey { .. }
            | Command::Delete { .. }
            | Command::Verify { .. }
            | Command::MacVerify { .. }
            | Command::Derive { .. } => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `--out -` puts the result on stdout: what the command would print (`ok`, `<id>
    // <label>`) goes to stderr instead, and --json, which is for stdout, cannot be had too.
    let to_stdout = cli.command.out().is_some_and(files::is_stdout);
    if to_stdout && cli.json {
        return fail(&ClientError::Local(
            "--json cannot be used with --out -: both would write to stdout".into(),
        ));
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&ClientError::Local(format!("cannot start runtime: {e}"))),
    };
    match rt.block_on(run(cli)) {
        Ok(out) if to_stdout => {
            if !out.is_empty() {
                eprintln!("{out}");
            }
            ExitCode::SUCCESS
        }
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if !out.is_empty() && writeln!(stdout, "{out}").is_err() {
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// A read-only request (ping, list, info, pubkey): when its connection is lost before the
/// answer, it is sent once more on a new connection (to the next node that answers). A request
/// that changes state is never sent again: its outcome is unknown, and hsmctl says so
/// (`connection_lost`, exit 3).
async fn read_only<T, C, CF, F, Fut>(connect: &C, op: F) -> Result<T, ClientError>
where
    C: Fn() -> CF,
    CF: std::future::Future<Output = Result<Client, ClientError>>,
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    match op(connect().await?).await {
        Err(ClientError::ConnectionLost(_)) => op(connect().await?).await,
        r => r,
    }
}

fn fail(e: &ClientError) -> ExitCode {
    match e {
        ClientError::Server(b) | ClientError::Auth(b) => {
            eprintln!("hsmctl: {}: {}", b.label(), b.message)
        }
        other => eprintln!("hsmctl: {other}"),
    }
    ExitCode::from(e.exit_code())
}

/// `hash-pin`: the PIN from stdin, without one trailing newline (`\n` or `\r\n`).
fn hash_pin() -> Result<String, ClientError> {
    use std::io::Read as _;
    let mut pin = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(ferrohsm_client::pin::MAX_PIN_LEN as u64 + 3)
        .read_to_end(&mut pin)
        .map_err(|e| ClientError::Local(format!("cannot read the PIN from stdin: {e}")))?;
    if pin.ends_with(b"\n") {
        pin.pop();
        if pin.ends_with(b"\r") {
            pin.pop();
        }
    }
    ferrohsm_client::pin::hash_pin(&pin)
}

/// Runs one command; returns what to print on stdout.
async fn run(cli: Cli) -> Result<String, ClientError> {
    if let Command::HashPin = cli.command {
        return hash_pin();
    }
    let path = cli.profile.as_ref().ok_or_else(|| {
        ClientError::Local("--profile P is required for this command".to_string())
    })?;
    let profile = Profile::load(path)?;
    // Read local inputs before connecting, so a typo costs no round trip.
    let hsm = || ferrohsm_client::connect::connect(&profile, cli.transport);
    let json = cli.json;
    let ok = || show::ok(json);
    let new_key = |k: KeyInfo| show::new_key(json, &k);
    Ok(match cli.command {
        Command::HashPin => hash_pin()?,
        Command::Ping => {
            read_only(&hsm, |c: Client| async move { c.ping().await }).await?;
            ok()
        }
        Command::Status => {
            let s = read_only(&hsm, |c: Client| async move { c.status().await }).await?;
            show::status(json, &s)
        }
        Command::Random { n } => {
            let b = hsm().await?.random(n).await?;
            if json {
                json!({"hex": hex(&b)}).to_string()
            } else {
                hex(&b)
            }
        }
        Command::Digest { alg, input } => {
            let data = read(&input)?;
            let d = hsm().await?.digest(alg, data).await?;
            if json {
                json!({"hex": hex(&d)}).to_string()
            } else {
                hex(&d)
            }
        }
        Command::Keygen { key_type, new } => {
            new_key(hsm().await?.generate_spec(spec(key_type, new)).await?)
        }
        Command::List {
            granted,
            limit,
            after,
        } => {
            let keys = read_only(&hsm, |c: Client| async move {
                if granted {
                    c.list_granted().await
                } else if limit.is_some() || after.is_some() {
                    c.list_page(ferrohsm_proto::Page { after, limit }).await
                } else {
                    c.list().await
                }
            })
            .await?;
            if json {
                serde_json::Value::Array(keys.iter().map(info_json).collect()).to_string()
            } else if granted {
                keys.iter()
                    .map(show::granted_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                keys.iter().map(info_line).collect::<Vec<_>>().join("\n")
            }
        }
        Command::Info { key } => {
            let k = read_only(&hsm, |c: Client| {
                let key = key.clone();
                async move { c.info(&key).await }
            })
            .await?;
            if json {
                info_json(&k).to_string()
            } else {
                info_line(&k)
            }
        }
        Command::Pubkey { key, pem: as_pem } => {
            let (t, raw) = read_only(&hsm, |c: Client| {
                let key = key.clone();
                async move { c.public_key(&key).await }
            })
            .await?;
            let pem_text = pem::spki_der(t, &raw).map(|der| pem::pem_encode("PUBLIC KEY", &der));
            let pem_text =
                pem_text.ok_or_else(|| ClientError::Protocol("bad public key".into()))?;
            if json {
                json!({"type": t.name(), "hex": hex(&raw), "pem": pem_text}).to_string()
            } else if as_pem {
                pem_text.trim_end().to_string()
            } else {
                hex(&raw)
            }
        }
        Command::Export { key, out } => {
            let raw = hsm().await?.export(&key).await?;
            write_out(&out, &raw, true)?;
            String::new()
        }
        Command::Delete { key } => {
            hsm().await?.delete(&key).await?;
            ok()
        }
        Command::Sign {
            key,
            input,
            out,
            context: c,
        } => {
            let op = async |d| hsm().await?.sign_with_context(&key, d, context(c)).await;
            file_to_file(&input, &out, false, op).await?
        }
        Command::Verify {
            key,
            input,
            sig,
            context: c,
        } => {
            let op = async |d, s| {
                let c = context(c);
                hsm().await?.verify_with_context(&key, d, s, c).await
            };
            two_files(&input, &sig, op).await?;
            ok()
        }
        Command::Encrypt {
            key,
            input,
            out,
            aad: a,
        } => {
            let op = async |d| hsm().await?.encrypt(&key, d, aad(a)).await;
            file_to_file(&input, &out, false, op).await?
        }
        Command::Decrypt {
            key,
            input,
            out,
            aad: a,
        } => {
            let op = async |d| hsm().await?.decrypt(&key, d, aad(a)).await;
            file_to_file(&input, &out, true, op).await?
        }
        Command::Mac { key, input, out } => {
            file_to_file(&input, &out, false, async |d| {
                hsm().await?.mac(&key, d).await
            })
            .await?
        }
        Command::MacVerify { key, input, mac } => {
            two_files(&input, &mac, async |d, m| {
                hsm().await?.mac_verify(&key, d, m).await
            })
            .await?;
            ok()
        }
        Command::Derive {
            key,
            peer,
            key_type,
            new,
        } => {
            let text = String::from_utf8(read(&peer)?)
                .map_err(|_| ClientError::Local(format!("{}: not a PEM file", peer.display())))?;
            let raw = pem::pem_decode("PUBLIC KEY", &text)
                .and_then(|der| pem::parse_spki(&der))
                .filter(|(t, _)| *t == KeyType::X25519)
                .map(|(_, raw)| raw)
                .ok_or_else(|| {
                    ClientError::Local(format!(
                        "{}: expected an X25519 public key in SubjectPublicKeyInfo PEM",
                        peer.display()
                    ))
                })?;
            new_key(hsm().await?.derive(&key, raw, spec(key_type, new)).await?)
        }
        Command::Lifecycle(cmd) => lifecycle::run(cmd, json, hsm).await?,
        Command::Kem(cmd) => kem::run(cmd, json, hsm).await?,
    })
}
