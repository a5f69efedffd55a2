//! Process setup shared by every controller binary.

use crate::{
    Result,
    admin::{AdminServer, AdminState, Liveness, Readiness, Routes},
    cli::{BaseArgs, CommonArgs, ElectionArgs},
    leader::{self, Leadership, LeaseConfig},
    metrics::ReconcileMetrics,
    runner::RunOptions,
};
use kube::Client;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// A started controller process: client, admin server, leadership and shutdown, ready for controllers.
pub struct App {
    /// Client for the API server.
    pub client: Client,
    /// Metrics registry served on `/metrics`.
    pub registry: Registry,
    /// Readiness gates served on `/readyz`.
    pub readiness: Readiness,
    /// Fatal conditions served on `/livez` (503 naming each one once any is set).
    pub liveness: Liveness,
    /// Extra admin-server routes (path prefix -> handler); may be added at any time.
    pub routes: Routes,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// Shared watches of this process, one per kind and scope (see [`crate::watch`]).
    pub watches: crate::watch::Watches,
    /// Reconcile metrics of this controller, registered on first use (a process that runs no
    /// Controller, like the speaker, exports none).
    metrics: ReconcileMetrics,
    metrics_registered: std::sync::Once,
    /// `ferrite_events_*` metrics, registered on the first [`App::events`] (shared by every publisher).
    event_metrics: std::sync::OnceLock<Option<crate::events::EventMetrics>>,
    /// Address the admin server is bound to.
    pub admin_addr: std::net::SocketAddr,
    args: BaseArgs,
    leader_task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("admin_addr", &self.admin_addr)
            .field("leadership", &self.leadership)
            .finish()
    }
}

impl App {
    /// Sets up logging, the client, the admin server and leader election for controller `name` (`lb`,
    /// `dns`, ...). `lease_default` names the Lease when `--lease-name` is not given.
    pub async fn start(args: &CommonArgs, name: &str, lease_default: &str) -> Result<Self> {
        args.validate()?;
        crate::telemetry::init(args.log_format, &args.log_level)?;
        let shutdown = crate::shutdown::on_signals()?;
        Self::start_with(args, name, lease_default, shutdown).await
    }

    /// Like [`App::start`] with a caller-provided shutdown token (tests; embedding).
    pub async fn start_with(
        args: &CommonArgs,
        name: &str,
        lease_default: &str,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        args.validate()?;
        Self::setup(&args.base, Some((&args.election, lease_default)), name, shutdown).await
    }

    /// Like [`App::start`] for a process that does not elect a leader (it always writes; no Lease, no
    /// leader gauge), from [`BaseArgs`] alone.
    pub async fn start_base(args: &BaseArgs, name: &str) -> Result<Self> {
        args.validate()?;
        crate::telemetry::init(args.log_format, &args.log_level)?;
        let shutdown = crate::shutdown::on_signals()?;
        Self::start_base_with(args, name, shutdown).await
    }

    /// Like [`App::start_base`] with a caller-provided shutdown token.
    pub async fn start_base_with(args: &BaseArgs, name: &str, shutdown: CancellationToken) -> Result<Self> {
        args.validate()?;
        Self::setup(args, None, name, shutdown).await
    }

    async fn setup(
        args: &BaseArgs,
        election: Option<(&ElectionArgs, &str)>,
        name: &str,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let election = election.filter(|(e, _)| e.leader_elect);
        let client =
            crate::client::connect_with_timeouts(args.kubeconfig.as_deref(), args.timeouts()).await?;
        let registry = crate::admin::registry();
        let metrics = ReconcileMetrics::new(name)
            .map_err(|e| crate::Error::Setup(format!("metrics of {name:?}: {e}")))?;
        let readiness = Readiness::default();
        let liveness = Liveness::default();
        let routes = Routes::default();
        let admin = AdminServer::bind(args.admin_addr).await?;
        let admin_addr = admin.local_addr();
        let state = AdminState {
            registry: registry.clone(),
            readiness: readiness.clone(),
            liveness: liveness.clone(),
            routes: routes.clone(),
        };
        tokio::spawn(admin.serve_with(state, shutdown.clone()));

        let identity = args.identity();
        let (leadership, leader_task) = if let Some((e, lease_default)) = election {
            let config = LeaseConfig {
                name: e.lease_name.clone().unwrap_or_else(|| lease_default.to_string()),
                namespace: e.lease_namespace(),
                identity: identity.clone(),
                lease_duration: e.lease_duration,
                renew_deadline: e.lease_renew_deadline,
                retry_period: e.lease_retry_period,
            };
            tracing::info!(lease = %config.name, namespace = %config.namespace, identity = %identity, "leader election on");
            let (l, task) = leader::start(client.clone(), config, shutdown.clone());
            (l, Some(task))
        } else {
            (Leadership::always(identity), None)
        };
        let watch_metrics = crate::watch::WatchMetrics::register(&registry)
            .map_err(|e| crate::Error::Setup(format!("registering watch metrics: {e}")))?;
        if election.is_some() {
            let gauge = prometheus::IntGauge::new(
                format!("ferrite_{name}_leader"),
                "1 while this replica holds the leader lease.",
            )
            .and_then(|g| registry.register(Box::new(g.clone())).map(|()| g))
            .map_err(|e| crate::Error::Setup(format!("registering metrics: {e}")))?;
            let mut rx = leadership.subscribe();
            gauge.set(i64::from(*rx.borrow()));
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    gauge.set(i64::from(*rx.borrow_and_update()));
                }
            });
        }
        Ok(Self {
            client,
            registry,
            readiness,
            liveness,
            routes,
            leadership,
            watches: crate::watch::Watches::new(shutdown.clone()).with_metrics(watch_metrics),
            shutdown,
            metrics,
            metrics_registered: std::sync::Once::new(),
            event_metrics: std::sync::OnceLock::new(),
            admin_addr,
            args: args.clone(),
            leader_task,
        })
    }

    /// Options for [`crate::runner::run`].
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            metrics: self.reconcile_metrics(),
            leadership: self.leadership.clone(),
            readiness: self.readiness.clone(),
            shutdown: self.shutdown.clone(),
            resync: self.args.resync_interval,
            backoff: Default::default(),
        }
    }

    /// The `ferrite_<name>_reconcile_*` metrics, registered on first use.
    pub fn reconcile_metrics(&self) -> ReconcileMetrics {
        self.metrics_registered.call_once(|| {
            if let Err(e) = self.metrics.register_in(&self.registry) {
                tracing::error!(error = %e, "registering reconcile metrics");
            }
        });
        self.metrics.clone()
    }

    /// Events publisher reporting as `controller`, with the kit's default limits (see
    /// [`crate::events`]; change them with [`crate::events::Events::with_limits`]) and counting what
    /// they suppress in `ferrite_events_suppressed_total`.
    pub fn events(&self, controller: &str) -> crate::events::Events {
        let events = crate::events::Events::new(self.client.clone(), controller, self.leadership.clone());
        let metrics = self.event_metrics.get_or_init(|| {
            crate::events::EventMetrics::register(&self.registry)
                .map_err(|e| tracing::error!(error = %e, "registering Event metrics"))
                .ok()
        });
        match metrics {
            Some(m) => events.with_metrics(m.clone()),
            None => events,
        }
    }

    /// Waits for shutdown, then for the lease to be released.
    pub async fn finish(mut self) {
        self.shutdown.cancelled().await;
        if let Some(task) = self.leader_task.take() {
            let _ = task.await;
        }
    }
}
