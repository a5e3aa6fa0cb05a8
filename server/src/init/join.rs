//! `hsmd init --dir D2 --join D`: one more node of D's cluster. D must be a node whose key
//! store is in PostgreSQL, readable where this runs. D2 gets:
//!
//! ```text
//! D2/hsmd.toml             D's config with D2's node name, listeners and shm socket
//! D2/store.password        copied from D (0600), as is D2/master.key when D has one
//! D2/audit.pub             copied from D
//! D2/pki/ca.pem            D's CA certificate; D's CA key is read to sign
//! D2/pki/server.pem, .key  a new server certificate for D2's addresses (key 0600)
//! D2/clients/*             every client's credentials, copied with their modes, and
//!                          profiles listing every registered node, D2 first
//! ```
//! D's profiles are rewritten the same way, D first; other nodes' directories are not
//! touched. The master key must open: D's key file, or the passphrase given, must unwrap the
//! database's master key, or nothing is written. The node is registered in the database with
//! its addresses (a name already registered is refused).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use ferrohsm_tls::pki::Role;
use zeroize::Zeroizing;

use super::shared::{InitOptions, InitReport, LEAF_DAYS, io_err, node_name, write_file, write_new};
use crate::config::Config;
use crate::error::ServerError;
use crate::keys::store::postgres::{NodeRow, PgBackend};

fn refuse(msg: String) -> ServerError {
    ServerError::Init(format!("--join: {msg}"))
}

/// Runs `hsmd init --join from`.
pub(super) fn join(opts: &InitOptions, from: &Path) -> Result<InitReport, ServerError> {
    let dir = &opts.dir;
    let cfg_path = from.join("hsmd.toml");
    if !cfg_path.exists() {
        return Err(refuse(format!(
            "{} is not a node's data directory (no hsmd.toml)",
            from.display()
        )));
    }
    let config = Config::load(&cfg_path).map_err(|e| refuse(format!("{e}")))?;
    let st = config.store.as_ref().ok_or_else(|| {
        refuse(format!(
            "{} has no [store] section: it is not a node",
            cfg_path.display()
        ))
    })?;
    let Some(pg) = st.postgres.clone() else {
        return Err(refuse(format!(
            "{} keeps its keys in SQLite ({}), which one process holds; nodes of a cluster \
             share a PostgreSQL store (move it there with hsmd backup and hsmd restore into a \
             store made by hsmd init --store-url)",
            from.display(),
            st.path.display()
        )));
    };
    if dir.exists()
        && fs::read_dir(dir)
            .map_err(io_err(format!("cannot read {}", dir.display())))?
            .next()
            .is_some()
    {
        return Err(refuse(format!("{} is not empty", dir.display())));
    }
    let ca_key_path = from.join("pki").join("ca.key");
    let ca_key = Zeroizing::new(fs::read_to_string(&ca_key_path).map_err(|e| {
        refuse(format!(
            "cannot read {} ({e}): the new node's server certificate is signed with D's CA key",
            ca_key_path.display()
        ))
    })?);
    let ca_cert = fs::read_to_string(from.join("pki").join("ca.pem"))
        .map_err(|e| refuse(format!("cannot read {}/pki/ca.pem: {e}", from.display())))?;

    // The master key must open before anything is written: D's key file, or the same
    // passphrase.
    let mut st = st.clone();
    st.passphrase = opts.passphrase.clone();
    let unlock = crate::keys::unlock_configured(&st).map_err(|e| refuse(e.to_string()))?;
    crate::keys::unlock_store(crate::keys::open_configured(&st)?, &unlock)
        .map_err(|e| refuse(e.to_string()))?;
    drop(unlock);

    let node = node_name(opts)?;
    let shm_in_config = match &opts.shm_socket {
        None => "hsmd.sock".to_string(),
        Some(p) => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.clone())
            .display()
            .to_string(),
    };
    let mut db = PgBackend::connect(pg.clone(), pg.connect_timeout)
        .map_err(|e| ServerError::Init(e.to_string()))?;
    let mut nodes = db.nodes().map_err(|e| ServerError::Init(e.to_string()))?;
    if nodes.iter().any(|n| n.name == node) {
        return Err(refuse(format!(
            "a node named {node} is already registered in the database; give another --node"
        )));
    }
    let existed = dir.exists();
    fs::create_dir_all(dir.join("clients"))
        .map_err(io_err(format!("cannot create {}", dir.display())))?;
    let shm_abs = fs::canonicalize(dir)
        .map(|d| d.join(&shm_in_config))
        .unwrap_or_else(|_| dir.join(&shm_in_config));
    let me = NodeRow {
        name: node.clone(),
        tcp: opts.tcp.to_string(),
        tls: opts.tls.to_string(),
        tls_psk: opts.tls_psk.to_string(),
        shm: shm_abs.display().to_string(),
        registered: crate::keys::manager::now() as i64,
    };
    nodes.push(me.clone());
    // D2 is written whole first; only then is the node registered and D's profiles
    // rewritten, so a join that fails leaves D and the database as they were.
    let written = write_node(
        opts,
        from,
        &config,
        &nodes,
        &node,
        &shm_in_config,
        &shm_abs,
        &ca_cert,
        &ca_key,
    )
    .and_then(|profiles| {
        db.register_node(&me, false)
            .map_err(|e| ServerError::Init(e.to_string()))?;
        Ok(profiles)
    });
    let profiles = match written {
        Ok(p) => p,
        Err(e) => {
            // Back to how it was: absent, or the empty directory given.
            let _ = fs::remove_dir_all(dir);
            if existed {
                let _ = fs::create_dir(dir);
            }
            return Err(e);
        }
    };
    for entry in client_files(&from.join("clients"))? {
        if entry.to_string_lossy().ends_with(".toml") {
            rewrite_profile(&entry, &entry, &nodes, config_node(&config), None)?;
        }
    }
    Ok(InitReport {
        config: dir.join("hsmd.toml"),
        profiles,
    })
}

/// The files of D's `clients/`, by name.
fn client_files(clients: &Path) -> Result<Vec<std::path::PathBuf>, ServerError> {
    let mut entries: Vec<std::path::PathBuf> = fs::read_dir(clients)
        .and_then(|d| d.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>())
        .map_err(io_err(format!("cannot read {}", clients.display())))?;
    entries.sort();
    Ok(entries)
}

/// Writes D2: shared files, its certificate, the clients' credentials and profiles, and its
/// config. Answers the profiles written.
#[allow(clippy::too_many_arguments)]
fn write_node(
    opts: &InitOptions,
    from: &Path,
    config: &Config,
    nodes: &[NodeRow],
    node: &str,
    shm_in_config: &str,
    shm_abs: &Path,
    ca_cert: &str,
    ca_key: &str,
) -> Result<Vec<(String, std::path::PathBuf)>, ServerError> {
    let dir = &opts.dir;
    let cfg_path = from.join("hsmd.toml");
    let mut t: toml::Table = fs::read_to_string(&cfg_path)
        .map_err(io_err(format!("cannot read {}", cfg_path.display())))?
        .parse()
        .map_err(|e| refuse(format!("{}: {e}", cfg_path.display())))?;
    // What D2 shares with D, copied with D's modes (secrets stay 0600): the files D's config
    // names by relative path (an absolute path is the same on this host), and audit.pub.
    let mut shared = vec!["audit.pub".to_string()];
    if let Some(st) = t.get("store").and_then(toml::Value::as_table) {
        for key in ["key_file", "password_file"] {
            if let Some(rel) = st.get(key).and_then(toml::Value::as_str)
                && Path::new(rel).is_relative()
            {
                if !from.join(rel).exists() {
                    return Err(refuse(format!(
                        "{} names {key} = {rel:?}, which is not there",
                        cfg_path.display()
                    )));
                }
                shared.push(rel.to_string());
            }
        }
    }
    for rel in &shared {
        if let Some(parent) = dir.join(rel).parent() {
            fs::create_dir_all(parent)
                .map_err(io_err(format!("cannot create {}", parent.display())))?;
        }
        copy(&from.join(rel), &dir.join(rel))?;
    }
    let pki = dir.join("pki");
    fs::create_dir_all(&pki).map_err(io_err(format!("cannot create {}", pki.display())))?;
    let _ = fs::set_permissions(&pki, fs::Permissions::from_mode(0o700));
    write_file(&pki.join("ca.pem"), ca_cert.as_bytes(), 0o644)?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let ip = opts.tls.ip().to_string();
    if !opts.tls.ip().is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (not_before, not_after) = ferrohsm_tls::pki::validity(LEAF_DAYS);
    let issued =
        ferrohsm_tls::pki::issue(ca_cert, ca_key, Role::Server, &names, not_before, not_after)
            .map_err(|e| ServerError::Init(e.to_string()))?;
    write_new(&pki.join("server.key"), issued.key_pem.as_bytes(), 0o600)?;
    write_file(&pki.join("server.pem"), issued.cert_pem.as_bytes(), 0o644)?;
    let _ = fs::set_permissions(dir.join("clients"), fs::Permissions::from_mode(0o700));
    let mut profiles = Vec::new();
    for path in client_files(&from.join("clients"))? {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let to = dir.join("clients").join(&name);
        match name.strip_suffix(".toml") {
            Some(client) => {
                let shm = match &opts.shm_socket {
                    None => "../hsmd.sock".to_string(),
                    Some(_) => shm_abs.display().to_string(),
                };
                rewrite_profile(&path, &to, nodes, node, Some(&shm))?;
                profiles.push((client.to_string(), to));
            }
            None => copy(&path, &to)?,
        }
    }
    profiles.sort();

    // D's config with this node's name, listeners and certificate.
    let set = |t: &mut toml::Table, section: &str, key: &str, v: toml::Value| {
        if let Some(s) = t.get_mut(section).and_then(toml::Value::as_table_mut) {
            s.insert(key.into(), v);
        }
    };
    let s = |v: String| toml::Value::String(v);
    set(&mut t, "server", "node", s(node.to_string()));
    set(&mut t, "tcp", "addr", s(opts.tcp.to_string()));
    set(&mut t, "tls", "addr", s(opts.tls.to_string()));
    set(&mut t, "tls", "ca", s("pki/ca.pem".into()));
    set(&mut t, "tls", "cert", s("pki/server.pem".into()));
    set(&mut t, "tls", "key", s("pki/server.key".into()));
    set(&mut t, "tls_psk", "addr", s(opts.tls_psk.to_string()));
    set(&mut t, "shm", "socket", s(shm_in_config.to_string()));
    // The metrics address is this host's, like the listeners': off until set here (D's on
    // the same host would be taken).
    let metrics = t.remove("metrics").is_some();
    let text = format!(
        "# FerroHSM server configuration (written by hsmd init --join {}): node {node} of the \
         cluster on {}\n\n{t}{}",
        from.display(),
        config
            .store
            .as_ref()
            .map_or_else(String::new, |st| st.describe()),
        if metrics {
            "\n# [metrics]   # GET /metrics and /health: D's address was not copied; set this node's\n\
             # listen = \"127.0.0.1:9301\"\n"
        } else {
            "\n# [metrics]   # GET /metrics (Prometheus) and GET /health; off unless set\n\
             # listen = \"127.0.0.1:9301\"\n"
        }
    );
    write_file(&dir.join("hsmd.toml"), text.as_bytes(), 0o644)?;
    Ok(profiles)
}

fn config_node(config: &Config) -> &str {
    config.node.as_deref().unwrap_or("")
}

/// Copies a file (if it exists) keeping its mode.
fn copy(from: &Path, to: &Path) -> Result<(), ServerError> {
    let Ok(meta) = fs::metadata(from) else {
        return Ok(());
    };
    let data =
        Zeroizing::new(fs::read(from).map_err(io_err(format!("cannot read {}", from.display())))?);
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        write_new(to, &data, mode)
    } else {
        write_file(to, &data, mode)
    }
}

/// Writes `from`'s profile to `to` with every node's addresses, `first` first (and the shm
/// socket replaced when given).
fn rewrite_profile(
    from: &Path,
    to: &Path,
    nodes: &[NodeRow],
    first: &str,
    shm: Option<&str>,
) -> Result<(), ServerError> {
    let mut t: toml::Table = fs::read_to_string(from)
        .map_err(io_err(format!("cannot read {}", from.display())))?
        .parse()
        .map_err(|e| refuse(format!("{}: {e}", from.display())))?;
    let mut ordered: Vec<&NodeRow> = nodes.iter().filter(|n| n.name == first).collect();
    ordered.extend(nodes.iter().filter(|n| n.name != first));
    for (section, pick) in [
        (
            "tcp",
            (|n: &NodeRow| n.tcp.clone()) as fn(&NodeRow) -> String,
        ),
        ("tls", |n: &NodeRow| n.tls.clone()),
        ("tls_psk", |n: &NodeRow| n.tls_psk.clone()),
    ] {
        let addrs: Vec<toml::Value> = ordered
            .iter()
            .map(|n| pick(n))
            .filter(|a| !a.is_empty())
            .map(toml::Value::String)
            .collect();
        if let Some(s) = t.get_mut(section).and_then(toml::Value::as_table_mut)
            && !addrs.is_empty()
        {
            s.insert("addr".into(), toml::Value::Array(addrs));
        }
    }
    if let Some(shm) = shm
        && let Some(s) = t.get_mut("shm").and_then(toml::Value::as_table_mut)
    {
        s.insert("socket".into(), toml::Value::String(shm.into()));
    }
    let text = format!(
        "# FerroHSM client profile (paths are relative to this file); every node of the \
         cluster, tried in turn\n\n{t}"
    );
    write_file(to, text.as_bytes(), 0o644)
}
