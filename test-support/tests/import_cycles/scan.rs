//! Scanning a file: its `mod` declarations, inline modules, `use` trees and inline paths.

use crate::*;

/// A path a file names, in a `use` (maybe a glob or renamed) or inline in code.
pub(crate) struct Ref {
    pub(crate) scope: Vec<String>, // the inline modules around it
    pub(crate) segs: Vec<String>,
    pub(crate) glob: bool,
    pub(crate) alias: Option<String>,
    pub(crate) line: usize,
    pub(crate) is_use: bool,
}

impl Ref {
    pub(crate) fn new(scope: &[String], segs: Vec<String>, line: usize, is_use: bool) -> Self {
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
pub(crate) struct Scan {
    pub(crate) decls: Vec<(Vec<String>, String)>, // `mod name;`, with the inline modules around it
    pub(crate) inline: Vec<Vec<String>>,
    pub(crate) refs: Vec<Ref>,
}

pub(crate) fn tk(t: &Toks, i: usize) -> &str {
    t.get(i).map_or("", |x| x.0.as_str())
}

pub(crate) fn ident(t: &Toks, i: usize) -> Option<&str> {
    Some(tk(t, i)).filter(|s| s.starts_with(|c: char| c.is_alphabetic() || c == '_'))
}

/// The index of the bracket closing the one at `open`.
pub(crate) fn closing(t: &Toks, open: usize) -> usize {
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
pub(crate) fn skip_item(t: &Toks, mut i: usize) -> usize {
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
pub(crate) fn use_tree(
    t: &Toks,
    i: &mut usize,
    mut segs: Vec<String>,
    scope: &[String],
    out: &mut Vec<Ref>,
) {
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

pub(crate) fn scan(t: &Toks) -> Scan {
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
