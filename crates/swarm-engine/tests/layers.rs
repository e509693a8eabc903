//! The engine's modules import each other in one direction only: this reads
//! the sources and fails on any cycle among the top-level modules (a
//! directory `foo/` counts as part of `foo`), naming it. Test code (a
//! `#[cfg(test)]` section, `tests.rs`) is left out: tests may reach across.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name() != Some("tests.rs".as_ref())
        {
            let text = std::fs::read_to_string(&path).expect("read");
            let text = match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.push((path.display().to_string(), text));
        }
    }
}

/// `src/upkeep/governor.rs` → `upkeep`; `src/pool.rs` → `pool`.
fn module_of(src: &Path, file: &str) -> Option<String> {
    let rel = Path::new(file).strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib").then_some(name)
}

#[test]
fn modules_import_each_other_in_one_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let deps = graph.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let to: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // `use crate::{a, b}` lists several.
            if to.is_empty() && rest.starts_with('{') {
                let list = &rest[1..rest.find('}').unwrap_or(rest.len())];
                for item in list.split(',') {
                    let m: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !m.is_empty() && m != from {
                        deps.insert(m);
                    }
                }
            } else if !to.is_empty() && to != from {
                deps.insert(to);
            }
        }
    }
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            panic!(
                "modules import each other in a circle: {}",
                cycle.join(" → ")
            );
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if graph.contains_key(m) {
                visit(m, graph, path, done);
            }
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done);
    }
    // Print the layers, lowest first, for ARCHITECTURE.md.
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    while placed.len() < graph.len() {
        for (n, deps) in &graph {
            if placed.contains_key(n) {
                continue;
            }
            let local: Vec<&String> = deps.iter().filter(|d| graph.contains_key(*d)).collect();
            if local.iter().all(|d| placed.contains_key(*d)) {
                let level = local.iter().map(|d| placed[*d] + 1).max().unwrap_or(0);
                placed.insert(n.clone(), level);
            }
        }
    }
    let top = placed.values().max().copied().unwrap_or(0);
    for level in 0..=top {
        let names: Vec<&str> = placed
            .iter()
            .filter(|(_, l)| **l == level)
            .map(|(n, _)| n.as_str())
            .collect();
        println!("layer {level}: {}", names.join(", "));
    }
}
