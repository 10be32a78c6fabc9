//! The layers of `src/`, kept: a top-level module may use only modules
//! below it in [`LAYERS`], so no module imports upward and no two import
//! each other. Read from the source text — every `crate::` path and every
//! `super::` path that climbs to the crate root, outside comments and
//! `#[cfg(test)]` items — so a new upward import fails here, naming the
//! file, before it fails a reader. docs/architecture.md draws the same list.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Bottom first. Foundations (time, PEM, the profile, the wire types) use
/// nothing; the configuration uses only those; the trust rules sit below
/// the CA that they judge; the authority unit composes the CA with its
/// record and CRL keeper; the front ends (mesh writers, gRPC) sit on top.
const LAYERS: &[&str] = &[
    "clock",
    "fips",
    "identity",
    "pem",
    "proto",
    "verify",
    "profile",
    "config",
    "kube",
    "crl",
    "metrics",
    "csr",
    "policy",
    "trust",
    "authn",
    "impersonation",
    "ca",
    "issuer",
    "authority",
    "tenancy",
    "mesh",
    "error",
    "issue",
    "server",
    "cli",
];

/// One source file as the checker sees it.
struct Source {
    /// Relative to `src/`, for messages.
    file: String,
    /// The module path: `src/ca/reload.rs` is `["ca", "reload"]`.
    module: Vec<String>,
    text: String,
}

/// An import against the layers: `from` (in `file`) uses `to`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Upward {
    file: String,
    from: String,
    to: String,
}

#[test]
fn no_module_imports_upward() {
    let sources = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let tops: BTreeSet<String> = sources.iter().map(|s| s.module[0].clone()).collect();
    let unplaced: Vec<&String> = tops
        .iter()
        .filter(|t| !LAYERS.contains(&t.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "top-level modules missing from LAYERS in tests/layers.rs (place each above what it \
         uses, and in docs/architecture.md): {unplaced:?}"
    );
    let upward = check(&sources);
    assert!(
        upward.is_empty(),
        "imports against the layers (a module may use only those listed before it in \
         tests/layers.rs):\n{}",
        upward
            .iter()
            .map(|u| format!("  {}: {} uses {}", u.file, u.from, u.to))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker is not vacuous: the real tree with one upward import added
/// (the clock using the server), in code and through `super::`, is refused;
/// the same text in a comment or a test module is not.
#[test]
fn an_upward_import_is_caught() {
    let mut sources = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let at = |sources: &[Source], file: &str| {
        sources
            .iter()
            .position(|s| s.file == file)
            .unwrap_or_else(|| panic!("src/{file}"))
    };
    let clock = at(&sources, "clock.rs");
    let pristine = sources[clock].text.clone();
    sources[clock].text = format!("{pristine}\nfn reach() {{ let _ = crate::server::start; }}\n");
    assert_eq!(
        check(&sources),
        vec![Upward {
            file: "clock.rs".into(),
            from: "clock".into(),
            to: "server".into(),
        }]
    );
    sources[clock].text = format!("{pristine}\nuse crate::{{clock::at, mesh::{{self, Error}}}};\n");
    assert_eq!(check(&sources).len(), 1, "inside braces");
    sources[clock].text = format!(
        "{pristine}\n// crate::server::start\n#[cfg(test)]\nmod t {{ use crate::server; }}\n"
    );
    assert!(check(&sources).is_empty(), "comments and tests may");
    let ca = at(&sources, "ca/mod.rs");
    sources[ca]
        .text
        .push_str("\nuse super::authority::Authority;\n");
    assert_eq!(
        check(&sources),
        vec![Upward {
            file: "ca/mod.rs".into(),
            from: "ca".into(),
            to: "authority".into(),
        }],
        "through super::"
    );
}

/// Back ends meet only at the seam: each crate under `backends/` may use
/// `castellan-signer` and no other castellan crate (minting pairs a key
/// maker from one back end with a certifier from another through
/// `castellan_signer::KeyMaker`, wired in `src/ca/backends.rs`).
#[test]
fn back_ends_depend_only_on_the_seam() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("backends");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let name = parsed["package"]["name"].as_str().unwrap().to_owned();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = parsed.get(section).and_then(toml::Value::as_table) else {
                continue;
            };
            for dep in deps.keys() {
                assert!(
                    !dep.starts_with("castellan") || dep == "castellan-signer",
                    "{}: {name} depends on {dep}; back ends meet only through castellan-signer",
                    manifest.display()
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} back-end crates found");
}

/// Product files stay readable: none over 400 lines (tests not counted),
/// and no function over 60 lines without a comment saying why, `// Long:`
/// directly above it (among its docs and attributes).
#[test]
fn product_files_and_functions_stay_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = read_tree(&root.join("src"));
    for entry in std::fs::read_dir(root.join("backends")).unwrap() {
        let dir = entry.unwrap().path().join("src");
        if dir.is_dir() {
            let crate_name = dir
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            for mut s in read_tree(&dir) {
                s.file = format!("backends/{crate_name}/src/{}", s.file);
                s.module.insert(0, format!("backend {crate_name}"));
                sources.push(s);
            }
            // lib.rs is left out by read_tree; it is product code too.
            let lib = dir.join("lib.rs");
            sources.push(Source {
                file: format!("backends/{crate_name}/src/lib.rs"),
                module: vec![format!("backend {crate_name}")],
                text: std::fs::read_to_string(lib).unwrap(),
            });
        }
    }
    let test_only = test_only_files(&sources);
    let mut problems = Vec::new();
    for s in sources.iter().filter(|s| !test_only.contains(&s.module)) {
        let lines: Vec<&str> = s.text.lines().collect();
        let end = product_end(&lines);
        if end > 400 {
            problems.push(format!("{}: {end} lines (at most 400)", s.file));
        }
        for (name, at, len) in long_functions(&lines[..end]) {
            problems.push(format!(
                "{}:{}: fn {name} is {len} lines (at most 60, or `// Long: <why>` above it)",
                s.file,
                at + 1
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Where a file's own test module starts (`#[cfg(test)]` then `mod …{`).
fn product_end(lines: &[&str]) -> usize {
    lines
        .windows(2)
        .position(|w| {
            w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod ") && w[1].ends_with('{')
        })
        .unwrap_or(lines.len())
}

/// Functions over 60 lines with no `// Long:` comment above them: name,
/// line index, length.
fn long_functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        // The body: from the line that opens it to the closing brace at the
        // signature's indentation. A declaration without a body has none.
        let Some(open) = (at..lines.len()).find(|&k| {
            let l = lines[k].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue;
        }
        let Some(close) = (open + 1..lines.len()).find(|&k| {
            let l = lines[k];
            l.trim() == "}" && l.len() - l.trim_start().len() == indent
        }) else {
            continue;
        };
        let len = close - at + 1;
        let excused = lines[..at]
            .iter()
            .rev()
            .take_while(|l| {
                let t = l.trim_start();
                t.starts_with("//") || t.starts_with("#[")
            })
            .any(|l| l.trim_start().starts_with("// Long:"));
        if len > 60 && !excused {
            found.push((name, at, len));
        }
    }
    found
}

/// The name of the function a line declares, if it declares one.
fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.next() {
        match w {
            "pub" | "async" | "const" | "unsafe" | "extern" => {}
            w if w.starts_with("pub(") => {}
            "fn" => {
                let name: String = words
                    .next()?
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                return (!name.is_empty()).then_some(name);
            }
            _ => return None,
        }
    }
    None
}

fn check(sources: &[Source]) -> Vec<Upward> {
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let test_only = test_only_files(sources);
    let mut upward = BTreeSet::new();
    for s in sources {
        if test_only.contains(&s.module) {
            continue;
        }
        let from = &s.module[0];
        for to in uses(s) {
            if &to == from {
                continue;
            }
            let (Some(f), Some(t)) = (rank.get(from.as_str()), rank.get(to.as_str())) else {
                continue;
            };
            if t > f {
                upward.insert(Upward {
                    file: s.file.clone(),
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    upward.into_iter().collect()
}

fn read_tree(src: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().to_path_buf();
                if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
                    continue;
                }
                out.push(Source {
                    file: rel.to_string_lossy().into_owned(),
                    module: module_path(&rel),
                    text: std::fs::read_to_string(&path).unwrap(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Files declared `#[cfg(test)] mod name;`: compiled only into tests.
fn test_only_files(sources: &[Source]) -> BTreeSet<Vec<String>> {
    let mut only = BTreeSet::new();
    for s in sources {
        for name in strip(&s.text).1 {
            let mut m = s.module.clone();
            m.push(name);
            only.insert(m);
        }
    }
    // Everything below a test-only module is test-only too.
    sources
        .iter()
        .filter(|s| only.iter().any(|t| s.module.starts_with(t)))
        .map(|s| s.module.clone())
        .collect()
}

/// The text without comments and `#[cfg(test)]` items, and the names of
/// the test-only modules it declares.
fn strip(text: &str) -> (String, Vec<String>) {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut modules = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTR.len()..];
        let end = item_end(item);
        let decl = item[..end].trim();
        let words: Vec<&str> = decl.split_whitespace().collect();
        if let (true, Some(name)) = (decl.ends_with(';') && words.contains(&"mod"), words.last()) {
            modules.push(name.trim_end_matches(';').to_owned());
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    (out, modules)
}

/// Where the item starting `text` ends: its `;` or its closing brace.
fn item_end(text: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            ';' if depth == 0 => return i + 1,
            _ => {}
        }
    }
    text.len()
}

/// The top-level modules a file's code names.
fn uses(s: &Source) -> BTreeSet<String> {
    let (code, _) = strip(&s.text);
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        found.extend(heads(&code[at + "crate::".len()..]));
    }
    // `super::` climbing out of the file's top-level module.
    let depth = s.module.len();
    for (at, _) in code.match_indices("super::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut path = &code[at..];
        let mut climbed = 0;
        while let Some(next) = path.strip_prefix("super::") {
            climbed += 1;
            path = next;
        }
        if climbed >= depth {
            found.extend(heads(path));
        }
    }
    found
}

/// The first segment of a path, or of each path in a `{…}` group.
fn heads(path: &str) -> Vec<String> {
    if let Some(group) = path.strip_prefix('{') {
        let mut depth = 1usize;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        items.push(&group[start..i]);
                        break;
                    }
                }
                ',' if depth == 1 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.iter().flat_map(|i| heads(i.trim())).collect()
    } else {
        let head: String = path
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if head.is_empty() || head == "self" {
            Vec::new()
        } else {
            vec![head]
        }
    }
}
