//! What the desired indexes (`{prefix}/{node}/index/{author}`) say about the
//! pods the agent runs, as a pure function: which pods no author wants any
//! more (their tombstone was lost with a broker session), and which listed
//! specs never arrived. See docs/wire.md, "Desired index".
//!
//! Rules:
//! - no author has an index → unknown: nothing is deleted (a broker that
//!   lost its state must not kill pods); the caller reports it;
//! - an index that cannot be read → unknown as well: a pod it may list must
//!   not be deleted because the reader failed;
//! - otherwise a pod from the broker is deleted when no index lists it with
//!   the same uid, unless its spec arrived on this connection (the spec is
//!   retained, or was just published, so its author still wants it: this
//!   covers the moment between an author's spec and its index, and authors
//!   without an index);
//! - static pods (manifest directory) are never touched;
//! - an index entry whose spec (that uid at that generation or newer) the
//!   agent does not have, and did not refuse, is reported: the broker lost
//!   that spec; nothing is started or stopped for it.

use std::collections::BTreeMap;

use crate::model::{DesiredIndex, PodKey, PodSource};

/// One author's index as last received on this connection.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthorIndex {
    Listed(DesiredIndex),
    /// The payload did not decode; the error text.
    Unreadable(String),
}

/// A pod the agent has (the newest spec, including a pending replacement).
#[derive(Debug, Clone, PartialEq)]
pub struct Have {
    pub key: PodKey,
    pub uid: String,
    pub generation: u64,
    pub source: PodSource,
    /// Its spec arrived on the current connection.
    pub spec_seen: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No usable index: keep everything; report `reason: message` once.
    Unknown {
        reason: &'static str,
        message: String,
    },
    Known {
        /// Pods to delete: no index lists them.
        delete: Vec<PodKey>,
        /// Listed specs the agent never received: (pod, uid, message).
        missing: Vec<(PodKey, String, String)>,
    },
}

/// `refused` are pods whose last spec was refused (they have a Failed
/// status and no pod): their spec did arrive.
pub fn reconcile(
    indexes: &BTreeMap<String, AuthorIndex>,
    have: &[Have],
    refused: &[PodKey],
) -> Verdict {
    if let Some((author, AuthorIndex::Unreadable(e))) = indexes
        .iter()
        .find(|(_, i)| matches!(i, AuthorIndex::Unreadable(_)))
    {
        return Verdict::Unknown {
            reason: "DesiredIndexUnreadable",
            message: format!(
                "the desired index of {author} cannot be read ({e}); no pod is deleted for lack of a listing"
            ),
        };
    }
    let listed: Vec<(&str, &crate::model::IndexEntry)> = indexes
        .iter()
        .filter_map(|(a, i)| match i {
            AuthorIndex::Listed(ix) => Some((a.as_str(), ix)),
            AuthorIndex::Unreadable(_) => None,
        })
        .flat_map(|(a, ix)| ix.pods.iter().map(move |e| (a, e)))
        .collect();
    if indexes.is_empty() {
        return Verdict::Unknown {
            reason: "DesiredIndexMissing",
            message: "no author has a desired index for this node on the broker; pods keep running, and pods deleted while this node's broker session was lost are not removed".into(),
        };
    }
    let mut delete: Vec<PodKey> = have
        .iter()
        .filter(|h| h.source == PodSource::Mqtt && !h.spec_seen)
        .filter(|h| {
            !listed.iter().any(|(_, e)| {
                e.namespace == h.key.namespace && e.name == h.key.name && e.uid == h.uid
            })
        })
        .map(|h| h.key.clone())
        .collect();
    delete.sort();
    let mut missing = Vec::new();
    for (author, e) in &listed {
        let key = e.key();
        if refused.contains(&key) {
            continue;
        }
        let found = have.iter().find(|h| h.key == key && h.uid == e.uid);
        match found {
            Some(h) if h.generation >= e.generation => {}
            Some(h) => missing.push((
                key.clone(),
                e.uid.clone(),
                format!(
                    "the desired index of {author} lists generation {} of pod {key} (uid {}), but this node received generation {}; the broker lost that spec",
                    e.generation, e.uid, h.generation
                ),
            )),
            None => missing.push((
                key.clone(),
                e.uid.clone(),
                format!(
                    "the desired index of {author} lists pod {key} (uid {}, generation {}), but its spec never arrived; the broker lost it",
                    e.uid, e.generation
                ),
            )),
        }
    }
    missing.sort();
    Verdict::Known { delete, missing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IndexEntry;

    fn entry(name: &str, uid: &str, generation: u64) -> IndexEntry {
        IndexEntry {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
            generation,
        }
    }

    fn have(name: &str, uid: &str, source: PodSource, spec_seen: bool) -> Have {
        Have {
            key: PodKey::new("default", name),
            uid: uid.into(),
            generation: 1,
            source,
            spec_seen,
        }
    }

    fn indexes(list: &[(&str, Vec<IndexEntry>)]) -> BTreeMap<String, AuthorIndex> {
        list.iter()
            .map(|(a, pods)| {
                (
                    a.to_string(),
                    AuthorIndex::Listed(DesiredIndex { pods: pods.clone() }),
                )
            })
            .collect()
    }

    #[test]
    fn without_an_index_nothing_is_deleted() {
        let pods = [have("a", "u1", PodSource::Mqtt, false)];
        assert!(matches!(
            reconcile(&BTreeMap::new(), &pods, &[]),
            Verdict::Unknown {
                reason: "DesiredIndexMissing",
                ..
            }
        ));
    }

    #[test]
    fn an_unreadable_index_deletes_nothing() {
        let mut ix = indexes(&[("cli", vec![])]);
        ix.insert("bridge".into(), AuthorIndex::Unreadable("bad".into()));
        let pods = [have("a", "u1", PodSource::Mqtt, false)];
        assert!(matches!(
            reconcile(&ix, &pods, &[]),
            Verdict::Unknown {
                reason: "DesiredIndexUnreadable",
                ..
            }
        ));
    }

    #[test]
    fn unlisted_pods_from_the_broker_are_deleted() {
        let pods = [
            have("a", "u1", PodSource::Mqtt, false),
            have("b", "u2", PodSource::Mqtt, false),
            // Not listed at all.
            have("gone", "u3", PodSource::Mqtt, false),
            // Listed under another uid: the listed pod is a new instance.
            have("c", "old", PodSource::Mqtt, false),
            // Static pods are never touched.
            have("static", "u5", PodSource::File, false),
            // Its spec came on this connection: its author still wants it.
            have("fresh", "u6", PodSource::Mqtt, true),
        ];
        let Verdict::Known { delete, missing } = reconcile(
            &indexes(&[
                ("bridge", vec![entry("b", "u2", 1), entry("c", "new", 1)]),
                ("cli", vec![entry("a", "u1", 1)]),
            ]),
            &pods,
            &[],
        ) else {
            panic!("known");
        };
        assert_eq!(
            delete,
            [PodKey::new("default", "c"), PodKey::new("default", "gone")]
        );
        // The new instance of c never arrived.
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].0, PodKey::new("default", "c"));
        assert!(missing[0].2.contains("never arrived"), "{}", missing[0].2);
        // An empty index is an index: everything unlisted goes.
        let Verdict::Known { delete, .. } = reconcile(&indexes(&[("cli", vec![])]), &pods, &[])
        else {
            panic!("known");
        };
        assert_eq!(delete.len(), 4);
    }

    #[test]
    fn listed_specs_that_never_arrived_are_reported_not_acted_on() {
        let ix = indexes(&[(
            "cli",
            vec![
                entry("a", "u1", 2),
                entry("lost", "u9", 1),
                entry("refused", "u8", 1),
            ],
        )]);
        let pods = [have("a", "u1", PodSource::Mqtt, false)];
        let Verdict::Known { delete, missing } =
            reconcile(&ix, &pods, &[PodKey::new("default", "refused")])
        else {
            panic!("known");
        };
        assert!(delete.is_empty());
        let names: Vec<&str> = missing.iter().map(|(k, _, _)| k.name.as_str()).collect();
        assert_eq!(names, ["a", "lost"]);
        assert!(missing[0].2.contains("generation 2"), "{}", missing[0].2);
    }
}
