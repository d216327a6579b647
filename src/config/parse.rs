//! From TOML text to [`FileConfig`], with every problem listed:
//!
//! - a syntax error names its line, column and (when the line has one) the key;
//! - every type error, unknown key and missing key is listed, not only the first. serde
//!   stops at the first error, so the document is read as a TOML table first and
//!   deserialized again after each error with the offending key taken out (keys with a
//!   default) or replaced by a stand-in value of another type (required keys), until it
//!   deserializes or the stand-ins run out.

use super::{FileConfig, Problem};
use serde_path_to_error::Segment;
use toml::{Table, Value};

/// At most this many rounds of deserialization (one per problem found, and a few per
/// stand-in tried).
const MAX_ROUNDS: usize = 200;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn dotted(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Values tried in place of a key whose value is wrong or missing, so that reading can
/// go on past it: one of them has the type the key wants.
fn stand_ins() -> Vec<Option<Value>> {
    vec![
        None,
        Some(Value::String("127.0.0.1:0".into())),
        Some(Value::String("1s".into())),
        Some(Value::Integer(1)),
        Some(Value::Boolean(true)),
        Some(Value::Array(Vec::new())),
        Some(Value::Table(Table::new())),
        Some(Value::String("x".into())),
        Some(Value::Float(1.0)),
    ]
}

/// Parses and deserializes `text`; every problem, each naming its key.
pub(super) fn parse(text: &str) -> Result<FileConfig, Vec<Problem>> {
    let mut doc: Table = text.parse().map_err(|e| vec![syntax_problem(text, &e)])?;
    let mut problems: Vec<Problem> = Vec::new();
    // The key being replaced, and the stand-ins not tried yet.
    let mut replacing: Option<(Vec<Step>, Vec<Option<Value>>)> = None;
    // Every key given a stand-in: what is wrong inside one is not the file's problem.
    let mut ours: Vec<Vec<Step>> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let err = match serde_path_to_error::deserialize::<_, FileConfig>(Value::Table(doc.clone()))
        {
            Ok(c) if problems.is_empty() => return Ok(c),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        let mut path = steps(err.path());
        let message = err.inner().message().to_string();
        let missing = missing_field(&message);
        if let Some(field) = &missing {
            path.push(Step::Key(field.clone()));
        }
        let retry = matches!(&replacing, Some((p, _)) if *p == path);
        if !retry {
            let inside_ours = ours
                .iter()
                .any(|o| path.len() > o.len() && path.starts_with(o));
            if !inside_ours {
                // A missing key is named by its section, as serde says it.
                let key = if missing.is_some() {
                    dotted(&path[..path.len() - 1])
                } else {
                    dotted(&path)
                };
                problems.push(Problem { key, message });
            }
            replacing = Some((path.clone(), stand_ins()));
            ours.push(path.clone());
        }
        let Some((_, left)) = replacing.as_mut() else {
            unreachable!("set above")
        };
        loop {
            if left.is_empty() {
                return Err(problems);
            }
            if set(&mut doc, &path, left.remove(0)) {
                break;
            }
        }
    }
    Err(problems)
}

/// `missing field `X``: X.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// Sets (or with `None` removes) the value at `path`; false when the path is not there.
fn set(doc: &mut Table, path: &[Step], value: Option<Value>) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut root = Value::Table(std::mem::take(doc));
    let done = apply(&mut root, parents, last, value);
    if let Value::Table(t) = root {
        *doc = t;
    }
    done
}

fn apply(root: &mut Value, parents: &[Step], last: &Step, value: Option<Value>) -> bool {
    let mut here = root;
    for step in parents {
        let next = match (step, here) {
            (Step::Key(k), Value::Table(t)) => t.get_mut(k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => here = n,
            None => return false,
        }
    }
    match (last, here, value) {
        (Step::Key(k), Value::Table(t), Some(v)) => {
            t.insert(k.clone(), v);
            true
        }
        (Step::Key(k), Value::Table(t), None) => t.remove(k).is_some(),
        (Step::Index(i), Value::Array(a), Some(v)) if *i < a.len() => {
            a[*i] = v;
            true
        }
        // An array element cannot be taken out without renumbering the rest.
        _ => false,
    }
}

/// A syntax error: its line and column, and the key of that line (under its table).
fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let msg = e.message().trim_end().to_string();
    let Some(span) = e.span() else {
        return Problem {
            key: String::new(),
            message: format!("not valid TOML: {msg}"),
        };
    };
    let at = span.start.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let key = key_of_line(text, line_start);
    Problem {
        key,
        message: format!("line {line}, column {column}: not valid TOML: {msg}"),
    }
}

/// `table.key` for the line starting at `line_start`, if it is a `key = value` line with
/// a plain key; the table is the nearest `[table]` or `[[table]]` header above it.
fn key_of_line(text: &str, line_start: usize) -> String {
    let line = text[line_start..].lines().next().unwrap_or("");
    let plain = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                let p = part.trim();
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
    };
    let mut table = String::new();
    for l in text[..line_start].lines() {
        let l = l.trim();
        if l.starts_with('[') {
            let name = l.trim_start_matches('[');
            if let Some(end) = name.find(']') {
                let name = name[..end].trim();
                if plain(name) {
                    table = name.replace(' ', "");
                }
            }
        }
    }
    let line = line.trim();
    if line.starts_with('[') {
        let name = line.trim_start_matches('[');
        let name = name.split(']').next().unwrap_or("").trim();
        return if plain(name) { name.to_string() } else { table };
    }
    let Some((k, _)) = line.split_once('=') else {
        return table;
    };
    let k = k.trim();
    if !plain(k) {
        return table;
    }
    let k: String = k.split('.').map(str::trim).collect::<Vec<_>>().join(".");
    if table.is_empty() {
        k
    } else {
        format!("{table}.{k}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => vec![],
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn a_syntax_error_names_its_line_column_and_key() {
        let p = keys("[source]\npaths = [\"a\"]\n\n[log]\nlevel = info\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("log.level: line 5, column 9: not valid TOML"),
            "{p:?}"
        );
    }

    #[test]
    fn every_type_error_is_listed() {
        let p = keys(
            "[source]\npaths = \"a\"\nformt = 1\n[spool]\nretention_days = \"ninety\"\nmax_bytes = \"lots\"\n[admin]\nlisten = 5\n[[api.tokens]]\nname = 3\n",
        );
        let keys: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
        for want in [
            "source.paths",
            "source.formt",
            "spool.retention_days",
            "spool.max_bytes",
            "admin.listen",
            "api",
        ] {
            assert!(keys.contains(&want), "{want} in {p:#?}");
        }
    }

    #[test]
    fn stand_ins_reach_past_required_keys() {
        // `source.paths` is required: a wrong type there must not hide the spool's error.
        let p = keys("[source]\npaths = 3\n[spool]\ncommit_interval = \"soon\"\n");
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].starts_with("source.paths: invalid type"), "{p:?}");
        assert!(
            p[1].starts_with("spool.commit_interval: invalid duration"),
            "{p:?}"
        );
    }
}
