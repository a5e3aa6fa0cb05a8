//! `hsmd init`: a server config, credentials for every client on every transport, and a client
//! profile per client, so `hsmctl --profile D/clients/NAME.toml [--transport T] ping` works
//! straight away.
//!
//! ```text
//! D/hsmd.toml            server config (store, listeners, clients)
//! D/audit.pub            the audit key's public half (SubjectPublicKeyInfo PEM): checks the
//!                        signed head of the audit chain and checkpoints
//! D/keys.db              the durable key store (SQLite); its master key is wrapped by a
//!                        passphrase (HSMD_PASSPHRASE / --passphrase-file given to init) or by
//! D/master.key           a key file (0600), the development default
//! D/pki/ca.pem, ca.key   development CA (key 0600): signs the server and client certificates
//! D/pki/server.pem, .key server certificate for localhost, 127.0.0.1, ::1 (key 0600)
//! D/clients/NAME.key     Ed25519 auth key for TCP, PKCS#8 PEM (OpenSSL reads it), 0600
//! D/clients/NAME.pem     client certificate (CN and DNS SAN = NAME); NAME.tls.key its key, 0600
//! D/clients/NAME.psk     256-bit TLS pre-shared key as hex, 0600
//! D/clients/NAME.toml    client profile: name, auth_key, default_transport, [tcp], [tls],
//!                        [tls_psk], [shm]
//! D/hsmd.sock            shared-memory set-up socket (created by hsmd; allowed_uids = the
//!                        uid running init)
//! ```
//! An existing empty directory is accepted; a non-empty one needs `force`. `force` rewrites the
//! config and profiles but keeps every existing key, certificate and PSK file, and never
//! touches an existing key store (the config it writes protects the store the way it already
//! is), so credentials already handed out stay valid and no key is lost.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use ferrohsm_proto::pem;
use ferrohsm_tls::pki::Role;
use zeroize::Zeroizing;

use crate::config::{encode_hex, validate_client_name};
use crate::error::ServerError;

mod join;
mod shared;
mod store;
pub use shared::{DEFAULT_TCP, DEFAULT_TLS, DEFAULT_TLS_PSK, InitOptions, InitReport};
use shared::{LEAF_DAYS, io_err, node_name, write_file, write_new};

use store::{postgres_store, store};

/// Runs `hsmd init`.
pub fn init(opts: &InitOptions) -> Result<InitReport, ServerError> {
    let dir = &opts.dir;
    if let Some(from) = &opts.join {
        for (given, what) in [
            (!opts.clients.is_empty(), "--clients (the clients are D's)"),
            (opts.store_url.is_some(), "--store-url (the store is D's)"),
            (opts.force, "--force"),
        ] {
            if given {
                return Err(ServerError::Init(format!(
                    "--join cannot be used with {what}"
                )));
            }
        }
        return join::join(opts, from);
    }
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
    let node = node_name(opts)?;
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

    let mut config = format!(
        "# FerroHSM server configuration (written by hsmd init)\n\n[server]\n\
         node = {}             # this node's name, unique among nodes sharing a database\n\
         workers = 0              # crypto threads; 0 = one per CPU\n\
         session_threads = 0      # session arbiters (sockets, framing, cheap ops); 0 = one per CPU\n\
         inline_max = 16384       # bytes up to which cheap ops run on the session's thread\n\
         spin_us = 50             # a TCP/TLS session looks for its next request this long before\n\
                                  # its thread may sleep (0: never)\n\
         window = 32              # requests in flight per session\n\
         max_body = 1048576       # largest frame body in bytes\n\
         max_connections = 1024\n\
         handshake_timeout_ms = 3000\n\n",
        toml::Value::String(node.clone())
    );
    // The socket path as the config (relative to D) and the profiles (relative to D/clients)
    // write it; an explicit path is made absolute.
    let (shm_in_config, shm_in_profile) = match &opts.shm_socket {
        None => ("hsmd.sock".to_string(), "../hsmd.sock".to_string()),
        Some(p) => {
            let abs = std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.clone());
            (abs.display().to_string(), abs.display().to_string())
        }
    };
    config.push_str(&match &opts.store_url {
        None => store(dir, opts.passphrase.as_ref())?,
        Some(url) => {
            let shm = fs::canonicalize(dir)
                .map(|d| d.join(&shm_in_config))
                .unwrap_or_else(|_| dir.join(&shm_in_config));
            let me = crate::keys::store::postgres::NodeRow {
                name: node.clone(),
                tcp: opts.tcp.to_string(),
                tls: opts.tls.to_string(),
                tls_psk: opts.tls_psk.to_string(),
                shm: shm.display().to_string(),
                registered: crate::keys::manager::now() as i64,
            };
            postgres_store(dir, url, opts.passphrase.as_ref(), opts.force, &me)?
        }
    });
    let ca = pki(dir, opts.tls)?;
    // Shared-memory sessions are allowed for the user running init; add others as needed.
    let uid = std::os::unix::fs::MetadataExt::uid(
        &fs::metadata(dir).map_err(io_err(format!("cannot read {}", dir.display())))?,
    );
    config.push_str(&format!(
        "[tcp]\naddr = \"{}\"\nallow_insecure_remote = false\n\n\
         [tls]\naddr = \"{}\"\nca = \"pki/ca.pem\"          # client certificates must chain to it\n\
         cert = \"pki/server.pem\"\nkey = \"pki/server.key\"\nallow_tls12 = false\n\n\
         [tls_psk]\naddr = \"{}\"\n\n\
         [shm]\nsocket = {:?}\nmode = \"0660\"            # who may connect at all\nring_kib = 256\n\n\
         [audit]\nlevel = \"changes\"         # \"all\": also every sign, verify, encrypt, decrypt, mac\n\n\
         [log]\nformat = \"text\"          # \"json\": one JSON object a line, for log shippers\n\n\
         # [metrics]               # GET /metrics (Prometheus) and GET /health; off unless set\n\
         # listen = \"127.0.0.1:9301\"\n\n\
         [limits]                  # see SECURITY.md for every limit and what a client sees\n\
         max_keys_per_client = 10000\nmax_counters_per_client = 10000\nmax_grants_per_client = 10000\n\
         memory_mib = 256          # requests and responses buffered by all sessions\n\
         preauth_max_body = 4096   # largest frame before authentication\n\
         max_handshakes = 256      # connections not yet authenticated\n\
         max_handshakes_per_source = 16\n\n",
        opts.tcp, opts.tls, opts.tls_psk, shm_in_config
    ));
    let mut profiles = Vec::new();
    for name in &opts.clients {
        let key_path = clients_dir.join(format!("{name}.key"));
        let seed = load_or_create_key(&key_path)?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        client_cert(&ca, &clients_dir, name)?;
        let psk_path = clients_dir.join(format!("{name}.psk"));
        if !psk_path.exists() {
            let psk =
                ferrohsm_tls::pki::new_psk_hex().map_err(|e| ServerError::Init(e.to_string()))?;
            write_new(&psk_path, format!("{}\n", psk.as_str()).as_bytes(), 0o600)?;
        }
        config.push_str(&format!(
            "[clients.{name}]\nauth_public_key = \"{}\"\ntls_names = [\"{name}\"]\n\
             psk_identity = \"{name}\"\npsk_file = \"clients/{name}.psk\"\nallowed_uids = [{uid}]\n\
             # trusted_wrap_keys = [\"backup\"]   # wrap keys that may wrap non-exportable keys\n\n",
            encode_hex(public.as_bytes())
        ));
        let profile_path = clients_dir.join(format!("{name}.toml"));
        let profile = format!(
            "# FerroHSM client profile for {name} (paths are relative to this file)\n\
             name = \"{name}\"\nauth_key = \"{name}.key\"\ndefault_transport = \"tcp\"\n\
             # with one request out over TCP or TLS, look for its answer this long before the\n\
             # thread may sleep (0: never)\n\
             spin_us = {}\n\n\
             [tcp]\naddr = \"{}\"\n\n\
             [tls]\naddr = \"{}\"\nserver_name = \"localhost\"\nca = \"../pki/ca.pem\"\n\
             cert = \"{name}.pem\"\nkey = \"{name}.tls.key\"\n\n\
             [tls_psk]\naddr = \"{}\"\nidentity = \"{name}\"\nkey_file = \"{name}.psk\"\n\n\
             [shm]\nsocket = {:?}\n",
            ferrohsm_proto::spin::DEFAULT_SPIN_US,
            opts.tcp,
            opts.tls,
            opts.tls_psk,
            shm_in_profile
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

/// The development CA and server certificate, made once and kept on `--force`. Returns the CA
/// (certificate and key PEM) for issuing client certificates.
fn pki(dir: &Path, tls: SocketAddr) -> Result<(String, Zeroizing<String>), ServerError> {
    let pki = dir.join("pki");
    fs::create_dir_all(&pki).map_err(io_err(format!("cannot create {}", pki.display())))?;
    let _ = fs::set_permissions(&pki, fs::Permissions::from_mode(0o700));
    let tls_err = |e: ferrohsm_tls::TlsError| ServerError::Init(e.to_string());
    let (ca_cert, ca_key) = (pki.join("ca.pem"), pki.join("ca.key"));
    if !ca_cert.exists() || !ca_key.exists() {
        let ca = ferrohsm_tls::pki::new_ca("FerroHSM development CA").map_err(tls_err)?;
        write_new(&ca_key, ca.key_pem.as_bytes(), 0o600)?;
        write_file(&ca_cert, ca.cert_pem.as_bytes(), 0o644)?;
    }
    let read =
        |p: &Path| fs::read_to_string(p).map_err(io_err(format!("cannot read {}", p.display())));
    let ca = (read(&ca_cert)?, Zeroizing::new(read(&ca_key)?));
    let (cert, key) = (pki.join("server.pem"), pki.join("server.key"));
    if !cert.exists() || !key.exists() {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        let ip = tls.ip().to_string();
        if !tls.ip().is_unspecified() && !names.contains(&ip) {
            names.push(ip);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (from, until) = ferrohsm_tls::pki::validity(LEAF_DAYS);
        let issued = ferrohsm_tls::pki::issue(&ca.0, &ca.1, Role::Server, &names, from, until)
            .map_err(tls_err)?;
        write_new(&key, issued.key_pem.as_bytes(), 0o600)?;
        write_file(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    }
    Ok(ca)
}

/// `clients/NAME.pem` and `NAME.tls.key`, unless both exist.
fn client_cert(
    ca: &(String, Zeroizing<String>),
    clients: &Path,
    name: &str,
) -> Result<(), ServerError> {
    let (cert, key) = (
        clients.join(format!("{name}.pem")),
        clients.join(format!("{name}.tls.key")),
    );
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let (from, until) = ferrohsm_tls::pki::validity(LEAF_DAYS);
    let issued = ferrohsm_tls::pki::issue(&ca.0, &ca.1, Role::Client, &[name], from, until)
        .map_err(|e| ServerError::Init(e.to_string()))?;
    let _ = fs::remove_file(&key);
    write_new(&key, issued.key_pem.as_bytes(), 0o600)?;
    write_file(&cert, issued.cert_pem.as_bytes(), 0o644)
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
    write_new(path, text.as_bytes(), 0o600)?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, force: bool) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            clients: vec!["alice".into(), "bob".into()],
            tcp: "127.0.0.1:7301".parse().unwrap(),
            tls: "127.0.0.1:7302".parse().unwrap(),
            tls_psk: "127.0.0.1:7303".parse().unwrap(),
            shm_socket: None,
            force,
            passphrase: None,
            store_url: None,
            node: None,
            join: None,
        }
    }

    #[test]
    fn node_names_are_given_or_made_valid_and_bad_ones_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let named = InitOptions {
            node: Some("hsm-east-1".into()),
            ..opts(&tmp.path().join("a"), false)
        };
        let r = init(&named).unwrap();
        assert_eq!(
            crate::Config::load(&r.config).unwrap().node.as_deref(),
            Some("hsm-east-1")
        );
        let odd = init(&opts(&tmp.path().join("1 data+dir"), false)).unwrap();
        let node = crate::Config::load(&odd.config).unwrap().node.unwrap();
        assert!(node.starts_with("node1datadir-"), "{node}");
        let bad = InitOptions {
            node: Some("no spaces".into()),
            ..opts(&tmp.path().join("b"), false)
        };
        let e = init(&bad).unwrap_err().to_string();
        assert!(e.starts_with("--node: "), "{e}");
        assert!(!tmp.path().join("b").exists(), "nothing written");
    }

    #[test]
    fn init_writes_loadable_config_and_keeps_keys_on_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let r = init(&opts(&dir, false)).unwrap();
        let c = crate::Config::load(&r.config).unwrap();
        assert_eq!(c.clients.len(), 2);
        // A node name from the directory's name and four hex digits, kept by --force.
        let node = c.node.clone().unwrap();
        let (base, hex) = node.rsplit_once('-').unwrap();
        assert_eq!(base, "d");
        assert!(
            hex.len() == 4 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{node}"
        );
        let key = dir.join("clients/alice.key");
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = fs::read(&key).unwrap();
        let db = fs::read(dir.join("keys.db")).unwrap();
        let master = fs::read(dir.join("master.key")).unwrap();
        assert_eq!(
            fs::metadata(dir.join("master.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let e = init(&opts(&dir, false)).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("--force"), "{e}");
        init(&opts(&dir, true)).unwrap();
        assert_eq!(
            fs::read(&key).unwrap(),
            before,
            "--force keeps existing keys"
        );
        assert_eq!(
            fs::read(dir.join("keys.db")).unwrap(),
            db,
            "--force keeps the store"
        );
        assert_eq!(fs::read(dir.join("master.key")).unwrap(), master);
        assert_eq!(
            crate::Config::load(&r.config).unwrap().node,
            Some(node),
            "--force keeps the node's name"
        );
        assert!(
            crate::Config::load(&r.config)
                .unwrap()
                .store
                .unwrap()
                .key_file
                .is_some()
        );
        // An existing empty directory is fine.
        let empty = tmp.path().join("e");
        fs::create_dir(&empty).unwrap();
        init(&opts(&empty, false)).unwrap();
        let mut bad = opts(&tmp.path().join("x"), false);
        bad.clients = vec!["9lives".into()];
        let r = init(&bad);
        assert!(
            matches!(&r, Err(ServerError::Init(m))
                if m.starts_with("--clients: invalid client name \"9lives\"")),
            "{r:?}"
        );
        assert!(
            !tmp.path().join("x").exists(),
            "refused before writing anything"
        );
    }
}
