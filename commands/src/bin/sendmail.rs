//! sendmail(1): see `facteur_commands::sendmail`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(facteur_commands::sendmail::main(args));
}
