//! The cluster in the database: the nodes registered by `hsmd init`, and the claim a serving
//! node holds (one node per database until nodes invalidate each other's caches).

use std::time::{Duration, Instant};

use postgres::Client;

use super::{PgBackend, PgSettings, refused};
use crate::keys::store::StoreError;
use crate::keys::store::backend::{Backend, Tx};

/// The advisory lock a serving node holds for its whole life ("FerroSRV").
const SERVE_LOCK: i64 = 0x4665_7272_6f53_5256;

/// A node of the cluster, as registered in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// `[server] node`.
    pub name: String,
    /// Listener addresses clients use ("" when the node has none).
    pub tcp: String,
    /// Certificate TLS.
    pub tls: String,
    /// TLS-PSK.
    pub tls_psk: String,
    /// Shared-memory socket path (per host).
    pub shm: String,
    /// Seconds since the Unix epoch.
    pub registered: i64,
}

impl PgBackend {
    /// This process's claim to serve the database: a connection holding a session advisory
    /// lock, kept for the node's life. Until nodes invalidate each other's caches, a second
    /// `hsmd` on the same database is refused (it could serve a key another node deleted).
    pub fn claim(settings: PgSettings, within: Duration) -> Result<Client, StoreError> {
        let mut b = PgBackend::connect(settings, within)?;
        b.try_claim()
    }

    /// Holds the claim for the node's life: every half second the claim's connection is
    /// checked; when it broke (the database restarted, or ended it), the claim is taken again.
    /// If another hsmd took it meanwhile and keeps it for `connect_timeout`, this process
    /// stops (exit 1) rather than serve beside it from a cache the other cannot invalidate.
    pub fn hold_claim(
        settings: PgSettings,
        mut claim: Client,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        use std::sync::atomic::Ordering;
        std::thread::Builder::new()
            .name("hsm-store-claim".into())
            .spawn(move || {
                let mut taken_since: Option<Instant> = None;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    if claim.is_valid(settings.timeout).is_ok() {
                        continue;
                    }
                    let Ok(mut b) = PgBackend::new(settings.clone()) else {
                        continue;
                    };
                    match b.client().map(|_| ()).and_then(|()| b.try_claim()) {
                        Ok(c) => {
                            if taken_since.take().is_some() {
                                tracing::info!(database = %b.what, "serve claim taken again");
                            }
                            claim = c;
                        }
                        Err(StoreError::Open(m)) => {
                            let since = *taken_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= settings.connect_timeout {
                                tracing::error!(database = %b.what, "{m}; stopping");
                                eprintln!("hsmd: {m}; stopping");
                                std::process::exit(1);
                            }
                        }
                        // The database is away: nothing can be written meanwhile.
                        Err(_) => {}
                    }
                }
            })
    }

    fn try_claim(&mut self) -> Result<Client, StoreError> {
        let b = self;
        let what = b.what.clone();
        let mut c = b
            .client
            .take()
            .ok_or_else(|| StoreError::Backend(format!("database {what}: not connected")))?;
        // No statement timeout on this connection: it only holds the lock.
        let held = c
            .batch_execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
            .and_then(|()| c.query_one("SELECT pg_try_advisory_lock($1)", &[&SERVE_LOCK]))
            .and_then(|r| r.try_get::<_, bool>(0))
            .map_err(|e| refused(&what, &e))?;
        if !held {
            return Err(StoreError::Open(format!(
                "the key store in database {what} is already served by another hsmd; this \
                 version serves one database from one node at a time"
            )));
        }
        Ok(c)
    }

    /// Registers a node (at `hsmd init`); a name already registered is refused, unless
    /// `replace` (`init --force` of that node), which updates its addresses.
    pub fn register_node(&mut self, node: &NodeRow, replace: bool) -> Result<(), StoreError> {
        self.begin(Tx::Write)?;
        let r = (|| {
            let taken = self.query("SELECT 1 FROM nodes WHERE name = $1", &[&node.name])?;
            if !taken.is_empty() && replace {
                self.execute("DELETE FROM nodes WHERE name = $1", &[&node.name])?;
            } else if !taken.is_empty() {
                return Err(StoreError::Open(format!(
                    "a node named {} is already registered in database {}; give this one \
                     another name (--node NAME)",
                    node.name, self.what
                )));
            }
            self.execute(
                "INSERT INTO nodes (name, tcp, tls, tls_psk, shm, registered) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &node.name,
                    &node.tcp,
                    &node.tls,
                    &node.tls_psk,
                    &node.shm,
                    &node.registered,
                ],
            )?;
            Ok(())
        })();
        match r {
            Ok(()) => self.commit(),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Every registered node, by name.
    pub fn nodes(&mut self) -> Result<Vec<NodeRow>, StoreError> {
        let rows = self.query(
            "SELECT name, tcp, tls, tls_psk, shm, registered FROM nodes ORDER BY name",
            &[],
        )?;
        self.rows(rows, |r| {
            Ok(NodeRow {
                name: r.try_get(0)?,
                tcp: r.try_get(1)?,
                tls: r.try_get(2)?,
                tls_psk: r.try_get(3)?,
                shm: r.try_get(4)?,
                registered: r.try_get(5)?,
            })
        })
    }
}
