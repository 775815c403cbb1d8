//! The layers, as a test: reads every source file under `src/` and fails on an import that
//! points the wrong way. Inward: `domain` ← `orchestrator` ← adapters (`http`,
//! `messaging`, `persistence`, `participants`); `app` assembles them and nothing imports it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What a layer must not import: `crate::` path prefixes.
const RULES: &[(&str, &[&str])] = &[
    // The state machine and its values: nothing of the service around it.
    (
        "domain",
        &[
            "orchestrator",
            "http",
            "messaging",
            "persistence",
            "participants",
            "app",
            "config",
            "telemetry",
            "metrics",
            "invariants",
        ],
    ),
    // The use cases reach the outside only through the stores and the wire schema they own
    // the meaning of, never through an adapter above them.
    ("orchestrator", &["http", "app", "participants"]),
    (
        "messaging",
        &["orchestrator", "http", "app", "participants"],
    ),
    (
        "persistence",
        &["orchestrator", "http", "app", "participants", "messaging"],
    ),
    // Participants are services of their own that share only the bus and their own stores.
    (
        "participants",
        &[
            "orchestrator",
            "http",
            "app",
            "persistence::orders",
            "persistence::idempotency",
            "persistence::group_commit",
        ],
    ),
    // Orders are reached through the orchestrator only.
    (
        "http",
        &[
            "app",
            "orchestrator::actors",
            "orchestrator::timers",
            "orchestrator::wire",
            "persistence::orders",
            "persistence::idempotency",
            "persistence::group_commit",
            "persistence::outbox",
        ],
    ),
];

/// Crates that do I/O or run tasks: the domain uses none of them.
const IO_CRATES: &[&str] = &[
    "tokio",
    "sea_orm",
    "sqlx",
    "lapin",
    "axum",
    "hyper",
    "reqwest",
    "ractor",
    "entity",
    "migration",
    "metrics",
    "tracing",
];

#[test]
fn every_import_points_inward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut files = 0;
    for file in rust_files(&root) {
        let module = module_path(&root, &file);
        let source = std::fs::read_to_string(&file).expect("source file is readable");
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        violations.extend(check(&module, &source, &format!("src/{name}")));
        files += 1;
    }
    assert!(
        files > 30,
        "read only {files} files under {}",
        root.display()
    );
    assert!(
        violations.is_empty(),
        "imports against the layers (see tests/architecture.rs and docs/design.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_every_form_of_a_forbidden_import() {
    let sources = [
        "use crate::http::AppState;",
        "use crate::{domain::saga, http::{self, AppState}};",
        "fn f() { crate::http::errors::problem(); }",
        "use super::super::http::AppState;",
        "use crate::{\n    http::AppState,\n};",
    ];
    for source in sources {
        let found = check(&["messaging".into(), "relay".into()], source, "x.rs");
        assert!(!found.is_empty(), "{source:?} was not caught");
    }
    let allowed = "use crate::domain::saga; // crate::http::AppState in a comment\nuse crate::messaging::Bus;";
    assert!(check(&["messaging".into(), "relay".into()], allowed, "x.rs").is_empty());
    let io = "use tokio::sync::Notify;";
    assert_eq!(
        check(&["domain".into(), "saga".into()], io, "x.rs").len(),
        1
    );
    assert!(check(&["domain".into(), "saga".into()], "use std::fmt;", "x.rs").is_empty());
}

/// The violations of one file, whose module path is `module` (e.g. `["messaging", "relay"]`).
fn check(module: &[String], source: &str, name: &str) -> Vec<String> {
    let Some(layer) = module.first() else {
        return Vec::new();
    };
    let code = strip_comments(source);
    let imported = crate_paths(module, &code);
    let mut out = Vec::new();
    if let Some((_, forbidden)) = RULES.iter().find(|(l, _)| l == layer) {
        for path in &imported {
            if let Some(rule) = forbidden
                .iter()
                .find(|f| path == *f || path.starts_with(&format!("{f}::")))
            {
                out.push(format!(
                    "{name}: `{layer}` imports crate::{path} (forbidden: {rule})"
                ));
            }
        }
    }
    if layer == "domain" {
        for krate in IO_CRATES {
            if mentions_crate(&code, krate) {
                out.push(format!("{name}: the domain uses the I/O crate `{krate}`"));
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).expect("src/ is readable");
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// `src/orchestrator/actors/mod.rs` → `["orchestrator", "actors"]`; binaries and the
/// crate root have no layer.
fn module_path(root: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(root).expect("under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        Some("lib" | "main" | "bin") => Vec::new(),
        _ => parts,
    }
}

/// The source without `//` comments (doc comments included) and without string contents.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        let mut in_string = false;
        let mut previous = ' ';
        let mut kept = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if in_string {
                if c == '"' && previous != '\\' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
            } else if c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            } else {
                kept.push(c);
            }
            previous = if previous == '\\' && c == '\\' {
                ' '
            } else {
                c
            };
            i += 1;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Every `crate::…` path the code names, `use` trees expanded, with `super::` resolved
/// against `module`; as `a::b` (the first two segments are all the rules need).
fn crate_paths(module: &[String], code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let boundary = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        if boundary && rest.starts_with("crate::") {
            let mut at = i + 7;
            for path in use_tree(&bytes, &mut at, Vec::new()) {
                out.insert(path.into_iter().take(2).collect::<Vec<_>>().join("::"));
            }
            i = at.max(i + 1);
        } else if boundary && rest.starts_with("super::") {
            let mut at = i;
            let mut base: Vec<String> = module.to_vec();
            while bytes[at..].iter().take(7).collect::<String>() == "super::" {
                base.pop();
                at += 7;
            }
            for path in use_tree(&bytes, &mut at, base) {
                out.insert(path.into_iter().take(2).collect::<Vec<_>>().join("::"));
            }
            i = at.max(i + 1);
        } else {
            i += 1;
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Parses `a::b::{c, d::{e}}` at `at`; returns each full path, each starting with `prefix`.
fn use_tree(code: &[char], at: &mut usize, prefix: Vec<String>) -> Vec<Vec<String>> {
    let skip_space = |at: &mut usize| {
        while *at < code.len() && code[*at].is_whitespace() {
            *at += 1;
        }
    };
    let mut path = prefix;
    loop {
        skip_space(at);
        if *at < code.len() && code[*at] == '{' {
            *at += 1;
            let mut out = Vec::new();
            loop {
                skip_space(at);
                if *at >= code.len() {
                    return out;
                }
                if code[*at] == '}' {
                    *at += 1;
                    return out;
                }
                if code[*at] == ',' {
                    *at += 1;
                    continue;
                }
                let before = *at;
                out.extend(use_tree(code, at, path.clone()));
                if *at == before {
                    *at += 1;
                }
            }
        }
        let start = *at;
        while *at < code.len() && (code[*at].is_alphanumeric() || code[*at] == '_') {
            *at += 1;
        }
        if *at == start {
            return vec![path];
        }
        let segment: String = code[start..*at].iter().collect();
        if segment != "self" {
            path.push(segment);
        }
        if code[*at..].iter().take(2).collect::<String>() == "::" {
            *at += 2;
        } else {
            return vec![path];
        }
    }
}

/// Whether `code` names the crate `krate` as a path root (`krate::` or `use krate`).
fn mentions_crate(code: &str, krate: &str) -> bool {
    let needle = format!("{krate}::");
    code.match_indices(&needle).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}
