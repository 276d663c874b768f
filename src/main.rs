fn main() {
    std::process::exit(fluxgate::cli::main());
}
