//! Writes every CRD to `crds/<plural>.<group>.yaml` and into the `crds/` folder of the chart that
//! installs it, or with `--check` fails when any of them is stale.
//!
//! ```text
//! cargo run -p ferrite-api --bin crdgen               # write crds/ and charts/.../crds/
//! cargo run -p ferrite-api --bin crdgen -- --check    # CI: exit 1 with the stale files named
//! ```
use std::{collections::BTreeSet, path::PathBuf, process::ExitCode};

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
    let root = dir.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let mut stale = BTreeSet::new();
    let mut targets = vec![(dir.clone(), None)];
    for (group, chart) in ferrite_api::CHARTS {
        targets.push((
            root.join("charts/ferrite/charts").join(chart).join("crds"),
            Some(*group),
        ));
    }
    for (dir, group) in targets {
        match run(&dir, group, check) {
            Ok(s) => stale.extend(s.into_iter().map(|f| format!("{}/{f}", dir.display()))),
            Err(e) => return fail(&format!("{e:#}")),
        }
    }
    match Ok::<_, anyhow::Error>(stale) {
        Ok(stale) if stale.is_empty() => ExitCode::SUCCESS,
        Ok(stale) => {
            eprintln!(
                "generated CRDs are stale ({}): run `make generate` and commit the result",
                stale.into_iter().collect::<Vec<_>>().join(", ")
            );
            ExitCode::FAILURE
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("crdgen: {msg}");
    ExitCode::from(2)
}

/// Returns the names of files that differ (check mode) or an empty set after writing.
/// `group`: only the CRDs of this API group (a chart's crds/), or all (None).
fn run(dir: &std::path::Path, group: Option<&str>, check: bool) -> anyhow::Result<BTreeSet<String>> {
    use anyhow::Context;
    let mut stale = BTreeSet::new();
    let mut expected = BTreeSet::new();
    if !check {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for crd in ferrite_api::crds()
        .into_iter()
        .filter(|c| group.is_none_or(|g| c.spec.group == g))
    {
        let name = ferrite_api::crd_file_name(&crd);
        let yaml = ferrite_api::crd_yaml(&crd)?;
        let path = dir.join(&name);
        expected.insert(name.clone());
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                stale.insert(name);
            }
        } else {
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    // A CRD that was removed from the code must not linger in crds/.
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
    Ok(stale)
}
