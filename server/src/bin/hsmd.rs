//! `hsmd`: the FerroHSM daemon. Thin CLI over the `ferrohsm_server` library.

/// Every heap block is wiped when it is freed, so copies of key bytes left in freed buffers
/// (by crypto libraries that do not zeroize, such as ring's key schedules, or by a `Vec` that
/// grew) do not outlive their use. The allocator's own `unsafe` stays in that crate.
#[global_allocator]
static ALLOC: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferrohsm_server::init::{DEFAULT_TCP, DEFAULT_TLS, DEFAULT_TLS_PSK, InitOptions, init};
use ferrohsm_server::keys::seal::Passphrase;
use ferrohsm_server::{Config, ServerError};

/// FerroHSM server. With no arguments: initialise ./hsm-data (client "default") on first run,
/// then serve from it.
#[derive(Debug, Parser)]
#[command(name = "hsmd", version)]
struct Cli {
    /// Server configuration file.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// File holding the key store's passphrase (else HSMD_PASSPHRASE; a trailing newline is
    /// not part of it).
    #[arg(long = "passphrase-file", value_name = "FILE", global = true)]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a server config, client auth keys and client profiles in a directory.
    Init(Box<InitArgs>),
    /// The audit chain: verify it, show it, or print a signed checkpoint of its head.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write a consistent snapshot of the whole store (still sealed under the master key)
    /// while hsmd may be running.
    Backup {
        /// Backup file to write (must not exist).
        #[arg(long, value_name = "B")]
        out: PathBuf,
    },
    /// Restore a backup into the data directory of --config (which must not hold a store).
    Restore {
        /// Backup file.
        #[arg(long = "in", value_name = "B")]
        input: PathBuf,
    },
    /// Change the key store's passphrase (old: HSMD_PASSPHRASE or --passphrase-file; new:
    /// HSMD_NEW_PASSPHRASE or --new-passphrase-file). Only the master key is re-wrapped.
    Passwd {
        /// File holding the new passphrase.
        #[arg(long = "new-passphrase-file", value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
}

/// `hsmd init`.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Target directory (created if missing; must be empty unless --force).
    #[arg(long, value_name = "D")]
    dir: PathBuf,
    /// Comma-separated client names.
    #[arg(long, value_delimiter = ',', required_unless_present = "join")]
    clients: Vec<String>,
    /// Plain TCP listen address [default: 127.0.0.1:7301; required with --join].
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Mutual-certificate TLS listen address [default: 127.0.0.1:7302; required with
    /// --join].
    #[arg(long, value_name = "ADDR")]
    tls: Option<SocketAddr>,
    /// TLS 1.3 PSK listen address [default: 127.0.0.1:7303; required with --join].
    #[arg(long = "tls-psk", value_name = "ADDR")]
    tls_psk: Option<SocketAddr>,
    /// Shared-memory socket path (default: DIR/hsmd.sock).
    #[arg(long = "shm-socket", value_name = "PATH")]
    shm_socket: Option<PathBuf>,
    /// Re-initialise a non-empty directory (existing keys are kept).
    #[arg(long)]
    force: bool,
    /// Keep the key store in this PostgreSQL database, postgres://USER@HOST:PORT/DB (no
    /// password in it: set HSMD_STORE_PASSWORD; it is kept in DIR/store.password, 0600).
    #[arg(long = "store-url", value_name = "URL")]
    store_url: Option<String>,
    /// This node's name (default: the directory's name and four random hex digits).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Make one more node of the cluster of the node in directory D (its store must be
    /// in PostgreSQL); needs --tcp, --tls and --tls-psk.
    #[arg(long, value_name = "D", conflicts_with_all = ["clients", "store_url", "force"], requires_all = ["tcp", "tls", "tls_psk"])]
    join: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every entry, the signed head, and a checkpoint; name the first broken entry.
    Verify {
        /// A file holding what `hsmd audit checkpoint` printed: also detects a log cut after it.
        #[arg(long, value_name = "C")]
        checkpoint: Option<PathBuf>,
    },
    /// Print the entries (from sequence number N).
    Show {
        /// One JSON array.
        #[arg(long)]
        json: bool,
        /// First sequence number shown.
        #[arg(long, value_name = "N", default_value_t = 1)]
        since: u64,
    },
    /// Print the head (sequence and hash) signed by the audit key.
    Checkpoint,
}

/// The config `--config` names, for subcommands that need one.
fn config_for(config: Option<PathBuf>, what: &str) -> Result<Config, ServerError> {
    let path =
        config.ok_or_else(|| ServerError::Config(format!("hsmd {what} needs --config FILE")))?;
    Config::load(&path)
}

/// A passphrase from `file`, else from the environment variable `var`.
fn passphrase(file: Option<&PathBuf>, var: &str) -> Result<Option<Passphrase>, ServerError> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            ServerError::Store(format!("cannot read passphrase file {}: {e}", f.display()))
        })?;
        return Ok(Some(Passphrase::new(text)));
    }
    Ok(std::env::var(var).ok().map(Passphrase::new))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Serving logs in the format its config names, once the config is read; every other
    // command logs text.
    if cli.command.is_some() {
        init_logging(ferrohsm_server::LogFormat::Text);
    }
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hsmd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<(), ServerError> {
    let pass = passphrase(cli.passphrase_file.as_ref(), "HSMD_PASSPHRASE")?;
    match cli.command {
        Some(Command::Init(args)) => {
            let InitArgs {
                dir,
                clients,
                tcp,
                tls,
                tls_psk,
                shm_socket,
                force,
                store_url,
                node,
                join,
            } = *args;
            let report = init(&InitOptions {
                dir,
                clients,
                tcp: tcp.map_or_else(|| default_addr(DEFAULT_TCP), Ok)?,
                tls: tls.map_or_else(|| default_addr(DEFAULT_TLS), Ok)?,
                tls_psk: tls_psk.map_or_else(|| default_addr(DEFAULT_TLS_PSK), Ok)?,
                shm_socket,
                force,
                passphrase: pass,
                store_url,
                node,
                join,
            })?;
            println!("wrote {}", report.config.display());
            for (name, path) in &report.profiles {
                println!("client {name}: hsmctl --profile {} ping", path.display());
            }
            Ok(())
        }
        Some(Command::Audit { command }) => {
            let out = match command {
                AuditCommand::Verify { checkpoint } => ferrohsm_server::admin::audit_verify(
                    &config_for(cli.config, "audit verify")?,
                    checkpoint.as_deref(),
                )?,
                AuditCommand::Show { json, since } => ferrohsm_server::admin::audit_show(
                    &config_for(cli.config, "audit show")?,
                    since,
                    json,
                )?,
                AuditCommand::Checkpoint => ferrohsm_server::admin::audit_checkpoint(
                    &config_for(cli.config, "audit checkpoint")?,
                    pass.as_ref(),
                )?,
            };
            if !out.is_empty() {
                println!("{out}");
            }
            Ok(())
        }
        Some(Command::Backup { out }) => {
            let msg = ferrohsm_server::admin::backup(&config_for(cli.config, "backup")?, &out)?;
            println!("{msg}");
            Ok(())
        }
        Some(Command::Restore { input }) => {
            let config = config_for(cli.config, "restore")?;
            let msg = ferrohsm_server::admin::restore(&config, &input, pass.as_ref())?;
            println!("{msg}");
            Ok(())
        }
        Some(Command::Passwd {
            new_passphrase_file,
        }) => {
            let path = cli
                .config
                .ok_or_else(|| ServerError::Config("hsmd passwd needs --config FILE".into()))?;
            let config = Config::load(&path)?;
            let st = config
                .store
                .ok_or_else(|| ServerError::Config("no [store] section".into()))?;
            if st.key_file.is_some() {
                return Err(ServerError::Store(format!(
                    "the key store {} is protected by a key file, not a passphrase",
                    st.describe()
                )));
            }
            let old = pass.ok_or_else(|| {
                ServerError::Store(
                    "no current passphrase: set HSMD_PASSPHRASE or pass --passphrase-file".into(),
                )
            })?;
            let new = passphrase(new_passphrase_file.as_ref(), "HSMD_NEW_PASSPHRASE")?.ok_or_else(
                || {
                    ServerError::Store(
                        "no new passphrase: set HSMD_NEW_PASSPHRASE or pass \
                         --new-passphrase-file"
                            .into(),
                    )
                },
            )?;
            ferrohsm_server::keys::change_passphrase(&st, &old, &new)?;
            println!("hsmd: passphrase changed for {}", st.describe());
            Ok(())
        }
        None => {
            let (config_path, hint) = match cli.config {
                Some(p) => (p, None),
                None => default_data_dir(pass.clone())?,
            };
            let mut config = Config::load(&config_path)?;
            init_logging(config.log_format);
            if let Some(st) = config.store.as_mut() {
                st.passphrase = pass;
            }
            // Before any key is read: no core dumps, memory locked, descriptors raised.
            let h = ferrohsm_server::harden::process();
            tracing::info!(
                undumpable = h.undumpable,
                memory_locked = h.memory_locked,
                nofile = h.nofile,
                "process hardened"
            );
            ferrohsm_server::run(config, ferrohsm_server::signal(), move |bound| match hint {
                Some(h) => println!(
                    "hsmd: listening on {bound}; connect with: {} --profile {} ping",
                    hsmctl_command(),
                    shell_word(&h)
                ),
                None => println!("hsmd: listening on {bound}"),
            })
        }
    }
}

/// The hsmctl command a newcomer can run from where they stand: the hsmctl beside this hsmd
/// when there is one (on PATH by its name, else by its path), or cargo building it (after `cargo
/// run --release --bin hsmd`, which builds hsmd alone).
fn hsmctl_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "hsmctl".into();
    };
    let beside = exe.with_file_name("hsmctl");
    if !beside.is_file() {
        let profile = if exe.parent().is_some_and(|p| p.ends_with("debug")) {
            ""
        } else {
            " --release"
        };
        return format!("cargo run{profile} --bin hsmctl --");
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("hsmctl") == beside));
    if on_path {
        return "hsmctl".into();
    }
    // Relative to the working directory when it is below it (target/release/hsmctl).
    let cwd = std::env::current_dir().ok();
    match cwd.as_deref().and_then(|c| beside.strip_prefix(c).ok()) {
        Some(rel) => shell_word(&format!("./{}", rel.display())),
        None => shell_word(&beside.display().to_string()),
    }
}

/// `s` as one word for a POSIX shell: as it is when it holds only safe characters, else in
/// single quotes (a quote inside written as '\'').
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `./hsm-data`: initialised with client "default" on first run.
fn default_data_dir(
    passphrase: Option<Passphrase>,
) -> Result<(PathBuf, Option<String>), ServerError> {
    let dir = PathBuf::from("hsm-data");
    let config = dir.join("hsmd.toml");
    if !config.exists() {
        init(&InitOptions {
            dir: dir.clone(),
            clients: vec!["default".into()],
            tcp: default_addr(DEFAULT_TCP)?,
            tls: default_addr(DEFAULT_TLS)?,
            tls_psk: default_addr(DEFAULT_TLS_PSK)?,
            shm_socket: None,
            force: false,
            passphrase,
            store_url: None,
            node: None,
            join: None,
        })?;
        eprintln!(
            "hsmd: initialised {} with client \"default\"",
            dir.display()
        );
    }
    Ok((
        config,
        Some(dir.join("clients/default.toml").display().to_string()),
    ))
}

fn default_addr(a: &str) -> Result<SocketAddr, ServerError> {
    a.parse()
        .map_err(|_| ServerError::Config(format!("bad built-in address {a}")))
}

fn init_logging(format: ferrohsm_server::LogFormat) {
    use tracing_subscriber::filter::LevelFilter;
    let level = match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        "off" => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    };
    use std::io::IsTerminal as _;
    let fmt = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    match format {
        // Colour only on a terminal: logs redirected to files or journald stay plain text.
        ferrohsm_server::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        // One JSON object a line: timestamp, level, target, and the event's fields (peer
        // strings escaped as in text, then JSON-escaped).
        ferrohsm_server::LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    /// The printed command survives a shell: a word with a space or a quote stays one word,
    /// with the same bytes.
    #[test]
    fn shell_words_survive_a_shell() {
        assert_eq!(
            shell_word("hsm-data/clients/default.toml"),
            "hsm-data/clients/default.toml"
        );
        for s in ["my dir/hsmctl", "it's", "a;b", "$HOME", ""] {
            let quoted = shell_word(s);
            let o = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {quoted}")])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(o.stdout).unwrap(), s, "{quoted}");
        }
    }
}
