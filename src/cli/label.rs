//! `kedge label node`: the cloud's labels of a device, retained on
//! `{prefix}/{node}/labels` as the whole set (docs/wire.md, "Fleets"),
//! changed with kubectl's syntax (`key=value`, `key-`, `--overwrite`).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::model::validate;
use crate::model::{NodeLabels, NodeStatus};
use crate::wire::{self, Message, Topics};

use super::client::Client;

/// The labels after `changes`, and what to warn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relabeled {
    pub labels: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

/// Applies kubectl label arguments to the cloud's set. `device`: the labels
/// the device sets itself (config key `node.labels`), which a cloud label
/// overrides and which only the device can remove. Changing a value
/// either holds needs `overwrite`, as in kubectl.
pub fn relabel(
    cloud: &BTreeMap<String, String>,
    device: &BTreeMap<String, String>,
    changes: &[String],
    overwrite: bool,
) -> Result<Relabeled, String> {
    if changes.is_empty() {
        return Err("at least one label update is required".into());
    }
    let mut set: BTreeMap<&str, &str> = BTreeMap::new();
    let mut remove: Vec<&str> = Vec::new();
    for change in changes {
        if let Some((k, v)) = change.split_once('=') {
            validate::label_key("label", k).map_err(|e| e.to_string())?;
            validate::label_value(&format!("label {k}"), v).map_err(|e| e.to_string())?;
            if set.insert(k, v).is_some_and(|old| old != v) {
                return Err(format!("label {k:?} is given two values"));
            }
        } else if let Some(k) = change.strip_suffix('-') {
            validate::label_key("label", k).map_err(|e| e.to_string())?;
            remove.push(k);
        } else {
            return Err(format!("invalid label spec: {change}"));
        }
    }
    let both: Vec<&str> = remove
        .iter()
        .copied()
        .filter(|k| set.contains_key(k))
        .collect();
    if !both.is_empty() {
        return Err(format!(
            "can not both modify and remove the following label(s) in the same command: {}",
            both.join(", ")
        ));
    }
    let mut labels = cloud.clone();
    let mut warnings = Vec::new();
    for (k, v) in set {
        let current = cloud.get(k).or_else(|| device.get(k));
        match current {
            Some(old) if old != v && !overwrite => {
                return Err(format!(
                    "'{k}' already has a value ({old}), and --overwrite is false"
                ));
            }
            _ => {
                labels.insert(k.to_string(), v.to_string());
            }
        }
    }
    for k in remove {
        if labels.remove(k).is_none() {
            if device.contains_key(k) {
                return Err(format!(
                    "label {k:?} is set by the device itself (config key node.labels); change it there"
                ));
            }
            warnings.push(format!("label {k:?} not found."));
        }
    }
    Ok(Relabeled { labels, warnings })
}

/// The labels selectors see: the device's own, overridden by the cloud's.
pub fn effective(
    cloud: &BTreeMap<String, String>,
    device: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = device.clone();
    out.extend(cloud.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// `kedge label node NODE key=value… key-… [--overwrite] [--list]`.
pub async fn label_node(
    config: &Config,
    node: &str,
    changes: &[String],
    overwrite: bool,
    list: bool,
) -> anyhow::Result<()> {
    if !wire::valid_topic_level(node) {
        bail!("invalid node name {node:?}");
    }
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let topic = topics.labels(node);
    let cloud = match client.retained(&topic).await?.into_iter().next() {
        None => BTreeMap::new(),
        Some((_, payload)) => match wire::decode_as::<NodeLabels>(&payload) {
            Ok((_, l)) => l.labels,
            // Replaced as a whole below; nothing else reads it.
            Err(e) => {
                eprintln!("warning: the labels on {topic} cannot be read ({e}); replacing them");
                BTreeMap::new()
            }
        },
    };
    let status = client
        .retained(&topics.node(node))
        .await?
        .into_iter()
        .find_map(|(_, p)| wire::decode_as::<NodeStatus>(&p).ok())
        .map(|(_, n)| n);
    // The node status holds the effective set; what the cloud does not
    // set there is the device's own.
    let device: BTreeMap<String, String> = status
        .as_ref()
        .map(|s| {
            s.labels
                .iter()
                .filter(|(k, _)| !cloud.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut stdout = std::io::stdout();
    if list {
        for (k, v) in effective(&cloud, &device) {
            writeln!(stdout, "{k}={v}")?;
        }
        client.disconnect().await;
        return Ok(());
    }
    let next = relabel(&cloud, &device, changes, overwrite).map_err(anyhow::Error::msg)?;
    for w in &next.warnings {
        eprintln!("{w}");
    }
    if next.labels == cloud {
        writeln!(stdout, "node/{node} not labeled")?;
        client.disconnect().await;
        return Ok(());
    }
    let payload = if next.labels.is_empty() {
        // No labels: no retained message at all.
        Vec::new()
    } else {
        let labels = NodeLabels {
            labels: next.labels,
        };
        validate::Validate::validate(&labels).context("invalid labels")?;
        wire::encode(0, &Message::NodeLabels(labels))?
    };
    client.publish_acked(&topic, payload, true).await?;
    writeln!(stdout, "node/{node} labeled")?;
    if status.is_none() {
        eprintln!("warning: node {node:?} has not connected yet; its labels apply when it does");
    }
    client.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(s: &str) -> BTreeMap<String, String> {
        crate::model::selector::Selector::parse_labels("l", s).expect("labels")
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labels_are_added_changed_with_overwrite_and_removed() {
        let cloud = map("building=b43,tier=a");
        let device = map("arch=arm64");
        let r = relabel(&cloud, &device, &args(&["canary=true", "tier-"]), false).expect("ok");
        assert_eq!(r.labels, map("building=b43,canary=true"));
        assert!(r.warnings.is_empty());
        // The same value again is no change, and needs no --overwrite.
        let r = relabel(&cloud, &device, &args(&["tier=a"]), false).expect("ok");
        assert_eq!(r.labels, cloud);
        let e = relabel(&cloud, &device, &args(&["tier=b"]), false).expect_err("overwrite");
        assert_eq!(
            e,
            "'tier' already has a value (a), and --overwrite is false"
        );
        let r = relabel(&cloud, &device, &args(&["tier=b"]), true).expect("ok");
        assert_eq!(r.labels["tier"], "b");
        // A device's own label: overriding it needs --overwrite too; only
        // the device removes it.
        let e = relabel(&cloud, &device, &args(&["arch=amd64"]), false).expect_err("overwrite");
        assert!(e.contains("already has a value (arm64)"), "{e}");
        let e = relabel(&cloud, &device, &args(&["arch-"]), false).expect_err("device's");
        assert!(e.contains("node.labels"), "{e}");
        let r = relabel(&cloud, &device, &args(&["nothing-"]), false).expect("ok");
        assert_eq!(r.warnings, vec!["label \"nothing\" not found.".to_string()]);
    }

    #[test]
    fn bad_label_arguments_are_refused() {
        let none = BTreeMap::new();
        let e = |a: &[&str]| relabel(&none, &none, &args(a), false).expect_err("refused");
        assert_eq!(e(&[]), "at least one label update is required");
        assert_eq!(e(&["tier"]), "invalid label spec: tier");
        assert!(e(&["a=b", "a-"]).contains("can not both modify and remove"));
        assert!(
            e(&["bad key=x"]).starts_with("label:"),
            "{}",
            e(&["bad key=x"])
        );
        assert!(e(&["k=bad value"]).starts_with("label k:"));
        assert!(e(&["k=a", "k=b"]).contains("two values"));
    }

    #[test]
    fn the_cloud_wins_in_the_effective_set() {
        assert_eq!(
            effective(&map("tier=b"), &map("tier=a,arch=arm64")),
            map("arch=arm64,tier=b")
        );
    }
}
