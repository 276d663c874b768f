#![forbid(unsafe_code)]
//! `fluxgate-fleetbench`: see loadtest/README.md, "The fleet benchmark".
use clap::Parser;
use fluxgate_loadtest::fleet::{self, FleetOptions};
use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = FleetOptions::parse();
    match fleet::run(&opts) {
        Ok(report) => {
            print!("{}", report.to_table());
            if let Some(path) = &opts.json {
                let json = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(path, json + "\n") {
                    eprintln!("fluxgate-fleetbench: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fluxgate-fleetbench: {e}");
            ExitCode::from(2)
        }
    }
}
