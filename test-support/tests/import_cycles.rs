//! No import cycle anywhere in the workspace, counted file by file: two source files that
//! import each other, directly or around a loop (a child module using its parent's items
//! counts). Std only: a small lexer finds `mod` declarations, `use` trees and inline paths
//! (`crate::`, `super::`, `self::`, a child module's, an imported name's, another workspace
//! crate's), each is resolved to the deepest module file it names, and Tarjan's algorithm
//! finds the strongly connected components of the file graph. Declaring `mod x;` is not an
//! edge; `pub use` re-exports are not chased. Out of scope: `tests/`, benches, `tests.rs`
//! files and every `#[cfg(test)]` item.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// Tokens: an identifier, `::` or one punctuation character; with its line.
type Toks = [(String, usize)];

// ---------- crates and their root files ----------

fn quoted(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// The quoted value of `key = "..."` in every `[section]` or `[[section]]` table.
fn toml_values(text: &str, section: &str, key: &str) -> Vec<String> {
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
fn discover_crates(root: &Path) -> Vec<(String, Vec<(PathBuf, bool)>)> {
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

// ---------- lexing ----------

/// The end of a raw string (`r"`, `r#"`, `br"`, `cr"`) starting at `i`, if one does.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i + usize::from(c[i] == 'b' || c[i] == 'c');
    let hashes = c.get(j + 1..)?.iter().take_while(|&&h| h == '#').count();
    if c[j] != 'r' || c.get(j + 1 + hashes) != Some(&'"') {
        return None;
    }
    j += hashes + 2;
    let closes = |j: usize| c[j] == '"' && c[j + 1..].iter().take(hashes).all(|&h| h == '#');
    Some(
        (j..c.len())
            .find(|&j| closes(j))
            .map_or(c.len(), |j| j + 1 + hashes),
    )
}

/// The tokens of a source file; comments (doc comments too), literals and numbers dropped.
fn lex(src: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        let start = i;
        if c[i] == '/' && at(i + 1) == '/' {
            i += c[i..].iter().take_while(|&&x| x != '\n').count();
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                match (c[i], at(i + 1)) {
                    ('/', '*') => (depth, i) = (depth + 1, i + 2),
                    ('*', '/') if depth == 1 => {
                        i += 2;
                        break;
                    }
                    ('*', '/') => (depth, i) = (depth - 1, i + 2),
                    _ => i += 1,
                }
            }
        } else if let Some(end) = "bcr"
            .contains(c[i])
            .then(|| raw_string_end(&c, i))
            .flatten()
        {
            i = end;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c[i] == '\'' && at(i + 1) == '\\' {
            i = (i + 3..c.len())
                .find(|&j| c[j] == '\'')
                .map_or(c.len(), |j| j + 1);
        } else if c[i] == '\'' && at(i + 2) == '\'' {
            i += 3; // a char literal, not a lifetime
        } else if c[i].is_alphanumeric() || c[i] == '_' {
            i += c[i..]
                .iter()
                .take_while(|x| x.is_alphanumeric() || **x == '_')
                .count();
            if !c[start].is_ascii_digit() {
                out.push((c[start..i].iter().collect(), line));
            }
        } else if c[i] == ':' && at(i + 1) == ':' {
            out.push(("::".into(), line));
            i += 2;
        } else {
            if !c[i].is_whitespace() {
                out.push((c[i].to_string(), line));
            }
            i += 1;
        }
        line += c[start..i.min(c.len())]
            .iter()
            .filter(|&&x| x == '\n')
            .count();
    }
    out
}

// ---------- scanning a file: `mod` declarations, inline modules, `use` trees, paths ----------

/// A path a file names, in a `use` (maybe a glob or renamed) or inline in code.
struct Ref {
    scope: Vec<String>, // the inline modules around it
    segs: Vec<String>,
    glob: bool,
    alias: Option<String>,
    line: usize,
    is_use: bool,
}

impl Ref {
    fn new(scope: &[String], segs: Vec<String>, line: usize, is_use: bool) -> Self {
        let (scope, glob, alias) = (scope.to_vec(), false, None);
        Ref {
            scope,
            segs,
            glob,
            alias,
            line,
            is_use,
        }
    }
}

#[derive(Default)]
struct Scan {
    decls: Vec<(Vec<String>, String)>, // `mod name;`, with the inline modules around it
    inline: Vec<Vec<String>>,
    refs: Vec<Ref>,
}

fn tk(t: &Toks, i: usize) -> &str {
    t.get(i).map_or("", |x| x.0.as_str())
}

fn ident(t: &Toks, i: usize) -> Option<&str> {
    Some(tk(t, i)).filter(|s| s.starts_with(|c: char| c.is_alphabetic() || c == '_'))
}

/// The index of the bracket closing the one at `open`.
fn closing(t: &Toks, open: usize) -> usize {
    let mut depth = 0;
    for k in open..t.len() {
        match tk(t, k) {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return k;
        }
    }
    t.len()
}

/// Past the item an attribute applies to: more attributes, then up to `;` or its body's `}`.
fn skip_item(t: &Toks, mut i: usize) -> usize {
    while tk(t, i) == "#" && tk(t, i + 1) == "[" {
        i = closing(t, i + 1) + 1;
    }
    while i < t.len() && tk(t, i) != ";" && tk(t, i) != "{" {
        i = if matches!(tk(t, i), "(" | "[") {
            closing(t, i) + 1
        } else {
            i + 1
        };
    }
    if tk(t, i) == "{" {
        closing(t, i) + 1
    } else {
        i + 1
    }
}

/// One `use` tree (after `use`, or inside `{}`), its leaves appended to `out`.
fn use_tree(t: &Toks, i: &mut usize, mut segs: Vec<String>, scope: &[String], out: &mut Vec<Ref>) {
    if tk(t, *i) == "::" {
        segs.extend(segs.is_empty().then(|| "::".to_string())); // `::x` is an external crate
        *i += 1;
    }
    while let Some(s) = ident(t, *i) {
        segs.push(s.to_string());
        *i += 1;
        if tk(t, *i) != "::" {
            let (line, alias) = (
                t[*i - 1].1,
                (tk(t, *i) == "as").then(|| tk(t, *i + 1).to_string()),
            );
            *i += if alias.is_some() { 2 } else { 0 };
            if segs.last().is_some_and(|s| s == "self") {
                segs.pop();
            }
            return out.push(Ref {
                alias,
                ..Ref::new(scope, segs, line, true)
            });
        }
        *i += 1;
    }
    if tk(t, *i) == "*" {
        out.push(Ref {
            glob: true,
            ..Ref::new(scope, segs, t[*i].1, true)
        });
        *i += 1;
    } else if tk(t, *i) == "{" {
        *i += 1;
        while *i < t.len() && tk(t, *i) != "}" {
            let before = *i;
            use_tree(t, i, segs.clone(), scope, out);
            *i += usize::from(tk(t, *i) == "," || *i == before);
        }
        *i += 1;
    }
}

fn scan(t: &Toks) -> Scan {
    let mut s = Scan::default();
    let mut scope: Vec<(String, usize)> = Vec::new(); // inline modules, brace depth outside
    let names = |sc: &[(String, usize)]| sc.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    let (mut depth, mut i) = (0, 0);
    while i < t.len() {
        let inner = usize::from(tk(t, i + 1) == "!");
        match tk(t, i) {
            "#" if tk(t, i + 1 + inner) == "[" => {
                let close = closing(t, i + 1 + inner);
                let attr: Vec<&str> = (i + 2 + inner..close).map(|k| tk(t, k)).collect();
                i = close + 1;
                if attr.first() == Some(&"cfg") && attr.contains(&"test") && !attr.contains(&"not")
                {
                    if inner == 1 {
                        return Scan::default(); // the whole file is test-only
                    }
                    i = skip_item(t, i);
                }
                continue;
            }
            "{" => depth += 1,
            "}" => {
                depth = usize::saturating_sub(depth, 1);
                if scope.last().is_some_and(|x| x.1 == depth) {
                    scope.pop();
                }
            }
            "mod" if ident(t, i + 1).is_some() && matches!(tk(t, i + 2), ";" | "{") => {
                if tk(t, i + 2) == ";" {
                    s.decls.push((names(&scope), tk(t, i + 1).to_string()));
                } else {
                    scope.push((tk(t, i + 1).to_string(), depth));
                    s.inline.push(names(&scope));
                    depth += 1;
                }
                i += 2;
            }
            "use" => {
                i += 1;
                use_tree(t, &mut i, Vec::new(), &names(&scope), &mut s.refs);
                while i < t.len() && tk(t, i) != ";" {
                    i += 1;
                }
            }
            w if ident(t, i).is_some()
                && tk(t, i + 1) == "::"
                && (i == 0 || tk(t, i - 1) != "::")
                && !(i > 1 && tk(t, i - 1) == "in" && tk(t, i - 2) == "(") =>
            {
                let mut segs = vec![w.to_string()];
                while tk(t, i + 1) == "::" && ident(t, i + 2).is_some() {
                    segs.push(tk(t, i + 2).to_string());
                    i += 2;
                }
                s.refs.push(Ref::new(&names(&scope), segs, t[i].1, false));
            }
            _ => {}
        }
        i += 1;
    }
    s
}

// ---------- the module map and the file graph ----------

struct FileNode {
    path: PathBuf,
    tree: usize, // one module tree per crate root (library or binary)
    module: Vec<String>,
    scan: Scan,
}

#[derive(Default)]
struct Graph {
    files: Vec<FileNode>,
    trees: Vec<HashMap<Vec<String>, usize>>, // module path -> file, per tree
    libs: HashMap<String, usize>,            // crate name -> its library's tree
    edges: BTreeMap<(usize, usize), (usize, String)>, // -> first line, what it names
}

fn join(mut base: Vec<String>, tail: &[String]) -> Vec<String> {
    base.extend_from_slice(tail);
    base
}

impl Graph {
    /// Maps every file reachable from `root` through `mod x;` to its module path.
    fn load_tree(&mut self, tree: usize, root: &Path) {
        let src_dir = root.parent().unwrap();
        let mut queue = vec![(root.to_path_buf(), Vec::new())];
        while let Some((path, module)) = queue.pop() {
            let Ok(src) = fs::read_to_string(&path) else {
                continue;
            };
            let (fid, scan) = (self.files.len(), scan(&lex(&src)));
            self.trees[tree].insert(module.clone(), fid);
            for inline in &scan.inline {
                self.trees[tree]
                    .entry(join(module.clone(), inline))
                    .or_insert(fid);
            }
            let own_dir = path == root || path.ends_with("mod.rs");
            let base = if own_dir {
                path.parent().unwrap().to_path_buf()
            } else {
                path.with_extension("")
            };
            for (inline, name) in &scan.decls {
                let dir = inline.iter().fold(base.clone(), |d, s| d.join(s));
                let found = [
                    dir.join(format!("{name}.rs")),
                    dir.join(name).join("mod.rs"),
                ];
                let Some(child) = found.into_iter().find(|p| p.is_file()) else {
                    continue;
                };
                let rel = child.strip_prefix(src_dir).unwrap_or(&child);
                if !(rel.components().any(|c| c.as_os_str() == "tests")
                    || child.ends_with("tests.rs"))
                {
                    queue.push((
                        child,
                        join(join(module.clone(), inline), std::slice::from_ref(name)),
                    ));
                }
            }
            self.files.push(FileNode {
                path,
                tree,
                module,
                scan,
            });
        }
    }

    /// The absolute module path (tree, segments after `crate`) a path in `fid` names, if ours.
    fn resolve(
        &self,
        fid: usize,
        scope: &[String],
        segs: &[String],
        depth: u32,
    ) -> Option<(usize, Vec<String>)> {
        let f = &self.files[fid];
        let cur = join(f.module.clone(), scope);
        let (first, rest) = segs.split_first()?;
        match first.as_str() {
            "crate" => Some((f.tree, rest.to_vec())),
            "self" => Some((f.tree, join(cur, rest))),
            "super" => {
                let k = segs.iter().take_while(|s| *s == "super").count();
                Some((
                    f.tree,
                    join(cur.get(..cur.len().checked_sub(k)?)?.to_vec(), &segs[k..]),
                ))
            }
            name if self.libs.contains_key(name) => Some((self.libs[name], rest.to_vec())),
            _ if depth > 4 => None,
            name => {
                let uses = f.scan.refs.iter().filter(|r| r.is_use);
                // A name a `use` brought in (its last segment or its `as` name).
                for r in uses.clone().filter(|r| !r.glob && r.segs != [name]) {
                    if r.alias.as_deref().or(r.segs.last().map(String::as_str)) == Some(name) {
                        let (t, base) = self.resolve(fid, &r.scope, &r.segs, depth + 1)?;
                        return Some((t, join(base, rest)));
                    }
                }
                // A child module, or a module a glob import brought in.
                if self.trees[f.tree].contains_key(&join(cur.clone(), &segs[..1])) {
                    return Some((f.tree, join(cur, segs)));
                }
                uses.filter(|r| r.glob).find_map(|r| {
                    let (t, base) = self.resolve(fid, &r.scope, &r.segs, depth + 1)?;
                    let known = self.trees[t].contains_key(&join(base.clone(), &segs[..1]));
                    known.then(|| (t, join(base, segs)))
                })
            }
        }
    }

    /// One edge per (file, file it names), with the first line naming it (refs are in order).
    fn link(&mut self) {
        let mut edges = BTreeMap::new();
        for (fid, f) in self.files.iter().enumerate() {
            for r in &f.scan.refs {
                let Some((t, abs)) = self.resolve(fid, &r.scope, &r.segs, 0) else {
                    continue;
                };
                // The deepest module the path names.
                let to = (0..=abs.len())
                    .rev()
                    .find_map(|k| self.trees[t].get(&abs[..k]).copied());
                let Some(to) = to.filter(|&to| to != fid) else {
                    continue;
                };
                let (u, g) = (
                    if r.is_use { "use " } else { "" },
                    if r.glob { "::*" } else { "" },
                );
                let what = format!("{u}{}{g}", r.segs.join("::"));
                edges.entry((fid, to)).or_insert((r.line, what));
            }
        }
        self.edges = edges;
    }
}

fn build(root: &Path) -> Graph {
    let mut g = Graph::default();
    for (lib_name, roots) in discover_crates(root) {
        for (file, is_lib) in roots {
            g.trees.push(HashMap::new());
            if is_lib {
                g.libs.insert(lib_name.clone(), g.trees.len() - 1);
            }
            g.load_tree(g.trees.len() - 1, &file);
        }
    }
    g.link();
    g
}

// ---------- strongly connected components, and the report ----------

struct Tarjan<'a> {
    adj: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    out: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize, next: &mut usize) {
        (self.index[v], self.low[v], *next) = (Some(*next), *next, *next + 1);
        self.stack.push(v);
        self.on_stack[v] = true;
        let adj = self.adj;
        for &w in &adj[v] {
            if self.index[w].is_none() {
                self.visit(w, next);
                self.low[v] = self.low[v].min(self.low[w]);
            } else if self.on_stack[w] {
                self.low[v] = self.low[v].min(self.index[w].unwrap());
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let at = self.stack.iter().rposition(|&w| w == v).unwrap();
            let comp = self.stack.split_off(at);
            comp.iter().for_each(|&w| self.on_stack[w] = false);
            self.out.push(comp);
        }
    }
}

/// Every cycle (a component of more than one file), its files sorted by path.
fn find_cycles(g: &Graph) -> Vec<Vec<usize>> {
    let n = g.files.len();
    let mut adj = vec![Vec::new(); n];
    g.edges.keys().for_each(|&(a, b)| adj[a].push(b));
    let (index, low, on_stack) = (vec![None; n], vec![0; n], vec![false; n]);
    let mut t = Tarjan {
        adj: &adj,
        index,
        low,
        on_stack,
        stack: Vec::new(),
        out: Vec::new(),
    };
    let mut next = 0;
    (0..n).for_each(|v| {
        if t.index[v].is_none() {
            t.visit(v, &mut next)
        }
    });
    let mut cycles: Vec<Vec<usize>> = t.out.into_iter().filter(|c| c.len() > 1).collect();
    cycles
        .iter_mut()
        .for_each(|c| c.sort_by_key(|&f| &g.files[f].path));
    cycles.sort_by_key(|c| &g.files[c[0]].path);
    cycles
}

fn rel(root: &Path, g: &Graph, f: usize) -> String {
    g.files[f]
        .path
        .strip_prefix(root)
        .unwrap()
        .display()
        .to_string()
}

fn report(root: &Path, g: &Graph, cycle: &[usize]) -> String {
    let rel = |f: usize| rel(root, g, f);
    let mut out = format!("cycle of {} files:\n", cycle.len());
    cycle
        .iter()
        .for_each(|&f| out += &format!("    {}\n", rel(f)));
    for (&(a, b), (line, what)) in &g.edges {
        if cycle.contains(&a) && cycle.contains(&b) {
            out += &format!("  {} -> {}    {}:{line}: {what}\n", rel(a), rel(b), rel(a));
        }
    }
    out
}

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
