//! The module map of every crate, and the file graph its references make.

use crate::*;

pub(crate) struct FileNode {
    pub(crate) path: PathBuf,
    pub(crate) tree: usize, // one module tree per crate root (library or binary)
    pub(crate) module: Vec<String>,
    pub(crate) scan: Scan,
}

#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) files: Vec<FileNode>,
    pub(crate) trees: Vec<HashMap<Vec<String>, usize>>, // module path -> file, per tree
    pub(crate) libs: HashMap<String, usize>,            // crate name -> its library's tree
    pub(crate) edges: BTreeMap<(usize, usize), (usize, String)>, // -> first line, what it names
}

pub(crate) fn join(mut base: Vec<String>, tail: &[String]) -> Vec<String> {
    base.extend_from_slice(tail);
    base
}

impl Graph {
    /// Maps every file reachable from `root` through `mod x;` to its module path.
    pub(crate) fn load_tree(&mut self, tree: usize, root: &Path) {
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
    pub(crate) fn resolve(
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
    pub(crate) fn link(&mut self) {
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

pub(crate) fn build(root: &Path) -> Graph {
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
