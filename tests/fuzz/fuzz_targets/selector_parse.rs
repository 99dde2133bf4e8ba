//! Fleet selectors (`model::selector`): a device parses every fleet
//! deployment's selector from the broker and evaluates it on its labels;
//! `kedge label node` parses labels to set (`parse_labels`).
//!
//! Checks, beyond "never panics":
//! - the canonical form (`Display`) of a parsed selector parses back to the
//!   same selector (documented on `Display`), and prints the same again;
//! - the bounds hold (at most `MAX_REQUIREMENTS` requirements, `MAX_VALUES`
//!   values in a set);
//! - matching is total on label sets made from the input;
//! - labels from `parse_labels` pass the label rules, read back from their
//!   `k=v,…` form, and are matched by the selector of the same text.

#![no_main]

use std::collections::BTreeMap;

use kedge::model::selector::{MAX_REQUIREMENTS, MAX_VALUES, Op, Selector};
use kedge::model::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Selector::parse("spec.selector", text);
    let labels = Selector::parse_labels("labels", text);

    if let Ok(sel) = &parsed {
        assert!(sel.requirements.len() <= MAX_REQUIREMENTS);
        for r in &sel.requirements {
            if let Op::In(v) | Op::NotIn(v) = &r.op {
                assert!(v.len() <= MAX_VALUES);
            }
        }
        let shown = sel.to_string();
        let back = match Selector::parse("spec.selector", &shown) {
            Ok(b) => b,
            Err(e) => panic!("{text:?} parses, its canonical form {shown:?} does not: {e}"),
        };
        assert_eq!(&back, sel, "{text:?} → {shown:?} reads back differently");
        assert_eq!(back.to_string(), shown);

        // Label sets from the selector's own keys and values.
        let mut set = BTreeMap::new();
        for r in &sel.requirements {
            let v = match &r.op {
                Op::Equals(v) | Op::NotEquals(v) => v.clone(),
                Op::In(vs) | Op::NotIn(vs) => vs.first().cloned().unwrap_or_default(),
                Op::GreaterThan(n) | Op::LessThan(n) => n.saturating_add(1).to_string(),
                Op::Exists | Op::DoesNotExist => String::new(),
            };
            set.insert(r.key.clone(), v);
            let _ = sel.matches(&set);
        }
        let _ = sel.matches(&BTreeMap::new());
    }

    if let Ok(map) = &labels {
        if let Err(e) = validate::labels("labels", map) {
            panic!("parse_labels({text:?}) returned labels that break the rules: {e}");
        }
        let shown: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let back = Selector::parse_labels("labels", &shown.join(","))
            .expect("labels in their k=v form parse back");
        assert_eq!(&back, map);
        if let Ok(sel) = &parsed {
            assert!(
                sel.matches(map),
                "{text:?} as a selector does not match its own labels"
            );
        }
    }
});
