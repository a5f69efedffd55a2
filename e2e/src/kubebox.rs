//! The box: a real control plane on loopback, started by the tests themselves.
//!
//! ```text
//!   etcd (127.0.0.1:random, data in /dev/shm)
//!     └── kube-apiserver v1.20 (127.0.0.1:random, TLS, token auth, RBAC, ServiceAccount tokens)
//!           └── kube-controller-manager (garbage collector, namespaces, ...; no node lifecycle:
//!               there is no kubelet, tests create Nodes and Leases themselves)
//! ```
//! Binaries: `ETCD` / `KUBE_APISERVER` / `KUBE_CONTROLLER_MANAGER` env, else the cached build of
//! `e2e/scripts/build-kube.sh`. With `FERRITE_KUBECONFIG` set, nothing is started and the tests run
//! against that cluster instead (kind, k3d, ...).

use crate::process::{Supervised, free_port, remove_after_exit, tail};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
};
use kube::{Api, Client, api::PostParams};
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// Version of the cached kube-apiserver build.
pub const KUBE_VERSION: &str = "1.20.5+really1.20.2";
/// Suffix of the cache directory: bumped when build-kube.sh changes how it builds.
pub const KUBE_BUILD: &str = "r2";

/// A running control plane (or an existing cluster).
#[derive(Debug)]
pub struct KubeBox {
    /// Directory holding certificates, kubeconfigs and logs.
    pub dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// API server URL.
    pub server: String,
    procs: Mutex<Vec<Supervised>>,
}

/// File name of the box's audit log, in [`KubeBox::dir`].
const AUDIT_LOG: &str = "audit.log";

/// What the box's API server audits: Lease writes with their body (who held a lease when) and Service
/// status writes (who wrote an address when), so tests can check that a controller wrote only while it
/// held its lease, on the server's clock. Nothing else, to keep the log small.
pub const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Request
    verbs: ["create", "update"]
    resources: [{group: "coordination.k8s.io", resources: ["leases"]}]
  - level: Metadata
    verbs: ["patch", "update"]
    resources: [{group: "", resources: ["services/status"]}]
  - level: Metadata
    verbs: ["list", "watch"]
    resources: [{group: "", resources: ["secrets"]}]
  - level: None
"#;

/// Where built tools are cached (`FERRITE_CACHE`, default `~/.cache/ferrite`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FERRITE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/ferrite")
        })
}

fn binary(env: &str, cached: PathBuf, fallback: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    if cached.is_file() {
        return Ok(cached);
    }
    for f in fallback {
        if Path::new(f).is_file() {
            return Ok(PathBuf::from(f));
        }
    }
    bail!(
        "{} not found (looked at ${env}, {}): run e2e/scripts/install-deps.sh once (or `make deps`)",
        cached
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cached.display()
    )
}

/// Path of a tool installed by install-deps.sh (`helm`, `kubectl`).
pub fn tool(name: &str) -> PathBuf {
    cache_dir().join("bin").join(name)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn write_certs(dir: &Path) -> Result<()> {
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n",
    )?;
    let steps: [&[&str]; 6] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=ferrite-box-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3650",
            "-extfile",
            "san.cnf",
        ],
        &["genrsa", "-out", "sa.key", "2048"],
        &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
        &["version"],
    ];
    for s in steps {
        openssl(dir, s)?;
    }
    Ok(())
}

fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Writes a kubeconfig for `server` authenticating with `token`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    token: &str,
    namespace: &str,
) -> Result<()> {
    let body = format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: box
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: box
  context:
    cluster: box
    user: {user}
    namespace: {namespace}
current-context: box
"#,
        ca = ca.display()
    );
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
}

/// Reads an environment variable as a kubeconfig for an existing cluster.
fn existing_cluster() -> Option<PathBuf> {
    std::env::var_os("FERRITE_KUBECONFIG").map(PathBuf::from)
}

impl KubeBox {
    /// The box shared by every test of this test binary, started on first use.
    pub fn shared() -> &'static KubeBox {
        static BOX: OnceLock<KubeBox> = OnceLock::new();
        BOX.get_or_init(|| {
            // Started on a thread with its own runtime: callers may be inside a tokio runtime.
            let started = std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(KubeBox::start())
            })
            .join();
            match started {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => panic!("the box did not start: {e:#}"),
                Err(_) => panic!("the box did not start: the starting thread panicked"),
            }
        })
    }

    /// The API server's audit log (JSON lines; see [`AUDIT_POLICY`] for what it records). Not kept for
    /// `FERRITE_KUBECONFIG` clusters.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join(AUDIT_LOG)
    }

    /// Starts a new box (or wraps `FERRITE_KUBECONFIG`).
    pub async fn start() -> Result<KubeBox> {
        if let Some(kubeconfig) = existing_cluster() {
            let b = KubeBox {
                dir: tempfile::Builder::new().prefix("ferrite-ext-").tempdir()?.keep(),
                kubeconfig,
                server: String::new(),
                procs: Mutex::new(vec![]),
            };
            remove_after_exit(&b.dir)?;
            b.wait_ready(Duration::from_secs(30)).await?;
            return Ok(b);
        }
        let etcd = binary("ETCD", PathBuf::from("/usr/bin/etcd"), &[])?;
        let kdir = cache_dir().join(format!("kube-{KUBE_VERSION}-{KUBE_BUILD}"));
        let apiserver = binary("KUBE_APISERVER", kdir.join("kube-apiserver"), &[])?;
        let kcm = binary(
            "KUBE_CONTROLLER_MANAGER",
            kdir.join("kube-controller-manager"),
            &[],
        )
        .ok();

        let dir = tempfile::Builder::new().prefix("ferrite-box-").tempdir()?.keep();
        if std::env::var_os("FERRITE_BOX_KEEP").is_none() {
            remove_after_exit(&dir)?;
        }
        // etcd fsyncs on every write; on tmpfs that costs nothing, which keeps tests fast.
        let shm = Path::new("/dev/shm");
        let etcd_dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("ferrite-etcd-")
                .tempdir_in(shm)?
                .keep()
        } else {
            dir.join("etcd")
        };
        if std::env::var_os("FERRITE_BOX_KEEP").is_none() {
            remove_after_exit(&etcd_dir)?;
        }
        write_certs(&dir)?;
        let admin_token = token();
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )?;

        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY)?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &server,
            &dir.join("ca.crt"),
            "admin",
            &admin_token,
            "default",
        )?;

        let mut procs = vec![];
        let s = |p: &Path| p.display().to_string();
        procs.push(Supervised::spawn(
            "etcd",
            &etcd,
            &[
                format!("--data-dir={}", s(&etcd_dir)),
                "--name=box".into(),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=box=http://127.0.0.1:{peer_port}"),
                "--log-level=warn".into(),
            ],
            &[],
            &dir.join("etcd.log"),
        )?);
        procs.push(Supervised::spawn(
            "kube-apiserver",
            &apiserver,
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--insecure-port=0".into(),
                format!("--tls-cert-file={}", s(&dir.join("server.crt"))),
                format!("--tls-private-key-file={}", s(&dir.join("server.key"))),
                format!("--client-ca-file={}", s(&dir.join("ca.crt"))),
                format!("--token-auth-file={}", s(&dir.join("tokens.csv"))),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", s(&dir.join("sa.pub"))),
                format!("--service-account-signing-key-file={}", s(&dir.join("sa.key"))),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                format!("--audit-policy-file={}", s(&dir.join("audit-policy.yaml"))),
                format!("--audit-log-path={}", s(&dir.join(AUDIT_LOG))),
                "--audit-log-mode=blocking".into(),
                "--v=1".into(),
            ],
            &[],
            &dir.join("kube-apiserver.log"),
        )?);
        let b = KubeBox {
            dir: dir.clone(),
            kubeconfig,
            server,
            procs: Mutex::new(procs),
        };
        b.wait_ready(Duration::from_secs(60)).await?;
        if let Some(kcm) = kcm {
            let p = Supervised::spawn(
                "kube-controller-manager",
                &kcm,
                &[
                    format!("--kubeconfig={}", s(&b.kubeconfig)),
                    format!("--service-account-private-key-file={}", s(&dir.join("sa.key"))),
                    format!("--root-ca-file={}", s(&dir.join("ca.crt"))),
                    // No kubelets here: node lifecycle would taint the test's Nodes; no cloud: no IPAM.
                    "--controllers=*,-nodelifecycle,-nodeipam,-ttl,-bootstrapsigner,-tokencleaner".into(),
                    "--leader-elect=false".into(),
                    "--port=0".into(),
                    "--secure-port=0".into(),
                    "--v=1".into(),
                ],
                &[],
                &dir.join("kube-controller-manager.log"),
            )?;
            b.procs.lock().unwrap_or_else(|p| p.into_inner()).push(p);
        }
        Ok(b)
    }

    async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            if let Some(dead) = self.dead_process() {
                bail!("{dead}");
            }
            match self.try_client().await {
                Ok(c) => match c.apiserver_version().await {
                    Ok(_) => {
                        // RBAC's bootstrap roles arrive a moment after /version answers.
                        let ns: Api<Namespace> = Api::all(c);
                        match ns.get_opt("default").await {
                            Ok(Some(_)) => return Ok(()),
                            Ok(None) => last = "namespace default not created yet".into(),
                            Err(e) => last = e.to_string(),
                        }
                    }
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the API server was not ready within {limit:?} (last error: {last}){}",
            self.log_tails()
        )
    }

    fn dead_process(&self) -> Option<String> {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for p in procs.iter_mut() {
            if !p.is_running() {
                return Some(format!(
                    "{} exited; last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail(30)
                ));
            }
        }
        None
    }

    fn log_tails(&self) -> String {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .map(|p| format!("\n--- {} ({}):\n{}", p.name, p.log.display(), p.log_tail(20)))
            .collect()
    }

    async fn try_client(&self) -> Result<Client> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// An admin client. Create one per test: a client belongs to the runtime that made it.
    pub async fn client(&self) -> Client {
        match self.try_client().await {
            Ok(c) => c,
            Err(e) => panic!("cannot build a client for the box: {e:#}"),
        }
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &token()[..8]);
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns: Namespace = match serde_json::from_value(serde_json::json!({"metadata": {"name": name}})) {
            Ok(ns) => ns,
            Err(e) => panic!("namespace object: {e}"),
        };
        if let Err(e) = api.create(&PostParams::default(), &ns).await {
            panic!("cannot create namespace {name}: {e}");
        }
        name
    }

    /// Mints a kubeconfig for ServiceAccount `namespace/name` (created if missing), so a controller runs
    /// with exactly the RBAC given to that account.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let client = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        if sas.get_opt(name).await?.is_none() {
            let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
            sas.create(&PostParams::default(), &sa).await?;
        }
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec!["https://kubernetes.default.svc".into()],
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let tr = sas
            .create_token_request(name, &PostParams::default(), &req)
            .await?;
        let token = tr
            .status
            .map(|s| s.token)
            .context("TokenRequest returned no token")?;
        let path = self.dir.join(format!("sa-{namespace}-{name}.kubeconfig"));
        let (server, ca) = self.server_and_ca()?;
        write_kubeconfig(
            &path,
            &server,
            &ca,
            &format!("system:serviceaccount:{namespace}:{name}"),
            &token,
            namespace,
        )?;
        Ok(path)
    }

    fn server_and_ca(&self) -> Result<(String, PathBuf)> {
        if !self.server.is_empty() {
            return Ok((self.server.clone(), self.dir.join("ca.crt")));
        }
        bail!("minting ServiceAccount kubeconfigs against FERRITE_KUBECONFIG clusters is not supported")
    }

    /// `kubectl` (from install-deps.sh) with this box's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(tool("kubectl"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// `helm` (from install-deps.sh) with this box's kubeconfig.
    pub fn helm(&self) -> Command {
        let mut c = Command::new(tool("helm"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// The tail of the API server's log (for assertion messages).
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("kube-apiserver.log"), lines)
    }

    /// Stops every process of the box now (the demo's Ctrl-C; tests let the watchdogs do it).
    pub fn stop(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut p) = procs.pop() {
            p.stop(Duration::from_secs(5));
        }
    }
}
