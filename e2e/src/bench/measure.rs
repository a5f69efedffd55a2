//! The measurements. Each loop is bounded in count and time.

use super::{Rig, stats};
use anyhow::{Context, Result, bail};
use ferrite_e2e::netlab::NetLab;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams, PostParams},
};
use serde_json::json;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// How often the client asks by ARP while waiting for the first answer (arping, failover checks).
pub const ARP_INTERVAL: Duration = Duration::from_millis(10);
/// How often the prober of the create -> first ARP answer clock asks.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// How often the client's neighbour table is read during a failover.
pub const NEIGH_INTERVAL: Duration = Duration::from_millis(10);
/// A failover trial that has not moved after this long counts as not moved.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(10);
/// After a crashed speaker is restarted: its startup grace (3 s) and a gossip round.
pub const REJOIN_WAIT: Duration = Duration::from_secs(4);

/// Benchmark 1.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    /// Create sent -> IP seen in status (GET every 5 ms).
    pub to_ip: Vec<Duration>,
    /// Create sent -> first ARP answer from a lab node, read by the long-running prober.
    pub to_arp: Vec<Duration>,
    /// Services that got no ARP answer within 10 s.
    pub no_answer: usize,
    /// Median time the prober takes to get an answer from an address that is already announced (its
    /// round trip; the resolution of `to_arp` is this plus [`PROBE_INTERVAL`]).
    pub probe_overhead: Option<Duration>,
}

/// One failover trial.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Node whose speaker was killed.
    pub from: String,
    /// Node whose MAC the client then held, and when (from the SIGKILL).
    pub to: Option<(String, Duration)>,
}

/// Benchmark 2.
#[derive(Debug, Default, Clone)]
pub struct Failover {
    /// The Service's address.
    pub vip: String,
    /// The trials.
    pub trials: Vec<Trial>,
}

impl Failover {
    /// Times of the trials that moved.
    pub fn times(&self) -> Vec<Duration> {
        self.trials
            .iter()
            .filter_map(|t| t.to.as_ref().map(|(_, d)| *d))
            .collect()
    }
}

/// Benchmark 3.
#[derive(Debug, Default, Clone)]
pub struct Alloc {
    /// Services created.
    pub n: usize,
    /// Creates in flight.
    pub concurrency: usize,
    /// Creates that failed after retries.
    pub create_errors: usize,
    /// First create sent -> last create answered.
    pub created: Duration,
    /// First create sent -> every Service had an IP in status (None: not within the limit).
    pub all_with_ip: Option<Duration>,
    /// Services with an IP at the last check.
    pub with_ip: usize,
    /// Successful reconciles of the controller during the run.
    pub reconciles: f64,
    /// Failed reconciles during the run.
    pub reconcile_errors: f64,
    /// Mean reconcile duration (s).
    pub reconcile_mean: Option<f64>,
    /// Histogram bucket bounds (s) holding the median and the 99th percentile.
    pub reconcile_p50: Option<f64>,
    /// See `reconcile_p50`.
    pub reconcile_p99: Option<f64>,
    /// The API server's own create rate: the same creates (same names, same concurrency, same rig running)
    /// of Services of a `loadBalancerClass` nobody serves. Run before the allocation run, then deleted.
    pub apiserver_created: Option<ApiserverRate>,
    /// Failed reconciles during the run by `kind/reason` (from `ferrite_lb_reconcile_errors_total`).
    pub error_reasons: Vec<(String, f64)>,
    /// Watch events (Services and EndpointSlices of the namespace, as the speakers see them) during the
    /// allocation run, counted by a watch of the benchmark's own.
    pub events: u64,
    /// CPU time (utime + stime) each speaker used during the allocation run (first create -> all have an
    /// IP, plus the 5 s settle).
    pub speaker_cpu: Vec<(String, Option<Duration>)>,
    /// Wall time of that window.
    pub cpu_window: Duration,
}

/// The API server's own create rate, the yardstick of the allocation rate.
#[derive(Debug, Default, Clone)]
pub struct ApiserverRate {
    /// Services created.
    pub created: usize,
    /// First create sent -> last answered.
    pub took: Duration,
    /// When the sample is larger than [`EARLY_SAMPLE`]: first create sent -> the `EARLY_SAMPLE`th answered
    /// (the size of the yardstick of earlier reports: a smaller, emptier API server creates faster).
    pub early: Option<(usize, Duration)>,
}

impl ApiserverRate {
    /// Creates per second over the whole sample.
    pub fn rate(&self) -> f64 {
        self.created as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// The yardstick size of earlier reports, shown beside the full-size one.
pub const EARLY_SAMPLE: usize = 2000;

fn pool_resource() -> ApiResource {
    ApiResource {
        group: "lb.ferrite.dev".into(),
        version: "v1alpha1".into(),
        api_version: "lb.ferrite.dev/v1alpha1".into(),
        kind: "IPPool".into(),
        plural: "ippools".into(),
    }
}

/// EndpointSlice resource: v1 where served, else v1beta1 (the box's 1.20).
async fn slice_resource(client: &Client) -> (ApiResource, bool) {
    let v1 = client
        .list_api_group_resources("discovery.k8s.io/v1")
        .await
        .is_ok();
    let version = if v1 { "v1" } else { "v1beta1" };
    (
        ApiResource {
            group: "discovery.k8s.io".into(),
            version: version.into(),
            api_version: format!("discovery.k8s.io/{version}"),
            kind: "EndpointSlice".into(),
            plural: "endpointslices".into(),
        },
        v1,
    )
}

/// Creates an IPPool for namespace `ns` and waits until the controller counts its addresses.
async fn create_pool(
    client: &Client,
    admin: SocketAddr,
    name: &str,
    addresses: &[&str],
    ns: &str,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &pool_resource());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
        "spec": {"addresses": addresses, "serviceAllocation": {"namespaces": [ns]}, "l2": {"interfaces": ["eth0"]}},
    }))?;
    api.create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating IPPool {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok((200, body)) = stats::http_get(admin, "/metrics").await
            && stats::sample(&body, "ferrite_lb_pool_addresses", &[("pool", name)]).is_some_and(|v| v > 0.0)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the controller did not pick up IPPool {name} within 15 s")
}

/// What an endpoint controller would write: one ready endpoint of Service `svc` on every lab node.
async fn create_slice(client: &Client, lab: &NetLab, ns: &str, svc: &str) -> Result<()> {
    let (ar, v1) = slice_resource(client).await;
    let endpoints: Vec<_> = lab
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut e = json!({
                "addresses": [format!("198.51.100.{}", 10 + i)], "conditions": {"ready": true},
                "topology": {"kubernetes.io/hostname": n.name},
            });
            if v1 {
                e["nodeName"] = json!(n.name);
            }
            e
        })
        .collect();
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"port": 8080, "protocol": "TCP"}],
    }))?;
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating EndpointSlice for {svc}"))?;
    Ok(())
}

fn lb_service(name: &str) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": name}},
    }))?)
}

fn status_ip(svc: &Service) -> Option<String> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|i| i.ip.clone())
}

/// Polls until Service `name` shows an IP in its status.
async fn wait_ip(svcs: &Api<Service>, name: &str, every: Duration, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = svcs.get(name).await
            && let Some(ip) = status_ip(&s)
        {
            return Ok(ip);
        }
        if Instant::now() > deadline {
            bail!("Service {name}: no IP in status within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

fn arping(lab: &NetLab, ip: &str, limit: Duration) -> Option<String> {
    tokio::task::block_in_place(|| lab.arping_within(ip, ARP_INTERVAL, limit))
}

/// The IPPool of benchmarks 1, 2 and 2c (`192.0.2.100-192.0.2.199`, interface `eth0`) for `ns`.
pub async fn lan_pool(client: &Client, rig: &Rig, ns: &str) -> Result<()> {
    create_pool(
        client,
        rig.admin,
        &format!("{ns}-lan"),
        &["192.0.2.100-192.0.2.199"],
        ns,
    )
    .await
}

/// Benchmark 1: `n` Services, one at a time (the pool of [`lan_pool`] must exist).
pub async fn latency(client: &Client, rig: &Rig, ns: &str, n: usize) -> Result<Latency> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let mut out = Latency::default();
    let mut last_vip = None;
    // Started once, before any Service: the ARP clock carries no process start-up.
    let mut prober = super::arp_probe::ArpProber::start(&rig.lab.client_ns, "eth0")?;
    let mut probe = |ip: std::net::Ipv4Addr, limit: Duration| {
        tokio::task::block_in_place(|| prober.probe(ip, PROBE_INTERVAL, limit))
    };
    for i in 0..n {
        let name = format!("lat-{i:02}");
        // The endpoints exist first, as an endpoint controller would have written them by the time the
        // Service matters; the clock measures ferrite-lb, not the endpoint controller.
        create_slice(client, &rig.lab, ns, &name).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let svc = lb_service(&name)?;
        let t0 = Instant::now();
        svcs.create(&PostParams::default(), &svc).await?;
        let vip = wait_ip(&svcs, &name, Duration::from_millis(5), Duration::from_secs(10)).await?;
        let to_ip = t0.elapsed();
        out.to_ip.push(to_ip);
        let ip: std::net::Ipv4Addr = vip
            .parse()
            .with_context(|| format!("{name}: status IP {vip} is not IPv4"))?;
        let answer = probe(ip, Duration::from_secs(10));
        match answer.and_then(|(m, at)| Some((rig.lab.node_by_mac(&m)?, at))) {
            Some((node, at)) => {
                let to_arp = at.duration_since(t0);
                out.to_arp.push(to_arp);
                eprintln!(
                    "    {name}: {vip} in status after {to_ip:?}, ARP answer from {} after {to_arp:?}",
                    node.name
                );
            }
            None => {
                out.no_answer += 1;
                eprintln!("    {name}: {vip} in status after {to_ip:?}, no ARP answer within 10 s");
            }
        }
        last_vip = Some(ip);
    }
    if let Some(ip) = last_vip {
        let mut took = vec![];
        for _ in 0..10 {
            let t = Instant::now();
            if let Some((_, at)) = probe(ip, Duration::from_secs(2)) {
                took.push(at.duration_since(t));
            }
        }
        out.probe_overhead = stats::quantile(&took, 0.5);
    }
    Ok(out)
}

/// The announcing node, from the Service's ServiceL2Status.
async fn owner(svcs: &Api<Service>, name: &str) -> Option<String> {
    ferrite_e2e::demo::announcing_node(svcs, name).await
}

/// Benchmark 2: `trials` crashes of the announcing node's speaker.
pub async fn failover(client: &Client, rig: &mut Rig, ns: &str, trials: usize) -> Result<Failover> {
    let name = "failover";
    create_slice(client, &rig.lab, ns, name).await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    svcs.create(&PostParams::default(), &lb_service(name)?).await?;
    let vip = wait_ip(&svcs, name, Duration::from_millis(50), Duration::from_secs(15)).await?;
    let mut out = Failover {
        vip: vip.clone(),
        trials: vec![],
    };
    for t in 0..trials {
        // The owner: named by the ServiceL2Status, its speaker running, answering ARP with its MAC.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (idx, mac) = loop {
            let named = owner(&svcs, name).await;
            if let Some(idx) = named.and_then(|o| rig.lab.nodes.iter().position(|n| n.name == o))
                && rig.speakers[idx].is_some()
            {
                let mac = rig.lab.nodes[idx].mac.clone();
                if arping(&rig.lab, &vip, Duration::from_secs(1)).as_deref() == Some(mac.as_str()) {
                    break (idx, mac);
                }
            }
            if Instant::now() > deadline {
                bail!("trial {t}: no running speaker announces {vip} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let from = rig.lab.nodes[idx].name.clone();
        // As a client that has been talking to the VIP would hold it.
        rig.lab.set_client_neighbour(&vip, &mac)?;
        let pid = rig.speakers[idx]
            .as_ref()
            .and_then(|s| s.program_pid())
            .with_context(|| format!("trial {t}: speaker on {from} has no PID"))?;
        let t0 = Instant::now();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("kill")?;
        let mut to = None;
        while t0.elapsed() < FAILOVER_LIMIT {
            if let Some(m) = rig.lab.client_neighbour(&vip)
                && m != mac
                && let Some(node) = rig.lab.node_by_mac(&m)
            {
                to = Some((node.name.clone(), t0.elapsed()));
                break;
            }
            tokio::time::sleep(NEIGH_INTERVAL).await;
        }
        match &to {
            Some((node, d)) => {
                eprintln!("    trial {t:2}: {from} killed -> client holds {node}'s MAC after {d:?}")
            }
            None => eprintln!("    trial {t:2}: {from} killed -> no move within {FAILOVER_LIMIT:?}"),
        }
        out.trials.push(Trial {
            from: from.clone(),
            to,
        });
        // Reap the watchdog, restart the speaker, let the new owner record itself and the restarted
        // speaker rejoin the gossip before the next trial.
        if let Some(mut s) = rig.speakers[idx].take() {
            s.crash();
        }
        rig.speakers[idx] = Some(rig.start_speaker(idx)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && owner(&svcs, name).await.as_deref() == Some(from.as_str()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(REJOIN_WAIT).await;
    }
    Ok(out)
}

async fn scrape(admin: SocketAddr) -> Result<String> {
    match stats::http_get(admin, "/metrics").await {
        Ok((200, body)) => Ok(body),
        Ok((code, _)) => bail!("controller /metrics answered {code}"),
        Err(e) => bail!("controller /metrics: {e}"),
    }
}

/// Services in `svcs` with an IP in status (paginated list).
async fn count_with_ip(svcs: &Api<Service>) -> Result<usize> {
    let mut n = 0;
    let mut token: Option<String> = None;
    for _ in 0..1000 {
        let mut lp = ListParams::default().limit(500);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = svcs.list(&lp).await?;
        n += page.items.iter().filter(|s| status_ip(s).is_some()).count();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    Ok(n)
}

/// The type of the API-server-only creates: `NodePort` costs the API server the same allocations as a
/// LoadBalancer Service (a ClusterIP and a NodePort; the 1.20 API server gives every LoadBalancer Service
/// a NodePort) and no load balancer serves it. (A LoadBalancer Service of another `loadBalancerClass`
/// is not unserved on the box: the 1.20 API server has no such field, drops it, and the controller then
/// serves the Service as class-less and fails it with NoMatchingPool: ~70,000 failed reconciles and
/// their Events during a 10,000-create yardstick.)
const UNSERVED_TYPE: &str = "NodePort";

/// Creates `n` Services named like the allocation run's with `concurrency` in flight; (created, time,
/// time when `mark` creates had been answered).
async fn create_services(
    svcs: &Api<Service>,
    n: usize,
    concurrency: usize,
    unserved: bool,
    limit: Duration,
    mark: usize,
) -> (usize, Duration, Option<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let at_mark = Arc::new(std::sync::OnceLock::new());
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (svcs, next, errors) = (svcs.clone(), next.clone(), errors.clone());
        let (answered, at_mark) = (answered.clone(), at_mark.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || t0.elapsed() > limit {
                    return;
                }
                let Ok(mut svc) = lb_service(&format!("s-{i:05}")) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let (true, Some(spec)) = (unserved, svc.spec.as_mut()) {
                    spec.type_ = Some(UNSERVED_TYPE.to_string());
                }
                let mut ok = false;
                for attempt in 0..5u32 {
                    match svcs.create(&PostParams::default(), &svc).await {
                        Ok(_) => ok = true,
                        Err(kube::Error::Api(e)) if e.code == 409 => ok = true,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200) * (attempt + 1)).await;
                            continue;
                        }
                    }
                    break;
                }
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                } else if answered.fetch_add(1, Ordering::Relaxed) + 1 == mark {
                    let _ = at_mark.set(t0.elapsed());
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let created = next.load(Ordering::Relaxed).min(n) - errors.load(Ordering::Relaxed).min(n);
    (created, t0.elapsed(), at_mark.get().copied())
}

/// The API server's create rate in this rig: `n` Services of [`UNSERVED_TYPE`] in namespace `ns`,
/// then deleted and waited for, so the allocation run starts from the same number of objects.
async fn apiserver_create_rate(
    client: &Client,
    ns: &str,
    n: usize,
    concurrency: usize,
) -> Result<ApiserverRate> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let mark = if n > EARLY_SAMPLE { EARLY_SAMPLE } else { 0 };
    let (created, took, at_mark) =
        create_services(&svcs, n, concurrency, true, Duration::from_secs(30 * 60), mark).await;
    let rate = ApiserverRate {
        created,
        took,
        early: at_mark.map(|t| (mark, t)),
    };
    eprintln!(
        "    API server alone: {created} Services of type {UNSERVED_TYPE} created in {took:?} ({:.0}/s{})",
        rate.rate(),
        rate.early.map_or(String::new(), |(m, t)| format!(
            "; the first {m} in {t:?}, {:.0}/s",
            m as f64 / t.as_secs_f64().max(1e-9)
        ))
    );
    // Services have no deletecollection: delete one by one, 4 times as many in flight as the creates (the
    // deletes are not measured; only their end is awaited).
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency * 4 {
        let (svcs, next) = (svcs.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let _ = svcs.delete(&format!("s-{i:05}"), &Default::default()).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(10 * 60);
    while Instant::now() < deadline {
        if svcs.list(&ListParams::default().limit(1)).await?.items.is_empty() {
            return Ok(rate);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the unserved Services were not deleted within 10 min")
}

/// Counts watch events (after the initial list) of `api` until the task is aborted.
fn count_events<K>(api: Api<K>, counter: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    use futures::StreamExt;
    use kube::runtime::watcher;
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        let mut listed = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => listed = true,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) if listed => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    })
}

/// Benchmark 3: `n` Services with `concurrency` creates in flight, after the API server's own create rate
/// on `sample` creates (`--apiserver-sample`, default `n`: the yardstick is as large as the run).
pub async fn allocation(
    client: &Client,
    rig: &Rig,
    ns: &str,
    n: usize,
    concurrency: usize,
    sample: usize,
) -> Result<Alloc> {
    let apiserver_created = Some(apiserver_create_rate(client, ns, sample, concurrency).await?);
    let pool = format!("{ns}-bench");
    create_pool(client, rig.admin, &pool, &["198.18.0.0/15"], ns).await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let before = scrape(rig.admin).await?;
    let events = Arc::new(AtomicUsize::new(0));
    let counting = [
        count_events(svcs.clone(), events.clone()),
        count_events(
            Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), ns),
            events.clone(),
        ),
    ];
    // The counting watches list first: give them a moment, so the first creates are counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let speaker_pids: Vec<(String, Option<u32>)> = rig
        .speakers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                rig.lab.nodes[i].name.clone(),
                s.as_ref().and_then(|s| s.program_pid()),
            )
        })
        .collect();
    let cpu_before: Vec<Option<Duration>> = speaker_pids.iter().map(|(_, p)| p.and_then(cpu_time)).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let limit = Duration::from_secs(15 * 60);
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (svcs, next, errors) = (svcs.clone(), next.clone(), errors.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || t0.elapsed() > limit {
                    return;
                }
                let Ok(svc) = lb_service(&format!("s-{i:05}")) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut ok = false;
                for attempt in 0..5u32 {
                    match svcs.create(&PostParams::default(), &svc).await {
                        Ok(_) => ok = true,
                        Err(kube::Error::Api(e)) if e.code == 409 => ok = true,
                        Err(e) => {
                            if attempt == 4 {
                                eprintln!("    create s-{i:05} failed: {e}");
                            }
                            tokio::time::sleep(Duration::from_millis(200) * (attempt + 1)).await;
                            continue;
                        }
                    }
                    break;
                }
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let mut progress = Instant::now();
    while workers.join_next().await.is_some() {
        if progress.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "    {} created after {:?}",
                next.load(Ordering::Relaxed).min(n),
                t0.elapsed()
            );
            progress = Instant::now();
        }
    }
    let created = t0.elapsed();
    let create_errors = errors.load(Ordering::Relaxed);
    let want = n - create_errors;
    eprintln!("    {want} Services created in {created:?} ({create_errors} failed)");

    // The allocator's in-use gauge first (costs the API server nothing), then a list of every Service
    // to check the status itself. A paginated list reads one snapshot taken when its first page is
    // asked for, so the time is taken just before the list.
    let mut all_with_ip = None;
    let mut with_ip = 0;
    let mut progress = Instant::now();
    while t0.elapsed() < limit {
        let in_use = scrape(rig.admin)
            .await
            .ok()
            .and_then(|b| stats::sample(&b, "ferrite_lb_pool_addresses_in_use", &[("pool", &pool)]))
            .unwrap_or(0.0);
        if in_use >= want as f64 {
            let at = t0.elapsed();
            with_ip = count_with_ip(&svcs).await?;
            if with_ip >= want {
                all_with_ip = Some(at);
                break;
            }
        }
        if progress.elapsed() > Duration::from_secs(10) {
            eprintln!("    {in_use} addresses in use after {:?}", t0.elapsed());
            progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if all_with_ip.is_none() {
        with_ip = count_with_ip(&svcs).await?;
    }
    let after = scrape(rig.admin).await?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        stats::sample(&after, name, labels).unwrap_or(0.0)
            - stats::sample(&before, name, labels).unwrap_or(0.0)
    };
    let reconciles = delta("ferrite_lb_reconcile_total", &[("result", "success")]);
    let reconcile_errors = delta("ferrite_lb_reconcile_total", &[("result", "error")]);
    let error_reasons = error_reasons(&before, &after);
    let sum = delta("ferrite_lb_reconcile_duration_seconds_sum", &[]);
    let count = delta("ferrite_lb_reconcile_duration_seconds_count", &[]);
    let (hb, ha) = (
        stats::buckets(&before, "ferrite_lb_reconcile_duration_seconds"),
        stats::buckets(&after, "ferrite_lb_reconcile_duration_seconds"),
    );
    // The speakers catch up with the last status writes before their memory is read.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_window = t0.elapsed();
    for task in &counting {
        task.abort();
    }
    let speaker_cpu = speaker_pids
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            let used = pid
                .and_then(cpu_time)
                .zip(before)
                .map(|(after, before)| after.saturating_sub(before));
            (name.clone(), used)
        })
        .collect();
    Ok(Alloc {
        n,
        concurrency,
        create_errors,
        created,
        all_with_ip,
        with_ip,
        reconciles,
        reconcile_errors,
        error_reasons,
        reconcile_mean: (count > 0.0).then(|| sum / count),
        reconcile_p50: stats::bucket_quantile(&hb, &ha, 0.5),
        reconcile_p99: stats::bucket_quantile(&hb, &ha, 0.99),
        apiserver_created,
        events: events.load(Ordering::Relaxed) as u64,
        speaker_cpu,
        cpu_window,
    })
}

/// `kind/reason` -> failed reconciles between two scrapes (`ferrite_lb_reconcile_errors_total`), the
/// largest first; reasons that did not grow are left out.
fn error_reasons(before: &str, after: &str) -> Vec<(String, f64)> {
    fn parse(body: &str) -> std::collections::BTreeMap<String, f64> {
        let label = |l: &str, k: &str| {
            let start = l.find(&format!("{k}=\""))? + k.len() + 2;
            let end = l[start..].find('"')? + start;
            Some(l[start..end].to_string())
        };
        let mut out = std::collections::BTreeMap::new();
        for l in body
            .lines()
            .filter(|l| l.starts_with("ferrite_lb_reconcile_errors_total{"))
        {
            let (Some(kind), Some(reason), Some(v)) = (
                label(l, "kind"),
                label(l, "reason"),
                l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            *out.entry(format!("{kind}/{reason}")).or_insert(0.0) += v;
        }
        out
    }
    let b = parse(before);
    let mut out: Vec<(String, f64)> = parse(after)
        .into_iter()
        .map(|(k, v)| {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    out.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    out
}

/// Waits (at most [`FAILOVER_LIMIT`]) until the client's neighbour entry for `vip` holds a lab node's
/// MAC other than `mac`; that node and the time since `t0`.
async fn wait_moved(lab: &NetLab, vip: &str, mac: &str, t0: Instant) -> Option<(String, Duration)> {
    while t0.elapsed() < FAILOVER_LIMIT {
        if let Some(m) = lab.client_neighbour(vip)
            && m != mac
            && let Some(node) = lab.node_by_mac(&m)
        {
            return Some((node.name.clone(), t0.elapsed()));
        }
        tokio::time::sleep(NEIGH_INTERVAL).await;
    }
    None
}

fn kill(sig: &str, pids: &[u32]) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .context("kill")?;
    if !status.success() {
        bail!("kill -{sig} {pids:?} failed");
    }
    Ok(())
}

/// keepalived's address in the lab: outside every IPPool of the benchmark.
pub const KEEPALIVED_VIP: &str = "192.0.2.250";
/// VRRP virtual router id of the benchmark.
const KEEPALIVED_VRID: u8 = 51;

/// The keepalived configurations run beside ferrite-lb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vrrp {
    /// VRRPv2 (keepalived's default version) with the default 1 s advertisement interval.
    V2Default,
    /// VRRPv3 with 100 ms advertisements (VRRPv3 allows centiseconds).
    V3Fast,
}

impl Vrrp {
    /// Both, in the order they run.
    pub const ALL: [Vrrp; 2] = [Vrrp::V2Default, Vrrp::V3Fast];

    /// For the report.
    pub fn label(self) -> &'static str {
        match self {
            Vrrp::V2Default => "keepalived VRRPv2, `advert_int 1` (default)",
            Vrrp::V3Fast => "keepalived VRRPv3, `advert_int 0.1`",
        }
    }

    /// Advertisement interval.
    pub fn advert(self) -> Duration {
        match self {
            Vrrp::V2Default => Duration::from_secs(1),
            Vrrp::V3Fast => Duration::from_millis(100),
        }
    }

    /// RFC 5798 Master_Down_Interval for priority 100: 3 adverts + skew ((256 - 100) / 256 adverts).
    pub fn master_down(self) -> Duration {
        self.advert() * 3 + self.advert() * 156 / 256
    }

    /// keepalived.conf of node `router`: every node BACKUP with one priority and `nopreempt`, so a
    /// restarted node does not take the address back (like ferrite-lb's no flip-back).
    pub fn config(self, router: &str) -> String {
        let (version, advert) = match self {
            Vrrp::V2Default => (2, "1"),
            Vrrp::V3Fast => (3, "0.1"),
        };
        format!(
            "global_defs {{\n    router_id {router}\n}}\n\
             vrrp_instance bench {{\n    version {version}\n    state BACKUP\n    interface eth0\n    \
             virtual_router_id {KEEPALIVED_VRID}\n    priority 100\n    advert_int {advert}\n    nopreempt\n    \
             virtual_ipaddress {{\n        {KEEPALIVED_VIP}/32 dev eth0\n    }}\n}}\n"
        )
    }
}

/// One keepalived run (of the configuration it is paired with): its version and the trials.
#[derive(Debug, Clone)]
pub struct VrrpRun {
    /// `keepalived --version`'s first line.
    pub version: String,
    /// The trials (the VIP is [`KEEPALIVED_VIP`]).
    pub failover: Failover,
}

/// keepalived in node namespace `i`, with its own configuration and PID files in the lab directory.
fn start_keepalived(
    lab: &NetLab,
    i: usize,
    vrrp: Vrrp,
) -> Result<(ferrite_e2e::Supervised, std::path::PathBuf)> {
    let n = &lab.nodes[i];
    let dir = lab.dir().join(format!("keepalived-{}", n.name));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("keepalived.conf");
    std::fs::write(&conf, vrrp.config(&n.name))?;
    let vrrp_pid = dir.join("vrrp.pid");
    let _ = std::fs::remove_file(&vrrp_pid);
    let args: Vec<String> = vec![
        "--dont-fork".into(),
        "--log-console".into(),
        "--log-detail".into(),
        "--no-syslog".into(),
        "--vrrp".into(),
        // A killed VRRP child must stay dead (the parent would respawn it).
        "--dont-respawn".into(),
        format!("--use-file={}", conf.display()),
        format!("--pid={}", dir.join("keepalived.pid").display()),
        format!("--vrrp_pid={}", vrrp_pid.display()),
    ];
    let p = lab.spawn_in(
        &n.ns,
        "keepalived",
        std::path::Path::new("keepalived"),
        &args,
        &[],
    )?;
    Ok((p, vrrp_pid))
}

fn keepalived_version() -> String {
    std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .map(|o| {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            all.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// The VRRP child's PID from its PID file (written once it runs).
fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Benchmark 2b: `trials` crashes (SIGKILL of keepalived's VRRP process and its parent) of the
/// keepalived master, in the same lab, measured with the same clock as ferrite-lb's.
pub async fn keepalived(rig: &Rig, vrrp: Vrrp, trials: usize) -> Result<VrrpRun> {
    let lab = &rig.lab;
    let version = keepalived_version();
    if version.is_empty() {
        bail!(
            "keepalived not found: run `make deps` (e2e/scripts/install-deps.sh installs the Debian package)"
        );
    }
    let mut procs = Vec::new();
    for i in 0..lab.nodes.len() {
        procs.push(Some(start_keepalived(lab, i, vrrp)?));
    }
    let result = keepalived_trials(rig, vrrp, trials, &mut procs).await;
    // Stop them all and leave no VIP behind, also on error.
    for (i, p) in procs.iter_mut().enumerate() {
        if let Some((mut p, _)) = p.take() {
            p.stop(Duration::from_secs(3));
        }
        let _ = del_vip(lab, i);
    }
    Ok(VrrpRun {
        version,
        failover: result?,
    })
}

fn del_vip(lab: &NetLab, i: usize) -> Result<()> {
    let ns = &lab.nodes[i].ns;
    let has = std::process::Command::new("ip")
        .args(["-n", ns, "-4", "addr", "show", "dev", "eth0"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{KEEPALIVED_VIP}/32")))
        .unwrap_or(false);
    if has {
        std::process::Command::new("ip")
            .args([
                "-n",
                ns,
                "addr",
                "del",
                &format!("{KEEPALIVED_VIP}/32"),
                "dev",
                "eth0",
            ])
            .status()
            .context("ip addr del")?;
    }
    Ok(())
}

async fn keepalived_trials(
    rig: &Rig,
    vrrp: Vrrp,
    trials: usize,
    procs: &mut [Option<(ferrite_e2e::Supervised, std::path::PathBuf)>],
) -> Result<Failover> {
    let lab = &rig.lab;
    let vip = KEEPALIVED_VIP;
    let mut out = Failover {
        vip: vip.to_string(),
        trials: vec![],
    };
    // The first master: every node starts BACKUP and waits Master_Down_Interval.
    let settle = vrrp.master_down() + vrrp.advert() * 2 + Duration::from_secs(1);
    tokio::time::sleep(settle).await;
    for t in 0..trials {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (idx, mac) = loop {
            for (i, p) in procs.iter_mut().enumerate() {
                if let Some((p, _)) = p
                    && !p.is_running()
                {
                    bail!("keepalived on {} exited:\n{}", lab.nodes[i].name, p.log_tail(30));
                }
            }
            if let Some(mac) = arping(lab, vip, Duration::from_secs(1))
                && let Some(idx) = lab.nodes.iter().position(|n| n.mac == mac)
            {
                break (idx, mac);
            }
            if Instant::now() > deadline {
                bail!("trial {t}: no keepalived master answers {vip} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let from = lab.nodes[idx].name.clone();
        let (parent, child) = {
            let (p, pidfile) = procs[idx].as_ref().context("keepalived running")?;
            (
                p.program_pid()
                    .with_context(|| format!("trial {t}: keepalived on {from} has no PID"))?,
                read_pid(pidfile).with_context(|| format!("trial {t}: no VRRP child PID file on {from}"))?,
            )
        };
        lab.set_client_neighbour(vip, &mac)?;
        let t0 = Instant::now();
        // The VRRP process first, then its parent, in one kill(1): neither can react.
        kill("KILL", &[child, parent])?;
        let to = wait_moved(lab, vip, &mac, t0).await;
        match &to {
            Some((node, d)) => {
                eprintln!("    trial {t:2}: {from} killed -> client holds {node}'s MAC after {d:?}")
            }
            None => eprintln!("    trial {t:2}: {from} killed -> no move within {FAILOVER_LIMIT:?}"),
        }
        out.trials.push(Trial { from, to });
        // The dead node's address stays configured (nobody removed it): remove it as a reboot would,
        // then start keepalived there again, BACKUP with nopreempt, and let it hear the new master.
        if let Some((mut p, _)) = procs[idx].take() {
            p.stop(Duration::from_secs(2));
        }
        del_vip(lab, idx)?;
        procs[idx] = Some(start_keepalived(lab, idx, vrrp)?);
        tokio::time::sleep(vrrp.advert() * 3 + Duration::from_secs(1)).await;
    }
    Ok(out)
}

/// Benchmark 2c: the announcing speaker starved of CPU.
#[derive(Debug, Clone, Default)]
pub struct Starvation {
    /// The node whose speaker was starved.
    pub node: String,
    /// The CPU it and the busy loops were pinned to.
    pub cpu: usize,
    /// Busy loops on that CPU.
    pub hogs: usize,
    /// How long.
    pub period: Duration,
    /// VIP moves seen by the client during the period (none was killed): node and time.
    pub moves: Vec<(String, Duration)>,
    /// Distinct announcers recorded for the Service during the period, beyond the first.
    pub owner_changes: usize,
    /// Heartbeat suspicions of the starved node raised by its peers during the period (from their
    /// `ferrite_lb_gossip_heartbeat_suspicions_total`), when readable.
    pub suspicions: Option<f64>,
    /// CPU time the starved speaker got during the period.
    pub speaker_cpu: Option<Duration>,
}

/// `/metrics` of the speaker in `ns` (its admin server on 127.0.0.1:9091 there).
fn speaker_metrics(ns: &str) -> Option<String> {
    let script = "exec 3<>/dev/tcp/127.0.0.1/9091 && printf 'GET /metrics HTTP/1.0\\r\\nHost: speaker\\r\\n\\r\\n' >&3 && timeout 2 cat <&3";
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", script])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn suspicions_total(rig: &Rig, except: usize) -> Option<f64> {
    let mut sum = 0.0;
    for (i, n) in rig.lab.nodes.iter().enumerate() {
        if i == except {
            continue;
        }
        let body = speaker_metrics(&n.ns)?;
        sum += stats::sample(
            &body,
            "ferrite_lb_gossip_heartbeat_suspicions_total",
            &[("event", "suspected")],
        )?;
    }
    Some(sum)
}

/// utime + stime of every thread of `pid`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based), i.e. 11 and 12 here.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// Benchmark 2c: `hogs` bounded busy loops pinned, with every thread of the announcing speaker, to one
/// CPU for `period`; counts VIP moves (none is killed, so every move is a false failover).
pub async fn starvation(
    client: &Client,
    rig: &mut Rig,
    ns: &str,
    hogs: usize,
    period: Duration,
) -> Result<Starvation> {
    let name = "starve";
    create_slice(client, &rig.lab, ns, name).await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    svcs.create(&PostParams::default(), &lb_service(name)?).await?;
    let vip = wait_ip(&svcs, name, Duration::from_millis(50), Duration::from_secs(15)).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (idx, owner_name) = loop {
        if let Some(o) = owner(&svcs, name).await
            && let Some(idx) = rig.lab.nodes.iter().position(|n| n.name == o)
            && arping(&rig.lab, &vip, Duration::from_secs(1)).as_deref()
                == Some(rig.lab.nodes[idx].mac.as_str())
        {
            break (idx, o);
        }
        if Instant::now() > deadline {
            bail!("starvation: nobody announces {vip} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mac = rig.lab.nodes[idx].mac.clone();
    let pid = rig.speakers[idx]
        .as_ref()
        .and_then(|s| s.program_pid())
        .context("starved speaker has no PID")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpus - 1;
    let all_cpus = format!("0-{}", cpus - 1);
    let pin = |list: &str| -> Result<()> {
        let st = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", list, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("taskset")?;
        if !st.success() {
            bail!("taskset -a -p -c {list} {pid} failed");
        }
        Ok(())
    };
    rig.lab.set_client_neighbour(&vip, &mac)?;
    let before = suspicions_total(rig, idx);
    pin(&cpu.to_string())?;
    // Bounded twice: `timeout` ends each loop after the period plus 10 s even if this process dies;
    // normally they are stopped by PID (SIGTERM to timeout, which passes it on) right after the period.
    let limit = (period + Duration::from_secs(10)).as_secs().to_string();
    let mut loops = Vec::new();
    for _ in 0..hogs {
        // In a session of their own (setsid), hence their own scheduler autogroup: another workload on
        // the speaker's CPU, as another pod in its own cgroup would be, not part of the speaker's group.
        let c = std::process::Command::new("setsid")
            .args([
                "taskset",
                "-c",
                &cpu.to_string(),
                "timeout",
                "-s",
                "KILL",
                &limit,
                "sh",
                "-c",
                "while :; do :; done",
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting a busy loop (taskset, timeout, sh)")?;
        loops.push(c);
    }
    eprintln!(
        "    {owner_name}'s speaker (pid {pid}) and {hogs} busy loops (pids {:?}) on CPU {cpu} for {period:?}",
        loops.iter().map(|c| c.id()).collect::<Vec<_>>()
    );
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    let mut out = Starvation {
        node: owner_name.clone(),
        cpu,
        hogs,
        period,
        ..Default::default()
    };
    let mut held = mac.clone();
    let mut owners = vec![owner_name.clone()];
    let mut last_owner_check = Instant::now();
    while t0.elapsed() < period {
        if let Some(m) = rig.lab.client_neighbour(&vip)
            && m != held
        {
            let node = rig
                .lab
                .node_by_mac(&m)
                .map_or_else(|| m.clone(), |n| n.name.clone());
            eprintln!(
                "    false failover: the client now holds {node}'s MAC after {:?}",
                t0.elapsed()
            );
            out.moves.push((node, t0.elapsed()));
            held = m;
        }
        if last_owner_check.elapsed() > Duration::from_secs(1) {
            last_owner_check = Instant::now();
            if let Some(o) = owner(&svcs, name).await
                && owners.last() != Some(&o)
            {
                owners.push(o);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.speaker_cpu = cpu0.zip(cpu_time(pid)).map(|(a, b)| b.saturating_sub(a));
    let pids: Vec<u32> = loops.iter().map(|c| c.id()).collect();
    let _ = kill("TERM", &pids);
    for mut c in loops {
        let _ = c.wait();
    }
    pin(&all_cpus)?;
    out.owner_changes = owners.len() - 1;
    out.suspicions = before.zip(suspicions_total(rig, idx)).map(|(a, b)| b - a);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_reasons_are_the_growth_by_kind_and_reason() {
        let before = "# HELP x\n\
            ferrite_lb_reconcile_errors_total{kind=\"Service\",reason=\"Timeout\"} 3\n\
            ferrite_lb_reconcile_errors_total{kind=\"IPPool\",reason=\"Conflict\"} 1\n";
        let after = "ferrite_lb_reconcile_errors_total{kind=\"Service\",reason=\"Timeout\"} 10\n\
            ferrite_lb_reconcile_errors_total{kind=\"Service\",reason=\"NotLeader\"} 20\n\
            ferrite_lb_reconcile_errors_total{kind=\"IPPool\",reason=\"Conflict\"} 1\n\
            ferrite_lb_reconcile_total{kind=\"Service\",result=\"error\"} 30\n";
        assert_eq!(
            super::error_reasons(before, after),
            vec![
                ("Service/NotLeader".to_string(), 20.0),
                ("Service/Timeout".to_string(), 7.0)
            ]
        );
        assert!(super::error_reasons(after, after).is_empty());
    }
}
