//! The `modelpod` binary: parses the command line and runs one role.

mod cli_output;
mod manage;

use clap::{Parser, Subcommand};
use modelpod_bench::BenchArgs;
use modelpod_http::telemetry;
use modelpod_serve::{ScoringServer, ServeArgs, ServeConfig};

/// modelpod: a model-serving runtime for Azure ML (SDK v1) scoring contracts and the Open
/// Inference Protocol v2, with dynamic batching.
#[derive(Parser)]
#[command(name = "modelpod", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scoring server over a model repository.
    Serve(ServeArgs),
    /// Front a service's replicas: route each request to the least-busy one and scale them
    /// towards the target utilization.
    Route(modelpod_router::RouteArgs),
    /// Manage a router's services: create, update, delete, keys, tokens, logs.
    Service(manage::ServiceCommand),
    /// Manage a router's endpoints and their versions (traffic split, default, control).
    Endpoint(manage::EndpointCommand),
    /// Print a service's Kubernetes objects (Deployment, Service, the router's ServiceAccount
    /// and Role) from its deploymentconfig.json, as JSON for `kubectl apply -f -`.
    Manifests(modelpod_router::manifests::ManifestArgs),
    /// Make an Azure ML deployment folder (score.py, a pickled scikit-learn, XGBoost or
    /// LightGBM model) a modelpod service: convert the model to ONNX, declare its steps, and
    /// check it against what run() answered. Exit status 2: refused (answers differ); 3: not
    /// convertible (the entry script must run as it is).
    Import(modelpod_import::ImportArgs),
    /// Measure a serving endpoint: throughput and latency percentiles under load.
    Bench(BenchArgs),
    /// Show this node's VM size, what it promises, what the device probes find and the engine
    /// plan.
    Sku(SkuArgs),
}

#[derive(clap::Args)]
struct SkuArgs {
    #[command(flatten)]
    node: modelpod_accel::node::NodeArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Plan as `serve --require-accelerator` would: no CPU engine where an accelerator is found.
    #[arg(long)]
    require_accelerator: bool,
    /// Path of libonnxruntime.so, as `serve --ort-library` (else ORT_DYLIB_PATH, then the
    /// default locations).
    #[arg(long, value_name = "PATH")]
    ort_library: Option<std::path::PathBuf>,
}

fn main() {
    // One line with the whole cause chain, and no backtrace: these are the user's errors
    // (a bad flag value, an unreachable target, a port in use), not the program's.
    if let Err(error) = run(Cli::parse()) {
        eprintln!("modelpod: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = ServeConfig::resolve(args)?;
            telemetry::init(config.log_format);
            actix_web::rt::System::new().block_on(async move {
                let server = ScoringServer::build(config)?;
                server.run().await?;
                anyhow::Ok(())
            })
        }
        Command::Route(args) => {
            telemetry::init(args.log_format);
            actix_web::rt::System::new().block_on(async move {
                let config = modelpod_router::RouterConfig::resolve(args)?;
                let router = modelpod_router::Router::start(config).await?;
                router.run().await?;
                anyhow::Ok(())
            })
        }
        Command::Service(command) => manage::run_service(command),
        Command::Endpoint(command) => manage::run_endpoint(command),
        Command::Manifests(args) => {
            let list = modelpod_router::manifests::render(&args)?;
            if let Some(dir) = &args.kustomize {
                let files = modelpod_router::manifests::write_kustomize_base(&list, dir)?;
                let dir = dir.display();
                eprintln!(
                    "wrote a kustomize base of {} objects in {dir} (kubectl apply -k {dir})",
                    files.len()
                );
            }
            cli_output::print_line(&serde_json::to_string_pretty(&list)?)?;
            Ok(())
        }
        Command::Import(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let (outcome, report) = runtime.block_on(modelpod_import::run(&args))?;
            cli_output::print_line(&serde_json::to_string_pretty(&report)?)?;
            if outcome != modelpod_import::ImportOutcome::Served {
                std::process::exit(outcome.exit_code());
            }
            Ok(())
        }
        Command::Bench(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(modelpod_bench::run(args, &mut cli_output::Stdout))?;
            Ok(())
        }
        Command::Sku(args) => {
            let report = modelpod_accel::node::NodeReport::gather(
                &args.node,
                args.require_accelerator,
                args.ort_library.as_deref(),
            );
            if args.json {
                cli_output::print_line(&serde_json::to_string_pretty(&report)?)?;
            } else {
                cli_output::print(&report.text())?;
            }
            Ok(())
        }
    }
}
