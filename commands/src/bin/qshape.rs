//! qshape(1): see `facteur_commands::qshape`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(facteur_commands::qshape::main(args));
}
