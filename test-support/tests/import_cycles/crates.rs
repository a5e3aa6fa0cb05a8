//! The workspace's crates and the root files of their libraries and binaries.

use crate::*;

pub(crate) fn quoted(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// The quoted value of `key = "..."` in every `[section]` or `[[section]]` table.
pub(crate) fn toml_values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = "";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']');
        } else if let Some((k, v)) = line.split_once('=')
            && current == section
            && k.trim() == key
        {
            out.extend(quoted(v).into_iter().take(1));
        }
    }
    out
}

/// Each workspace member's library name (as other crates spell it) and root files: the
/// library (flagged `true`), then every binary.
pub(crate) fn discover_crates(root: &Path) -> Vec<(String, Vec<(PathBuf, bool)>)> {
    let ws = fs::read_to_string(root.join("Cargo.toml")).expect("workspace Cargo.toml");
    let members = ws.split_once("members").map_or("", |(_, a)| a);
    let members = members
        .split_once('[')
        .map_or("", |(_, a)| a.split(']').next().unwrap());
    let mut crates = Vec::new();
    for dir in quoted(members).iter().map(|m| root.join(m)) {
        let Ok(text) = fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let package = toml_values(&text, "package", "name")
            .pop()
            .unwrap_or_default();
        let name = toml_values(&text, "lib", "name").pop();
        let lib = toml_values(&text, "lib", "path")
            .pop()
            .unwrap_or("src/lib.rs".into());
        let mut roots = vec![(dir.join(lib), true)];
        let mut bins: Vec<PathBuf> = toml_values(&text, "bin", "path")
            .iter()
            .map(|p| dir.join(p))
            .collect();
        bins.push(dir.join("src/main.rs"));
        for p in fs::read_dir(dir.join("src/bin"))
            .into_iter()
            .flatten()
            .flatten()
        {
            bins.push(if p.path().is_dir() {
                p.path().join("main.rs")
            } else {
                p.path()
            });
        }
        bins.sort();
        bins.dedup();
        roots.extend(bins.into_iter().map(|b| (b, false)));
        roots.retain(|(p, _)| p.is_file() && p.extension().is_some_and(|e| e == "rs"));
        crates.push((name.unwrap_or(package.replace('-', "_")), roots));
    }
    crates
}
