//! A small lexer: identifiers, `::` and punctuation, with comments, strings and `#[cfg(test)]`
//! items left out.

/// The end of a raw string (`r"`, `r#"`, `br"`, `cr"`) starting at `i`, if one does.
pub(crate) fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
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
pub(crate) fn lex(src: &str) -> Vec<(String, usize)> {
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
