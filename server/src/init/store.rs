//! `[store]` of a new data directory: the key store created (SQLite in `D/keys.db`, or the
//! schema in a PostgreSQL database) with a new master key, or an existing one kept as it is.

use std::path::Path;

use super::{write_file, write_new};
use crate::error::ServerError;
use crate::keys::seal::{KeyFileSecret, Passphrase, Unlock};

/// What wraps a new store's master key: the passphrase, else `D/master.key` (made if missing).
fn new_unlock(key_file: &Path, passphrase: Option<&Passphrase>) -> Result<Unlock, ServerError> {
    match passphrase {
        Some(p) if p.is_empty() => Err(ServerError::Init("the passphrase is empty".into())),
        Some(p) => Ok(Unlock::Passphrase(p.clone())),
        None if key_file.exists() => Ok(Unlock::KeyFile(crate::keys::read_key_file(key_file)?)),
        None => {
            let k = KeyFileSecret::generate().map_err(|e| ServerError::Init(e.to_string()))?;
            write_new(key_file, k.to_text().as_bytes(), 0o600)?;
            Ok(Unlock::KeyFile(k))
        }
    }
}

/// The `[store]` line that says what wraps the master key.
fn protection(uses_key_file: bool) -> &'static str {
    if uses_key_file {
        "key_file = \"master.key\"       # wraps the master key (development); keep it 0600\n"
    } else {
        "# no key_file: a passphrase wraps the master key (HSMD_PASSPHRASE or --passphrase-file)\n"
    }
}

/// The key store in a PostgreSQL database: its schema created with a new master key (or,
/// with `force`, a store already there kept as it is), the database password (from
/// `HSMD_STORE_PASSWORD`) kept in `D/store.password` (0600), and the `[store]` section.
pub(super) fn postgres_store(
    dir: &Path,
    url: &str,
    passphrase: Option<&Passphrase>,
    force: bool,
    node: &crate::keys::store::postgres::NodeRow,
) -> Result<String, ServerError> {
    use crate::config::store::{DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, password_from_env};
    use crate::keys::store::postgres::{PgBackend, PgSettings, check_url};
    check_url(url).map_err(|e| ServerError::Init(format!("--store-url: {e}")))?;
    let password = password_from_env().map_err(ServerError::Init)?;
    let pg = PgSettings {
        url: url.to_string(),
        password: password.clone(),
        timeout: std::time::Duration::from_millis(DEFAULT_TIMEOUT_MS),
        connect_timeout: std::time::Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
        revalidate: crate::keys::store::postgres::DEFAULT_REVALIDATE,
        instance: crate::keys::store::postgres::instance_name(&node.name),
    };
    let key_file = dir.join("master.key");
    let store_err = |e: crate::keys::store::StoreError| ServerError::Init(e.to_string());
    let existing = if force {
        match PgBackend::open(pg.clone(), pg.connect_timeout) {
            Ok(b) => Some(crate::keys::store_kdf(crate::keys::store::Store::new(
                Box::new(b),
            ))?),
            Err(crate::keys::store::StoreError::Open(m)) if m.contains("(no schema)") => None,
            Err(e) => return Err(store_err(e)),
        }
    } else {
        None
    };
    let uses_key_file = match existing {
        Some("keyfile") if passphrase.is_some() => {
            return Err(ServerError::Init(format!(
                "the database {} already holds a store protected by a key file; --force keeps \
                 it as it is, so the passphrase cannot be applied to it",
                pg.url
            )));
        }
        Some(kdf) => kdf == "keyfile",
        None => {
            let unlock = new_unlock(&key_file, passphrase)?;
            let public = crate::keys::create_postgres(&pg, &unlock)?;
            crate::keys::write_audit_pub(&dir.join("keys.db"), &public)?;
            passphrase.is_none()
        }
    };
    // Registered with its addresses (with `force`, its entry is replaced).
    PgBackend::connect(pg.clone(), pg.connect_timeout)
        .and_then(|mut b| b.register_node(node, force))
        .map_err(store_err)?;
    let password_line = match &password {
        Some(p) => {
            let f = dir.join("store.password");
            write_file(&f, format!("{}\n", p.as_str()).as_bytes(), 0o600)?;
            "password_file = \"store.password\"   # the database password (0600); HSMD_STORE_PASSWORD overrides it\n"
        }
        None => "",
    };
    Ok(format!(
        "[store]\nurl = {}\n{password_line}{}\
         timeout_ms = {DEFAULT_TIMEOUT_MS}          # a request that needs the database fails (store_failed) within it\n\
         connect_timeout_ms = {DEFAULT_CONNECT_TIMEOUT_MS}  # at start, hsmd retries the database this long, then exits 1\n\
         cache_keys = 4096         # opened keys kept in memory\n\n",
        toml::Value::String(url.to_string()),
        protection(uses_key_file)
    ))
}

/// The key store: created unless it exists (an existing one is never touched), and the
/// `[store]` section that opens it.
pub(super) fn store(dir: &Path, passphrase: Option<&Passphrase>) -> Result<String, ServerError> {
    let db = dir.join("keys.db");
    let key_file = dir.join("master.key");
    let uses_key_file = if db.exists() {
        let key_file_store = crate::keys::store_kdf(crate::keys::open_sqlite(&db)?)? == "keyfile";
        if key_file_store && passphrase.is_some() {
            return Err(ServerError::Init(format!(
                "{} already exists and is protected by the key file {}; --force keeps an \
                 existing store as it is, so the passphrase cannot be applied to it (turning a \
                 key-file store into a passphrase store is not supported yet)",
                db.display(),
                key_file.display()
            )));
        }
        key_file_store
    } else {
        let unlock = new_unlock(&key_file, passphrase)?;
        crate::keys::create_store(&db, &unlock)?;
        passphrase.is_none()
    };
    Ok(format!(
        "[store]\npath = \"keys.db\"\n{}cache_keys = 4096         # opened keys kept in memory\n\n",
        protection(uses_key_file)
    ))
}
