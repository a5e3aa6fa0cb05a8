//! The plain TCP listener actor.

use std::sync::Arc;

use actix::{Actor, AsyncContext, Context, WrapFuture};
use ferrohsm_proto::Status;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::session::{Shared, serve};

/// Accepts TCP connections until shutdown.
pub struct TcpListenerActor {
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
}

impl std::fmt::Debug for TcpListenerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListenerActor").finish_non_exhaustive()
    }
}

impl TcpListenerActor {
    /// A listener over an already bound socket, allowing `max_connections` at once.
    pub fn new(listener: TcpListener, shared: Arc<Shared>, max_connections: usize) -> Self {
        TcpListenerActor {
            listener: Some(listener),
            shared,
            connections: Arc::new(Semaphore::new(max_connections)),
        }
    }
}

impl Actor for TcpListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let shared = self.shared.clone();
        let connections = self.connections.clone();
        let mut shutdown = shared.shutdown.clone();
        ctx.spawn(
            async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Small frames, request/response: latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    let (rd, wr) = stream.into_split();
                    match connections.clone().try_acquire_owned() {
                        Ok(slot) => serve(shared.clone(), rd, wr, format!("tcp:{peer}"), slot),
                        Err(_) => {
                            tracing::warn!(%peer, "connection limit reached; refusing");
                            actix::spawn(super::refuse(wr, Status::Busy, "too many connections"));
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}
