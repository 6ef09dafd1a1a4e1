//! `sluice roofline` as a standalone binary, for measurements before the CLI wires it:
//! `cargo run --release -p sluice-roofline --example roofline -- --model M --bench`.

use clap::Parser;
use sluice_roofline::RooflineArgs;

#[derive(Parser)]
#[command(
    name = "roofline",
    about = "FLOPs and bytes per op against the hardware floor"
)]
struct Cli {
    #[command(flatten)]
    args: RooflineArgs,
}

fn main() {
    if let Err(e) = sluice_roofline::run(Cli::parse().args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
