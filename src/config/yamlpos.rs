//! Source positions for YAML documents.
//!
//! serde_yaml reports a line and column for syntax and type errors, but our own validation
//! (an unknown pool, `lo > hi`, a missing `in_file`) runs after deserialisation, when the
//! positions are gone. Ops need `FILE:LINE:COLUMN` for those too, so we parse the same
//! text once more with a marked event parser and keep a map from a value's path
//! (`rules.3.when.uid.ranges.1`) to where its key and its value start.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a YAML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

/// A message tied to a place in a file: what `check`, `/reload` and the logs print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{}:{}: {message}", pos.line, pos.col)]
pub struct LocatedError {
    /// The file as the user configured it (not canonicalised), so the message names what
    /// they typed.
    pub file: String,
    /// Where the problem is; 1:1 when the file could not be read at all.
    pub pos: Pos,
    /// What is wrong, naming the field path.
    pub message: String,
}

impl LocatedError {
    /// Builds an error at a given position.
    pub fn new(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            pos,
            message: message.into(),
        }
    }

    /// Turns a serde_yaml error into a located one, keeping its line and column.
    pub fn from_serde(file: &str, err: &serde_yaml::Error) -> Self {
        let pos = err
            .location()
            .map(|l| Pos {
                line: l.line(),
                col: l.column(),
            })
            .unwrap_or(Pos { line: 1, col: 1 });
        // serde_yaml appends " at line X column Y" to its messages; we print the position
        // in front instead, so strip the duplicate.
        let mut message = err.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        Self::new(file, pos, message)
    }
}

/// A path into a YAML document: mapping keys and sequence indices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct YamlPath(String);

impl YamlPath {
    /// The document root.
    pub(crate) fn root() -> Self {
        Self(String::new())
    }

    /// The path of a mapping key below this one.
    pub(crate) fn key(&self, k: &str) -> Self {
        if self.0.is_empty() {
            Self(k.to_owned())
        } else {
            Self(format!("{}.{k}", self.0))
        }
    }

    /// The path of a sequence item below this one.
    pub(crate) fn index(&self, i: usize) -> Self {
        self.key(&i.to_string())
    }

    /// The path as text, `rules.3.when`; empty for the root.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(root)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// Where each key and value of a document starts.
#[derive(Debug, Default)]
pub(crate) struct PosIndex {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
}

impl PosIndex {
    /// Indexes `src`. A document that does not parse yields an empty index: serde_yaml
    /// reports that error with its own position before anyone asks us.
    pub(crate) fn new(src: &str) -> Self {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(src);
        if parser.load(&mut b, false).is_err() {
            return Self::default();
        }
        b.index
    }

    /// Where the key naming `path` starts; for sequence items (which have no key) and the
    /// root, where the value starts.
    pub(crate) fn key(&self, path: &YamlPath) -> Pos {
        self.keys
            .get(path.as_str())
            .or_else(|| self.values.get(path.as_str()))
            .copied()
            .unwrap_or(Pos { line: 1, col: 1 })
    }

    /// Where the value at `path` starts; the key's position when the value is absent.
    pub(crate) fn value(&self, path: &YamlPath) -> Pos {
        self.values
            .get(path.as_str())
            .or_else(|| self.keys.get(path.as_str()))
            .copied()
            .unwrap_or(Pos { line: 1, col: 1 })
    }
}

/// One open collection while walking the event stream.
enum Frame {
    /// A mapping; `pending_key` holds the key just read, waiting for its value.
    Map {
        path: String,
        pending_key: Option<String>,
        /// No key seen yet: the first key's position is the mapping's own (block
        /// mappings report their start after the first key otherwise).
        first: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    index: PosIndex,
}

fn join(parent: &str, seg: &str) -> String {
    if parent.is_empty() {
        seg.to_owned()
    } else {
        format!("{parent}.{seg}")
    }
}

impl Builder {
    /// Registers a value starting at `mark` and returns its path, or `None` when the event
    /// was a mapping key (which we remember instead).
    fn value_at(&mut self, mark: Marker, key_text: Option<&str>) -> Option<String> {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => {
                self.index.values.insert(String::new(), pos);
                Some(String::new())
            }
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                self.index.values.insert(p.clone(), pos);
                Some(p)
            }
            Some(Frame::Map {
                path,
                pending_key,
                first,
            }) => match pending_key.take() {
                Some(k) => {
                    let p = join(path, &k);
                    self.index.values.insert(p.clone(), pos);
                    Some(p)
                }
                None => {
                    // This scalar is a key. Complex (collection) keys are not used in our
                    // files; they get an empty name.
                    let k = key_text.unwrap_or("").to_owned();
                    if std::mem::take(first) {
                        self.index.values.insert(path.clone(), pos);
                    }
                    self.index.keys.insert(join(path, &k), pos);
                    *pending_key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                self.value_at(mark, Some(&text));
            }
            Event::Alias(_) => {
                self.value_at(mark, None);
            }
            Event::MappingStart(..) => {
                let path = self.value_at(mark, None).unwrap_or_default();
                self.stack.push(Frame::Map {
                    path,
                    pending_key: None,
                    first: true,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.value_at(mark, None).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
version: \"1\"
rules:
  - name: a
    when:
      uid: { ranges: [\"1-2\", \"5-3\"] }
    route: gray
  - name: b
    route: stable
";

    #[test]
    fn finds_keys_and_values() {
        let idx = PosIndex::new(DOC);
        let root = YamlPath::root();
        assert_eq!(idx.key(&root.key("rules")), Pos { line: 2, col: 1 });
        let r0 = root.key("rules").index(0);
        assert_eq!(idx.value(&r0), Pos { line: 3, col: 5 });
        assert_eq!(idx.key(&r0.key("name")), Pos { line: 3, col: 5 });
        assert_eq!(idx.value(&r0.key("name")), Pos { line: 3, col: 11 });
        let bad = r0.key("when").key("uid").key("ranges").index(1);
        assert_eq!(idx.value(&bad), Pos { line: 5, col: 30 });
        let r1 = root.key("rules").index(1);
        assert_eq!(idx.value(&r1.key("route")), Pos { line: 8, col: 12 });
    }

    #[test]
    fn located_error_formats_like_compilers() {
        let e = LocatedError::new("rules.yaml", Pos { line: 4, col: 7 }, "boom");
        assert_eq!(e.to_string(), "rules.yaml:4:7: boom");
    }

    #[test]
    fn serde_errors_keep_position_once() {
        let err = serde_yaml::from_str::<std::collections::BTreeMap<String, u32>>("a: 1\nb: x\n")
            .err()
            .map(|e| LocatedError::from_serde("f.yaml", &e));
        let e = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("f.yaml:2:4: "), "{e}");
        assert!(!e.contains("at line"), "{e}");
    }
}
