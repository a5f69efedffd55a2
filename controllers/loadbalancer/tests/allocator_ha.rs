//! Three allocator replicas under a burst of creates and deletes, with the leader SIGKILLed and its
//! successor cut off from the API server mid-burst. Afterwards no two Services hold one address, the
//! pool's counts equal the truth, and — checked on the API server's own clock, from its audit log — no
//! replica wrote a Service's address while another held the lease. Then every replica stops, Services
//! are deleted while none runs, and the next start releases their addresses.

mod common;

use common::*;
use ferrite_api::lb::IPPool;
use ferrite_e2e::{KubeBox, partition::Partition};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Service};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

const LEASE: &str = "ferrite-lb-controller";
const REPLICAS: [&str; 3] = ["alloc-a", "alloc-b", "alloc-c"];
/// 198.51.100.128/25: 128 addresses, more than the Services alive at the end (100).
const POOL_CIDR: &str = "198.51.100.128/25";
const CREATES: usize = 300;
const DELETES: usize = 200;

struct Replica {
    name: &'static str,
    kubeconfig: PathBuf,
    partition: Partition,
    running: Option<Running>,
}

async fn start_replica(kb: &KubeBox, ns: &str, r: &mut Replica) {
    let lease_ns = format!("--lease-namespace={ns}");
    let identity = format!("--identity={}", r.name);
    let gossip_ns = format!("--gossip-namespace={ns}");
    r.running = Some(
        start_controller(
            kb,
            &r.kubeconfig,
            &[&lease_ns, &identity, "--gossip-secret=gossip", &gossip_ns],
        )
        .await,
    );
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    let l = leases.get_opt(LEASE).await.ok()??;
    l.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// A kubeconfig for ServiceAccount `name` (bound to cluster-admin: RBAC is not what this test is about)
/// whose server is `via` instead of the API server.
async fn replica_kubeconfig(kb: &KubeBox, ns: &str, name: &str, via: SocketAddr) -> PathBuf {
    let direct = kb
        .service_account_kubeconfig(ns, name)
        .await
        .expect("ServiceAccount kubeconfig");
    let text = std::fs::read_to_string(&direct).expect("read kubeconfig");
    assert!(text.contains(&kb.server), "kubeconfig names {}", kb.server);
    let path = kb.dir.join(format!("{ns}-{name}-partitioned.kubeconfig"));
    std::fs::write(&path, text.replace(&kb.server, &format!("https://{via}"))).expect("write");
    path
}

async fn bind_cluster_admin(kb: &KubeBox, ns: &str) {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let api: Api<ClusterRoleBinding> = Api::all(kb.client().await);
    let subjects: Vec<_> = REPLICAS
        .iter()
        .map(|n| json!({"kind": "ServiceAccount", "name": n, "namespace": ns}))
        .collect();
    create(
        &api,
        json!({"metadata": {"name": format!("{ns}-replicas")},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": subjects}),
    )
    .await;
}

/// One record of the audit log that matters here.
#[derive(Debug)]
enum Audited {
    /// A successful Lease write: who holds the lease from this moment.
    Lease { at: String, holder: Option<String> },
    /// A Service status write that landed, by replica `by`.
    Status { at: String, by: String, service: String },
}

/// The lease writes and landed Service status writes of namespace `ns`, in the API server's order.
fn audit(path: &std::path::Path, ns: &str) -> Vec<Audited> {
    let text = std::fs::read_to_string(path).expect("audit log");
    let sa_prefix = format!("system:serviceaccount:{ns}:");
    let mut out: Vec<Audited> = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["stage"] != "ResponseComplete" {
            continue;
        }
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        if !(200..300).contains(&code) || e["objectRef"]["namespace"] != ns {
            continue;
        }
        let at = e["stageTimestamp"].as_str().unwrap_or_default().to_string();
        let user = e["user"]["username"].as_str().unwrap_or_default();
        match (
            e["objectRef"]["resource"].as_str(),
            e["objectRef"]["subresource"].as_str(),
        ) {
            (Some("leases"), None) if e["objectRef"]["name"] == LEASE => {
                let holder = e["requestObject"]["spec"]["holderIdentity"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(String::from);
                out.push(Audited::Lease { at, holder });
            }
            (Some("services"), Some("status")) => {
                if let Some(by) = user.strip_prefix(&sa_prefix) {
                    out.push(Audited::Status {
                        at,
                        by: by.to_string(),
                        service: e["objectRef"]["name"].as_str().unwrap_or_default().into(),
                    });
                }
            }
            _ => {}
        }
    }
    // RFC 3339 with a fixed number of fraction digits in UTC: text order is time order.
    out.sort_by(|a, b| {
        let t = |x: &Audited| match x {
            Audited::Lease { at, .. } | Audited::Status { at, .. } => at.clone(),
        };
        t(a).cmp(&t(b))
    });
    out
}

#[tokio::test]
async fn three_replicas_under_burst_kill_and_partition_never_share_an_address_or_write_out_of_term() {
    let kb = KubeBox::shared();
    crds(kb).await;
    let ns = kb.namespace("ha").await;
    let client = kb.client().await;
    bind_cluster_admin(kb, &ns).await;
    let upstream: SocketAddr = kb
        .server
        .trim_start_matches("https://")
        .parse()
        .expect("the box's API server address");

    let pools: Api<IPPool> = Api::all(client.clone());
    let pool = format!("{ns}-p");
    create(
        &pools,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": pool},
               "spec": {"addresses": [POOL_CIDR], "serviceAllocation": {"namespaces": [ns]}}}),
    )
    .await;

    let mut replicas = Vec::new();
    for name in REPLICAS {
        let partition = Partition::start(upstream).await.expect("forwarder");
        let kubeconfig = replica_kubeconfig(kb, &ns, name, partition.addr).await;
        replicas.push(Replica {
            name,
            kubeconfig,
            partition,
            running: None,
        });
    }
    // The first replica takes the lease before the others start, so the test knows whom to kill.
    start_replica(kb, &ns, &mut replicas[0]).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(15), "alloc-a leads", || async {
        (holder(&leases).await.as_deref() == Some("alloc-a")).then_some(())
    })
    .await;
    for r in replicas.iter_mut().skip(1) {
        start_replica(kb, &ns, r).await;
    }
    // The leader made the speakers' gossip Secret (the chart's default), with a random 32-byte key.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let gossip_key = |s: k8s_openapi::api::core::v1::Secret| {
        s.data
            .and_then(|d| d.get("key").map(|k| k.0.clone()))
            .unwrap_or_default()
    };
    let key = eventually(Duration::from_secs(15), "the gossip Secret", || async {
        secrets.get_opt("gossip").await.ok()?.map(gossip_key)
    })
    .await;
    assert_eq!(key.len(), 64, "32 random bytes as hex");
    assert!(key.iter().all(u8::is_ascii_hexdigit), "hex: {key:?}");

    // The burst: Service i is created, and Service i-50 deleted right after, until 200 are deleted.
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let name = |i: usize| format!("s{i:03}");
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let burst = {
        let svcs = svcs.clone();
        tokio::spawn(async move {
            let mut ops = 0usize;
            for i in 0..CREATES {
                create(
                    &svcs,
                    json!({"metadata": {"name": name(i)},
                           "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
                )
                .await;
                ops += 1;
                if i >= 50 && i - 50 < DELETES {
                    svcs.delete(&name(i - 50), &DeleteParams::default())
                        .await
                        .expect("delete");
                    ops += 1;
                }
                let _ = progress_tx.send(ops);
            }
            ops
        })
    };

    // Mid-burst: SIGKILL the leader.
    progress.wait_for(|n| *n >= 150).await.expect("burst running");
    replicas[0].running.as_mut().expect("running").proc.crash();
    eprintln!("killed alloc-a after 150 operations");
    // Its successor, once it leads, is cut off from the API server (its connections stall, half-open).
    let successor = eventually(Duration::from_secs(20), "a new leader", || async {
        holder(&leases).await.filter(|h| h != "alloc-a")
    })
    .await;
    let cut = replicas
        .iter()
        .position(|r| r.name == successor)
        .expect("a replica of ours");
    replicas[cut].partition.cut();
    eprintln!("cut {successor} off at {} operations", *progress.borrow());
    let third = eventually(Duration::from_secs(20), "the third replica leads", || async {
        holder(&leases)
            .await
            .filter(|h| h != "alloc-a" && h != successor.as_str())
    })
    .await;
    eprintln!("{third} leads");
    let ops = burst.await.expect("burst");
    assert_eq!(ops, CREATES + DELETES);
    // Heal the partition after the burst: the cut-off replica comes back as a follower.
    replicas[cut].partition.heal();

    // The truth: the Services alive (s200..s299) each hold one address of the pool, none shared, and
    // the pool counts them.
    let alive: BTreeSet<String> = (DELETES..CREATES).map(name).collect();
    let holders = eventually(
        Duration::from_secs(60),
        "every live Service to hold one distinct address",
        || async {
            let list = svcs.list(&ListParams::default()).await.ok()?;
            let mut by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut names = BTreeSet::new();
            for s in &list.items {
                let n = s.metadata.name.clone().unwrap_or_default();
                let v = ips(s);
                if v.len() != 1 {
                    return None;
                }
                by_ip.entry(v[0].clone()).or_default().push(n.clone());
                names.insert(n);
            }
            (names == alive && by_ip.len() == alive.len()).then_some(by_ip)
        },
    )
    .await;
    let net: ipnet::IpNet = POOL_CIDR.parse().expect("cidr");
    for (ip, who) in &holders {
        assert_eq!(who.len(), 1, "{ip} held by {who:?}");
        assert!(
            net.contains(&ip.parse::<std::net::IpAddr>().expect("ip")),
            "{ip} outside the pool"
        );
    }
    eventually(
        Duration::from_secs(20),
        "the pool to count 100 assigned",
        || async {
            let st = pools.get(&pool).await.ok()?.status?;
            (st.assigned_ipv4 == alive.len() as i64 && st.available_ipv4 == 128 - alive.len() as i64)
                .then_some(())
        },
    )
    .await;

    // On the API server's clock: every Service status write that landed came from the replica holding
    // the lease at that moment.
    let records = audit(&kb.audit_log(), &ns);
    let mut lease_holder: Option<String> = None;
    let mut writes = BTreeMap::<String, usize>::new();
    for r in &records {
        match r {
            Audited::Lease { holder, .. } => lease_holder = holder.clone(),
            Audited::Status { at, by, service } => {
                *writes.entry(by.clone()).or_default() += 1;
                assert_eq!(
                    lease_holder.as_deref(),
                    Some(by.as_str()),
                    "{by} wrote the status of {service} at {at} while the lease was held by {lease_holder:?}"
                );
            }
        }
    }
    eprintln!("status writes that landed, by replica: {writes:?}");
    assert!(
        writes.len() >= 2,
        "the burst was served by more than one term: {writes:?}"
    );

    // Every replica stops; Services are deleted while none runs; the next leader releases their
    // addresses at its start (its rebuild lists only what exists).
    for r in &mut replicas {
        if let Some(mut running) = r.running.take() {
            running.proc.stop(Duration::from_secs(5));
        }
    }
    for i in DELETES..DELETES + 10 {
        svcs.delete(&name(i), &DeleteParams::default())
            .await
            .expect("delete");
    }
    start_replica(kb, &ns, &mut replicas[0]).await;
    eventually(
        Duration::from_secs(20),
        "the pool to count the 90 left after a restart",
        || async {
            let st = pools.get(&pool).await.ok()?.status?;
            (st.assigned_ipv4 == 90).then_some(())
        },
    )
    .await;
    // Three terms later the gossip key is the one the first leader made: never replaced.
    let again = secrets
        .get("gossip")
        .await
        .map(gossip_key)
        .expect("gossip Secret");
    assert_eq!(again, key, "the gossip key never changes once made");
}
