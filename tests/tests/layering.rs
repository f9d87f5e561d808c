//! The crates' modules form layers: no module reaches (through `crate::…` or `super::…` paths)
//! a module that reaches back to it. A cycle is how "the sink knows the worker loop knows the
//! sink" starts; this test names it when one appears.
//!
//! Read from the sources as text: every `crate::a::b` path names the longest module prefix that
//! exists, `super::x` a sibling. Comments and `#[cfg(test)]` modules are left out (tests may
//! reach anywhere). Re-exports (`pub use`) count as uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`plugin::host`, `` for the crate root) → its source.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(parts.join("::"), code_outside_tests(&text));
        }
    }
    out
}

/// `text` without comment lines and `#[cfg(test)]` modules (rustfmt's layout: a top-level test
/// module ends at the first line that is exactly `}`).
fn code_outside_tests(text: &str) -> String {
    let mut out = Vec::new();
    let mut in_tests = false;
    for line in text.lines() {
        if line.trim() == "#[cfg(test)]" && !line.starts_with(' ') {
            in_tests = true;
        } else if in_tests && line == "}" {
            in_tests = false;
        } else if !in_tests && !line.trim_start().starts_with("//") {
            out.push(line);
        }
    }
    out.join("\n")
}

/// The identifiers of the path that follows each occurrence of `prefix` in `code`.
fn paths_after<'c>(code: &'c str, prefix: &str) -> Vec<Vec<&'c str>> {
    code.match_indices(prefix)
        .filter(|(i, _)| code[..*i].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_')))
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')).unwrap_or(rest.len());
            rest[..end].split("::").filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

/// Module → the modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut g: BTreeMap<String, BTreeSet<String>> = mods.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (m, code) in &mods {
        let parent: Vec<&str> = m.split("::").filter(|s| !s.is_empty()).collect();
        let parent = &parent[..parent.len().saturating_sub(1)];
        let mut targets = Vec::new();
        for segs in paths_after(code, "crate::") {
            targets.extend((1..=segs.len()).rev().map(|k| segs[..k].join("::")).find(|t| mods.contains_key(t)));
        }
        for segs in paths_after(code, "super::") {
            let mut t: Vec<&str> = parent.to_vec();
            t.extend(segs.first());
            let t = t.join("::");
            if mods.contains_key(&t) {
                targets.push(t);
            }
        }
        for t in targets {
            // A module may use its ancestors' items (`crate::` items of the root, say).
            if t != *m && !m.starts_with(&format!("{t}::")) && !t.is_empty() {
                g.get_mut(m).unwrap().insert(t);
            }
        }
    }
    g
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in &self.g[v] {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in g.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_module_reaches_back_to_a_module_that_uses_it() {
    let root = pluginflow_tests::repo_root();
    let mut problems = Vec::new();
    for krate in ["operators", "pipeline", "state"] {
        let g = graph(&root.join(krate).join("src"));
        assert!(g.len() > 3, "{krate}: the sources were not found");
        for cycle in cycles(&g) {
            let edges: Vec<String> =
                cycle.iter().flat_map(|m| g[m].iter().filter(|t| cycle.contains(t)).map(move |t| format!("{m} → {t}"))).collect();
            problems.push(format!("{krate}: {}", edges.join(", ")));
        }
    }
    assert!(problems.is_empty(), "module cycles:\n{}", problems.join("\n"));
}

/// The reader itself: a made-up crate with a cycle through `super::` and one through `crate::`
/// is caught; the same crate without them is not.
#[test]
fn the_reader_finds_cycles_through_crate_and_super_paths() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("plugin")).unwrap();
    let write = |p: &str, text: &str| std::fs::write(src.join(p), text).unwrap();
    write("lib.rs", "pub mod plugin;\npub mod io;\npub mod run;\n");
    write("plugin/mod.rs", "pub mod host;\npub mod log;\n");
    write("plugin/host.rs", "use super::log::Entry;\n");
    write("plugin/log.rs", "use super::host::Identity;\n// use crate::run::X; (a comment)\n");
    write("io.rs", "#[cfg(test)]\nmod tests {\n    use crate::run::X;\n}\n\nuse crate::run::Reader;\n");
    write("run.rs", "fn f() { crate::io::open(); }\n");
    let mut found = cycles(&graph(src));
    found.sort();
    assert_eq!(found, [vec!["io".to_string(), "run".to_string()], vec!["plugin::host".to_string(), "plugin::log".to_string()]]);
    write("plugin/log.rs", "pub struct Identity;\n");
    write("io.rs", "#[cfg(test)]\nmod tests {\n    use crate::run::X;\n}\n\npub fn open() {}\n");
    assert!(cycles(&graph(src)).is_empty());
}
