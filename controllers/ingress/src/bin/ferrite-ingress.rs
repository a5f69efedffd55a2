//! ferrite-ingress: the Ingress controller and proxy in one process. Every replica serves traffic;
//! the leader writes Ingress status and Events.
use clap::{Parser, Subcommand};
use ferrite_kit::cli::CommonArgs;

#[derive(Parser, Debug)]
#[command(
    name = "ferrite-ingress",
    version,
    about = "Ingress controller: Ingress v1 compiled into an immutable route table, served by a rustls/hyper proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch Ingresses and serve them on the HTTP and HTTPS listeners (leader-elected status writes).
    Controller {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: ferrite_ingress::controller::ControllerArgs,
        /// Tokio worker threads (proxy and controller); default: one per core. 1: a single-threaded
        /// runtime (no work stealing or cross-thread wake-ups: the fastest for one core).
        #[arg(long, env = "FERRITE_INGRESS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Controller {
        common,
        args,
        worker_threads,
    } = cli.command;
    let mut runtime = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().thread_name("ferrite-ingress");
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrite-ingress: starting the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let app =
            ferrite_kit::App::start(&common, "ingress", ferrite_ingress::controller::LEASE_DEFAULT).await?;
        ferrite_ingress::controller::run(app, args).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrite-ingress: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
