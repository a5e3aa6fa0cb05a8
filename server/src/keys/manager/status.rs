//! `hsmctl status`: this node's name, version, uptime, whether its store answers, and its open
//! sessions per transport. It answers within the store's timeout even when the store does not.

use ferrohsm_proto::message::NodeStatus;

use super::KeyManager;
use crate::keys::store::Store;

impl KeyManager {
    /// The node's status; the store is asked for one read, and reported unreachable if it
    /// does not answer within its timeout (the answer never waits longer).
    pub async fn status(&self) -> NodeStatus {
        let n = &self.node;
        let read = self.store.read(|s: &mut Store, _| s.ping());
        let reachable = matches!(
            tokio::time::timeout(n.store_timeout, read).await,
            Ok(Ok(()))
        );
        NodeStatus {
            node: n.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: n.started.elapsed().as_secs(),
            store_backend: n.backend.to_string(),
            store_reachable: reachable,
            sessions: n.sessions(),
        }
    }
}
