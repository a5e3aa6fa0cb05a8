//! This process's claim to serve a database (`hsm-store-claim`).

use std::time::{Duration, Instant};

use postgres::Client;

use super::{PgBackend, PgSettings, refused};
use crate::keys::store::records::StoreError;

/// The advisory lock every serving node holds, shared ("FerroSRV"); an earlier version held it
/// alone.
const SERVE_LOCK: i64 = 0x4665_7272_6f53_5256;

impl PgBackend {
    /// This process's claim to serve the database: a connection holding the serve lock
    /// *shared*, kept for the node's life. Every node of this version holds it shared; an
    /// `hsmd` of an earlier version held it alone and wrote no change log, so the two never
    /// serve one database at once (neither could invalidate the other's cache).
    pub fn claim(settings: PgSettings, within: Duration) -> Result<Client, StoreError> {
        let mut b = PgBackend::connect(settings, within)?;
        b.try_claim()
    }

    /// Holds the claim for the node's life: every half second the claim's connection is
    /// checked; when it broke (the database restarted, or ended it), the claim is taken again.
    /// If an earlier hsmd took it alone meanwhile and keeps it for `connect_timeout`, this
    /// process stops (exit 1) rather than serve beside it.
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
            .and_then(|()| c.query_one("SELECT pg_try_advisory_lock_shared($1)", &[&SERVE_LOCK]))
            .and_then(|r| r.try_get::<_, bool>(0))
            .map_err(|e| refused(&what, &e))?;
        if !held {
            return Err(StoreError::Open(format!(
                "the key store in database {what} is served by an hsmd of an earlier version, \
                 which holds it alone and does not tell other nodes what it changes; stop it \
                 (or upgrade it) first"
            )));
        }
        Ok(c)
    }
}
