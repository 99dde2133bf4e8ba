//! The module layering that ARCHITECTURE.md promises, checked on the
//! sources: the operator CLI and the bridge both build on `wire` and the
//! shared client (`client`, over the session in `mqtt`), never on each
//! other; the agent knows neither; the shared client and the session know
//! none of their users.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read");
            out.push((path.display().to_string(), text));
        }
    }
}

fn uses(module_dir: &str, other: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(module_dir);
    let mut files = Vec::new();
    if root.is_dir() {
        sources(&root, &mut files);
    }
    if let Ok(text) = std::fs::read_to_string(root.with_extension("rs")) {
        files.push((root.with_extension("rs").display().to_string(), text));
    }
    let needle = format!("crate::{other}");
    // `crate::cli` must not match `crate::client`.
    let names = |l: &str| {
        l.match_indices(&needle).any(|(i, _)| {
            !l[i + needle.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    files
        .into_iter()
        .flat_map(|(file, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| names(l) && !l.trim_start().starts_with("//"))
                .map(|(n, l)| format!("{file}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_cli_and_the_bridge_do_not_know_each_other() {
    let found: Vec<String> = uses("cli", "bridge")
        .into_iter()
        .chain(uses("bridge", "cli"))
        .collect();
    assert!(
        found.is_empty(),
        "a cycle between cli and bridge:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_agent_knows_neither_the_cli_nor_the_bridge() {
    let found: Vec<String> = uses("agent", "cli")
        .into_iter()
        .chain(uses("agent", "bridge"))
        .collect();
    assert!(
        found.is_empty(),
        "the agent depends on an operator side:\n{}",
        found.join("\n")
    );
}

/// Dead code that `pub` hides from the compiler's dead-code lint (every
/// module of the library is public, so every `pub fn` counts as used): a
/// public function whose name appears nowhere else in the sources, tests,
/// benches or HIL is dead. Names shared by several functions are not
/// judged (one use covers them all), so this finds the plain cases only.
#[test]
fn every_public_function_is_used_somewhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "hil"] {
        if root.join(dir).is_dir() {
            sources(&root.join(dir), &mut files);
        }
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    // Every identifier-like word and how often it occurs.
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for (_, text) in &files {
        for word in text.split(|c: char| !is_ident(c)).filter(|w| !w.is_empty()) {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut dead = Vec::new();
    // The crate's own `src/` (relative to the checkout: the checkout's own
    // path may hold a `/src/` too).
    let in_src = |f: &str| {
        Path::new(f)
            .strip_prefix(root)
            .is_ok_and(|p| p.starts_with("src"))
    };
    for (file, text) in files.iter().filter(|(f, _)| in_src(f)) {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            let Some(rest) = line
                .strip_prefix("pub fn ")
                .or_else(|| line.strip_prefix("pub async fn "))
                .or_else(|| line.strip_prefix("pub const fn "))
            else {
                continue;
            };
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            // A macro's template (`pub fn $name`): its functions are named
            // where the macro is called, and used (or not) like any other.
            if name.is_empty() && rest.starts_with('$') {
                continue;
            }
            // Its definition is one occurrence; nothing else names it.
            if counts.get(name.as_str()).copied().unwrap_or(0) <= 1 {
                dead.push(format!("{file}:{}: {name}", n + 1));
            }
        }
    }
    assert!(
        dead.is_empty(),
        "public functions nothing uses (delete them, or use them):\n{}",
        dead.join("\n")
    );
}

#[test]
fn the_shared_client_and_session_know_none_of_their_users() {
    let found: Vec<String> = ["cli", "bridge", "agent"]
        .into_iter()
        .flat_map(|user| uses("client", user).into_iter().chain(uses("mqtt", user)))
        .chain(uses("mqtt", "client"))
        .collect();
    assert!(
        found.is_empty(),
        "the shared client or session depends on a user:\n{}",
        found.join("\n")
    );
}

/// The HPKE suite's generics are named only in `kedge-hpke`
/// (`src/hpke-suite/`), which is what has their code generated at that
/// crate's opt-level: a `hpke::` path anywhere else in `src/` would
/// generate a second copy at kedge's "z" (src/hpke-suite/Cargo.toml).
#[test]
fn only_the_hpke_suite_names_the_hpke_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let suite = src.join("hpke-suite");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let found: Vec<String> = files
        .iter()
        .filter(|(file, _)| !Path::new(file).starts_with(&suite))
        .flat_map(|(file, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    let l = l.trim_start();
                    !l.starts_with("//")
                        && l.match_indices("hpke::").any(|(i, _)| {
                            !l[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                        })
                })
                .map(|(n, l)| format!("{file}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        found.is_empty(),
        "the hpke crate is named outside kedge-hpke:\n{}",
        found.join("\n")
    );
    // And the suite does name it (the check above looks at real paths).
    assert!(
        files
            .iter()
            .any(|(file, text)| Path::new(file).starts_with(&suite)
                && text.contains("hpke::single_shot_seal")),
        "src/hpke-suite/src/lib.rs seals with hpke::single_shot_seal"
    );
}
