//! What commands share: the new-key arguments and their key spec, and the AAD argument.

use ferrohsm_proto::message::KeySpec;
use ferrohsm_proto::{KeyType, Label, UsageSet};

#[derive(Debug, clap::Args)]
pub(crate) struct NewKeyArgs {
    /// Label, unique among your keys.
    #[arg(long)]
    pub(crate) label: Label,
    /// Comma-separated usages (default: every usage that fits the type).
    #[arg(long)]
    pub(crate) usage: Option<UsageSet>,
    /// Allow `export` of the raw key.
    #[arg(long)]
    pub(crate) exportable: bool,
    /// Session key: deleted when the connection ends.
    #[arg(long)]
    pub(crate) session: bool,
}

pub(crate) fn spec(key_type: KeyType, a: NewKeyArgs) -> KeySpec {
    KeySpec {
        key_type,
        label: a.label,
        usage: a.usage,
        exportable: a.exportable,
        session: a.session,
    }
}

pub(crate) fn aad(a: Option<String>) -> Vec<u8> {
    a.map(String::into_bytes).unwrap_or_default()
}
