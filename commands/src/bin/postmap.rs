//! postmap(1): see `facteur_commands::postmap`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(facteur_commands::postmap::main(args));
}
