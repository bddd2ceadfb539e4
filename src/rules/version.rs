//! `app_version` conditions: comparators against [`Version`]s.

use std::cmp::Ordering;

use crate::markers::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    pub(super) fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
        }
    }
}

/// `">=5.2.0, <6"`: comparators separated by `,`, all of which must hold.
pub(super) fn parse_version_req(s: &str) -> Result<Box<[(CmpOp, Version)]>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "bad comparator in {s:?}: empty (expected e.g. \">=5.2.0, <6\")"
            ));
        }
        let (op, rest) = [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
            ("=", CmpOp::Eq),
        ]
        .into_iter()
        .find_map(|(tok, op)| part.strip_prefix(tok).map(|rest| (op, rest)))
        .ok_or_else(|| {
            format!(
                "bad comparator {part:?}: expected one of =, ==, !=, >, >=, <, <= then a version"
            )
        })?;
        let v = Version::parse(rest.trim()).ok_or_else(|| {
            format!(
                "bad comparator {part:?}: {:?} is not a version",
                rest.trim()
            )
        })?;
        out.push((op, v));
    }
    Ok(out.into_boxed_slice())
}
