//! A container pod's resolver configuration, made as the kubelet makes it
//! (pkg/kubelet/network/dns, `GetPodDNS`): what the pod's `dnsPolicy`
//! gives, the node's resolv.conf for `Default`, then the pod's `dnsConfig`
//! merged in, within the C library's limits. The CRI runtime writes it as
//! the sandbox's resolv.conf. Pure: the caller reads the file and records
//! the warnings as the pod's events.
//!
//! A kedge node has no cluster DNS, as a kubelet without `--cluster-dns`:
//! `ClusterFirst` (the default) falls back to `Default` with a
//! `MissingClusterDNS` warning, except with the host network, where it is
//! `Default` anyway.

use k8s_cri::v1 as cri;

use crate::model::validate::{MAX_DNS_NAMESERVERS, MAX_DNS_SEARCH_CHARS, MAX_DNS_SEARCHES};
use crate::model::{DnsPolicy, PodSpec};

/// A warning to record on the pod: the kubelet's event reason and message.
pub type Warning = (&'static str, String);

/// What resolv.conf says, as the kubelet reads it: `nameserver` lines add a
/// server, the last `search` line gives the search domains (each without a
/// trailing dot) and the last `options` line the options; `#` starts a
/// comment line.
pub fn parse_resolv_conf(text: &str) -> cri::DnsConfig {
    let mut config = cri::DnsConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => config.servers.extend(words.next().map(str::to_owned)),
            Some("search") => {
                config.searches = words
                    .map(|w| w.strip_suffix('.').unwrap_or(w))
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            Some("options") => config.options = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    config
}

/// The sandbox's DNS configuration of `spec` and the warnings to record.
/// `node` reads the node's resolv.conf; it is called only when the policy
/// needs it, and its error fails the sandbox, as the kubelet's does.
pub fn pod_dns<E>(
    spec: &PodSpec,
    node: impl FnOnce() -> Result<String, E>,
) -> Result<(cri::DnsConfig, Vec<Warning>), E> {
    let mut warnings = Vec::new();
    let dns = &spec.dns;
    let cluster = match dns.policy {
        DnsPolicy::None => false,
        DnsPolicy::Default => false,
        DnsPolicy::ClusterFirst => !spec.host_network,
        DnsPolicy::ClusterFirstWithHostNet => true,
    };
    if cluster {
        warnings.push((
            "MissingClusterDNS",
            format!(
                "pod: \"{}_{}({})\". kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.",
                spec.name, spec.namespace, spec.uid
            ),
        ));
    }
    let mut config = match dns.policy {
        DnsPolicy::None => cri::DnsConfig::default(),
        _ => parse_resolv_conf(&node()?),
    };
    // The pod's dnsConfig, appended: servers and search domains once each,
    // an option of the same name replaced.
    config.servers.extend(dns.nameservers.iter().cloned());
    config.searches.extend(dns.searches.iter().cloned());
    dedup(&mut config.servers);
    dedup(&mut config.searches);
    let mut options: Vec<String> = Vec::new();
    for option in config.options.iter().chain(&dns.options) {
        let name = |o: &str| o.split(':').next().unwrap_or_default().to_owned();
        match options
            .iter_mut()
            .find(|o| name(o.as_str()) == name(option.as_str()))
        {
            Some(o) => o.clone_from(option),
            None => options.push(option.clone()),
        }
    }
    config.options = options;

    // The limits, as the kubelet cuts to them.
    if config.servers.len() > MAX_DNS_NAMESERVERS {
        config.servers.truncate(MAX_DNS_NAMESERVERS);
        warnings.push((
            "DNSConfigForming",
            format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
                config.servers.join(" ")
            ),
        ));
    }
    let searches = config.searches.len();
    config.searches.truncate(MAX_DNS_SEARCHES);
    config.searches.retain(|s| s.len() <= 253);
    while config.searches.join(" ").len() > MAX_DNS_SEARCH_CHARS {
        config.searches.pop();
    }
    if config.searches.len() != searches {
        warnings.push((
            "DNSConfigForming",
            format!(
                "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
                config.searches.join(" ")
            ),
        ));
    }
    Ok((config, warnings))
}

/// Keeps the first of equal entries, in order.
fn dedup(list: &mut Vec<String>) {
    let mut kept: Vec<String> = Vec::with_capacity(list.len());
    for s in list.drain(..) {
        if !kept.contains(&s) {
            kept.push(s);
        }
    }
    *list = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PodDns, RestartPolicy, RuntimeKind, samples};

    const NODE: &str = "# written by NetworkManager\n\
        search lan. corp.example\n\
        nameserver 192.168.1.1\n\
        nameserver 192.168.1.2\n\
        options timeout:2 attempts:3\n";

    fn spec(policy: DnsPolicy, host_network: bool) -> PodSpec {
        let mut spec = samples::spec("web", "u1", 1, RestartPolicy::Always);
        spec.runtime = RuntimeKind::Container;
        spec.host_network = host_network;
        spec.dns.policy = policy;
        spec
    }

    fn config(servers: &[&str], searches: &[&str], options: &[&str]) -> cri::DnsConfig {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        cri::DnsConfig {
            servers: own(servers),
            searches: own(searches),
            options: own(options),
        }
    }

    fn node() -> Result<String, String> {
        Ok(NODE.to_string())
    }

    #[test]
    fn resolv_conf_is_read_as_the_kubelet_reads_it() {
        let text = "nameserver 10.0.0.1\n  # nameserver 6.6.6.6\nsearch old.example\n\
            search a.example. b.example\noptions ndots:1\noptions rotate edns0\n\
            nameserver\nnameserver 10.0.0.2 extra\n";
        assert_eq!(
            parse_resolv_conf(text),
            config(
                &["10.0.0.1", "10.0.0.2"],
                &["a.example", "b.example"],
                &["rotate", "edns0"]
            )
        );
        assert_eq!(parse_resolv_conf(""), cri::DnsConfig::default());
    }

    #[test]
    fn default_is_the_nodes_configuration() {
        let (c, warnings) = pod_dns(&spec(DnsPolicy::Default, false), node).expect("dns");
        assert_eq!(
            c,
            config(
                &["192.168.1.1", "192.168.1.2"],
                &["lan", "corp.example"],
                &["timeout:2", "attempts:3"]
            )
        );
        assert!(warnings.is_empty());
    }

    /// Without cluster DNS, ClusterFirst falls back to Default and says so,
    /// except with the host network, where it is Default anyway;
    /// ClusterFirstWithHostNet asks for cluster DNS either way.
    #[test]
    fn cluster_first_falls_back_to_default_with_the_kubelets_warning() {
        let (default, _) = pod_dns(&spec(DnsPolicy::Default, false), node).expect("dns");
        let warning = (
            "MissingClusterDNS",
            "pod: \"web_default(u1)\". kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.".to_string(),
        );
        for (policy, host_network, warned) in [
            (DnsPolicy::ClusterFirst, false, true),
            (DnsPolicy::ClusterFirst, true, false),
            (DnsPolicy::ClusterFirstWithHostNet, true, true),
            (DnsPolicy::ClusterFirstWithHostNet, false, true),
        ] {
            let (c, warnings) = pod_dns(&spec(policy, host_network), node).expect("dns");
            assert_eq!(c, default, "{policy:?}, host network {host_network}");
            let want = if warned {
                vec![warning.clone()]
            } else {
                vec![]
            };
            assert_eq!(warnings, want, "{policy:?}, host network {host_network}");
        }
    }

    /// None: only the pod's dnsConfig, and the node's file is not read.
    #[test]
    fn none_is_the_pods_config_alone() {
        let mut s = spec(DnsPolicy::None, false);
        s.dns = PodDns {
            policy: DnsPolicy::None,
            nameservers: vec!["192.0.2.53".into()],
            searches: vec!["factory.example".into()],
            options: vec!["ndots:2".into()],
        };
        let (c, warnings) =
            pod_dns(&s, || Err::<String, _>("not read")).expect("the file is not read");
        assert_eq!(
            c,
            config(&["192.0.2.53"], &["factory.example"], &["ndots:2"])
        );
        assert!(warnings.is_empty());
        // Default needs the file: its error is the caller's.
        assert_eq!(
            pod_dns(&spec(DnsPolicy::Default, false), || Err::<String, _>(
                "gone"
            )),
            Err("gone")
        );
    }

    /// dnsConfig is merged into what the policy gives: servers and search
    /// domains once each, after the node's; an option of the same name
    /// replaced; then cut to the limits with the kubelet's warnings.
    #[test]
    fn dns_config_is_merged_and_cut_to_the_limits() {
        let mut s = spec(DnsPolicy::Default, false);
        s.dns.nameservers = vec!["192.168.1.2".into(), "192.0.2.53".into()];
        s.dns.searches = vec!["corp.example".into(), "factory.example".into()];
        s.dns.options = vec!["attempts:5".into(), "edns0".into()];
        let (c, warnings) = pod_dns(&s, node).expect("dns");
        assert_eq!(
            c,
            config(
                &["192.168.1.1", "192.168.1.2", "192.0.2.53"],
                &["lan", "corp.example", "factory.example"],
                &["timeout:2", "attempts:5", "edns0"]
            )
        );
        assert!(warnings.is_empty());

        s.dns.nameservers.push("192.0.2.54".into());
        s.dns.searches = (0..40).map(|i| format!("d{i}.example")).collect();
        let (c, warnings) = pod_dns(&s, node).expect("dns");
        assert_eq!(c.servers, ["192.168.1.1", "192.168.1.2", "192.0.2.53"]);
        assert_eq!(c.searches.len(), MAX_DNS_SEARCHES);
        assert_eq!(
            warnings,
            [
                (
                    "DNSConfigForming",
                    "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: 192.168.1.1 192.168.1.2 192.0.2.53".to_string()
                ),
                (
                    "DNSConfigForming",
                    format!(
                        "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
                        c.searches.join(" ")
                    )
                ),
            ]
        );

        // The search line's length: the last domains go.
        s.dns.nameservers.clear();
        s.dns.searches = (0..9).map(|i| format!("{i}{}", "a".repeat(249))).collect();
        let (c, warnings) = pod_dns(&s, node).expect("dns");
        assert!(c.searches.join(" ").len() <= MAX_DNS_SEARCH_CHARS);
        assert_eq!(&c.searches[..2], ["lan", "corp.example"]);
        assert_eq!(c.searches.len(), 2 + 8);
        assert_eq!(warnings.len(), 1);
    }
}
