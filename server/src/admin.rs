//! Offline and online administration: `hsmd audit verify|show|checkpoint`, `hsmd backup` and
//! `hsmd restore`. Each works on the store a config names, and all but restore work while
//! `hsmd` is running (SQLite WAL: readers see one consistent snapshot while hsmd writes).

use std::path::Path;

use crate::error::ServerError;
use crate::keys::audit::{self, SignedHead};
use crate::keys::seal::Passphrase;
use crate::keys::store::Store;
use crate::keys::store::postgres::PgBackend;
use crate::keys::store::sqlite::SqliteBackend;
use crate::keys::{self, store::StoreError};
use crate::{Config, config::StoreConfig};

fn store_err(e: StoreError) -> ServerError {
    ServerError::Store(e.to_string())
}

fn store_of(config: &Config) -> Result<&StoreConfig, ServerError> {
    config
        .store
        .as_ref()
        .ok_or_else(|| ServerError::Config("no [store] section in the configuration".into()))
}

/// The audit public key: `D/audit.pub`, which must match the store's own copy (a store whose
/// key was replaced is refused).
fn audit_public(
    db: &Path,
    stored: Option<ed25519_dalek::VerifyingKey>,
) -> Result<ed25519_dalek::VerifyingKey, ServerError> {
    let file = keys::read_audit_pub(db).ok();
    match (file, stored) {
        (Some(f), Some(s)) if f != s => Err(ServerError::Store(format!(
            "{} does not match the key store's audit key: the store's audit key was replaced",
            keys::audit_pub_path(db).display()
        ))),
        (Some(f), _) => Ok(f),
        (None, Some(s)) => Ok(s),
        (None, None) => Err(ServerError::Store(
            "the key store has no audit key yet (start hsmd once to create it)".into(),
        )),
    }
}

/// `hsmd audit verify`: checks every entry, the signed head, and (given) a checkpoint.
pub fn audit_verify(config: &Config, checkpoint: Option<&Path>) -> Result<String, ServerError> {
    let st = store_of(config)?;
    let checkpoint = checkpoint
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| {
                ServerError::Store(format!("cannot read checkpoint {}: {e}", p.display()))
            })?;
            SignedHead::from_checkpoint(&text)
                .map_err(|e| ServerError::Store(format!("{}: {e}", p.display())))
        })
        .transpose()?;
    let mut s = keys::open_configured(st)?;
    let (rows, head, stored) = s.audit_snapshot(1).map_err(store_err)?;
    let public = audit_public(&st.path, stored)?;
    let v = audit::verify(rows, head.as_ref(), &public, checkpoint.as_ref())
        .map_err(|b| ServerError::Store(b.to_string()))?;
    let mut out = format!(
        "audit chain ok: {} entries, head {}, signed by the audit key",
        v.entries,
        audit::hex(&v.head)
    );
    if let Some(c) = checkpoint {
        out.push_str(&format!(
            "; the checkpoint at entry {} is in the log",
            c.seq
        ));
    }
    Ok(out)
}

/// `hsmd audit show`: every entry from `since`, as lines or a JSON array.
pub fn audit_show(config: &Config, since: u64, json: bool) -> Result<String, ServerError> {
    let st = store_of(config)?;
    let mut s = keys::open_configured(st)?;
    let (rows, _, _) = s.audit_snapshot(since).map_err(store_err)?;
    Ok(if json {
        serde_json::Value::Array(rows.iter().map(|r| r.to_json()).collect()).to_string()
    } else {
        rows.iter()
            .map(|r| r.to_line())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// `hsmd audit checkpoint`: the head, signed now by the audit key (needs the master key).
pub fn audit_checkpoint(config: &Config, pass: Option<&Passphrase>) -> Result<String, ServerError> {
    let st = store_of(config)?;
    let st = StoreConfig {
        passphrase: pass.cloned(),
        ..st.clone()
    };
    let unlock = keys::unlock_configured(&st)?;
    let (mut s, master) = keys::unlock_store(keys::open_configured(&st)?, &unlock)?;
    let head = s.sign_head(&master).map_err(store_err)?;
    Ok(head.to_checkpoint().trim_end().to_string())
}

fn create_private(path: &Path) -> Result<std::fs::File, ServerError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ServerError::Io {
            context: format!("cannot create {}", path.display()),
            source: e,
        })
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
}

/// `hsmd backup`: a consistent snapshot of the whole store (still sealed under the master
/// key) written to `out`, which must not exist; hsmd may be running.
pub fn backup(config: &Config, out: &Path) -> Result<String, ServerError> {
    let st = store_of(config)?;
    if out.exists() {
        return Err(ServerError::Store(format!(
            "{} already exists; a backup never overwrites a file",
            out.display()
        )));
    }
    let written = match &st.postgres {
        // The same portable file: an SQLite store, 0600, filled from one snapshot of the
        // database, row for row (still sealed under the master key).
        Some(_) => (|| {
            let mut src = keys::open_configured(st)?;
            let mut dst = Store::new(Box::new(SqliteBackend::create(out).map_err(store_err)?));
            src.copy_into(&mut dst).map_err(store_err)?;
            Ok(())
        })(),
        None => (|| {
            let mut s = SqliteBackend::open(&st.path).map_err(store_err)?;
            // An empty 0600 file: VACUUM INTO fills it, and the backup is never
            // world-readable.
            drop(create_private(out)?);
            s.backup_to(out).map_err(store_err)
        })(),
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    std::fs::File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|e| ServerError::Io {
            context: format!("cannot sync {}", out.display()),
            source: e,
        })?;
    sync_dir(out);
    let mut b = keys::open_sqlite(out)?;
    let (rows, _, _) = b.audit_snapshot(0).map_err(store_err)?;
    Ok(format!(
        "hsmd: backup of {} written to {} (audit log at entry {}); the same master key file \
         or passphrase opens it",
        st.describe(),
        out.display(),
        rows.last().map_or(0, |r| r.seq)
    ))
}

/// `hsmd restore`: puts backup `input` in place as the store of `config`, refusing if that
/// store exists; checks first that the backup is whole, that this config's key file or
/// passphrase opens it, and that its audit chain verifies.
pub fn restore(
    config: &Config,
    input: &Path,
    pass: Option<&Passphrase>,
) -> Result<String, ServerError> {
    let st = store_of(config)?;
    let db = &st.path;
    let wal = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    if db.exists() || wal("-wal").exists() {
        return Err(ServerError::Store(format!(
            "{} already holds a key store; restore never replaces one (restore into a new data \
             directory, or move the old store away first)",
            db.display()
        )));
    }
    if !input.is_file() {
        return Err(ServerError::Store(format!(
            "backup {} does not exist",
            input.display()
        )));
    }
    let tmp = wal(".restore-tmp");
    // What an interrupted restore left, its WAL too: SQLite would replay a stale WAL into the
    // new copy.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(wal(&format!(".restore-tmp{suffix}")));
    }
    let result = (|| {
        let mut f = create_private(&tmp)?;
        let mut src = std::fs::File::open(input).map_err(|e| ServerError::Io {
            context: format!("cannot read {}", input.display()),
            source: e,
        })?;
        std::io::copy(&mut src, &mut f)
            .and_then(|_| f.sync_all())
            .map_err(|e| ServerError::Io {
                context: format!("cannot write {}", tmp.display()),
                source: e,
            })?;
        drop(f);
        let unlock = keys::unlock_for(db, st.key_file.as_deref(), pass)?;
        let (mut s, master) = keys::open_store(&tmp, &unlock)
            .map_err(|e| ServerError::Store(format!("backup {}: {e}", input.display())))?;
        let (rows, head, public) = s.audit_snapshot(1).map_err(store_err)?;
        let public = public.ok_or_else(|| {
            ServerError::Store(format!("backup {} has no audit key", input.display()))
        })?;
        let v = audit::verify(rows, head.as_ref(), &public, None).map_err(|b| {
            ServerError::Store(format!(
                "backup {}: {b}; refusing to restore it",
                input.display()
            ))
        })?;
        let public = s.ensure_audit_key(&master).map_err(store_err)?;
        if let Some(pg) = &st.postgres {
            // Into the database `hsmd init --store-url` prepared, which must hold nothing yet.
            let b = PgBackend::open(pg.clone(), pg.connect_timeout).map_err(store_err)?;
            s.copy_into(&mut Store::new(Box::new(b)))
                .map_err(store_err)?;
            drop(s);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(wal(&format!(".restore-tmp{suffix}")));
            }
            keys::write_audit_pub(db, &public)?;
            return Ok(v.entries);
        }
        drop(s);
        // Only the main file: the backup was checkpointed into it by the open above.
        std::fs::rename(&tmp, db).map_err(|e| ServerError::Io {
            context: format!("cannot move the restored store to {}", db.display()),
            source: e,
        })?;
        for suffix in ["-wal", "-shm"] {
            let side = wal(&format!(".restore-tmp{suffix}"));
            if side.exists() {
                let _ = std::fs::rename(&side, wal(suffix));
            }
        }
        sync_dir(db);
        keys::write_audit_pub(db, &public)?;
        Ok(v.entries)
    })();
    match result {
        Ok(entries) => Ok(format!(
            "hsmd: restored {} into {} (audit chain verified, {entries} entries)",
            input.display(),
            st.describe()
        )),
        Err(e) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(wal(&format!(".restore-tmp{suffix}")));
            }
            Err(e)
        }
    }
}
