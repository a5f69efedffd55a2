//! Writes every CRD to `crds/<plural>.<group>.yaml` (for `kubectl apply -f crds/` and the box tests) and,
//! as a Helm template, to `templates/crds/` of the subchart that installs it (inside its
//! `crds.enabled` switch, with `helm.sh/resource-policy: keep` when `crds.keep`), or with `--check`
//! fails when any of them is stale. A subchart's old `crds/` folder (Helm's install-only CRDs, which
//! would install them twice) is removed, and reported by `--check`.
//!
//! ```text
//! cargo run -p ferrite-api --bin crdgen               # write crds/ and charts/.../templates/crds/
//! cargo run -p ferrite-api --bin crdgen -- --check    # CI: exit 1 with the stale files named
//! ```
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::ExitCode,
};

/// How a target directory holds its CRDs.
#[derive(Clone, Copy)]
enum Form {
    /// The plain YAML of `crds/`.
    Plain,
    /// A subchart's templates.
    Template,
    /// None at all: every `.yaml` there is stale.
    Nothing,
}

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--dir" => match args.next() {
                Some(d) => dir = PathBuf::from(d),
                None => return fail("--dir needs a directory"),
            },
            other => {
                return fail(&format!(
                    "unknown argument {other:?}; usage: crdgen [--check] [--dir DIR]"
                ));
            }
        }
    }
    let root = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut stale = BTreeSet::new();
    let mut targets = vec![(dir.clone(), None, Form::Plain)];
    for (group, chart) in ferrite_api::CHARTS {
        let chart = root.join("charts/ferrite/charts").join(chart);
        targets.push((
            chart.join(ferrite_api::CHART_CRD_DIR),
            Some(*group),
            Form::Template,
        ));
        targets.push((chart.join("crds"), Some(*group), Form::Nothing));
    }
    for (dir, group, form) in targets {
        match run(&dir, group, form, check) {
            Ok(s) => stale.extend(s.into_iter().map(|f| format!("{}/{f}", dir.display()))),
            Err(e) => return fail(&format!("{e:#}")),
        }
    }
    if stale.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "generated CRDs are stale ({}): run `make generate` and commit the result",
        stale.into_iter().collect::<Vec<_>>().join(", ")
    );
    ExitCode::FAILURE
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("crdgen: {msg}");
    ExitCode::from(2)
}

fn render(crd: &CustomResourceDefinition, form: Form) -> anyhow::Result<Option<String>> {
    Ok(match form {
        Form::Plain => Some(ferrite_api::crd_yaml(crd)?),
        Form::Template => Some(ferrite_api::crd_template(crd)?),
        Form::Nothing => None,
    })
}

/// Returns the names of files that differ (check mode) or an empty set after writing.
/// `group`: only the CRDs of this API group (a chart's), or all (None).
fn run(dir: &Path, group: Option<&str>, form: Form, check: bool) -> anyhow::Result<BTreeSet<String>> {
    use anyhow::Context;
    let mut stale = BTreeSet::new();
    let mut expected = BTreeSet::new();
    for crd in ferrite_api::crds()
        .into_iter()
        .filter(|c| group.is_none_or(|g| c.spec.group == g))
    {
        let Some(yaml) = render(&crd, form)? else {
            continue;
        };
        let name = ferrite_api::crd_file_name(&crd);
        let path = dir.join(&name);
        expected.insert(name.clone());
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.insert(name);
            }
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    // A CRD that was removed from the code must not linger.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !expected.contains(&name) {
                if check {
                    stale.insert(name);
                } else {
                    std::fs::remove_file(entry.path())
                        .with_context(|| format!("removing {}", entry.path().display()))?;
                }
            }
        }
    }
    if !check && expected.is_empty() {
        // Nothing belongs here: drop the folder too when it is left empty (an error means it is not).
        let _ = std::fs::remove_dir(dir);
    }
    Ok(stale)
}
