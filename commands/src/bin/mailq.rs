//! mailq(1) = `postqueue -p`: see `facteur_commands::postqueue`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(facteur_commands::postqueue::mailq(args));
}
