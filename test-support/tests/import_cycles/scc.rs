//! Strongly connected components of the file graph (Tarjan), and the report of one.

use crate::*;

pub(crate) struct Tarjan<'a> {
    pub(crate) adj: &'a [Vec<usize>],
    pub(crate) index: Vec<Option<usize>>,
    pub(crate) low: Vec<usize>,
    pub(crate) on_stack: Vec<bool>,
    pub(crate) stack: Vec<usize>,
    pub(crate) out: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    pub(crate) fn visit(&mut self, v: usize, next: &mut usize) {
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
pub(crate) fn find_cycles(g: &Graph) -> Vec<Vec<usize>> {
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

pub(crate) fn rel(root: &Path, g: &Graph, f: usize) -> String {
    g.files[f]
        .path
        .strip_prefix(root)
        .unwrap()
        .display()
        .to_string()
}

pub(crate) fn report(root: &Path, g: &Graph, cycle: &[usize]) -> String {
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
