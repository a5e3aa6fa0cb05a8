//! `hsmd init`: a server config, an Ed25519 auth key pair per client, and a client profile per
//! client, so `hsmctl --profile D/clients/NAME.toml ping` works straight away.
//!
//! ```text
//! D/hsmd.toml            server config (client public keys, listeners)
//! D/clients/NAME.key     client auth key, PKCS#8 PEM (OpenSSL reads it), mode 0600
//! D/clients/NAME.toml    client profile: name, auth_key, default_transport, [tcp] addr
//! ```
//! An existing empty directory is accepted; a non-empty one needs `force`. `force` rewrites the
//! config and profiles but keeps every existing auth key file (and will never touch a key
//! store), so existing profiles and keys stay valid.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ferrohsm_proto::pem;
use zeroize::Zeroizing;

use crate::config::{encode_hex, validate_client_name};
use crate::error::ServerError;

/// Default plain TCP address.
pub const DEFAULT_TCP: &str = "127.0.0.1:7301";

/// What to initialise.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Target directory.
    pub dir: PathBuf,
    /// Client names.
    pub clients: Vec<String>,
    /// Plain TCP address.
    pub tcp: SocketAddr,
    /// Re-initialise a non-empty directory (keeping existing keys).
    pub force: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The config file.
    pub config: PathBuf,
    /// Profile paths by client.
    pub profiles: Vec<(String, PathBuf)>,
}

fn io_err(ctx: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |e| ServerError::io(ctx, e)
}

/// Runs `hsmd init`.
pub fn init(opts: &InitOptions) -> Result<InitReport, ServerError> {
    let dir = &opts.dir;
    if opts.clients.is_empty() {
        return Err(ServerError::Init(
            "--clients: expected at least one client name".into(),
        ));
    }
    for (i, name) in opts.clients.iter().enumerate() {
        validate_client_name(name).map_err(|m| ServerError::Init(format!("--clients: {m}")))?;
        if opts.clients[..i].contains(name) {
            return Err(ServerError::Init(format!(
                "--clients: {name} is listed twice"
            )));
        }
    }
    if dir.exists() {
        let non_empty = fs::read_dir(dir)
            .map_err(io_err(format!("cannot read {}", dir.display())))?
            .next()
            .is_some();
        if non_empty && !opts.force {
            return Err(ServerError::Init(format!(
                "{} is not empty; pass --force to re-initialise it (existing keys are kept)",
                dir.display()
            )));
        }
    }
    let clients_dir = dir.join("clients");
    fs::create_dir_all(&clients_dir)
        .map_err(io_err(format!("cannot create {}", clients_dir.display())))?;
    let _ = fs::set_permissions(&clients_dir, fs::Permissions::from_mode(0o700));

    let mut config = String::from(
        "# FerroHSM server configuration (written by hsmd init)\n\n[server]\n\
         workers = 0              # crypto threads; 0 = one per CPU\n\
         window = 32              # requests in flight per session\n\
         max_body = 1048576       # largest frame body in bytes\n\
         max_connections = 1024\n\
         handshake_timeout_ms = 10000\n\n",
    );
    config.push_str(&format!(
        "[tcp]\naddr = \"{}\"\nallow_insecure_remote = false\n\n",
        opts.tcp
    ));
    let mut profiles = Vec::new();
    for name in &opts.clients {
        let key_path = clients_dir.join(format!("{name}.key"));
        let seed = load_or_create_key(&key_path)?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        config.push_str(&format!(
            "[clients.{name}]\nauth_public_key = \"{}\"\n\n",
            encode_hex(public.as_bytes())
        ));
        let profile_path = clients_dir.join(format!("{name}.toml"));
        let profile = format!(
            "# FerroHSM client profile for {name} (paths are relative to this file)\n\
             name = \"{name}\"\nauth_key = \"{name}.key\"\ndefault_transport = \"tcp\"\n\n\
             [tcp]\naddr = \"{}\"\n",
            opts.tcp
        );
        write_file(&profile_path, profile.as_bytes(), 0o644)?;
        profiles.push((name.clone(), profile_path));
    }
    let config_path = dir.join("hsmd.toml");
    write_file(&config_path, config.as_bytes(), 0o644)?;
    Ok(InitReport {
        config: config_path,
        profiles,
    })
}

fn load_or_create_key(path: &Path) -> Result<Zeroizing<[u8; 32]>, ServerError> {
    if path.exists() {
        let text = Zeroizing::new(
            fs::read_to_string(path).map_err(io_err(format!("cannot read {}", path.display())))?,
        );
        let der = Zeroizing::new(pem::pem_decode("PRIVATE KEY", &text).unwrap_or_default());
        return pem::parse_ed25519_pkcs8(&der)
            .map(Zeroizing::new)
            .ok_or_else(|| {
                ServerError::Init(format!(
                    "{}: expected an Ed25519 PKCS#8 PEM private key",
                    path.display()
                ))
            });
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut())
        .map_err(|_| ServerError::Init("OS random source failed".into()))?;
    let der = Zeroizing::new(pem::ed25519_pkcs8(&seed));
    let text = Zeroizing::new(pem::pem_encode("PRIVATE KEY", &der));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    Ok(seed)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), ServerError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    f.write_all(data)
        .map_err(io_err(format!("cannot write {}", tmp.display())))?;
    f.sync_all()
        .map_err(io_err(format!("cannot sync {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, force: bool) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            clients: vec!["alice".into(), "bob".into()],
            tcp: "127.0.0.1:7301".parse().unwrap(),
            force,
        }
    }

    #[test]
    fn init_writes_loadable_config_and_keeps_keys_on_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let r = init(&opts(&dir, false)).unwrap();
        let c = crate::Config::load(&r.config).unwrap();
        assert_eq!(c.clients.len(), 2);
        let key = dir.join("clients/alice.key");
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = fs::read(&key).unwrap();
        let e = init(&opts(&dir, false)).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("--force"), "{e}");
        init(&opts(&dir, true)).unwrap();
        assert_eq!(
            fs::read(&key).unwrap(),
            before,
            "--force keeps existing keys"
        );
        // An existing empty directory is fine.
        let empty = tmp.path().join("e");
        fs::create_dir(&empty).unwrap();
        init(&opts(&empty, false)).unwrap();
        let mut bad = opts(&tmp.path().join("x"), false);
        bad.clients = vec!["9lives".into()];
        assert!(init(&bad).is_err());
    }
}
