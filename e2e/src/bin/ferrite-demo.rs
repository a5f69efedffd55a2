//! `make demo`: the box (etcd + kube-apiserver + controller-manager on loopback) with Ferrite's CRDs
//! installed and the controllers that exist running against it. Prints the kubeconfig and what to try;
//! Ctrl-C stops everything it started.

use anyhow::{Context, Result};
use ferrite_e2e::KubeBox;
use std::time::Duration;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    eprintln!("==> starting the box (etcd + kube-apiserver v1.20 + kube-controller-manager on 127.0.0.1)");
    let kb = KubeBox::start().await.context("starting the box")?;
    let kubeconfig = kb.kubeconfig.display().to_string();
    eprintln!("    API server {}  (files in {})", kb.server, kb.dir.display());

    eprintln!("==> installing crds/");
    ferrite_e2e::demo::apply_crds(&kb).await?;

    let mut running = ferrite_e2e::demo::start_controllers(&kb).await?;

    println!();
    println!("Ferrite is running against the box. In another terminal:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!(
        "  export PATH={}:$PATH",
        ferrite_e2e::cache_dir().join("bin").display()
    );
    println!("  kubectl get crds");
    for hint in &running.hints {
        println!("  {hint}");
    }
    println!("Stop with Ctrl-C (everything this demo started is stopped, by PID).");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    eprintln!("==> stopping");
    running.stop();
    kb.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
