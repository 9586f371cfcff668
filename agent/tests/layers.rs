//! The agent's modules form layers that point down only: a module imports
//! from layers below its own, or from modules of its own layer as long as
//! no cycle forms. [`LAYERS`] declares every module's layer; this test
//! reads every file under `src/`, extracts the `crate::` paths it names
//! (`use` trees and inline paths; `super::` and `self::` resolved; in
//! `main.rs`, `sonde::`), and fails on
//!
//! - a module missing from the table (or a table entry without a file),
//! - an import from a layer above the importer's,
//! - an import cycle (which, with the rule above, can only sit inside one
//!   layer).
//!
//! A type two layers share moves down to the lower one; a function that
//! needs the upper layer's handles moves up (see STYLE.md item 18).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Every module of the agent and its layer, bottom (0) to top. A module is
/// a file: `a/b.rs` and `a/b/mod.rs` are `a::b`.
const LAYERS: &[(&str, u8)] = &[
    // 0. Leaves: clocks, build identity, names, configuration, the CLI,
    // the metric family builder.
    ("time", 0),
    ("version", 0),
    ("syscall_table", 0),
    ("cgroup", 0),
    ("netif", 0),
    ("config", 0),
    ("config::otlp", 0),
    ("config::overlay", 0),
    ("cli", 0),
    ("family", 0),
    ("notify", 0),
    ("serving", 0),
    ("netstat", 0),
    ("diskstats", 0),
    ("tasks", 0),
    ("map_batch", 0),
    ("heap", 0),
    // Pod identity: cgroup paths and the runtime over CRI, a cache.
    ("pods", 0),
    ("pods::cgroup_path", 0),
    ("pods::cri", 0),
    ("pods::podman", 0),
    ("pods::veth", 0),
    // 1. What the kernel offers, each signal's pieces, the event reader.
    ("probes::btf", 1),
    ("probes::capabilities", 1),
    ("probes::tiers", 1),
    ("events", 1),
    ("signals", 1),
    // Every signal module (one file each, found by agent/build.rs).
    ("signals::*", 1),
    // A signal's own submodules (signals/<name>/*.rs).
    ("signals::packets::*", 1),
    // 2. Loading and attaching the kernel programs.
    ("probes", 2),
    ("probes::loader", 2),
    ("probes::leftovers", 2),
    ("probes::baseline", 2),
    // 3. Reading the kernel's maps.
    ("collectors", 3),
    // 4. Exposition.
    ("metrics", 4),
    // 5. Analysis: the MAPE-K loop over snapshots, config, a collector.
    ("mapek", 5),
    ("mapek::analyze", 5),
    ("mapek::execute", 5),
    ("mapek::govern", 5),
    ("mapek::guard", 5),
    ("mapek::kernel_notes", 5),
    ("mapek::knowledge", 5),
    ("mapek::monitor", 5),
    ("mapek::plan", 5),
    // 6. The running agent's shared handle.
    ("state", 6),
    // 7. Consumers of the state.
    ("health", 7),
    ("otlp", 7),
    ("otlp::transport", 7),
    // 8. Serving.
    ("http", 8),
    ("http::access", 8),
    ("http::serve", 8),
    ("http::web_config", 8),
    // 9. Commands and wiring.
    ("daemon", 9),
    ("daemon::check", 9),
    ("daemon::config_command", 9),
    ("daemon::failure", 9),
    ("daemon::netwatch", 9),
    ("daemon::reload", 9),
    ("daemon::run", 9),
    ("daemon::setup", 9),
    // 10. The binary.
    ("main", 10),
];

/// One import: which file names which path, resolved to a module.
#[derive(Debug, Clone)]
struct Import {
    file: String,
    path: String,
    to: String,
}

#[test]
fn layers_point_down_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&src);
    let known: BTreeSet<String> = files.keys().cloned().collect();
    let table: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    // `a::*` gives every module directly under `a` its layer.
    let layers: BTreeMap<&str, u8> = known
        .iter()
        .filter_map(|m| {
            let wildcard = m
                .rsplit_once("::")
                .map(|(parent, _)| format!("{parent}::*"));
            table
                .get(m.as_str())
                .or_else(|| wildcard.and_then(|w| table.get(w.as_str())))
                .map(|&layer| (m.as_str(), layer))
        })
        .collect();
    let mut problems = Vec::new();

    for (module, file) in &files {
        if !layers.contains_key(module.as_str()) {
            problems.push(format!(
                "{} (module {module}) is missing from LAYERS in agent/tests/layers.rs: give it a layer",
                display(file)
            ));
        }
    }
    for (module, _) in LAYERS {
        let matched = match module.strip_suffix("::*") {
            Some(parent) => known
                .iter()
                .any(|m| m.rsplit_once("::").is_some_and(|(p, _)| p == parent)),
            None => known.contains(*module),
        };
        if !matched {
            problems.push(format!(
                "LAYERS names module {module}, which has no file under agent/src: remove it"
            ));
        }
    }

    let mut edges: BTreeMap<String, Vec<Import>> = BTreeMap::new();
    for (module, file) in &files {
        let text = fs::read_to_string(file).expect("reading an agent source file");
        for import in imports(module, &display(file), &text, &known) {
            let (Some(&from), Some(&to)) =
                (layers.get(module.as_str()), layers.get(import.to.as_str()))
            else {
                continue;
            };
            if to > from {
                problems.push(format!(
                    "{} imports {}: module {module} (layer {from}) may not import from {} (layer {to}), which is above it; move the item down or the caller up",
                    import.file, import.path, import.to
                ));
            }
            edges.entry(module.clone()).or_default().push(import);
        }
    }

    let cycles = cycles(&known, &edges);
    for cycle in &cycles {
        problems.push(format!(
            "import cycle among {}: {}",
            cycle.join(", "),
            shortest_cycle(cycle, &edges).join(" -> ")
        ));
    }
    eprintln!(
        "layers: {} modules, {} imports between modules, {} cycles",
        files.len(),
        edges.values().map(Vec::len).sum::<usize>(),
        cycles.len()
    );
    assert!(
        problems.is_empty(),
        "the agent's layers are broken:\n  {}",
        problems.join("\n  ")
    );
}

/// The tokenizer and resolver on a known input, so a change to them is
/// noticed before it silently accepts an upward import.
#[test]
fn imports_are_extracted_and_resolved() {
    let known: BTreeSet<String> = ["a", "a::b", "a::c", "d", "main"].map(String::from).into();
    let text = r#"
//! use crate::d; (a comment)
use std::fmt;
use super::c::{self, X as Y};
use crate::{d::{E, F}, a::b};
pub use c::Z;
fn f() { let s = "crate::d in a string"; crate::d::g(); }
#[cfg(test)]
mod tests {
    use super::*;
}
"#;
    let got: Vec<(String, String)> = imports("a::b", "a/b.rs", text, &known)
        .into_iter()
        .map(|i| (i.path, i.to))
        .collect();
    let want: Vec<(String, String)> = [
        ("super::c::self", "a::c"),
        ("super::c::X", "a::c"),
        ("crate::d::E", "d"),
        ("crate::d::F", "d"),
        ("crate::d::g", "d"),
    ]
    .map(|(p, t)| (p.to_owned(), t.to_owned()))
    .into();
    assert_eq!(got, want);
    let main = imports("main", "main.rs", "use sonde::{a::b::X, d};", &known);
    let to: Vec<&str> = main.iter().map(|i| i.to.as_str()).collect();
    assert_eq!(to, ["a::b", "d"]);
}

/// Module path → file, for every `.rs` file under `src` but the crate
/// root (lib.rs only declares modules).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("listing agent/src") {
            let path = entry.expect("listing agent/src").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

fn display(file: &Path) -> String {
    let s = file.to_string_lossy();
    match s.find("/src/") {
        Some(i) => format!("agent{}", &s[i..]),
        None => s.into_owned(),
    }
}

/// Source without comments and string literals: what remains is code.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
        } else if b[i] == b'r'
            && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#"))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // Raw string r"…" or r#"…"#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let open = i + 1 + hashes;
            if b.get(open) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            i = text[open + 1..]
                .find(&close)
                .map_or(b.len(), |e| open + 1 + e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal like '{' or '"'; lifetimes pass through.
            out.push_str("' '");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            let end = text[i + 2..].find('\'').map_or(b.len(), |e| i + 2 + e + 1);
            out.push_str("' '");
            i = end;
        } else {
            let ch = text[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Sep,
    Open,
    Close,
    Comma,
    Star,
    Other,
}

fn tokens(code: &str) -> Vec<(usize, Token)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((start, Token::Ident(code[start..i].to_owned())));
            continue;
        }
        let token = match c {
            b':' if b.get(i + 1) == Some(&b':') => {
                i += 1;
                Token::Sep
            }
            b'{' => Token::Open,
            b'}' => Token::Close,
            b',' => Token::Comma,
            b'*' => Token::Star,
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => Token::Other,
        };
        out.push((i, token));
        i += 1;
    }
    out
}

/// Paths of a `use` tree starting at `tokens[*at]`, each as segments.
fn use_tree(
    tokens: &[(usize, Token)],
    at: &mut usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(*at).map(|t| &t.1) {
            Some(Token::Ident(id)) if id == "as" => {
                *at += 2; // `as name`
            }
            Some(Token::Ident(id)) => {
                path.push(id.clone());
                *at += 1;
            }
            Some(Token::Sep) => *at += 1,
            Some(Token::Star) => {
                path.push("*".to_owned());
                *at += 1;
            }
            Some(Token::Open) => {
                *at += 1;
                loop {
                    match tokens.get(*at).map(|t| &t.1) {
                        Some(Token::Close) => {
                            *at += 1;
                            return;
                        }
                        Some(Token::Comma) => *at += 1,
                        None => return,
                        _ => use_tree(tokens, at, &path, out),
                    }
                }
            }
            _ => {
                out.push(path);
                return;
            }
        }
    }
}

/// The modules `module` (in `file`) imports from, with the path it named.
fn imports(module: &str, file: &str, text: &str, known: &BTreeSet<String>) -> Vec<Import> {
    let code = code_only(text);
    let tokens = tokens(&code);
    let own: Vec<String> = module.split("::").map(str::to_owned).collect();
    // Past the first inline module (the tests), `super` is this file.
    let inline_mod = tokens.windows(3).find_map(|w| {
        matches!((&w[0].1, &w[1].1, &w[2].1), (Token::Ident(m), Token::Ident(_), Token::Open) if m == "mod")
            .then_some(w[0].0)
    });
    let crate_name = if module == "main" { "sonde" } else { "crate" };
    let mut paths: Vec<(usize, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (pos, token) = &tokens[i];
        let previous_is_sep = i > 0 && tokens[i - 1].1 == Token::Sep;
        match token {
            Token::Ident(id) if id == "use" => {
                i += 1;
                let mut found = Vec::new();
                use_tree(&tokens, &mut i, &[], &mut found);
                paths.extend(found.into_iter().map(|p| (*pos, p)));
            }
            Token::Ident(id)
                if !previous_is_sep
                    && (id == crate_name || id == "super" || id == "self")
                    && tokens.get(i + 1).is_some_and(|t| t.1 == Token::Sep) =>
            {
                let mut path = vec![id.clone()];
                i += 1;
                while let (Some((_, Token::Sep)), Some((_, Token::Ident(next)))) =
                    (tokens.get(i), tokens.get(i + 1))
                {
                    path.push(next.clone());
                    i += 2;
                }
                paths.push((*pos, path));
            }
            _ => i += 1,
        }
    }
    let mut out = Vec::new();
    for (pos, path) in paths {
        let in_inline = inline_mod.is_some_and(|m| pos > m);
        let mut base: Vec<String> = own.clone();
        if in_inline {
            base.push("tests".to_owned());
        }
        let mut rest = path.as_slice();
        let resolved: Vec<String> = match rest.first().map(String::as_str) {
            Some(first) if first == crate_name => rest[1..].to_vec(),
            Some("super" | "self") => {
                while let Some(seg) = rest.first() {
                    match seg.as_str() {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                base.iter().chain(rest).cloned().collect()
            }
            // A path relative to this module (`pub use loader::X` in a
            // mod.rs), when it names a child module.
            Some(first) if known.contains(&format!("{module}::{first}")) => {
                own.iter().chain(rest).cloned().collect()
            }
            _ => continue,
        };
        let to = (1..=resolved.len())
            .rev()
            .map(|n| resolved[..n].join("::"))
            .find(|m| known.contains(m));
        if let Some(to) = to
            && to != module
        {
            out.push(Import {
                file: file.to_owned(),
                path: path.join("::"),
                to,
            });
        }
    }
    out
}

/// One shortest cycle through the first module of a strongly connected
/// component, each step as "file imports path".
fn shortest_cycle(component: &[String], edges: &BTreeMap<String, Vec<Import>>) -> Vec<String> {
    let start = &component[0];
    let mut came_from: BTreeMap<&str, &Import> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.as_str()]);
    while let Some(v) = queue.pop_front() {
        for import in edges.get(v).into_iter().flatten() {
            let w = import.to.as_str();
            if !component.iter().any(|c| c == w) || came_from.contains_key(w) {
                continue;
            }
            came_from.insert(w, import);
            if w == start {
                queue.clear();
                break;
            }
            queue.push_back(w);
        }
    }
    let mut steps = Vec::new();
    let mut at = start.as_str();
    while let Some(import) = came_from.get(at) {
        steps.push(format!("{} imports {}", import.file, import.path));
        at = edges
            .iter()
            .find(|(_, list)| list.iter().any(|i| std::ptr::eq(i, *import)))
            .map_or(start.as_str(), |(from, _)| from.as_str());
        if at == start || steps.len() > component.len() {
            break;
        }
    }
    steps.reverse();
    steps
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(nodes: &BTreeSet<String>, edges: &BTreeMap<String, Vec<Import>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, Vec<Import>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for import in self.edges.get(v).into_iter().flatten() {
                let w = import.to.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for node in nodes {
        if !t.index.contains_key(node.as_str()) {
            t.visit(node);
        }
    }
    t.out
}
