//! Every relative link of the documentation resolves: README.md, docs/*.md and the deploy
//! kit's Markdown (deploy/**/*.md). A link to a file needs the file; a `#anchor` needs a
//! heading whose GitHub anchor it is (lowercase, spaces to '-', punctuation dropped,
//! repeated headings numbered `-1`, `-2`); `#L<n>` on a file other than Markdown needs that
//! line. Links inside fenced code blocks and inline code are not links. Also: the README
//! keeps what a newcomer reads first, and the runbook keeps its entries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The text outside fenced code blocks, line by line, with inline code spans blanked.
fn prose_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            out.push(String::new());
            continue;
        }
        if fence {
            out.push(String::new());
            continue;
        }
        // Blank `code` spans (a link's text may hold code: keep the brackets around it).
        let mut s = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                s.push('`');
            } else if in_code {
                s.push('x');
            } else {
                s.push(c);
            }
        }
        out.push(s);
    }
    out
}

/// The anchors of a Markdown file's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let a = common::github_anchor(&line[hashes..]);
            let n = seen.entry(a.clone()).or_insert(0);
            out.insert(if *n == 0 {
                a.clone()
            } else {
                format!("{a}-{n}")
            });
            *n += 1;
        }
    }
    out
}

/// `](target)` link targets of a file, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in prose_lines(text).iter().enumerate() {
        let mut rest = line.as_str();
        while let Some(p) = rest.find("](") {
            let after = &rest[p + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            // `[text](target "title")`
            let target = target.split(' ').next().unwrap_or("");
            out.push((i + 1, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for dir in ["docs", "deploy"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "md") {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let files = markdown_files();
    assert!(files.len() >= 10, "{files:?}");
    let mut problems = Vec::new();
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.starts_with('<')
            {
                continue;
            }
            checked += 1;
            let (path, frag) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                f.clone()
            } else {
                f.parent().unwrap().join(path)
            };
            if !dest.exists() {
                problems.push(format!(
                    "{rel}:{line}: {target}: no file {}",
                    dest.display()
                ));
                continue;
            }
            let Some(frag) = frag else { continue };
            if dest.extension().is_some_and(|x| x == "md") {
                let have = anchors(&std::fs::read_to_string(&dest).unwrap());
                if !have.contains(frag) {
                    problems.push(format!(
                        "{rel}:{line}: {target}: no heading with anchor #{frag}"
                    ));
                }
            } else if let Some(n) = frag.strip_prefix('L') {
                let n: usize = n
                    .split('-')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap_or_else(|_| panic!("{rel}:{line}: {target}"));
                let lines = std::fs::read_to_string(&dest).unwrap().lines().count();
                if n == 0 || n > lines {
                    problems.push(format!(
                        "{rel}:{line}: {target}: the file has {lines} lines"
                    ));
                }
            } else if !dest.is_dir() {
                problems.push(format!(
                    "{rel}:{line}: {target}: an anchor into a file that has none"
                ));
            }
        }
    }
    assert!(checked > 200, "only {checked} links found");
    assert!(problems.is_empty(), "dead links:\n{}", problems.join("\n"));
}

#[test]
fn the_anchor_rules_are_githubs() {
    assert_eq!(
        common::github_anchor("Several streams: cloudwatch.streams"),
        "several-streams-cloudwatchstreams"
    );
    assert_eq!(
        common::github_anchor("Readiness: /readyz"),
        "readiness-readyz"
    );
    assert_eq!(
        common::github_anchor("Alert: AuditRelayDown"),
        "alert-auditrelaydown"
    );
    assert_eq!(
        common::github_anchor("A relay's spool was lost"),
        "a-relays-spool-was-lost"
    );
    assert_eq!(
        common::github_anchor("Upgrades: probes answer while the spool is migrated"),
        "upgrades-probes-answer-while-the-spool-is-migrated"
    );
    assert_eq!(
        common::github_anchor("`verify --cloudwatch`"),
        "verify---cloudwatch"
    );
    let a = anchors("# A\n## Examples\n```\n# not a heading\n```\n### Examples\n");
    assert_eq!(a, ["a", "examples", "examples-1"].map(String::from).into());
    // A link in code is no link.
    assert!(
        links("see `[x](nowhere.md)` and\n```\n[y](gone.md)\n```\n[z](here.md)")
            .iter()
            .all(|(_, t)| t == "here.md")
    );
}

#[test]
fn the_readme_keeps_the_newcomers_part_and_the_runbook_its_entries() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    // The Quick start's two commands, as they are.
    assert!(
        readme.contains("```sh\nscripts/demo\nscripts/test\n```"),
        "Quick start"
    );
    let headings: Vec<&str> = readme.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(
        headings,
        [
            "## Quick start",
            "## A minimal config",
            "## Where to go next"
        ]
    );
    assert!(readme.len() < 12_000, "README.md is {} bytes", readme.len());
    for doc in [
        "configuration.md",
        "query-api.md",
        "integrity.md",
        "deployment.md",
        "operations.md",
    ] {
        assert!(
            readme.contains(&format!("(docs/{doc})")),
            "README links docs/{doc}"
        );
    }
    let ops = anchors(&std::fs::read_to_string(root().join("docs/operations.md")).unwrap());
    for entry in [
        "restoring-a-spool-or-the-installation-store-from-a-backup",
        "moving-a-relay-to-a-new-pod",
        "rotating-the-signing-key",
        "upgrading-across-a-spool-or-schema-version",
        "alert-runbook",
    ] {
        assert!(ops.contains(entry), "docs/operations.md: #{entry}");
    }
}
