//! ferrite-certs: issues and renews certificates (ACME, CA, self-signed) into `kubernetes.io/tls`
//! Secrets (leader-elected; every replica watches).
use clap::{Parser, Subcommand};
use ferrite_kit::cli::CommonArgs;

#[derive(Parser, Debug)]
#[command(
    name = "ferrite-certs",
    version,
    about = "Certificates from ACME CAs, a private CA or self-signed, renewed on time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reconcile Issuers, ClusterIssuers and Certificates into Secrets (leader-elected writes).
    Controller {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: ferrite_certs::controller::ControllerArgs,
        #[command(flatten)]
        shim: ferrite_certs::shim::ShimArgs,
        #[command(flatten)]
        solvers: ferrite_certs::solvers::SolverArgs,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Controller {
            common,
            args,
            shim,
            solvers,
        } => {
            async {
                let shim = shim.config().map_err(anyhow::Error::msg)?;
                let app = ferrite_kit::App::start(&common, "certs", "ferrite-certs-controller").await?;
                // HTTP-01 tokens for Ingress classes other than ferrite's, served by every replica.
                let listener = tokio::net::TcpListener::bind(solvers.http01_listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("HTTP-01 listener on {}: {e}", solvers.http01_listen))?;
                let port = listener.local_addr()?.port();
                let tokens = ferrite_certs::solvers::Http01Tokens::default();
                tokio::spawn(ferrite_certs::solvers::serve_http01(listener, tokens.clone()));
                let solvers = ferrite_certs::solvers::Solvers::new(app.client.clone(), solvers, port, tokens);
                // ingress-shim: Certificates for annotated Ingresses, beside the issuing controller.
                let shim_task = ferrite_certs::shim::spawn(&app, shim);
                let res =
                    ferrite_certs::controller::run_with(app, args, Some(std::sync::Arc::new(solvers))).await;
                match shim_task.await {
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "ingress-shim stopped"),
                    Err(e) => tracing::error!(error = %e, "ingress-shim task failed"),
                    Ok(Ok(())) => {}
                }
                res
            }
            .await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrite-certs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
