//! The local daemon; see `facteur_daemons::local`.
fn main() {
    facteur_daemons::local::main()
}
