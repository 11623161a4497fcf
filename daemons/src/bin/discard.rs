//! The discard daemon; see `facteur_daemons::discard`.
fn main() {
    facteur_daemons::discard::main()
}
