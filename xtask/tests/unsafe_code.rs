//! No `unsafe` in userspace without its reason: every unsafe block, impl or fn in the
//! userspace crates is preceded by a `// SAFETY:` comment, and the workspace denies clippy's
//! `undocumented_unsafe_blocks` in each of them, so a new one cannot land unexplained.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The crates built for the host (lb-ebpf, the eBPF object, is not).
const USERSPACE: [&str; 5] = ["lb-agent", "lb-lab", "xtask", "lb-ebpf-tests", "lb-common"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `line` without its comment and the contents of its string literals.
fn code_of(line: &str) -> String {
    let mut code = String::new();
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '/' if chars.peek() == Some(&'/') => break,
            _ => code.push(c),
        }
    }
    code
}

/// Where `line` opens an unsafe block, impl, fn or extern block (not in a comment or a
/// string).
fn opens_unsafe(line: &str) -> bool {
    let code = code_of(line);
    let word = "unsafe";
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + word.len()..];
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && [" {", " impl", " fn", " extern"]
                .iter()
                .any(|k| after.starts_with(k))
    })
}

/// True when the comment lines (and attributes) right above line `i` hold `SAFETY:`.
fn has_safety_comment(lines: &[&str], i: usize) -> bool {
    if lines[i].contains("// SAFETY:") {
        return true;
    }
    for line in lines[..i].iter().rev() {
        let t = line.trim_start();
        if t.starts_with("//") {
            if t.contains("SAFETY:") {
                return true;
            }
        } else if !t.starts_with("#[") {
            return false;
        }
    }
    false
}

#[test]
fn every_unsafe_in_userspace_says_why_it_is_sound() {
    let mut sites = Vec::new();
    let mut undocumented = Vec::new();
    for krate in USERSPACE {
        let mut files = Vec::new();
        for dir in ["src", "tests", "benches", "build.rs"] {
            let path = root().join(krate).join(dir);
            if path.is_file() {
                files.push(path);
            } else {
                rust_files(&path, &mut files);
            }
        }
        for file in files {
            let text = fs::read_to_string(&file).expect("read");
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if opens_unsafe(line) {
                    let at = format!("{}:{}", file.display(), i + 1);
                    if !has_safety_comment(&lines, i) {
                        undocumented.push(at.clone());
                    }
                    sites.push(at);
                }
            }
        }
    }
    println!("{} unsafe sites in userspace:", sites.len());
    for s in &sites {
        println!("  {s}");
    }
    assert!(
        undocumented.is_empty(),
        "unsafe without a `// SAFETY:` comment above it:\n{}",
        undocumented.join("\n")
    );
    // The scan finds what it looks for (a scan that matched nothing would pass anything).
    assert!(
        sites.iter().any(|s| s.contains("maps/batch.rs")),
        "{sites:?}"
    );
}

#[test]
fn the_scan_tells_code_from_comments_and_names() {
    assert!(opens_unsafe("    let x = unsafe { f() };"));
    assert!(opens_unsafe("unsafe impl aya::Pod for T {}"));
    assert!(opens_unsafe("pub unsafe fn f() {}"));
    assert!(!opens_unsafe("// unsafe { in a comment }"));
    assert!(!opens_unsafe("fn not_unsafe {}"));
    assert!(!opens_unsafe("let s = \"unsafe\";"));
    assert!(!opens_unsafe("let s = \"a \\\" unsafe { b }\";"));
    assert!(opens_unsafe("f(\"x\", unsafe { g() });"));
    let lines = [
        "// SAFETY: why",
        "#[cfg(x)]",
        "unsafe { f() }",
        "g();",
        "unsafe { h() }",
    ];
    assert!(has_safety_comment(&lines, 2));
    assert!(!has_safety_comment(&lines, 4));
}

#[test]
fn each_userspace_crate_denies_undocumented_unsafe() {
    let workspace = fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let lints = workspace
        .split("[workspace.lints.clippy]")
        .nth(1)
        .expect("a [workspace.lints.clippy] table");
    assert!(
        lints
            .lines()
            .take_while(|l| !l.starts_with('['))
            .any(|l| l.replace(' ', "") == "undocumented_unsafe_blocks=\"deny\""),
        "undocumented_unsafe_blocks is not denied: {lints}"
    );
    for krate in USERSPACE {
        let manifest =
            fs::read_to_string(root().join(krate).join("Cargo.toml")).expect("Cargo.toml");
        let takes = manifest
            .split("[lints]")
            .nth(1)
            .is_some_and(|t| t.trim_start().starts_with("workspace = true"));
        assert!(takes, "{krate}/Cargo.toml lacks `[lints] workspace = true`");
    }
}
