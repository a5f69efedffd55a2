//! ferrite-dns: DNS records from Services, Ingresses and DNSRecords, served by the embedded
//! authoritative server and written to RFC2136 servers (leader-elected; every replica serves).
use clap::{Parser, Subcommand};
use ferrite_kit::cli::CommonArgs;

#[derive(Parser, Debug)]
#[command(
    name = "ferrite-dns",
    version,
    about = "DNS records from Services, Ingresses and DNSRecords"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch the sources, serve embedded zones and sync RFC2136 zones (leader-elected writes).
    Controller {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: ferrite_dns::controller::ControllerArgs,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Controller { common, args } => {
            async {
                let app = ferrite_kit::App::start(&common, "dns", "ferrite-dns-controller").await?;
                ferrite_dns::controller::run(app, args).await
            }
            .await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrite-dns: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
