//! Kubernetes label selectors in their string form (`kubectl get -l`):
//! `building=b43,tier in (a,b),!beta`. Devices evaluate fleet selectors
//! against their own labels, so this is in every build. Pure: no I/O.
//!
//! The grammar is the one of `k8s.io/apimachinery/pkg/labels.Parse`:
//! requirements joined by `,` (all must hold), each one of
//! `key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (v1,v2)`,
//! `key notin (v1,v2)`, `key>N`, `key<N`. The empty selector matches every
//! label set. Keys and values follow the label rules (`validate`).

use std::collections::BTreeMap;
use std::fmt;

use super::validate::{self, Invalid};

/// Requirements in one selector (a bound so one message cannot make a
/// device evaluate an unbounded expression).
pub const MAX_REQUIREMENTS: usize = 64;
/// Values in one `in`/`notin` set.
pub const MAX_VALUES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match (&self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
            (Op::Equals(want), Some(v)) => v == want,
            (Op::Equals(_), None) => false,
            // As in Kubernetes: `!=` and `notin` hold when the key is absent.
            (Op::NotEquals(want), v) => v != Some(want),
            (Op::In(set), Some(v)) => set.contains(v),
            (Op::In(_), None) => false,
            (Op::NotIn(set), v) => v.is_none_or(|v| !set.contains(v)),
            (Op::GreaterThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (Op::LessThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            (Op::GreaterThan(_) | Op::LessThan(_), None) => false,
        }
    }
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses the string form; `field` names it in errors.
    pub fn parse(field: &str, input: &str) -> Result<Selector, Invalid> {
        let mut p = Parser {
            field,
            input,
            chars: input.char_indices().peekable(),
        };
        let mut requirements = Vec::new();
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector::everything());
        }
        loop {
            requirements.push(p.requirement()?);
            if requirements.len() > MAX_REQUIREMENTS {
                return Err(p.err(format!("Too many requirements: at most {MAX_REQUIREMENTS}")));
            }
            p.skip_ws();
            match p.next() {
                None => break,
                Some(',') => continue,
                Some(c) => return Err(p.err(format!("unexpected {c:?}, expected ','"))),
            }
        }
        Ok(Selector { requirements })
    }

    /// Parses `k=v,k2=v2` (labels to set, as in `kubectl label`): only
    /// equality, each key once, at most `validate::MAX_LABELS` of them (the
    /// bound every receiver of a label set applies).
    pub fn parse_labels(field: &str, input: &str) -> Result<BTreeMap<String, String>, Invalid> {
        let mut out = BTreeMap::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| Invalid {
                field: field.to_string(),
                detail: format!("Invalid value: {part:?}: a label is key=value"),
            })?;
            validate::label_key(field, k)?;
            validate::label_value(field, v)?;
            if out.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Invalid {
                    field: field.to_string(),
                    detail: format!("Duplicate value: label {k:?} is given twice"),
                });
            }
            if out.len() > validate::MAX_LABELS {
                return Err(Invalid {
                    field: field.to_string(),
                    detail: format!("Too many: more than {} labels", validate::MAX_LABELS),
                });
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Selector {
    /// The canonical string form (parses back to the same selector).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let k = &r.key;
            match &r.op {
                Op::Exists => write!(f, "{k}")?,
                Op::DoesNotExist => write!(f, "!{k}")?,
                Op::Equals(v) => write!(f, "{k}={v}")?,
                Op::NotEquals(v) => write!(f, "{k}!={v}")?,
                Op::In(vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Op::NotIn(vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Op::GreaterThan(n) => write!(f, "{k}>{n}")?,
                Op::LessThan(n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

struct Parser<'a> {
    field: &'a str,
    input: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

impl Parser<'_> {
    fn err(&self, detail: String) -> Invalid {
        Invalid {
            field: self.field.to_string(),
            detail: format!("Invalid value: {:?}: {detail}", self.input),
        }
    }
    fn skip_ws(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }
    fn at_end(&mut self) -> bool {
        self.chars.peek().is_none()
    }
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|(_, c)| *c)
    }
    fn next(&mut self) -> Option<char> {
        self.chars.next().map(|(_, c)| c)
    }
    fn word(&mut self) -> String {
        let mut s = String::new();
        while let Some((_, c)) = self.chars.next_if(|(_, c)| is_word(*c)) {
            s.push(c);
        }
        s
    }
    fn key(&mut self) -> Result<String, Invalid> {
        self.skip_ws();
        let key = self.word();
        if key.is_empty() {
            return Err(self.err("expected a label key".into()));
        }
        validate::label_key(self.field, &key)?;
        Ok(key)
    }
    fn value(&mut self) -> Result<String, Invalid> {
        self.skip_ws();
        let v = self.word();
        validate::label_value(self.field, &v)?;
        Ok(v)
    }
    fn set(&mut self) -> Result<Vec<String>, Invalid> {
        self.skip_ws();
        if self.next() != Some('(') {
            return Err(self.err("expected '(' after in/notin".into()));
        }
        let mut values = Vec::new();
        loop {
            values.push(self.value()?);
            if values.len() > MAX_VALUES {
                return Err(self.err(format!("Too many values in a set: at most {MAX_VALUES}")));
            }
            self.skip_ws();
            match self.next() {
                Some(',') => continue,
                Some(')') => break,
                _ => return Err(self.err("expected ',' or ')' in a value set".into())),
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }
    fn number(&mut self) -> Result<i64, Invalid> {
        let v = self.value()?;
        v.parse()
            .map_err(|_| self.err(format!("{v:?} is not an integer (for '>' or '<')")))
    }
    fn requirement(&mut self) -> Result<Requirement, Invalid> {
        self.skip_ws();
        if self.peek() == Some('!') {
            self.next();
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        let key = self.key()?;
        self.skip_ws();
        let op = match self.peek() {
            None | Some(',') => Op::Exists,
            Some('=') => {
                self.next();
                if self.peek() == Some('=') {
                    self.next();
                }
                Op::Equals(self.value()?)
            }
            Some('!') => {
                self.next();
                if self.next() != Some('=') {
                    return Err(self.err(format!("expected '!=' after {key:?}")));
                }
                Op::NotEquals(self.value()?)
            }
            Some('>') => {
                self.next();
                Op::GreaterThan(self.number()?)
            }
            Some('<') => {
                self.next();
                Op::LessThan(self.number()?)
            }
            Some(_) => match self.word().as_str() {
                "in" => Op::In(self.set()?),
                "notin" => Op::NotIn(self.set()?),
                other => {
                    return Err(self.err(format!(
                        "unexpected {other:?} after key {key:?}: expected =, ==, !=, in, notin, >, < or ','"
                    )));
                }
            },
        };
        Ok(Requirement { key, op })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse("selector", s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn the_issue_example_matches_as_kubernetes_would() {
        let s = sel("building=b43,tier in (a,b),!beta");
        assert!(s.matches(&labels(&[("building", "b43"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("building", "b43"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("building", "b43"), ("tier", "b"), ("beta", "")])));
        assert!(!s.matches(&labels(&[("tier", "a")])));
    }

    #[test]
    fn every_operator() {
        let l = labels(&[("a", "1"), ("b", "x"), ("n", "10")]);
        for (s, want) in [
            ("", true),
            ("a", true),
            ("z", false),
            ("!z", true),
            ("!a", false),
            ("a=1", true),
            ("a==1", true),
            ("a=2", false),
            ("a!=2", true),
            ("z!=2", true),
            ("b in (x, y)", true),
            ("b notin (x)", false),
            ("z notin (x)", true),
            ("z in (x)", false),
            ("n>9", true),
            ("n>10", false),
            ("n<11", true),
            ("b>1", false),
            ("  a = 1 ,  b  in(x)  ", true),
            ("kedge.io/tier=gold", false),
            ("a=", false),
        ] {
            assert_eq!(sel(s).matches(&l), want, "{s:?}");
        }
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for s in [
            "building=b43,tier in (a,b),!beta",
            "a!=1,b notin (x,y),c,n>3,m<2",
            "example.com/zone=eu-1",
            "",
        ] {
            let parsed = sel(s);
            assert_eq!(parsed.to_string(), s);
            assert_eq!(sel(&parsed.to_string()), parsed);
        }
        assert_eq!(sel("t in (b,a,b)").to_string(), "t in (a,b)");
    }

    #[test]
    fn bad_selectors_name_the_field_and_the_problem() {
        for (s, needle) in [
            ("a=b=c", "expected ','"),
            ("tier in a,b", "expected '('"),
            ("tier in (a", "expected ','"),
            ("a!b", "expected '!='"),
            ("-a=1", "label key"),
            ("a=-1-", "label value"),
            ("n>x", "not an integer"),
            ("a b", "unexpected \"b\""),
            (",", "expected a label key"),
            ("a,", "expected a label key"),
        ] {
            let e = Selector::parse("spec.selector", s).expect_err(s);
            assert_eq!(e.field, "spec.selector", "{s:?}");
            assert!(e.detail.contains(needle), "{s:?}: {}", e.detail);
        }
        let many = vec!["a"; MAX_REQUIREMENTS + 1].join(",");
        assert!(Selector::parse("s", &many).is_err());
    }

    #[test]
    fn labels_to_set() {
        assert_eq!(
            Selector::parse_labels("labels", "building=b43, tier=a").expect("parses"),
            labels(&[("building", "b43"), ("tier", "a")])
        );
        assert_eq!(
            Selector::parse_labels("labels", "").expect("parses"),
            BTreeMap::new()
        );
        assert!(Selector::parse_labels("labels", "a=1,a=2").is_err());
        assert!(Selector::parse_labels("labels", "a").is_err());
        assert!(Selector::parse_labels("labels", "a=b c").is_err());
    }

    /// Found by the `selector_parse` fuzz target's property (labels it
    /// returns pass `validate::labels`), on a made input:
    /// tests/fuzz/regressions/selector_parse. 257 labels passed `node.labels`
    /// in the configuration, and every node status carrying them was then
    /// refused by its receivers.
    #[test]
    fn labels_to_set_are_bounded_like_every_label_set() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let max = Selector::parse_labels("node.labels", &list(validate::MAX_LABELS))
            .expect("the most labels a set may have");
        assert_eq!(validate::labels("node.labels", &max), Ok(()));
        let err = Selector::parse_labels("node.labels", &list(validate::MAX_LABELS + 1))
            .expect_err("one too many");
        assert_eq!(err.field, "node.labels");
        assert!(err.detail.contains("Too many"), "{}", err.detail);
    }
}
