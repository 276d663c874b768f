#![forbid(unsafe_code)]
use clap::Parser;
use fluxgate_loadtest::{run, Options, Plan};
use std::process::ExitCode;

fn fail(msg: &str) -> ExitCode {
    eprintln!("fluxgate-loadtest: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let opts = Options::parse();
    // A JSON file that cannot be written is found out before the run, not after it.
    let json_file = match opts.json.as_deref() {
        Some("-") | None => None,
        Some(path) => {
            if let Err(e) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                return fail(&format!("cannot write {path}: {e}"));
            }
            Some(path.to_string())
        }
    };
    let plan = match Plan::new(&opts) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let report = run::execute(plan);
    if opts.json.as_deref() == Some("-") {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(path) = json_file {
        if let Err(e) = std::fs::write(&path, report.to_json() + "\n") {
            return fail(&format!("cannot write {path}: {e}"));
        }
    }
    ExitCode::SUCCESS
}
