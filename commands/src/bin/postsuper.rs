//! postsuper(1): see `facteur_commands::postsuper`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(facteur_commands::postsuper::main(args));
}
