//! docs/compatibility.md, checked: one row for every field of k8s-openapi's
//! `PodSpec` and `Container` (their names read from the types themselves),
//! and what the converter does with a sample of the refused and the
//! not-applicable ones is what the rows say.

use super::testing::*;
use super::*;
use serde_json::json;

const DOC: &str = include_str!("../../../docs/compatibility.md");
const POD_HEADING: &str = "## Pod fields (`PodSpec`)";
const CONTAINER_HEADING: &str = "## Container fields (`Container`)";

/// The error of [`FieldNames`]: the field names a struct's `Deserialize`
/// passed to `deserialize_struct`, or none (it asked for something else).
#[derive(Debug)]
struct Fields(Option<&'static [&'static str]>);

impl std::fmt::Display for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("only the field names are read")
    }
}

impl std::error::Error for Fields {}

impl serde::de::Error for Fields {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Fields(None)
    }
}

/// A deserializer that deserializes nothing: it fails with the field names
/// a struct's `Deserialize` gives `deserialize_struct` (k8s-openapi's do,
/// as serde's derive does).
struct FieldNames;

impl<'de> serde::Deserializer<'de> for FieldNames {
    type Error = Fields;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
        Err(Fields(None))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Fields> {
        Err(Fields(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The JSON names of `T`'s fields, as its `Deserialize` knows them.
fn field_names<T: serde::de::DeserializeOwned>() -> BTreeSet<&'static str> {
    match T::deserialize(FieldNames) {
        Err(Fields(Some(fields))) => fields.iter().copied().collect(),
        _ => panic!(
            "{} did not ask for a struct's fields",
            std::any::type_name::<T>()
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Honoured,
    HonouredDifferently,
    Refused,
    NotApplicable,
}

impl Answer {
    fn of(cell: &str) -> Option<Answer> {
        [
            ("**honoured**", Answer::Honoured),
            ("**honoured differently**", Answer::HonouredDifferently),
            ("**refused**", Answer::Refused),
            ("**accepted, not applicable**", Answer::NotApplicable),
        ]
        .into_iter()
        .find(|(word, _)| cell.starts_with(word))
        .map(|(_, answer)| answer)
    }
}

/// One row of a table: the field (without its backticks), its answer and
/// the whole line (for the errors it quotes).
#[derive(Debug)]
struct Row {
    field: String,
    answer: Answer,
    line: &'static str,
}

/// The rows of the table under `heading` (a `## ` line of the document).
fn rows(heading: &str) -> Vec<Row> {
    let mut in_section = false;
    let mut out = Vec::new();
    for line in DOC.lines() {
        if line.starts_with("## ") {
            in_section = line == heading;
            continue;
        }
        if !in_section || !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        let first = cells[0].trim();
        if first == "field" || first.chars().all(|c| matches!(c, '-' | ':' | ' ')) {
            continue;
        }
        let field = first
            .strip_prefix('`')
            .and_then(|f| f.strip_suffix('`'))
            .filter(|f| !f.is_empty() && !f.contains('`'))
            .unwrap_or_else(|| panic!("{heading}: the first cell of {line:?} is not one `field`"));
        assert_eq!(cells.len(), 3, "{heading}: row {field} has not 3 cells");
        let answer = Answer::of(cells[1].trim()).unwrap_or_else(|| {
            panic!(
                "{heading}: row {field}: the answer must start with **honoured**, **honoured differently**, **refused** or **accepted, not applicable**"
            )
        });
        out.push(Row {
            field: field.to_owned(),
            answer,
            line,
        });
    }
    assert!(
        !out.is_empty(),
        "docs/compatibility.md has no table under {heading:?}"
    );
    out
}

fn row<'a>(rows: &'a [Row], field: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.field == field)
        .unwrap_or_else(|| panic!("no row for {field}"))
}

/// The doc's rows are the type's fields, each once.
fn assert_rows_are_fields(heading: &str, type_name: &str, fields: &BTreeSet<&str>) {
    let rows = rows(heading);
    let mut listed = BTreeSet::new();
    let twice: Vec<&str> = rows
        .iter()
        .filter(|r| !listed.insert(r.field.as_str()))
        .map(|r| r.field.as_str())
        .collect();
    let missing: Vec<&&str> = fields.iter().filter(|f| !listed.contains(**f)).collect();
    let extra: Vec<&&str> = listed.iter().filter(|f| !fields.contains(**f)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && twice.is_empty(),
        "docs/compatibility.md, {heading}: missing rows for {type_name} fields {missing:?}; rows for fields {type_name} does not have: {extra:?}; rows given twice: {twice:?}"
    );
}

/// The drift check: a k8s-openapi upgrade that adds or removes a field of
/// `PodSpec` or `Container` fails here until the doc says what kedge does
/// with it (and the converter does it).
#[test]
fn compatibility_doc_lists_every_pod_spec_and_container_field() {
    let pod = field_names::<k8s::PodSpec>();
    let container = field_names::<k8s::Container>();
    // The trick worked: a few fields every version has.
    assert!(pod.contains("containers") && pod.contains("restartPolicy"));
    assert!(container.contains("image") && container.contains("stdin"));
    assert_rows_are_fields(POD_HEADING, "PodSpec", &pod);
    assert_rows_are_fields(CONTAINER_HEADING, "Container", &container);
}

/// A sample value of a field: (field, value). Every **refused** row needs
/// one (the refusal of the feature, not of a default); other rows may have
/// one for a refusal their notes quote.
fn pod_refusals() -> Vec<(&'static str, Value)> {
    vec![
        ("activeDeadlineSeconds", json!(60)),
        ("automountServiceAccountToken", json!(true)),
        ("dnsConfig", json!({"nameservers": ["dns.example"]})),
        ("dnsPolicy", json!("Sometimes")),
        (
            "ephemeralContainers",
            json!([{"name": "debug", "image": "busybox"}]),
        ),
        (
            "hostAliases",
            json!([{"ip": "10.0.0.1", "hostnames": ["db"]}]),
        ),
        ("hostUsers", json!(false)),
        ("hostname", json!("other")),
        ("os", json!({"name": "windows"})),
        ("overhead", json!({"cpu": "100m"})),
        (
            "readinessGates",
            json!([{"conditionType": "example.com/ready"}]),
        ),
        (
            "resourceClaims",
            json!([{"name": "gpu", "resourceClaimName": "gpu-claim"}]),
        ),
        ("resources", json!({"limits": {"cpu": "1"}})),
        ("restartPolicy", json!("Sometimes")),
        ("runtimeClassName", json!("gvisor")),
        ("schedulingGates", json!([{"name": "wait"}])),
        (
            "securityContext",
            json!({"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}),
        ),
        ("setHostnameAsFQDN", json!(true)),
        ("terminationGracePeriodSeconds", json!(-1)),
        (
            "volumes",
            json!([{"name": "data", "nfs": {"server": "nas", "path": "/x"}}]),
        ),
    ]
}

fn container_refusals() -> Vec<(&'static str, Value)> {
    vec![
        ("lifecycle", json!({"preStop": {"tcpSocket": {"port": 80}}})),
        (
            "livenessProbe",
            json!({"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": 5}),
        ),
        (
            "ports",
            json!([{"containerPort": 80, "hostPort": 80, "hostIP": "127.0.0.1"}]),
        ),
        (
            "resizePolicy",
            json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"}]),
        ),
        ("resources", json!({"limits": {"nvidia.com/gpu": "1"}})),
        ("restartPolicy", json!("Always")),
        ("securityContext", json!({"procMount": "Unmasked"})),
        ("stdin", json!(true)),
        ("stdinOnce", json!(true)),
        ("tty", json!(true)),
        (
            "volumeDevices",
            json!([{"name": "disk", "devicePath": "/dev/xvda"}]),
        ),
    ]
}

/// Every sample is refused at its field's path, with an error the row
/// quotes word for word, and every **refused** row has a sample.
fn assert_refusals(
    heading: &str,
    prefix: &str,
    samples: Vec<(&'static str, Value)>,
    patch: impl Fn(&str, Value) -> Value,
) {
    let rows = rows(heading);
    for r in rows.iter().filter(|r| r.answer == Answer::Refused) {
        assert!(
            samples.iter().any(|(f, _)| *f == r.field),
            "{heading}: row {} is refused: give it a sample value here",
            r.field
        );
    }
    for (name, value) in samples {
        let row = row(&rows, name);
        assert_ne!(row.answer, Answer::NotApplicable, "{heading}: {name}");
        let error = convert_err(patch(name, value.clone()));
        let path = format!("{prefix}{name}");
        assert!(
            error
                .strip_prefix(&path)
                .is_some_and(|rest| rest.starts_with([':', '.', '['])),
            "{name}: {value} is refused at another path: {error}"
        );
        assert!(
            row.line.contains(&format!("`{error}`")),
            "docs/compatibility.md, {heading}: row {name} does not quote the error of {value}: `{error}`"
        );
    }
}

#[test]
fn compatibility_doc_refusals_are_the_converters() {
    assert_refusals(
        POD_HEADING,
        "spec.",
        pod_refusals(),
        |name, value| json!({"spec": {name: value}}),
    );
    assert_refusals(
        CONTAINER_HEADING,
        "spec.containers[0].",
        container_refusals(),
        |name, value| {
            let mut c = json!({"name": "app", "image": "nginx:1.25"});
            c[name] = value;
            with_container(c)
        },
    );
}

/// Every **accepted, not applicable** field, set, converts to the very spec
/// the pod without it converts to; every such row has a sample.
#[test]
fn compatibility_doc_not_applicable_fields_change_nothing() {
    let samples = [
        (
            "affinity",
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }}}),
        ),
        ("enableServiceLinks", json!(true)),
        ("nodeSelector", json!({"kubernetes.io/arch": "arm64"})),
        ("preemptionPolicy", json!("Never")),
        ("priority", json!(1000)),
        ("priorityClassName", json!("high")),
        ("schedulerName", json!("custom")),
        ("serviceAccount", json!("robot")),
        ("serviceAccountName", json!("robot")),
        ("subdomain", json!("edge")),
        (
            "tolerations",
            json!([{"key": "kedge.io/edge", "operator": "Exists", "effect": "NoSchedule"}]),
        ),
        (
            "topologySpreadConstraints",
            json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]),
        ),
    ];
    let pod_rows = rows(POD_HEADING);
    let container_rows = rows(CONTAINER_HEADING);
    for r in container_rows.iter() {
        assert_ne!(
            r.answer,
            Answer::NotApplicable,
            "{CONTAINER_HEADING}: row {}: no container field is the scheduler's; if one is, test it here",
            r.field
        );
    }
    for r in pod_rows
        .iter()
        .filter(|r| r.answer == Answer::NotApplicable)
    {
        assert!(
            samples.iter().any(|(f, _)| *f == r.field),
            "{POD_HEADING}: row {} is not applicable: give it a sample value here",
            r.field
        );
    }
    let plain = convert(json!({}));
    for (name, value) in samples {
        assert_eq!(
            row(&pod_rows, name).answer,
            Answer::NotApplicable,
            "{POD_HEADING}: {name}"
        );
        let converted = convert(json!({"spec": {name: value.clone()}}));
        assert_eq!(converted, plain, "{name}: {value} changed the spec");
    }
}
