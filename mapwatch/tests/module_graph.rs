//! The top-level modules of `mapwatch/src` are layers (ARCHITECTURE.md): a module may use
//! the ones below it, never one above. Two modules that use each other cannot be
//! understood, tested or changed one at a time, and the compiler does not object, so
//! this test reads the source and fails on any cycle between top-level modules.
//!
//! What counts as a use: every `crate::<module>` path in code (in `use` items, grouped
//! `use crate::{a::.., b}` included, and in paths inside expressions, types and
//! attributes), and a `super::` chain that climbs out of the top-level module. Comments
//! (doc comments too) and string literals do not count. Text, not a parser: it needs no
//! compiler and no new dependency, and Rust's path syntax is regular enough for this.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// Who uses whom: `graph[from][to]` is the set of places (`file:line`) that make `from`
/// use `to`.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

// -----------------------------------------------------------------------------------
// Reading the source.

/// The source with comments and the contents of string and character literals blanked
/// out (newlines kept, so line numbers stay right).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let starts_token = i == 0 || !is_ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    blank(&mut out, '/');
                    blank(&mut out, '*');
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    blank(&mut out, '*');
                    blank(&mut out, '/');
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if starts_token && raw_string_start(&chars[i..]).is_some() {
            let (prefix, hashes) = raw_string_start(&chars[i..]).unwrap();
            for _ in 0..prefix {
                blank(&mut out, chars[i]);
                i += 1;
            }
            // Up to the closing quote followed by as many '#'.
            while i < chars.len() {
                let closes =
                    chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#'));
                if closes {
                    for _ in 0..=hashes {
                        blank(&mut out, chars[i]);
                        i += 1;
                    }
                    break;
                }
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '"' || (starts_token && c == 'b' && next == Some('"')) {
            if c == 'b' {
                blank(&mut out, c);
                i += 1;
            }
            blank(&mut out, '"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            if i < chars.len() {
                blank(&mut out, '"');
                i += 1;
            }
        } else if c == '\'' {
            // A character literal ('x', '\n', '\''), or a lifetime ('a), which stays.
            let literal_end = match next {
                Some('\\') => (i + 2..chars.len()).find(|&k| chars[k] == '\'' && k > i + 2),
                Some(_) if chars.get(i + 2) == Some(&'\'') => Some(i + 2),
                _ => None,
            };
            match literal_end {
                Some(end) => {
                    while i <= end {
                        blank(&mut out, chars[i]);
                        i += 1;
                    }
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// `r"`, `r#"`, `br##"`…: the length of the prefix up to and including the quote, and
/// the number of '#'.
fn raw_string_start(chars: &[char]) -> Option<(usize, usize)> {
    let mut i = 0;
    if chars.first() == Some(&'b') {
        i += 1;
    }
    if chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    i += hashes;
    (chars.get(i) == Some(&'"')).then_some((i + 1, hashes))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// Tokens with their line numbers; only what paths and `mod x { .. }` need.
fn tokens(code: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push((Token::Ident(word), line));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((Token::PathSep, line));
            i += 2;
        } else {
            let token = match c {
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                _ => Token::Other,
            };
            out.push((token, line));
            i += 1;
        }
    }
    out
}

fn ident(token: Option<&(Token, usize)>) -> Option<&str> {
    match token {
        Some((Token::Ident(word), _)) => Some(word),
        _ => None,
    }
}

/// The first segments (with their lines) of the paths a path continues into at
/// `tokens[at]`: `x` for `x::..`, and `a`, `b` for `{a::.., b, self}` (nested groups are
/// one level further in, so only the group's own elements count).
fn first_segments(tokens: &[(Token, usize)], at: usize) -> Vec<(String, usize)> {
    match tokens.get(at) {
        Some((Token::Ident(word), line)) => vec![(word.clone(), *line)],
        Some((Token::Open, _)) => {
            let mut found = Vec::new();
            let mut depth = 0;
            let mut expect_element = true;
            for (token, line) in &tokens[at..] {
                match token {
                    Token::Open => {
                        depth += 1;
                        expect_element = depth == 1;
                    }
                    Token::Close => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Comma if depth == 1 => expect_element = true,
                    Token::Ident(word) if expect_element && depth == 1 => {
                        if word != "self" {
                            found.push((word.clone(), *line));
                        }
                        expect_element = false;
                    }
                    _ => {}
                }
            }
            found
        }
        _ => Vec::new(),
    }
}

/// The top-level names a file's code refers to through `crate::` (or a `super::` chain
/// that climbs to the crate root), with the line of each reference. `depth` is how deep
/// the file's module is below the crate root: 1 for `config.rs` and `discover/mod.rs`,
/// 2 for `discover/cgroup.rs`.
fn crate_references(source: &str, depth: usize) -> Vec<(String, usize)> {
    let tokens = tokens(&code_only(source));
    let mut found = Vec::new();
    // Inline `mod name { .. }` blocks, as the brace depths they opened at.
    let mut inline_modules: Vec<usize> = Vec::new();
    let mut braces = 0;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].0 {
            Token::Open => braces += 1,
            Token::Close => {
                braces -= 1;
                if inline_modules.last() == Some(&braces) {
                    inline_modules.pop();
                }
            }
            Token::Ident(word)
                if word == "mod"
                    && ident(tokens.get(i + 1)).is_some()
                    && matches!(tokens.get(i + 2), Some((Token::Open, _))) =>
            {
                inline_modules.push(braces);
            }
            Token::Ident(word)
                if word == "crate" && tokens.get(i + 1).map(|t| &t.0) == Some(&Token::PathSep) =>
            {
                found.extend(first_segments(&tokens, i + 2));
            }
            Token::Ident(word) if word == "super" => {
                let mut climbs = 0;
                let mut k = i;
                while ident(tokens.get(k)) == Some("super")
                    && tokens.get(k + 1).map(|t| &t.0) == Some(&Token::PathSep)
                {
                    climbs += 1;
                    k += 2;
                }
                if climbs > 0 && climbs >= depth + inline_modules.len() {
                    found.extend(first_segments(&tokens, k));
                }
                if climbs > 0 {
                    i = k;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The modules `lib.rs` declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_modules(lib_rs: &str) -> BTreeSet<String> {
    let tokens = tokens(&code_only(lib_rs));
    tokens
        .windows(3)
        .filter_map(|w| match w {
            [
                (Token::Ident(m), _),
                (Token::Ident(name), _),
                (Token::Other, _),
            ] if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph of the crate under `src`: only references to declared modules count
/// (`crate::SomeItem` in lib.rs is no module), and a module's references to itself are
/// dropped. Files outside every module (`lib.rs`, `main.rs`: crate roots) have none.
fn module_graph(src: &Path) -> Graph {
    let modules = declared_modules(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    for module in &modules {
        graph.entry(module.clone()).or_default();
    }
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let mut parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let last = parts.pop().unwrap();
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_string());
        }
        let Some(from) = parts.first().filter(|m| modules.contains(*m)) else {
            continue;
        };
        let source = std::fs::read_to_string(&file).unwrap();
        for (to, line) in crate_references(&source, parts.len()) {
            if &to != from && modules.contains(&to) {
                graph
                    .get_mut(from)
                    .unwrap()
                    .entry(to)
                    .or_default()
                    .insert(format!("src/{}:{line}", relative.display()));
            }
        }
    }
    graph
}

// -----------------------------------------------------------------------------------
// Cycles.

/// Whether `to` can be reached from `from`.
fn reaches(graph: &Graph, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::from([from]);
    let mut todo = vec![from];
    while let Some(here) = todo.pop() {
        if here == to {
            return true;
        }
        for next in graph.get(here).into_iter().flat_map(|edges| edges.keys()) {
            if seen.insert(next) {
                todo.push(next);
            }
        }
    }
    false
}

/// The edges that lie on some cycle: `a -> b` where `b` leads back to `a`. A new cycle
/// always brings one of these that was not there before, and removing these is what
/// removing the cycles means, so they are what the allow-list is checked by.
fn cycle_edges(graph: &Graph) -> BTreeSet<(String, String)> {
    graph
        .iter()
        .flat_map(|(from, edges)| edges.keys().map(move |to| (from, to)))
        .filter(|(from, to)| reaches(graph, to, from))
        .map(|(from, to)| (from.clone(), to.clone()))
        .collect()
}

/// The shortest cycle through the edge `from -> to` (which must lie on one), closed and
/// rotated to start at its alphabetically first module: `["a", "b", "a"]`.
fn shortest_cycle_through(graph: &Graph, from: &str, to: &str) -> Vec<String> {
    // Breadth-first from `to` back to `from`.
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([to]);
    while let Some(here) = queue.pop_front() {
        if here == from {
            break;
        }
        for next in graph.get(here).into_iter().flat_map(|edges| edges.keys()) {
            if next != to && !came_from.contains_key(next.as_str()) {
                came_from.insert(next, here);
                queue.push_back(next);
            }
        }
    }
    let mut back = vec![from];
    while *back.last().unwrap() != to {
        back.push(came_from[back.last().unwrap()]);
    }
    // back: from <- .. <- to; the cycle is from, to, .., from.
    let mut cycle: Vec<String> = std::iter::once(from)
        .chain(back.iter().rev().copied())
        .map(str::to_string)
        .collect();
    cycle.pop();
    let first = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap();
    cycle.rotate_left(first);
    cycle.push(cycle[0].clone());
    cycle
}

/// One cycle per edge that lies on a cycle (its shortest), each listed once: enough to
/// name every edge that has to go.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let found: BTreeSet<Vec<String>> = cycle_edges(graph)
        .iter()
        .map(|(from, to)| shortest_cycle_through(graph, from, to))
        .collect();
    found.into_iter().collect()
}

/// `a->b->a`, and under it where each edge comes from.
fn describe(graph: &Graph, cycle: &[String]) -> String {
    let mut text = cycle.join("->");
    for pair in cycle.windows(2) {
        let places: Vec<&str> = graph[&pair[0]][&pair[1]]
            .iter()
            .map(String::as_str)
            .collect();
        write!(
            text,
            "\n    {} -> {}: {}",
            pair[0],
            pair[1],
            places.join(", ")
        )
        .unwrap();
    }
    text
}

fn real_graph() -> Graph {
    module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_new_cycles_between_top_level_modules() {
    let graph = real_graph();
    // A wrong directory or a reader that finds nothing would pass vacuously.
    assert!(graph.len() >= 8, "modules found: {:?}", graph.keys());
    assert!(
        graph["cli"].contains_key("plan") && graph["plan"].contains_key("goelf"),
        "edges known to exist were not found: {graph:?}"
    );
    let new: BTreeSet<Vec<String>> = cycle_edges(&graph)
        .iter()
        .map(|(from, to)| shortest_cycle_through(&graph, from, to))
        .collect();
    let new: Vec<String> = new.iter().map(|cycle| describe(&graph, cycle)).collect();
    assert!(
        new.is_empty(),
        "import cycles between top-level modules of mapwatch/src (a lower layer must not \
         use a higher one; move the shared item down instead):\n  {}",
        new.join("\n  ")
    );
}

// -----------------------------------------------------------------------------------
// The test's own parts, on hand-made input, so that it cannot pass by finding nothing.

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for &(from, to) in edges {
        graph.entry(to.to_string()).or_default();
        graph
            .entry(from.to_string())
            .or_default()
            .entry(to.to_string())
            .or_default()
            .insert(format!("{from}.rs"));
    }
    graph
}

fn joined(graph: &Graph) -> Vec<String> {
    cycles(graph).iter().map(|c| c.join("->")).collect()
}

#[test]
fn finder_finds_every_cycle_once() {
    let graph = graph_of(&[
        ("cli", "plan"),
        ("plan", "goelf"),
        ("goelf", "cli"),
        ("plan", "discover"),
        ("discover", "metrics"),
        ("metrics", "discover"),
        ("attach", "metrics"),
    ]);
    assert_eq!(
        joined(&graph),
        ["cli->plan->goelf->cli", "discover->metrics->discover"]
    );
    let text = describe(&graph, &cycles(&graph)[1]);
    assert_eq!(
        text,
        "discover->metrics->discover\n    discover -> metrics: discover.rs\n    \
         metrics -> discover: metrics.rs"
    );
}

#[test]
fn finder_finds_nothing_in_layers() {
    let graph = graph_of(&[
        ("cli", "config"),
        ("cli", "plan"),
        ("config", "discover"),
        ("plan", "goelf"),
        ("discover", "goelf"),
        ("discover", "metrics"),
    ]);
    assert!(joined(&graph).is_empty());
}

#[test]
fn overlapping_cycles_are_each_listed() {
    let graph = graph_of(&[("a", "b"), ("b", "a"), ("b", "c"), ("c", "a")]);
    assert_eq!(joined(&graph), ["a->b->a", "a->b->c->a"]);
}

#[test]
fn comments_and_strings_are_not_references() {
    let source = r##"
//! Uses crate::aaa in a module doc.
/// And crate::bbb in a doc comment.
// Or crate::ccc in a comment.
/* crate::ddd /* nested */ crate::eee */
fn f() -> &'static str {
    let _ = '"';
    let _ = "crate::fff \" crate::ggg";
    let _ = r#"crate::hhh "quoted" "#;
    let _ = b"crate::iii";
    crate::real::call();
    "x"
}
"##;
    let names: Vec<(String, usize)> = crate_references(source, 1);
    assert_eq!(names, [("real".to_string(), 11)]);
}

#[test]
fn grouped_uses_count_each_first_segment() {
    let source = "use crate::{\n    aggregate::{Aggregator, Input},\n    attach::{self, \
                  notices::NoticesLost},\n    config,\n    plan::{self, PlanRequest},\n};\n\
                  use crate::goelf::GoBinary;\nfn f(x: crate::metrics::Metrics) {}\n";
    let names: Vec<String> = crate_references(source, 2)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        ["aggregate", "attach", "config", "plan", "goelf", "metrics"]
    );
    // Each is placed on its own line, not the `use` line.
    assert!(crate_references(source, 2).contains(&("config".to_string(), 4)));
}

#[test]
fn super_counts_only_when_it_climbs_out_of_the_module() {
    // In discover/cgroup.rs (depth 2): super:: is discover, super::super:: the root.
    let source = "use super::procs::x;\nuse super::super::metrics::y;\n\
                  mod tests {\n    use super::*;\n    use super::super::tracker::z;\n    \
                  use super::super::super::goelf::w;\n}\nuse super::super::{plan, goruntime::v};\n";
    assert_eq!(
        crate_references(source, 2),
        [
            ("metrics".to_string(), 2),
            ("goelf".to_string(), 6),
            ("plan".to_string(), 8),
            ("goruntime".to_string(), 8),
        ]
    );
}

#[test]
fn lib_rs_declarations_are_the_modules() {
    let lib = "//! mod nope;\npub mod aggregate;\nmod attach;\npub(crate) mod budget;\n\
               #[cfg(test)]\nmod tests {}\n";
    assert_eq!(
        declared_modules(lib),
        BTreeSet::from(["aggregate".into(), "attach".into(), "budget".into()])
    );
}
