//! The cleanup daemon; see `facteur_daemons::cleanup`.
fn main() {
    facteur_daemons::cleanup::main()
}
