//! The cluster in the database: the nodes registered by `hsmd init`.

use super::PgBackend;
use super::node::NodeRow;
use crate::keys::store::backend::{Backend, Tx};
use crate::keys::store::records::StoreError;

impl PgBackend {
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
