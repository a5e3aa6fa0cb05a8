//! The PostgreSQL backend: one database shared by every node, the same tables as SQLite
//! (docs/storage.md), `BIGINT` for every integer and `BYTEA` for every blob, and a schema
//! version in `ferrohsm_schema` with a migration list.
//!
//! Writes are serialised across every node by one transaction-scoped advisory lock, taken at
//! `BEGIN`: ids, labels, counters and the audit chain never race, exactly as under SQLite's
//! single writer, and each node still commits many changes per transaction (group commit).
//! Reads run in `REPEATABLE READ READ ONLY` transactions (one snapshot). Every statement is
//! bounded by `statement_timeout` and `lock_timeout` (`[store] timeout_ms`), and the socket by
//! `tcp_user_timeout`, so a database that stops answering fails a request instead of hanging
//! it. A connection that broke is replaced at the next transaction.
//!
//! No store call runs on a session thread: this is used only on the store threads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::{Client, Config, Statement};
use zeroize::Zeroizing;

use super::backend::{Backend, Tx};
use super::records::StoreError;

mod batch;
mod changes;
mod claim;
mod node;
mod nodes;
mod rows;
pub mod tls;

pub use node::NodeRow;

/// Schema migrations; `MIGRATIONS[i]` takes version i to i + 1.
const MIGRATIONS: &[&str] = &[
    // 1: the key store's tables (SQLite's schema 3).
    "
CREATE TABLE meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE owners (owner TEXT PRIMARY KEY, next_id BIGINT NOT NULL);
CREATE TABLE keys (
    owner TEXT NOT NULL,
    id BIGINT NOT NULL,
    label TEXT NOT NULL,
    key_type TEXT NOT NULL,
    usage BIGINT NOT NULL,
    exportable BIGINT NOT NULL,
    origin TEXT NOT NULL,
    created BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (owner, id),
    UNIQUE (owner, label)
);
CREATE INDEX keys_by_type ON keys (owner, key_type, id);
CREATE TABLE key_versions (
    owner TEXT NOT NULL,
    id BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created BIGINT NOT NULL,
    sealed BYTEA,
    PRIMARY KEY (owner, id, version)
);
CREATE TABLE grants (
    owner TEXT NOT NULL,
    id BIGINT NOT NULL,
    grantee TEXT NOT NULL,
    ops BIGINT NOT NULL,
    created BIGINT NOT NULL,
    tag BYTEA NOT NULL,
    PRIMARY KEY (owner, id, grantee)
);
CREATE TABLE counters (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    created BIGINT NOT NULL,
    tag BYTEA NOT NULL,
    PRIMARY KEY (owner, name)
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    time BIGINT NOT NULL,
    client TEXT NOT NULL,
    session BIGINT NOT NULL,
    transport TEXT NOT NULL,
    op TEXT NOT NULL,
    key TEXT NOT NULL,
    detail TEXT NOT NULL,
    status TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);
",
    "
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    tcp TEXT NOT NULL,
    tls TEXT NOT NULL,
    tls_psk TEXT NOT NULL,
    shm TEXT NOT NULL,
    registered BIGINT NOT NULL
);
",
    // 3: the change log every node follows (changes.rs).
    "
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    id BIGINT NOT NULL,
    grantee TEXT NOT NULL
);
",
    // 4: how many keys, counters and grants each owner holds, kept by triggers, so a quota
    // check reads one row instead of counting the owner's rows.
    "
CREATE TABLE held (
    owner TEXT NOT NULL,
    what TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (owner, what)
);
INSERT INTO held SELECT owner, 'keys', COUNT(*) FROM keys GROUP BY owner;
INSERT INTO held SELECT owner, 'counters', COUNT(*) FROM counters GROUP BY owner;
INSERT INTO held SELECT owner, 'grants', COUNT(*) FROM grants GROUP BY owner;
CREATE FUNCTION ferrohsm_held() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO held VALUES (NEW.owner, TG_ARGV[0], 1)
            ON CONFLICT (owner, what) DO UPDATE SET n = held.n + 1;
    ELSE
        UPDATE held SET n = n - 1 WHERE owner = OLD.owner AND what = TG_ARGV[0];
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keys_held AFTER INSERT OR DELETE ON keys
    FOR EACH ROW EXECUTE FUNCTION ferrohsm_held('keys');
CREATE TRIGGER counters_held AFTER INSERT OR DELETE ON counters
    FOR EACH ROW EXECUTE FUNCTION ferrohsm_held('counters');
CREATE TRIGGER grants_held AFTER INSERT OR DELETE ON grants
    FOR EACH ROW EXECUTE FUNCTION ferrohsm_held('grants');
",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock every write transaction holds ("FerroHSM" in ASCII).
const WRITE_LOCK: i64 = 0x4665_7272_6f48_534d;

/// Where the database is and how to reach it. The password is kept apart from the URL, and
/// nothing here prints it.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://USER@HOST:PORT/DB` (never with a password).
    pub url: String,
    /// From `HSMD_STORE_PASSWORD` or `[store] password_file`.
    pub password: Option<Zeroizing<String>>,
    /// Longest a statement, a lock wait or an unanswered socket may take.
    pub timeout: Duration,
    /// Longest one connection attempt may take.
    pub connect_timeout: Duration,
    /// Longest a cached key is used without the database confirming it.
    pub revalidate: Duration,
    /// This process in the change log: the node's name and a random part.
    pub instance: String,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("revalidate", &self.revalidate)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Default `[store] revalidate_ms`.
pub const DEFAULT_REVALIDATE: Duration = Duration::from_millis(1000);

/// This process's name in the change log: `node`, the process id and a random part (two
/// processes, even with the same node name, never take each other's changes for their own).
pub fn instance_name(node: &str) -> String {
    let mut r = [0u8; 8];
    if getrandom::fill(&mut r).is_err() {
        // Never all zeros: the clock's nanoseconds tell two processes apart just as well.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        r = t.to_le_bytes();
    }
    format!(
        "{node}/{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(r)
    )
}

/// Checks a store URL: `postgres://` or `postgresql://`, a user, a host, a database, and no
/// password. Answers the URL's description for messages (`USER@HOST:PORT/DB`).
pub fn check_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| "a store URL starts with postgres://".to_string())?;
    let (_, client_url) = tls::Tls::from_url(url)?;
    let config: Config = client_url
        .parse()
        .map_err(|_| "the store URL is not a valid postgres:// URL".to_string())?;
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    let what = format!("{user}@{host}:{port}/{db}");
    // The userinfo part, before the host: `user:password@`.
    let userinfo = rest.split(['/', '?']).next().unwrap_or("");
    if config.get_password().is_some()
        || userinfo
            .rsplit_once('@')
            .is_some_and(|(u, _)| u.contains(':'))
    {
        return Err(format!(
            "the store URL for {what} contains a password; remove it from the URL and give it \
             in HSMD_STORE_PASSWORD or [store] password_file (mode 0600)"
        ));
    }
    if user.is_empty() || host.is_empty() || db.is_empty() {
        return Err(format!(
            "the store URL {what} must name a user, a host and a database: \
             postgres://USER@HOST:PORT/DB"
        ));
    }
    Ok(what)
}

/// A connection to the database (made at the first transaction, and again after it broke).
pub struct PgBackend {
    settings: PgSettings,
    config: Config,
    what: String,
    client: Option<Client>,
    tls: tls::Connector,
    statements: HashMap<String, Statement>,
    // A transaction is open: a connection that breaks now is not replaced until it ends
    // (statements on a fresh connection would run outside the transaction and its lock).
    in_tx: bool,
    // The audit log's last entry, read with the write lock at `BEGIN` (batch.rs), until used.
    audit_head: Option<Option<(i64, Vec<u8>)>>,
    // Rows were written since the last savepoint mark; a statement of this transaction
    // failed (PostgreSQL then refuses everything until it ends).
    wrote: bool,
    tx_failed: bool,
    // Connections made so far, and the one that LISTENs (changes.rs).
    connections: u64,
    listening: Option<u64>,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("database", &self.what)
            .finish_non_exhaustive()
    }
}

fn refused(what: &str, e: &postgres::Error) -> StoreError {
    StoreError::Backend(format!("database {what}: {}", reason(e)))
}

/// What went wrong, in the database's own words (its message names the problem and never the
/// password), or the client library's with its cause (a refused or timed-out connection).
fn reason(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

impl PgBackend {
    fn new(settings: PgSettings) -> Result<PgBackend, StoreError> {
        let what = check_url(&settings.url).map_err(StoreError::Open)?;
        let (tls, url) = tls::Tls::from_url(&settings.url)
            .map_err(|e| StoreError::Open(format!("the store URL for {what}: {e}")))?;
        let connector = tls
            .connector()
            .map_err(|e| StoreError::Open(format!("TLS to the database {what}: {e}")))?;
        let mut config: Config = url
            .parse()
            .map_err(|_| StoreError::Open(format!("the store URL for {what} is not valid")))?;
        if let Some(p) = &settings.password {
            config.password(p.as_bytes());
        }
        // A reconnect while serving must fit in a request's time; the first connection at
        // start retries for `connect_timeout` in all (see `connect`).
        config
            .connect_timeout(settings.timeout.min(settings.connect_timeout))
            .tcp_user_timeout(settings.timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .application_name("hsmd");
        Ok(PgBackend {
            settings,
            config,
            what,
            client: None,
            tls: connector,
            statements: HashMap::new(),
            in_tx: false,
            audit_head: None,
            wrote: false,
            tx_failed: false,
            connections: 0,
            listening: None,
        })
    }

    /// Connects now, retrying until `within` has passed (a database still starting).
    pub fn connect(settings: PgSettings, within: Duration) -> Result<PgBackend, StoreError> {
        let mut b = PgBackend::new(settings)?;
        let deadline = Instant::now() + within;
        loop {
            match b.client() {
                Ok(_) => return Ok(b),
                Err(e) if Instant::now() >= deadline => {
                    return Err(StoreError::Open(format!(
                        "cannot reach the key store database {} within {} ms: {e}",
                        b.what,
                        within.as_millis()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Creates the schema in an empty database (refusing one that already holds a store).
    pub fn create(settings: PgSettings, within: Duration) -> Result<PgBackend, StoreError> {
        let mut b = PgBackend::connect(settings, within)?;
        if b.schema_version()?.is_some() {
            return Err(StoreError::Open(format!(
                "database {} already holds a FerroHSM key store; give an empty database (or \
                 hsmd init --force to write a config for the store that is there)",
                b.what
            )));
        }
        b.migrate(0)?;
        Ok(b)
    }

    /// Opens an existing store: refuses a database without the schema, or with a newer one;
    /// applies pending migrations.
    pub fn open(settings: PgSettings, within: Duration) -> Result<PgBackend, StoreError> {
        let mut b = PgBackend::connect(settings, within)?;
        match b.schema_version()? {
            None => Err(StoreError::Open(format!(
                "database {} is not a FerroHSM key store (no schema): create it with hsmd init \
                 --store-url",
                b.what
            ))),
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::Open(format!(
                "the key store in database {} has schema version {v}, newer than this hsmd \
                 understands ({SCHEMA_VERSION}); refusing to start (upgrade hsmd)",
                b.what
            ))),
            Some(v) => {
                b.migrate(v)?;
                Ok(b)
            }
        }
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() && self.in_tx {
            return Err(StoreError::Backend(format!(
                "database {}: the connection broke inside a transaction; nothing of it was \
                 committed",
                self.what
            )));
        }
        if self.client.is_none() {
            self.statements.clear();
            let mut c = self
                .config
                .connect(self.tls.clone())
                .map_err(|e| refused(&self.what, &e))?;
            let ms = self.settings.timeout.as_millis().max(1);
            // Every statement has an index to use; a plan made while a table was small (a new
            // store) would otherwise keep scanning it whole as it grows, until statistics
            // catch up.
            c.batch_execute(&format!(
                "SET statement_timeout = {ms}; SET lock_timeout = {ms}; \
                 SET idle_in_transaction_session_timeout = {}; SET enable_seqscan = off",
                ms.saturating_mul(10)
            ))
            .map_err(|e| refused(&self.what, &e))?;
            self.client = Some(c);
            self.connections += 1;
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Backend(format!("database {}: not connected", self.what)))
    }

    /// Runs statements that take no parameters.
    fn exec(&mut self, sql: &str) -> Result<(), StoreError> {
        let what = self.what.clone();
        let r = self.client()?.batch_execute(sql);
        r.map_err(|e| self.failed(&what, e))
    }

    /// The error, forgetting a connection that broke so the next transaction makes a new one.
    fn failed(&mut self, what: &str, e: postgres::Error) -> StoreError {
        if self.in_tx {
            self.tx_failed = true;
        }
        // Anything but an ordinary error of a statement may have left the connection unusable
        // (the server shut it down, the socket broke): it is not reused.
        let broken = e.is_closed()
            || self.client.as_ref().is_some_and(Client::is_closed)
            || e.as_db_error().is_none_or(|db| {
                let code = db.code().code();
                matches!(db.severity(), "FATAL" | "PANIC")
                    || code.starts_with("08")
                    || code.starts_with("57")
            });
        if broken {
            self.client = None;
        }
        refused(what, &e)
    }

    /// A prepared statement, prepared once per connection.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let what = self.what.clone();
        let r = self.client()?.prepare(sql);
        let s = r.map_err(|e| self.failed(&what, e))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn schema_version(&mut self) -> Result<Option<i32>, StoreError> {
        let what = self.what.clone();
        let c = self.client()?;
        let exists = c
            .query_one("SELECT to_regclass('ferrohsm_schema') IS NOT NULL", &[])
            .and_then(|r| r.try_get::<_, bool>(0))
            .map_err(|e| refused(&what, &e))?;
        if !exists {
            return Ok(None);
        }
        c.query_opt("SELECT version FROM ferrohsm_schema", &[])
            .and_then(|r| r.map(|r| r.try_get::<_, i32>(0)).transpose())
            .map_err(|e| refused(&what, &e))
    }

    /// Applies migrations from `from` in one transaction, under the write lock (two nodes
    /// starting together migrate once).
    fn migrate(&mut self, from: i32) -> Result<(), StoreError> {
        if from >= SCHEMA_VERSION {
            return Ok(());
        }
        self.tx_begin_with(Tx::Write, false)?;
        let r = (|| {
            // Another node may have migrated while this one waited for the lock.
            let now = self.schema_version()?.unwrap_or(0);
            if now >= SCHEMA_VERSION {
                return Ok(());
            }
            if now == 0 {
                self.exec("CREATE TABLE ferrohsm_schema (version INTEGER NOT NULL)")?;
                self.exec("INSERT INTO ferrohsm_schema (version) VALUES (0)")?;
            }
            for sql in &MIGRATIONS[now as usize..] {
                self.exec(sql)?;
            }
            self.exec(&format!(
                "UPDATE ferrohsm_schema SET version = {SCHEMA_VERSION}"
            ))
        })();
        match r {
            Ok(()) => self.commit(),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn tx_begin(&mut self, tx: Tx) -> Result<(), StoreError> {
        self.tx_begin_with(tx, true)
    }

    /// Begins a transaction; a write one reads the audit head too when `head` (not before
    /// the schema exists: migrations).
    fn tx_begin_with(&mut self, tx: Tx, head: bool) -> Result<(), StoreError> {
        // Never inside a transaction a failure left open.
        if self.in_tx {
            self.tx_rollback();
        }
        self.audit_head = None;
        let r = match tx {
            Tx::Read => {
                let sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
                match self.exec(sql) {
                    // The connection was found broken (the database restarted while it sat
                    // idle): nothing has been done yet, so begin once more on a new one.
                    Err(_) if self.client.is_none() => self.exec(sql),
                    r => r,
                }
            }
            Tx::Write => match self.begin_write(head) {
                Err(_) if self.client.is_none() => self.begin_write(head),
                r => r,
            },
        };
        // Open even when the lock was not granted: the caller rolls it back.
        self.in_tx = true;
        self.wrote = false;
        self.tx_failed = r.is_err();
        r
    }

    fn tx_commit(&mut self) -> Result<(), StoreError> {
        // COMMIT of a transaction that saw an error would answer ROLLBACK, not an error.
        if self.tx_failed {
            return Err(StoreError::Backend(format!(
                "database {}: a statement of this transaction failed; nothing was committed",
                self.what
            )));
        }
        let r = self.exec("COMMIT");
        if r.is_ok() {
            self.in_tx = false;
        }
        r
    }

    fn tx_rollback(&mut self) {
        self.in_tx = false;
        // A connection in an unknown state is not reused.
        if let Some(c) = self.client.as_mut()
            && (c.batch_execute("ROLLBACK").is_err() || c.is_closed())
        {
            self.client = None;
        }
    }
}

#[cfg(test)]
mod tests;
