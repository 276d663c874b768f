/// jemalloc rather than glibc's malloc: 20–25% less CPU per kept-alive request and half the
/// memory per idle TLS connection, with background threads returning freed memory to the
/// system (PERFORMANCE.md, "Crypto provider and allocator: measured").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(fluxgate::cli::main());
}
