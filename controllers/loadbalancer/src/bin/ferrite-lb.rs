//! ferrite-lb: `controller` (address allocation, Deployment) and `speaker` (ARP/NDP, DaemonSet).
use clap::{Parser, Subcommand};
use ferrite_kit::cli::{BaseArgs, CommonArgs};

#[derive(Parser, Debug)]
#[command(name = "ferrite-lb", version, about = "LoadBalancer Services on bare metal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Allocate addresses from IPPools to LoadBalancer Services (leader-elected).
    Controller {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        args: ferrite_lb::controller::ControllerArgs,
    },
    /// Answer ARP/NDP for the addresses this node is elected for (DaemonSet, host network, NET_RAW).
    Speaker {
        #[command(flatten)]
        common: BaseArgs,
        #[command(flatten)]
        args: ferrite_lb::speaker::SpeakerArgs,
    },
    /// Print ferrite-lb objects for MetalLB manifests (exit 0: all translated, 1: partly, 2: refused).
    ImportMetallb(ferrite_lb::import::ImportArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ImportMetallb(args) => return std::process::ExitCode::from(ferrite_lb::import::run(&args)),
        Command::Controller { common, args } => {
            async {
                let app = ferrite_kit::App::start(&common, "lb", "ferrite-lb-controller").await?;
                ferrite_lb::controller::run(app, args).await
            }
            .await
        }
        Command::Speaker { common, args } => {
            async {
                // Every speaker decides for itself; there is nothing to elect (no lease flags).
                let app = ferrite_kit::App::start_base(&common, "lb_speaker").await?;
                ferrite_lb::speaker::run(app, args).await
            }
            .await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrite-lb: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
