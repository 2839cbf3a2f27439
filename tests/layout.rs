//! The layout holds: dependencies between the top-level modules of `src/` go one way, no
//! source file grows past 700 lines, and rdkafka clients are built in `src/kafka/` only. Read
//! from the files themselves, so a change that breaks it fails here, naming what broke.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`engine` for `src/engine/part.rs`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Production code only: comments dropped, and everything from the first `#[cfg(test)]` on
/// (test modules sit at the end of a file), or nothing for a test module's own files
/// (`tests.rs`, `tests/`).
fn production(path: &Path, text: &str) -> String {
    let rel = path.strip_prefix(src()).unwrap_or(path);
    if rel
        .components()
        .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "tests.rs")
    {
        return String::new();
    }
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Modules each module refers to through `crate::<module>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        if m == "main" || m == "lib" {
            continue;
        }
        let text = production(&f, &std::fs::read_to_string(&f).unwrap());
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != m {
                deps.insert(name);
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(
    g: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in g.get(at).into_iter().flatten() {
        if next == start {
            let mut c = path.clone();
            c.push(start.to_string());
            return Some(c);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(g, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    g.keys()
        .filter_map(|m| {
            let mut path = vec![m.clone()];
            cycle_from(g, m, m, &mut path, &mut BTreeSet::new()).map(|c| c.join(" -> "))
        })
        .collect()
}

#[test]
fn modules_depend_on_each_other_one_way() {
    let g = graph();
    assert!(
        g.contains_key("engine") && g["engine"].contains("window"),
        "{g:#?}"
    );
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between modules: {found:#?}"
    );
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let mut g = graph();
    g.entry("window".into())
        .or_default()
        .insert("engine".into());
    let found = cycles(&g);
    assert!(
        found
            .iter()
            .any(|c| c.starts_with("engine") && c.contains("window")),
        "{found:#?}"
    );
}

#[test]
fn no_source_file_is_over_700_lines() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let long: Vec<_> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{} ({n} lines)", f.display()))
        .collect();
    assert!(long.is_empty(), "split these: {long:#?}");
}

/// The daemon, the bench, the demo and the test kit get their clients from `src/kafka/`.
#[test]
fn rdkafka_clients_are_built_in_the_kafka_module_only() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut tests = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests"),
        &mut tests,
    );
    let this = Path::new(env!("CARGO_MANIFEST_DIR")).join(file!());
    let needle = concat!("ClientConfig", "::new");
    let outside: Vec<_> = files
        .iter()
        .filter(|f| module_of(f) != "kafka")
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            production(f, &text).contains(needle)
        })
        .chain(
            tests
                .iter()
                .filter(|f| **f != this && std::fs::read_to_string(f).unwrap().contains(needle)),
        )
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        outside.is_empty(),
        "clients built outside src/kafka/: {outside:#?}"
    );
}
