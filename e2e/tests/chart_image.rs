//! The container image the chart runs: `e2e/scripts/build-image.sh` (what `make image` runs on the release
//! build) builds the OCI layout from this workspace's binaries, and the layout is checked as a runtime
//! would see it: tagged with the chart's appVersion, configured to run as user 65532, every controller
//! binary present with the libraries it needs (each runs from the unpacked rootfs, chrooted, as that user),
//! and nothing setuid.

use ferrite_e2e::{
    chart::{umbrella, workspace_binary},
    demo::repo_root,
};
use serde_json::Value;
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

const BINARIES: [&str; 4] = ["ferrite-lb", "ferrite-dns", "ferrite-certs", "ferrite-ingress"];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blob(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let text = std::fs::read_to_string(layout.join("blobs/sha256").join(hex)).expect("blob");
    serde_json::from_str(&text).expect("JSON blob")
}

fn setuid_files(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            setuid_files(&entry.path(), found);
        } else if meta.permissions().mode() & 0o6000 != 0 {
            found.push(entry.path().display().to_string());
        }
    }
}

#[test]
fn the_image_has_every_binary_and_runs_as_non_root() {
    let mut bin_dir = None;
    for b in BINARIES {
        let path = workspace_binary(b, b).unwrap_or_else(|e| panic!("{e:#}"));
        bin_dir = path.parent().map(Path::to_path_buf);
    }
    let bin_dir = bin_dir.expect("a binary directory");
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(umbrella().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml parses");
    let version = chart["appVersion"].as_str().expect("appVersion");

    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = tmp.path().join("ferrite");
    run(Command::new(repo_root().join("e2e/scripts/build-image.sh"))
        .arg(&bin_dir)
        .arg(&layout));

    // The tag the chart pulls by default.
    let index = blob_index(&layout);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        version
    );
    let manifest = blob(&layout, manifests[0]["digest"].as_str().expect("digest"));
    let config = blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("config digest"),
    );
    assert_eq!(config["config"]["User"], "65532:65532", "non-root user: {config}");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.version"],
        version
    );

    // As a runtime unpacks it.
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{version}", layout.display()))
        .arg(&bundle));
    let runtime: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).expect("config.json"))
            .expect("runtime config");
    assert_eq!(runtime["process"]["user"]["uid"], 65532, "{}", runtime["process"]);
    assert_eq!(runtime["process"]["user"]["gid"], 65532);
    let rootfs = bundle.join("rootfs");
    for b in BINARIES {
        let path = rootfs.join("usr/local/bin").join(b);
        assert!(path.is_file(), "{} in the image", path.display());
        // Runs from the image's own files (its glibc, its loader), as the image's user.
        let out = run(Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(&rootfs)
            .arg(format!("/usr/local/bin/{b}"))
            .arg("--version"));
        assert_eq!(out.trim(), format!("{b} {version}"), "{b} --version in the image");
    }
    assert!(
        rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file(),
        "CA bundle for ACME"
    );
    let mut setuid = vec![];
    setuid_files(&rootfs, &mut setuid);
    assert!(setuid.is_empty(), "setuid/setgid files in the image: {setuid:?}");
}

fn blob_index(layout: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).expect("index.json"))
        .expect("index.json parses")
}
