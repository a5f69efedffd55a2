//! `ferrite-lb import-metallb`, the binary, on MetalLB's own documented examples and on bad input.
//!
//! Each input in tests/fixtures/metallb/ (`NAME.yaml`; its first lines name the MetalLB file it was copied
//! from) has its exact expected stdout in `NAME.out` and stderr in `NAME.err`, and its exit code in [`CASES`].
//! Every object printed is read back with ferrite-api's types and must come out unchanged, with no field
//! those types do not know, and the box's API server (with the generated CRDs) accepts each one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferrite_api::lb::{IPPool, L2Advertisement};

/// (input, extra arguments, exit code). Exit codes: 0 all translated, 1 partly, 2 refused.
const CASES: &[(&str, &[&str], i32)] = &[
    // metallb.io CRs, from MetalLB's docs (website/content/configuration/) and configsamples/.
    ("docs-layer2.yaml", &[], 0),
    ("docs-pool-ranges.yaml", &[], 0),
    ("docs-l2adv-pool-list.yaml", &[], 0),
    ("docs-l2-node-selectors.yaml", &[], 0),
    ("docs-l2-interfaces.yaml", &[], 0),
    ("docs-l2-interfaces-union.yaml", &[], 0),
    ("docs-l2-service-selectors.yaml", &[], 0),
    ("docs-l2-preferred.yaml", &[], 1),
    ("docs-pool-auto-assign.yaml", &[], 0),
    ("docs-pool-service-allocation.yaml", &[], 0),
    ("docs-bgp.yaml", &[], 1),
    ("docs-bfd.yaml", &[], 1),
    ("configsamples-simple-pool-adv-l2.yaml", &[], 0),
    ("configsamples-l2adv-node-selector.yaml", &[], 0),
    ("configsamples-bgpadv-communities-localpref.yaml", &[], 1),
    ("kubectl-list.yaml", &[], 0),
    // The example of docs/loadbalancer.md "Migrating from MetalLB" (documented examples together).
    ("metallb.yaml", &[], 1),
    // With the cluster's Services and Namespaces: their addresses checked against the translated pools.
    ("services.yaml", &[], 1),
    // The ConfigMap format (MetalLB <= 0.12) and the 0.13 AddressPool CR.
    ("legacy-docs-layer2.yaml", &[], 0),
    ("legacy-docs-auto-assign.yaml", &[], 1),
    ("legacy-docs-addresspool-crd.yaml", &[], 0),
    ("legacy-example-config.yaml", &[], 1),
    ("legacy-configmaptocrs-address-pools.yaml", &[], 1),
    ("legacy-configmaptocrs-convert-names.yaml", &[], 1),
    ("legacy-configmaptocrs-full.yaml", &[], 2),
    // The same example with its "protocol: l2" fixed to layer2: translated (its BGP parts listed).
    ("legacy-configmaptocrs-full-layer2.yaml", &[], 1),
    // Bad input.
    ("docs-l2-node-selectors-both.yaml", &[], 2),
    ("bad-not-yaml.yaml", &[], 2),
    ("bad-empty.yaml", &[], 2),
    ("bad-unknown-kind.yaml", &[], 1),
    ("bad-missing-addresses.yaml", &[], 2),
    ("bad-invalid-address.yaml", &[], 2),
    ("bad-invalid-selector.yaml", &[], 2),
    ("bad-duplicate-names.yaml", &[], 2),
    ("bad-two-namespaces.yaml", &[], 2),
    ("bad-unknown-fields.yaml", &[], 1),
    ("bad-legacy-interfaces.yaml", &[], 1),
    ("bad-priority-out-of-range.yaml", &[], 2),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metallb")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `ferrite-lb import-metallb ARGS` in the fixtures directory (so messages name files as given).
fn import(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite-lb"))
        .arg("import-metallb")
        .args(args)
        .current_dir(fixtures())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferrite-lb starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input).expect("stdin written");
    }
    let out = child.wait_with_output().expect("ferrite-lb finishes");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

fn expected(file: &str, ext: &str) -> String {
    let path = fixtures().join(file.replace(".yaml", ext));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where two texts first differ, for a readable failure.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
    for i in 0..w.len().max(g.len()) {
        if w.get(i) != g.get(i) {
            return format!(
                "line {}:\n  want: {:?}\n  got:  {:?}",
                i + 1,
                w.get(i).unwrap_or(&"<end>"),
                g.get(i).unwrap_or(&"<end>")
            );
        }
    }
    "only in the final newline".to_string()
}

#[test]
fn each_fixture_translates_to_its_expected_output() {
    let mut failures = Vec::new();
    for (file, args, code) in CASES {
        let mut argv = args.to_vec();
        argv.push(file);
        let run = import(&argv, None);
        if run.code != *code {
            failures.push(format!(
                "{file}: exit code {} instead of {code}\nstderr:\n{}",
                run.code, run.stderr
            ));
            continue;
        }
        for (ext, got) in [(".out", &run.stdout), (".err", &run.stderr)] {
            let want = expected(file, ext);
            if &want != got {
                failures.push(format!(
                    "{file} ({ext}) differs at {}\n--- got:\n{got}",
                    first_difference(&want, got)
                ));
            }
        }
        if *code == 2 {
            assert!(
                run.stdout.is_empty(),
                "{file}: refused input prints nothing on stdout"
            );
        }
        if *code == 1 {
            assert!(
                run.stderr.lines().any(|l| !l.contains(": note: ")),
                "{file}: exit 1 comes with at least one line that is not a note"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_fixture_has_a_case_and_expected_output() {
    for entry in std::fs::read_dir(fixtures()).expect("fixtures directory") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("UTF-8 name");
        let input = if let Some(stem) = name.strip_suffix(".out").or_else(|| name.strip_suffix(".err")) {
            format!("{stem}.yaml")
        } else {
            name.clone()
        };
        assert!(
            CASES.iter().any(|(f, _, _)| *f == input),
            "{name}: no case for {input} in CASES (add one, or remove the file)"
        );
    }
}

/// Every printed object is a valid ferrite-lb object: ferrite-api's types read it, know every field of it,
/// and write it back unchanged.
#[test]
fn printed_objects_read_back_unchanged_as_ferrite_api_types() {
    use serde::Deserialize;
    let mut seen = (0, 0);
    for (file, args, code) in CASES.iter().filter(|(_, _, code)| *code != 2) {
        let mut argv = args.to_vec();
        argv.push(file);
        let run = import(&argv, None);
        assert_eq!(run.code, *code, "{file}: {}", run.stderr);
        for (i, doc) in serde_yaml::Deserializer::from_str(&run.stdout).enumerate() {
            let value =
                serde_json::Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: document {i}: {e}"));
            if value.is_null() {
                continue;
            }
            let back = match value["kind"].as_str() {
                Some("IPPool") => {
                    let pool: IPPool = serde_json::from_value(value.clone())
                        .unwrap_or_else(|e| panic!("{file} #{i}: IPPool: {e}"));
                    assert_eq!(
                        pool.spec.unknown_fields(),
                        Vec::<String>::new(),
                        "{file} #{i}: fields IPPool does not know"
                    );
                    seen.0 += 1;
                    serde_json::to_value(&pool)
                }
                Some("L2Advertisement") => {
                    let adv: L2Advertisement = serde_json::from_value(value.clone())
                        .unwrap_or_else(|e| panic!("{file} #{i}: L2Advertisement: {e}"));
                    assert!(
                        adv.spec.unknown.is_empty(),
                        "{file} #{i}: fields L2Advertisement does not know: {:?}",
                        adv.spec.unknown
                    );
                    seen.1 += 1;
                    serde_json::to_value(&adv)
                }
                other => panic!("{file} #{i}: unexpected kind {other:?}"),
            };
            assert_eq!(
                back.expect("serializes"),
                value,
                "{file} #{i}: changed by a round trip through ferrite-api"
            );
            assert_eq!(value["apiVersion"], "lb.ferrite.dev/v1alpha1", "{file} #{i}");
        }
    }
    assert!(
        seen.0 >= 15 && seen.1 >= 15,
        "read back {} IPPools and {} L2Advertisements",
        seen.0,
        seen.1
    );
}

#[test]
fn dash_reads_standard_input() {
    let text = std::fs::read(fixtures().join("docs-layer2.yaml")).expect("fixture");
    let run = import(&["-"], Some(&text));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        expected("docs-layer2.yaml", ".out").replace("docs-layer2.yaml", "stdin")
    );
}

#[test]
fn several_files_are_one_configuration() {
    // The pool of one file is selected by the advertisement of another: no allocate-only note.
    let run = import(
        &["docs-pool-ranges.yaml", "configsamples-l2adv-node-selector.yaml"],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr, "",
        "no note: the advertisement of the second file selects every pool"
    );
    assert!(run.stdout.starts_with(
        "# ferrite-lb import-metallb: lb.ferrite.dev/v1alpha1 from docs-pool-ranges.yaml, configsamples-l2adv-node-selector.yaml\n"
    ));
    assert_eq!(run.stdout.matches("\n---\n").count(), 2, "{}", run.stdout);
    // The same pool twice (two files) is a duplicate.
    let run = import(&["docs-layer2.yaml", "docs-l2adv-pool-list.yaml"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("duplicate name: IPPool \"first-pool\""),
        "{}",
        run.stderr
    );
}

#[test]
fn namespace_flag_imports_one_namespace() {
    let run = import(
        &["--namespace", "metallb-system", "bad-two-namespaces.yaml"],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("192.0.2.0/28") && !run.stdout.contains("198.51.100.0/28"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stderr,
        "bad-two-namespaces.yaml#2: IPAddressPool metallb-staging/lan: note: skipped: not in namespace metallb-system (--namespace)\n"
    );
}

#[test]
fn unreadable_file_is_exit_2() {
    let run = import(&["no-such-file.yaml"], None);
    assert_eq!(run.code, 2);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .starts_with("ferrite-lb import-metallb: no-such-file.yaml: cannot read:"),
        "{}",
        run.stderr
    );
    // No file at all is a usage error (clap's exit code 2 too).
    assert_eq!(import(&[], None).code, 2);
}

/// The example of docs/loadbalancer.md "Migrating from MetalLB" is this test's fixture `metallb.yaml`: its
/// input, its stdout and its stderr appear in the docs exactly as the binary prints them.
#[test]
fn the_documented_example_is_what_the_binary_prints() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/loadbalancer.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/loadbalancer.md");
    let start = doc
        .find("## Migrating from MetalLB")
        .expect("the migration section");
    let section = &doc[start..];
    let input = std::fs::read_to_string(fixtures().join("metallb.yaml")).expect("fixture");
    let input: String = input
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        section.contains(&format!("```yaml\n{input}```")),
        "the docs show metallb.yaml (without its comments)"
    );
    let run = import(&["metallb.yaml"], None);
    assert_eq!(run.code, 1);
    assert!(
        section.contains(&format!("```yaml\n{}```", run.stdout)),
        "the docs show the output:\n{}",
        run.stdout
    );
    for line in run.stderr.lines() {
        assert!(
            section.contains(&format!("\n{line}\n")),
            "the docs show the stderr line {line:?}"
        );
    }
    assert!(section.contains("$ echo $?\n1\n"), "the docs show the exit code");
}

/// The box's API server, with the CRDs of crds/, accepts every printed object as it is (a dry-run create:
/// the schema, the required fields, the name rules), so `kubectl apply -f` of the output works.
#[tokio::test]
async fn the_api_server_accepts_every_printed_object() {
    use kube::api::{Api, PostParams};
    use serde::Deserialize;
    let kb = ferrite_e2e::KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let advs: Api<L2Advertisement> = Api::all(client);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let (mut accepted, mut refused) = (0, Vec::new());
    for (file, args, _) in CASES.iter().filter(|(_, _, code)| *code != 2) {
        let mut argv = args.to_vec();
        argv.push(file);
        let run = import(&argv, None);
        for (i, doc) in serde_yaml::Deserializer::from_str(&run.stdout).enumerate() {
            let value = serde_json::Value::deserialize(doc).expect("printed YAML parses");
            if value.is_null() {
                continue;
            }
            let mut result = Err(None);
            // A fresh box may still be settling its CRDs: retry what is not the server's verdict.
            for _ in 0..50 {
                result = match value["kind"].as_str() {
                    Some("IPPool") => {
                        let p: IPPool = serde_json::from_value(value.clone()).expect("IPPool");
                        pools.create(&dry_run, &p).await.map(|_| ())
                    }
                    _ => {
                        let a: L2Advertisement =
                            serde_json::from_value(value.clone()).expect("L2Advertisement");
                        advs.create(&dry_run, &a).await.map(|_| ())
                    }
                }
                .map_err(Some);
                match &result {
                    Err(Some(kube::Error::Api(e))) if e.code != 404 => break,
                    Ok(()) => break,
                    _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            }
            match result {
                Ok(()) => accepted += 1,
                Err(e) => refused.push(format!("{file} #{i}: {e:?}")),
            }
        }
    }
    assert!(
        refused.is_empty(),
        "the API server refused:\n{}",
        refused.join("\n")
    );
    assert!(accepted >= 30, "only {accepted} objects checked");
    // The check is live: a pool the schema forbids (no address) is refused by the same dry run.
    let bad: IPPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "no-addresses"}, "spec": {"addresses": []}
    }))
    .expect("IPPool");
    match pools.create(&dry_run, &bad).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("a pool without addresses was not refused: {other:?}"),
    }
}

/// A priority outside ferrite-lb's int32 (MetalLB's is a Go int) is refused by the API server itself (the
/// CRD's `format: int32`), with a message naming the field, not stored for the controller to choke on;
/// the bounds themselves are accepted. `import-metallb` refuses it before (fixture
/// bad-priority-out-of-range.yaml).
#[tokio::test]
async fn the_api_server_refuses_a_priority_outside_int32() {
    use kube::api::{Api, ApiResource, DynamicObject, PostParams};
    use kube::core::GroupVersionKind;
    let kb = ferrite_e2e::KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let gvk = GroupVersionKind::gvk("lb.ferrite.dev", "v1alpha1", "IPPool");
    let pools: Api<DynamicObject> = Api::all_with(client, &ApiResource::from_gvk(&gvk));
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pool = |priority: serde_json::Value| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "priority-range"},
            "spec": {"addresses": ["192.0.2.0/28"], "serviceAllocation": {"priority": priority}},
        }))
        .expect("DynamicObject")
    };
    for ok in [i64::from(i32::MAX), i64::from(i32::MIN), 0] {
        let mut result = Err(None);
        // A fresh box may still be settling its CRDs: retry what is not the server's verdict.
        for _ in 0..50 {
            result = pools
                .create(&dry_run, &pool(ok.into()))
                .await
                .map(|_| ())
                .map_err(Some);
            match &result {
                Err(Some(kube::Error::Api(e))) if e.code != 404 => break,
                Ok(()) => break,
                _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        assert!(result.is_ok(), "priority {ok} refused: {result:?}");
    }
    for bad in [
        serde_json::json!(i64::from(i32::MAX) + 1),
        serde_json::json!(i64::from(i32::MIN) - 1),
        serde_json::json!(3_000_000_000_u64),
    ] {
        match pools.create(&dry_run, &pool(bad.clone())).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{bad}: {e:?}");
                assert!(
                    e.message.contains("spec.serviceAllocation.priority"),
                    "{bad}: the message names the field: {}",
                    e.message
                );
            }
            other => panic!("priority {bad} was not refused: {other:?}"),
        }
    }
}
