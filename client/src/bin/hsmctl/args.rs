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

/// An ML-DSA context string, given in hex (`--context HEX`): an even number of hex digits,
/// either case, no `0x`, at most 255 bytes; empty is the same as none.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context(pub(crate) Vec<u8>);

impl std::str::FromStr for Context {
    type Err = String;
    fn from_str(s: &str) -> Result<Context, String> {
        if !s.len().is_multiple_of(2) {
            return Err(format!(
                "a context is an even number of hex digits; {:?} has {}",
                s.chars().take(16).collect::<String>(),
                s.len()
            ));
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .filter(|_| s.as_bytes()[i].is_ascii_hexdigit())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| {
                "a context is hex digits only (0-9, a-f, A-F; no 0x prefix)".to_string()
            })?;
        if bytes.len() > ferrohsm_proto::MAX_CONTEXT {
            return Err(format!(
                "a context is at most {} bytes; this one has {}",
                ferrohsm_proto::MAX_CONTEXT,
                bytes.len()
            ));
        }
        Ok(Context(bytes))
    }
}

pub(crate) fn context(c: Option<Context>) -> Vec<u8> {
    c.map(|c| c.0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::Context;

    #[test]
    fn contexts_parse_as_the_contract_says() {
        let ok = |s: &str| s.parse::<Context>().unwrap().0;
        assert_eq!(ok(""), Vec::<u8>::new());
        assert_eq!(ok("00ff"), vec![0, 255]);
        assert_eq!(ok("ABcd"), vec![0xab, 0xcd]);
        assert_eq!(ok(&"ab".repeat(255)).len(), 255);
        for bad in ["0", "0x00", "zz", "+1", "-1", " 1", "é1", &"ab".repeat(256)] {
            assert!(bad.parse::<Context>().is_err(), "{bad:?}");
        }
    }
}
