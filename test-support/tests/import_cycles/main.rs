//! No import cycle anywhere in the workspace, counted file by file: two source files that
//! import each other, directly or around a loop (a child module using its parent's items
//! counts). Std only: a small lexer finds `mod` declarations, `use` trees and inline paths
//! (`crate::`, `super::`, `self::`, a child module's, an imported name's, another workspace
//! crate's), each is resolved to the deepest module file it names, and Tarjan's algorithm
//! finds the strongly connected components of the file graph. Declaring `mod x;` is not an
//! edge; `pub use` re-exports are not chased. Out of scope: `tests/`, benches, `tests.rs`
//! files and every `#[cfg(test)]` item.
#![allow(clippy::unwrap_used)]

pub(crate) use std::collections::{BTreeMap, HashMap};
pub(crate) use std::fs;
pub(crate) use std::path::{Path, PathBuf};

mod crates;
mod graph;
mod lex;
mod scan;
mod scc;

pub(crate) use crates::*;
pub(crate) use graph::*;
pub(crate) use lex::*;
pub(crate) use scan::*;
pub(crate) use scc::*;

/// Tokens: an identifier, `::` or one punctuation character; with its line.
pub(crate) type Toks = [(String, usize)];

#[test]
fn no_import_cycles_between_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let g = build(root);
    let (files, edges) = (g.files.len(), g.edges.len());
    assert!(
        files > 20 && edges > 20,
        "the scan found too little: {files} files, {edges} edges"
    );
    let cycles: Vec<String> = find_cycles(&g)
        .iter()
        .map(|c| report(root, &g, c))
        .collect();
    assert!(
        cycles.is_empty(),
        "{} import cycle(s) between files ({files} files scanned); break one edge of each:\n\n{}",
        cycles.len(),
        cycles.join("\n")
    );
}

// ---------- the checker itself, on tiny fake workspaces ----------

/// The cycles and edges of a fake workspace made of (path, contents), as relative paths.
fn analyze_fake(tag: &str, files: &[(&str, &str)]) -> (Vec<Vec<String>>, Vec<(String, String)>) {
    let root = std::env::temp_dir().join(format!("import-cycles-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for (path, text) in files {
        fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        fs::write(root.join(path), text).unwrap();
    }
    let g = build(&root);
    let rel = |f: usize| rel(&root, &g, f);
    let cycles = find_cycles(&g)
        .iter()
        .map(|c| c.iter().map(|&f| rel(f)).collect())
        .collect();
    let edges = g.edges.keys().map(|&(a, b)| (rel(a), rel(b))).collect();
    fs::remove_dir_all(&root).unwrap();
    (cycles, edges)
}

#[test]
fn checker_finds_cycles_and_only_cycles() {
    let mut files = vec![
        (
            "Cargo.toml",
            "[workspace]\nmembers = [\n  \"fake\",\n]\nexclude = [\"fuzz\"]\n",
        ),
        ("fake/Cargo.toml", "[package]\nname = \"fake-crate\"\n"),
        (
            "fake/src/lib.rs",
            "pub mod parent;\nmod a;\nmod b;\nmod c;\n",
        ),
        (
            "fake/src/main.rs",
            "use fake_crate::parent::f;\nfn main() { f() }\n",
        ),
        (
            "fake/src/parent/mod.rs",
            "mod child;\nmod sib;\n#[cfg(test)]\nmod tests;\npub struct Item;\npub fn f() { child::g(); }\n",
        ),
        ("fake/src/parent/sib.rs", "pub struct S;\n"),
        (
            "fake/src/parent/tests.rs",
            "use super::*;\nuse crate::parent::child::g;\n",
        ),
        (
            "fake/src/parent/child.rs",
            "use super::Item;\npub fn g() -> Option<Item> { None }\n",
        ),
        // A loop of three: a grouped use, an inline path, a renamed `self`.
        (
            "fake/src/a.rs",
            "use crate::{b::{Bee, self}};\npub struct A;\n",
        ),
        (
            "fake/src/b.rs",
            "pub struct Bee;\npub fn f() { let _ = crate::c::C; }\n",
        ),
        (
            "fake/src/c.rs",
            "use super::a::{self as alpha};\npub struct C(alpha::A);\n",
        ),
    ];
    let (cycles, edges) = analyze_fake("cycle", &files);
    let want = [
        vec!["fake/src/a.rs", "fake/src/b.rs", "fake/src/c.rs"],
        vec!["fake/src/parent/child.rs", "fake/src/parent/mod.rs"],
    ];
    assert_eq!(cycles, want, "edges: {edges:?}");
    assert!(edges.contains(&("fake/src/main.rs".into(), "fake/src/parent/mod.rs".into())));
    assert!(
        !edges.iter().any(|e| e.0.ends_with("tests.rs")),
        "{edges:?}"
    );

    // The child uses only its sibling: its parent's names are only in comments, literals and a
    // test module. No cycle, though the parent -> child and child -> sibling edges are seen.
    files[7].1 = "use super::sib::S;\n/// Unlike [`crate::parent::Item`].\npub fn g() -> Option<S> {\n    /* super::Item */ let _ = (\"crate::parent::Item\", '{', r#\"super::Item\"#);\n    None\n}\n#[cfg(test)]\nmod tests {\n    use super::super::*;\n    fn t() { let _ = crate::parent::Item; }\n}\n";
    files[9].1 = "pub struct Bee;\n";
    let (cycles, edges) = analyze_fake("clean", &files);
    assert!(cycles.is_empty(), "{cycles:?}");
    for (a, b) in [
        ("parent/mod.rs", "parent/child.rs"),
        ("parent/child.rs", "parent/sib.rs"),
        ("c.rs", "a.rs"),
    ] {
        let want = (format!("fake/src/{a}"), format!("fake/src/{b}"));
        assert!(edges.contains(&want), "missing {want:?} in {edges:?}");
    }
}
