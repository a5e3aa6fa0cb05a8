//! Transport listeners: accept connections and hand each to [`crate::session::serve`]. A
//! listener only moves bytes and names the peer; identity and policy live in the session.

pub mod tcp;

use ferrohsm_proto::message::error_frame;
use ferrohsm_proto::{ErrorBody, Status};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Tells a refused peer why, in one error frame, then closes.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(mut wr: W, status: Status, message: &str) {
    let frame = error_frame(0, 0, &ErrorBody::new(status, message));
    let _ = wr.write_all(&frame.encode()).await;
    let _ = wr.shutdown().await;
}
