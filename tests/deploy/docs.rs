//! The runbooks' castellan commands exist, and the image builds the binary
//! CI builds.

use super::*;

/// `castellan ...` command lines in the fenced code blocks of `text`.
fn castellan_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_code = false;
    let mut continued = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let line = line.trim();
        if let Some(head) = line.strip_suffix('\\') {
            continued.push_str(head);
            continue;
        }
        let full = std::mem::take(&mut continued) + line;
        // The command word, not a name like deploy/castellan before it.
        if let Some((at, _)) = full.match_indices("castellan ").find(|(at, _)| {
            let before = &full[..*at];
            before.is_empty()
                || before.ends_with("-- ")
                || before.ends_with("$ ")
                || before.ends_with("./")
        }) {
            commands.push(full[at..].to_owned());
        }
    }
    commands
}

#[test]
fn every_castellan_command_in_the_runbooks_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = markdown_files(root);
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for command in castellan_commands(&text) {
            let words: Vec<&str> = command.split_whitespace().collect();
            let Some(sub) = words.get(1).filter(|w| !w.starts_with('-')) else {
                continue;
            };
            let help = Command::new(env!("CARGO_BIN_EXE_castellan"))
                .args([sub, "--help"])
                .output()
                .unwrap();
            assert!(
                help.status.success(),
                "{}: `{command}`: castellan has no command {sub}",
                file.display()
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(flag),
                    "{}: `{command}`: castellan {sub} has no {flag}",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} castellan commands found in the docs"
    );
}

/// The project's Markdown: the README, BENCHMARKS.md, everything under
/// `docs/` and `deploy/`.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    let mut dirs = vec![root.join("docs"), root.join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

/// The reference moved out of the README into docs/ and may move again:
/// every relative link still leads to a file.
#[test]
fn every_link_between_the_docs_leads_somewhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in markdown_files(root) {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            for (at, _) in line.match_indices("](") {
                let rest = &line[at + 2..];
                let target = &rest[..rest.find(')').unwrap_or(rest.len())];
                let path = target.split('#').next().unwrap_or("");
                if path.is_empty() || path.contains("://") || path.contains(' ') {
                    continue;
                }
                let resolved = file.parent().unwrap().join(path);
                assert!(
                    resolved.exists(),
                    "{}: the link to {target} leads nowhere",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "only {checked} links found");
}

// === The image ===

#[test]
fn the_image_builds_the_binary_ci_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipe = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    let ci = std::fs::read_to_string(root.join("scripts/test.sh")).unwrap();
    let build = "cargo build --release --locked --bin castellan";
    assert!(
        recipe.contains(build),
        "the Containerfile builds with `{build}`"
    );
    assert!(ci.contains(build), "CI builds with `{build}`");
    assert!(
        recipe.contains("USER 65532"),
        "the image runs as the Deployment's user"
    );
    let entry = recipe
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .unwrap();
    assert!(entry.contains("/castellan"), "{entry}");
}
